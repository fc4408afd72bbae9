"""A server's rows of a dynamic table (`raytf.layers.DynamicEmbedding`): keys from an unbounded
int64 space, a row created on a key's first touch, admission and eviction.

The rows sit in slots of a `RowOptimizer` (the same update as a fixed table's rows, with its
optimizer's slots), found by key through a `KeyIndex`; the table grows by doubling until a
capacity, if one is set. Per slot it keeps how often its key was touched and the last update it was
touched at. The exchange sees the same calls as for a fixed table (`RowRounds`): `gather` of the
rows a worker asks for (a sighting of each key: admission counts it, and an admitted key without a
row gets one, from the initializer: the same values for the same key and seed on any number of
servers), and `apply_round` / `apply_early` with keys where a fixed table has local ids (a key with
no row, not admitted or evicted since it was asked for, has its gradient dropped and counted).

Admission (`{"min_count": n}`: a row after the n-th sighting; `{"probability": p}`: a key is
admitted or not by a hash of it and the seed, the same everywhere) and eviction (`{"ttl_steps": n}`:
rows untouched for n updates; `{"capacity": rows}`: the least often touched first, when the table
is full) follow the layer's settings. A key not admitted reads the default row (zeros).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from raytf.exchange.key_index import KeyIndex, mix64
from raytf.exchange.tables import ABSENT

KEY_LIMIT = ABSENT  # keys are 0 <= key < 2**62: the worker's row cache sorts an empty slot (ABSENT) after every key
PENDING_PER_ROW = 4  # min_count: keys still being counted, at most this many per row of capacity (oldest go)
PENDING_MIN = 1 << 16  # ... and at least this many
TTL_SWEEPS = 8  # ttl: rows are checked for age this many times per ttl
RECENT = 16  # requests whose slots are remembered for their pushes (workers x batches read ahead, and more)


@dataclass(frozen=True)
class DynamicSettings:
    """A dynamic table's admission and eviction (validated by the layer, `raytf.replica.dynamic_embedding`)."""

    min_count: int = 1
    probability: float = 1.0
    ttl_steps: int = 0  # 0: rows are never too old
    capacity: int = 0  # rows per table; 0: unbounded (each server's share is capacity / servers)
    seed: int = 0

    @classmethod
    def of(cls, admission: dict | None, eviction: dict | None, seed: int) -> "DynamicSettings":
        admission, eviction = admission or {}, eviction or {}
        return cls(min_count=int(admission.get("min_count", 1)), probability=float(admission.get("probability", 1.0)),
                   ttl_steps=int(eviction.get("ttl_steps", 0)), capacity=int(eviction.get("capacity", 0)), seed=seed)


def initial_key_rows(init: dict, keys: np.ndarray, width: int) -> np.ndarray:
    """Rows for `keys` from the layer's initializer (`raytf.exchange.tables.TableSpec.init`): each
    value a function of (seed, key, column) only, so a key's row is the same wherever and whenever
    it is created."""
    keys = np.asarray(keys, np.int64)
    if init["name"] in ("zeros", "constant") or not keys.size:
        return np.full((len(keys), width), init.get("value", 0.0), np.float32)
    per_key = mix64(keys, init["seed"])[:, None]
    columns = np.arange(2 * width, dtype=np.uint64)[None, :]
    with np.errstate(over="ignore"):
        bits = mix64(per_key + columns * np.uint64(0xD1B54A32D192ED03))
    uniform = ((bits >> np.uint64(40)).astype(np.float64) + 0.5) / float(1 << 24)  # (0, 1)
    if init["name"] == "uniform":
        rows = init["low"] + (init["high"] - init["low"]) * uniform[:, :width]
    else:  # normal (Box-Muller on two uniforms per value), truncated at 2 stddev by folding back
        normal = np.sqrt(-2.0 * np.log(uniform[:, :width])) * np.cos(2.0 * np.pi * uniform[:, width:])
        if init.get("truncated"):
            normal = np.where(np.abs(normal) > 2.0, np.fmod(normal, 2.0), normal)
        rows = init["mean"] + init["stddev"] * normal
    return rows.astype(np.float32)


