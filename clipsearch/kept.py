"""The vectors of removed rows, kept by content hash for a while (7 days unless
CLIPSEARCH_KEEP_REMOVED_DAYS says otherwise), so that a photo that comes back after a mistaken
removal (a folder moved out and back, a restore from backup, a drive that looked emptied) is not
embedded again. A table of its own beside the rows: searches never read it."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta

import numpy as np
import pyarrow as pa

from clipsearch import config
from clipsearch.store import Store, sql_list, writing

TABLE = "kept"
COLUMNS = ["hash", "vector", "width", "height", "taken"]
_IN_CHUNK = 2_000


@dataclass(frozen=True)
class KeptVector:
    vector: np.ndarray
    width: int | None
    height: int | None
    taken: str | None


class Kept:
    """The kept vectors of one index. Which hashes are kept is read once, the first time a run
    asks (the table holds at most a week of removals)."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._hashes: set[str] | None = None

    def _table(self):
        import lancedb

        try:
            return lancedb.connect(self.store.path).open_table(TABLE)
        except ValueError:  # lancedb's "table not found"
            return None

    def __contains__(self, digest: str) -> bool:
        if self._hashes is None:
            table = self._table()
            self._hashes = set() if table is None else set(
                table.search().select(["hash"]).limit(None).to_arrow().column("hash").to_pylist())
        return digest in self._hashes

    def get(self, digest: str) -> KeptVector | None:
        if digest not in self:
            return None
        query = self._table().search().where(f"hash = {sql_list([digest])}")
        rows = query.select(COLUMNS).limit(1).to_list()
        if not rows:
            return None
        row = rows[0]
        return KeptVector(np.asarray(row["vector"], np.float32), row["width"], row["height"], row["taken"])

    def keep(self, rows: pa.Table) -> None:
        """Keep the vectors of rows about to be removed (columns COLUMNS), and let go of those
        kept longer than the retention."""
        days = config.keep_removed_days()
        table = self._table()
        with writing(self.store.path):
            if days > 0 and len(rows):
                now = pa.array(np.full(len(rows), int(time.time()), np.int64))
                data = rows.select(COLUMNS).append_column("removed_at", now)
                if table is None:
                    import lancedb

                    table = lancedb.connect(self.store.path).create_table(TABLE, data)
                else:
                    table.add(data.cast(table.schema))
                self._hashes = None
            if table is not None:
                table.delete(f"removed_at <= {int(time.time() - days * 86_400)}")
                if table.version % 32 == 0:  # each keep is a version or two: drop the old ones now and then
                    table.optimize(cleanup_older_than=timedelta(minutes=10))

    def forget(self, hashes: Sequence[str]) -> None:
        """Let go of these contents' kept vectors at once."""
        table = self._table()
        if table is None or not hashes:
            return
        hashes = list(hashes)
        with writing(self.store.path):
            for i in range(0, len(hashes), _IN_CHUNK):
                table.delete(f"hash IN ({sql_list(hashes[i:i + _IN_CHUNK])})")
        self._hashes = None
