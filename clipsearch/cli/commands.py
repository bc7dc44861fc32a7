"""The clipsearch command line: parse, call the library, print through present.py.

This is the only module that exits or turns errors into messages. It imports nothing heavy at
module level, so `clipsearch --help` is instant.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import typing
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from clipsearch import config
from clipsearch.errors import BadInputError, ClipsearchError, IndexInterrupted

if TYPE_CHECKING:
    from clipsearch.build.jobs import Job
    from clipsearch.results import Hit
    from clipsearch.search.engine import Index
    from clipsearch.search.request import SearchRequest


class _Group(typer.core.TyperGroup):
    """The `clipsearch` command, with help that names values as click and most CLIs do
    (QUERY..., INTEGER, DIRECTORY) where typer would print Python types (<list[str]>)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        pending: list = [self]
        while pending:
            cmd = pending.pop()
            pending.extend(getattr(cmd, "commands", {}).values())
            for param in cmd.params:
                if param.param_type_name == "argument" or (
                        param.metavar is None and not getattr(param, "is_flag", False)):
                    param.metavar = _metavar(param)


_TYPE_NAMES = {int: "INTEGER", float: "FLOAT", str: "TEXT", bool: "BOOLEAN"}
_PATH_NAMES = {"dir": "DIRECTORY", "file": "FILE"}


def _metavar(param) -> str:
    described = getattr(param, "type_descriptor", None)
    if param.param_type_name == "argument":
        name = param.metavar or param.name.upper()
        if described is not None:  # typer's own click: QUERY... alone, as click itself prints it
            shown = name + ("..." if param.nargs != 1 else "")
            param.display_type_rich = lambda ctx=None: None
            param.get_usage_pieces = lambda ctx=None: [shown if param.required else f"[{shown}]"]
        return name
    if described is None:  # typer before 0.20: click's own types, named as click names them
        return param.type.name.upper().removesuffix(" RANGE")
    if described.is_path:
        return _PATH_NAMES.get(described.path_type, "PATH")
    kind = described.annotation
    if typing.get_origin(kind) is list:
        kind = typing.get_args(kind)[0]
    return _TYPE_NAMES.get(kind, "VALUE")


app = typer.Typer(
    cls=_Group,
    help="Search your photos by what is in them. Index a folder once, then search by text or by "
    "example image.",
    no_args_is_help=True,
    add_completion=True,  # --install-completion / --show-completion for bash, zsh, fish, PowerShell
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)

Db = Annotated[
    Path | None,
    typer.Option("--db", envvar="CLIPSEARCH_DB", show_envvar=True, file_okay=False,
                 help="Index directory [default: the user data dir; CLIPSEARCH_HOME moves it]."),
]
Device = Annotated[
    str, typer.Option("--device", envvar="CLIPSEARCH_DEVICE", help="auto, cpu, cuda, cuda:N or mps.")
]
Precision = Annotated[str, typer.Option(
    "--precision", help="CLIP weights for the query: fp32 (exact, and what the fast search path "
                        "runs), bf16, fp16 (GPU), int8 (CPU) or auto (as index).")]
IndexPrecision = Annotated[str, typer.Option(
    "--precision", envvar="CLIPSEARCH_PRECISION",
    help="CLIP weights: auto (bf16 on CPUs with native bf16, about 2x faster; fp16 on GPUs; else "
         "fp32), fp32 (open_clip's vectors exactly), bf16, fp16 (GPU) or int8 (CPU).")]
K = Annotated[int, typer.Option("-k", "--top", min=1, help="How many results.")]
Within = Annotated[
    Path | None, typer.Option("--in", help="Only images under this folder.", file_okay=False)
]
After = Annotated[str | None, typer.Option(
    "--after", metavar="DATE",
    help="Only photos taken on or after DATE (YYYY, YYYY-MM, YYYY-MM-DD or YYYY-MM-DDTHH:MM); "
         "the EXIF capture time, else the file's modification time.")]
Before = Annotated[str | None, typer.Option(
    "--before", metavar="DATE", help="Only photos taken before DATE (same forms as --after).")]
Ext = Annotated[str | None, typer.Option(
    "--ext", metavar="EXT,...", help="Only these file types, e.g. jpg,png (jpg includes .jpeg).")]
Tag = Annotated[list[str] | None, typer.Option(
    "--tag", metavar="LABEL", help="Only images tagged LABEL by `clipsearch tag` (repeatable: all of them).")]
Place = Annotated[str | None, typer.Option(
    "--place", metavar="NAME", help="Only photos taken in a place of this name: a city, region or "
                                    "country, case-insensitive, by prefix (Lisbon, Portugal, lisb).")]
Camera = Annotated[str | None, typer.Option(
    "--camera", metavar="NAME", help="Only photos taken with this camera or lens, case-insensitive, "
                                     "by prefix (\"Pixel 7\", x100v, canon).")]
PhotosOnly = Annotated[bool, typer.Option("--photos", help="Only photos, no videos.")]
VideosOnly = Annotated[bool, typer.Option(
    "--videos", help="Only videos: each hit is a video at its best moment (@ m:ss), --json lists "
                     "its next best moments.")]
Json = Annotated[bool, typer.Option("--json", help="Print JSON.")]
Paths = Annotated[bool, typer.Option(
    "--paths", help="Print one absolute path per line (for names without newlines; see --null).")]
Preview = Annotated[str | None, typer.Option(
    "--preview", metavar="[auto|kitty|iterm|off]",
    help="Show thumbnails beside the hits, in a terminal that displays images (kitty, Ghostty, "
         "Konsole, iTerm2, WezTerm: detected, or forced with --preview kitty or --preview iterm; "
         "off shows none).")]
Null = Annotated[bool, typer.Option(
    "--null", "-0", help="Print absolute paths each ended by a NUL, for xargs -0 (implies --paths).")]
NoServer = Annotated[bool, typer.Option(
    "--no-server", help="Search in this process even when `clipsearch serve` runs for this index.")]
RerankModel = Annotated[str | None, typer.Option(
    "--rerank-model", envvar="CLIPSEARCH_RERANK_MODEL", metavar="NAME_OR_DIR",
    help="BLIP ITM weights: a hub name, or a folder saved with save_pretrained "
         "[default: Salesforce/blip-itm-base-coco].")]
_BLIP_PRECISION = "auto (bf16 on CPUs with native bf16, else fp32), fp32, bf16, or int8 (CPU)."
RerankPrecision = Annotated[str, typer.Option(
    "--rerank-precision", envvar="CLIPSEARCH_RERANK_PRECISION", help=_BLIP_PRECISION)]

