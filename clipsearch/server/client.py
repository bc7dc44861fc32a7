"""The CLI's way to a running `clipsearch serve` for the same index.

A server publishes a small file in the index directory (`server.json`, readable by its owner
only): where it listens, its pid and a random secret. The CLI reads it, checks that the process
lives and that the server there answers for this very index, and sends the query over. Any
doubt (no file, a dead pid, a refused connection, another program on that port, settings that
would give other results, any answer but a page of hits) means the CLI does the work itself,
silently; so what it prints is the same either way, errors included.

Only the standard library and clipsearch's light modules are imported here: a query through a
server never loads torch, open_clip or lancedb.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlencode, urlsplit

from clipsearch.errors import BadInputError, ClipsearchError, IndexInterrupted, ServeError
from clipsearch.files import replacing
from clipsearch.media.kinds import is_video_name
from clipsearch.results import Hit, Progress
from clipsearch.search import limits
from clipsearch.search.request import SearchRequest

if TYPE_CHECKING:
    from clipsearch.build.jobs import Job

SERVER_FILE = "server.json"
HEALTH_TIMEOUT = 1.0  # seconds; a live server on loopback answers in about a millisecond
QUERY_TIMEOUT = 600.0  # a first re-rank loads BLIP and reads every candidate
JOB_POLL = 0.2  # seconds between two looks at a job handed to the server


@dataclass(frozen=True)
class Discovery:
    """What a running server publishes about itself in the index directory."""

    url: str  # where a client on this machine reaches it
    pid: int
    secret: str  # accepted as a token, so the CLI gets in even when a --token is set
    db: str
    settings: dict  # what makes its results what they are: precision, device, re-ranker


def publish(db: Path, found: Discovery) -> bool:
    """Write the discovery file (owner-only: it holds the secret); False if the index directory is
    not writable, which only means the CLI will not find this server."""
    try:
        with replacing(Path(db) / SERVER_FILE, mode=0o600) as tmp, open(tmp, "w", encoding="utf-8") as f:
            json.dump(asdict(found), f, indent=2)
        return True
    except OSError:
        return False


def withdraw(db: Path, pid: int) -> None:
    """Remove the discovery file if it is still this server's (another may have started since)."""
    found = read(db)
    if found is not None and found.pid == pid:
        with contextlib.suppress(OSError):
            (Path(db) / SERVER_FILE).unlink()


def read(db: Path) -> Discovery | None:
    try:
        data = json.loads((Path(db) / SERVER_FILE).read_text(encoding="utf-8"))
        return Discovery(url=str(data["url"]), pid=int(data["pid"]), secret=str(data["secret"]),
                         db=str(data["db"]), settings=dict(data.get("settings") or {}))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: let the health check decide
        return True
    return True


def compatible(served: dict, wanted: dict) -> bool:
    """Whether a server with `served` settings gives the results `wanted` would give in-process.
    A device of 'auto' takes whatever the server runs on."""
    for key, value in wanted.items():
        if key == "device":
            if value not in ("auto", served.get("device"), served.get("resolved_device")):
                return False
        elif served.get(key) != value:
            return False
    return True


