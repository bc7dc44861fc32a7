"""The Ray Data path of the indexer: reading, hashing, decoding and embedding fanned out over a
Ray cluster, the results streamed back to the driver, which commits them as a local run does.

Imported only for `index --ray`; `ray` is the optional extra `clipsearch[ray]`. The driver keeps
everything that must happen once (scan, diff against the store, commits, deletions), so a Ray
run is killed, resumed and re-run exactly as a local one. What crosses the cluster is small:
paths out, and per photo a hash, a vector and its metadata back.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from clipsearch.build.prepare import prepare_photo
from clipsearch.errors import (
    ClipsearchError,
    ModelLoadError,
    RayUnavailableError,
    RayWorkerError,
)

INSTALL = 'pip install "clipsearch[ray]"'
# Ray Data's threads in the driver (its executor's scheduling loop, metadata fetcher and batch
# pipeline). A closed stream waits only 2 s for its scheduling loop; one still running when Ray
# shuts down (a slow step on a loaded machine) touches the gone core worker, whose C++ side
# then ends the whole process with exit 1
_RAY_DATA_THREADS = ("StreamingExecutor-", "ray-data-", "map_tp_", "iter_threaded")
_SETTLE_S = 30.0
# how our errors read in the remote tracebacks Ray wraps them in
_OURS = re.compile(r"clipsearch\.errors\.(\w+Error): ([^\n]+)")


@dataclass(frozen=True)
class RayOptions:
    """Where and how wide to fan out. `address` None: RAY_ADDRESS if set, else a local runtime
    started for this run. `workers` and `cpus_per_worker` None: from the cluster's resources."""

    address: str | None = None
    workers: int | None = None
    gpus_per_worker: float | None = None  # None: 1 where the cluster has GPUs, else 0
    cpus_per_worker: float | None = None


@dataclass
class Embedded:
    """One photo as a worker saw it. `vector` None with `reason` None: its content is already
    indexed (`hash` names it), so no worker decoded it."""

    path: str
    hash: str | None = None
    vector: np.ndarray | None = None
    width: int | None = None
    height: int | None = None
    taken: str | None = None
    reason: str | None = None  # why it was skipped
    unread: bool = False  # the worker could not read the file at all (as opposed to decode it)
    host: str = ""


def _known(keys: np.ndarray, digest: str) -> bool:
    key = np.uint64(int(digest[:16], 16))
    i = int(np.searchsorted(keys, key))
    return i < len(keys) and keys[i] == key


class EmbedWorker:
    """A Ray Data actor: loads the model once, then reads, hashes, decodes and embeds batches
    of paths. Decoding runs in threads (one per CPU the actor holds); with two batches in flight
    per actor, one decodes while the other is on the model."""

    def __init__(self, spec: dict, device: str, precision: str, keys: Any, threads: int) -> None:
        import ray

        from clipsearch.models import ModelSpec, load_embedder

        self.keys = ray.get(keys[0])
        self.embedder = load_embedder(ModelSpec.from_dict(spec), device, precision)
        self.pool = ThreadPoolExecutor(max(1, threads), thread_name_prefix="clipsearch-decode")
        self.host = socket.gethostname()

    def _read(self, path: str) -> tuple[Embedded, Any]:
        p = prepare_photo(path, lambda digest: _known(self.keys, digest), self.embedder.decode_min_side,
                          self.embedder.preprocess)
        return Embedded(path, p.hash, width=p.width, height=p.height, taken=p.taken, reason=p.reason,
                        unread=p.unread, host=self.host), p.pixels

    def __call__(self, batch: pa.Table) -> pa.Table:
        import torch

        read = list(self.pool.map(self._read, batch.column("path").to_pylist()))
        todo = [(e, pixels) for e, pixels in read if pixels is not None]
        if todo:
            vectors = self.embedder.embed_images(torch.stack([pixels for _, pixels in todo]))
            for (e, _), vector in zip(todo, vectors, strict=True):
                e.vector = vector
        return to_table([e for e, _ in read], self.embedder.dim)


