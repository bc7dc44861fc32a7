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
from clipsearch.store.table import Store, sql_list, writing

TABLE = "kept"
COLUMNS = ["hash", "vector", "width", "height", "taken"]
FRAMES = ["t", "duration"]  # a video's: each of its frames is kept, as its rows were
_IN_CHUNK = 2_000


@dataclass(frozen=True)
class KeptVector:
    vector: np.ndarray
    width: int | None
    height: int | None
    taken: str | None
    # a video: its frames' times (ascending) and vectors, and its length; None for a photo
    times: list[float] | None = None
    vectors: np.ndarray | None = None
    duration: float | None = None


def columns(store: Store) -> list[str]:
    """What to keep of a row of `store` (a video's frame times where the rows have them)."""
    return COLUMNS + (FRAMES if store.has_video else [])


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
        """The kept vector of this content; of a video, all its frames."""
        if digest not in self:
            return None
        table = self._table()
        framed = "t" in table.schema.names
        query = table.search().where(f"hash = {sql_list([digest])}")
        rows = query.select(COLUMNS + (FRAMES if framed else [])).limit(None if framed else 1).to_list()
        if not rows:
            return None
        row = rows[0]
        if framed and row["t"] is not None:
            # one removal's frames: a video removed twice in the window was kept twice, alike
            frames = sorted({r["t"]: r for r in rows if r["t"] is not None}.values(), key=lambda r: r["t"])
            vectors = np.stack([np.asarray(r["vector"], np.float32) for r in frames])
            return KeptVector(vectors[0], row["width"], row["height"], row["taken"],
                              [r["t"] for r in frames], vectors, row["duration"])
        return KeptVector(np.asarray(row["vector"], np.float32), row["width"], row["height"], row["taken"])

    def keep(self, rows: pa.Table) -> None:
        """Keep the vectors of rows about to be removed (columns COLUMNS), and let go of those
        kept longer than the retention."""
        days = config.keep_removed_days()
        table = self._table()
        with writing(self.store.path):
            if days > 0 and len(rows):
                now = pa.array(np.full(len(rows), int(time.time()), np.int64))
                for name, kind in (("t", pa.float64()), ("duration", pa.float64())):
                    if name not in rows.column_names:  # a photo's row, or an index without videos
                        rows = rows.append_column(name, pa.nulls(len(rows), kind))
                data = rows.select(COLUMNS + FRAMES).append_column("removed_at", now)
                if table is not None and "t" not in table.schema.names:
                    # kept before videos were: its rows move to a table that has their columns
                    old = table.to_arrow()
                    for name in FRAMES:
                        old = old.append_column(name, pa.nulls(len(old), data.schema.field(name).type))
                    data = pa.concat_tables([old.select(data.column_names).cast(data.schema), data])
                    table = None
                if table is None:
                    import lancedb

                    table = lancedb.connect(self.store.path).create_table(TABLE, data, mode="overwrite")
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
