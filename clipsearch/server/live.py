"""A server that watches its folders (`serve --watch`): what the watcher is doing
(`/api/status`), and the writing commands of other processes run as its jobs (`/api/jobs`),
since the watcher holds the index's one writer's lock. Jobs run in the watcher's thread
(clipsearch.build.watch), between its batches."""

from __future__ import annotations

import dataclasses
import threading
from typing import Annotated

from fastapi import Body, Request
from pydantic import Field

from clipsearch.build.jobs import (
    CaptionJob,
    ForgetJob,
    IncludeJob,
    IndexJob,
    Job,
    MoveJob,
    RemoveRootJob,
    TagJob,
)
from clipsearch.build.watch import Watcher
from clipsearch.errors import BadInputError, NotAllowedError, UnknownJobError
from clipsearch.server.security import WRITER

# the body of POST /api/jobs: one of the job classes, told apart by its `kind`
JobIn = Annotated[Job, Field(discriminator="kind")]


class Searching:
    """Counts the searches in flight (ASGI middleware), which a watcher's build waits for between
    images: searches come first."""

    PATHS = ("/api/search", "/api/similar")

    def __init__(self, app) -> None:
        self.app = app
        self.count = 0

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith(self.PATHS):
            await self.app(scope, receive, send)
            return
        self.count += 1  # one event loop: no lock needed
        try:
            await self.app(scope, receive, send)
        finally:
            self.count -= 1


def add_routes(app, served, watcher: Watcher | None, stop: threading.Event) -> None:
    @app.get("/api/status", tags=["service"])
    def status() -> dict:
        """What the watcher is doing: watching, N queued, indexing n of m, the last commit,
        offline roots, the files skipped and why; `images` and `version` change with each commit
        (the gallery offers the new photos when they do)."""
        index, base = served.opened, {"images": 0, "version": None}
        if index is not None:
            index.refresh()
            base = {"images": index.store.count(), "version": index.store.version}
        if watcher is None:
            return {"state": "not watching", **base}
        return {**watcher.status(), **base}

    @app.post("/api/jobs", status_code=202, tags=["service"])
    def submit(job: Annotated[JobIn, Body()], request: Request) -> dict:
        """Run a writing command here (the watcher holds the index's lock), chosen by `kind`:
        `index` folders (they are watched from then on), `tag`, `caption`, `optimize`, `forget`
        paths, `move` a root (`old`, `new`), `remove-root` (`root`), or `include` again what an
        --exclude pattern left out (`pattern`). Poll GET /api/jobs/{id}. Needs the local secret
        (what the CLI sends): the gallery's token reads, it starts no job."""
        _writer(request)
        if watcher is None or stop.is_set():
            raise BadInputError("this server does not watch its folders (start it with serve --watch); "
                                "run the command without it")
        job_run = _work(job, served, watcher)
        return watcher.submit(job.kind, job_run).to_dict()

    @app.get("/api/jobs/{id}", tags=["service"])
    def job_state(id: str) -> dict:
        """A job's state (queued, running, done, failed, cancelled), progress and result."""
        return _job(watcher, id).to_dict()

    @app.delete("/api/jobs/{id}", tags=["service"])
    def cancel(id: str, request: Request) -> dict:
        """Stop a job at its next safe point; what it committed stays. Needs the local secret."""
        _writer(request)
        job = _job(watcher, id)
        job.cancel.set()
        return job.to_dict()


def _writer(request: Request) -> None:
    if not request.scope.get(WRITER):
        raise NotAllowedError(
            "a job changes the index, which needs the local secret the clipsearch CLI sends (it reads "
            "it from the index folder); run the command with the CLI on the machine that serves it")


def _job(watcher: Watcher | None, id: str):
    job = watcher.job(id) if watcher is not None else None
    if job is None:
        raise UnknownJobError(f"no job {id} on this server")
    return job


def _work(job: Job, served, watcher: Watcher):
    """The job's work, checked now so that a bad request fails at once, not in the queue."""
    match job:
        case IndexJob():
            from clipsearch.media.scan import normalize_root

            folders = [normalize_root(f) for f in job.folders]
            return lambda progress: watcher.add_roots(folders, progress, job.exclude, job.compact,
                                                      job.prune_offline, job.keep_empty).to_dict()
        case TagJob():
            from clipsearch.enrich.tagging import label_set

            chosen = label_set(job.labels, None, job.threshold, job.top, labels_text=job.labels_text)
            return lambda _progress: watcher.builder.tag(
                chosen, write_xmp=job.write_xmp, per_image=job.per_image,
                embed_texts=served.get().embed_texts).to_dict()
        case CaptionJob():
            return _caption_work(job, served, watcher.builder)
        case MoveJob():
            return lambda progress: watcher.move_root(job.old, job.new, progress).to_dict()
        case IncludeJob():
            return lambda _progress: {"exclude": watcher.builder.include(job.pattern)}
        case RemoveRootJob():
            return lambda progress: watcher.remove_root(job.root, progress).to_dict()
        case ForgetJob():
            return lambda _progress: watcher.builder.forget(job.paths).to_dict()
    return lambda _progress: dataclasses.asdict(watcher.builder.compact())


def _caption_work(job: CaptionJob, served, builder):
    """`caption` in the watcher's thread, written by its builder, with the captioner the server
    has unless the job asks for another."""
    index = served.get()
    index.use_captioner(job.caption_model, job.caption_precision)
    if job.show is not None:
        return lambda _progress: {"images": [r.to_dict() for r in builder.caption_records(
            index.about(job.show), index.captioner, index.caption_call)]}
    return lambda progress: builder.caption(job.folders, captioner=index.captioner, limit=job.limit,
                                            progress=progress, write_xmp=job.write_xmp,
                                            call=index.caption_call).to_dict()
