"""`clipsearch serve --watch` as a real process over real file-system events: photos copied in,
written slowly, renamed, deleted, replaced; a root that vanishes and comes back; a burst killed
with -9 and caught up; the CLI's writing commands handed to the server. Each change is checked
against the exact rows (path, content hash) it must leave."""

from __future__ import annotations

import json
import re
import shutil
import signal
import time
from pathlib import Path

import pytest
import serving
from PIL import Image
from typer.testing import CliRunner

from clipsearch.cli.commands import app
from clipsearch.media.images import content_hash
from clipsearch.server import client
from clipsearch.store.table import Store

LABELS = "rocket,cat,horse,flower,stone,sky,coffee"
SETTLE = "0.5"
WAIT = 60  # seconds: the longest any change may take to show on a busy 2-core machine


def rows(db: Path) -> dict[str, str]:
    table = Store.open(db).read(["path", "hash"])
    paths = table.column("path").to_pylist()
    assert len(set(paths)) == len(paths), "a path has two rows"
    return dict(zip(table.column("path").to_pylist(), table.column("hash").to_pylist(), strict=True))


def photo(path: Path, seed: int, size=(80, 60)) -> str:
    """A new photo (distinct content per seed) written at `path`; its content hash."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, ((seed * 37) % 256, (seed * 91) % 256, (seed * 53) % 256)).save(path)
    return content_hash(path.read_bytes())


def until(check, what: str, limit: float = WAIT):
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if result := check():
            return result
        time.sleep(0.1)
    raise AssertionError(f"not within {limit} s: {what}")


def settled(db: Path, expected: dict[str, str], what: str) -> None:
    until(lambda: rows(db) == expected, what)
    assert rows(db) == expected, what


class Live:
    """The watching server of this module (replaced when a test kills it)."""

    def __init__(self, photos: Path, db: Path) -> None:
        self.photos, self.db = photos, db
        self.server = self.start()

    def start(self):
        running = serving.start(self.db, "--watch", "--settle", SETTLE, "--rescan-every", "0")
        until(lambda: running.get("/api/status").json()["state"] == "watching", "watching")
        return running

    def status(self) -> dict:
        return self.server.get("/api/status").json()

    def idle(self) -> dict:
        """The status once nothing is queued or being indexed (its totals then count every commit)."""
        return until(lambda: (s := self.status())["state"] == "watching" and not s["queued"] and s,
                      "the watcher idle")


@pytest.fixture(scope="module")
def live(tmp_path_factory, tiny_local_dir):
    photos, db = serving.index_samples(tmp_path_factory.mktemp("watched"), tiny_local_dir, LABELS)
    running = Live(photos, db)
    yield running
    code, output = running.server.stop(signal.SIGTERM)
    assert code == 0, output
    assert "clipsearch serve stopped" in output


def test_a_new_photo_is_found_through_the_server(live):
    before = rows(live.db)
    new = live.photos / "new" / "beach.png"
    expected = {**before, str(new): photo(new, 1)}
    settled(live.db, expected, "a photo copied in")
    hits = until(lambda: [h for h in live.server.get("/api/search", {"q": "beach", "k": 100}).json()["hits"]
                          if h["path"] == str(new)], "the new photo among the server's hits")
    assert hits[0]["tags"] is not None
    status = live.status()
    assert status["images"] == len(expected) and status["last_commit"]["added"] == 1
    assert status["roots"] == [str(live.photos)] and status["offline"] == {}


def test_a_slow_write_is_indexed_once_whole(live):
    before = rows(live.db)
    path = live.photos / "slow.png"
    source = live.photos.parent / "slow-source.png"
    final = photo(source, 2, size=(400, 300))
    data = source.read_bytes()
    with open(path, "wb") as f:  # a copy over a slow link: chunks with pauses shorter than the settle time
        for i in range(4):
            f.write(data[i * len(data) // 4:(i + 1) * len(data) // 4])
            f.flush()
            time.sleep(0.2)
    settled(live.db, {**before, str(path): final}, "a file written slowly")
    assert not any(s["path"] == str(path) for s in live.status()["skipped"])


def test_renames_moves_and_deletes_cost_no_model_time(live):
    before, embedded = rows(live.db), live.idle()["totals"]["embedded"]
    (live.photos / "new").rename(live.photos / "holiday")  # a whole folder renamed
    (live.photos / "slow.png").rename(live.photos / "holiday" / "slow.png")  # a file moved
    gone = next(p for p in before if p.endswith(".webp"))
    Path(gone).unlink()
    expected = {p.replace("/new/", "/holiday/"): h for p, h in before.items() if p != gone}
    expected[str(live.photos / "holiday" / "slow.png")] = expected.pop(str(live.photos / "slow.png"))
    settled(live.db, expected, "a renamed folder, a moved file, a deleted one")
    assert live.idle()["totals"]["embedded"] == embedded


def test_replaced_content_gets_its_own_hash(live):
    path = live.photos / "holiday" / "beach.png"
    expected = {**rows(live.db), str(path): photo(path, 3)}
    settled(live.db, expected, "a photo whose content was replaced")


def test_a_sidecar_written_in_lightroom_is_read_without_embedding(live):
    from benchmarks.words import sidecar

    embedded = live.idle()["totals"]["embedded"]
    flower = live.photos / "travel" / "flower.jpg"
    (flower.parent / "flower.xmp").write_text(sidecar(["edelweiss"]))  # Lightroom's name for it

    def first():
        hits = live.server.get("/api/search", {"q": "edelweiss", "k": 1}).json()["hits"]
        return hits and hits[0]["path"] == str(flower) and hits[0]

    assert until(first, "the keyword found")["words"] == {"keywords": ["edelweiss"]}
    assert live.idle()["totals"]["embedded"] == embedded


def test_a_vanished_root_is_offline_and_comes_back_without_embedding(live):
    before, embedded = rows(live.db), live.idle()["totals"]["embedded"]
    away = live.photos.parent / "unplugged"
    live.photos.rename(away)
    offline = until(lambda: live.status()["offline"], "the root reported offline")
    assert str(live.photos) in offline and "missing" in offline[str(live.photos)]["why"]
    info = live.server.get("/api/info").json()
    assert str(live.photos) in info["offline"]
    assert rows(live.db) == before
    away.rename(live.photos)
    until(lambda: live.status()["offline"] == {}, "the root back online")
    assert rows(live.db) == before and live.idle()["totals"]["embedded"] == embedded
    new = live.photos / "after.png"  # and it is watched again
    settled(live.db, {**before, str(new): photo(new, 4)}, "a photo in the root that came back")


def test_the_cli_hands_writing_commands_to_the_server(live, tmp_path):
    other = tmp_path / "scans"
    made = {str(other / f"{i}.png"): photo(other / f"{i}.png", 10 + i) for i in range(3)}
    expected = {**rows(live.db), **made}
    r = CliRunner().invoke(app, ["index", str(other), "--db", str(live.db), "-q"])
    assert r.exit_code == 0, r.output
    assert "handing this run to clipsearch serve --watch" in r.output and "added 3" in r.output
    assert rows(live.db) == expected
    assert str(other) in live.status()["roots"]
    more = tmp_path / "more"
    made = {str(more / f"{i}.png"): photo(more / f"{i}.png", 20 + i) for i in range(2)}
    r = CliRunner().invoke(app, ["index", str(more), "--db", str(live.db)])  # its progress followed
    assert r.exit_code == 0 and "added 2" in r.output, r.output
    # the job's own scan, said once: not "found 0 images" before the job said anything
    assert "found 0 images" not in r.output and r.output.count("found ") <= 1, r.output
    expected.update(made)
    r = CliRunner().invoke(app, ["index", str(live.photos), "--db", str(live.db), "-q"])
    assert r.exit_code == 0 and "keeps this index in step with" in r.output and "nothing to do" in r.output
    r = CliRunner().invoke(app, ["tag", "--db", str(live.db), "--labels", "sky,stone", "--threshold", "0"])
    assert r.exit_code == 0 and f"of {len(expected)} images with 2 labels" in r.output, r.output
    tags = live.server.get("/api/tags").json()["tags"]
    assert {t["label"] for t in tags} <= {"sky", "stone"} and tags
    new = other / "3.png"  # a folder handed over is watched from then on
    settled(live.db, {**expected, str(new): photo(new, 13)}, "a photo in a folder handed over")
    r = CliRunner().invoke(app, ["optimize", "--db", str(live.db)])
    assert r.exit_code == 0, r.output


def test_a_device_or_a_pipe_named_as_a_photo_never_stalls_the_watcher(live):
    """`x.jpg -> /dev/zero` would read forever and a FIFO would block the open: both are skipped
    with their reason, and the photo written after them is found as any other."""
    import os

    folder = live.photos / "hostile"
    folder.mkdir()
    (folder / "zero.jpg").symlink_to("/dev/zero")
    os.mkfifo(folder / "pipe.jpg")
    after = folder / "after.png"
    try:
        settled(live.db, {**rows(live.db), str(after): photo(after, 30)}, "the photo after them")
        skipped = {s["path"]: s["reason"] for s in live.idle()["skipped"]}
        assert skipped.get(str(folder / "pipe.jpg"), "").startswith("not a regular file"), skipped
        assert skipped.get(str(folder / "zero.jpg"), "").startswith("not a regular file"), skipped
    finally:
        for name in ("zero.jpg", "pipe.jpg"):
            (folder / name).unlink()


def test_sidecars_turned_off_through_the_server_stay_off(live):
    """`tag --no-write-xmp` handed to a watching server: the photos it finds after that get no
    sidecar, and the index remembers the choice."""
    def tag(*flags: str) -> None:
        r = CliRunner().invoke(app, ["tag", "--db", str(live.db), "--labels", LABELS, "--threshold", "0",
                                     *flags])
        assert r.exit_code == 0, r.output

    folder = live.photos / "sidecars"
    tag("--write-xmp")
    on = folder / "on.png"
    settled(live.db, {**rows(live.db), str(on): photo(on, 20)}, "a photo while sidecars are on")
    until(lambda: Path(f"{on}.xmp").is_file(), "the new photo's sidecar")
    tag("--no-write-xmp")
    off = folder / "off.png"
    settled(live.db, {**rows(live.db), str(off): photo(off, 21)}, "a photo once they are off")
    live.idle()
    assert not Path(f"{off}.xmp").exists()
    assert Store.open(live.db).manifest.xmp_sidecars is False


def test_state_changes_from_other_sites_are_refused(live):
    body = b'{"kind": "optimize"}'
    for headers in ({"Origin": "https://evil.example"}, {"Sec-Fetch-Site": "cross-site"}, {"Origin": "null"}):
        r = live.server.request("POST", "/api/jobs", body=body,
                                headers={"Content-Type": "application/json", **headers})
        assert r.status == 403 and r.json()["error"].startswith("refused"), headers
    r = live.server.request("POST", "/api/jobs", body=body, headers={
        "Content-Type": "application/json", "Origin": f"http://127.0.0.1:{live.server.port}",
        "Sec-Fetch-Site": "same-origin", **_writer(live)})
    assert r.status == 202 and r.json()["kind"] == "optimize"


def _writer(live) -> dict:
    return {"Authorization": f"Bearer {client.read(live.db).secret}"}


def test_jobs_need_the_local_secret_and_never_open_a_path_they_name(live, tmp_path):
    """Reading the gallery is not enough to change the index; a job's labels arrive as text."""
    def post(job: dict, headers: dict) -> tuple[int, dict]:
        r = live.server.request("POST", "/api/jobs", body=json.dumps(job).encode(),
                                headers={"Content-Type": "application/json", **headers})
        return r.status, r.json()

    secret = client.read(live.db).secret
    for headers in ({}, {"Cookie": f"clipsearch_token={secret}"}):  # a cookie the browser adds by itself
        status, answer = post({"kind": "optimize"}, headers)
        assert status == 403 and "needs the local secret the clipsearch CLI sends" in answer["error"], answer
    status, answer = post({"kind": "tag", "labels_file": "/etc/passwd"}, _writer(live))
    assert status == 422 and answer["error"].startswith("tag.labels_file: Unexpected keyword"), answer
    labels = tmp_path / "labels.txt"
    labels.write_text("# what the CLI reads and sends\nsky: a photo of the sky\nstone\n", encoding="utf-8")
    r = CliRunner().invoke(app, ["tag", "--db", str(live.db), "--labels-file", str(labels),
                                 "--threshold", "0"])
    assert r.exit_code == 0 and "with 2 labels" in r.output, r.output
    assert {t["label"] for t in live.server.get("/api/tags").json()["tags"]} == {"sky", "stone"}
    r = CliRunner().invoke(app, ["tag", "--db", str(live.db), "--labels", LABELS, "--threshold", "0.4"])
    assert r.exit_code == 0, r.output  # the module's labels again


