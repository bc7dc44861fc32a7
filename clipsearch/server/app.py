"""The HTTP API and the gallery, built around one opened index.

Every route calls the engine (clipsearch.search.engine.Index) exactly as the CLI does: the query
language, filters, re-ranking and --min-match behave the same whichever door a query comes in by.
Files are served only by the id of an indexed row, and only while the file still holds the
content that was indexed.
"""

from __future__ import annotations

import logging
import math
import mimetypes
import re
import threading
import time
from collections.abc import Callable
from dataclasses import MISSING, fields, replace
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal, get_type_hints
from urllib.parse import quote

from fastapi import Depends, File, Query, Request, UploadFile
from fastapi import Path as InPath
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi_offline import FastAPIOffline
from pydantic import BaseModel, create_model
from starlette.exceptions import HTTPException as StarletteHTTPException

from clipsearch import __version__
from clipsearch.errors import (
    BadInputError,
    ClipsearchError,
    UnknownImageError,
)
from clipsearch.media.kinds import is_raw_name
from clipsearch.media.thumbnails import MEDIA_TYPE, SIZES, Thumbnails
from clipsearch.results import Hit, ImageRecord
from clipsearch.search import limits
from clipsearch.search.dupes import DEFAULT_THRESHOLD
from clipsearch.search.engine import Index, open_index
from clipsearch.search.limits import MAX_RANK, MAX_RERANKED, MAX_UPLOAD
from clipsearch.search.request import ImageData, SearchRequest

if TYPE_CHECKING:
    from clipsearch.build.watch import Watcher

STATIC = Path(__file__).resolve().parent / "static"
# the gallery's own files only: no inline script, no other origin, no framing
GALLERY_CSP = ("default-src 'self'; img-src 'self' blob: data:; style-src 'self'; script-src 'self'; "
               "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; "
               "form-action 'self'")
# an id always stands for the same content (an edited file gets a new row), so its thumbnail
# and bytes never change while the id exists
IMMUTABLE = "private, max-age=31536000, immutable"
_MEDIA_TYPES = {".heic": "image/heic", ".heif": "image/heif", ".hif": "image/heif", ".avif": "image/avif",
                ".jfif": "image/jpeg", ".jpe": "image/jpeg", ".webp": "image/webp",
                ".mp4": "video/mp4", ".m4v": "video/x-m4v", ".mov": "video/quicktime",
                ".mkv": "video/x-matroska", ".webm": "video/webm", ".avi": "video/x-msvideo",
                ".3gp": "video/3gpp"}
# /api/dupes compares every pair above its threshold: far below the default (0.95) a request
# (even one a web page makes blindly) would hold about n^2/2 pairs in memory
API_MIN_THRESHOLD = 0.8
log = logging.getLogger("clipsearch.server")


# the library names a value by the CLI option that carries it; a request carries it in these
_API_NAMES = {"--after": "after", "--before": "before", "--ext": "ext", "--tag": "tag", "--place": "place",
              "--camera": "camera", "--in": "in", "--min-match": "min_match", "--candidates": "candidates",
              "--limit": "limit", "--top": "top", "--threshold": "threshold", "--labels": "labels",
              "--words": "words", "--k": "k", "-k": "k"}
_OPTION = re.compile(r"(?<![\w-])(--?[a-z][a-z-]*)")


def api_words(message: str) -> str:
    """A library error as an API caller reads it: a CLI option (--after) named as the request's
    parameter (after); one the API has no parameter for stays as written."""
    return _OPTION.sub(lambda m: _API_NAMES.get(m.group(1), m.group(1)), message)


class ServedIndex:
    """The index a server serves: opened on first use (so `serve` can start before the first
    `index` run), and moved to the newest committed version before every request."""

    def __init__(self, db: Path, index: Index | None = None, **options) -> None:
        self.db = db
        self.options = options
        self._index = index
        self._lock = threading.Lock()

    def get(self) -> Index:
        with self._lock:
            if self._index is None:
                self._index = open_index(self.db, **self.options)
        self._index.refresh()
        return self._index

    @property
    def opened(self) -> Index | None:
        return self._index


RowId = Annotated[int, InPath(description="An indexed row's id, as hits and /api/images give it.")]


