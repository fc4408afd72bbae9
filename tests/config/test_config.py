"""Bad training configs: every one is a ConfigError that names the file, line, key and the fix.

Pure config validation: no TensorFlow, no Ray.
"""

from __future__ import annotations

import pytest

from raytf.config import config_from_dict, load_config
from raytf.errors import ConfigError, RaytfError
from tests.badinput.helpers import GOOD_YAML, assert_names, line_of, write


def load_error(tmp_path, text: str, overrides=(), name: str = "bad.yaml") -> ConfigError:
    path = write(tmp_path, text, name)
    with pytest.raises(ConfigError) as caught:
        load_config(path, overrides)
    return caught.value


def test_the_base_config_is_valid(tmp_path):
    # Every case below breaks exactly one thing in this config.
    config = load_config(write(tmp_path, GOOD_YAML, "good.yaml"))
    assert config.name == "good"
    assert config.loss.name == "sparse_categorical_crossentropy"


def test_config_errors_are_raytf_errors_with_problem_and_fix(tmp_path):
    error = load_error(tmp_path, GOOD_YAML + "steps: -1\n")
    assert isinstance(error, RaytfError) and error.exit_code == 2
    assert str(error) == f"{error.problem} {error.fix}"


# -- reading the file --------------------------------------------------------------------------


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError) as caught:
        load_config(tmp_path / "missing.yaml")
    assert_names(caught.value, problem=("missing.yaml", "does not exist"), fix=("path",))


def test_directory_instead_of_file(tmp_path):
    with pytest.raises(ConfigError) as caught:
        load_config(tmp_path)
    assert_names(caught.value, problem=(str(tmp_path), "is a directory"), fix=("YAML file",))


def test_binary_file(tmp_path):
    path = tmp_path / "model.keras"
    path.write_bytes(b"PK\x03\x04\xff\xfe\x00\x81")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert_names(caught.value, problem=("model.keras", "not a text file"), fix=("YAML",))


# -- YAML syntax and shape ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, line, what",
    [
        pytest.param("model: a:b\nloss: mse\n  batch_size: 3\n", 3, "mapping values are not allowed", id="bad-indent"),
        pytest.param("model: a:b\n\tloss: mse\n", 2, "cannot start any token", id="tab"),
        pytest.param('model: a:b\nname: "unterminated\nloss: mse\n', 4, "unexpected end of stream", id="open-quote"),
    ],
)
def test_yaml_syntax_error_names_file_and_line(tmp_path, text, line, what):
    error = load_error(tmp_path, text)
    assert_names(error, problem=(f"bad.yaml:{line}:", "YAML syntax error", what), fix=("indentation",))


def test_unclosed_bracket_names_the_line_it_opened_on(tmp_path):
    # PyYAML notices the problem on line 4; the mistake is the `[` on line 3.
    text = "model: a:b\ndata:\n  train: [x\nloss: mse\n"
    error = load_error(tmp_path, text)
    assert_names(error, problem=("bad.yaml:4:", "YAML syntax error", "starts on line 3"))


@pytest.mark.parametrize("text", ["", "\n\n", "# just a comment\n", "---\n"], ids=["empty", "blank", "comment", "doc-marker"])
def test_empty_file(tmp_path, text):
    error = load_error(tmp_path, text)
    assert_names(error, problem=("bad.yaml", "is empty"), fix=("examples/digits.yaml",))


@pytest.mark.parametrize(
    "text, kind",
    [("- model: a:b\n- loss: mse\n", "list"), ("just a sentence\n", "str"), ("42\n", "int")],
    ids=["list", "string", "number"],
)
def test_config_that_is_not_a_mapping(tmp_path, text, kind):
    error = load_error(tmp_path, text)
    assert_names(error, problem=("bad.yaml", "must be a YAML mapping", f"it is a {kind}"), fix=("examples/digits.yaml",))


def test_duplicate_top_level_key_names_both_lines(tmp_path):
    text = GOOD_YAML + "steps: 100\nbatch_size: 8\nsteps: 200\n"
    error = load_error(tmp_path, text)
    first, second = line_of(text, "steps:"), line_of(text, "steps:", 2)
    assert_names(
        error,
        problem=(f"bad.yaml:{second}:", "'steps' appears twice", f"first on line {first}"),
        fix=("Keep one",),
    )