def test_each_job_kind_is_one_typed_request_that_client_and_server_share(live):
    """What the CLI's client sends is read back by the server into the same class; a request
    that is not one of them is refused before anything is queued, naming the field."""
    from dataclasses import asdict

    from pydantic import TypeAdapter

    from clipsearch.build import jobs
    from clipsearch.server.live import JobIn

    sent = [jobs.IndexJob(["/p"], ["*/tmp/*"], True), jobs.TagJob("sky,sea", None, 0.3, 2, True, True),
            jobs.CaptionJob(["/p"], 5, None, "m", "bf16", False), jobs.CaptionJob(show="IMG_1.jpg"),
            jobs.OptimizeJob(), jobs.ForgetJob(["/p/a.jpg"]), jobs.MoveJob("/old", "/new"),
            jobs.RemoveRootJob("/p"), jobs.IncludeJob("*/tmp/*")]
    assert {type(j) for j in sent} == set(jobs.JOBS)
    read = TypeAdapter(JobIn)
    assert [read.validate_json(json.dumps(asdict(j))) for j in sent] == sent

    def post(job: dict) -> tuple[int, str]:
        r = live.server.request("POST", "/api/jobs", body=json.dumps(job).encode(),
                                headers={"Content-Type": "application/json", **_writer(live)})
        return r.status, r.json()["error"]

    assert post({"kind": "index", "folders": []}) == (400, "no folder given; say which folder to index")
    assert post({"kind": "caption", "limit": 0}) == (400, "--limit must be at least 1, not 0")
    assert post({"kind": "forget", "paths": ["/p"] * 1001}) == (400, "1001 paths in one job; at most 1000")
    status, error = post({"kind": "move", "old": "/old"})
    assert status == 422 and error.startswith("move.new: Field required"), error
    status, error = post({"kind": "move", "folders": ["/old", "/new"]})  # the old wire form
    assert status == 422 and error.startswith("move.old: Field required"), error
    status, error = post({"kind": "reindex"})
    assert status == 422 and "'reindex'" in error, error