# -- response shapes (for /docs; routes build the JSON themselves) -------------------------------
def _shape(name: str, *parts: tuple[type, str], **more: tuple) -> type[BaseModel]:
    """A response model made of the named fields of the library's dataclasses (their types and
    defaults, not restated here) and `more` (name: (type, default)) where the JSON differs."""
    shape: dict = {}
    for cls, names in parts:
        hints, declared = get_type_hints(cls), {f.name: f for f in fields(cls)}
        for field in names.split():
            default = declared[field].default
            if default is MISSING:
                factory = declared[field].default_factory
                default = ... if factory is MISSING else factory()
            shape[field] = (hints[field], default)
    return create_model(name, **(shape | more))


# what a hit shows of its row (hit_dict), beside the CLI's JSON (Hit.to_dict) and its row id
_SHOWN = "width height taken tags place camera lens keywords people caption duration"
HitOut = _shape("HitOut", (Hit, "id path score rank itm clip words t original motion"),
                (ImageRecord, _SHOWN), id=(int, ...), tags=(list[str], ...),
                kind=(Literal["photo", "video"], "photo"),
                moments=(list[dict] | None, None))  # a video's best moments: {"t", "score"}, best first
ImageOut = _shape("ImageOut", (ImageRecord, " ".join(
    f.name for f in fields(ImageRecord) if f.name != "near")), tags=(list[str], ...))
PageOut = _shape("PageOut", query=(str | None, None), similar_to=(dict | None, None), offset=(int, ...),
                 total_considered=(int, ...), hits=(list[HitOut], ...),  # type: ignore[valid-type]
                 timing_ms=(dict[str, float], ...))


# the page and the filters, as every search route takes them: a SearchRequest with these set,
# and `details` (the API's hits show their tags and Live Photo motion), waiting for what to find
Asked = Callable[..., SearchRequest]


def asked(
    k: Annotated[int, Query(ge=1, le=MAX_RANK, description="How many hits.")] = 24,
    offset: Annotated[int, Query(ge=0, lt=MAX_RANK, description="How many best hits to skip.")] = 0,
    within: Annotated[str | None, Query(alias="in", max_length=4096,
                                        description="Only images under this folder.")] = None,
    after: Annotated[str | None, Query(max_length=32, description="Taken on or after: "
                                       "YYYY[-MM[-DD[THH:MM]]].")] = None,
    before: Annotated[str | None, Query(max_length=32, description="Taken before (same forms).")] = None,
    ext: Annotated[str | None, Query(max_length=200, description="File types, e.g. jpg,png.")] = None,
    tag: Annotated[list[str] | None, Query(description="A tag every hit has (repeatable).")] = None,
    place: Annotated[str | None, Query(max_length=200, description="Taken in a place of this name "
                                       "(case-insensitive, by prefix: Lisb, Portugal).")] = None,
    camera: Annotated[str | None, Query(max_length=200, description="Taken with a camera or lens of "
                                        "this name (case-insensitive, by prefix).")] = None,
    kind: Annotated[Literal["photo", "video"] | None, Query(
        description="One kind only: photo or video.")] = None,
) -> Asked:
    return partial(SearchRequest, k=k, offset=offset, within=within, after=after, before=before, ext=ext,
                   tags=tag, place=place, camera=camera, kind=kind, details=True)