def test_duplicate_nested_key_names_both_lines(tmp_path):
    text = GOOD_YAML + "distribution:\n  workers: 2\n  mode: sync\n  workers: 4\n"
    error = load_error(tmp_path, text)
    first, second = line_of(text, "workers:"), line_of(text, "workers:", 2)
    assert_names(error, problem=(f"bad.yaml:{second}:", "'workers' appears twice", f"first on line {first}"))


# -- unknown keys ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "extra, marker, key, suggestion",
    [
        ("distribution:\n  workers: 2\n  mdoe: async\n", "mdoe:", "distribution.mdoe", "distribution.mode"),
        ("optimiser: adam\n", "optimiser:", "optimiser", "optimizer"),
        ("batchsize: 64\n", "batchsize:", "batchsize", "batch_size"),
        ("distribution:\n  worker_resources:\n    num_cpu: 2\n", "num_cpu:", "distribution.worker_resources.num_cpu",
         "distribution.worker_resources.num_cpus"),
        ("optimizer:\n  name: sgd\n  learning_rat: 0.1\n", "learning_rat:", "optimizer.learning_rat", "optimizer.learning_rate"),
    ],
    ids=["distribution.mdoe", "optimiser", "batchsize", "num_cpu", "learning_rat"],
)
def test_unknown_key_suggests_the_closest_valid_key(tmp_path, extra, marker, key, suggestion):
    text = GOOD_YAML + extra
    error = load_error(tmp_path, text)
    assert_names(
        error,
        problem=(f"bad.yaml:{line_of(text, marker)}:", f"unknown key '{key}'"),
        fix=(f"Did you mean '{suggestion}'?", "Valid keys here:"),
    )


def test_unknown_key_in_data_mapping_with_flow_style(tmp_path):
    text = "model: a:b\ndata: {train: a:b, shufle_buffer: 3}\nloss: mean_squared_error\n"
    error = load_error(tmp_path, text)
    assert_names(error, problem=("bad.yaml:2:", "data.shufle_buffer"), fix=("Did you mean 'data.shuffle_buffer'?",))


def test_unknown_key_without_a_close_match_lists_the_valid_keys(tmp_path):
    error = load_error(tmp_path, GOOD_YAML + "colour: blue\n")
    assert_names(error, problem=("unknown key 'colour'",), fix=("Valid keys here:", "model", "optimizer", "steps"))
    assert "Did you mean" not in error.fix


# -- wrong values ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "extra, marker, key, expected",
    [
        ("batch_size: abc\n", "batch_size", "batch_size", ("valid integer", "'abc'")),
        ("steps: 1.5\n", "steps", "steps", ("valid integer", "1.5")),
        ("seed: [1, 2]\n", "seed", "seed", ("valid integer",)),
        ("log_every_seconds: soon\n", "log_every_seconds", "log_every_seconds", ("valid number", "'soon'")),
        ("loss:\n  name: hinge\n  from_logits: maybe\n", "from_logits", "loss.from_logits", ("valid boolean", "'maybe'")),
        ("distribution:\n  workers: many\n", "workers", "distribution.workers", ("valid integer", "'many'")),
        ("metrics: [accuracy, 3]\n", "metrics", "metrics.1", ("valid string", "3")),
    ],
    ids=["batch_size=abc", "steps=1.5", "seed=list", "log_every=str", "from_logits=maybe", "workers=many", "metric=3"],
)
def test_wrong_type(tmp_path, extra, marker, key, expected):
    text = GOOD_YAML.replace("loss: sparse_categorical_crossentropy\n", "") + extra if extra.startswith("loss") else GOOD_YAML + extra
    error = load_error(tmp_path, text)
    assert_names(error, problem=(f"bad.yaml:{line_of(text, marker)}:", f"{key}:", *expected), fix=("value",))


def test_data_given_as_a_string_instead_of_a_mapping(tmp_path):
    text = "model: a:b\ndata: a:b\nloss: mean_squared_error\n"
    error = load_error(tmp_path, text)
    assert_names(error, problem=("bad.yaml:2:", "data:", "valid dictionary", "'a:b'"))


