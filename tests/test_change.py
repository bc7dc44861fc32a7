"""Each change costs what it changes (issue 21): commits write deltas beside the search
structure's and the snapshot's bases, and every search path keeps answering exactly what a fresh
build of the same rows answers; a kill at any point of a commit loses nothing; compaction runs
when it pays, or when asked."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from typer.testing import CliRunner

from clipsearch.build.builder import open_builder
from clipsearch.build.distributed import Embedded
from clipsearch.cli.commands import app
from clipsearch.search.engine import open_index
from clipsearch.search.fastpath import open_fast
from clipsearch.search.nearest import nearest
from clipsearch.store import ann as ann_module
from clipsearch.store.table import Store


def _vector(data: bytes, dim: int) -> np.ndarray:
    v = np.random.default_rng(int.from_bytes(hashlib.blake2b(data, digest_size=8).digest())).normal(size=dim)
    return (v / np.linalg.norm(v)).astype(np.float32)


def stub(dim: int):
    """Where a model's vectors would come from: one per content, so copies share theirs (ties)."""
    from clipsearch.media.images import content_hash

    def fanout(paths, known):
        for path in paths:
            with open(path, "rb") as f:
                data = f.read()
            digest = content_hash(data)
            if np.isin(np.uint64(int(digest[:16], 16)), known()):  # indexed content: hashed, not embedded
                yield Embedded(path, digest)
            else:
                yield Embedded(path, digest, _vector(data, dim), 64, 48)
    return fanout


def _write(folder, name: str, content: bytes | None = None) -> str:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content if content is not None else os.urandom(64))
    return str(path)


@pytest.fixture
def library(tmp_path, embedder, monkeypatch, seed_export):
    monkeypatch.setenv("CLIPSEARCH_FAST_QUERY", "1")
    seed_export(embedder)
    folder = tmp_path / "photos"
    for i in range(240):
        _write(folder, f"d{i % 6}/p{i:03d}.jpg")
    for i in range(4):  # copies: the same vector twice
        shutil.copy(folder / f"d0/p{i * 6:03d}.jpg", folder / f"d5/copy{i}.jpg")
    db = tmp_path / "db"
    with open_builder(db, embedder=embedder, fanout=stub(embedder.dim), workers=0) as builder:
        builder.index([str(folder)])
    return folder, db


def _answers(index, queries, k=12, **filters):
    from clipsearch.search.nearest import Filters

    f = Filters.make(**filters) if filters else None
    return [[(h.id, h.path, h.score) for h in index.search_vector(q, k, f)] for q in queries]


def _fresh(db, queries, k=12):
    """What a structure built from scratch from the same rows answers."""
    store = Store.open(db)
    fresh = ann_module._built(store, store.count())
    return [[(h.id, h.path, h.score) for h in nearest(store, fresh, q, k)] for q in queries]


def test_every_search_path_answers_as_a_fresh_build_after_each_change(library, embedder, tmp_path):
    folder, db = library
    queries = [_vector(bytes([i]), embedder.dim) for i in range(6)]
    queries.append(_vector((folder / "d0/p000.jpg").read_bytes(), embedder.dim))  # ties with a copy
    held = open_index(db, embedder=embedder)  # a server's index, kept open across commits
    held_answers = _answers(held, queries)
    rng = np.random.default_rng(1)
    steps = ["add", "remove", "move", "change", "folder gone", "copy", "tag", "compact"]
    for step in steps * 2:
        with open_builder(db, embedder=embedder, fanout=stub(embedder.dim), workers=0) as builder:
            files = sorted(str(p) for p in folder.rglob("*.jpg"))
            changed: list[str] = []
            if step == "add":
                changed = [_write(folder, f"new/{step}{rng.integers(1e9)}.jpg") for _ in range(10)]
            elif step == "remove":
                changed = list(rng.choice(files, 10, replace=False))
                for p in changed:
                    os.unlink(p)
            elif step == "move":
                for p in rng.choice(files, 5, replace=False):
                    target = str(folder / "moved" / os.path.basename(p))
                    os.makedirs(os.path.dirname(target), exist_ok=True)
                    os.rename(p, target)
                    changed += [p, target]
            elif step == "change":
                changed = list(rng.choice(files, 3, replace=False))
                for p in changed:
                    _write(folder, os.path.relpath(p, folder))
            elif step == "folder gone":
                gone = folder / f"d{rng.integers(4)}"
                if gone.exists():
                    shutil.rmtree(gone)
                changed = [str(gone)]
            elif step == "copy":
                for p in rng.choice(files, 3, replace=False):
                    target = str(folder / "copies" / f"{rng.integers(1e9)}.jpg")
                    os.makedirs(os.path.dirname(target), exist_ok=True)
                    shutil.copy(p, target)
                    changed.append(target)
            if step == "compact":
                builder.compact()
            elif rng.random() < 0.5:
                builder.update(changed)  # what a watcher does
            else:
                builder.index([str(folder)])  # what `clipsearch index` does
        if step == "tag":
            with open_builder(db, embedder=embedder) as builder:
                builder.tag("cat,dog", threshold=0.0)
        expected = _fresh(db, queries)
        held.refresh()
        assert _answers(held, queries) == expected, step
        quick = open_fast(db)
        assert quick is not None, f"{step}: no snapshot and structure for the new version"
        assert _answers(quick, queries) == expected, step
        assert _answers(open_index(db, embedder=embedder), queries) == expected, step
        assert _answers(quick, queries[:2], within=str(folder / "d5")) == \
            _answers(open_index(db, embedder=embedder), queries[:2], within=str(folder / "d5"))
    assert held_answers != expected  # the library did change
    store = Store.open(db)
    paths = sorted(store.read(["path"]).column("path").to_pylist())
    assert paths == sorted(str(p) for p in folder.rglob("*.jpg"))