class Server:
    """A running server for one index, as the CLI talks to it."""

    def __init__(self, found: Discovery) -> None:
        parts = urlsplit(found.url)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
        self.found = found

    def _request(self, method: str, path: str, params: dict | None = None, body: bytes | None = None,
                 content_type: str | None = None, timeout: float = QUERY_TIMEOUT) -> tuple[int, dict]:
        query = f"?{urlencode(params, doseq=True)}" if params else ""
        headers = {"Authorization": f"Bearer {self.found.secret}", "Host": f"127.0.0.1:{self.port}"}
        if content_type:
            headers["Content-Type"] = content_type
        conn = http.client.HTTPConnection(self.host, self.port, timeout=timeout)
        try:
            conn.request(method, path + query, body=body, headers=headers)
            response = conn.getresponse()
            return response.status, json.loads(response.read() or b"{}")
        finally:
            conn.close()

    def healthy(self) -> bool:
        """The server answers, and it is the process that published the file, serving this index."""
        try:
            status, health = self._request("GET", "/api/health", timeout=HEALTH_TIMEOUT)
        except (OSError, ValueError, http.client.HTTPException):
            return False
        return (status == 200 and health.get("pid") == self.found.pid
                and os.path.realpath(str(health.get("index"))) == os.path.realpath(self.found.db))

    def _hits(self, method: str, path: str, params: dict, body: bytes | None = None,
              content_type: str | None = None) -> list[Hit] | None:
        try:
            status, page = self._request(method, path, params, body, content_type)
        except (OSError, ValueError, http.client.HTTPException):
            return None
        if status == 400 and isinstance(page.get("error"), str):
            # the engine's own refusal, word for word (asks beyond the server's limits are
            # never sent, so a 400 is what an in-process run would raise)
            raise BadInputError(page["error"])
        if status != 200:
            return None  # anything else: the CLI's own run says what it has to say
        return [Hit.from_dict(h) for h in page["hits"]]

    def search(self, request: SearchRequest) -> list[Hit] | None:
        """The hits `Index.page(request)` would give, or None when the CLI must search itself. An
        image to look like is sent as an upload; the server finds indexed content by its hash, so
        an indexed photo is not embedded again."""
        if request.breach() is not None:
            return None
        if request.like is None:
            return self._hits("GET", "/api/search", request.params())
        if not isinstance(request.like, (str, os.PathLike)):
            return None
        path = os.path.abspath(os.path.expanduser(os.fspath(request.like)))
        if is_video_name(path):
            return None  # a video is averaged from its indexed frames, or its first decoded, here
        try:
            if os.path.getsize(path) > limits.MAX_UPLOAD:
                return None
            with open(path, "rb") as f:
                data = f.read()
        except OSError:
            return None
        boundary = uuid.uuid4().hex
        # the file name is the absolute path, so that messages name the file as the CLI does
        name = path.replace("\\", "\\\\").replace('"', '\\"').replace("\r", " ").replace("\n", " ")
        body = (f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="{name}"\r\n'
                f"Content-Type: application/octet-stream\r\n\r\n").encode("utf-8", "surrogateescape")
        body += data + f"\r\n--{boundary}--\r\n".encode()
        return self._hits("POST", "/api/similar", request.params(), body,
                          f"multipart/form-data; boundary={boundary}")

    def status(self) -> dict:
        return self._json("GET", "/api/status")

    def submit(self, job: Job) -> dict:
        """Hand a writing command over (clipsearch.server.live); its refusal is raised as the
        in-process run would raise it."""
        return self._json("POST", "/api/jobs", body=json.dumps(asdict(job)).encode(),
                          content_type="application/json")

    def job(self, id: str) -> dict:
        return self._json("GET", f"/api/jobs/{id}", timeout=30)

    def cancel(self, id: str) -> dict:
        return self._json("DELETE", f"/api/jobs/{id}", timeout=30)

    def run_job(self, job: Job, progress: Callable[[Progress], None]) -> dict:
        """Hand a job over and follow it to its end, its progress told to `progress` (which may
        raise KeyboardInterrupt: the job is then cancelled, keeping what it committed); the
        job's result, or its error raised as the in-process run would."""
        id = self.submit(job)["id"]
        last = None  # nothing is told before the job says something (not "found 0 images")
        try:
            while (state := self.job(id))["state"] in ("queued", "running"):
                if state["progress"]:
                    last = Progress(**state["progress"])
                if last is not None:
                    progress(last)
                time.sleep(JOB_POLL)
        except KeyboardInterrupt:
            self.cancel(id)
            deadline = time.monotonic() + QUERY_TIMEOUT
            while (state := self.job(id))["state"] in ("queued", "running") and time.monotonic() < deadline:
                time.sleep(JOB_POLL)
        if state["state"] == "done":
            return state["result"]
        if state["state"] == "cancelled":
            stopped = IndexInterrupted(0)
            if state["error"]:  # the server's own count of what it committed
                stopped.args = (state["error"],)
            raise stopped
        raise _Told(state["error"] or "the job failed", 1)

    def _json(self, method: str, path: str, body: bytes | None = None, content_type: str | None = None,
              timeout: float = 30) -> dict:
        try:
            status, answer = self._request(method, path, body=body, content_type=content_type,
                                           timeout=timeout)
        except (OSError, ValueError, http.client.HTTPException) as exc:
            raise ServeError(f"the server for this index (pid {self.found.pid}) stopped answering ({exc}); "
                             "run the command again") from None
        if status >= 400:
            error = answer.get("error", f"HTTP {status}")
            raise (BadInputError if status in (400, 422) else ServeError)(error)
        return answer


class _Told(ClipsearchError):
    """An error the server's job ended with, told word for word, with the exit code it has."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def find_watcher(db: Path) -> Server | None:
    """The live server that watches the index at `db` (serve --watch), which holds its writer's
    lock and takes writing commands as jobs; or None."""
    found = read(db)
    if found is None or not found.settings.get("watch") or not _alive(found.pid):
        return None
    server = Server(found)
    return server if server.healthy() else None


def find(db: Path, settings: dict) -> Server | None:
    """The live server for the index at `db` whose results equal an in-process run with
    `settings`, or None."""
    found = read(db)
    if found is None or not _alive(found.pid) or not compatible(found.settings, settings):
        return None
    server = Server(found)
    return server if server.healthy() else None