@pytest.mark.parametrize(
    "extra, key, bound",
    [
        ("distribution:\n  workers: 0\n", "distribution.workers", "greater than or equal to 1 (got 0)"),
        ("distribution:\n  parameter_servers: 0\n", "distribution.parameter_servers", "greater than or equal to 1 (got 0)"),
        ("steps: -1\n", "steps", "greater than or equal to 1 (got -1)"),
        ("batch_size: 0\n", "batch_size", "greater than or equal to 1 (got 0)"),
        ("optimizer: {name: sgd, learning_rate: 0}\n", "optimizer.learning_rate", "greater than 0 (got 0)"),
        ("optimizer: {name: adam, beta_1: 1.0}\n", "optimizer.beta_1", "less than 1 (got 1.0)"),
        ("data: {train: a:b, shuffle_buffer: -5}\n", "data.shuffle_buffer", "greater than or equal to 0 (got -5)"),
        ("distribution:\n  worker_resources:\n    num_cpus: -1\n", "distribution.worker_resources.num_cpus",
         "greater than or equal to 0 (got -1"),
    ],
    ids=["workers=0", "parameter_servers=0", "steps=-1", "batch_size=0", "lr=0", "beta_1=1", "shuffle=-5", "num_cpus=-1"],
)
def test_out_of_range_counts(tmp_path, extra, key, bound):
    base = GOOD_YAML.replace("data:\n  train: tests.badinput.models:train_data\n", "") if extra.startswith("data") else GOOD_YAML
    text = base + extra
    leaf = key.split(".")[-1]
    error = load_error(tmp_path, text)
    assert_names(error, problem=(f"bad.yaml:{line_of(text, leaf)}:", f"{key}:", bound))


@pytest.mark.parametrize(
    "extra, key, got, suggestion, allowed",
    [
        ("optimizer: adamw\n", "optimizer.name", "adamw", "adam", ("'sgd'", "'rmsprop'", "'adagrad'")),
        ("optimizer:\n  name: adamw\n  learning_rate: 0.01\n", "optimizer.name", "adamw", "adam", ("'momentum'",)),
        ("distribution:\n  mode: asinc\n", "distribution.mode", "asinc", "async", ("'sync'",)),
        ("distribution:\n  transport: shared_memory\n", "distribution.transport", "shared_memory", None, ("'shm'", "'object_store'")),
    ],
    ids=["optimizer=adamw", "optimizer.name=adamw", "mode=asinc", "transport"],
)
def test_value_not_in_allowed_set(tmp_path, extra, key, got, suggestion, allowed):
    text = GOOD_YAML + extra
    error = load_error(tmp_path, text)
    line = line_of(text, "name: adamw") if "name: adamw" in text else line_of(text, got)
    assert_names(error, problem=(f"bad.yaml:{line}:", f"{key}: '{got}' is not allowed"), fix=("Allowed values:", *allowed))
    if suggestion:
        assert f"Did you mean '{suggestion}'?" in error.fix


def test_unknown_loss_name_suggests_the_closest_loss(tmp_path):
    text = GOOD_YAML.replace("sparse_categorical_crossentropy", "sparse_categorical_crossentopy")
    error = load_error(tmp_path, text)
    assert_names(
        error,
        problem=(f"bad.yaml:{line_of(text, 'loss:')}:", "loss.name: 'sparse_categorical_crossentopy' is not allowed"),
        fix=("Did you mean 'sparse_categorical_crossentropy'?", "'mean_squared_error'", "'hinge'"),
    )


@pytest.mark.parametrize("alias, full", [("mse", "mean_squared_error"), ("mae", "mean_absolute_error"), ("kld", "kl_divergence")])
def test_keras_loss_aliases_expand_to_the_full_name(tmp_path, alias, full):
    path = tmp_path / "alias.yaml"
    path.write_text(GOOD_YAML.replace("sparse_categorical_crossentropy", alias))
    assert load_config(path).loss.name == full