def test_a_job_is_cancelled_at_its_next_safe_point(live, tmp_path):
    folder = tmp_path / "cancelled"
    for i in range(300):
        photo(folder / f"{i}.png", 1000 + i, size=(48, 32))
    before = rows(live.db)
    r = live.server.request("POST", "/api/jobs", body=json.dumps({"kind": "index", "folders": [str(folder)]})
                            .encode(), headers={"Content-Type": "application/json", **_writer(live)})
    assert r.status == 202, r.body
    job = r.json()["id"]
    assert live.server.request("DELETE", f"/api/jobs/{job}").status == 403  # cancelling writes too
    assert live.server.request("DELETE", f"/api/jobs/{job}", headers=_writer(live)).status == 200
    state = lambda: live.server.get(f"/api/jobs/{job}").json()  # noqa: E731
    final = until(lambda: (j := state())["state"] not in ("queued", "running") and j, "the job ended")
    assert final["state"] == "cancelled" and final["result"] is None
    now = rows(live.db)  # what it committed stays, once each; the library's rows are untouched
    assert {p: h for p, h in now.items() if p in before} == before
    assert len(now) - len(before) < 300 and str(folder) not in live.status()["roots"]
    assert live.server.get("/api/jobs/999").status == 404


def test_a_burst_killed_with_sigkill_is_caught_up_exactly(live):
    before = rows(live.db)
    source = live.photos.parent / "burst-source"
    made = {f"{i}.png": photo(source / f"{i}.png", 100 + i, size=(48, 32)) for i in range(500)}
    shutil.copytree(source, live.photos / "burst")  # 500 photos at once
    until(lambda: live.status()["state"] == "indexing", "the burst being indexed", limit=20)
    live.server.stop(signal.SIGKILL)
    live.server = live.start()  # the start's rescan catches up what the killed run had not committed
    expected = {**before, **{str(live.photos / "burst" / name): h for name, h in made.items()}}
    settled(live.db, expected, "every photo of the burst, once")