def to_table(rows: Sequence[Embedded], dim: int) -> pa.Table:
    flat = np.concatenate([r.vector if r.vector is not None else np.zeros(dim, np.float32) for r in rows])
    return pa.table({
        "path": pa.array([r.path for r in rows], pa.string()),
        "hash": pa.array([r.hash for r in rows], pa.string()),
        "vector": pa.FixedSizeListArray.from_arrays(pa.array(flat.astype(np.float32)), dim,
                                                    mask=pa.array([r.vector is None for r in rows])),
        "width": pa.array([r.width for r in rows], pa.int32()),
        "height": pa.array([r.height for r in rows], pa.int32()),
        "taken": pa.array([r.taken for r in rows], pa.string()),
        "reason": pa.array([r.reason for r in rows], pa.string()),
        "unread": pa.array([r.unread for r in rows], pa.bool_()),
        "host": pa.array([r.host for r in rows], pa.string()),
    })


def from_table(table: pa.Table) -> Iterator[Embedded]:
    columns = {name: table.column(name).to_pylist() for name in table.column_names if name != "vector"}
    vectors = table.column("vector").combine_chunks()
    dim = vectors.type.list_size
    # .values keeps the slots of null vectors (flatten() would drop them and shift the rest)
    flat = vectors.values.slice(vectors.offset * dim, len(vectors) * dim).to_numpy(zero_copy_only=False)
    flat = flat.reshape(len(vectors), dim)
    valid = vectors.is_valid().to_numpy(zero_copy_only=False)
    for i in range(table.num_rows):
        yield Embedded(**{name: values[i] for name, values in columns.items()},
                       vector=flat[i].copy() if valid[i] else None)


@contextlib.contextmanager
def session(options: RayOptions) -> Iterator[Any]:
    """Ray, connected for the length of the block; disconnected after it unless the caller had
    connected it already (a program that runs its own Ray keeps it)."""
    import_ray = _import()
    if import_ray.is_initialized():
        yield import_ray
        return
    ray = connect(options)
    try:
        yield ray
    finally:
        _settle()
        ray.shutdown()


def _settle(timeout: float = _SETTLE_S) -> None:
    """Wait (up to `timeout` in all) for Ray Data's driver threads to end: none may outlive Ray."""
    deadline = time.monotonic() + timeout
    for thread in threading.enumerate():
        if thread.name.startswith(_RAY_DATA_THREADS) and thread is not threading.current_thread():
            thread.join(max(0.0, deadline - time.monotonic()))


def _import() -> Any:
    # a Ray call from a thread Ray Data left behind must fail, not start a second Ray runtime
    # here that waits a minute for a head that is gone and then ends the program
    os.environ.setdefault("RAY_ENABLE_AUTO_CONNECT", "0")
    try:
        import ray
        import ray.data  # noqa: F401  (the extra brings both; a bare `ray` lacks Ray Data)
    except ImportError:
        raise RayUnavailableError(
            f"--ray needs Ray, which is not installed; install it with: {INSTALL}") from None
    return ray


def connect(options: RayOptions) -> Any:
    """The `ray` module, connected: to `options.address`, else RAY_ADDRESS, else a runtime started
    here with this machine's cores and GPUs."""
    ray = _import()
    if ray.is_initialized():
        return ray
    address = options.address or os.environ.get("RAY_ADDRESS") or None
    main = threading.current_thread() is threading.main_thread()
    on_term = signal.getsignal(signal.SIGTERM) if main else None
    try:
        ray.init(address=address, include_dashboard=False, log_to_driver=False, logging_level="ERROR",
                 configure_logging=True)
    except (ConnectionError, ValueError, RuntimeError) as exc:
        raise RayUnavailableError(
            f"cannot reach the Ray cluster at {address}: {str(exc).splitlines()[0]}; "
            "check --ray-address (e.g. ray://head:10001) or RAY_ADDRESS") from None
    if main and on_term is not None:
        # Ray's core replaces the process's SIGTERM handler with one that dumps a stack and dies;
        # `kill` must end a run as Ctrl-C does, committing what was embedded
        signal.signal(signal.SIGTERM, on_term)
    return ray


