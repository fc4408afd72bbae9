"""The CLI on bad input: exit status 2, `Error: ...` and `Fix: ...` on stderr, no traceback,
and nothing started. `--debug` shows the traceback instead.

No test may start a Ray cluster: the functions that would start or connect to one are replaced
by tripwires, and every test checks that RAYTF_HOME holds no cluster record afterwards. The few
tests of bad cluster addresses and versions may connect (`connect_allowed`): to an address nothing
listens on, or (slow) to the session's `ray_cluster`.

docs/bad-input.md lists the bad inputs and names these tests; tests/test_catalogue.py keeps both in step.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from typer.testing import CliRunner

from raytf import cli
from raytf.errors import ConfigError
from tests.badinput.helpers import GOOD_YAML, line_of, write

REPO = Path(__file__).resolve().parents[2]


class ClusterStarted(AssertionError):
    pass


def _tripwire(*args, **kwargs):
    raise ClusterStarted("a bad-input test reached cluster start-up")


@pytest.fixture(autouse=True)
def home(tmp_path, monkeypatch, request) -> Path:
    """Isolated RAYTF_HOME and no way to use a cluster; afterwards, no cluster record and no head left.

    `raytf train` launches its embedded head while it checks the config and model (the two take
    seconds each); bad input must stop that head before it is ever waited for or connected to.
    A test that requests `connect_allowed` may connect to an address it names (never start a
    cluster): the bad cluster addresses and versions are only found by trying."""
    home = tmp_path / "raytf-home"
    monkeypatch.setenv("RAYTF_HOME", str(home))
    monkeypatch.delenv("RAYTF_DEBUG", raising=False)
    monkeypatch.setitem(cli._debug, "on", False)  # `--debug` sets a module global
    # ... and turns verbose logs on for the process (setenv, not delenv: delenv of an absent variable
    # records nothing to restore, and the test's own change would outlive it).
    monkeypatch.setenv("RAYTF_VERBOSE", "")
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", os.environ.get("TF_CPP_MIN_LOG_LEVEL", "3"))
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "no-kubeconfig"))
    monkeypatch.chdir(REPO)  # import paths like tests.badinput.models resolve against the cwd
    monkeypatch.setattr(sys, "path", list(sys.path))
    import raytf.cluster.connection
    import raytf.cluster.local

    launched = []
    real_launch = raytf.cluster.local.launch

    def recording_launch(*args, **kwargs):
        launched.append(real_launch(*args, **kwargs))
        return launched[-1]

    monkeypatch.setattr(raytf.cluster.local, "launch", recording_launch)
    monkeypatch.setattr(raytf.cluster.local.PendingHead, "wait", _tripwire)
    monkeypatch.setattr(raytf.cluster.local, "start", _tripwire)
    monkeypatch.setattr(raytf.cluster.connection, "up_local", _tripwire)
    if "connect_allowed" not in request.fixturenames:
        monkeypatch.setattr(raytf.cluster.connection, "connect", _tripwire)
    yield home
    assert not (home / "cluster.json").exists(), "a cluster record appeared"
    for head in launched:
        assert head.process.poll() is not None, "a launched head is still running"
        assert raytf.cluster.local._cluster_processes(head.cluster) == [], "processes of a launched head are left"


@pytest.fixture
def connect_allowed() -> None:
    """Marker fixture: the test may connect to a Ray address it passes (see `home`)."""


def run(*args: str):
    return CliRunner().invoke(cli.app, list(args))


def assert_clean_error(result, *fragments: str, fix: tuple[str, ...] = ()) -> str:
    """Exit 2; stderr is one `Error:` paragraph and a `Fix:` line; no traceback. Returns stderr."""
    assert not isinstance(result.exception, ClusterStarted), "cluster start-up was reached"
    assert result.exit_code == 2, f"exit {result.exit_code}; output:\n{result.output}\nexception: {result.exception!r}"
    stderr = result.stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert lines and lines[0].startswith("Error: "), stderr
    assert len(lines) == 2 and lines[1].startswith("Fix: "), f"expected two lines (Error, Fix):\n{stderr}"
    assert "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in lines[0], f"{fragment!r} not in: {lines[0]!r}"
    for fragment in fix:
        assert fragment in lines[1], f"{fragment!r} not in: {lines[1]!r}"
    return stderr


# -- raytf train -------------------------------------------------------------------------------


def test_train_missing_config_file(tmp_path):
    result = run("train", str(tmp_path / "missing.yaml"))
    assert_clean_error(result, "missing.yaml", "does not exist", fix=("Check the path",))
    assert result.stdout == ""


@pytest.mark.parametrize(
    "text, fragments, fix",
    [
        pytest.param("model: a:b\n  data: x\n", ("bad.yaml:2:", "YAML syntax error"), ("indentation",), id="syntax"),
        pytest.param("", ("bad.yaml is empty",), ("examples/digits.yaml",), id="empty"),
        pytest.param("- model: a:b\n", ("must be a YAML mapping", "it is a list"), ("examples/digits.yaml",), id="list"),
        pytest.param(GOOD_YAML + "steps: 1\nsteps: 2\n", ("bad.yaml:6:", "'steps' appears twice", "first on line 5"),
                     ("Keep one",), id="duplicate"),
        pytest.param(GOOD_YAML + "distribution:\n  mdoe: async\n", ("bad.yaml:6:", "unknown key 'distribution.mdoe'"),
                     ("Did you mean 'distribution.mode'?",), id="typo"),
        pytest.param(GOOD_YAML + "optimizer: adamw\n", ("bad.yaml:5:", "optimizer.name: 'adamw' is not allowed"),
                     ("Did you mean 'adam'?", "'rmsprop'"), id="adamw"),
        pytest.param(GOOD_YAML + "batch_size: abc\n", ("bad.yaml:5:", "batch_size", "'abc'"), ("value",), id="type"),
        pytest.param(GOOD_YAML + "distribution:\n  workers: 0\n", ("bad.yaml:6:", "distribution.workers", "(got 0)"),
                     (), id="workers-0"),
        pytest.param(GOOD_YAML + "distribution:\n  workers: 3\n  backup_workers: 3\n",
                     ("bad.yaml:7:", "distribution.backup_workers", "less than workers (3), but it is 3"),
                     ("at most 2",), id="backups-not-below-workers"),
        pytest.param(GOOD_YAML + "distribution:\n  mode: async\n  backup_workers: 1\n",
                     ("bad.yaml:7:", "distribution.backup_workers", "mode is 'async'"),
                     ("Set mode: sync",), id="backups-without-sync"),
        pytest.param(GOOD_YAML + "distribution:\n  staleness_bound: 2\n",
                     ("bad.yaml:6:", "distribution.staleness_bound", "mode is 'sync'", "mode ssp only"),
                     ("Set mode: ssp",), id="bound-without-ssp"),
        pytest.param(GOOD_YAML + "distribution:\n  mode: ssp\n  staleness_bound: -1\n",
                     ("bad.yaml:7:", "distribution.staleness_bound", "(got -1)"), ("greater than or equal to 0",),
                     id="bound-negative"),
        pytest.param(GOOD_YAML + "sparse:\n  partition: mdo\n", ("bad.yaml:6:", "sparse.partition: 'mdo' is not allowed"),
                     ("Did you mean 'mod'?",), id="sparse-partition-typo"),
        pytest.param(GOOD_YAML + "distribution:\n  mode: spp\n", ("bad.yaml:6:", "distribution.mode: 'spp' is not allowed"),
                     ("Did you mean 'ssp'?",), id="mode-typo-ssp"),
    ],
)
def test_train_bad_config(tmp_path, text, fragments, fix):
    result = run("train", str(write(tmp_path, text)))
    assert_clean_error(result, *fragments, fix=fix)
    assert "training" not in result.stdout  # failed before the run banner


@pytest.mark.parametrize(
    "item, fragments, fix",
    [
        pytest.param("steps", ("--set 'steps' is not of the form key.path=value",), ("--set distribution.mode=async",),
                     id="no-equals"),
        pytest.param("a..b=1", ("--set 'a..b=1' is not of the form key.path=value",), ("--set optimizer.learning_rate=0.01",),
                     id="empty-path-part"),
        pytest.param("stesp=3", ("--set stesp=3:", "unknown key 'stesp'"), ("Did you mean 'steps'?",), id="unknown-key"),
        pytest.param("steps=abc", ("--set steps=abc:", "valid integer"), (), id="wrong-type"),
        # Brackets in a message are text, not rich markup: this used to crash the error printer.
        pytest.param("steps=[/oops]", ("--set steps=[/oops]:", "valid integer"), (), id="markup-close-tag"),
        pytest.param("name=[bold]x", ("--set name=[bold]x:", "'[bold]x'"), (), id="markup-open-tag"),
    ],
)
def test_train_bad_set(tmp_path, item, fragments, fix):
    result = run("train", str(write(tmp_path, GOOD_YAML)), "--set", item)
    assert_clean_error(result, *fragments, fix=fix)


def test_train_bad_import_path_fails_before_any_cluster(tmp_path):
    text = GOOD_YAML.replace("tests.badinput.models:build_model", "tests.badinput.modles:build_model")
    result = run("train", str(write(tmp_path, text)), "--set", f"output_dir={tmp_path / 'out'}")
    assert_clean_error(result, "model: cannot import module 'tests.badinput.modles'", fix=("PYTHONPATH",))


def test_train_bad_data_fails_before_any_cluster(tmp_path):
    text = GOOD_YAML.replace(":train_data", ":labels_up_to_seven")
    result = run("train", str(write(tmp_path, text)), "--set", f"output_dir={tmp_path / 'out'}")
    assert_clean_error(result, "labels range from 0 to 7", "model has 3 outputs", fix=("units",))


# -- model and data callables, through the CLI ------------------------------------------------


def files_under(path: Path) -> list[Path]:
    """Every file below `path` (a failed run must leave none behind)."""
    return sorted(p for p in path.rglob("*") if p.is_file()) if path.exists() else []


def train_with(tmp_path: Path, model: str = "build_model", train: str = "train_data", *sets: str):
    """`raytf train` on GOOD_YAML with the model and data functions of tests/badinput/models.py named."""
    text = GOOD_YAML.replace(":build_model", f":{model}").replace(":train_data", f":{train}")
    return run("train", str(write(tmp_path, text)), "--set", f"output_dir={tmp_path / 'out'}", *sets)


@pytest.mark.parametrize(
    "model, train, sets, fragments, fix",
    [
        pytest.param("returns_a_string", "train_data", (), ("model: tests.badinput.models:returns_a_string returned a str",
                     "not a Keras model"), ("keras.Model",), id="model-not-keras"),
        pytest.param("NOT_CALLABLE", "train_data", (), ("model: 'tests.badinput.models:NOT_CALLABLE' is a int",
                     "not a function or class"), ("function",), id="model-not-callable"),
        pytest.param("raises_while_building", "train_data", (), ("model: calling raises_while_building()",
                     "raised RuntimeError", "broken on purpose"), ("--debug",), id="model-raises"),
        pytest.param("build_modle", "train_data", (), ("module 'tests.badinput.models' has no attribute 'build_modle'",),
                     ("Did you mean 'tests.badinput.models:build_model'?",), id="model-attribute-typo"),
        pytest.param("build_model_float16", "train_data", (), ("has dtype float16", "hold float32 variables"),
                     ("float32",), id="model-float16"),
        pytest.param("build_frozen_model", "train_data", (), ("model: the model has no trainable variables",),
                     ("trainable layers",), id="model-frozen"),
        pytest.param("build_model", "raises_while_loading", (), ("data.train: calling raises_while_loading(0, 2)",
                     "raised FileNotFoundError"), ("Fix that function",), id="data-raises"),
        pytest.param("build_model", "returns_a_list", (), ("data.train returned a list, not a tf.data.Dataset",),
                     ("from_tensor_slices",), id="data-not-a-dataset"),
        pytest.param("build_model", "features_only", (), ("data.train yields elements of structure",
                     "(features, label) pairs"), ("2-tuples",), id="data-structure"),
        pytest.param("build_model", "string_features", (), ("data.train: the features have dtype string",),
                     ("numeric dtype",), id="data-string-features"),
        pytest.param("build_model", "string_labels", (), ("data.train: the labels have dtype string",),
                     ("numeric dtype",), id="data-string-labels"),
        pytest.param("build_model", "varying_shapes", (), ("data.train: the examples do not all have the same shape",
                     "First element had shape [2]"), ("same shape",), id="data-varying-shapes"),
        pytest.param("build_model", "fails_while_reading", (), ("data.train: reading the first batch",
                     "record 0 is corrupt"), ("Fix the dataset pipeline",), id="data-fails-while-reading"),
        pytest.param("build_model", "empty", (), ("data.train returned an empty dataset",), ("shard",), id="data-empty"),
        pytest.param("build_model", "ten_features", (), ("features of shape (10,)", "expects inputs of shape (4,)"),
                     ("input shape",), id="data-shape-mismatch"),
        pytest.param("build_model", "dict_features", (), ("features of shape {'pixels': (4,)}",
                     "expects inputs of shape (4,)"), ("input shape",), id="data-dict-features"),
        pytest.param("build_model", "nan_features", (), ("loss: the loss of the first batch is nan",),
                     ("features are finite",), id="data-nan"),
        pytest.param("build_model", "negative_labels", (), ("labels range from -1 to 1", "labels in 0..2"),
                     ("Fix the labels",), id="labels-negative"),
        pytest.param("build_model", "fractional_labels", (), ("needs whole class ids as labels", "a label is 0.5"),
                     ("tf.int32",), id="labels-fractional"),
        pytest.param("build_binary_model", "binary_labels_up_to_six", ("--set", "loss=binary_crossentropy"),
                     ("labels range from 0 to 6", "binary_crossentropy needs labels between 0 and 1"), ("0/1 labels",),
                     id="labels-not-binary"),
        pytest.param("build_model", "train_data", ("--set", "loss=mean_squared_error"), ("loss: mean_squared_error cannot "
                     "compare the labels of shape ()", "outputs of shape (3,)"), ("sparse_categorical_crossentropy",),
                     id="loss-does-not-fit"),
        pytest.param("build_model", "train_data", ("--set", "metrics=[acuracy]"), ("metrics: 'acuracy' is not a Keras metric",),
                     ("Did you mean 'accuracy'?",), id="metric-typo"),
        pytest.param("build_model", "train_data", ("--set", "metrics=[accuracy, mean_squared_error]"),
                     ("metrics: mean_squared_error cannot be computed", "Incompatible shapes"),
                     ("sparse_categorical_accuracy",), id="metric-does-not-fit"),
        pytest.param("build_model", "train_data", ("--set", "data.eval=tests.badinput.models:eval_data_six_features"),
                     ("data.eval gives features of shape [(6,)]", "data.train gives [(4,)]"), ("same shape",),
                     id="eval-shape-differs"),
        pytest.param("build_model", "train_data", ("--set", "data.eval=tests.badinput.models:eval_labels_up_to_nine"),
                     ("data.eval: labels range from 0 to 9", "labels in 0..2"), ("units",), id="eval-labels-out-of-range"),
        pytest.param("build_model", "train_data", ("--set", "distribution.parameter_servers=3"),
                     ("distribution.parameter_servers is 3", "only 2 trainable variables"), ("at most 2",),
                     id="more-servers-than-variables"),
        pytest.param("build_embedding_model", "item_ids_out_of_range", (),
                     ("data.train: the batch has id 10 for the embedding table 'items', whose input_dim is 10",
                      "ids must be in 0..9"), ("input_dim",), id="embedding-id-out-of-range"),
        pytest.param("build_embedding_model", "item_ids", ("--set", "sparse.tables=[itmes]"),
                     ("sparse.tables names 'itmes'", "its embedding layers: 'items'"), ("sparse.tables: auto",),
                     id="sparse-table-not-a-layer"),
        pytest.param("build_regularized_embedding_model", "item_ids", ("--set", "sparse.tables=[items]"),
                     ("'items' cannot be a sparse table", "embeddings_regularizer"), ("leave it out",),
                     id="sparse-table-ineligible"),
    ],
)
def test_train_bad_model_or_data(tmp_path, model, train, sets, fragments, fix):
    result = train_with(tmp_path, model, train, *sets)
    assert_clean_error(result, *fragments, fix=fix)
    assert files_under(tmp_path / "out") == [], "a failed run left files in output_dir"


def test_train_module_whose_dependency_is_missing(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(REPO / "tests" / "badinput" / "toplevel"))
    text = GOOD_YAML.replace("tests.badinput.models:build_model", "torchish_models:build_model")
    result = run("train", str(write(tmp_path, text)), "--set", f"output_dir={tmp_path / 'out'}")
    assert_clean_error(result, "importing module 'torchish_models' failed", "imports 'torchish'", "not installed",
                       fix=("pip install torchish",))


# -- output_dir ----------------------------------------------------------------------------------


def test_train_output_dir_that_is_a_file(tmp_path):
    existing = tmp_path / "results.txt"
    existing.write_text("keep me")
    result = run("train", str(write(tmp_path, GOOD_YAML)), "--set", f"output_dir={existing}")
    assert_clean_error(result, f"output_dir {existing} exists and is a file", fix=("directory",))
    assert existing.read_text() == "keep me"


@contextlib.contextmanager
def unwritable_directory(path: Path):
    """A directory in which this process cannot create files: mode 0o555, or for root (whom file
    modes do not stop) the immutable attribute of ext4 and friends. Skips where neither holds."""
    path.mkdir()
    immutable = os.geteuid() == 0
    if immutable:
        if shutil.which("chattr") is None or subprocess.run(["chattr", "+i", str(path)], capture_output=True).returncode:
            pytest.skip("running as root, and this filesystem has no immutable attribute (chattr +i)")
    else:
        path.chmod(0o555)
    try:
        if _can_create_files_in(path):
            pytest.skip(f"{path} stays writable for this process")
        yield path
    finally:
        if immutable:
            subprocess.run(["chattr", "-i", str(path)], check=True)
        else:
            path.chmod(0o755)


def _can_create_files_in(path: Path) -> bool:
    probe = path / "probe"
    try:
        probe.touch()
    except OSError:
        return False
    probe.unlink()
    return True


def test_train_output_dir_not_writable(tmp_path):
    with unwritable_directory(tmp_path / "readonly") as readonly:
        result = run("train", str(write(tmp_path, GOOD_YAML)), "--set", f"output_dir={readonly}")
        assert_clean_error(result, f"output_dir {readonly} is not writable", fix=("directory you can write to",))
        assert files_under(readonly) == []


# -- command-line usage --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args, fragments",
    [
        pytest.param(("train", "cfg.yaml", "--adress", "127.0.0.1:6379"), ("No such option: --adress", "--address"),
                     id="option-typo"),
        pytest.param(("trian", "cfg.yaml"), ("No such command 'trian'", "Did you mean 'train'"), id="command-typo"),
        pytest.param(("train",), ("Missing argument 'config'", "raytf train -h"), id="missing-config"),
        pytest.param(("train", "cfg.yaml", "--set"), ("Option '--set' requires an argument",), id="set-without-value"),
    ],
)
def test_usage_errors(args, fragments):
    """Click's own usage errors: exit status 2, the problem and a hint, no traceback."""
    result = run(*args)
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in result.stderr, f"{fragment!r} not in:\n{result.stderr}"