# -- in this process: a Watcher over a Builder, as serve --watch and index --watch run it ----------
def _watching(builder, roots, **options):
    """(watcher, stop, thread, notes) of a Watcher running in a thread."""
    import threading

    from clipsearch.build.watch import Watcher

    notes: list[str] = []
    watcher = Watcher(builder, roots, settle=0.3, rescan_every=None, note=notes.append, **options)
    stop = threading.Event()
    thread = threading.Thread(target=watcher.run, args=(stop,), daemon=True)
    thread.start()
    until(lambda: watcher.status()["state"] == "watching", "watching")
    return watcher, stop, thread, notes


def test_a_root_inside_a_hidden_folder_is_watched_and_the_job_queue_is_bounded(tmp_path, embedder):
    from test_change import _write, stub

    from clipsearch import index_folders
    from clipsearch.build.builder import open_builder
    from clipsearch.build.watch import JOBS_QUEUED, Watcher
    from clipsearch.errors import BadInputError

    db, root = tmp_path / "db", tmp_path / ".local" / "photos"  # hidden above the root, not in it
    root.mkdir(parents=True)
    index_folders([root], db, embedder=embedder)
    with open_builder(db, fanout=stub(Store.open(db).manifest.dim), workers=0) as builder:
        watcher, stop, thread, _ = _watching(builder, [str(root)])
        try:
            path = _write(root, "a.jpg")
            _write(root / ".thumbnails", "b.jpg")  # hidden below the root: not a photo of the library
            settled(db, {path: content_hash(Path(path).read_bytes())}, "a photo in a hidden folder's root")
        finally:
            stop.set()
            thread.join(30)
        idle = Watcher(builder, [str(root)])  # not running: its jobs only wait
        for _ in range(JOBS_QUEUED):
            idle.submit("optimize", lambda _progress: {})
        with pytest.raises(BadInputError, match=f"{JOBS_QUEUED} jobs are waiting already"):
            idle.submit("optimize", lambda _progress: {})


