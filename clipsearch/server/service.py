"""Running the server as a process: check the address and token, load the index and the CLIP
model once, bind, publish the discovery file for the CLI, serve until Ctrl-C or SIGTERM, and
withdraw the file on the way out."""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import socket
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from clipsearch import config
from clipsearch.errors import BadInputError, IndexNotFoundError, ServeError
from clipsearch.server import client
from clipsearch.server.security import is_loopback, login_url, token_problem
from clipsearch.store.table import Store

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8765


@dataclass(frozen=True)
class Started:
    """What `serve` tells its caller once it listens."""

    url: str  # the address to open (with the token, when one is needed)
    db: Path
    images: int | None  # None: no index there yet
    model: str | None
    discoverable: bool  # whether the CLI will find it (the discovery file could be written)


def check_address(host: str, token: str | None) -> None:
    if not is_loopback(host) and not token:
        raise BadInputError(
            f"--host {host} would let other machines read your photos; set a token with --token or "
            "CLIPSEARCH_TOKEN: --token \"$(python3 -c 'import secrets; print(secrets.token_urlsafe())')\"")
    if token is not None and (problem := token_problem(token)):
        raise BadInputError(f"{problem}, e.g. python3 -c 'import secrets; print(secrets.token_urlsafe())'")


def bind(host: str, port: int) -> socket.socket:
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                             flags=socket.AI_PASSIVE)[0]
    except socket.gaierror as exc:
        raise BadInputError(f"--host {host}: not an address of this machine ({exc.strerror})") from None
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
        sock.listen(128)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE or "in use" in str(exc):
            raise ServeError(f"port {port} on {host} is already in use (another clipsearch serve?); "
                             "choose another with --port, or --port 0 for any free one") from None
        raise ServeError(f"cannot listen on {host}:{port} ({exc.strerror or exc}); choose another "
                         "--host or --port") from None
    sock.set_inheritable(True)
    return sock


def addresses(host: str, sock: socket.socket) -> tuple[str, str]:
    """(the address this machine's CLI uses, the one to show people) of a bound socket."""
    bound = sock.getsockname()[0]
    bound = f"[{bound}]" if ":" in bound else bound
    if host in ("0.0.0.0", "::", ""):  # every interface: loopback here, the machine's name elsewhere
        return ("[::1]" if ":" in bound else "127.0.0.1"), socket.gethostname()
    return bound, bound


