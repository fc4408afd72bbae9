"""Ray token authentication on KubeRay: `authOptions` in the manifest, the token read from the Secret
the operator creates (real `kubernetes` client, fake API server), the Bearer header reaching a
token-checking dashboard through the real port-forward websocket, and the token never in output."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from kubernetes import client as k8s
from rich.console import Console

from raytf.cluster.kuberay import commands
from raytf.cluster.kuberay.auth import auth_secret_name, check_name, render_auth_options
from raytf.cluster.kuberay.client import KubeClient
from raytf.cluster.kuberay.errors import AuthTokenUnavailable, ClusterSpecError
from raytf.cluster.kuberay.manifest import render_raycluster
from raytf.cluster.kuberay.specfile import load_cluster_spec, parse_cluster_spec
from raytf.cluster.kuberay.token import cluster_token, read_token

from .fake_apiserver import FakeApiServer
from .fake_ray_api import FakeRayDashboard
from .helpers import CONFIGS, output

CPU = CONFIGS / "kuberay-cpu.yaml"
pytestmark = pytest.mark.filterwarnings("error::pytest.PytestUnhandledThreadExceptionWarning")


def no_auth_spec(tmp_path: Path) -> Path:
    path = tmp_path / "open.yaml"
    path.write_text(CPU.read_text() + "auth: none\n")
    return path


@pytest.fixture
def ray_dashboard(fake: FakeApiServer):
    """A token-checking dashboard behind the fake API server's pod port-forward, sharing its token."""
    with FakeRayDashboard(token=fake.auth_token) as dashboard:
        fake.forward_to = dashboard.port
        yield dashboard


def test_token_mode_is_the_default_and_can_be_turned_off(tmp_path: Path) -> None:
    for spec_path in sorted(CONFIGS.glob("kuberay-*.yaml")):
        assert render_raycluster(load_cluster_spec(spec_path))["spec"]["authOptions"] == {"mode": "token"}, spec_path
    spec = load_cluster_spec(no_auth_spec(tmp_path))
    assert render_auth_options(spec) is None and "authOptions" not in render_raycluster(spec)["spec"]
    with pytest.raises(ClusterSpecError, match=r"x\.yaml:\d+: auth: must be 'token' or 'none' \(YAML read a boolean: write `auth: none`"):
        parse_cluster_spec(CPU.read_text() + "auth: off\n", "x.yaml")


def test_secret_name_follows_kuberay(tmp_path: Path) -> None:
    assert check_name("raytf-cpu") == "raytf-cpu"
    long = "a" * 45 + "-job-" + "x1y2z"
    assert check_name(long) == long[-50:] and len(check_name(long)) == 50
    assert check_name("9abc") == "rabc"
    cluster = render_raycluster(load_cluster_spec(CPU))
    assert auth_secret_name(cluster) == "raytf-cpu"
    cluster["spec"]["authOptions"]["secretName"] = "my-token"
    assert auth_secret_name(cluster) == "my-token"
    assert auth_secret_name(render_raycluster(load_cluster_spec(no_auth_spec(tmp_path)))) is None
    cluster["spec"]["authOptions"] = {"mode": "disabled"}
    assert auth_secret_name(cluster) is None


def test_token_is_read_from_the_operator_secret(fake: FakeApiServer, kube: KubeClient, api_client: k8s.ApiClient) -> None:
    fake.add_cluster(render_raycluster(load_cluster_spec(CPU)), ready=True)
    assert read_token(kube, "default", "raytf-cpu") == fake.auth_token
    assert read_token(api_client, "default", "raytf-cpu") == fake.auth_token  # a bare ApiClient works too
    assert cluster_token(kube, "raytf-cpu", "default") == fake.auth_token
    assert fake.calls("GET", "/api/v1/namespaces/default/secrets/raytf-cpu")