CaptionModel = Annotated[str | None, typer.Option(
    "--caption-model", envvar="CLIPSEARCH_CAPTION_MODEL", metavar="NAME_OR_DIR",
    help="BLIP captioning weights: a hub name, or a folder saved with save_pretrained "
         "[default: Salesforce/blip-image-captioning-base].")]
CaptionPrecision = Annotated[str, typer.Option(
    "--caption-precision", envvar="CLIPSEARCH_CAPTION_PRECISION", help=_BLIP_PRECISION)]


@contextlib.contextmanager
def _errors(interrupted: str = "interrupted") -> Iterator[None]:
    """Typed errors become one line on stderr and their exit code; Ctrl-C prints `interrupted`."""
    from clipsearch.cli import present

    try:
        yield
    except IndexInterrupted as exc:  # the user asked for it: not an error
        present.message(str(exc))
        raise typer.Exit(exc.exit_code) from None
    except ClipsearchError as exc:
        present.message(f"error: {exc}")
        raise typer.Exit(exc.exit_code) from None
    except KeyboardInterrupt:
        present.message(interrupted)
        raise typer.Exit(130) from None


@contextlib.contextmanager
def _terminate_as_interrupt(stop: threading.Event | None = None) -> Iterator[None]:
    """`kill` (SIGTERM), a logout or a service stop ends an index run like Ctrl-C: the batch in
    hand is committed and the message says the run can be resumed.

    With `stop`, the first SIGTERM or Ctrl-C only sets it, and the run stops at its next safe
    point (`_stopping`, between two images); a second one interrupts at once. An interrupt raised
    wherever the main thread happens to be can land inside native code (LanceDB's writer, torch)
    and abort the process instead of committing."""
    import signal

    def interrupt(_signum, _frame):
        if stop is not None and not stop.is_set():
            stop.set()
            return
        raise KeyboardInterrupt

    previous = {sig: signal.signal(sig, interrupt)
                for sig in ((signal.SIGTERM, signal.SIGINT) if stop is not None else (signal.SIGTERM,))}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _stopping(stop: threading.Event, report: Callable) -> Callable:
    """The indexer's progress callback, which is also where a requested stop takes effect: the
    indexer calls it between images, in the main thread, where an interrupt is safe."""

    def progress(p) -> None:
        if stop.is_set():
            raise KeyboardInterrupt
        report(p)

    return progress


def _format(as_json: bool, paths: bool, null: bool = False) -> str:
    if as_json and (paths or null):
        raise BadInputError(f"--json and {'--null' if null else '--paths'} cannot be combined; pick one")
    return "json" if as_json else "paths0" if null else "paths" if paths else "table"


def _folder(path: Path | None) -> str | None:
    return str(path) if path else None


def _print_hits(db: Path | None, device: str, fmt: tuple[bool, bool, bool], request: SearchRequest,
                remote: bool, wanted: dict, none_found: str = "no matching images",
                preview: str | None = None, **options) -> None:
    """Answer `request` through a running server for this index when there is one (and `remote`),
    else in this process: on the fast path (no torch, no LanceDB) when the index has what it
    needs, else the full one. Every way gives the same hits; they are printed the same way."""
    from clipsearch.cli import present

    with _errors():
        fmt = _format(*fmt)
        protocol = _preview(preview) if fmt == "table" and preview else None
        found = None
        text = request.query is not None
        if remote and not (text and _needs_files(request.query)):
            from clipsearch.server import client

            server = client.find(config.db_path(db), {"device": device, "fast_query": config.fast_query(),
                                                      **wanted})
            found = server.search(request) if server is not None else None
        if found is None:
            found = _fast(db, device, request, options)
        if found is None:
            from clipsearch.build.fastprep import prepare_searches
            from clipsearch.search.engine import open_index

            index = open_index(db, device=device, **options)
            # so that the next search takes the fast path; this one loads the CLIP model
            encoder, pending = prepare_searches(index.store, lambda: index.embedder, present.message,
                                                background=config.background_export())
            index.adopt_export(encoder)
            if pending and text:
                from clipsearch.search.fastpath import PENDING

                present.message(PENDING)
            found = index.page(request).hits
    present.hits(found, fmt, none_found, protocol)
    present.untold(config.db_path(db))


def _preview(asked: str) -> str | None:
    """The image protocol for --preview, or None, with a note saying where previews work."""
    import sys

    from clipsearch.cli import present, preview

    if asked.lower() == "off":
        return None
    protocol = preview.choose(asked, sys.stdout.isatty())
    if protocol is None:
        present.message(f"note: --preview shows thumbnails only in terminals that display images "
                        f"({preview.SUPPORTED}); this one was not recognised: force one with "
                        "--preview=kitty or --preview=iterm")
    return protocol


def _fast(db: Path | None, device: str, request: SearchRequest, options: dict) -> list[Hit] | None:
    """The hits on the fast path, or None when the index lacks what it needs. Damaged fast-path
    files are only a detour: the full path answers, and rewrites them."""
    from clipsearch.cli import present
    from clipsearch.search.fastpath import keep_pandas_out, open_fast

    try:
        keep_pandas_out()
        # a text query is what waits on the export; `similar` needs no text encoder
        told = present.message if request.query is not None else lambda _m: None
        index = open_fast(config.db_path(db), device=device, note=told, **options)
        return index.page(request).hits if index is not None else None
    except ClipsearchError:
        raise
    except Exception as exc:  # anything else is a damaged file: not the user's problem
        present.message(f"note: the fast search path failed ({type(exc).__name__}: {str(exc)[:200]}); "
                        "searching the full way")
        return None


def _report(db: Path | None, as_json: bool, ask: Callable[[Index], object], printer: str) -> None:
    """Open the index, ask it one question, print the answer with present.<printer>."""
    from clipsearch.cli import present
    from clipsearch.search.engine import open_index

    with _errors():
        answer = ask(open_index(db))
    getattr(present, printer)(answer, as_json)
    present.untold(config.db_path(db))


Model = Annotated[str | None, typer.Option(
    "--model", envvar="CLIPSEARCH_MODEL",
    help="open_clip model name, hf-hub:org/repo or local-dir:/folder "
         "[default: the index's model, else ViT-B-32].")]
Pretrained = Annotated[str | None, typer.Option(
    "--pretrained", envvar="CLIPSEARCH_PRETRAINED",
    help="Pretrained tag or local checkpoint file [default: laion2b_s34b_b79k].")]
BatchSize = Annotated[int, typer.Option("--batch-size", min=1, help="Images per model batch.")]
Workers = Annotated[int | None, typer.Option(
    "--workers", min=0, help="Decode threads; with --ray, Ray workers, each a copy of the model "
                             "[default: CPU count, at most 8; with --ray, one per GPU, or per 8 CPUs].")]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")]
