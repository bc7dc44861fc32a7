"""Real processes against one index: kill -9 at many moments, searches during an index run, and
a second writer. Whatever the timing, the index opens, nothing is duplicated or lost, and FAISS
stays in step with the table; the assertions hold for any moment a signal lands."""

from __future__ import annotations

import random
import shutil
import signal
import time
from pathlib import Path

import pytest
from helpers import row_paths, start_writer
from PIL import Image
from typer.testing import CliRunner

from clipsearch import index_folders, open_index
from clipsearch.cli.commands import app
from clipsearch.errors import IndexBusyError, IndexNotFoundError
from clipsearch.store.table import Store


def _files(folder: Path) -> set[str]:
    return {str(p) for p in folder.rglob("*.png")}


def _check_consistent(db: Path, allowed: set[str]) -> None:
    """What must hold after any interruption: the index opens, `info` works, rows are unique."""
    r = CliRunner().invoke(app, ["info", "--db", str(db), "--json"], catch_exceptions=False)
    if not Store.exists(db):  # killed before the index was first created: nothing to open yet
        assert r.exit_code == 1 and "no index at" in r.stderr
        return
    assert r.exit_code == 0, r.output
    rows = row_paths(db)
    assert len(rows) == len(set(rows)), "duplicate rows"
    assert set(rows) <= allowed


def _churn(folder: Path, trial: int, rng: random.Random) -> None:
    """Work for the next run: 40 new photos, 20 edited, 10 deleted, and now and then a moved folder."""
    existing = sorted(folder.rglob("*.png"))
    for j in range(40):
        color = (trial * 20 % 256, j * 6, rng.randrange(256))
        Image.new("RGB", (80, 60), color).save(folder / f"t{trial}-{j}.png")
    for path in rng.sample(existing, 30):
        if rng.random() < 2 / 3:
            Image.new("RGB", (64, 64), (rng.randrange(256), trial, 77)).save(path)
        else:
            path.unlink()
    if trial % 4 == 0:
        rolls = sorted(p for p in folder.iterdir() if p.is_dir())
        rolls[0].rename(folder / f"moved in trial {trial}")


def test_kill_9_at_twelve_moments_never_damages_the_index(many_photos, tmp_path, tiny_local_dir):
    db = tmp_path / "db"
    rng = random.Random(20261123)
    allowed = _files(many_photos)
    # the first run creates the index (300 photos); every later one has churn to index
    moments = ["startup", "embed 20", "finish", "scan"]
    moments += [f"embed {rng.randint(1, 60)}" for _ in range(7)] + ["finish"]
    for trial, moment in enumerate(moments):
        if trial >= 3:
            _churn(many_photos, trial, rng)
            allowed |= _files(many_photos)
        proc = start_writer(many_photos, db, tiny_local_dir)
        if moment == "startup":
            time.sleep(rng.uniform(0.5, 2.5))
        else:
            for line in proc.stdout:
                phase, done, total = (line.split() + ["", "", ""])[:3]
                if line.startswith("finished"):
                    pytest.fail(f"trial {trial}: the run ended before the kill at {moment!r}")
                if moment == "scan" and phase == "scan":
                    break
                if moment.startswith("embed") and phase == "embed" and int(done) >= int(moment.split()[1]):
                    break
                if moment == "finish" and phase == "embed" and done == total:
                    time.sleep(rng.uniform(0.0, 0.5))  # compaction, FAISS, tags
                    break
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=60)
        _check_consistent(db, allowed)

    summary = index_folders([many_photos], db, model=f"local-dir:{tiny_local_dir}", device="cpu")
    expected = _files(many_photos)
    assert sorted(row_paths(db)) == sorted(expected)  # exactly one row per photo
    assert summary.skipped == []
    from clipsearch.store.ann import current as current_ann

    store = Store.open(db)
    ann = current_ann(store)
    ids = store.read(["id"]).column("id").to_pylist()
    assert ann.size == len(ids) == len(expected)
    assert sorted(ann._index.id_map.at(i) for i in range(ann.size)) == sorted(ids)  # FAISS in step


def test_searches_during_an_index_run_see_committed_states_only(many_photos, tmp_path, tiny_local_dir):
    db = tmp_path / "db"
    writer = start_writer(many_photos, db, tiny_local_dir, pause=0.01)
    files = _files(many_photos)
    from clipsearch.models import load_embedder, parse_model_spec

    embedder = load_embedder(parse_model_spec(f"local-dir:{tiny_local_dir}"), "cpu")
    seen_counts = set()
    searches = 0
    for line in writer.stdout:
        if line.startswith("finished"):
            break
        if not line.startswith("embed") or not Store.exists(db):
            continue
        try:
            index = open_index(db, embedder=embedder)
        except IndexNotFoundError:
            continue
        count = index.store.count()
        hits = index.search("a red square", k=5)
        searches += 1
        seen_counts.add(count)
        assert len(hits) == min(5, count)
        assert len({h.path for h in hits}) == len(hits) and {h.path for h in hits} <= files
        assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    assert writer.wait(timeout=120) == 0, writer.stderr.read()
    assert searches >= 5 and len(seen_counts) >= 2  # the searches really overlapped the writes
    assert sorted(row_paths(db)) == sorted(files)


def test_a_second_index_run_is_refused_while_the_first_writes(many_photos, tmp_path, tiny_local_dir):
    db = tmp_path / "db"
    first = start_writer(many_photos, db, tiny_local_dir, pause=0.01)
    for line in first.stdout:
        if line.startswith("embed"):
            break
    with pytest.raises(IndexBusyError) as err:
        index_folders([many_photos], db, model=f"local-dir:{tiny_local_dir}", device="cpu")
    assert f"another clipsearch process (pid {first.pid}) is writing to the index at {db}" in str(err.value)
    first.stdout.read()
    assert first.wait(timeout=120) == 0, first.stderr.read()
    assert sorted(row_paths(db)) == sorted(_files(many_photos))
    shutil.rmtree(db)
