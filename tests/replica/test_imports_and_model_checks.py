"""Bad import paths, model functions and data functions, caught by `raytf.driver.prepare.prepare` on the
driver before any cluster or actor exists. Needs TensorFlow (imported once), never Ray.

The broken user code lives in tests/badinput/models.py.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from raytf.config import config_from_dict
from raytf.config.imports import resolve_callable
from raytf.errors import ConfigError
from tests.badinput.helpers import assert_names

M = "tests.badinput.models:"
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _run_from_the_repo(monkeypatch):
    # Import paths resolve against the current directory; resolve_callable adds it to sys.path.
    monkeypatch.chdir(REPO)
    monkeypatch.setattr(sys, "path", list(sys.path))


def resolve_error(path: str, key: str = "model") -> ConfigError:
    with pytest.raises(ConfigError) as caught:
        resolve_callable(path, key)
    return caught.value


# -- import paths ------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["tests.badinput.models.build_model", "tests.badinput.models:", ":build_model", ""],
                         ids=["no-colon", "no-function", "no-module", "empty"])
def test_import_path_without_module_and_function(path):
    error = resolve_error(path)
    assert_names(error, problem=("model:", f"'{path}' is not an import path"), fix=("module:function", "examples.digits:build_model"))


@pytest.mark.parametrize(
    "path, missing",
    [("tests.badinput.modles:build_model", "tests.badinput.modles"), ("nosuchpackage.models:build_model", "nosuchpackage")],
    ids=["typo-in-submodule", "missing-package"],
)
def test_module_not_found(path, missing):
    module = path.partition(":")[0]
    error = resolve_error(path, "data.train")
    assert_names(
        error,
        problem=("data.train:", f"cannot import module '{module}'", f"no module named '{missing}'"),
        fix=("PYTHONPATH", "current directory", str(REPO)),
    )


def test_module_not_found_names_the_current_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    error = resolve_error("my_models:build")
    assert_names(error, problem=("'my_models'",), fix=("PYTHONPATH", f"current directory: {tmp_path}"))


def test_module_in_the_current_directory_is_found(tmp_path, monkeypatch):
    # The counterpart of the test above: running from the module's directory is the fix.
    (tmp_path / "raytf_cwd_models.py").write_text("def build():\n    return 'built'\n")
    monkeypatch.chdir(tmp_path)
    assert resolve_callable("raytf_cwd_models:build", "model")() == "built"
    sys.modules.pop("raytf_cwd_models", None)


def test_module_whose_dependency_is_missing_is_not_called_missing(monkeypatch):
    # `torchish_models` imports `torchish`, which is not installed. The module itself exists, so
    # the fix is installing the dependency, not checking the spelling or PYTHONPATH.
    monkeypatch.syspath_prepend(str(REPO / "tests" / "badinput" / "toplevel"))
    error = resolve_error("torchish_models:build_model")
    assert_names(
        error,
        problem=("importing module 'torchish_models' failed", "imports 'torchish'", "not installed"),
        fix=("pip install torchish",),
    )


@pytest.mark.parametrize(
    "path, wrong, suggestion",
    [
        (M + "build_modle", "build_modle", "tests.badinput.models:build_model"),
        (M + "train_dta", "train_dta", "tests.badinput.models:train_data"),
        ("examples.digits:build_mdl", "build_mdl", "examples.digits:build_model"),
    ],
)
def test_missing_attribute_suggests_the_closest_name(path, wrong, suggestion):
    error = resolve_error(path)
    module = path.partition(":")[0]
    assert_names(error, problem=(f"module '{module}' has no attribute '{wrong}'",), fix=(f"Did you mean '{suggestion}'?",))


def test_missing_attribute_without_a_close_match_lists_what_the_module_defines():
    error = resolve_error(M + "zzzz")
    assert_names(error, problem=("no attribute 'zzzz'",), fix=("It defines:", "build_model"))


def test_attribute_that_is_not_callable():
    error = resolve_error(M + "NOT_CALLABLE")
    assert_names(error, problem=(f"'{M}NOT_CALLABLE' is a int", "not a function or class"), fix=("function",))


def test_module_that_raises_at_import_names_the_exception():
    error = resolve_error("tests.badinput.raises_on_import:build_model", "data.eval")
    assert_names(
        error,
        problem=("data.eval:", "importing module 'tests.badinput.raises_on_import' raised KeyError", "TRAINING_DATA_DIR"),
        fix=("python -c 'import tests.badinput.raises_on_import'",),
    )


# -- model and data checks in prepare() --------------------------------------------------------


def make_config(tmp_path: Path, **changes):
    data = {
        "model": M + "build_model",
        "data": {"train": M + "train_data"},
        "loss": "sparse_categorical_crossentropy",
        "batch_size": 4,
        "output_dir": str(tmp_path / "out"),
        "distribution": {"workers": 2, "parameter_servers": 1},
    }
    for key, value in changes.items():
        if key in ("train", "eval"):
            data["data"][key] = value
        elif key == "parameter_servers":
            data["distribution"][key] = value
        else:
            data[key] = value
    return config_from_dict(data)


def prepare_error(tmp_path: Path, **changes) -> ConfigError:
    from raytf.driver.prepare import prepare

    with pytest.raises(ConfigError) as caught:
        prepare(make_config(tmp_path, **changes))
    return caught.value


def test_prepare_accepts_the_good_model_and_data(tmp_path):
    # The baseline every case below breaks one thing of.
    from raytf.driver.prepare import prepare

    prepared = prepare(make_config(tmp_path, eval=M + "eval_data", parameter_servers=2))
    assert [len(shard.variables) for shard in prepared.plan.shards] == [1, 1]
    assert prepared.output_dir == tmp_path / "out" and prepared.output_dir.is_dir()


@pytest.mark.parametrize(
    "changes, problem, fix",
    [
        pytest.param(
            {"model": M + "returns_a_string"},
            ("model: tests.badinput.models:returns_a_string returned a str", "not a Keras model"),
            ("keras.Model",),
            id="model-returns-str",
        ),
        pytest.param(
            {"model": M + "returns_a_layer"},
            ("returned a Dense", "not a Keras model"),
            ("keras.Sequential",),
            id="model-returns-layer",
        ),
        pytest.param(
            {"model": M + "raises_while_building"},
            ("model: calling raises_while_building()", "raised RuntimeError", "broken on purpose"),
            ("--debug",),
            id="model-raises",
        ),
        pytest.param(
            {"train": M + "raises_while_loading"},
            ("data.train: calling raises_while_loading(0, 2)", "raised FileNotFoundError", "/data/train.csv"),
            ("Fix that function",),
            id="data-raises",
        ),
        pytest.param(
            {"train": M + "train_data_takes_no_arguments"},
            ("data.train: calling train_data_takes_no_arguments(0, 2)", "TypeError", "takes 0 positional arguments"),
            ("Fix that function",),
            id="data-signature",
        ),
        pytest.param(
            {"train": M + "returns_a_list"},
            ("data.train returned a list, not a tf.data.Dataset",),
            ("from_tensor_slices((features, labels))",),
            id="data-returns-list",
        ),
        pytest.param(
            {"train": M + "features_only"},
            ("data.train yields elements of structure TensorSpec(shape=(4,)", "(features, label) pairs"),
            ("2-tuples",),
            id="data-single-tensors",
        ),
        pytest.param(
            {"train": M + "three_tuples"},
            ("data.train yields elements of structure (TensorSpec", "(features, label) pairs"),
            ("2-tuples",),
            id="data-3-tuples",
        ),
        pytest.param(
            {"train": M + "string_features"},
            ("data.train: the features have dtype string",),
            ("numeric dtype",),
            id="string-features",
        ),
        pytest.param(
            {"train": M + "string_labels"},
            ("data.train:", "dtype string"),
            ("numeric dtype",),
            id="string-labels",
        ),
        pytest.param(
            {"train": M + "ten_features"},
            ("does not accept the dataset's features", "features of shape (10,)", "expects inputs of shape (4,)",
             "expected axis -1 of input shape to have value 4"),
            ("input shape",),
            id="data-wider-than-model",
        ),
        pytest.param(
            {"model": M + "build_model_five_inputs"},
            ("features of shape (4,) (dtype float32)", "expects inputs of shape (5,)"),
            ("reshape the features",),
            id="model-wider-than-data",
        ),
        pytest.param(
            {"train": M + "labels_up_to_seven"},
            ("labels range from 0 to 3", "model has 3 outputs", "labels in 0..2"),
            ("as many units as there are classes",),
            id="labels-too-large",
        ),
        pytest.param(
            {"train": M + "negative_labels"},
            ("labels range from -1 to", "labels in 0..2"),
            ("Fix the labels",),
            id="labels-negative",
        ),
        pytest.param(
            {"loss": "mean_squared_error"},
            ("loss: mean_squared_error cannot compare the labels of shape ()", "outputs of shape (3,)", "Incompatible shapes"),
            ("sparse_categorical_crossentropy",),
            id="loss-does-not-fit-labels",
        ),
        pytest.param(
            {"train": M + "empty"},
            ("data.train returned an empty dataset",),
            ("shard",),
            id="empty-dataset",
        ),
        pytest.param(
            {"eval": M + "eval_data_six_features"},
            ("data.eval gives features of shape [(6,)]", "data.train gives [(4,)]"),
            ("same shape",),
            id="eval-shape-differs",
        ),
        pytest.param(
            {"eval": M + "returns_a_string"},
            ("data.eval returned a str, not a tf.data.Dataset",),
            ("tf.data.Dataset",),
            id="eval-returns-str",
        ),
        pytest.param(
            {"parameter_servers": 3},
            ("distribution.parameter_servers is 3", "only 2 trainable variables"),
            ("at most 2",),
            id="more-servers-than-variables",
        ),
        pytest.param(
            {"model": M + "NOT_CALLABLE"},
            ("not a function or class",),
            ("function",),
            id="model-not-callable",
        ),
        pytest.param(
            {"train": "tests.badinput.raises_on_import:train"},
            ("data.train: importing module", "raised KeyError"),
            ("traceback",),
            id="data-module-raises",
        ),
    ],
)
def test_prepare_rejects(tmp_path, changes, problem, fix):
    assert_names(prepare_error(tmp_path, **changes), problem=problem, fix=fix)


def test_output_dir_that_is_a_file(tmp_path):
    existing = tmp_path / "results.txt"
    existing.write_text("not a directory")
    error = prepare_error(tmp_path, output_dir=str(existing))
    assert_names(error, problem=(f"output_dir {existing} exists and is a file",), fix=("directory",))
    assert existing.read_text() == "not a directory"


def test_output_dir_under_a_file(tmp_path):
    existing = tmp_path / "results.txt"
    existing.write_text("")
    error = prepare_error(tmp_path, output_dir=str(existing / "run1"))
    assert_names(error, problem=(f"output_dir {existing / 'run1'} is not writable",), fix=("directory you can write to",))


def test_output_dir_is_checked_before_user_code_runs(tmp_path):
    # A bad output_dir and a broken model: the cheap check reports first.
    existing = tmp_path / "out"
    existing.write_text("")
    error = prepare_error(tmp_path, output_dir=str(existing), model=M + "raises_while_building")
    assert "output_dir" in error.problem and "RuntimeError" not in error.problem


# -- what the label and metric checks must let through -------------------------------------------


@pytest.mark.parametrize(
    "changes",
    [
        pytest.param({"metrics": ["accuracy", "acc", "ce", "sparse_categorical_accuracy", "sparse_top_k_categorical_accuracy"]},
                     id="sparse-metrics"),
        pytest.param({"model": M + "build_binary_model", "train": M + "binary_labels", "loss": "binary_crossentropy",
                      "metrics": ["accuracy", "auc", "precision", "binary_accuracy"]}, id="binary-labels-and-metrics"),
        pytest.param({"train": M + "float_class_ids"}, id="whole-float-class-ids"),
    ],
)
def test_prepare_accepts_labels_and_metrics_that_fit(tmp_path, changes):
    from raytf.driver.prepare import prepare

    prepared = prepare(make_config(tmp_path, **changes))
    assert prepared.config.metrics == tuple(changes.get("metrics", ()))


def test_labels_are_checked_with_the_name_of_the_dataset():
    import tensorflow as tf

    from raytf.config import LossConfig
    from raytf.replica.model import check_labels_in_range

    with pytest.raises(ConfigError) as caught:
        check_labels_in_range(tf.constant([0, 5]), tf.zeros((2, 3)), LossConfig(name="sparse_categorical_crossentropy"), key="data.eval")
    assert_names(caught.value, problem=("data.eval: labels range from 0 to 5", "labels in 0..2"))
