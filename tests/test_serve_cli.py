"""The CLI and a running server: `search` and `similar` go through the server when one runs for
the same index, print exactly what an in-process run prints, and never import the heavy
libraries on that path; a stale or foreign discovery file falls back silently. Also the token."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys

import pytest
import serving
from typer.testing import CliRunner

from clipsearch.cli.commands import app

pytestmark = pytest.mark.slow
run_cli = serving.run_cli


def in_process(*args) -> tuple[int, str, str]:
    """The same command with --no-server, in this process (a model loads in a fraction of the
    time a new process takes to import torch)."""
    r = CliRunner().invoke(app, [*map(str, args), "--no-server"], catch_exceptions=False)
    rest = "\n".join(line for line in r.stderr.splitlines() if "No pretrained weights" not in line)
    return r.exit_code, r.stdout, rest


@pytest.fixture(scope="module")
def library(tmp_path_factory, tiny_local_dir):
    return serving.index_samples(tmp_path_factory.mktemp("cli-served"), tiny_local_dir, "sky,flower,stone")


@pytest.fixture(scope="module")
def server(library, tiny_blip_dir):
    running = serving.start(library[1], "--rerank-model", tiny_blip_dir)
    yield running
    code, output = running.stop(signal.SIGINT)  # Ctrl-C: a clean stop too
    assert code == 0, output
    assert "clipsearch serve stopped" in output and "Traceback" not in output


def test_search_and_similar_print_the_same_through_the_server(server, library, tiny_blip_dir):
    photos, db = library
    queries = [
        ("search", "a photo of a rocket"),
        ("search", "a photo of a rocket", "--json", "-k", 5),
        ("search", "stone", "--paths", "-k", 13),
        ("search", "stone", "+", "wall", "-", "sky", "--json"),
        ("search", "stone", "--in", photos / "textures", "--ext", "png", "--json"),
        ("search", "x", "--tag", "sky", "--after", "2000", "--json"),
        ("search", "a red car", "--rerank", "--rerank-model", tiny_blip_dir, "-k", 3),
        ("search", "a red car", "--min-match", "0.2", "--rerank-model", tiny_blip_dir, "--json"),
        ("similar", photos / "space" / "rocket.jpg", "--json", "-k", 4),
        ("similar", photos / "travel" / "flower.jpg", "--ext", "jpg", "--paths"),
        ("search", "nothing matches this", "--min-match", "1", "--rerank-model", tiny_blip_dir, "--json"),
    ]
    for args in queries:
        remote = run_cli(*args, "--db", db)
        local = in_process(*args, "--db", db)
        assert remote[0] == local[0] == 0, (args, remote, local)
        assert remote[1] == local[1], args  # byte for byte
        assert remote[2] == local[2], args
        assert remote[3] == [], (args, remote[3])  # through the server: nothing heavy imported
    local = run_cli(*queries[1], "--db", db, "--no-server")
    assert local[1] == run_cli(*queries[1], "--db", db)[1]
    assert "torch" in local[3]  # --no-server is a real in-process run
    assert json.loads(run_cli("search", "a red car", "--rerank", "--rerank-model", tiny_blip_dir,
                              "--json", "--db", db)[1])[0]["itm"] is not None


def test_errors_are_the_same_through_the_server(server, library, tmp_path):
    _, db = library
    cases = [('"beach" + "sun',), ("cat", "--after", "last week"), ("cat", "--tag", "nope"),
             ("cat", "--in", tmp_path / "nope"), ("cat", "-k", 5000, "--json", "--paths")]
    for args in cases:
        remote = run_cli("search", *args, "--db", db)
        local = in_process("search", *args, "--db", db)
        assert remote[:3] == local, args
        assert remote[0] == 2 and remote[2].startswith("error: "), (args, remote)
        assert remote[3] == [], args  # told at once, by the server's engine


def test_asks_beyond_the_servers_limits_are_answered_in_process(server, library):
    _, db = library
    remote = run_cli("search", "x" * 1001, "-k", 2, "--json", "--db", db)
    assert remote[0] == 0 and len(json.loads(remote[1])) == 2
    assert "torch" in remote[3]


def test_image_terms_and_other_settings_are_answered_in_process(server, library):
    photos, db = library
    for args in [("search", f"{photos / 'space' / 'rocket.jpg'} + \"at night\"", "--json"),
                 ("search", "a rocket", "--precision", "bf16", "--json")]:
        remote = run_cli(*args, "--db", db)
        assert remote[0] == 0 and json.loads(remote[1]), (args, remote)
        assert "torch" in remote[3], args  # the server could not have given these results


@pytest.mark.parametrize("fake", ["dead pid", "nothing listening", "another process", "garbage"])
def test_a_stale_or_foreign_discovery_file_falls_back_silently(server, library, tmp_path, fake, monkeypatch):
    _, db = library
    copy = tmp_path / "db"
    shutil.copytree(db, copy, ignore=shutil.ignore_patterns("server.json"))
    real = json.loads((db / "server.json").read_text())
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    free = serving.free_port()
    stale = {
        "dead pid": {**real, "pid": int(dead), "db": str(copy)},
        "nothing listening": {**real, "pid": os.getpid(), "url": f"http://127.0.0.1:{free}", "db": str(copy)},
        # a live server, but for another index: it must not answer for this one
        "another process": {**real, "pid": os.getpid(), "db": str(copy)},
    }.get(fake)
    (copy / "server.json").write_text(json.dumps(stale) if stale else "{not json")
    local = in_process("search", "a cat", "--json", "--db", copy)
    if fake == "another process":  # the whole way, in a new process: answered in it, not by the server
        remote = run_cli("search", "a cat", "--json", "--db", copy)
        assert remote[:3] == local
        assert remote[2] == ""  # silently
        assert "torch" in remote[3]
        return
    from clipsearch.server import client

    found = []

    def find(*args):
        found.append(real_find(*args))
        return found[-1]

    real_find = client.find
    monkeypatch.setattr(client, "find", find)
    r = CliRunner().invoke(app, ["search", "a cat", "--json", "--db", str(copy)], catch_exceptions=False)
    assert found == [None]  # the discovery file was read and refused: answered in this process
    assert (r.exit_code, r.stdout) == local[:2]
    assert r.stderr == ""  # silently


def test_a_token_protects_the_server_and_the_cli_still_finds_it(library, tmp_path):
    _, db = library
    copy = tmp_path / "db"
    shutil.copytree(db, copy, ignore=shutil.ignore_patterns("server.json"))
    token = "correct-horse-battery-staple"
    running = serving.start(copy, "--token", token)
    try:
        assert f"gallery  http://127.0.0.1:{running.port}/?token={token}" in "".join(running.output)
        assert running.get("/api/info").status == 401
        assert running.get("/api/health").json()["error"].startswith("this server needs its token")
        wrong = {"Authorization": "Bearer wrong-token-wrong-token"}
        assert running.get("/api/info", headers=wrong).status == 401
        assert running.get("/api/info", headers={"Authorization": f"Bearer {token}"}).status == 200
        # the printed address: a login page that hands the token to the origin's service worker
        # (test_gallery follows it in a browser); no cookie, which every port of the host would get
        login = running.get("/", {"token": token, "q": "cat"})
        assert login.status == 200 and "set-cookie" not in login.headers
        assert b'src="/static/login.js"' in login.body and login.headers["cache-control"] == "no-store"
        assert "script-src 'self'" in login.headers["content-security-policy"]
        for public in ("/sw.js", "/static/login.js"):  # what logging in needs before the token
            assert running.get(public).status == 200, public
        assert running.get("/static/gallery.js").status == 401
        # the worker's header: the token percent-encoded
        assert running.get("/api/info", headers={"Authorization": f"Bearer {token}"}).status == 200
        # where no service worker runs, the page asks for the cookie: named with the port
        landing = running.get("/", {"token": token, "q": "cat", "cookie": "1"})
        assert landing.status == 303 and landing.headers["location"] == "/?q=cat"  # the token leaves the URL
        cookie = landing.headers["set-cookie"]
        assert cookie.startswith(f"clipsearch_token_{running.port}=")
        assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
        jar = cookie.split(";", 1)[0]
        assert running.get("/api/images/0/thumbnail", headers={"Cookie": jar}).status == 200
        assert running.get("/", headers={"Cookie": f"clipsearch_token_{running.port}=nope"}).status == 401
        other_port = jar.replace(f"_{running.port}=", f"_{running.port + 1}=")  # another server's
        assert running.get("/api/info", headers={"Cookie": other_port}).status == 401
        # browsers send every cookie of the host, whatever the port: another app's odd ones too
        for others in ("ga=GA1.1 2", 'j={"x":1}', "broken", 'q="unclosed', "x=1;;;"):
            for header in (f"{others}; {jar}", f"{jar}; {others}"):
                assert running.get("/api/info", headers={"Cookie": header}).status == 200, header
        remote = run_cli("search", "a cat", "--json", "--db", copy)
        assert remote[0] == 0 and remote[3] == []  # through the server, by the discovery secret
    finally:
        code, output = running.stop()  # SIGTERM (the fixture above stops its server with Ctrl-C)
    assert code == 0, output
    assert "clipsearch serve stopped" in output and "Traceback" not in output


def test_any_printable_token_logs_in_from_the_printed_address(library, tmp_path):
    from urllib.parse import quote, urlsplit

    _, db = library
    copy = tmp_path / "db"
    shutil.copytree(db, copy, ignore=shutil.ignore_patterns("server.json"))
    token = 'a;b,c"d\\e+f&g=h%20i€ü-0123456789'  # cookie separators, URL syntax, non-Latin-1
    running = serving.start(copy, "--token", token)
    try:
        printed = next(line.split()[-1] for line in running.output if line.strip().startswith("gallery"))
        login = urlsplit(printed)
        assert login.query.startswith("token=") and " " not in printed and "€" not in printed
        page = running.request("GET", f"/?{login.query}")  # the address exactly as printed
        assert page.status == 200, page.body
        worker = f"Bearer {quote(token, safe='')}"  # what the service worker sends
        assert running.get("/api/info", headers={"Authorization": worker}).status == 200
        landing = running.request("GET", f"/?{login.query}&cookie=1")  # the fallback
        assert landing.status == 303, landing.body
        cookie = landing.headers["set-cookie"]
        assert cookie.isascii() and "HttpOnly" in cookie
        jar = cookie.split(";", 1)[0]
        assert running.get("/api/info", headers={"Cookie": f"ga=GA1.1 2; {jar}"}).status == 200
        assert running.get("/api/info", headers={"Cookie": jar.replace("%2520", "%20")}).status == 401
        bearer = f"Bearer {token}".encode()  # what a client sends for a non-ASCII token: UTF-8
        assert running.get("/api/info", headers={"Authorization": bearer}).status == 200
        almost = b"Bearer " + token[:-1].encode()
        assert running.get("/api/info", headers={"Authorization": almost}).status == 401
    finally:
        code, output = running.stop()
    assert code == 0, output
    for bad in ("spaces in the middle of it", "tab\tin-the-token-here"):
        r = CliRunner().invoke(app, ["serve", "--db", str(copy), "--token", bad])
        assert r.exit_code == 2, r.output
        assert "the token holds a space or a control character; use printable characters only" in r.stderr