@dataclass
class DynamicStats:
    created: int = 0
    evicted: int = 0
    not_admitted: int = 0  # sightings of keys that got no row (yet)
    dropped_rows: int = 0  # gradient rows of keys without a row


class DynamicRows:
    """One dynamic table's rows on one server, with the calls `RowRounds` makes of a `RowOptimizer`."""

    def __init__(self, optimizer_config, width: int, init: dict, settings: DynamicSettings, servers: int = 1,
                 initial_rows: int = 4096) -> None:
        self.config, self.width, self.init, self.settings = optimizer_config, width, init, settings
        self.share = -(-settings.capacity // servers) if settings.capacity else 0  # this server's capacity
        self.index = KeyIndex(initial_rows)
        self._rows = self._new_rows(initial_rows if not self.share else min(initial_rows, self.share))
        self._keys = np.full(self._rows.shape[0], -1, np.int64)  # slot -> key (-1: free)
        self._touches = np.zeros(self._rows.shape[0], np.int64)
        self._last = np.full(self._rows.shape[0], -1, np.int64)
        self._free = list(range(self._rows.shape[0] - 1, -1, -1))  # a stack: lowest slots first
        self._pending = KeyIndex(1024) if settings.min_count > 1 else None  # key -> sightings so far
        self._pending_counts = np.zeros(0, np.int64)  # by the pending index's slots; the first `_pending_used` in use
        self._pending_used = 0
        self._pending_order: list[np.ndarray] = []  # keys in the order they were first seen (oldest go first)
        self.stats = DynamicStats()
        self._dirty = np.zeros(self._rows.shape[0], bool)  # slots changed since the last delta
        self._recent: list[tuple[np.ndarray, np.ndarray]] = []  # (keys, slots) of the last requests that all had rows
        self._evicted_keys: list[np.ndarray] = []  # keys evicted since the last delta
        self._step = 0  # updates applied (the ttl's clock)
        self._swept = 0

    # -- storage -----------------------------------------------------------------------------------
    def _new_rows(self, capacity: int, rows: np.ndarray | None = None, slots: dict | None = None, iterations: int = 0):
        from raytf.exchange.optimizers import RowOptimizer, initial_slot_value

        initial = np.zeros((capacity, self.width), np.float32)
        if rows is not None:
            initial[:len(rows)] = rows
        grown = None
        if slots is not None:
            fill = initial_slot_value(self.config)
            grown = {}
            for name, values in slots.items():
                bigger = np.full((capacity, self.width), fill, np.float32)
                bigger[:len(values)] = values
                grown[name] = bigger
        return RowOptimizer(self.config, initial, slots=grown, iterations=iterations)

    @property
    def slots_held(self) -> int:
        return self._rows.shape[0]

    def _grow(self, needed: int) -> None:
        old = self.slots_held
        size = max(2 * old, old + needed)
        if self.share:
            size = min(size, self.share)
        if size <= old:
            return
        rows, slots, iterations = self._rows.state()
        self._rows = self._new_rows(size, rows, slots, iterations)
        self._keys = np.concatenate([self._keys, np.full(size - old, -1, np.int64)])
        self._touches = np.concatenate([self._touches, np.zeros(size - old, np.int64)])
        self._last = np.concatenate([self._last, np.full(size - old, -1, np.int64)])
        self._dirty = np.concatenate([self._dirty, np.zeros(size - old, bool)])
        self._free = list(range(size - 1, old - 1, -1)) + self._free

    def _take_slots(self, count: int) -> np.ndarray:
        if len(self._free) < count:
            self._grow(count - len(self._free))
        if len(self._free) < count:  # at capacity: the least often touched rows make room
            self._evict_least_touched(count - len(self._free))
        taken = self._free[-count:] if count else []
        del self._free[len(self._free) - count:]
        return np.array(taken[::-1], np.int64)

    # -- admission ---------------------------------------------------------------------------------
    def _admitted(self, keys: np.ndarray) -> np.ndarray:
        """Which of `keys` (distinct, without rows) get one now; counts their sighting."""
        s = self.settings
        admit = np.ones(len(keys), bool)
        if s.probability < 1.0:
            admit &= mix64(keys, s.seed + 0x5EED) < np.uint64(int(s.probability * 2**64 - 1))
        if self._pending is not None and keys.size:
            slots = self._pending.lookup(keys)
            new = slots < 0
            if new.any():
                first = self._pending_used
                fresh = np.arange(first, first + int(new.sum()))
                self._pending_used += len(fresh)
                if self._pending_used > len(self._pending_counts):  # grown by doubling: no copy per call
                    grown = np.zeros(max(2 * len(self._pending_counts), self._pending_used, 1024), np.int64)
                    grown[:first] = self._pending_counts[:first]
                    self._pending_counts = grown
                self._pending.insert(keys[new], fresh)
                self._pending_order.append(keys[new])
                slots[new] = fresh
            self._pending_counts[slots] += 1
            admit &= self._pending_counts[slots] >= s.min_count
            done = keys[admit]
            if done.size:
                self._pending.remove(done)
            self._bound_pending()
        return admit

    def _bound_pending(self) -> None:
        """Keys still being counted are bounded (most keys of such a stream are seen once): past the
        bound, the oldest first seen are forgotten (their count starts again; never admitted early)."""
        bound = PENDING_PER_ROW * max(self.share or self.slots_held, PENDING_MIN)
        if len(self._pending) <= bound:
            return
        # Down to half the bound at once, so this (a pass over every pending key) is rare.
        order = np.concatenate(self._pending_order)
        order = order[self._pending.lookup(order) >= 0]  # still pending (not admitted since)
        _, first = np.unique(order, return_index=True)  # a key pending again after an eviction: once
        order = order[np.sort(first)]
        kept = order[len(order) - bound // 2:]
        counts = self._pending_counts[self._pending.lookup(kept)]
        self._pending = KeyIndex(2 * len(kept))
        self._pending.insert(kept, np.arange(len(kept)))
        self._pending_counts = counts
        self._pending_used = len(kept)
        self._pending_order = [kept]

    # -- eviction ----------------------------------------------------------------------------------
    def _evict_slots(self, slots: np.ndarray) -> None:
        if not slots.size:
            return
        self.index.remove(self._keys[slots])
        self._recent.clear()  # their slots may go to other keys now
        self._evicted_keys.append(self._keys[slots].copy())
        self._dirty[slots] = False
        self._keys[slots] = -1
        self._touches[slots] = 0
        self._last[slots] = -1
        self._free.extend(slots.tolist())
        self.stats.evicted += len(slots)

    def _evict_least_touched(self, needed: int) -> None:
        """Free at least `needed` slots (a 16th of the capacity at once, so this is rare), not of rows
        touched at the current update."""
        live = np.flatnonzero((self._keys >= 0) & (self._last < self._step))
        count = min(len(live), max(needed, self.slots_held // 16))
        if count <= 0:
            raise RuntimeError(f"a dynamic table's capacity ({self.share} rows on this server) is smaller than the "
                               "distinct keys of one update: raise eviction.capacity")
        victims = live[np.argpartition(self._touches[live], count - 1)[:count]] if count < len(live) else live
        self._evict_slots(victims)

    def _sweep_ttl(self) -> None:
        ttl = self.settings.ttl_steps
        if not ttl or self._step - self._swept < max(1, ttl // TTL_SWEEPS):
            return
        self._swept = self._step
        old = np.flatnonzero((self._keys >= 0) & (self._last < self._step - ttl))
        self._evict_slots(old)

    # -- the calls of RowRounds --------------------------------------------------------------------
    def gather(self, keys, out: np.ndarray | None = None) -> np.ndarray:
        """The rows of `keys` (a worker's request: distinct keys), created for admitted new keys;
        zeros for keys not admitted."""
        keys = np.asarray(keys, np.int64)
        slots = self.index.lookup(keys)
        missing = np.flatnonzero(slots < 0)
        if missing.size:
            admit = self._admitted(keys[missing])
            self.stats.not_admitted += int((~admit).sum())
            created = missing[admit]
            if created.size:
                new = self._take_slots(len(created))
                self.index.insert(keys[created], new)
                self._keys[new] = keys[created]
                self._rows.reset_rows(new, initial_key_rows(self.init, keys[created], self.width))
                self._dirty[new] = True
                slots[created] = new
                self.stats.created += len(created)
        have = slots >= 0
        if have.all():  # the push of this batch will name the same keys: its slots are looked up once
            self._recent.append((keys.copy(), slots.copy()))
            del self._recent[:-RECENT]
        self._touches[slots[have]] += 1
        self._last[slots[have]] = self._step
        into = np.zeros((len(keys), self.width), np.float32) if out is None else out[:len(keys)]
        if have.all():
            return self._rows.gather(slots, into)
        into[:] = 0
        into[have] = self._rows.gather(slots[have])
        return into

    def _slots_of(self, part: tuple) -> tuple:
        keys, grad = part
        keys = np.asarray(keys, np.int64)
        slots = next((s for k, s in reversed(self._recent) if len(k) == len(keys) and np.array_equal(k, keys)), None)
        if slots is None:
            slots = self.index.lookup(keys)
        have = slots >= 0
        self._dirty[slots[have]] = True
        if have.all():
            return slots, grad
        self.stats.dropped_rows += int((~have).sum())
        return slots[have], np.asarray(grad)[have]

    @property
    def applies_early(self) -> bool:
        return self._rows.applies_early

    def apply_early(self, part: tuple, expected: int) -> None:
        self._rows.apply_early(self._slots_of(part), expected)

    def apply_round(self, parts: Sequence[tuple], early: Sequence[int | None] = ()) -> None:
        self._rows.apply_round([self._slots_of(part) for part in parts], early)
        self._step += 1
        self._sweep_ttl()

    def counts(self) -> dict:
        """Rows created, evicted and live, sightings not admitted, gradient rows dropped (this process's)."""
        s = self.stats
        return {"created": s.created, "evicted": s.evicted, "not_admitted": s.not_admitted,
                "dropped_gradient_rows": s.dropped_rows, "live": len(self.index)}

    # -- state -------------------------------------------------------------------------------------
    def _live(self) -> tuple[np.ndarray, np.ndarray]:
        keys, slots = self.index.items()
        order = np.argsort(keys)
        return keys[order], slots[order]

    def export(self) -> tuple[np.ndarray, np.ndarray]:
        """(keys, rows) of every live row, keys sorted."""
        keys, slots = self._live()
        return keys, self._rows.gather(slots)

    def take_delta(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(keys, rows) of the rows changed or created since the last call, and the keys evicted since
        (raytf.exchange.deltas); starts the next interval."""
        slots = np.flatnonzero(self._dirty & (self._keys >= 0))
        evicted = np.concatenate(self._evicted_keys) if self._evicted_keys else np.zeros(0, np.int64)
        self._dirty[:] = False
        self._evicted_keys = []
        return self._keys[slots].copy(), self._rows.gather(slots), evicted

    def state(self) -> dict:
        """Copies of every live row (keys sorted) with its optimizer slots, touch count and last
        update, and the update count: what a checkpoint keeps (`restore` takes it back)."""
        keys, slots = self._live()
        rows, optimizer_slots, iterations = self._rows.state()
        return {"params": rows[slots], "slots": {name: value[slots] for name, value in optimizer_slots.items()},
                "iterations": iterations, "keys": keys, "touches": self._touches[slots], "last": self._last[slots]}

    def restore(self, keys: np.ndarray, params: np.ndarray, slots: dict | None, iterations: int,
                touches: np.ndarray | None = None, last: np.ndarray | None = None) -> None:
        """Hold exactly these rows (a checkpoint's, this server's share of them)."""
        n = len(keys)
        size = max(n, 1) if not self.share else max(min(self.share, max(2 * n, 1)), n)
        self._rows = self._new_rows(size, params, slots, iterations)
        self.index = KeyIndex(max(size, 16))
        self.index.insert(np.asarray(keys, np.int64), np.arange(n))
        self._keys = np.full(size, -1, np.int64)
        self._keys[:n] = keys
        self._touches = np.zeros(size, np.int64)
        self._last = np.full(size, -1, np.int64)
        self._dirty = np.zeros(size, bool)  # the next delta: changes since this checkpoint
        self._recent = []
        self._evicted_keys = []
        if touches is not None:
            self._touches[:n] = touches
        if last is not None:
            self._last[:n] = last
        self._step = self._swept = int(iterations)  # the ttl's clock counts the table's updates
        self._free = list(range(size - 1, n - 1, -1))
