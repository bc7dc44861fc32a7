"""Turning a query vector into ranked hits: filters applied inside FAISS, then rows looked up."""

from __future__ import annotations

import os

import numpy as np
import pyarrow.compute as pc

from clipsearch.ann import AnnIndex
from clipsearch.errors import BadInputError
from clipsearch.results import Hit
from clipsearch.store import Store


def folder_filter(store: Store, folder: str) -> np.ndarray:
    """Ids of the rows under `folder` (an existing directory; symlinks as the index stored them)."""
    path = os.path.abspath(os.path.expanduser(folder))
    if not os.path.isdir(path):
        raise BadInputError(f"--in: folder not found: {path}")
    table = store.read(["id", "path"])
    prefix = path.rstrip(os.sep) + os.sep
    mask = pc.starts_with(table.column("path"), prefix)
    return table.column("id").filter(mask).to_numpy()


def nearest(
    store: Store, ann: AnnIndex, vector: np.ndarray, k: int, allowed: np.ndarray | None = None
) -> list[Hit]:
    if k < 1:
        raise BadInputError(f"-k must be at least 1, not {k}")
    scores, ids = ann.search(vector, k, allowed)
    if not len(ids):
        return []
    rows = store.fetch(ids.tolist(), ["id", "path"])
    path_of = dict(zip(rows.column("id").to_pylist(), rows.column("path").to_pylist(), strict=True))
    hits = []
    for score, id_ in zip(scores.tolist(), ids.tolist(), strict=True):
        # an id missing from the table means the table moved on since `ann` was built
        if id_ in path_of:
            hits.append(Hit(rank=len(hits) + 1, path=path_of[id_], score=float(score)))
    return hits
