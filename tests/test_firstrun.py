"""A first run that ends when the rows are searchable: the text export made by a job of its own
(clipsearch.models.exportjob), searches answered meanwhile, a job killed half-way, and a run that finds
nothing to do told without the model or LanceDB (clipsearch.build.unchanged)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import serving
from conftest import SAMPLES

from clipsearch.models import exportjob, onnxtext
from clipsearch.store.table import Manifest, Store

BACKGROUND = {"CLIPSEARCH_FAST_QUERY": "1", "CLIPSEARCH_EXPORT": "background"}
WAIT = 240  # seconds: a job imports torch and exports on a busy 2-core machine


def _cli(*args):
    return serving.run_cli(*args, env=serving.environment(**BACKGROUND))


def _top(out: str) -> list[tuple[str, float]]:
    return [(h["path"], round(h["score"], 4)) for h in json.loads(out)]


def _model(db) -> dict:
    return Manifest.load(db).model


def _exported(db) -> bool:
    return onnxtext.exported(_model(db))


@pytest.fixture(scope="module")
def made_first_run(tmp_path_factory, tiny_local_dir):
    root = tmp_path_factory.mktemp("firstrun")
    photos, db = root / "photos", root / "db"
    shutil.copytree(SAMPLES, photos, ignore=shutil.ignore_patterns("*.md"))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CLIPSEARCH_CACHE", str(root / "cache"))  # this user's, where the export goes
        code, out, err, _heavy = _cli("index", photos, "--db", db, "--model", f"local-dir:{tiny_local_dir}",
                                      "-q")
        assert code == 0, err
        exported_at_end = _exported(db)
        code, during, noted, _heavy = _cli("search", "a red flower", "--db", db, "--json", "-k", "5")
        assert code == 0, noted
    return photos, db, exported_at_end, during, noted, root / "cache"


@pytest.fixture
def first_run(made_first_run, monkeypatch):
    """sample_images/ indexed by a CLI whose export is left to the job; what a search printed
    while the job worked (stdout, stderr), and whether the export was there when `index` ended;
    with that user's cache in effect."""
    *run, cache = made_first_run
    monkeypatch.setenv("CLIPSEARCH_CACHE", str(cache))
    return run


def test_index_ends_before_the_export_and_searches_meanwhile_rank_the_same(first_run):
    photos, db, exported_at_end, during, noted = first_run
    # the job imports torch before it exports anything: `index` had ended long before
    assert not exported_at_end
    # the slow search said why, in one line
    assert noted == ("note: this search loads the CLIP model (a few seconds) while fast searches are "
                     "prepared: the text encoder is being exported, once per model")
    assert exportjob.wait(_model(db), WAIT)
    assert _exported(db) and not exportjob.running(_model(db))
    code, after, err, heavy = _cli("search", "a red flower", "--db", db, "--json", "-k", "5")
    assert code == 0, err
    assert "torch" not in heavy and "lancedb" not in heavy  # the fast path, now that it is there
    before, now = _top(during), _top(after)
    assert [p for p, _ in before] == [p for p, _ in now]
    assert all(abs(a - b) < 1e-3 for (_, a), (_, b) in zip(before, now, strict=True))


def test_an_unchanged_library_is_told_without_the_model_or_lancedb(first_run):
    photos, db, *_ = first_run
    assert exportjob.wait(_model(db), WAIT)
    n = len(list(p for p in photos.rglob("*") if p.is_file()))
    code, out, err, heavy = _cli("index", photos, "--db", db, "--json")
    assert code == 0, err
    summary = json.loads(out)
    assert (summary["added"], summary["updated"], summary["removed"], summary["unchanged"]) == (0, 0, 0, n)
    assert heavy == []
    # a change goes to the full run, which finds it
    shutil.copy(next(photos.rglob("*.jpg")), photos / "copy of a photo.jpg")
    code, out, err, heavy = _cli("index", photos, "--db", db, "--json")
    assert code == 0, err
    summary = json.loads(out)
    assert (summary["added"], summary["unchanged"]) == (1, n)
    assert "lancedb" in heavy
    code, out, err, heavy = _cli("index", photos, "--db", db, "--json")
    assert json.loads(out)["unchanged"] == n + 1 and heavy == []
    # a touched file is read and hashed, but its content is known: no model
    touched = photos / "copy of a photo.jpg"
    os.utime(touched, ns=(touched.stat().st_atime_ns, touched.stat().st_mtime_ns + 10**9))
    code, out, err, heavy = _cli("index", photos, "--db", db, "--json")
    assert code == 0, err
    summary = json.loads(out)
    counts = (summary["added"], summary["updated"], summary["embedded"], summary["unchanged"])
    assert counts == (0, 0, 0, n + 1)
    assert "torch" not in heavy and "open_clip" not in heavy
    code, out, err, heavy = _cli("index", photos, "--db", db, "--json")
    assert json.loads(out)["unchanged"] == n + 1 and heavy == []
    # a Live Photo's video put beside it: no new item, but its still's row records it (what the
    # server checks before it plays it), so the torch-free check may not call the run a no-op
    (photos / "copy of a photo.MOV").write_bytes(b"a Live Photo's motion")
    code, out, err, heavy = _cli("index", photos, "--db", db, "--json")
    summary = json.loads(out)
    assert (summary["added"], summary["updated"], summary["unchanged"]) == (0, 0, n + 1), summary
    assert "lancedb" in heavy and "torch" not in heavy
    stamp = Store.open(db).by_paths([str(touched)], ["pairs"]).column("pairs")[0].as_py()
    assert stamp.startswith("copy of a photo.MOV\t21\t"), stamp
    code, out, err, heavy = _cli("index", photos, "--db", db, "--json")
    assert json.loads(out)["unchanged"] == n + 1 and heavy == []


def test_a_job_killed_half_way_leaves_nothing_and_the_next_run_exports(tmp_path, tiny_local_dir):
    photos, db = tmp_path / "photos", tmp_path / "db"
    shutil.copytree(SAMPLES, photos, ignore=shutil.ignore_patterns("*.md"))
    env = serving.environment(**{**BACKGROUND, "CLIPSEARCH_EXPORT": "now", "CLIPSEARCH_FAST_QUERY": "0"})
    code, _out, err, _heavy = serving.run_cli("index", photos, "--db", db, "--model",
                                              f"local-dir:{tiny_local_dir}", "-q", env=env)
    assert code == 0, err
    env = serving.environment(**BACKGROUND)
    job = subprocess.Popen([sys.executable, "-m", "clipsearch.models.exportjob", str(db)], env=env,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + WAIT  # killed once it holds the lock, before its export is whole
        while not exportjob.running(_model(db)) and job.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert exportjob.running(_model(db))
    finally:
        os.kill(job.pid, signal.SIGKILL)
        job.wait(30)
    assert not exportjob.running(_model(db))
    assert not _exported(db)
    exports = onnxtext.exports()
    assert not [p for p in exports.iterdir() if p.is_dir() and p.name.startswith("text-")]
    # the next run (nothing changed, but no export) starts a job, which makes it and clears
    # what the killed one left
    code, out, err, _heavy = _cli("index", photos, "--db", db, "--json")
    assert code == 0, err
    assert exportjob.wait(_model(db), WAIT)
    assert _exported(db)
    assert not list(exports.glob(".text-*"))