def _layout(ray: Any, options: RayOptions) -> tuple[int, float, float]:
    """(workers, CPUs, GPUs per worker) from the options, filling what they leave out from the
    cluster: one worker per GPU share when the cluster has GPUs, else its CPUs in workers of up
    to 8 (torch's threads scale well to about that; more workers use the rest)."""
    total = ray.cluster_resources()
    cpus, gpus = max(1.0, float(total.get("CPU", 1))), float(total.get("GPU", 0))
    per_gpu = options.gpus_per_worker if options.gpus_per_worker is not None else (1.0 if gpus >= 1 else 0.0)
    if per_gpu > 0:
        if gpus < per_gpu:
            raise RayUnavailableError(
                f"--gpus-per-worker {per_gpu:g}, but the Ray cluster has {gpus:g} GPUs; "
                "use --gpus-per-worker 0 to embed on CPUs")
        workers = options.workers or max(1, int(gpus // per_gpu))
        per_cpu = options.cpus_per_worker or max(1.0, min(8.0, cpus // workers))
    else:
        per_cpu = options.cpus_per_worker or min(8.0, cpus)
        workers = options.workers or max(1, int(cpus // per_cpu))
    return workers, per_cpu, per_gpu


def _quiet(ray: Any) -> None:
    """The progress bar and summary are clipsearch's: Ray Data's own progress and execution
    notes would interleave with them (and with --json on stdout)."""
    import logging

    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = ctx.enable_operator_progress_bars = False
    ctx.print_on_execution_start = ctx.enable_auto_log_stats = False
    # a failed job is told once, as our error (see _plain), not also as Ray Data's stack traces
    logging.getLogger("ray.data").setLevel(logging.CRITICAL)


def embed(paths: Sequence[str], known: Callable[[], np.ndarray], *, options: RayOptions, spec: dict,
          device: str, precision: str, batch_size: int) -> Iterator[Embedded]:
    """Each photo of `paths`, read, hashed, decoded and embedded on the cluster, as results come
    back (in no particular order). Content whose hash begins with one of the 64-bit keys `known()`
    gives (sorted; indexer.Hashes.keys64) is hashed, not embedded: 8 bytes a photo to ship, not the
    hash's 32 characters; a prefix shared by two contents is caught by the driver, which checks
    the whole hash."""
    ray = connect(options)
    workers, cpus, gpus = _layout(ray, options)
    keys = [ray.put(known())]  # in a list: fetched by each worker, not copied into its spec
    _quiet(ray)
    # blocks of a few batches, made here (no shuffle task): every worker gets work and results
    # stream back as they are made
    step = max(batch_size, min(len(paths) // (4 * workers) + 1, 8 * batch_size))
    data = ray.data.from_arrow([pa.table({"path": pa.array(paths[i:i + step], pa.string())})
                                for i in range(0, len(paths), step)])
    embedded = data.map_batches(
        EmbedWorker, batch_format="pyarrow", batch_size=batch_size, num_cpus=cpus, num_gpus=gpus or None,
        # two calls per worker at once: one decodes (threads) while the other is on the model
        compute=ray.data.ActorPoolStrategy(size=workers, max_concurrent_calls_per_actor=2,
                                           enable_true_multi_threading=True),
        fn_constructor_kwargs={"spec": spec, "device": "cuda" if gpus else device,
                               "precision": precision, "keys": keys, "threads": max(1, int(cpus))})
    # closed with this generator: Ray Data stops its executor and threads before Ray is shut down
    batches = iter(embedded.iter_batches(batch_size=None, batch_format="pyarrow", prefetch_batches=2))
    try:
        for table in batches:
            yield from from_table(table)
    except Exception as exc:  # Ray's errors wrap ours in pages of remote tracebacks
        raise _plain(exc) from None
    finally:
        batches.close()


def _plain(exc: BaseException) -> ClipsearchError:
    """What a failed Ray job says, as one of our errors: the last of ours that its remote
    tracebacks name (a worker that could not load the model), else Ray's own first line."""
    chain, e = [], exc
    while e is not None and len(chain) < 20:
        chain.append(str(e))
        e = e.__cause__ or e.__context__
    ours = [m for text in chain for m in _OURS.finditer(text)]
    if ours:
        kind, message = ours[-1].group(1), ours[-1].group(2).strip()
        if kind == ModelLoadError.__name__:
            return RayWorkerError(
                f"a Ray worker could not load the model: {message}; --ray needs the model's weights at "
                "the same path on every worker (a shared filesystem), or a hub model the workers can reach")
        return RayWorkerError(f"a Ray worker failed: {message}")
    first = next((line for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
    return RayWorkerError(f"the Ray job failed: {first[:300]}")