Settle = Annotated[float, typer.Option(
    "--settle", min=0, metavar="SECONDS", rich_help_panel="Watching",
    help="With --watch: how long a file's size and time must stay still before it is read (a copy "
         "in progress is never read half-way).")]
Poll = Annotated[float | None, typer.Option(
    "--poll", min=0.1, metavar="SECONDS", rich_help_panel="Watching",
    help="With --watch: look for changes by scanning every SECONDS instead of waiting for the "
         "system's events; for network shares (NFS, SMB, sshfs and other FUSE mounts), which send "
         "none.")]


@app.command()
def index(
    folders: Annotated[list[Path] | None, typer.Argument(
        help="Folders to index (recursively) [default: the index's roots, all rescanned].")] = None,
    db: Db = None,
    model: Model = None,
    pretrained: Pretrained = None,
    device: Device = "auto",
    precision: IndexPrecision = "auto",
    batch_size: BatchSize = config.DEFAULT_BATCH_SIZE,
    workers: Workers = None,
    exclude: Annotated[list[str] | None, typer.Option(
        "--exclude", help="Glob of paths to leave out (repeatable), e.g. '*/thumbs/*'.")] = None,
    as_json: Json = False,
    quiet: Quiet = False,
    compact: Annotated[bool, typer.Option(
        "--compact", help="Also merge the table's files and the search structures' recent changes "
                          "(as `clipsearch optimize`); a run does it by itself when enough small "
                          "commits piled up.")] = False,
    prune_offline: Annotated[bool, typer.Option(
        "--prune-offline", help="Remove the photos of a folder that looks offline (missing, empty, "
                                "or none of its indexed photos there: an unplugged drive), which "
                                "are otherwise kept.")] = False,
    watch: Annotated[bool, typer.Option(
        "--watch", help="Then keep watching the folders and index what changes, until Ctrl-C.")] = False,
    keep_empty: Annotated[bool, typer.Option(
        "--keep-empty", help="Keep a folder that holds no photos or videos yet as a root (to watch it; "
                             "--watch does too); otherwise it is named and left out.")] = False,
    settle: Settle = 2.0,
    poll: Poll = None,
    ray: Annotated[bool, typer.Option(
        "--ray", help='Read, decode and embed on a Ray cluster (pip install "clipsearch[ray]"): '
                      "RAY_ADDRESS or --ray-address if given, else a local runtime. The photos must "
                      "be at the same path on every worker.", rich_help_panel="Ray")] = False,
    ray_address: Annotated[str | None, typer.Option(
        "--ray-address", help="The Ray cluster, e.g. ray://head:10001 or auto (implies --ray).",
        rich_help_panel="Ray")] = None,
    gpus_per_worker: Annotated[float | None, typer.Option(
        "--gpus-per-worker", min=0, help="GPUs each Ray worker holds [default: 1 if the cluster has "
                                         "GPUs, else 0].", rich_help_panel="Ray")] = None,
    cpus_per_worker: Annotated[float | None, typer.Option(
        "--cpus-per-worker", min=0.1, help="CPUs each Ray worker holds, for decoding [default: the "
                                           "cluster's CPUs shared out, at most 8].",
        rich_help_panel="Ray")] = None,
) -> None:
    """Index the images in FOLDERS; later runs only embed what changed.

    New and changed files are embedded, moved or renamed ones are recognised by content, and
    deleted ones are removed. Ctrl-C keeps everything done so far.

    Example: clipsearch index ~/Photos --exclude '*/Screenshots/*'; later, clipsearch index
    """
    from clipsearch.build.builder import index_folders
    from clipsearch.cli import present
    from clipsearch.search.fastpath import keep_pandas_out

    keep_pandas_out()  # LanceDB and pyarrow only look for it: 70 MB and 0.3 s not spent
    if not folders:
        with _errors():
            folders = _stored_roots(db)

    fanout = None
    if ray or ray_address:
        from clipsearch.build.distributed import RayOptions

        fanout = RayOptions(address=ray_address, workers=workers, gpus_per_worker=gpus_per_worker,
                            cpus_per_worker=cpus_per_worker)
    saved = "interrupted; progress is saved: run the same command again to resume"
    stop = threading.Event()
    with _errors(saved), _terminate_as_interrupt(stop):
        # a server that watches this index holds its lock: the run is its job
        server = None if (fanout or model or pretrained) else _watcher(db)
        if server is None and not (fanout or model or pretrained or compact or prune_offline or watch):
            from clipsearch.build import unchanged
            from clipsearch.media.scan import normalize_root

            found = unchanged.check(config.db_path(db), [normalize_root(f) for f in folders], exclude or ())
            if found is not None:  # nothing to write: no model, no LanceDB
                present.summary(found, as_json)
                present.untold(config.db_path(db))
                return
        with present.progress_bar(not quiet and not as_json) as report:
            if server is not None:
                summary = _index_there(server, folders, exclude or (), compact, prune_offline,
                                       keep_empty or watch, _stopping(stop, report))
            else:
                summary = index_folders(
                    [str(f) for f in folders], db, model=model, pretrained=pretrained, device=device,
                    precision=precision, batch_size=batch_size, workers=workers, exclude=exclude or (),
                    progress=_stopping(stop, report), ray=fanout, compact=compact,
                    prune_offline=prune_offline, background_export=config.background_export(),
                    keep_empty=keep_empty or watch,
                )
        if summary is not None:
            present.summary(summary, as_json, db=config.db_path(db))
            present.untold(config.db_path(db))
        if watch and server is None:
            _watch_here(db, folders, device, batch_size, workers, exclude or (), settle, poll, stop)


def _stored_roots(db: Path | None) -> list[Path]:
    """The roots the index at `db` was built from, for an `index` given no folder."""
    from clipsearch.errors import BadInputError
    from clipsearch.store.table import Manifest, Store

    path = config.db_path(db)
    if not Store.exists(path):
        raise BadInputError(f"no folder given, and no index at {path} yet whose folders to rescan: "
                            "clipsearch index FOLDER builds one")
    roots = Manifest.load(path).roots
    if not roots:
        raise BadInputError(f"no folder given, and the index at {path} has no roots to rescan: "
                            "clipsearch index FOLDER adds one")
    return [Path(r) for r in roots]


def _watcher(db: Path | None):
    from clipsearch.server import client

    return client.find_watcher(config.db_path(db))


