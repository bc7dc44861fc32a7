"""`clipsearch index --ray`: the same rows, hashes and vectors as a local run, through a real Ray
runtime (a `ray start --head` process on loopback, reached with --ray-address / RAY_ADDRESS)."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from conftest import SAMPLES
from PIL import Image
from typer.testing import CliRunner

from clipsearch.cli.commands import app
from clipsearch.errors import IndexNotFoundError
from clipsearch.store.table import Store

# Ray reads its authentication settings once, when first imported: only after `token` sets them
pytestmark = [pytest.mark.slow, pytest.mark.skipif(importlib.util.find_spec("ray") is None,
                                                   reason="needs the ray extra: pip install -e '.[ray]'")]

runner = CliRunner()
RAY = shutil.which("ray", path=os.path.dirname(sys.executable)) or "ray"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_head(folder: Path, wrap: list[str] | None = None) -> str:
    """A Ray head node on loopback (two CPUs, no dashboard), as `ray start --head` makes one; its
    address. `wrap` runs it inside another command (a private mount namespace)."""
    port = _free_port()
    folder.mkdir(parents=True, exist_ok=True)
    cmd = [RAY, "start", "--head", "--node-ip-address=127.0.0.1", f"--port={port}", "--num-cpus=2",
           "--num-gpus=0", "--include-dashboard=false", "--disable-usage-stats",
           f"--temp-dir={folder}"]
    r = subprocess.run((wrap or []) + cmd, capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stdout + r.stderr
    return f"127.0.0.1:{port}"


def _stop_head(folder: Path) -> None:
    # `ray stop` would stop every Ray on the machine; the session's own processes are ended by pid
    subprocess.run(["pkill", "-9", "-f", str(folder)], timeout=60)


@pytest.fixture(scope="module", autouse=True)
def token():
    """Ray's token authentication, as a cluster has it by default, with the token in the
    environment (never in the home folder) of the head, the drivers and their workers."""
    import secrets

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RAY_AUTH_MODE", "token")
        mp.setenv("RAY_AUTH_TOKEN", secrets.token_hex(32))
        mp.setenv("RAY_USAGE_STATS_ENABLED", "0")
        mp.delenv("RAY_ADDRESS", raising=False)
        yield


@pytest.fixture(scope="module")
def head():
    folder = Path("/tmp") / f"rayt{os.getpid()}"  # short: Ray's socket paths must stay under 108 bytes
    address = _start_head(folder)
    yield address
    _stop_head(folder)
    shutil.rmtree(folder, ignore_errors=True)


def cli(*args, env=None):
    return runner.invoke(app, [str(a) for a in args], env=env, catch_exceptions=False)


def _index(folder, db, model_dir, *extra, env=None):
    r = cli("index", folder, "--db", db, "--model", f"local-dir:{model_dir}", "--device", "cpu",
            "--precision", "fp32", "--batch-size", 4, "--json", *extra, env=env)
    assert r.exit_code == 0, r.output
    return json.loads(r.stdout)


def _rows(db: Path) -> dict[str, dict]:
    table = Store.open(db).read(["id", "path", "hash", "width", "height", "taken", "vector"]).to_pylist()
    return {r["path"]: r for r in table}


def _same_rows(local: Path, remote: Path) -> None:
    a, b = _rows(local), _rows(remote)
    assert sorted(a) == sorted(b)
    for path in a:
        for column in ("hash", "width", "height", "taken"):
            assert a[path][column] == b[path][column], (path, column)
        delta = np.abs(np.asarray(a[path]["vector"]) - np.asarray(b[path]["vector"])).max()
        assert delta <= 1e-5, (path, delta)
    assert len({r["id"] for r in b.values()}) == len(b)


def _variants(folder: Path) -> None:
    """Generated copies beside sample_images: a re-encode, a rotation, an exact copy, a PNG of a
    JPEG, and a file that is not an image."""
    with Image.open(SAMPLES / "space" / "rocket.jpg") as img:
        rgb = img.convert("RGB")
        rgb.save(folder / "rocket_q60.jpg", quality=60)
        rgb.rotate(7, expand=True).save(folder / "rocket_rot.jpg", quality=90)
        rgb.save(folder / "rocket.png")
    shutil.copy(SAMPLES / "textures" / "brick.png", folder / "brick_copy.png")
    (folder / "broken.jpg").write_bytes(b"not a jpeg at all")


def test_ray_index_equals_a_local_one_and_so_do_its_reruns(photos, tmp_path, tiny_local_dir, head):
    _variants(photos)
    env = {"RAY_ADDRESS": head}  # the way a job inside a cluster finds it
    local = _index(photos, tmp_path / "local", tiny_local_dir)
    remote = _index(photos, tmp_path / "ray", tiny_local_dir, "--ray", env=env)
    assert local == {**remote, "seconds": local["seconds"]}
    assert local["added"] == local["embedded"] == 17
    assert [s["path"] for s in remote["skipped"]] == [str(photos / "broken.jpg")]
    _same_rows(tmp_path / "local", tmp_path / "ray")

    # add, change, move and delete, then the same incremental run both ways
    shutil.copy(SAMPLES / "food" / "coffee.webp", photos / "coffee_again.webp")
    Image.new("RGB", (120, 80), (200, 30, 40)).save(photos / "new_red.png")
    Image.new("RGB", (120, 80), (30, 200, 40)).save(photos / "textures" / "grass.png")
    (photos / "travel").mkdir(exist_ok=True)
    (photos / "space" / "astronaut.jpg").rename(photos / "travel" / "astronaut.jpg")
    (photos / "misc" / "camera.bmp").unlink()
    local = _index(photos, tmp_path / "local", tiny_local_dir)
    remote = _index(photos, tmp_path / "ray", tiny_local_dir, "--ray-address", head)
    assert local == {**remote, "seconds": local["seconds"]}
    assert (local["added"], local["updated"], local["moved"], local["removed"]) == (2, 1, 1, 1)
    assert local["embedded"] == 2  # the copy and the move reuse stored vectors, on Ray too
    _same_rows(tmp_path / "local", tmp_path / "ray")


def _count(db: Path) -> int:
    try:
        return Store.open(db).count()
    except IndexNotFoundError:
        return 0


def test_a_killed_ray_run_resumes_with_exact_counts(many_photos, tmp_path, tiny_local_dir, head):
    """SIGKILL of the driver after its first commits, then the same run again, through Ray."""
    import random

    from helpers import start_writer

    db, rng = tmp_path / "db", random.Random(3)
    for _ in range(2):
        proc = start_writer(many_photos, db, tiny_local_dir, pause=0.01, commit_every=16, ray=head)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and _count(db) < 16:
            time.sleep(0.2)
        time.sleep(rng.uniform(0, 1.5))
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
        kept = Store.open(db).count()
        assert 16 <= kept < 300, kept
    before = {r["path"]: r["hash"] for r in Store.open(db).read(["path", "hash"]).to_pylist()}
    proc = start_writer(many_photos, db, tiny_local_dir, commit_every=16, ray=head)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    summary = json.loads(out.splitlines()[-1].removeprefix("finished "))
    assert summary["added"] == 300 - kept and summary["unchanged"] == kept
    rows = Store.open(db).read(["path", "hash"]).to_pylist()
    assert len({r["path"] for r in rows}) == len(rows) == 300
    assert all(before[r["path"]] == r["hash"] for r in rows if r["path"] in before)
    # content committed before the kill is reused, not embedded again (the folder repeats colours)
    new = [r for r in rows if r["path"] not in before]
    assert summary["embedded"] == sum(r["hash"] not in before.values() for r in new)


# Loaded into the driver (sitecustomize): Ray Data's scheduling step that is under way when the
# stream is closed takes longer than the 2 s Ray Data waits for it, as on a loaded 2-core
# machine, and then goes on using Ray's core worker. Were Ray shut down under it, Ray's core
# would end the process with exit 1 (the CI failure this guards).
_SLOW_STEP = """
import os, time
os.environ.setdefault("RAY_ENABLE_AUTO_CONNECT", "0")
from ray.data._internal.execution import streaming_executor as se
_step = getattr(se.StreamingExecutor, "_scheduling_loop_step", None)

