"""The CLI on bad input: exit status 2, `Error: ...` and `Fix: ...` on stderr, no traceback,
and nothing started. `--debug` shows the traceback instead.

No test may start a Ray cluster: the functions that would start or connect to one are replaced
by tripwires, and every test checks that RAYTF_HOME holds no cluster record afterwards.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from raytf import cli
from raytf.errors import ConfigError

from tests.badinput.helpers import GOOD_YAML, line_of, write

REPO = Path(__file__).resolve().parents[1]


class ClusterStarted(AssertionError):
    pass


def _tripwire(*args, **kwargs):
    raise ClusterStarted("a bad-input test reached cluster start-up")


@pytest.fixture(autouse=True)
def home(tmp_path, monkeypatch) -> Path:
    """Isolated RAYTF_HOME and no way to start a cluster; afterwards, no cluster record."""
    home = tmp_path / "raytf-home"
    monkeypatch.setenv("RAYTF_HOME", str(home))
    monkeypatch.delenv("RAYTF_DEBUG", raising=False)
    monkeypatch.setitem(cli._debug, "on", False)  # `--debug` sets a module global
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "no-kubeconfig"))
    monkeypatch.chdir(REPO)  # import paths like tests.badinput.models resolve against the cwd
    monkeypatch.setattr(sys, "path", list(sys.path))
    import raytf.cluster
    import raytf.local_cluster

    monkeypatch.setattr(raytf.local_cluster, "start", _tripwire)
    monkeypatch.setattr(raytf.cluster, "up_local", _tripwire)
    monkeypatch.setattr(raytf.cluster, "connect", _tripwire)
    yield home
    assert not (home / "cluster.json").exists(), "a cluster record appeared"


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
    ],
)
def test_train_bad_config(tmp_path, text, fragments, fix):
    result = run("train", str(write(tmp_path, text)))
    assert_clean_error(result, *fragments, fix=fix)
    assert "training" not in result.stdout  # failed before the run banner


@pytest.mark.parametrize(
    "item, fragments, fix",
    [
        ("steps", ("--set 'steps' is not of the form key.path=value",), ("--set distribution.mode=async",)),
        ("a..b=1", ("--set 'a..b=1' is not of the form key.path=value",), ("--set optimizer.learning_rate=0.01",)),
        ("stesp=3", ("--set stesp=3:", "unknown key 'stesp'"), ("Did you mean 'steps'?",)),
        ("steps=abc", ("--set steps=abc:", "valid integer"), ()),
        # Brackets in a message are text, not rich markup: this used to crash the error printer.
        ("steps=[/oops]", ("--set steps=[/oops]:", "valid integer"), ()),
        ("name=[bold]x", ("--set name=[bold]x:", "'[bold]x'"), ()),
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
    assert "Traceback" not in result.output and "-1" in result.output


def test_dashboard_without_a_cluster():
    result = run("dashboard")
    assert_clean_error(result, "No raytf cluster is up", fix=("raytf up",))


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
    import raytf.state

    raytf.state.record_path().parent.mkdir(parents=True)
    raytf.state.record_path().write_text("{not json")
    result = run("dashboard")
    assert_clean_error(result, "No raytf cluster is up")
    raytf.state.record_path().unlink()


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