def create_app(served: ServedIndex, *, tokens: tuple[str, ...] = (), token_required: bool = False,
               loopback_only: bool = True, thumbnails: Thumbnails | None = None,
               settings: dict | None = None, watcher: Watcher | None = None,
               stopping: threading.Event | None = None, writer_tokens: tuple[str, ...] = (),
               ) -> FastAPIOffline:
    """The API and gallery of `served`; with `watcher` (serve --watch), its status and jobs."""
    from clipsearch.server import live
    from clipsearch.server.security import Guard

    app = FastAPIOffline(
        title="clipsearch", version=__version__, redoc_url=None, static_url="/docs-static",
        description="Search a photo library by what is in the pictures. Every search takes the "
                    "query language and filters of `clipsearch search`.")
    app.add_middleware(Guard, tokens=tokens, token_required=token_required, loopback_only=loopback_only,
                       max_body=MAX_UPLOAD, writer_tokens=writer_tokens)
    thumbs = thumbnails or Thumbnails()
    _add_error_handlers(app)

    @app.get("/", include_in_schema=False)
    def gallery() -> FileResponse:
        return FileResponse(STATIC / "index.html", headers={
            "Content-Security-Policy": GALLERY_CSP, "Cache-Control": "no-cache"})

    @app.get("/sw.js", include_in_schema=False)
    def service_worker() -> FileResponse:
        """The gallery's service worker: it carries the token of a server started with one
        (clipsearch.server.security), so it lives at the root, whose pages it serves."""
        return FileResponse(STATIC / "sw.js", media_type="text/javascript",
                            headers={"Cache-Control": "no-cache"})

    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/api/health", tags=["service"])
    def health() -> dict:
        """Whether the server is up, which process it is and which index it serves."""
        import os

        index = served.opened
        return {"status": "ok", "pid": os.getpid(), "index": str(served.db), "version": __version__,
                "images": index.store.count() if index is not None else None}

    @app.get("/api/info", tags=["service"])
    def info() -> dict:
        """The index (images, folders, model, tags) and the server's own settings."""
        index = served.get()
        return {**index.info().to_dict(), "models_loaded": index.models_loaded,
                "settings": settings or {}, "limits": {
                    "max_query": limits.MAX_QUERY, "max_rank": MAX_RANK, "max_reranked": MAX_RERANKED,
                    "max_upload_bytes": MAX_UPLOAD, "max_tags": limits.MAX_TAGS, "thumbnail_sizes": SIZES}}

    @app.get("/api/search", response_model=PageOut, tags=["search"])
    def search(
        q: Annotated[str, Query(description="What to look for; the query language of `clipsearch "
                                "search` (\"beach\" + 2:\"sunset\" - \"people\").")],
        ask: Annotated[Asked, Depends(asked)],
        rerank: Annotated[bool, Query(description="BLIP re-ranks the top candidates: hits gain "
                                      "itm (match probability) and clip, and score is itm + clip.")] = False,
        candidates: Annotated[int | None, Query(ge=1, description="How many CLIP hits BLIP reads "
                                                "[default: 24].")] = None,
        min_match: Annotated[float | None, Query(description="Drop hits whose BLIP match probability "
                                                 "is below this (0-1); implies rerank.")] = None,
        collapse: Annotated[bool, Query(description="One hit per group of duplicate photos: "
                                        "its suggested keeper (see /api/dupes).")] = False,
        words: Annotated[bool, Query(description="Also match the query's words with the photos' own "
                                     "(names, folders, place, camera, keywords); 0: pixels only.")] = True,
    ) -> JSONResponse:
        """Images matching a description, best first, a page at a time."""
        started = time.perf_counter()
        request = ask(query=q, rerank=rerank, candidates=candidates, min_match=min_match,
                              image_terms=False, collapse=collapse, words=words)
        return _page(served, request, started, query=q)

    @app.get("/api/similar/{id}", response_model=PageOut, tags=["search"])
    def similar(id: RowId, ask: Annotated[Asked, Depends(asked)]) -> JSONResponse:
        """Images that look like the indexed image `id` (which comes first)."""
        started = time.perf_counter()
        return _page(served, ask(like=id), started, similar_to={"id": id})

    @app.post("/api/similar", response_model=PageOut, tags=["search"])
    def similar_upload(
        image: Annotated[UploadFile, File(description=f"An image file, at most {MAX_UPLOAD >> 20} MB.")],
        ask: Annotated[Asked, Depends(asked)],
    ) -> JSONResponse:
        """Images that look like an uploaded image (multipart form field `image`)."""
        started = time.perf_counter()
        name = image.filename or "the uploaded image"
        request = ask(like=ImageData(image.file.read(), name))
        return _page(served, request, started, similar_to={"upload": name})

    @app.get("/api/dupes", tags=["images"])
    def dupes(
        threshold: Annotated[float | None, Query(
            gt=0, le=1, description=f"How alike (CLIP cosine) near-duplicates are at least, from "
                                    f"{API_MIN_THRESHOLD} [default {DEFAULT_THRESHOLD}].")] = None,
        exact: Annotated[bool, Query(description="Identical content only.")] = False,
        within: Annotated[str | None, Query(alias="in", max_length=4096,
                                            description="Only images under this folder.")] = None,
    ) -> dict:
        """Groups of duplicate photos (the fields of `clipsearch dupes --json`), identical
        copies first, then near-duplicates, largest first; each names its keeper and why."""
        if threshold is not None and threshold < API_MIN_THRESHOLD:
            raise BadInputError(f"threshold={threshold}: below {API_MIN_THRESHOLD} nearly every pair of "
                                "photos matches, which is no duplicate; the CLI's clipsearch dupes takes any")
        groups = served.get().dupes(threshold, exact=exact, within=within)
        return {"threshold": DEFAULT_THRESHOLD if threshold is None else threshold, "exact": exact,
                "groups": [g.to_dict() for g in groups]}

    @app.get("/api/images/{id}", response_model=ImageOut, tags=["images"])
    def image(id: RowId) -> dict:
        """What the index knows about one image."""
        return served.get().record(id).to_dict()

    @app.get("/api/images/{id}/thumbnail", tags=["images"],
             responses={200: {"content": {MEDIA_TYPE: {}}, "description": "The thumbnail."}})
    def thumbnail(id: RowId, request: Request,
                  size: Annotated[int, Query(description=f"One of {', '.join(map(str, SIZES))}.")] = 256,
                  t: Annotated[float | None, Query(
                      ge=0, description="A video's frame at this second (default: the row's own "
                                        "moment, the one a search found).")] = None,
                  ) -> Response:
        """The image scaled to fit a size x size box, upright (EXIF orientation applied); for a
        video, its frame at `t` (display rotation applied)."""
        if size not in SIZES:
            raise BadInputError(f"size={size} is not a thumbnail size; choose one of: "
                                f"{', '.join(map(str, SIZES))}")
        index = served.get()
        record = index.record(id, tags=False)
        read = partial(index.indexed_bytes, record)
        if t is not None and not math.isfinite(t):
            raise BadInputError(f"t={t}: give a second of the video, a finite number")
        if record.t is not None:
            at = record.t if t is None else round(t, 1)
            read = partial(index.frame_bytes, record, at, size)
            record = replace(record, hash=f"{record.hash}-t{at:.2f}")  # each moment its own thumbnail
        elif t is not None:
            raise BadInputError(f"t={t}: image {id} is a photo, not a video; leave t out")
        etag = f'"{record.hash}-{size}"'
        headers = {"ETag": etag, "Cache-Control": IMMUTABLE}
        if request.headers.get("if-none-match") == etag:
            return Response(status_code=304, headers=headers)
        data = thumbs.get(record, size, read)
        return Response(data, media_type=MEDIA_TYPE, headers=headers)

    @app.get("/api/images/{id}/file", tags=["images"],
             responses={200: {"content": {"image/*": {}}, "description": "The original file."}})
    def file(id: RowId, request: Request) -> Response:
        """The file as indexed (checked by its size and modification time), straight from disk,
        for a browser to show: HTTP Range requests are answered, so a browser seeks in a video by
        fetching only what it plays. A RAW photo comes as a JPEG (its camera's embedded preview,
        or its sensor data developed, made once); /original has the RAW itself."""
        index = served.get()
        record = index.record(id, tags=False)
        etag = f'"{record.hash}"'
        name = Path(record.path).name
        headers = {"ETag": etag, "Cache-Control": IMMUTABLE,
                   "Content-Disposition": f"inline; filename*=UTF-8''{quote(name)}"}
        if request.headers.get("if-none-match") == etag:
            return Response(status_code=304, headers=headers)
        if is_raw_name(record.path):
            data = thumbs.rendition(record, partial(index.indexed_bytes, record))
            headers["Content-Disposition"] = f"inline; filename*=UTF-8''{quote(Path(name).stem)}.jpg"
            return Response(data, media_type="image/jpeg", headers=headers)
        return FileResponse(index.indexed_file(record), media_type=media_type(record.path), headers=headers)

    @app.get("/api/images/{id}/original", tags=["images"],
             responses={200: {"content": {"application/octet-stream": {}},
                              "description": "The original file, to download."}})
    def original(id: RowId) -> Response:
        """The original file, to download: the RAW of a RAW + JPEG pair (the JPEG is what is
        indexed and shown), else the indexed file itself, RAWs included."""
        index = served.get()
        record = index.record(id, tags=False)
        path = index.partner_file(record, "original") or index.indexed_file(record)
        return FileResponse(path, media_type=media_type(path), filename=Path(path).name)

    @app.get("/api/images/{id}/motion", tags=["images"],
             responses={200: {"content": {"video/*": {}}, "description": "The Live Photo's video."}})
    def motion(id: RowId) -> Response:
        """The video of a Live Photo (the still `id` and a video beside it with its name), which
        is not indexed itself; Range requests are answered. Served while it is the file that was
        beside the still when the still was indexed."""
        index = served.get()
        record = index.record(id, tags=False)
        path = index.partner_file(record, "motion")
        if path is None:
            raise UnknownImageError(f"image {id} has no Live Photo video beside it")
        return FileResponse(path, media_type=media_type(path))

    @app.get("/api/tags", tags=["images"])
    def tags() -> dict:
        """The labels of the last `clipsearch tag` run, each with its image count, most first."""
        return {"tags": [t.to_dict() for t in served.get().tags()]}

    @app.get("/api/facets", tags=["images"])
    def facets() -> dict:
        """The places and cameras of the library, each with its image count, most first."""
        return served.get().facets()

    @app.get("/api/folders", tags=["images"])
    def folders() -> dict:
        """Every folder that directly holds indexed images, with how many."""
        return {"folders": [{"path": p, "images": n} for p, n in served.get().folders()]}

    live.add_routes(app, served, watcher, stopping or threading.Event())
    return app