def step(self, topology):
    more = _step(self, topology)
    if self._shutdown:
        import ray
        worker = ray._private.worker.global_worker
        core, ref = worker.core_worker, ray.put(0)
        end = time.monotonic() + 3
        while hasattr(worker, "core_worker") and time.monotonic() < end:
            time.sleep(0.001)
        core.get_local_object_locations([ref])
    return more

if _step is not None:
    se.StreamingExecutor._scheduling_loop_step = step
"""


def test_kill_ends_a_ray_run_as_ctrl_c_does(many_photos, tmp_path, tiny_local_dir, head):
    """SIGTERM once the run is under way: the embedded rows are committed and the run says it
    can be resumed (Ray replaces the process's SIGTERM handler with one that just exits), even
    when Ray Data's scheduling loop is slow to stop."""
    import serving

    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(_SLOW_STEP)
    db = tmp_path / "db"
    args = ("index", many_photos, "--db", db, "--model", f"local-dir:{tiny_local_dir}", "--device", "cpu",
            "--batch-size", 2, "--ray-address", head)
    path = os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")]))
    env = serving.environment(PYTHONPATH=path)
    proc = subprocess.Popen(serving.command(*args), stderr=subprocess.PIPE, stdout=subprocess.DEVNULL,
                            text=True, env=env)
    assert proc.stderr.readline().startswith("found 300 images")
    time.sleep(1)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "interrupted; progress is saved (" in err and "run the same command again to resume" in err
    # Ray Data's stream is stopped before Ray is: none of its threads is left to start a runtime
    assert "Started a local Ray instance" not in err and "Exception in thread" not in err, err
    kept = _count(db)
    r = cli(*args, "--json")
    assert r.exit_code == 0, r.output
    summary = json.loads(r.stdout)
    assert (summary["added"], summary["unchanged"]) == (300 - kept, kept) and _count(db) == 300


def test_without_the_extra_ray_is_refused_at_once(photos, tmp_path):
    import serving

    blocked = tmp_path / "no_ray"
    blocked.mkdir()
    (blocked / "sitecustomize.py").write_text("import sys\nsys.modules['ray'] = None\n")
    env = serving.environment(PYTHONPATH=os.pathsep.join([str(blocked), os.environ.get("PYTHONPATH", "")]))
    started = time.monotonic()
    code, out, err, heavy = serving.run_cli("index", photos, "--db", tmp_path / "db", "--ray", env=env)
    assert code == 2, err
    assert err.strip() == ("error: --ray needs Ray, which is not installed; install it with: "
                           'pip install "clipsearch[ray]"')
    assert not (tmp_path / "db").exists() and "torch" not in heavy
    assert time.monotonic() - started < 60


def _index_with_hidden(hidden: Path, photos: Path, db: Path, model_dir: Path):
    """`index --ray-address` to a Ray head whose processes see `hidden` as an empty folder: workers
    on machines that do not share it."""
    folder = Path("/tmp") / f"rayu{os.getpid()}"
    wrap = ["unshare", "--mount", "--propagation", "private", "sh", "-c",
            f"mount -t tmpfs none {hidden} && exec \"$@\"", "sh"]
    address = _start_head(folder, wrap)
    try:
        # a process of its own: a driver that Ray's core ends must not take the test's worker with it
        from writers import Run

        run = Run("from clipsearch.cli.commands import main; main()",
                  ["index", str(photos), "--db", str(db), "--model", f"local-dir:{model_dir}",
                   "--device", "cpu", "--batch-size", "2", "--ray-address", address],
                  {**os.environ, "HF_HUB_OFFLINE": "1"})
        _out, err = run.communicate(timeout=300)
        return SimpleNamespace(exit_code=run.returncode, stderr=err)
    finally:
        _stop_head(folder)
        shutil.rmtree(folder, ignore_errors=True)


needs_root = pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("unshare"),
                                reason="a private mount namespace needs root")