def test_unknown_loss_lists_the_allowed_losses(tmp_path):
    text = GOOD_YAML.replace("sparse_categorical_crossentropy", "rmse")
    error = load_error(tmp_path, text)
    assert_names(error, problem=("loss.name: 'rmse' is not allowed",), fix=("'mean_squared_error'",))


def test_bad_run_name(tmp_path):
    text = GOOD_YAML + "name: my run\n"
    error = load_error(tmp_path, text)
    assert_names(error, problem=(f"bad.yaml:{line_of(text, 'name: my run')}:", "name:", "pattern", "'my run'"))


def test_non_string_key(tmp_path):
    text = GOOD_YAML + "1: one\n"
    error = load_error(tmp_path, text)
    assert_names(error, problem=(f"bad.yaml:{line_of(text, '1: one')}:", "keys should be strings"))


@pytest.mark.parametrize(
    "remove, key, example",
    [
        ("model: tests.badinput.models:build_model\n", "model", "model: examples.digits:build_model"),
        ("loss: sparse_categorical_crossentropy\n", "loss", "loss: sparse_categorical_crossentropy"),
        ("  train: tests.badinput.models:train_data\n", "data.train", "train: examples.digits:train_examples"),
    ],
    ids=["model", "loss", "data.train"],
)
def test_missing_required_key_shows_an_example(tmp_path, remove, key, example):
    text = GOOD_YAML.replace(remove, "")
    if key == "data.train":
        text = text.replace("data:\n", "data:\n  eval: tests.badinput.models:eval_data\n")
    error = load_error(tmp_path, text)
    assert_names(error, problem=(f"required key '{key}' is missing",), fix=(example,))


def test_several_problems_are_counted(tmp_path):
    error = load_error(tmp_path, GOOD_YAML + "steps: -1\nbatch_size: 0\nseed: x\n")
    # Fields are reported in model order: batch_size comes before steps and seed.
    assert_names(error, problem=("batch_size:", "(got 0)", "(2 more problems after this one.)"))


def test_line_numbers_of_deeply_nested_keys(tmp_path):
    text = GOOD_YAML + (
        "# a comment that shifts lines\n"
        "distribution:\n"
        "  workers: 2\n"
        "  worker_resources:\n"
        "    num_cpus: 1\n"
        "    resources:\n"
        "      accelerator: lots\n"
        "  ps_resources:\n"
        "    num_gpus: -2\n"
    )
    error = load_error(tmp_path, text)
    # Reported first (model order): the custom resource, on its own line, not its parents'.
    assert_names(
        error,
        problem=(
            f"bad.yaml:{line_of(text, 'accelerator')}:",
            "distribution.worker_resources.resources.accelerator",
            "valid number",
            "(1 more problem after this one.)",
        ),
    )


def test_line_number_of_a_list_item(tmp_path):
    text = GOOD_YAML + "metrics:\n  - accuracy\n  - {name: auc}\n"
    error = load_error(tmp_path, text)
    assert_names(error, problem=(f"bad.yaml:{line_of(text, '{name: auc}')}:", "metrics.1"))


# -- --set overrides ---------------------------------------------------------------------------


@pytest.mark.parametrize("item", ["steps", "a..b=1", "=3", ".steps=3", "distribution.=2", " =1"])
def test_set_that_is_not_key_equals_value(tmp_path, item):
    error = load_error(tmp_path, GOOD_YAML, [item])
    assert_names(error, problem=(f"--set {item!r}", "not of the form key.path=value"), fix=("--set distribution.mode=async",))


@pytest.mark.parametrize(
    "item, key, suggestion",
    [
        ("stesp=3", "stesp", "steps"),
        ("distribution.mdoe=async", "distribution.mdoe", "distribution.mode"),
        ("optimiser.name=sgd", "optimiser", "optimizer"),
    ],
)
def test_set_on_unknown_key(tmp_path, item, key, suggestion):
    error = load_error(tmp_path, GOOD_YAML, [item])
    assert_names(error, problem=(f"--set {item}:", f"unknown key '{key}'"), fix=(f"Did you mean '{suggestion}'?",))


