"""int64 keys to row slots, for tables whose ids come from an unbounded space (`DynamicEmbedding`).

A server keeps the rows of a dynamic table in a plain array of slots and finds a key's slot here: an
open-addressing hash table (linear probing) held in two numpy arrays, looked up and filled a whole
batch of keys at a time. Each probing round is a handful of vectorized operations over the keys
still unresolved; at a load of at most one half, ~1.5 probes are needed on average, so a batch of
thousands of keys costs tens of microseconds, not the per-key Python work a `dict` would.

Two key values are reserved for the table's own use (`EMPTY`, `DELETED`: the two smallest int64);
`DynamicEmbedding` never produces them (its keys are hashed or checked into range first).
"""

from __future__ import annotations

import numpy as np

EMPTY = np.int64(-(2**63))
DELETED = np.int64(-(2**63) + 1)
RESERVED = (int(EMPTY), int(DELETED))
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)


def mix64(keys: np.ndarray, seed: int = 0) -> np.ndarray:
    """splitmix64's finalizer of `keys` (+ `seed`): a well-spread uint64 per key, the same on every
    process and machine (used for a key's server, its probe start, admission and its initial row)."""
    with np.errstate(over="ignore"):
        z = np.asarray(keys).astype(np.uint64) + np.uint64(seed & 0xFFFFFFFFFFFFFFFF) * _GOLDEN + _GOLDEN
        z = (z ^ (z >> np.uint64(30))) * _MIX1
        z = (z ^ (z >> np.uint64(27))) * _MIX2
        return z ^ (z >> np.uint64(31))


class KeyIndex:
    """key -> slot for distinct int64 keys; `lookup`, `insert` (keys not present) and `remove`."""

    def __init__(self, expected: int = 1024) -> None:
        self._size = 1 << max(4, int(2 * max(expected, 1) - 1).bit_length())  # load <= 1/2 at `expected`
        self._keys = np.full(self._size, EMPTY, np.int64)
        self._slots = np.zeros(self._size, np.int64)
        self.live = 0
        self._deleted = 0

    def __len__(self) -> int:
        return self.live

    def _start(self, keys: np.ndarray) -> np.ndarray:
        return (mix64(keys) & np.uint64(self._size - 1)).astype(np.int64)

    def _find(self, keys: np.ndarray) -> np.ndarray:
        """The table position holding each key, -1 where it is absent."""
        where = np.full(len(keys), -1, np.int64)
        todo = np.arange(len(keys))
        pos = self._start(keys)
        mask = self._size - 1
        while todo.size:
            held = self._keys[pos]
            found = held == keys[todo]
            where[todo[found]] = pos[found]
            going = ~(found | (held == EMPTY))  # a deleted position does not end a probe sequence
            todo, pos = todo[going], (pos[going] + 1) & mask
        return where

    def _slots_at(self, where: np.ndarray) -> np.ndarray:
        """The slots at table positions `where` (`_find`'s), -1 where a key was absent."""
        slots = np.full(len(where), -1, np.int64)
        hit = where >= 0
        slots[hit] = self._slots[where[hit]]
        return slots

    def lookup(self, keys: np.ndarray) -> np.ndarray:
        """Each key's slot, -1 where the key is not in the index."""
        return self._slots_at(self._find(np.asarray(keys, np.int64)))

    def insert(self, keys: np.ndarray, slots: np.ndarray) -> None:
        """Add distinct `keys`, none of them present yet, at `slots`."""
        keys, slots = np.asarray(keys, np.int64), np.asarray(slots, np.int64)
        if not keys.size:
            return
        if np.isin(keys, RESERVED).any():
            raise ValueError(f"the keys {RESERVED} are reserved by raytf's key index")
        if 2 * (self.live + self._deleted + len(keys)) > self._size:
            self._rebuild(self.live + len(keys))
        todo = np.arange(len(keys))
        pos = self._start(keys)
        mask = self._size - 1
        while todo.size:
            free = (self._keys[pos] == EMPTY) | (self._keys[pos] == DELETED)
            # Of several keys reaching the same free position in this round, the first takes it.
            candidates = np.flatnonzero(free)
            _, first = np.unique(pos[candidates], return_index=True)
            won = candidates[first]
            self._deleted -= int((self._keys[pos[won]] == DELETED).sum())
            self._keys[pos[won]] = keys[todo[won]]
            self._slots[pos[won]] = slots[todo[won]]
            going = np.ones(todo.size, bool)
            going[won] = False
            todo, pos = todo[going], (pos[going] + 1) & mask
        self.live += len(keys)

    def remove(self, keys: np.ndarray) -> np.ndarray:
        """Take `keys` out; returns the slots they had (-1 for keys that were not there)."""
        where = self._find(np.asarray(keys, np.int64))
        slots = self._slots_at(where)
        hit = where >= 0
        self._keys[where[hit]] = DELETED
        removed = int(hit.sum())
        self.live -= removed
        self._deleted += removed
        return slots

    def items(self) -> tuple[np.ndarray, np.ndarray]:
        """Every (key, slot), in no particular order."""
        held = (self._keys != EMPTY) & (self._keys != DELETED)
        return self._keys[held].copy(), self._slots[held].copy()

    def _rebuild(self, expected: int) -> None:
        keys, slots = self.items()
        self.__init__(max(expected, 2 * len(keys)))
        self.insert(keys, slots)