def test_a_commit_writes_deltas_not_the_library(library, embedder):
    folder, db = library
    held = open_index(db, embedder=embedder)  # as a server holds it
    base = held.ann._index
    before = {p.name: p.stat().st_mtime_ns for p in (db / "ann").iterdir()}
    bases = sorted(p.name for p in (db / "ann").glob("faiss-v*.index")) + sorted(
        p.name for p in (db / "fast").glob("rows-v*.arrow"))
    with open_builder(db, embedder=embedder, fanout=stub(embedder.dim), workers=0) as builder:
        summary = builder.update([_write(folder, "new/one.jpg"), str(folder / "d1/p001.jpg")])
        os.unlink(folder / "d1/p007.jpg")
        summary = builder.update([str(folder / "d1/p007.jpg")])
    assert summary.removed == 1
    after = sorted(p.name for p in (db / "ann").glob("faiss-v*.index")) + sorted(
        p.name for p in (db / "fast").glob("rows-v*.arrow"))
    assert after == bases  # the bases were not rewritten ...
    assert all((db / "ann" / name).stat().st_mtime_ns == before[name] for name in bases[:1])
    (ann_delta,) = (db / "ann").glob("delta-v*.npz")
    (rows_delta,) = (db / "fast").glob("delta-v*.arrow")
    assert ann_delta.stat().st_size < 8 * 1024 and rows_delta.stat().st_size < 8 * 1024  # ... a delta was
    version = Store.open(db).version
    assert ann_delta.name == f"delta-v{version}.npz" and rows_delta.name == f"delta-v{version}.arrow"
    held.refresh()
    assert held.ann.table_version == version and held.ann._index is base  # the delta read, not the base
    queries = [_vector(bytes([i]), embedder.dim) for i in range(3)]
    assert _answers(held, queries) == _fresh(db, queries)


# a commit killed (os._exit: no clean-up, as kill -9) right before or after one of its renames
_KILLED = """
import os, sys
sys.path.insert(0, {tests!r})
os.environ["CLIPSEARCH_FAST_QUERY"] = "1"
from clipsearch.build.builder import open_builder
from test_change import stub
where, when, dim = sys.argv[1], sys.argv[2], {dim}
real = os.replace

def replace(src, dst, *a, **kw):
    if where in os.path.basename(str(dst)) and when == "before":
        os._exit(9)
    real(src, dst, *a, **kw)
    if where in os.path.basename(str(dst)) and when == "after":
        os._exit(9)

os.replace = replace
with open_builder(sys.argv[3], fanout=stub(dim), workers=0) as builder:  # the model: never loaded
    builder.update(sys.argv[4:])
os._exit(0)
"""


@pytest.mark.parametrize("where", ["manifest.json", "faiss-v", "delta-v", ".ids.npy", "rows-v"])
@pytest.mark.parametrize("when", ["before", "after"])
def test_a_kill_at_any_point_of_a_commit_loses_nothing(library, embedder, where, when):
    folder, db = library
    tests = os.path.dirname(__file__)
    held = open_index(db, embedder=embedder)
    queries = [_vector(bytes([i]), embedder.dim) for i in range(4)]
    removed = str(folder / "d2/p002.jpg")
    os.unlink(removed)
    added = [_write(folder, f"new/k{i}.jpg") for i in range(3)]
    script = _KILLED.format(tests=tests, dim=embedder.dim)
    if where in ("faiss-v", "rows-v", ".ids.npy"):  # bases: a commit writes one when it folds
        script = script.replace("builder.update(sys.argv[4:])",
                                "builder.update(sys.argv[4:])\n    builder.compact()")
    r = subprocess.run([sys.executable, "-c", script, where, when, str(db), removed, *added],
                       capture_output=True, text=True, timeout=300, env={**os.environ})
    assert r.returncode in (0, 9), r.stderr[-2000:]
    # whatever was committed opens and searches on every path, as a fresh build of its rows does
    expected = _fresh(db, queries)
    held.refresh()
    assert _answers(held, queries) == expected
    assert _answers(open_index(db, embedder=embedder), queries) == expected
    quick = open_fast(db)
    if quick is not None:
        assert _answers(quick, queries) == expected
    # and the next run finishes the job
    with open_builder(db, embedder=embedder, fanout=stub(embedder.dim), workers=0) as builder:
        builder.index([str(folder)])
    store = Store.open(db)
    paths = sorted(store.read(["path"]).column("path").to_pylist())
    assert paths == sorted(str(p) for p in folder.rglob("*.jpg"))
    assert _answers(open_fast(db), queries) == _fresh(db, queries)