def test_an_index_from_an_earlier_release_is_watched_and_takes_changes(tmp_path):
    from test_change import _write, stub
    from test_legacy_index import FIXTURE

    from clipsearch.build.builder import open_builder

    db = tmp_path / "db"
    shutil.copytree(FIXTURE / "db", db)
    legacy = rows(db)
    new = tmp_path / "new"
    new.mkdir()
    with open_builder(db, fanout=stub(Store.open(db).manifest.dim), workers=0) as builder:
        # (its own root, /tmp/legacy/photos, is not on this machine: test_offline covers that)
        watcher, stop, thread, _ = _watching(builder, [])
        try:
            job = watcher.submit("index", lambda progress: watcher.add_roots([str(new)], progress,
                                                                            keep_empty=True).to_dict())
            until(lambda: job.state == "done", "the folder added")
            path = _write(new, "a.jpg")
            expected = {**legacy, path: content_hash(Path(path).read_bytes())}
            settled(db, expected, "a photo in the legacy index")
            assert watcher.status()["roots"] == [str(new)]
        finally:
            stop.set()
            thread.join(30)


def test_a_folder_the_system_will_not_watch_is_polled_and_said_so(tmp_path, monkeypatch, embedder):
    import errno

    import watchdog.observers

    import clipsearch.build.watch
    from clipsearch.build.builder import open_builder

    class Exhausted(watchdog.observers.Observer):
        def schedule(self, *args, **kwargs):
            raise OSError(errno.ENOSPC, "inotify watch limit reached")

    monkeypatch.setattr(watchdog.observers, "Observer", Exhausted)
    monkeypatch.setattr(clipsearch.build.watch, "FALLBACK_POLL", 0.3)
    photos, db = tmp_path / "photos", tmp_path / "db"
    first = photo(photos / "first.png", 20)
    with open_builder(db, embedder=embedder, workers=0) as builder:
        watcher, stop, thread, notes = _watching(builder, [str(photos)])
        try:
            assert "fs.inotify.max_user_watches" in watcher.status()["polled"][str(photos)]
            assert any("checked for changes every 0.3 s" in n and "max_user_watches" in n for n in notes)
            second = photo(photos / "sub" / "second.png", 21)
            settled(db, {str(photos / "first.png"): first, str(photos / "sub" / "second.png"): second},
                    "a photo found by polling")
        finally:
            stop.set()
            thread.join(30)