def test_named_secret_and_no_auth(fake: FakeApiServer, kube: KubeClient, tmp_path: Path) -> None:
    from .fake_objects import secret

    manifest = render_raycluster(load_cluster_spec(CPU))
    manifest["spec"]["authOptions"]["secretName"] = "team-token"
    fake.add_cluster(manifest)
    assert ("default", "raytf-cpu") not in fake.secrets  # a named Secret is the user's to create
    fake.secrets[("default", "team-token")] = secret("default", "team-token", {"auth_token": "team-secret-value\n"})
    assert cluster_token(kube, "raytf-cpu", "default") == "team-secret-value"
    fake.secrets[("default", "team-token")] = secret("default", "team-token", {"token": "x"})
    with pytest.raises(AuthTokenUnavailable, match="has no key 'auth_token'"):
        cluster_token(kube, "raytf-cpu", "default")

    open_manifest = render_raycluster(load_cluster_spec(no_auth_spec(tmp_path)))
    open_manifest["metadata"]["name"] = "open"
    fake.add_cluster(open_manifest)
    before = len(fake.calls("GET", "/secrets/"))
    assert cluster_token(kube, "open", "default") is None
    assert len(fake.calls("GET", "/secrets/")) == before  # no Secret read without token auth


def test_forbidden_secret_is_a_named_error_with_the_rbac_fix(fake: FakeApiServer, kube: KubeClient) -> None:
    fake.add_cluster(render_raycluster(load_cluster_spec(CPU)), ready=True)
    fake.forbidden = {("get", "secrets")}
    with pytest.raises(AuthTokenUnavailable) as info:
        read_token(kube, "default", "raytf-cpu")
    assert "RayCluster 'raytf-cpu' requires Ray token authentication" in info.value.problem
    assert "Secret 'raytf-cpu'" in info.value.problem and "403 Forbidden" in info.value.problem
    assert "'get' on secrets in 'default'" in info.value.fix
    assert "kubectl auth can-i get secrets/raytf-cpu -n default" in info.value.fix


def test_missing_secret_says_the_operator_has_not_made_it(fake: FakeApiServer, kube: KubeClient) -> None:
    fake.creates_auth_secrets = False
    fake.add_cluster(render_raycluster(load_cluster_spec(CPU)), ready=True)
    with pytest.raises(AuthTokenUnavailable) as info:
        cluster_token(kube, "raytf-cpu", "default")
    assert "token Secret 'raytf-cpu' does not exist in namespace 'default'" in info.value.problem
    assert "operator creates it" in info.value.fix and "wait and retry" in info.value.fix


def test_up_sends_the_token_and_never_prints_it(
    fake: FakeApiServer, api_client: k8s.ApiClient, console: Console, ray_dashboard: FakeRayDashboard,
    capsys: pytest.CaptureFixture[str],
) -> None:
    commands.up(CPU, timeout=60, kubeconfig=None, console=console, api_client=api_client, poll_interval=0)
    assert "Dashboard answers through a port-forward" in output(console)
    assert ray_dashboard.seen_auth and all(auth == f"Bearer {fake.auth_token}" for _, _, auth in ray_dashboard.seen_auth)
    st = commands.status(console=console, api_client=api_client)
    assert st.ready
    text = output(console)
    assert "auth: Ray token (read from the cluster's Secret)" in text
    assert "dashboard: answers with the cluster's token" in text
    captured = capsys.readouterr()
    assert fake.auth_token not in text + captured.out + captured.err


def test_up_starts_the_warm_pool_as_a_job_with_the_runs_runtime_env(
    fake: FakeApiServer, api_client: k8s.ApiClient, console: Console, ray_dashboard: FakeRayDashboard,
) -> None:
    """`raytf up --cluster ... [--warm N]`: once ready, the pool is started by a Ray job on the head, through the
    port-forward with the cluster's token, with the runtime_env every run's job brings raytf by (so the pool's
    processes are made of what the runs are); `--warm 0` submits none."""
    from raytf.cluster.kuberay.runtime_env import pinned_requirements

    commands.up(CPU, timeout=60, kubeconfig=None, console=console, api_client=api_client, poll_interval=0, warm=2)
    (job,) = ray_dashboard.jobs
    assert job["entrypoint"] == "python -m raytf.pool --warm 2" and job["submission_id"].startswith("raytf-pool-")
    assert job["runtime_env"]["pip"]["packages"] == pinned_requirements() and job["runtime_env"]["py_modules"]
    assert ("POST", "/api/jobs/", f"Bearer {fake.auth_token}") in ray_dashboard.seen_auth
    assert f"Warm pool: starting on every pod with CPUs (Ray job {job['submission_id']})" in output(console)
    commands.up(CPU, timeout=60, kubeconfig=None, console=console, api_client=api_client, poll_interval=0, warm=0)
    assert len(ray_dashboard.jobs) == 1


