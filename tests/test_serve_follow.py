"""A server follows its index: it starts before the index exists, sees each commit of an index
run in another process while it answers searches, and refuses files that are no longer what was
indexed. And off loopback, every request needs the token."""

from __future__ import annotations

import os
import shutil
import sys
import threading
import time

import serving
from conftest import SAMPLES
from helpers import start_writer
from typer.testing import CliRunner

from clipsearch import open_index
from clipsearch.cli.commands import app


def _index(photos, db, model_dir):
    r = CliRunner().invoke(app, ["index", str(photos), "--db", str(db), "--model", f"local-dir:{model_dir}",
                                 "-q"], catch_exceptions=False)
    assert r.exit_code == 0, r.output


def _id(running, path) -> int:
    hits = running.get("/api/search", {"q": "x", "k": 1000}).json()["hits"]
    return next(h["id"] for h in hits if h["path"] == str(path))


def test_the_server_follows_the_index_it_serves(tmp_path, tiny_local_dir, many_photos):
    photos = tmp_path / "photos"
    shutil.copytree(SAMPLES, photos, ignore=shutil.ignore_patterns("*.md"))
    db = tmp_path / "db"
    opened = tmp_path / "opened-url"
    browser = f"{sys.executable} -c \"import sys; open({str(opened)!r}, 'w').write(sys.argv[1])\" %s"
    running = serving.start(db, "--open", env=serving.environment(BROWSER=browser))
    try:
        banner = "".join(running.output)
        assert f"no index at {db} yet; build one with: clipsearch index FOLDER --db {db}" in banner
        assert "is not writable" not in banner and "once it is started after the first index run" in banner
        for _ in range(100):  # --open: the default browser is sent to the gallery once it listens
            if opened.exists() and opened.read_text():
                break
            time.sleep(0.1)
        assert opened.read_text() == f"http://127.0.0.1:{running.port}/"
        r = running.get("/api/info")
        assert r.status == 503 and r.json()["error"].startswith(f"no index at {db}; build one first")
        assert running.get("/api/search", {"q": "x"}).status == 503
        assert running.get("/api/health").json()["images"] is None
        assert running.get("/").status == 200

        _index(photos, db, tiny_local_dir)  # no restart: the next request sees it
        assert running.get("/api/info").json()["images"] == 13

        # an index run in another process, committing every 16 photos, searched all along
        writer = start_writer(many_photos, db, tiny_local_dir, pause=0.01)
        statuses, totals = [], []
        deadline = time.monotonic() + 180
        while writer.poll() is None and len(statuses) < 500 and time.monotonic() < deadline:
            r = running.get("/api/search", {"q": "a red square", "k": 5})
            statuses.append(r.status)
            totals.append(r.json()["total_considered"] if r.status == 200 else r.body)
            time.sleep(0.02)
        _, err = writer.communicate(timeout=180)
        assert writer.returncode == 0, err
        assert set(statuses) == {200}, totals
        assert totals == sorted(totals) and len(set(totals)) >= 3  # each commit seen, never undone
        assert running.get("/api/search", {"q": "x"}).json()["total_considered"] == 313
        assert running.get("/api/info").json()["roots"] == sorted([str(photos), str(many_photos)])
        new = _id(running, many_photos / "roll0" / "0.png")
        assert running.get(f"/api/images/{new}/thumbnail").status == 200

        # a file that changed since it was indexed is not served as the indexed image
        changed = photos / "travel" / "china.jpg"
        changed_id = _id(running, changed)
        shutil.copy(photos / "space" / "astronaut.jpg", changed)
        for what in ("file", "thumbnail"):
            r = running.get(f"/api/images/{changed_id}/{what}")
            assert r.status == 404, what
            assert r.json() == {"error": f"{changed} changed since it was indexed; run clipsearch index on "
                                         "its folder to bring the index up to date"}
        # nor one swapped for a link to a file outside the library
        secret = tmp_path / "secret.txt"
        secret.write_text("root:x:0:0 private")
        linked = photos / "textures" / "brick.png"
        linked_id = _id(running, linked)
        linked.unlink()
        os.symlink(secret, linked)
        r = running.get(f"/api/images/{linked_id}/file")
        assert r.status == 404 and b"private" not in r.body
        gone = photos / "misc" / "camera.bmp"
        gone_id = _id(running, gone)
        gone.unlink()
        r = running.get(f"/api/images/{gone_id}/file")
        assert r.status == 404 and "the file no longer exists" in r.json()["error"]

        # once re-indexed, the old ids are gone everywhere; the new rows have new ids
        linked.unlink()
        _index(photos, db, tiny_local_dir)
        for old in (changed_id, gone_id, linked_id):
            for path in (f"/api/images/{old}", f"/api/images/{old}/file", f"/api/images/{old}/thumbnail",
                         f"/api/similar/{old}"):
                r = running.get(path)
                assert r.status == 404 and "no image with id" in r.json()["error"], path
        assert _id(running, changed) != changed_id
        assert running.get(f"/api/images/{_id(running, changed)}/file").body == changed.read_bytes()
    finally:
        code, output = running.stop()
    assert code == 0, output


def test_off_loopback_every_request_needs_the_token(sample_index, embedder):
    """The rules a `--host 0.0.0.0 --token T` server applies, on a real server bound to loopback
    (tests never listen on other addresses)."""
    import uvicorn

    from clipsearch.server.app import ServedIndex, create_app
    from clipsearch.server.service import bind

    token = "t0ken-for-the-lan-123"
    app = create_app(ServedIndex(sample_index, index=open_index(sample_index, embedder=embedder)),
                     tokens=(token,), token_required=True, loopback_only=False)
    sock = bind("127.0.0.1", 0)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        for _ in range(200):
            if server.started:
                break
            time.sleep(0.05)
        running = serving.Server(None, f"http://127.0.0.1:{sock.getsockname()[1]}", None)
        lan = {"Host": "photos.example.lan:8765"}
        for path in ("/", "/api/health", "/api/search?q=cat", "/api/images/0/file", "/docs",
                     "/static/gallery.js"):
            r = running.get(path, headers=lan)
            assert r.status == 401, path
        bearer = {**lan, "Authorization": f"Bearer {token}"}
        assert running.get("/api/search", {"q": "cat"}, headers=bearer).status == 200
        assert running.get("/", {"token": token}, headers=lan).status == 200  # the login page
        # a page on a LAN address is no secure context: no service worker, so the cookie
        landing = running.get("/", {"token": token, "cookie": "1"}, headers=lan)
        assert landing.status == 303 and landing.headers["location"] == "/"
        cookie = landing.headers["set-cookie"].split(";", 1)[0]
        assert running.get("/api/images/0/file", headers={**lan, "Cookie": cookie}).status == 200
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()
