"""Validation while training: data.eval evaluated at the steps `eval.every_steps` (or `every_epochs`)
names, on the parameters of the checkpoint the servers write there for it, in a thread of the driver
while training goes on. Each result is published from the supervisor's loop (the progress line, an event,
TensorBoard's eval/<metric> over steps) and kept for the summary's history; `checkpoint.keep_best`
keeps the checkpoint where its metric was best besides the newest ones.

The replica evaluated is the driver's (loaded with the checkpoint's values and the workers' non-trainable
values averaged at that moment); the final evaluation, after the thread has ended, loads the trained values
into it again.
"""

from __future__ import annotations

import queue
import threading
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

# Metrics for which lower is better (Keras names them so); any other is better higher (accuracy, auc, ...).
LOWER_IS_BETTER = ("loss", "error", "crossentropy", "hinge", "divergence", "poisson", "cosh")


@dataclass(frozen=True)
class Evaluation:
    step: int
    epoch: int | None  # the epochs done at `step`, for a run of epochs
    results: dict[str, float]

    def line(self) -> str:
        where = f"epoch {self.epoch}, step {self.step}" if self.epoch is not None else f"step {self.step}"
        return f"eval at {where}: " + ", ".join(f"{name} {value:.4f}" for name, value in sorted(self.results.items()))

    def brief(self, metric: str | None) -> str:
        """For the progress line: `metric` (default: the first metric, else the loss) and where."""
        names = sorted(self.results)
        name = metric if metric in self.results else next((n for n in names if n != "loss"), names[0] if names else None)
        return f"eval {name} {self.results[name]:.4f} @{self.step}" if name is not None else ""

    def as_dict(self) -> dict[str, Any]:
        return {"step": self.step, "epoch": self.epoch, **self.results}


def better(metric: str, new: float, old: float) -> bool:
    lower = any(word in metric for word in LOWER_IS_BETTER)
    return new < old if lower else new > old


class Validator:
    """Evaluates the checkpoints of the steps due (`checkpointed`), one at a time, in its own thread."""

    def __init__(self, prepared, every_steps: int, non_trainable: Callable[[], list[np.ndarray] | None],
                 on_result: Callable[[Evaluation], None], on_event: Callable[[str], None]) -> None:
        self.prepared = prepared
        self.config = prepared.config
        self.every_steps = every_steps
        self.non_trainable = non_trainable  # the workers' values now (averaged), None when none holds a replica
        self.on_result = on_result
        self.on_event = on_event
        self.history: list[Evaluation] = []
        self.best: Evaluation | None = None
        self.pending: set[int] = set()  # checkpointed steps not evaluated yet: not to be pruned
        self._compiled = None  # the replica compiled for evaluation
        self._todo: queue.Queue = queue.Queue()
        self._done: queue.Queue = queue.Queue()
        self._thread = threading.Thread(target=self._work, name="raytf-validation", daemon=True)
        self._thread.start()

    def due(self, step: int) -> bool:
        """Whether `step` is validated while training (the last step is evaluated after training, once)."""
        return step % self.every_steps == 0 and step < self.config.steps

    def checkpointed(self, step: int, checkpoint) -> None:
        """A complete checkpoint (raytf.driver.checkpoints.Checkpoint) of `step`: evaluate it if due."""
        if self.due(step) and step not in self.pending and all(e.step != step for e in self.history):
            self.pending.add(step)
            self._todo.put((step, checkpoint))

    def kept_steps(self) -> set[int]:
        """Checkpoints pruning must leave: those still to be evaluated, and the best one."""
        return set(self.pending) | ({self.best.step} if self.best is not None else set())

    @property
    def latest(self) -> Evaluation | None:
        return self.history[-1] if self.history else None

    def publish(self) -> None:
        """Report the evaluations finished since the last call (from the caller's thread: the supervisor's)."""
        while True:
            try:
                evaluation = self._done.get_nowait()
            except queue.Empty:
                return
            self.record(evaluation)

    def record(self, evaluation: Evaluation) -> None:
        self.history.append(evaluation)
        self.pending.discard(evaluation.step)
        metric = self.config.checkpoint.keep_best
        if metric is not None and metric in evaluation.results and (
                self.best is None or better(metric, evaluation.results[metric], self.best.results[metric])):
            self.best = evaluation
        self.on_result(evaluation)

    def finish(self) -> None:
        """Let the thread end its evaluations (the run is over) and publish them."""
        self._todo.put(None)
        self._thread.join()
        self.publish()

    def _work(self) -> None:
        while True:
            item = self._todo.get()
            if item is None:
                return
            step, checkpoint = item
            try:
                self._done.put(Evaluation(step, self._epoch(step), self._evaluate(checkpoint)))
            except Exception as err:  # noqa: BLE001 - reported; training and the final evaluation go on
                self.pending.discard(step)
                self.on_event(f"Warning: evaluating the checkpoint of step {step} failed ({type(err).__name__}: {err}); "
                              "training goes on.")

    def _epoch(self, step: int) -> int | None:
        return step // self.config.steps_per_epoch if self.config.epochs is not None else None

    def _evaluate(self, checkpoint) -> dict[str, float]:
        from raytf.driver.checkpoints import load, read_non_trainable
        from raytf.driver.prepare import compile_for_saving, evaluate, final_model
        from raytf.exchange.policies import policy_for

        prepared = self.prepared
        states = load(checkpoint, prepared.plan, self.config.optimizer.name,
                      policy_for(self.config.distribution).updates_per_step)
        tables = [[state.tables[k].params if state.tables[k].keys is None else (state.tables[k].keys, state.tables[k].params)
                   for state in states] for k in range(len(prepared.plan.tables))]
        # The checkpoint's statistics (written with it), else the workers' of this moment.
        statistics = read_non_trainable(checkpoint.directory) or self.non_trainable() or []
        model = final_model(prepared, [state.params for state in states], tables, statistics)
        if model is not self._compiled:  # once: compiling again would trace Keras's test step again
            compile_for_saving(model, self.config, build_optimizer=False)
            self._compiled = model
        return evaluate(model, prepared)
