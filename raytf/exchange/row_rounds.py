"""A server's sparse tables through a round: every table's update with the round's gradients, then
the rows each of the round's workers asked for, gathered at once.

The rows a worker asked for with its push are read right after the update that makes the version
it is answered with, while the exchange's lock is still held (into its row slot, where they
travel in one), and kept until it is answered; the server uses them only if nothing changed the
tables or the worker's request in between (`raytf.exchange.server.ParameterServer.publish`),
else it gathers again (`gather`).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from raytf.exchange.optimizers import RowOptimizer


class RowRounds:
    def __init__(self, tables: Sequence[RowOptimizer]) -> None:
        self.tables = list(tables)

    @property
    def applies_early(self) -> bool:
        """Every table can take a round's gradients one by one as they arrive (SGD)."""
        return bool(self.tables) and all(table.applies_early for table in self.tables)

    def apply_early(self, grad: Sequence[tuple], expected: int) -> None:
        """One gradient (per table: unique local ids and summed rows) of a round of `expected`, now."""
        for table, part in zip(self.tables, grad):
            table.apply_early(part, expected)

    def run(self, grads: Sequence[Sequence[tuple]], wanted: Sequence[Sequence[np.ndarray]],
            into: Sequence[Sequence[np.ndarray] | None], early: Sequence[int | None] = ()) -> list[tuple]:
        """Update every table with the round's `grads` (per gradient, per table: unique local ids and
        summed rows; `early`: per gradient, the round size it was applied early for, or None) and
        return, per request of `wanted` (per table the local ids asked for), the rows after the update,
        gathered into the arrays of `into` where given (per request, per table: a row slot's segment,
        or None)."""
        for k, table in enumerate(self.tables):
            table.apply_round([grad[k] for grad in grads], early)
        return [self.gather(want, out) for want, out in zip(wanted, into)]

    def gather(self, want: Sequence[np.ndarray], into: Sequence[np.ndarray] | None = None) -> tuple:
        """The current rows at the local ids `want` (per table), into `into` (per table) if given."""
        if into is None:
            return tuple(table.gather(ids) for table, ids in zip(self.tables, want))
        return tuple(table.gather(ids, out) for table, ids, out in zip(self.tables, want, into))
