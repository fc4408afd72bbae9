"""Training progress in the terminal: a live bar on a TTY, one plain line per update otherwise."""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from typing import TextIO


@dataclass(frozen=True)
class Snapshot:
    step: int  # slowest worker's completed steps
    total: int
    loss: float
    samples_per_second: float
    elapsed: float
    staleness_mean: float | None = None  # where the policy reports staleness (async, ssp)
    rows_live: int | None = None  # rows of the run's DynamicEmbedding tables on all servers, if it has any
    epoch: tuple[int, int] | None = None  # (epoch under way, epochs) for a run of epochs
    evaluation: str | None = None  # the latest validation while training, e.g. "eval accuracy 0.8612 @79"

    @property
    def eta_seconds(self) -> float | None:
        if self.samples_per_second <= 0 or self.step <= 0:
            return None
        remaining = self.total - self.step
        return remaining * self.elapsed / self.step

    def line(self) -> str:
        parts = [f"epoch {self.epoch[0]}/{self.epoch[1]}"] if self.epoch is not None else []
        parts += [f"step {self.step}/{self.total}", f"loss {_num(self.loss)}", f"samples/s {self.samples_per_second:,.0f}"]
        eta = self.eta_seconds
        parts.append(f"eta {eta:.0f}s" if eta is not None else "eta -")
        if self.staleness_mean is not None:
            parts.append(f"staleness {self.staleness_mean:.2f}")
        if self.rows_live is not None:
            parts.append(f"rows {self.rows_live:,}")
        if self.evaluation:
            parts.append(self.evaluation)
        return "  ".join(parts)


def _num(value: float) -> str:
    return "-" if value is None or math.isnan(value) else f"{value:.4f}"


class PlainProgress:
    """One line per update: readable in CI logs and in `ray job logs`."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stdout

    def update(self, snapshot: Snapshot) -> None:
        print(f"[raytf] {snapshot.line()}", file=self.stream, flush=True)

    def close(self) -> None:
        pass


class RichProgress:
    def __init__(self, total: int, console) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.progress = Progress(
            TextColumn("[bold]training"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
            TimeRemainingColumn(), console=console, transient=False,
        )
        self.task = self.progress.add_task("train", total=total, info="starting")
        self.progress.start()

    def update(self, snapshot: Snapshot) -> None:
        info = f"loss {_num(snapshot.loss)}  {snapshot.samples_per_second:,.0f} samples/s"
        if snapshot.epoch is not None:
            info = f"epoch {snapshot.epoch[0]}/{snapshot.epoch[1]}  {info}"
        if snapshot.staleness_mean is not None:
            info += f"  staleness {snapshot.staleness_mean:.2f}"
        if snapshot.rows_live is not None:
            info += f"  rows {snapshot.rows_live:,}"
        if snapshot.evaluation:
            info += f"  {snapshot.evaluation}"
        self.progress.update(self.task, completed=snapshot.step, total=snapshot.total, info=info)

    def close(self) -> None:
        self.progress.stop()


def make_progress(total: int, console=None, plain: bool | None = None):
    """Live bar when the console is a terminal, plain lines otherwise (or when `plain`)."""
    if console is None:
        from rich.console import Console

        console = Console()
    if plain is None:
        plain = not console.is_terminal
    return PlainProgress(console.file) if plain else RichProgress(total, console)