def test_compaction_runs_when_commits_pile_up_or_when_asked(library, embedder, monkeypatch):
    import clipsearch.store.table

    folder, db = library
    monkeypatch.setattr(clipsearch.store.table, "SMALL_FILES_MAX", 3)
    fragments = []
    with open_builder(db, embedder=embedder, fanout=stub(embedder.dim), workers=0) as builder:
        for i in range(5):
            builder.update([_write(folder, f"new/c{i}.jpg")])
            fragments.append(builder.store._table.stats()["fragment_stats"]["num_fragments"])
    assert fragments == [2, 3, 1, 2, 3]  # merged once more than 3 small files piled up
    runner = CliRunner()
    r = runner.invoke(app, ["optimize", "--db", str(db)])
    assert r.exit_code == 0, r.output
    assert "compacted" in r.stderr
    store = Store.open(db)
    assert store._table.stats()["fragment_stats"]["num_fragments"] == 1
    assert not list((db / "ann").glob("delta-v*")) and not list((db / "fast").glob("delta-v*"))
    assert open_fast(db) is not None
    r = runner.invoke(app, ["optimize", "--db", str(db / "nowhere")])
    assert r.exit_code != 0 and "no index at" in r.stderr


def test_update_takes_files_and_folders_added_changed_or_removed(library, embedder):
    folder, db = library
    with open_builder(db, embedder=embedder, fanout=stub(embedder.dim), workers=0) as builder:
        new = [_write(folder, "trip/a.jpg"), _write(folder, "trip/b.jpg"), _write(folder, "trip/notes.txt")]
        summary = builder.update([str(folder / "trip")])
        assert (summary.added, summary.removed) == (2, 0)
        os.rename(new[0], folder / "trip/c.jpg")
        _write(folder, "trip/b.jpg")  # new content
        summary = builder.update([new[0], str(folder / "trip/c.jpg"), new[1]])
        assert (summary.added, summary.moved, summary.updated, summary.removed) == (0, 1, 1, 0)
        shutil.rmtree(folder / "d3")
        summary = builder.update([str(folder / "d3"), str(folder / "never-there.jpg")])
        assert summary.removed == 40 and summary.unchanged == 0
    paths = sorted(Store.open(db).read(["path"]).column("path").to_pylist())
    assert paths == sorted(str(p) for p in folder.rglob("*.jpg"))


def test_check_verifies_and_rebuilds_deltas_as_it_does_bases(library, embedder):
    folder, db = library
    with open_builder(db, embedder=embedder, fanout=stub(embedder.dim), workers=0) as builder:
        builder.update([_write(folder, "new/x.jpg"), _write(folder, "new/y.jpg")])
    queries = [_vector(bytes([i]), embedder.dim) for i in range(3)]
    expected = _fresh(db, queries)
    with open_builder(db, embedder=embedder) as checking:
        report = checking.check(thumbnails=False)
    paths = {os.path.basename(i.path): (i.status, i.action) for i in report.items}
    (ann_delta,) = (db / "ann").glob("delta-v*.npz")
    (rows_delta,) = (db / "fast").glob("delta-v*.arrow")
    assert paths[ann_delta.name] == paths[rows_delta.name] == ("ok", "none") and report.ok
    for damaged in (ann_delta, rows_delta):
        data = bytearray(damaged.read_bytes())
        data[len(data) // 2] ^= 0xFF  # one flipped bit's worth: same size, other bytes
        damaged.write_bytes(bytes(data))
    with open_builder(db, embedder=embedder) as checking:
        report = checking.check(thumbnails=False)
    paths = {os.path.basename(i.path): (i.status, i.action) for i in report.items}
    assert paths[ann_delta.name] == paths[rows_delta.name] == ("damaged", "rebuilt") and report.ok
    assert _answers(open_fast(db), queries) == expected
    assert _answers(open_index(db, embedder=embedder), queries) == expected
    # a search that meets a delta it cannot read answers from the table, as a fresh build does
    ann_delta.write_bytes(ann_delta.read_bytes()[:200])
    assert _answers(open_index(db, embedder=embedder), queries) == expected