def test_status_reports_a_token_the_dashboard_refuses(
    fake: FakeApiServer, api_client: k8s.ApiClient, console: Console, ray_dashboard: FakeRayDashboard,
) -> None:
    fake.add_cluster(render_raycluster(load_cluster_spec(CPU)), ready=True)
    ray_dashboard.token = "the-cluster-rotated-it"
    commands.status(CPU, console=console, api_client=api_client)
    assert "dashboard: refused the request (HTTP 403): the token in the Secret does not match" in output(console)
    assert ray_dashboard.seen_auth[-1][2] == f"Bearer {fake.auth_token}"  # control: ours was sent and refused


def test_status_and_dashboard_on_a_forbidden_secret(
    fake: FakeApiServer, api_client: k8s.ApiClient, console: Console, ray_dashboard: FakeRayDashboard,
) -> None:
    fake.add_cluster(render_raycluster(load_cluster_spec(CPU)), ready=True)
    fake.forbidden = {("get", "secrets")}
    commands.status(CPU, console=console, api_client=api_client)  # shows the cluster, then the problem
    text = output(console)
    assert "RayCluster default/raytf-cpu: ready" in text
    assert "auth: token, but RayCluster 'raytf-cpu' requires Ray token authentication" in text
    assert "kubectl auth can-i get secrets/raytf-cpu -n default" in text
    with pytest.raises(AuthTokenUnavailable, match="403 Forbidden"):
        commands.dashboard(CPU, port=0, console=console, api_client=api_client, until=lambda url: None)
    assert ray_dashboard.seen_auth == []  # nothing reached the dashboard


def test_dashboard_forward_carries_no_token_but_the_browser_can_log_in(
    fake: FakeApiServer, api_client: k8s.ApiClient, console: Console, ray_dashboard: FakeRayDashboard,
) -> None:
    from raytf.cluster.kuberay.dashboard import probe_dashboard

    fake.add_cluster(render_raycluster(load_cluster_spec(CPU)), ready=True)
    codes: list[int | None] = []
    commands.dashboard(CPU, port=0, console=console, api_client=api_client, until=lambda url: codes.extend([
        probe_dashboard(url, timeout=10), probe_dashboard(url, headers={"Authorization": f"Bearer {fake.auth_token}"}, timeout=10)]))
    # The forward is a plain byte pipe: it adds no credentials, so other local users gain nothing from it.
    assert codes == [401, 200]


def test_up_warns_when_auth_is_off(
    fake: FakeApiServer, api_client: k8s.ApiClient, console: Console, capsys: pytest.CaptureFixture[str], tmp_path: Path,
) -> None:
    spec = no_auth_spec(tmp_path)
    commands.up(spec, dry_run=True, console=console)
    captured = capsys.readouterr()
    assert "Ray token authentication is OFF for RayCluster 'raytf-cpu' (auth: none)" in captured.err
    manifest = yaml.safe_load(captured.out)  # stdout stays a clean manifest
    assert manifest["kind"] == "RayCluster" and "authOptions" not in manifest["spec"]
    commands.up(CPU, dry_run=True, console=console)
    assert "OFF" not in capsys.readouterr().err
    commands.up(spec, timeout=60, kubeconfig=None, console=console, api_client=api_client, poll_interval=0,
                check_dashboard=False)
    assert "Ray token authentication is OFF" in output(console) and fake.secrets == {}
    commands.status(console=console, api_client=api_client)
    assert "auth: none (Ray token authentication is off)" in output(console)
