"""Ctrl-C and kill -9 during a real `clipsearch index` process: nothing committed is lost, and
the next run finishes the job with exactly one row per image."""

from __future__ import annotations

import json
import os
import signal
import subprocess

import pytest
from test_cli import _script


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

    from clipsearch.store import Store

    store = Store.open(db)
    paths = store.read(["path"]).column("path").to_pylist()
    assert len(paths) == len(set(paths)) == 300
    from clipsearch.ann import current as current_ann

    assert current_ann(store).size == 300  # FAISS in step with the table
