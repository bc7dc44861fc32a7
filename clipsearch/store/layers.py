"""A base plus a delta: how the files made from the table (the search structure, the row
snapshot) follow each commit at the cost of the change, not of the table.

A base is written whole at some table version B. Each later version T gets a small delta file
instead: the rows added since B (with what the structure needs of them) and the ids of B's rows
removed since. The delta is rewritten whole at each commit, so a commit writes what changed since
the base, which `merge_due` keeps small: past it the base is rewritten with the delta folded in.

What changed is found without any bookkeeping a crash could lose: the ids the base and delta hold
are compared with the table's ids (8 bytes a row). Row ids are never reused and only grow, so the
rows to add are always the table's newest.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# A delta is folded into its base once it holds this many rows (added plus removed), or a quarter
# of the base, whichever is smaller: at 512-d, 16k rows are a 33 MB delta file, rewritten by each
# commit, and a search scans them exactly beside the base (1 ms). Measured: benchmarks/change.py.
DELTA_MAX = 16_384
DELTA_MIN = 1024  # below this, never worth a rewrite of the base


def merge_due(base_size: int, added: int, removed: int) -> bool:
    return added + removed > min(DELTA_MAX, max(DELTA_MIN, base_size // 4))


@dataclass
class Delta:
    """The rows a base lacks (`added`) and the base rows gone (`removed`), as sorted ids."""

    base: int  # the table version the base mirrors
    added: np.ndarray
    removed: np.ndarray

    @classmethod
    def none(cls, base: int) -> Delta:
        return cls(base, np.zeros(0, np.int64), np.zeros(0, np.int64))

    def size(self) -> int:
        return len(self.added) + len(self.removed)

    def advance(self, base_ids: np.ndarray, table_ids: np.ndarray) -> tuple[Delta, np.ndarray]:
        """The delta that brings the base to `table_ids` (both sorted), and the ids it adds now
        (rows to read from the table). Set operations by bisection of sorted arrays: numpy's
        own (union1d, setdiff1d) hash or sort a million ids each time, 0.2 s apiece."""
        held = np.sort(np.concatenate([base_ids[~np.isin(base_ids, self.removed)], self.added]))
        new = table_ids[~within(table_ids, held)]
        gone = held[~within(held, table_ids)]
        added = np.sort(np.concatenate([self.added[~np.isin(self.added, gone)], new]))
        removed = np.sort(np.concatenate([self.removed, gone[within(gone, base_ids)]]))
        return Delta(self.base, added.astype(np.int64), removed.astype(np.int64)), new.astype(np.int64)


def within(values: np.ndarray, sorted_set: np.ndarray) -> np.ndarray:
    """Which of `values` are in `sorted_set` (sorted, unique)."""
    if not len(sorted_set):
        return np.zeros(len(values), bool)
    at = np.minimum(np.searchsorted(sorted_set, values), len(sorted_set) - 1)
    return sorted_set[at] == values