@pytest.mark.parametrize(
    "item, key, expected",
    [
        ("steps=abc", "steps", "valid integer"),
        ("distribution.workers=0", "distribution.workers", "greater than or equal to 1"),
        ("optimizer.name=adamw", "optimizer.name", "'adamw' is not allowed"),
        ("distribution=3", "distribution", "valid dictionary"),
        ("steps=[/oops]", "steps", "valid integer"),
    ],
)
def test_set_with_a_wrong_value(tmp_path, item, key, expected):
    error = load_error(tmp_path, GOOD_YAML, [item])
    assert_names(error, problem=(f"--set {item}:", f"{key}:", expected))


def test_set_blames_the_override_not_the_file(tmp_path):
    # The file is fine; the error must not point at a line of it.
    error = load_error(tmp_path, GOOD_YAML + "steps: 10\n", ["steps=-4"])
    assert_names(error, problem=("--set steps=-4:", "(got -4)"))
    assert "bad.yaml" not in error.problem


def test_set_sub_key_of_a_key_missing_from_the_file_blames_the_set(tmp_path):
    # `batch_size` is not in the file, so --set creates it as a mapping {x: 1}.
    error = load_error(tmp_path, GOOD_YAML, ["batch_size.x=1"])
    assert_names(error, problem=("--set batch_size.x=1:", "batch_size:", "valid integer"))


def test_set_sub_key_of_a_scalar(tmp_path):
    error = load_error(tmp_path, GOOD_YAML + "steps: 10\n", ["steps.max=3"])
    assert_names(error, problem=("--set 'steps.max=3'", "'steps' is a int, not a mapping"), fix=("key itself",))


def test_set_sub_key_of_the_loss_name(tmp_path):
    error = load_error(tmp_path, GOOD_YAML, ["loss.name.x=1"])
    assert_names(error, problem=("'loss.name' is a str, not a mapping",))


def test_set_from_logits_on_a_string_loss_works(tmp_path):
    config = load_config(write(tmp_path, GOOD_YAML), ["loss.from_logits=true"])
    assert config.loss.name == "sparse_categorical_crossentropy"
    assert config.loss.from_logits is True


def test_set_learning_rate_on_a_string_optimizer_works(tmp_path):
    config = load_config(write(tmp_path, GOOD_YAML + "optimizer: sgd\n"), ["optimizer.learning_rate=0.05"])
    assert (config.optimizer.name, config.optimizer.learning_rate) == ("sgd", 0.05)


def test_set_cannot_smuggle_an_invalid_loss_into_a_string_shorthand(tmp_path):
    error = load_error(tmp_path, GOOD_YAML, ["loss.from_logits=perhaps"])
    assert_names(error, problem=("--set loss.from_logits=perhaps:", "loss.from_logits", "valid boolean"))


# -- config_from_dict (the Python API) ---------------------------------------------------------


def test_config_from_dict_names_the_key_without_a_file():
    with pytest.raises(ConfigError) as caught:
        config_from_dict({"model": "a:b", "data": {"train": "a:b"}, "loss": "hinge", "distribution": {"mdoe": "async"}})
    assert_names(caught.value, problem=("<config>:", "distribution.mdoe"), fix=("Did you mean 'distribution.mode'?",))


def test_config_from_dict_with_bad_override():
    with pytest.raises(ConfigError) as caught:
        config_from_dict({"model": "a:b", "data": {"train": "a:b"}, "loss": "hinge"}, ["steps=-1"])
    assert_names(caught.value, problem=("--set steps=-1:", "steps:", "greater than or equal to 1"))


def test_placement_resources_keep_the_servers_default_of_no_cpu(tmp_path):
    """KubeRay placement adds only custom resources to ps_resources; the servers must still reserve
    no CPU (a whole CPU each would leave small clusters unable to schedule the workers)."""
    path = write(tmp_path, GOOD_YAML)
    cfg = load_config(path, ["distribution.ps_resources.resources.raytf_ps=1",
                             "distribution.worker_resources.resources.raytf_worker=1"])
    assert cfg.distribution.ps_resources.num_cpus == 0
    assert cfg.distribution.ps_resources.resources == {"raytf_ps": 1}
    assert cfg.distribution.worker_resources.num_cpus == 1
    explicit = load_config(path, ["distribution.ps_resources.num_cpus=2"])
    assert explicit.distribution.ps_resources.num_cpus == 2