def media_type(path: str) -> str:
    suffix = Path(path).suffix.lower()
    return _MEDIA_TYPES.get(suffix) or mimetypes.guess_type(path)[0] or "application/octet-stream"


def hit_dict(hit: Hit) -> dict:
    """A hit as the API shows it: the CLI's JSON fields, the row id and what the gallery shows
    (`motion`: /motion plays its Live Photo video), from the hit the engine enriched."""
    extra = {"width": None, "height": None, "taken": None, "tags": []}
    if hit.image is not None:
        extra = {name: getattr(hit.image, name) for name in _SHOWN.split()} | {"motion": hit.motion}
    return {"id": hit.id, **hit.to_dict(), **extra}


def _page(served: ServedIndex, request: SearchRequest, started: float, **source) -> JSONResponse:
    """A search route's answer: `request` checked against the server's limits, then answered."""
    if (why := request.breach()) is not None:
        raise BadInputError(why)
    page = served.get().page(request)
    timing = {**page.timing_ms, "total": round((time.perf_counter() - started) * 1000, 2)}
    return JSONResponse({**source, "offset": request.offset, "total_considered": page.considered,
                         "hits": [hit_dict(h) for h in page.hits], "timing_ms": timing})


def _add_error_handlers(app) -> None:
    """Every error is JSON {"error": one line that says what to do}; never a stack trace."""

    @app.exception_handler(ClipsearchError)
    def typed(request: Request, exc: ClipsearchError) -> JSONResponse:
        from clipsearch.server.security import WRITER

        status = exc.http_status
        # the CLI (it sends the discovery secret) prints the error as its own: in its options' words
        said = str(exc) if request.scope.get(WRITER) else api_words(str(exc))
        return JSONResponse({"error": said}, status_code=status)

    @app.exception_handler(RequestValidationError)
    def invalid(_request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first.get("loc", ())[1:]) or "request"
        got = f" (got {first['input']!r})" if "input" in first and first["input"] is not None else ""
        return JSONResponse({"error": f"{where}: {first.get('msg', 'invalid')}{got}"[:500]}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        message = {404: f"no such address: {request.url.path}; the API is listed at /docs",
                   405: f"{request.method} is not allowed on {request.url.path}; see /docs"}.get(
            exc.status_code, str(exc.detail))
        return JSONResponse({"error": message}, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(Exception)
    def unexpected(_request: Request, exc: Exception) -> JSONResponse:
        log.error("unexpected error", exc_info=exc)
        return JSONResponse({"error": f"internal error ({type(exc).__name__}); the server's log has "
                                      "the details"}, status_code=500)

