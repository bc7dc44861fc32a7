"""A real `clipsearch serve` process for tests: started on a free loopback port, talked to over
HTTP with the standard library, stopped by a signal. Every wait is bounded."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import queue
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlencode, urlsplit

START_TIMEOUT = 120  # seconds: importing torch and loading the model on a busy 2-core machine
HEAVY = ("torch", "open_clip", "torchvision", "transformers", "lancedb", "pandas")
# The CLI as a new process, reporting afterwards which heavy libraries it imported.
PROBE = """
import sys
from clipsearch.cli.commands import main
sys.argv = ["clipsearch", *sys.argv[1:]]
try:
    main()
finally:
    heavy = sorted({m.split(".")[0] for m in sys.modules} & set(HEAVY))
    sys.stderr.write("heavy: " + ",".join(heavy) + "\\n")
""".replace("HEAVY", repr(HEAVY))


@dataclass
class Response:
    status: int
    headers: dict[str, str]  # lower-case names
    body: bytes

    def json(self):
        return json.loads(self.body)


class Server:
    def __init__(self, proc: subprocess.Popen, url: str, lines: queue.Queue) -> None:
        self.proc = proc
        self.url = url.split("?", 1)[0].rstrip("/")
        parts = urlsplit(self.url)
        self.host, self.port = parts.hostname, parts.port
        self._lines = lines
        self.output: list[str] = []

    def request(self, method: str, path: str, params: dict | None = None, *, headers: dict | None = None,
                body: bytes | None = None, timeout: float = 120) -> Response:
        query = f"?{urlencode(params, doseq=True)}" if params else ""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            conn.request(method, path + query, body=body, headers=headers or {})
            r = conn.getresponse()
            return Response(r.status, {k.lower(): v for k, v in r.getheaders()}, r.read())
        finally:
            conn.close()

    def get(self, path: str, params: dict | None = None, **kwargs) -> Response:
        return self.request("GET", path, params, **kwargs)

    def upload(self, path: str, data: bytes, filename: str = "upload.jpg", params: dict | None = None,
               headers: dict | None = None) -> Response:
        boundary = "clipsearch-test-boundary"
        head = (f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="{filename}"\r\n'
                "Content-Type: application/octet-stream\r\n\r\n")
        body = head.encode() + data + f"\r\n--{boundary}--\r\n".encode()
        return self.request("POST", path, params, body=body, headers={
            "Content-Type": f"multipart/form-data; boundary={boundary}", **(headers or {})})

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> tuple[int, str]:
        """Stop with `sig`; the exit code and everything the server printed."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            code = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait(timeout=timeout)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            try:
                line = self._lines.get(timeout=0.2)
            except queue.Empty:
                continue
            if line is None:
                break
            self.output.append(line)
        return code, "".join(self.output)


def command(*args) -> list[str]:
    return [sys.executable, "-c", "from clipsearch.cli.commands import main; main()", *map(str, args)]


def environment(**extra: str) -> dict[str, str]:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1", **extra}


def start(db: Path, *args, env: dict | None = None) -> Server:
    """`clipsearch serve --db DB --port 0 ARGS`, once it prints its address."""
    proc = subprocess.Popen(command("serve", "--db", db, "--port", "0", *args), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=env or environment())
    lines: queue.Queue = queue.Queue()

    def pump() -> None:
        for line in proc.stdout:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=pump, daemon=True).start()
    seen: list[str] = []
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        try:
            line = lines.get(timeout=0.5)
        except queue.Empty:
            continue
        if line is None:
            break
        seen.append(line)
        if "stops it" in line:  # the banner's last line
            url = next(s.split()[-1] for s in seen if s.strip().startswith("gallery"))
            server = Server(proc, url, lines)
            server.output = seen
            return server
    proc.kill()
    raise AssertionError("clipsearch serve did not start:\n" + "".join(seen))


def free_port() -> int:
    """A loopback port nothing listens on (right now)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def index_samples(root: Path, model_dir: Path, labels: str, *tag_options: str) -> tuple[Path, Path]:
    """(photos, db): a copy of sample_images/ under `root`, indexed with the model in `model_dir`
    (a folder a fresh server process can load) and tagged with `labels`."""
    from conftest import SAMPLES
    from typer.testing import CliRunner

    from clipsearch.cli.commands import app

    photos, db = root / "photos", root / "db"
    shutil.copytree(SAMPLES, photos, ignore=shutil.ignore_patterns("*.md"))
    for args in (["index", photos, "--db", db, "--model", f"local-dir:{model_dir}", "-q"],
                 ["tag", "--db", db, "--labels", labels, "--threshold", "0.4", *tag_options]):
        r = CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False)
        assert r.exit_code == 0, r.output
    return photos, db


def run_cli(*args, env: dict | None = None) -> tuple[int, str, str, list[str]]:
    """(exit code, stdout, stderr without the probe's line, heavy modules imported) of a new
    `clipsearch` process."""
    r = subprocess.run([sys.executable, "-c", PROBE, *map(str, args)], capture_output=True, text=True,
                       env=env or environment(), timeout=300)
    lines = r.stderr.splitlines()
    probe = next(line for line in reversed(lines) if line.startswith("heavy: "))
    rest = "\n".join(line for line in lines if line != probe and "No pretrained weights" not in line)
    return r.returncode, r.stdout, rest, [m for m in probe[len("heavy: "):].split(",") if m]


@contextlib.contextmanager
def in_process(db: Path) -> Iterator[Server]:
    """The index at `db` behind a real HTTP server in this process (uvicorn on a free port, in a
    thread): no model load in a second process, for tests that only need the API."""
    import uvicorn

    from clipsearch.server.app import ServedIndex, create_app

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(ServedIndex(db, device="cpu")), host="127.0.0.1",
                                           port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    for _ in range(200):  # bounded: up in well under 20 s
        if server.started:
            break
        threading.Event().wait(0.1)
    assert server.started
    try:
        yield Server(None, f"http://127.0.0.1:{port}", None)
    finally:
        server.should_exit = True
        thread.join(timeout=30)