def _index_there(server, folders: list[Path], exclude: Sequence[str], compact: bool, prune_offline: bool,
                 keep_empty: bool, progress: Callable):
    """`index` through the server that watches this index: folders it watches already need
    nothing (one line says so); others are its job, followed here as if run here."""
    from clipsearch.build.jobs import IndexJob
    from clipsearch.cli import present
    from clipsearch.media.scan import is_under, normalize_root
    from clipsearch.results import IndexSummary

    wanted = [normalize_root(f) for f in folders]
    roots = server.status().get("roots", [])
    pid = server.found.pid
    if not (compact or prune_offline or exclude) and all(any(is_under(f, r) for r in roots) for f in wanted):
        present.message(f"clipsearch serve --watch (pid {pid}) keeps this index in step with "
                        f"{', '.join(wanted)}; nothing to do")
        return None
    present.message(f"handing this run to clipsearch serve --watch (pid {pid}), which holds the index; "
                    "it watches these folders from now on")
    return IndexSummary.from_dict(server.run_job(
        IndexJob(wanted, list(exclude), compact, prune_offline, keep_empty), progress))


def _watch_here(db: Path | None, folders: list[Path], device: str, batch_size: int, workers: int | None,
                exclude: Sequence[str], settle: float, poll: float | None, stop: threading.Event) -> None:
    """`index --watch`: after the run, keep the index in step with the folders until Ctrl-C."""
    from clipsearch.build.builder import open_builder
    from clipsearch.build.watch import Watcher
    from clipsearch.cli import present
    from clipsearch.media.scan import normalize_root

    with open_builder(db, device=device, batch_size=batch_size, workers=workers) as builder:
        watcher = Watcher(builder, [normalize_root(f) for f in folders], settle=settle, poll=poll,
                          exclude=exclude, note=present.message)
        present.message(f"watching {', '.join(watcher.roots)} for changes; Ctrl-C stops")
        watcher.run(stop)
    present.message("stopped watching; everything found is committed")


@app.command()
def search(
    ctx: typer.Context,
    query: Annotated[list[str], typer.Argument(
        metavar="QUERY", help="What to look for, in words; or terms combined with + and -.")],
    k: K = 10,
    within: Within = None,
    after: After = None,
    before: Before = None,
    ext: Ext = None,
    tag: Tag = None,
    place: Place = None,
    camera: Camera = None,
    photos: PhotosOnly = False,
    videos: VideosOnly = False,
    words: Annotated[str, typer.Option(
        "--words", metavar="on|off",
        help="on: the query's words also match each photo's file and folder names, place, camera, "
             "date and keywords, ranked beside what CLIP sees; off: pixels only.")] = "on",
    rerank: Annotated[bool, typer.Option(
        "--rerank", help="Re-order the best CLIP candidates with BLIP image-text matching, which "
                         "reads the query and each photo together: slower, more precise.")] = False,
    candidates: Annotated[int, typer.Option(
        "--candidates", min=1, help="How many CLIP candidates --rerank reads.")] = config.DEFAULT_CANDIDATES,
    min_match: Annotated[float | None, typer.Option(
        "--min-match", metavar="P",
        help="Drop hits whose BLIP match probability is below P (implies --rerank); "
             "a query with no real match then returns nothing.")] = None,
    rerank_model: RerankModel = None,
    rerank_precision: RerankPrecision = "auto",
    collapse: Annotated[bool, typer.Option(
        "--collapse", help="One hit per group of duplicate photos: its suggested keeper "
                           "(see clipsearch dupes).")] = False,
    as_json: Json = False,
    paths: Paths = False,
    null: Null = False,
    preview: Preview = None,
    db: Db = None,
    device: Device = "auto",
    precision: Precision = "fp32",
    no_server: NoServer = False,
) -> None:
    """Find images matching a description. Scores are CLIP cosine similarities; with --rerank,
    score = itm + clip (BLIP match probability plus CLIP cosine).

    The query's words are also looked up in what each photo says beyond its pixels: its file
    and folder names, the place of its GPS position, its camera, month and year, and the
    keywords and people named in it or its XMP sidecar. Photos that match in words and in look
    come first, then those that match in either (the score is then a rank fusion; --json shows
    the CLIP score and which words matched). A query no photo's words match is ranked by CLIP
    alone; --words off always is.

    Combine terms: '"beach" + "sunset" - "people"' adds and subtracts them; 2:"sunset" weighs a
    term double; a path to an image file (~/ref.jpg) is a term too. A '-' inside a word
    (black-and-white) is just a hyphen.

    When `clipsearch serve` runs for the same index, the query goes there (instant; same
    results); --no-server keeps it in this process.

    Example: clipsearch search "a dog running on a beach" --rerank --after 2019 --ext jpg
    """
    text = " ".join(query)
    use_words = _on_off(words, "--words")
    kind = _kind(photos, videos)
    none_found = (f"no image matches {text!r} with a match probability of at least {min_match}"
                  if min_match is not None else "no matching images")
    reranked = rerank or min_match is not None
    _rerank_model_used(ctx, reranked)
    wanted = {"precision": precision} | ({"rerank_model": rerank_model or config.DEFAULT_RERANK_MODEL,
                                         "rerank_precision": rerank_precision} if reranked else {})
    from clipsearch.search.request import SearchRequest

    request = SearchRequest(text, k=k, within=_folder(within), after=after, before=before, ext=ext, tags=tag,
                            place=place, camera=camera, kind=kind, words=use_words, rerank=rerank,
                            candidates=candidates, min_match=min_match, collapse=collapse)
    _print_hits(db, device, (as_json, paths, null), request, not no_server, wanted, none_found, preview,
                rerank_model=rerank_model, rerank_precision=rerank_precision, precision=precision)


def _rerank_model_used(ctx: typer.Context, reranked: bool) -> None:
    """A --rerank-model typed without --rerank would be ignored: say so (one set in the
    environment, CLIPSEARCH_RERANK_MODEL, waits quietly for a --rerank)."""
    source = ctx.get_parameter_source("rerank_model")  # typer's own click or click's: by name
    if not reranked and getattr(source, "name", None) == "COMMANDLINE":
        raise typer.BadParameter("it chooses the re-ranker of --rerank, which this command was not given: "
                                 "add --rerank, or leave --rerank-model out", param_hint="'--rerank-model'")


def _kind(photos: bool, videos: bool) -> str | None:
    if photos and videos:
        raise typer.BadParameter("choose one of --photos and --videos (neither: both kinds)",
                                 param_hint="--photos/--videos")
    return "photo" if photos else "video" if videos else None


def _on_off(value: str, flag: str) -> bool:
    if value.lower() not in ("on", "off"):
        raise typer.BadParameter(f"{value!r}: choose on or off", param_hint=flag)
    return value.lower() == "on"


def _needs_files(query: str) -> bool:
    """Whether a query names image files, which only this process may open (a server must not
    read paths its clients send). A malformed query raises its error here, as a search would."""
    from clipsearch.search.query import parse

    return any(term.kind == "image" for term in parse(query))


