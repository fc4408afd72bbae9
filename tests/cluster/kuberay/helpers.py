"""Shared constants and small helpers for the KubeRay tests (fixtures live in conftest.py)."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console

REPO = Path(__file__).resolve().parents[3]
CONFIGS = REPO / "cluster-configs"
CONFIG_NAMES = ("kuberay-cpu", "kuberay-gpu", "kuberay-autoscale", "kuberay-fault-tolerant", "kuberay-shared-storage")


class FakeClock:
    """`clock`/`sleep` pair for the wait loops: sleeping only moves the clock."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def output(console: Console) -> str:
    return console.file.getvalue()  # type: ignore[attr-defined]
