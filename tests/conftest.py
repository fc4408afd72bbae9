"""Shared fixtures: an isolated raytf home, and one real local Ray cluster for the training tests."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # examples.* import paths, as when raytf runs from the repo root


@pytest.fixture
def raytf_home(tmp_path, monkeypatch):
    home = tmp_path / "raytf-home"
    monkeypatch.setenv("RAYTF_HOME", str(home))
    return home


@pytest.fixture(scope="session")
def ray_cluster(tmp_path_factory):
    """A real Ray head on 127.0.0.1 (2 CPUs), shared by the training tests and stopped at the end."""
    from raytf.cluster import local as local_cluster

    patch = pytest.MonkeyPatch()
    patch.setenv("RAYTF_HOME", str(tmp_path_factory.mktemp("cluster-home")))  # its log goes there
    # Metrics reach the dashboard's endpoint every 2 s instead of 10: a watched run of a few seconds shows up.
    patch.setenv("RAY_metrics_report_interval_ms", "2000")
    cluster = local_cluster.start(num_cpus=2, timeout=120)
    try:
        # It runs with token authentication: drivers and Ray's own clients in the tests use its token.
        with local_cluster.token_auth(cluster):
            yield cluster
    finally:
        local_cluster.stop(cluster)
        patch.undo()
