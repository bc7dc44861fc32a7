"""Ctrl-C and kill -9 during a real `clipsearch index` process: nothing committed is lost, and
the next run finishes the job with exactly one row per image."""

from __future__ import annotations

import json
import os
import signal
import subprocess

import pytest
from test_cli import _script

from clipsearch.errors import IndexNotFoundError
from clipsearch.store.table import Store


def _start(many_photos, db, model_dir):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [_script(), "index", str(many_photos), "--db", str(db), "--model", f"local-dir:{model_dir}",
         "--device", "cpu", "--batch-size", "4"],
        stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)


def _wait_until_scanned(proc):
    # "found N images" is printed once the scan is done and before any image is read,
    # so the signal always lands while the run is working
    for line in proc.stderr:
        if line.startswith("found "):
            return line
    raise AssertionError("index never reported its scan")


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGKILL])
def test_signal_mid_run_then_resume(many_photos, tmp_path, tiny_local_dir, sig):
    db = tmp_path / "db"
    proc = _start(many_photos, db, tiny_local_dir)
    assert _wait_until_scanned(proc).startswith("found 300 images")
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    if sig in (signal.SIGINT, signal.SIGTERM):
        assert proc.returncode == 130
        assert err.startswith("interrupted; progress is saved")
        assert "run the same command again to resume" in err
        assert "Traceback" not in err
    else:
        assert proc.returncode == -signal.SIGKILL

    info = subprocess.run([_script(), "info", "--db", str(db), "--json"],
                          capture_output=True, text=True, timeout=120)
    assert info.returncode == 0, info.stderr  # the index opens after any interruption
    done_before = json.loads(info.stdout)["images"]
    assert 0 <= done_before < 300

    proc = _start(many_photos, db, tiny_local_dir)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert f"added {300 - done_before}, updated 0, moved 0, removed 0, unchanged {done_before}" in err

    from clipsearch.store.table import Store

    store = Store.open(db)
    paths = store.read(["path"]).column("path").to_pylist()
    assert len(paths) == len(set(paths)) == 300
    from clipsearch.store.ann import current as current_ann

    assert current_ann(store).size == 300  # FAISS in step with the table


def _killed_run(many_photos, db, model_dir, pause: float, wait: float, every: float,
                ) -> tuple[int, int, float]:
    """An index run committing every `every` seconds, killed with SIGKILL `wait` seconds after its
    first commit (or after 15 s of embedding without one): (images it had embedded, rows it left
    committed, images per second)."""
    import queue
    import threading
    import time

    from helpers import start_writer

    def rows() -> int:
        try:
            return Store.open(db).count()
        except IndexNotFoundError:
            return 0

    before = rows()
    proc = start_writer(many_photos, db, model_dir, pause=pause, commit_every=256, commit_seconds=every)
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in proc.stdout], daemon=True).start()
    progress: list[tuple[int, float]] = []  # (images done, when) of this run's embedding

    def drain() -> None:
        while not lines.empty():
            phase, *rest = lines.get().split()
            if phase == "embed" and int(rest[0]) > 0:
                progress.append((int(rest[0]), float(rest[2])))

    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        drain()
        if rows() > before or (progress and time.monotonic() - progress[0][1] > 15):
            break
        time.sleep(0.25)
    time.sleep(wait)
    drain()
    done, at = progress[-1]
    proc.kill()
    proc.wait(timeout=60)
    return done, rows() - before, done / max(at - progress[0][1], 1e-3)


@pytest.mark.slow
def test_a_kill_loses_seconds_of_work_not_minutes(many_photos, tmp_path, tiny_local_dir):
    """Runs with a pause per image, each killed with SIGKILL at a random moment after its first
    commit: what the run had embedded by then, less what the table holds, is never more than
    about the time between timed commits (10 s by default; 3 s here, so that each run is short),
    and every run moves the index forward."""
    import random

    from helpers import start_writer

    rng, db, every = random.Random(5), tmp_path / "db", 3.0
    for run in range(3):
        done, kept, rate = _killed_run(many_photos, db, tiny_local_dir, 0.15, rng.uniform(0.5, every), every)
        lost = (done - kept) / rate
        assert kept > 0, f"run {run}: nothing committed after {done} images"
        assert lost <= every + 2, f"run {run}: {done} embedded, {kept} committed: {lost:.1f} s of work lost"
    proc = start_writer(many_photos, db, tiny_local_dir, commit_every=256)
    out, _ = proc.communicate(timeout=300)
    assert "finished" in out
    paths = Store.open(db).read(["path"]).column("path").to_pylist()
    assert len(paths) == len(set(paths)) == 300
