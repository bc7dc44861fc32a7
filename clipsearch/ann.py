"""FAISS search structure, derived from the table and persisted beside it.

The file name carries the table version it was built from, so a stale or missing file is
recognised without trusting any other bookkeeping; it is then rebuilt from the table.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

import faiss
import numpy as np

ANN_DIR = "ann"


class AnnIndex:
    """Exact inner-product search over L2-normalised vectors (so scores are cosines)."""

    kind = "flat"

    def __init__(self, index: faiss.Index, table_version: int) -> None:
        self._index = index
        self.table_version = table_version

    @classmethod
    def build(cls, ids: np.ndarray, vectors: np.ndarray, table_version: int) -> AnnIndex:
        index = faiss.IndexIDMap2(faiss.IndexFlatIP(vectors.shape[1]))
        if len(ids):
            index.add_with_ids(np.ascontiguousarray(vectors, np.float32),
                               np.ascontiguousarray(ids, np.int64))
        return cls(index, table_version)

    @property
    def size(self) -> int:
        return int(self._index.ntotal)

    def search(
        self, query: np.ndarray, k: int, allowed: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """(scores, ids) of the k nearest rows to one query vector, best first.

        `allowed` restricts the search to those ids inside FAISS, so a filter never costs top-k.
        """
        k = min(k, self.size if allowed is None else len(allowed))
        if k <= 0:
            return np.zeros(0, np.float32), np.zeros(0, np.int64)
        params = None
        if allowed is not None:
            params = faiss.SearchParameters(sel=faiss.IDSelectorBatch(
                np.ascontiguousarray(allowed, np.int64)))
        scores, ids = self._index.search(
            np.ascontiguousarray(query.reshape(1, -1), np.float32), k, params=params)
        keep = ids[0] >= 0
        return scores[0][keep], ids[0][keep]

    @staticmethod
    def _file(db: Path, table_version: int) -> Path:
        return Path(db) / ANN_DIR / f"faiss-v{table_version}.index"

    def save(self, db: Path) -> None:
        """Write atomically, then drop files of older table versions."""
        target = self._file(db, self.table_version)
        target.parent.mkdir(exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, suffix=".tmp")
        os.close(fd)
        try:
            faiss.write_index(self._index, tmp)
            os.replace(tmp, target)
        finally:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        for old in target.parent.glob("faiss-v*.index"):
            if old != target:
                with contextlib.suppress(OSError):
                    old.unlink()

    @classmethod
    def saved(cls, db: Path, table_version: int) -> bool:
        return cls._file(db, table_version).is_file()

    @classmethod
    def load(cls, db: Path, table_version: int, expected_size: int) -> AnnIndex | None:
        """The saved index for this table version, or None when missing, damaged or stale."""
        path = cls._file(db, table_version)
        if not path.is_file():
            return None
        try:
            index = faiss.read_index(str(path))
        except RuntimeError:
            return None
        if index.ntotal != expected_size:
            return None
        return cls(index, table_version)
