"""The text encoder's export (clipsearch.models.export), made in a process of its own so that no
command waits for it: exporting ViT-B-32's text tower takes about 10 s, longer than indexing a few
hundred photos, and a first `index` should end when its rows are searchable.

`clipsearch index` and a search that finds no export start the job and go on; searches answer
through the CLIP model until the export is there, and on the torch-free path from then on (the
same ranking; scores may differ in the last digits, as the fast path's note says). The export is
one per model for all of a user's indexes (clipsearch.models.onnxtext), and so is its job: it holds
`text-<key>.lock` beside the export while it works. One that dies (killed, out of memory) leaves
nothing half-made (the export is renamed into place whole), and the next `index` run or search
starts another. What the last one printed is in `text-<key>.log`.

    python -m clipsearch.models.exportjob INDEX_FOLDER
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from clipsearch.files import holding
from clipsearch.models import onnxtext

if TYPE_CHECKING:
    from clipsearch.models.base import Embedder
    from clipsearch.results import Unwritten
    from clipsearch.store.table import Manifest, Store

try:
    import fcntl
except ImportError:  # Windows: no advisory locks, so no job either: exports are made in-process
    fcntl = None

START_SECONDS = 2.0  # the most `start` waits for the job to take its lock


def _lock_path(model: dict) -> Path:
    return onnxtext.folder(model).with_suffix(".lock")


def _lock_to_look_at(model: dict) -> int | None:
    """The export lock file, opened to look at; None where there are no advisory locks, or no
    export was ever made under it."""
    if fcntl is None:
        return None
    try:
        return os.open(_lock_path(model), os.O_RDONLY)
    except OSError:
        return None


def running(model: dict) -> bool:
    """Whether the export of `model` (an index's manifest's model spec) is being made now (by a
    job, or by a process that exports itself, under `exporting`)."""
    fd = _lock_to_look_at(model)
    if fd is None:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # closing releases a lock taken here
    return False


def start(db: Path, model: dict) -> bool:
    """Start a job exporting `model`, the model of the index at `db`, unless one runs; False
    where no job can run (no advisory locks: the caller exports in its own process)."""
    if fcntl is None:
        return False
    if running(model):
        return True
    try:
        onnxtext.exports().mkdir(parents=True, exist_ok=True)
        log = open(onnxtext.folder(model).with_suffix(".log"), "wb")  # noqa: SIM115 - the child's
    except OSError:
        return False
    with log:
        # a session of its own: the job outlives this process and a Ctrl-C in this terminal
        job = subprocess.Popen([sys.executable, "-m", "clipsearch.models.exportjob", str(db)],
                               stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                               start_new_session=True)
    # until it holds its lock (tens of ms), so that a search started next knows it is coming
    deadline = time.monotonic() + START_SECONDS
    while not running(model) and job.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    return True


def wait(model: dict, timeout: float | None = None) -> bool:
    """Wait until no job exports `model` (True), or `timeout` seconds passed (False)."""
    fd = _lock_to_look_at(model)
    if fd is None:
        return True
    done = threading.Event()

    def take() -> None:
        with contextlib.suppress(OSError):
            fcntl.flock(fd, fcntl.LOCK_SH)  # granted when the job lets go of its exclusive lock
        done.set()

    threading.Thread(target=take, daemon=True, name="clipsearch-export-wait").start()
    finished = done.wait(timeout)
    if finished:
        os.close(fd)
    return finished  # a wait that timed out leaves its thread and descriptor to the process's end


@contextlib.contextmanager
def exporting(model: dict) -> Iterator[None]:
    """Hold the export lock of `model` (waiting for a job that holds it) while its export is
    made here. Work folders found then are what a killed export left: removed."""
    folder = onnxtext.folder(model)
    folder.parent.mkdir(parents=True, exist_ok=True)
    if fcntl is None:
        yield
        return
    # waits for another job, which then has made the export; a quick look by `running` or
    # `wait` holds the lock shared for a moment, which must not turn this one away
    with holding(os.open(_lock_path(model), os.O_RDWR | os.O_CREAT, 0o644), wait=True):
        for stale in folder.parent.glob(f".{folder.name}.*.tmp"):
            shutil.rmtree(stale, ignore_errors=True)
        yield


def needs_export(store: Store) -> bool:
    """Whether the index's model still needs its text export (none made, none found impossible)."""
    return _needs_export(store.manifest.model)


def _needs_export(model: dict) -> bool:
    from clipsearch import config

    return (config.fast_query() and model.get("backend", "open_clip") == "open_clip"
            and not onnxtext.exported(model) and onnxtext.unsupported(model) is None)


def export_for(db: Path, manifest: Manifest) -> list[Unwritten]:
    """Export the text encoder of the index at `db` (whose manifest is `manifest`) from its
    model loaded here, unless it has one: what the job runs."""
    from clipsearch.models import ModelSpec, check_weights_unchanged, load_embedder

    model = manifest.model
    if not _needs_export(model):
        return []
    unwritten: list[Unwritten] = []
    spec = ModelSpec.from_dict(model)
    check_weights_unchanged(spec, manifest.weights_stat)
    export(db, model, lambda: load_embedder(spec, "cpu", "fp32"), unwritten)
    return unwritten


def export(db: Path, model_spec: dict, embedder: Callable[[], Embedder], unwritten: list[Unwritten]) -> None:
    """Make the text export of `model_spec` from `embedder()` (loaded again on the CPU in fp32
    if it is not), here and now; a disk that refuses it is added to `unwritten` and remembered
    (clipsearch.store.derived), a model that cannot be exported is marked so."""
    from clipsearch.models import load_embedder
    from clipsearch.models.export import NotExportable, size_estimate
    from clipsearch.models.export import export as write_export
    from clipsearch.store import derived

    model = embedder()
    if getattr(model, "precision", None) != "fp32" or model.device != "cpu" or not model.has_text:
        model = load_embedder(model.spec, "cpu", "fp32")
    folder = onnxtext.folder(model_spec)
    try:
        write_export(model, folder)
    except NotExportable as exc:
        onnxtext.mark_unsupported(model_spec, str(exc))
    except (OSError, RuntimeError) as exc:
        if not isinstance(exc, OSError) and not derived.space_fault(exc):
            raise
        # a full or read-only index: the full path answers, and the failure is remembered
        unwritten.append(derived.failed(db, derived.EXPORT, folder, size_estimate(model), exc))
    else:
        derived.succeeded(db, derived.EXPORT)


def run(db: Path) -> int:
    """The job: export the text encoder of the index at `db` if it still needs one."""
    with contextlib.suppress(OSError):
        os.nice(10)  # the user's searches come first
    from clipsearch.store.table import Manifest

    db = Path(db)
    manifest = Manifest.load(db, lambda: -1)
    with exporting(manifest.model):
        for failure in export_for(db, manifest):
            print(failure, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(run(Path(sys.argv[1])))