@needs_root
def test_a_photo_a_worker_cannot_read_stops_the_run_naming_it(photos, tmp_path, tiny_local_dir):
    r = _index_with_hidden(photos / "space", photos, tmp_path / "db", tiny_local_dir)
    assert r.exit_code == 1
    line = r.stderr.strip().splitlines()[-1]
    assert line.startswith("error: a Ray worker on ") and str(photos / "space") in line
    assert "--ray needs the photos at the same path on every worker (a shared filesystem)" in line
    kept = _rows(tmp_path / "db") if (tmp_path / "db").exists() else {}
    assert not any(p.startswith(str(photos / "space")) for p in kept)  # nothing from it was committed


@needs_root
def test_a_model_the_workers_cannot_load_is_told_in_one_line(photos, tmp_path, tiny_local_dir):
    model = tmp_path / "model"
    shutil.copytree(tiny_local_dir, model)
    r = _index_with_hidden(model, photos, tmp_path / "db", model)
    assert r.exit_code == 1
    assert r.stderr.strip().splitlines()[-1] == (
        f"error: a Ray worker could not load the model: cannot load model local-dir:{model}: 'local-dir:' "
        f"specified, but config file missing: {model / 'open_clip_config.json'}; --ray needs the model's "
        "weights at the same path on every worker (a shared filesystem), or a hub model the workers "
        "can reach")
    assert "Traceback" not in r.stderr
