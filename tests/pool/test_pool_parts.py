"""The pool's pure parts: what a run's handle on a host is, which runs the pool serves, what a
given-back host forgets."""

from __future__ import annotations

import pickle
import sys

import pytest

from raytf.config import Resources
from raytf.pool.handles import HostedHandle, Lease
from raytf.pool.host import run_modules
from raytf.pool.lease import Want, bundle, why_not_pooled
from raytf.pool.start import default_size

LEASE = Lease(run_id="r-1", run_name="digits", role="worker", index=1, description="worker 1/2", job_id="02000000")


class FakeActorId:
    def hex(self) -> str:
        return "ab" * 16


class RecordingHost:
    """Stands in for a Ray actor handle: records which method `.remote` reaches, with what."""

    _actor_id = FakeActorId()

    def __init__(self) -> None:
        self.calls = []
        host = self

        class Call:
            def options(self, **options):
                host.calls.append(("options", options))
                return self

            def remote(self, *args, **kwargs):
                host.calls.append(("remote", args, kwargs))
                return "ref"

        self.call = Call()


def test_a_hosted_handle_calls_the_role_s_method_through_the_host_with_its_lease():
    host = RecordingHost()
    handle = HostedHandle(host, LEASE, restarts_before=4)
    assert handle.push.remote(1, "payload", step=3) == "ref"
    assert host.calls == [("options", {"name": "raytf:digits:worker-1.push"}),
                          ("remote", (LEASE, "push", 1, "payload"), {"step": 3})]
    assert handle.restarts_before == 4 and handle._actor_id.hex() == "ab" * 16
    with pytest.raises(AttributeError):
        handle._private_thing  # noqa: B018 - pickle's probes must not become calls


def test_a_hosted_handle_survives_pickling_as_the_workers_get_the_servers():
    handle = pickle.loads(pickle.dumps(HostedHandle(_PicklableHost(), LEASE, 2)))
    assert handle.lease == LEASE and handle.restarts_before == 2


class _PicklableHost:
    _actor_id = None

    def __getstate__(self):
        return {}


def test_runs_the_pool_cannot_serve_say_why():
    assert why_not_pooled([Want("worker", 0, "", Resources(num_cpus=1), 2)]) is None
    assert "GPUs" in why_not_pooled([Want("worker", 0, "", Resources(num_gpus=1), 2)])
    assert "more calls at once" in why_not_pooled([Want("ps", 0, "", Resources(), 500)])


def test_a_host_serves_runs_made_of_the_same_packages_whatever_their_own_code_and_variables():
    from raytf.pool.handles import code_env

    kuberay = {"py_modules": ["gcs://_ray_pkg_raytf.zip"], "pip": {"packages": ["numpy==2.0"], "pip_check": False}}
    run = {**kuberay, "working_dir": "gcs://_ray_pkg_users.zip", "env_vars": {"PYTHONPATH": "/x"}, "excludes": ["runs/"]}
    assert code_env(run) == code_env(dict(reversed(list(kuberay.items()))))  # per-run keys and order do not count
    assert code_env(run) != code_env({}) and code_env({"env_vars": {"A": "1"}}) == code_env({})
    assert code_env({**kuberay, "pip": {"packages": ["numpy==2.1"], "pip_check": False}}) != code_env(kuberay)


def test_an_actor_reserves_its_cpus_and_resources_and_nothing_when_it_asks_none():
    assert bundle(Resources(num_cpus=1, resources={"tpu_slice": 2})) == {"CPU": 1, "tpu_slice": 2}
    assert bundle(Resources(num_cpus=0)) == {}


def test_a_given_back_host_forgets_the_run_s_own_modules_but_not_installed_ones(tmp_path, monkeypatch):
    (tmp_path / "users_model.py").write_text("VALUE = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    before = set(sys.modules)
    import json.tool  # noqa: F401 - installed (standard library): stays
    import users_model  # noqa: F401

    roots = tuple(p for p in sys.path if "site-packages" in p or p.endswith(("lib/python3.11", "lib/python3.12")))
    import sysconfig

    roots = (sysconfig.get_paths()["stdlib"], *roots)
    try:
        found = run_modules(before, roots)
        assert "users_model" in found and "json.tool" not in found
    finally:
        sys.modules.pop("users_model", None)


def test_the_default_pool_fits_a_run_that_fills_the_node():
    assert default_size(2) == 3 and default_size(0.5) == 2 and default_size(16) == 17