def test_index_watch_keeps_going_until_ctrl_c(tmp_path, tiny_local_dir):
    import queue
    import subprocess
    import threading

    photos, db = tmp_path / "photos", tmp_path / "db"
    first = photo(photos / "first.png", 30)
    args = ["index", photos, "--db", db, "--model", f"local-dir:{tiny_local_dir}", "--watch", "--settle=.3"]
    proc = subprocess.Popen(serving.command(*args, "-q"), stderr=subprocess.STDOUT, stdout=subprocess.PIPE,
                            text=True, env=serving.environment())
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in proc.stdout], daemon=True).start()
    seen: list[str] = []

    def said(text: str) -> bool:
        while not lines.empty():
            seen.append(lines.get())
        return any(text in line for line in seen)

    try:
        until(lambda: said("for changes; Ctrl-C stops"), "index --watch watching", limit=120)
        assert said("added 1")
        second = photo(photos / "second.png", 31)
        settled(db, {str(photos / "first.png"): first, str(photos / "second.png"): second}, "a photo added")
        # each commit says what it did, naming the paths when there are few (not when the watcher's
        # start-up scan, which names none, was the one that found it)
        line = re.compile(rf"^\d\d:\d\d:\d\d added 1(: {re.escape(str(photos / 'second.png'))})?$")
        committed = lambda: said("") and any(line.match(text.strip()) for text in seen)  # noqa: E731
        until(committed, "the commit's line", limit=30)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 0
    finally:
        proc.kill()
    assert said("stopped watching; everything found is committed"), seen


def test_a_watcher_leaves_out_what_an_index_run_excluded(tmp_path, embedder):
    from test_change import _write, stub

    from clipsearch import index_folders
    from clipsearch.build.builder import open_builder

    db, root = tmp_path / "db", tmp_path / "photos"
    kept = _write(root, "a.jpg")
    index_folders([root], db, embedder=embedder, exclude=["Private"])
    with open_builder(db, fanout=stub(Store.open(db).manifest.dim), workers=0) as builder:
        watcher, stop, thread, _ = _watching(builder, [str(root)])  # no --exclude of its own
        try:
            _write(root / "Private", "p.jpg")
            later = _write(root, "b.jpg")
            expected = {p: content_hash(Path(p).read_bytes()) for p in (kept, later)}
            settled(db, expected, "the photo outside the excluded folder, and only it")
            builder.index([str(root)])  # a rescan, as at a watching server's start
            assert rows(db) == expected
        finally:
            stop.set()
            thread.join(30)