@app.command()
def similar(
    image: Annotated[Path, typer.Argument(
        help="An image or video file, indexed or not; or a bare file name the index holds.")],
    k: K = 10,
    within: Within = None,
    after: After = None,
    before: Before = None,
    ext: Ext = None,
    tag: Tag = None,
    place: Place = None,
    camera: Camera = None,
    photos: PhotosOnly = False,
    videos: VideosOnly = False,
    as_json: Json = False,
    paths: Paths = False,
    null: Null = False,
    preview: Preview = None,
    db: Db = None,
    device: Device = "auto",
    precision: Precision = "fp32",
    no_server: NoServer = False,
) -> None:
    """Find images that look like IMAGE (which comes first when it is itself indexed), and the
    moments of videos that do. IMAGE may be a video: its indexed frames, averaged, are the query.

    Example: clipsearch similar ~/Photos/IMG_0412.jpg --paths | head -3
    """
    from clipsearch.search.request import SearchRequest

    request = SearchRequest(like=image, k=k, within=_folder(within), after=after, before=before, ext=ext,
                            tags=tag, place=place, camera=camera, kind=_kind(photos, videos))
    _print_hits(db, device, (as_json, paths, null), request, not no_server, {"precision": precision},
                preview=preview, precision=precision)


@app.command()
def serve(
    folders: Annotated[list[Path] | None, typer.Argument(
        help="With --watch: folders to index and watch besides those the index holds.")] = None,
    db: Db = None,
    host: Annotated[str, typer.Option(
        "--host", help="Address to listen on. Anything but loopback needs a token.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=0, max=65535, help="Port (0: any free one).")] = 8765,
    token: Annotated[str | None, typer.Option(
        "--token", envvar="CLIPSEARCH_TOKEN", show_envvar=True,
        help="Require this token on every request (always required off loopback); the browser "
             "gets it once through the printed address.")] = None,
    open_browser: Annotated[bool, typer.Option(
        "--open", help="Open the gallery in the default browser.")] = False,
    rerank_model: RerankModel = None,
    rerank_precision: RerankPrecision = "auto",
    device: Device = "auto",
    precision: Precision = "fp32",
    watch: Annotated[bool, typer.Option(
        "--watch", rich_help_panel="Watching",
        help="Keep the index in step with its folders (and FOLDERS): new, changed, moved and deleted "
             "photos are searchable within seconds. `index`, `tag` and `optimize` runs for this index "
             "are then handed to the server.")] = False,
    settle: Settle = 2.0,
    poll: Poll = None,
    rescan_every: Annotated[float, typer.Option(
        "--rescan-every", min=0, metavar="SECONDS", rich_help_panel="Watching",
        help="With --watch: also scan every folder this often, for changes no event told of "
             "(0: only at start).")] = 3600.0,
    captions: Annotated[bool, typer.Option(
        "--captions", rich_help_panel="Watching",
        help="With --watch: caption the photos that have none (clipsearch caption) in quiet "
             "moments, at the lowest priority: searches never wait for it.")] = False,
    caption_model: CaptionModel = None,
    caption_precision: CaptionPrecision = "auto",
) -> None:
    """Serve the index over HTTP: a web gallery at /, a JSON API under /api (documented at /docs),
    with the CLIP model loaded once. `clipsearch search` and `similar` use it when it runs for
    the same index. With --watch it also keeps the index in step with the photo folders. Ctrl-C
    stops it.

    Example: clipsearch serve --db ~/photo-index --open --watch
    """
    from clipsearch.cli import present
    from clipsearch.server.service import WatchOptions
    from clipsearch.server.service import serve as run

    with _errors(), _terminate_as_interrupt():
        if captions and not watch:
            raise BadInputError("--captions needs --watch: clipsearch serve --watch --captions "
                                "(or caption once: clipsearch caption)")
        if folders and not watch:
            raise BadInputError("folders are for --watch: clipsearch serve --watch "
                                + " ".join(map(str, folders)))
        if watch:
            from clipsearch.media.scan import normalize_root

            watched = [normalize_root(f) for f in folders or ()]
        # uvicorn stops on SIGINT and SIGTERM by itself; whether it then re-raises the signal
        # (a KeyboardInterrupt here) or simply returns differs between its releases
        with contextlib.suppress(KeyboardInterrupt):
            run(config.db_path(db), host=host, port=port, token=token, device=device, precision=precision,
                rerank_model=rerank_model, rerank_precision=rerank_precision, open_browser=open_browser,
                watch=watched if watch else None, on_start=present.serving, note=present.message,
                watching=WatchOptions(settle, poll, rescan_every or None), captions=captions,
                caption_model=caption_model, caption_precision=caption_precision)
        present.message("clipsearch serve stopped")


@app.command("tag")
def tag_command(
    labels: Annotated[str | None, typer.Option(
        "--labels", metavar="A,B,...",
        help="Comma-separated labels [default: ~50 common photo subjects].")] = None,
    labels_file: Annotated[Path | None, typer.Option(
        "--labels-file", dir_okay=False,
        help="One label per line, or 'label: prompt; prompt' to choose its prompts ({} stands for "
             "the label); # comments.")] = None,
    threshold: Annotated[float, typer.Option(
        "--threshold", help="Keep a label when its score (0-1: label vs. background) reaches this.")] = 0.5,
    top: Annotated[int | None, typer.Option("--top", help="At most this many tags per image.")] = None,
    write_xmp: Annotated[bool | None, typer.Option(
        "--write-xmp/--no-write-xmp",
        help="Also merge the tags into PHOTO.EXT.xmp sidecars (dc:subject), as digiKam and "
             "darktable read them; existing sidecars keep their content. The index remembers the "
             "choice: later `tag` and `index` runs keep sidecars in step [default: as last time, "
             "else no].")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print each image's tags as JSON.")] = False,
    db: Db = None,
    device: Device = "auto",
) -> None:
    """Tag every indexed image with the labels that fit, from the stored embeddings (no image is
    decoded again). Each label is scored against a plain "a photo" background, so an image that
    fits none gets no tag. Re-tagging replaces the previous tags at once; later `index` runs tag
    new photos with the same labels; tags become search filters (search --tag LABEL).

    Example: clipsearch tag --labels "beach,snow,city,food,document,screenshot" --top 3
    """
    from clipsearch.cli import present
    from clipsearch.enrich.tagging import label_set, read_labels_file

    with _errors():
        chosen = label_set(labels, labels_file, threshold, top)
        server = _watcher(db)
        if server is not None:  # it holds the index: the run is its job
            from clipsearch.build.jobs import TagJob
            from clipsearch.results import TagSummary

            summary = TagSummary.from_dict(server.run_job(TagJob(
                labels, read_labels_file(labels_file) if labels_file else None, threshold, top, write_xmp,
                per_image=as_json), lambda _p: None))
        else:
            from clipsearch.build.builder import open_builder

            # fp32: the labels' vectors as a search's text encoder gives them, whatever the index's
            with open_builder(db, device=device, precision="fp32", create=False) as builder:
                summary = builder.tag(chosen, write_xmp=write_xmp, per_image=as_json)
    present.tag_summary(summary, as_json)


@app.command()
def caption(
    folders: Annotated[list[Path] | None, typer.Argument(
        help="Only the indexed photos under these folders [default: every indexed photo].")] = None,
    limit: Annotated[int | None, typer.Option(
        "--limit", min=1, help="Caption at most this many photos in this run.")] = None,
    show: Annotated[Path | None, typer.Option(
        "--show", metavar="PHOTO",
        help="Print the caption of PHOTO (a path, or a bare file name the index holds), making it "
             "if needed.")] = None,
    caption_model: CaptionModel = None,
    caption_precision: CaptionPrecision = "auto",
    batch_size: BatchSize = 8,
    write_xmp: Annotated[bool | None, typer.Option(
        "--write-xmp/--no-write-xmp",
        help="Also write each caption into the photo's PHOTO.EXT.xmp sidecar as its description "
             "(dc:description), never over a description you wrote [default: as `tag --write-xmp` "
             "chose, else no].")] = None,
    quiet: Quiet = False,
    as_json: Json = False,
    db: Db = None,
    device: Device = "auto",
) -> None:
    """Write a sentence for every indexed photo that has none yet, with BLIP: captions are shown
    in results and the gallery (as each thumbnail's alt text) and searched as words beside CLIP.
    Photos are searchable before they have one; captions follow content (a moved photo keeps its
    own). A caption from another model or precision is replaced, and kept until it is. Ctrl-C
    keeps every caption made so far; the next run goes on from there.

    Example: clipsearch caption ~/Photos/2019 --limit 500
    """
    from clipsearch.build.jobs import CaptionJob
    from clipsearch.cli import present
    from clipsearch.search.engine import open_index

    stop = threading.Event()
    with _errors("interrupted; the captions made so far are saved: run the same command again to resume"), \
            _terminate_as_interrupt(stop):
        server = _watcher(db)
        options = {"caption_model": caption_model, "caption_precision": caption_precision}
        if show is not None:
            if server is not None:  # it holds the index: making the caption is its job
                from clipsearch.results import ImageRecord

                # a file here is named by its absolute path: the server's folder is not ours
                asked = str(show.expanduser().absolute()) if show.expanduser().exists() else str(show)
                shown = server.run_job(CaptionJob(show=asked, caption_model=caption_model,
                                                  caption_precision=caption_precision), lambda _p: None)
                records = [ImageRecord(**r) for r in shown["images"]]
            else:
                from clipsearch.build.builder import open_builder

                index = open_index(db, device=device, **options)
                records = index.about(show)
                if any(r.caption is None for r in records):  # a caption to make: a write
                    with open_builder(db, device=device, create=False) as builder:
                        records = builder.caption_records(records, index.captioner)
            present.captions(records, as_json)
            return
        with present.progress_bar(not quiet and not as_json) as report:
            if server is not None:
                from clipsearch.media.scan import normalize_root
                from clipsearch.results import CaptionSummary

                present.message(f"handing this run to clipsearch serve --watch (pid {server.found.pid}), "
                                "which holds the index")
                job = CaptionJob([normalize_root(f) for f in folders or ()], limit, write_xmp=write_xmp,
                                 caption_model=caption_model, caption_precision=caption_precision)
                summary = CaptionSummary.from_dict(server.run_job(job, _stopping(stop, report)))
            else:
                from clipsearch.build.builder import open_builder

                with open_builder(db, device=device, create=False) as builder:
                    builder.use_captioner(caption_model, caption_precision)
                    summary = builder.caption([str(f) for f in folders or ()], limit=limit,
                                              progress=_stopping(stop, report), batch_size=batch_size,
                                              write_xmp=write_xmp)
    present.caption_summary(summary, as_json)


@app.command()
def tags(db: Db = None, as_json: Json = False) -> None:
    """List the tags of the last `clipsearch tag` run, each with how many images carry it.

    Example: clipsearch tags --json
    """
    _report(db, as_json, lambda index: index.tags(), "tag_counts")


@app.command()
def facets(db: Db = None, as_json: Json = False) -> None:
    """List the places and cameras of the library, each with how many photos: the names
    --place and --camera take.

    Example: clipsearch facets --json
    """
    _report(db, as_json, lambda index: index.facets(), "facets")


@app.command()
def info(
    photo: Annotated[Path | None, typer.Argument(
        help="A photo (a path, or a bare file name the index holds): show all it knows of it.")] = None,
    db: Db = None, as_json: Json = False,
) -> None:
    """Show what the index holds: image count, folders, model, vector size, disk use; or, for
    PHOTO, all it knows of that photo (place, camera, keywords, tags ...).

    Example: clipsearch info --json; clipsearch info IMG_2041.jpg
    """
    if photo is not None:
        _report(db, as_json, lambda index: index.about(photo), "about")
        return
    _report(db, as_json, lambda index: index.info(), "info")


@app.command()
def optimize(db: Db = None) -> None:
    """Merge the index's table files and fold the search structures' recent changes into their
    bases. Index runs do this by themselves once enough small commits piled up; it costs about
    a rewrite of the table (seconds per 100,000 photos), and searches go on meanwhile.

    Example: clipsearch optimize --db ~/photo-index
    """
    from clipsearch.build.builder import compact
    from clipsearch.build.jobs import OptimizeJob
    from clipsearch.cli import present
    from clipsearch.results import CompactSummary

    with _errors():
        server = _watcher(db)
        if server is not None:
            present.compacted(CompactSummary(**server.run_job(OptimizeJob(), lambda _p: None)))
            return
        present.compacted(compact(db))


roots_app = typer.Typer(help="The folders an index was built from, and what it leaves out.", cls=_Group,
                        invoke_without_command=True)
app.add_typer(roots_app, name="roots")


@roots_app.callback()
def roots_list(ctx: typer.Context, db: Db = None, as_json: Json = False) -> None:
    """The folders an index was built from (offline ones say since when) and the --exclude
    patterns it keeps leaving out.

    Example: clipsearch roots
    """
    if ctx.invoked_subcommand is not None:
        return
    from clipsearch.cli import present
    from clipsearch.search.engine import open_index

    with _errors():
        present.roots(open_index(db, device="cpu").info(), as_json)


def _root_job(db: Path | None, job: Job, here: Callable) -> dict:
    """`job` through the server that watches this index, else `here(builder)`."""
    server = _watcher(db)
    if server is not None:
        return server.run_job(job, lambda _p: None)
    from clipsearch.build.builder import open_builder

    with open_builder(db) as builder:
        return here(builder)


@roots_app.command("remove")
def roots_remove(
    folder: Annotated[Path, typer.Argument(help="A root of the index (clipsearch roots lists them).")],
    db: Db = None,
    as_json: Json = False,
) -> None:
    """Stop indexing FOLDER: its photos leave the index (their files are not touched), and a
    watching server stops watching it.

    Example: clipsearch roots remove /media/old-disk/Photos
    """
    from clipsearch.build.jobs import RemoveRootJob
    from clipsearch.cli import present
    from clipsearch.results import IndexSummary

    root = os.path.abspath(os.path.expanduser(folder))
    with _errors():
        summary = _root_job(db, RemoveRootJob(root), lambda b: b.remove_root(root).to_dict())
    present.summary(IndexSummary.from_dict(summary), as_json)


@roots_app.command("include")
def roots_include(
    pattern: Annotated[str, typer.Argument(
        help="An --exclude pattern the index keeps (clipsearch roots lists them).")],
    db: Db = None,
) -> None:
    """Stop leaving out what an earlier `index --exclude PATTERN` left out; the next index run
    (or a watching server's next rescan) adds it.

    Example: clipsearch roots include '*/Screenshots/*'
    """
    from clipsearch.build.jobs import IncludeJob
    from clipsearch.cli import present

    with _errors():
        left = _root_job(db, IncludeJob(pattern), lambda b: {"exclude": b.include(pattern)})["exclude"]
    present.message(f"no longer leaving out {pattern!r}; run clipsearch index to add what it left out"
                    + (f" (still left out: {', '.join(repr(p) for p in left)})" if left else ""))


@roots_app.command("move")
def roots_move(
    old: Annotated[Path, typer.Argument(help="Where the library was indexed.")],
    new: Annotated[Path, typer.Argument(help="Where it is now.")],
    db: Db = None,
    as_json: Json = False,
) -> None:
    """The library moved (a new disk, a renamed folder): re-point its photos to NEW without
    embedding anything again; photos whose size and time are as indexed are not even read.

    Example: clipsearch roots move /media/old-disk/Photos /media/new-disk/Photos
    """
    from clipsearch.build.jobs import MoveJob
    from clipsearch.cli import present
    from clipsearch.results import IndexSummary

    moved = [os.path.abspath(os.path.expanduser(old)), os.path.abspath(os.path.expanduser(new))]
    with _errors():
        server = _watcher(db)
        if server is not None:
            summary = IndexSummary.from_dict(server.run_job(MoveJob(moved[0], moved[1]), lambda _p: None))
        else:
            from clipsearch.build.builder import open_builder

            with open_builder(db) as builder:
                summary = builder.move_root(*moved)
    present.summary(summary, as_json)


@app.command()
def forget(
    paths: Annotated[list[Path], typer.Argument(
        help="Photos or folders to remove from the index (a path, or a bare file name the index holds).")],
    db: Db = None,
    as_json: Json = False,
) -> None:
    """Remove photos from the index for good, now: their rows, the vectors kept of removed photos
    (CLIPSEARCH_KEEP_REMOVED_DAYS, 7 by default, spares re-embedding a photo that comes back),
    and their cached thumbnails and re-rank features. A photo still on disk comes back with the
    next index run unless you delete it or --exclude it.

    Example: clipsearch forget ~/Photos/2019/private
    """
    from clipsearch.build.jobs import ForgetJob
    from clipsearch.cli import present
    from clipsearch.results import ForgetSummary

    # a bare name that is no file here (IMG_2041.jpg) stays a name: every indexed file of it
    wanted = [str(p) if os.sep not in str(p) and not p.exists() else os.path.abspath(os.path.expanduser(p))
              for p in paths]
    with _errors():
        server = _watcher(db)
        if server is not None:
            summary = ForgetSummary(**server.run_job(ForgetJob(wanted), lambda _p: None))
        else:
            from clipsearch.build.builder import open_builder

            with open_builder(db) as builder:
                summary = builder.forget(wanted)
    present.forgotten(summary, as_json)


@app.command()
def check(
    db: Db = None,
    as_json: Json = False,
    thumbnails: Annotated[bool, typer.Option(
        "--thumbnails/--no-thumbnails", help="Also check the gallery's cached thumbnails.")] = True,
) -> None:
    """Verify the files that make searches fast (the text encoder export, the row snapshot, the
    search structure, cached thumbnails) against the checksums recorded when each was written,
    and rebuild whatever is damaged or missing. The table of photos and vectors is only read.
    Exit code 1 when something could not be repaired.

    Example: clipsearch check --db ~/photo-index
    """
    from clipsearch.build.builder import open_builder
    from clipsearch.cli import present

    with _errors(), open_builder(db, precision="fp32", create=False) as builder:
        report = builder.check(thumbnails, present.message)
    present.check_report(report, as_json)
    if not report.ok:
        raise typer.Exit(1)


@app.command()
def dupes(
    threshold: Annotated[float | None, typer.Option(
        "--threshold", metavar="COSINE",
        help="How alike (CLIP cosine) near-duplicates are at least [default: 0.95, calibrated; "
             "see docs/guides/duplicates.md].")] = None,
    exact: Annotated[bool, typer.Option("--exact", help="Identical content (same bytes) only.")] = False,
    within: Within = None,
    extras: Annotated[bool, typer.Option(
        "--extras", help="With --paths or --null: every member except each group's suggested "
                         "keeper.")] = False,
    as_json: Json = False,
    paths: Paths = False,
    null: Null = False,
    db: Db = None,
) -> None:
    """Find duplicate photos: identical copies, then near-duplicates (resized, re-encoded,
    cropped, burst shots), largest groups first, each with the one to keep and why.

    Nothing is decoded and nothing is ever deleted or moved: --paths --extras lists the rest for
    your own tools.

    Example: clipsearch dupes --extras --null | xargs -0 gio trash
    """
    from clipsearch.cli import present
    from clipsearch.search.engine import open_index

    with _errors():
        fmt = _format(as_json, paths, null)
        if extras and not fmt.startswith("paths"):
            raise BadInputError("--extras lists paths: add --paths (or leave --extras out)")
        groups = open_index(db).dupes(threshold, exact=exact, within=_folder(within))
    present.dupes(groups, fmt, extras)


eval_app = typer.Typer(
    cls=_Group,
    help="Measure how well a model finds the right images, on a dataset with known answers: "
         "retrieval recall and zero-shot accuracy, through the real indexer and search.",
    no_args_is_help=True, rich_markup_mode=None)
app.add_typer(eval_app, name="eval")
EvalDb = Annotated[Path | None, typer.Option(
    "--db", file_okay=False,
    help="Keep the dataset's index here, so that later runs embed nothing again "
         "[default: a throw-away index].")]
Candidates = Annotated[int, typer.Option(
    "--candidates", min=1, help="How many CLIP candidates --rerank reads.")]


def _evaluate(db: Path | None, images: list[str], quiet: bool, measure: Callable, printer: str,
              as_json: bool, **options) -> None:
    """Index `images` into the eval's own index, then `measure(gallery)` and print it."""
    from clipsearch.cli import present
    from clipsearch.eval.runner import gallery

    with _errors(), present.progress_bar(not quiet and not as_json) as report, \
            gallery(images, db, progress=report, **options) as found:
        result = measure(found, report)
    getattr(present, printer)(result, as_json)


@eval_app.command("retrieval")
def eval_retrieval(
    ctx: typer.Context,
    dataset: Annotated[Path, typer.Argument(
        help="captions.jsonl ({\"image\": path, \"captions\": [...]} per line), a CSV with "
             "columns image,caption, or a Karpathy split .json (COCO, Flickr30k).", dir_okay=False)],
    images: Annotated[Path | None, typer.Option(
        "--images", file_okay=False,
        help="The folder the dataset's image paths are relative to "
             "[default: the dataset file's folder].")] = None,
    split: Annotated[str, typer.Option("--split", help="Which split of a Karpathy .json.")] = "test",
    rerank: Annotated[bool, typer.Option(
        "--rerank", help="Also measure text-to-image after BLIP re-ranks the CLIP candidates.")] = False,
    candidates: Candidates = config.DEFAULT_CANDIDATES,
    rerank_model: RerankModel = None,
    rerank_precision: RerankPrecision = "auto",
    words: Annotated[str, typer.Option(
        "--words", metavar="on|off",
        help="on: the images' words (captions from --caption-model, the places, cameras and keywords "
             "their EXIF and XMP carry; not their file names, which eval replaces with numbers) rank "
             "beside CLIP, as `search` does; off: pixels only.")] = "on",
    caption_model: Annotated[str | None, typer.Option(
        "--caption-model", metavar="NAME_OR_DIR",
        help="Caption every image with this BLIP captioner first, so that --words on searches the "
             "captions too [default: no captions].")] = None,
    caption_precision: CaptionPrecision = "auto",
    model: Model = None,
    pretrained: Pretrained = None,
    device: Device = "auto",
    precision: IndexPrecision = "auto",
    batch_size: BatchSize = config.DEFAULT_BATCH_SIZE,
    workers: Workers = None,
    db: EvalDb = None,
    as_json: Json = False,
    quiet: Quiet = False,
) -> None:
    """Text-to-image and image-to-text Recall@1/5/10 (a caption is answered when its own image
    ranks within K; an image when any of its captions does), median rank and queries per
    second: the images are indexed, and every caption is a `clipsearch search`.

    Example: clipsearch eval retrieval dataset_flickr30k.json --images flickr30k-images --rerank
    """
    from clipsearch.eval.datasets import read_captions
    from clipsearch.eval.runner import retrieval

    _rerank_model_used(ctx, rerank)
    with _errors():
        data = read_captions(dataset, images, split)
        ranked_by_words = _on_off(words, "--words")
    captioning = {"caption_model": caption_model, "caption_precision": caption_precision} \
        if caption_model else {}
    _evaluate(db, data.images, quiet,
              lambda found, report: retrieval(data, found, rerank=rerank, candidates=candidates,
                                              progress=report, words=ranked_by_words),
              "eval_retrieval", as_json, model=model, pretrained=pretrained, device=device,
              precision=precision, batch_size=batch_size, workers=workers, rerank_model=rerank_model,
              rerank_precision=rerank_precision, **captioning)


@eval_app.command("zeroshot")
def eval_zeroshot(
    folder: Annotated[Path, typer.Argument(
        help="One subfolder of images per class, named for it (ImageFolder); _ reads as a space.",
        file_okay=False)],
    threshold: Annotated[float, typer.Option(
        "--threshold", help="The tag threshold whose precision and recall are measured, as in "
                            "`clipsearch tag`.")] = 0.5,
    model: Model = None,
    pretrained: Pretrained = None,
    device: Device = "auto",
    precision: IndexPrecision = "auto",
    batch_size: BatchSize = config.DEFAULT_BATCH_SIZE,
    workers: Workers = None,
    db: EvalDb = None,
    as_json: Json = False,
    quiet: Quiet = False,
) -> None:
    """Zero-shot classification with the class names as tags: top-1 and top-5 accuracy with
    the prompt ensembles `clipsearch tag` uses, and the precision and recall of the tags given
    at --threshold.

    Example: clipsearch eval zeroshot ~/datasets/imagenette/val --json
    """
    from clipsearch.enrich.tagging import check_threshold
    from clipsearch.eval.datasets import read_classes
    from clipsearch.eval.runner import zeroshot

    with _errors():
        check_threshold(threshold)
        data = read_classes(folder)
    _evaluate(db, data.images, quiet, lambda found, _report: zeroshot(data, found, threshold),
              "eval_zeroshot", as_json, model=model, pretrained=pretrained, device=device,
              precision=precision, batch_size=batch_size, workers=workers)


def _print_version(asked: bool) -> None:
    if asked:
        from importlib.metadata import version

        typer.echo(f"clipsearch {version('clipsearch')}")
        raise typer.Exit()


@app.callback()
def _options(version: Annotated[bool, typer.Option(
        "--version", callback=_print_version, is_eager=True, help="Print the version and exit.")] = False,
             ) -> None:
    _notes_to_stderr()


class _Notes(logging.Handler):
    """What the library notes on its logger (a manifest restored from its copy ...), one line each
    on stderr, as the CLI's own notes are printed."""

    def emit(self, record: logging.LogRecord) -> None:
        from clipsearch.cli import present

        present.message(record.getMessage())


def _notes_to_stderr() -> None:
    log = logging.getLogger("clipsearch")
    if not any(isinstance(h, _Notes) for h in log.handlers):
        log.addHandler(_Notes(logging.WARNING))


def arguments(argv: list[str]) -> list[str]:
    """`argv` as click should read it: --preview takes a value only when one of its own follows
    (`--preview kitty`, as `--preview=kitty`); a bare --preview means --preview=auto, and the
    word after it stays a word of the query."""
    from clipsearch.cli.preview import CHOICES

    out: list[str] = []
    words = iter(enumerate(argv))
    for i, arg in words:
        if arg == "--":
            out.extend(argv[i:])
            break
        if arg != "--preview":
            out.append(arg)
        elif i + 1 < len(argv) and argv[i + 1].lower() in CHOICES:
            out.append(f"--preview={next(words)[1]}")
        else:
            out.append("--preview=auto")
    return out


def main() -> None:
    import sys

    app(arguments(sys.argv[1:]), prog_name="clipsearch")