def serve(db: Path, *, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, token: str | None = None,
          device: str = "auto", precision: str = "fp32", rerank_model: str | None = None,
          rerank_precision: str = "auto", open_browser: bool = False,
          watch: Sequence[str] | None = None, watching: WatchOptions | None = None,
          captions: bool = False, caption_model: str | None = None, caption_precision: str = "auto",
          on_start: Callable[[Started], None] = lambda _s: None,
          note: Callable[[str], None] = lambda _m: None) -> None:
    """Serve the index at `db` until interrupted (KeyboardInterrupt; SIGTERM should raise it).
    `watch`: keep the index in step with these folders (normalised; empty: the index's roots) as
    they change (clipsearch.build.watch), holding the index's writer's lock meanwhile. `captions`
    (with `watch`): caption the photos that have none in the watcher's quiet moments."""
    import uvicorn

    from clipsearch.models import resolve_device
    from clipsearch.server.app import ServedIndex, create_app
    from clipsearch.server.live import Searching

    check_address(host, token)
    sock = bind(host, port)  # first, so that a taken port is said at once, not after loading
    pid = os.getpid()
    stopping = threading.Event()
    with contextlib.ExitStack() as held:
        held.callback(sock.close)
        held.callback(client.withdraw, db, pid)
        builder = None
        if watch is not None:
            from clipsearch.build.builder import open_builder

            if not watch and not Store.exists(db):
                raise BadInputError(f"there is no index at {db} yet, so no folders to watch; name them: "
                                    "clipsearch serve --watch ~/Photos")
            builder = held.enter_context(open_builder(db, device=device, precision=precision))
        served = ServedIndex(db, device=device, precision=precision, rerank_model=rerank_model,
                             rerank_precision=rerank_precision, model_thread=True,
                             caption_model=caption_model, caption_precision=caption_precision)
        images = model = None
        try:
            from clipsearch.build.fastprep import prepare_searches

            index = served.get()
            # the text export its queries share with the CLI's fast path
            index.adopt_export(prepare_searches(index.store, lambda: index.embedder)[0])
            _ = index.embedder, index.text_encoder, index.ann  # loaded before the first query
            images, model = index.store.count(), index.spec.describe()
            if builder is not None:
                builder.share_embedder(index.embedder)  # one copy of CLIP for both sides
        except IndexNotFoundError:
            pass  # served from the moment an `index` run creates it; until then the API says how
        secret = secrets.token_urlsafe(32)
        settings = {"precision": precision, "device": device, "resolved_device": resolve_device(device),
                    "fast_query": config.fast_query(),
                    "rerank_model": rerank_model or config.DEFAULT_RERANK_MODEL,
                    "rerank_precision": rerank_precision, "watch": builder is not None}
        watcher = None
        if builder is not None:
            from clipsearch.build.watch import Watcher

            opts = watching or WatchOptions()
            roots = sorted(set(watch or ()) | set(builder.store.manifest.roots))
            watcher = Watcher(builder, roots, settle=opts.settle, poll=opts.poll,
                              rescan_every=opts.rescan_every, note=note,
                              idle=_captioning(served, builder) if captions else None)
        app = create_app(served, tokens=tuple(t for t in (token, secret) if t),
                         token_required=bool(token) or not is_loopback(host),
                         loopback_only=is_loopback(host), settings=settings, watcher=watcher,
                         stopping=stopping, writer_tokens=(secret,))
        searching = Searching(app)
        if watcher is not None:
            watcher.busy = lambda: searching.count > 0
            held.enter_context(_running(watcher, stopping))
        port = sock.getsockname()[1]
        local, public = addresses(host, sock)
        shown = login_url(f"http://{public}:{port}/", token) if token else f"http://{public}:{port}/"
        discoverable = client.publish(db, client.Discovery(
            url=f"http://{local}:{port}", pid=pid, secret=secret, db=str(db), settings=settings))
        server = uvicorn.Server(uvicorn.Config(searching, log_level="warning", access_log=False,
                                               lifespan="off", server_header=False,
                                               timeout_graceful_shutdown=5))
        on_start(Started(shown, db, images, model, discoverable))
        if open_browser:
            threading.Thread(target=_open_when_ready, args=(server, shown), daemon=True).start()
        server.run(sockets=[sock])


IDLE_CAPTIONS = 4  # photos per slice of `serve --captions`: a few seconds of the watcher's time


def _captioning(served, builder):
    """`serve --captions`: a slice of captions at a time (clipsearch.enrich.captions), written by the
    watcher's builder with the served index's captioner; the fast path's copy of the captions
    is written when none are left."""

    unreadable: set[str] = set()  # tried once per server run; `clipsearch caption` says why
    finished_at: tuple | None = None  # the versions at which nothing was left to caption

    def slice_(progress) -> bool:
        nonlocal finished_at
        index = served.get()
        if finished_at == (index.store.version, index.store.captions_version()):
            return False  # nothing changed since everything was captioned
        summary = builder.caption(captioner=index.captioner, limit=IDLE_CAPTIONS, progress=progress,
                                  batch_size=IDLE_CAPTIONS, prepare=False, failed=unreadable,
                                  call=index.caption_call)
        if summary.left:
            return True
        if summary.captioned:
            builder.prepare_fast()
        index.store.refresh()
        finished_at = (index.store.version, index.store.captions_version())
        return False

    return slice_


@dataclass(frozen=True)
class WatchOptions:
    settle: float = 2.0  # seconds a file must be still before it is read
    poll: float | None = None  # scan every so many seconds instead of OS events
    rescan_every: float | None = 3600.0


@contextlib.contextmanager
def _running(watcher, stopping: threading.Event):
    """The watcher's thread for the server's lifetime; on the way out it commits what it has."""
    thread = threading.Thread(target=watcher.run, args=(stopping,), name="clipsearch-watch", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stopping.set()
        thread.join(timeout=120)


def _open_when_ready(server, url: str) -> None:
    import time
    import webbrowser

    for _ in range(200):
        if server.started:
            webbrowser.open(url)
            return
        time.sleep(0.05)