def test_train_submit_and_address_together(tmp_path):
    result = run("train", str(write(tmp_path, GOOD_YAML)), "--submit", "--address", "127.0.0.1:6379")
    assert_clean_error(result, "--submit sends the run to the cluster", "--address connects directly",
                       fix=("Drop one of --submit and --address",))


def test_debug_lets_the_exception_through(tmp_path):
    path = write(tmp_path, GOOD_YAML + "steps: -1\n")
    result = run("--debug", "train", str(path))
    assert isinstance(result.exception, ConfigError), result.output
    assert "steps: input should be greater than or equal to 1" in result.exception.problem
    assert "Error:" not in result.stderr


def test_raytf_debug_environment_variable(tmp_path, monkeypatch):
    monkeypatch.setitem(cli._debug, "on", True)  # what RAYTF_DEBUG=1 sets at import
    result = run("train", str(tmp_path / "missing.yaml"))
    assert isinstance(result.exception, ConfigError)
    assert "does not exist" in str(result.exception)


# -- the real process: stderr separation, tracebacks -------------------------------------------


def run_process(*args: str, home: Path, debug_env: bool = False) -> subprocess.CompletedProcess:
    env = {**os.environ, "RAYTF_HOME": str(home)}
    env.pop("RAYTF_DEBUG", None)
    if debug_env:
        env["RAYTF_DEBUG"] = "1"
    return subprocess.run([sys.executable, "-m", "raytf.cli", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=60)


def test_process_prints_one_paragraph_on_stderr(tmp_path, home):
    text = GOOD_YAML + "distribution:\n  mode: asinc\n"
    proc = run_process("train", str(write(tmp_path, text)), home=home)
    assert proc.returncode == 2, proc.stderr
    assert proc.stdout == ""
    assert proc.stderr.startswith("Error: ")
    assert f"bad.yaml:{line_of(text, 'mode:')}: distribution.mode: 'asinc' is not allowed." in proc.stderr
    assert "\nFix: Did you mean 'async'?" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 2


@pytest.mark.parametrize("how", ["--debug", "RAYTF_DEBUG"])
def test_process_debug_shows_the_traceback(tmp_path, home, how):
    path = str(write(tmp_path, GOOD_YAML + "steps: -1\n"))
    args = ("--debug", "train", path) if how == "--debug" else ("train", path)
    proc = run_process(*args, home=home, debug_env=how == "RAYTF_DEBUG")
    assert proc.returncode != 0
    assert "Traceback (most recent call last)" in proc.stderr
    assert "raytf.errors.ConfigError" in proc.stderr and "greater than or equal to 1" in proc.stderr


# -- cluster commands without a cluster --------------------------------------------------------


def test_scale_without_a_kuberay_cluster():
    result = run("scale", "g", "1")
    assert_clean_error(result, "`raytf scale` changes a KubeRay worker group", "not a KubeRay cluster",
                       fix=("raytf up --cluster",))


def test_scale_with_a_local_cluster_recorded(home):
    home.mkdir()
    (home / "cluster.json").write_text(json.dumps({"provider": "local", "pid": 1}))
    result = run("scale", "workers", "3")
    assert_clean_error(result, "not a KubeRay cluster")
    (home / "cluster.json").unlink()  # the fixture checks that no record was *created*


def test_scale_with_negative_replicas_is_a_usage_error():
    result = run("scale", "g", "-1")
    assert result.exit_code == 2
    assert "Traceback" not in result.output
    assert "Invalid value for 'replicas'" in result.stderr, result.stderr
    assert "greater than or equal to 0" in result.stderr and "No such option" not in result.stderr


def test_dashboard_without_a_cluster():
    result = run("dashboard")
    assert_clean_error(result, "No raytf cluster is up", fix=("raytf up",))


def test_env_without_a_cluster():
    result = run("env")
    assert_clean_error(result, "No raytf cluster is up", fix=("raytf up",))


def test_env_with_a_kuberay_cluster_recorded(home):
    home.mkdir()
    (home / "cluster.json").write_text(json.dumps({"provider": "kuberay", "name": "demo"}))
    result = run("env")
    assert_clean_error(result, "KubeRay cluster", fix=("raytf dashboard", "RAY_API_SERVER_ADDRESS"))
    (home / "cluster.json").unlink()  # the fixture checks that no record was *created*


def test_dashboard_with_a_stale_record_drops_it(home):
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()  # a pid that no longer runs
    home.mkdir()
    record = {"provider": "local", "pid": gone.pid, "gcs_address": "127.0.0.1:1", "dashboard_url": "http://127.0.0.1:2",
              "metrics_port": 3, "temp_dir": "/nonexistent", "log_path": "/nonexistent/log", "num_cpus": 1, "started_at": 0.0}
    (home / "cluster.json").write_text(json.dumps(record))
    result = run("dashboard")
    assert_clean_error(result, "No raytf cluster is up")
    assert not (home / "cluster.json").exists(), "the stale record was kept"


def test_dashboard_with_an_unreadable_record():
    import raytf.cluster.record

    raytf.cluster.record.record_path().parent.mkdir(parents=True)
    raytf.cluster.record.record_path().write_text("{not json")
    result = run("dashboard")
    assert_clean_error(result, "No raytf cluster is up")
    raytf.cluster.record.record_path().unlink()


# -- raytf up on bad specs ---------------------------------------------------------------------


def test_up_dry_run_without_a_kuberay_spec():
    result = run("up", "--dry-run")
    assert_clean_error(result, "--dry-run renders a KubeRay manifest", fix=("--cluster", "kuberay"))


def test_up_dry_run_with_a_local_spec():
    result = run("up", "--dry-run", "--cluster", str(REPO / "cluster-configs" / "local.yaml"))
    assert_clean_error(result, "--dry-run renders a KubeRay manifest")


@pytest.mark.parametrize(
    "text, fragments",
    [
        pytest.param("provider: gke\nnum_cpus: 2\n", ("spec.yaml:1:", "provider is 'gke'"), id="unknown"),
        pytest.param("num_cpus: 2\n", ("spec.yaml:", "provider is None"), id="missing"),
        pytest.param("- provider: local\n", ("spec.yaml", "provider is None"), id="list"),
        pytest.param("", ("spec.yaml", "provider is None"), id="empty"),
    ],
)
def test_up_with_a_spec_of_unknown_provider(tmp_path, text, fragments):
    result = run("up", "--cluster", str(write(tmp_path, text, "spec.yaml")))
    assert_clean_error(result, *fragments, fix=("cluster-configs/",))
    assert "provider: local" in result.stderr and "provider: kuberay" in result.stderr


def test_up_with_a_missing_spec(tmp_path):
    result = run("up", "--cluster", str(tmp_path / "nope.yaml"))
    assert_clean_error(result, "nope.yaml does not exist")


def test_up_with_a_spec_that_is_not_yaml(tmp_path):
    result = run("up", "--cluster", str(write(tmp_path, "provider: [local\n", "spec.yaml")))
    assert_clean_error(result, "spec.yaml:2:", "YAML syntax error")


def test_up_with_a_local_spec_with_a_typo(tmp_path):
    text = "provider: local\nnum_cpu: 2\n"
    result = run("up", "--cluster", str(write(tmp_path, text, "spec.yaml")))
    assert_clean_error(result, "spec.yaml:2:", "num_cpu", fix=("num_cpus", "timeout_seconds"))


def test_up_with_a_local_spec_with_a_bad_value(tmp_path):
    text = "provider: local\ntimeout_seconds: -5\n"
    result = run("up", "--cluster", str(write(tmp_path, text, "spec.yaml")))
    assert_clean_error(result, "spec.yaml:2:", "timeout_seconds", "greater than 0")


# -- cluster addresses, stopped clusters, Ray versions -------------------------------------------


def closed_port() -> int:
    """A port on 127.0.0.1 that nothing listens on (bound once by the OS, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_train_on_an_unreachable_address(tmp_path, home):
    address = f"127.0.0.1:{closed_port()}"
    out = tmp_path / "out"
    env = {**os.environ, "RAYTF_HOME": str(home)}
    env.pop("RAYTF_DEBUG", None)
    command = [sys.executable, "-m", "raytf.cli", "train", str(write(tmp_path, GOOD_YAML)), "--address", address,
               "--set", f"output_dir={out}"]
    proc = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    watchdog = threading.Timer(300, proc.kill)  # only if the process neither fails nor logs a retry
    watchdog.start()
    lines = []
    try:
        for line in proc.stderr:
            lines.append(line)
            if "Failed to connect to GCS" in line or "Failed to get cluster ID" in line:
                proc.kill()  # Ray is retrying the dead address: raytf handed it over unchecked
                break
        stdout = proc.stdout.read()
        proc.wait()
    finally:
        watchdog.cancel()
        proc.stdout.close()
        proc.stderr.close()
    stderr = "".join(lines)
    assert proc.returncode == 2, f"raytf train --address {address} was still retrying (exit {proc.returncode}):\n{stderr}"
    assert "Traceback" not in stderr and "Traceback" not in stdout
    error = [line for line in stderr.splitlines() if line.startswith("Error: ")]
    fix = [line for line in stderr.splitlines() if line.startswith("Fix: ")]
    assert error and address in error[0] and "Nothing answers" in error[0], stderr
    assert fix and "raytf up" in fix[0], stderr
    assert files_under(out) == [], "a failed run left files in output_dir"


@pytest.mark.parametrize("address", ["nonsense", "127.0.0.1:port"], ids=["no-port", "port-not-a-number"])
def test_train_on_a_malformed_address(tmp_path, connect_allowed, address):
    out = tmp_path / "out"
    result = run("train", str(write(tmp_path, GOOD_YAML)), "--address", address, "--set", f"output_dir={out}")
    assert_clean_error(result, f"'{address}'", "HOST:PORT", fix=("127.0.0.1:6379",))
    assert files_under(out) == [], "a failed run left files in output_dir"


def write_stale_record(home: Path) -> Path:
    """The record `raytf up` wrote, of a cluster whose processes have all died since."""
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()  # a pid that no longer runs
    home.mkdir(exist_ok=True)
    record = {"provider": "local", "pid": gone.pid, "gcs_address": f"127.0.0.1:{closed_port()}",
              "dashboard_url": f"http://127.0.0.1:{closed_port()}", "metrics_port": closed_port(),
              "temp_dir": str(home / "no-such-session"), "log_path": str(home / "head.log"), "num_cpus": 1, "started_at": 0.0}
    path = home / "cluster.json"
    path.write_text(json.dumps(record))
    return path


@pytest.mark.parametrize("stale", [False, True], ids=["never-started", "processes-died"])
def test_down_when_the_cluster_already_stopped(home, stale):
    """Stopping what is not running is not an error (exit 0, like the second of two `raytf down`)."""
    record = write_stale_record(home) if stale else home / "cluster.json"
    result = run("down")
    assert result.exit_code == 0, result.output
    assert "No raytf cluster is running; nothing to stop." in result.stdout
    assert "Traceback" not in result.output
    assert not record.exists(), "the stale record was kept"


def test_status_after_the_cluster_processes_died(home):
    """The answer to `raytf status` is 'nothing is up' (exit 1, as when none was started), and the record is dropped."""
    record = write_stale_record(home)
    result = run("status")
    assert result.exit_code == 1, result.output
    assert "No raytf cluster is up. Start one with `raytf up`" in result.stdout
    assert "Traceback" not in result.output
    assert not record.exists(), "the stale record was kept"


def test_status_when_the_head_runs_but_its_dashboard_died(home, tmp_path):
    """The head process lives on, but its dashboard (and so Ray's state API) is gone."""
    temp_dir = tmp_path / "session"
    # Stands in for the head: a live process whose command line names the cluster's temp dir.
    head = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()", str(temp_dir)], stdin=subprocess.PIPE)
    try:
        home.mkdir()
        dashboard = f"http://127.0.0.1:{closed_port()}"
        record = {"provider": "local", "pid": head.pid, "gcs_address": f"127.0.0.1:{closed_port()}", "dashboard_url": dashboard,
                  "metrics_port": closed_port(), "temp_dir": str(temp_dir), "log_path": str(tmp_path / "head.log"),
                  "num_cpus": 1, "started_at": 0.0}
        (home / "cluster.json").write_text(json.dumps(record))
        result = run("status")
        assert_clean_error(result, f"The local cluster's dashboard at {dashboard} does not answer",
                           fix=("`raytf down` then `raytf up`",))
    finally:
        head.stdin.close()
        head.wait()
        (home / "cluster.json").unlink(missing_ok=True)  # the fixture checks that no record was *created*


@pytest.mark.slow
def test_train_on_a_cluster_of_another_ray_version(ray_cluster, connect_allowed, tmp_path, monkeypatch):
    """A real cluster; this driver claims another Ray release, so Ray's own version check refuses it
    (as when `raytf up` ran before an upgrade of Ray, or --address names someone else's cluster)."""
    import ray

    cluster_ray = ray.__version__
    monkeypatch.setattr(ray, "__version__", "2.59.0")
    out = tmp_path / "out"
    result = run("train", str(write(tmp_path, GOOD_YAML)), "--address", ray_cluster.gcs_address, "--set", f"output_dir={out}")
    assert_clean_error(result, ray_cluster.gcs_address, f"runs Ray {cluster_ray}", "this machine has Ray 2.59.0",
                       fix=(f"pip install ray=={cluster_ray}",))
    assert files_under(out) == [], "a failed run left files in output_dir"
