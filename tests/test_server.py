"""`clipsearch serve` as a real process on a free loopback port: every endpoint, every error
status, the security rules, and the server following an index run. The tiny random-weight models
are loaded from files, as a user's weights are."""

from __future__ import annotations

import io
import signal
import socket
import time

import pytest
import serving
from corpus import png_header_only
from PIL import Image, ImageOps
from typer.testing import CliRunner

from clipsearch import open_index
from clipsearch.cli.commands import app

LABELS = "rocket,cat,horse,flower,stone,sky,coffee"
ROCKET = "space/rocket.jpg"  # stored 427x640 with EXIF orientation 6: upright it is 640x427


def cli(*args):
    return CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture(scope="module")
def library(tmp_path_factory, tiny_local_dir):
    """sample_images/ indexed with a model a fresh process can load, and tagged."""
    return serving.index_samples(tmp_path_factory.mktemp("served"), tiny_local_dir, LABELS, "--top", "2")


@pytest.fixture(scope="module")
def server(library, tiny_blip_dir, tmp_path_factory):
    _, db = library
    cache = tmp_path_factory.mktemp("server-cache")
    running = serving.start(db, "--rerank-model", tiny_blip_dir,
                            env=serving.environment(CLIPSEARCH_CACHE=str(cache)))
    running.cache = cache
    yield running
    code, output = running.stop(signal.SIGTERM)
    assert code == 0, output
    assert "clipsearch serve stopped" in output
    assert not (db / "server.json").exists()  # withdrawn on the way out


@pytest.fixture(scope="module")
def index(library, tiny_blip_dir):
    """The same index opened in this process: what the CLI would answer."""
    return open_index(library[1], device="cpu", rerank_model=str(tiny_blip_dir))


def _path_of(library, name: str) -> str:
    return str(library[0] / name)


def _id_of(server, library, name: str) -> int:
    hits = server.get("/api/search", {"q": "x", "k": 13}).json()["hits"]
    return next(h["id"] for h in hits if h["path"] == _path_of(library, name))


# -- what serve prints, and the discovery file ----------------------------------------------------
def test_serve_says_where_what_and_how_to_stop(server, library):
    _, db = library
    banner = "".join(server.output)
    assert f"clipsearch is serving {db}: 13 images, local-dir:" in banner
    assert f"gallery  http://127.0.0.1:{server.port}/" in banner
    assert f"API      http://127.0.0.1:{server.port}/docs" in banner
    assert "Ctrl-C (or SIGTERM) stops it" in banner
    found = db / "server.json"
    assert found.stat().st_mode & 0o777 == 0o600  # it holds the secret
    health = server.get("/api/health").json()
    assert health["status"] == "ok" and health["index"] == str(db) and health["images"] == 13
    assert health["pid"] == server.proc.pid


# -- search --------------------------------------------------------------------------------------
def test_search_answers_what_the_engine_answers_with_ids_and_metadata(server, index, library):
    r = server.get("/api/search", {"q": "a rocket on its launch pad", "k": 5})
    assert r.status == 200 and r.headers["content-type"] == "application/json"
    page = r.json()
    expected = index.search("a rocket on its launch pad", k=5)
    assert [(h["path"], h["score"], h["rank"]) for h in page["hits"]] == [
        (h.path, h.score, h.rank) for h in expected]
    assert page["query"] == "a rocket on its launch pad" and page["total_considered"] == 13
    assert {"embed", "search", "tags", "total"} <= set(page["timing_ms"])
    records = index.records([h["id"] for h in page["hits"]])
    for hit in page["hits"]:
        # the query's "rocket" is also rocket.jpg's name: fused hits say so (clipsearch.search.wordsearch)
        assert set(hit) == {"id", "path", "score", "rank", "width", "height", "taken", "tags", "place",
                            "camera", "lens", "keywords", "people", "clip", "words", "caption", "kind",
                            "duration", "motion"}
        record = records[hit["id"]]
        assert (hit["path"], hit["width"], hit["height"], hit["taken"], hit["tags"], hit["camera"]) == (
            record.path, record.width, record.height, record.taken, record.tags, record.camera)
    assert page["hits"][0]["path"].endswith("rocket.jpg") and page["hits"][0]["words"] == {"name": ["rocket"]}
    rocket = index.records([_id_of(server, library, ROCKET)])
    assert next(iter(rocket.values())).taken == "2015-02-11T18:03:00"


def test_pages_continue_the_ranking(server, index):
    full = [h.path for h in index.search("stone", k=13)]
    pages = [server.get("/api/search", {"q": "stone", "k": 5, "offset": o}).json() for o in (0, 5, 10)]
    assert [h["path"] for p in pages for h in p["hits"]] == full
    assert [h["rank"] for h in pages[1]["hits"]] == [6, 7, 8, 9, 10]
    assert [p["offset"] for p in pages] == [0, 5, 10]
    r = server.get("/api/search", {"q": "stone", "k": 600, "offset": 500})
    assert r.status == 400
    assert r.json() == {"error": "k + offset is 1100, but pages reach at most rank 1000; narrow the "
                                 "search with filters instead"}


def test_filters_and_the_query_language_behave_as_in_the_cli(server, index, library):
    photos, _ = library
    cases = [
        ({"q": "stone", "in": str(photos / "textures")}, {"within": str(photos / "textures")}),
        ({"q": "stone", "ext": "png,jpg"}, {"ext": "png,jpg"}),
        ({"q": "stone", "after": "2015-02", "before": "2015-03"}, {"after": "2015-02", "before": "2015-03"}),
        ({"q": '"beach" + 2:"sunset" - "people"'}, {}),
        ({"q": "black-and-white photo", "tag": ["sky"]}, {"tags": ["sky"]}),
    ]
    for params, options in cases:
        page = server.get("/api/search", {"k": 13, **params}).json()
        expected = index.search(params["q"], k=13, **options)
        got = [(h["path"], h["score"]) for h in page["hits"]]
        assert got == [(h.path, h.score) for h in expected], params
    dated = server.get("/api/search", {"q": "x", "after": "2015-02", "before": "2015-03"}).json()
    assert [h["path"] for h in dated["hits"]] == [_path_of(library, ROCKET)]
    assert dated["total_considered"] == 1
    sky = server.get("/api/search", {"q": "x", "tag": "sky"}).json()
    assert sky["hits"] and all("sky" in h["tags"] for h in sky["hits"])


def test_rerank_and_min_match_behave_as_in_the_cli(server, index):
    page = server.get("/api/search", {"q": "a red car", "k": 4, "rerank": 1}).json()
    expected = index.search("a red car", k=4, rerank=True)
    assert [h["path"] for h in page["hits"]] == [h.path for h in expected]
    got = [(h["itm"], h["clip"], h["score"]) for h in page["hits"]]
    assert got == [(h.itm, h.clip, h.score) for h in expected]
    assert all(h["score"] == pytest.approx(h["itm"] + h["clip"]) for h in page["hits"])
    assert "rerank" in page["timing_ms"]
    nothing = server.get("/api/search", {"q": "a red car", "min_match": 1.0})
    assert nothing.status == 200 and nothing.json()["hits"] == []
    bad = server.get("/api/search", {"q": "a red car", "min_match": 1.5})
    assert bad.status == 400
    assert bad.json() == {"error": "min_match 1.5 is not a probability between 0 and 1"}  # the API's name
    deep = server.get("/api/search", {"q": "car", "rerank": 1, "k": 150, "offset": 100})
    assert deep.status == 400 and "re-ranked pages reach at most rank 200" in deep.json()["error"]


def test_pages_of_other_sites_make_the_server_do_nothing(server, library):
    """<img src="http://127.0.0.1:PORT/api/dupes?threshold=0.05"> on a page elsewhere (another
    port of 127.0.0.1 is same-site): refused before any work; a link to the gallery still opens it."""
    for site in ("cross-site", "same-site"):
        for path, params in (("/api/search", {"q": "cat", "rerank": "1"}), ("/api/images/1/thumbnail", {}),
                             ("/api/dupes", {"threshold": "0.05"}), ("/", {})):
            r = server.get(path, params, headers={"Sec-Fetch-Site": site, "Sec-Fetch-Mode": "no-cors"})
            assert r.status == 403 and f"Sec-Fetch-Site: {site}" in r.json()["error"], (site, path, r.body)
        opened = server.get("/", headers={"Sec-Fetch-Site": site, "Sec-Fetch-Mode": "navigate",
                                          "Sec-Fetch-Dest": "document"})
        assert opened.status == 200 and b"<html" in opened.body.lower()
    # the gallery itself, a typed address or a bookmark, a program such as curl
    for headers in ({"Sec-Fetch-Site": "same-origin"}, {"Sec-Fetch-Site": "none"}, {}):
        assert server.get("/api/search", {"q": "cat"}, headers=headers).status == 200, headers
    low = server.get("/api/dupes", {"threshold": "0.05"})
    assert low.status == 400 and "below 0.8 nearly every pair of photos matches" in low.json()["error"]
    assert server.get("/api/dupes", {"threshold": "0.8"}).status == 200
    hit = server.get("/api/search", {"q": "cat", "k": 1}).json()["hits"][0]
    endless = server.get(f"/api/images/{hit['id']}/thumbnail", {"t": "inf"})
    assert endless.status == 400 and "a finite number" in endless.json()["error"]


def test_bad_queries_get_the_clis_message_as_json_naming_the_apis_parameters(server, library):
    cases = [
        ({"q": '"beach" + "sun'}, 400, "bad query '\"beach\" + \"sun': this quote is never closed"),
        ({"q": "   "}, 400, "the query is empty"),
        ({"q": "cat", "after": "last week"}, 400, "after 'last week' is not a date"),
        ({"q": "cat", "after": "0002-01-01"}, 400, "after 0002-01-01: give a year from 1678 to 2261"),
        ({"q": "cat", "before": "9999"}, 400, "before 9999: give a year from 1678 to 2261"),
        ({"q": "cat", "tag": "nope"}, 400, "tag 'nope' is not a tag in this index; tags: "),
        ({"q": "cat", "ext": "docx"}, 400, "ext 'docx' is not a file type"),
        ({"q": "cat", "in": "/nowhere/at/all"}, 400, "in: folder not found: /nowhere/at/all"),
        ({"q": "cat", "k": "many"}, 422, "k: Input should be a valid integer"),
        ({"q": "cat", "k": 0}, 422, "k: Input should be greater than or equal to 1"),
        ({"q": "x" * 1001}, 400, "the query is 1001 characters long; at most 1000 are read"),
        ({"q": "cat", "tag": [f"t{i}" for i in range(17)]}, 400, "17 tags given; at most 16"),
        ({}, 422, "q: Field required"),
    ]
    for params, status, message in cases:
        r = server.get("/api/search", params)
        assert r.status == status, (params, r.body)
        assert set(r.json()) == {"error"} and message in r.json()["error"], (params, r.body)
        assert " --" not in r.json()["error"], r.body  # parameters named as the request names them
        assert b"Traceback" not in r.body and b"\n" not in r.json()["error"].encode()


def test_image_terms_are_refused_without_touching_the_file_system(server, library):
    for q in [_path_of(library, ROCKET), "~/x.jpg", "./nope.png", '"beach" + ../etc/passwd.jpg']:
        r = server.get("/api/search", {"q": q})
        assert r.status == 400
        assert "image files as query terms work only from the command line" in r.json()["error"]
        assert "not found" not in r.json()["error"]  # the server never says whether a path exists


# -- similar ---------------------------------------------------------------------------------------
def test_similar_by_id_and_by_upload(server, index, library):
    rocket = _id_of(server, library, ROCKET)
    page = server.get(f"/api/similar/{rocket}", {"k": 4}).json()
    assert page["similar_to"] == {"id": rocket}
    assert page["hits"][0]["id"] == rocket and page["hits"][0]["score"] == pytest.approx(1.0, abs=1e-5)
    expected = index.similar(_path_of(library, ROCKET), k=4)
    assert [h["path"] for h in page["hits"]] == [h.path for h in expected]

    data = (library[0] / ROCKET).read_bytes()
    uploaded = server.upload("/api/similar", data, "mine.jpg", {"k": 4})
    assert uploaded.status == 200
    assert uploaded.json()["hits"] == page["hits"]  # indexed content: its stored vector

    other = io.BytesIO()
    Image.open(library[0] / "travel" / "flower.jpg").rotate(3).save(other, "PNG")
    fresh = server.upload("/api/similar", other.getvalue(), "new.png", {"k": 3, "ext": "jpg"}).json()
    assert fresh["similar_to"] == {"upload": "new.png"}
    assert fresh["hits"][0]["path"] == _path_of(library, "travel/flower.jpg")
    assert all(h["path"].endswith(".jpg") for h in fresh["hits"])

    r = server.get("/api/similar/987654")
    assert r.status == 404 and "no image with id 987654 in this index" in r.json()["error"]


def test_uploads_that_are_not_images_too_large_or_bombs(server):
    r = server.upload("/api/similar", b"this is not an image", "notes.jpg")
    assert r.status == 422
    assert r.json() == {"error": "notes.jpg: not a readable image (unknown or corrupt format)"}
    r = server.upload("/api/similar", png_header_only(60_000, 60_000), "bomb.png")
    assert r.status == 422 and "refused as a possible decompression bomb" in r.json()["error"]
    r = server.request("POST", "/api/similar", body=b"",
                       headers={"Content-Type": "multipart/form-data; boundary=x"})
    assert r.status in (400, 422) and "error" in r.json()
    # declared too large: refused before a byte of the body is read
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as s:
        s.sendall(b"POST /api/similar HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: multipart/form-data; "
                  b"boundary=x\r\nContent-Length: 30000000\r\n\r\n")
        assert s.recv(65536).startswith(b"HTTP/1.1 413")
    # streamed without a length: cut off at the limit
    assert _stream_upload(server.port, 30 * 1024 * 1024).startswith(b"HTTP/1.1 413")


def _stream_upload(port: int, total: int) -> bytes:
    """Send a chunked upload of `total` bytes, reading the answer as soon as there is one."""
    import select

    chunk = b"\0" * 65536
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        head = (b"POST /api/similar HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n"
                b"Content-Type: multipart/form-data; boundary=x\r\n\r\n")
        part = b'--x\r\nContent-Disposition: form-data; name="image"; filename="big.jpg"\r\n\r\n'
        s.sendall(head + f"{len(part):x}\r\n".encode() + part + b"\r\n")
        sent = 0
        while sent < total:
            if select.select([s], [], [], 0)[0]:
                break
            try:
                s.sendall(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
            except (BrokenPipeError, ConnectionResetError):
                break
            sent += len(chunk)
        s.settimeout(30)
        return s.recv(65536)


# -- images: metadata, thumbnails, originals ------------------------------------------------------
def test_image_metadata(server, index, library):
    rocket = _id_of(server, library, ROCKET)
    record = server.get(f"/api/images/{rocket}").json()
    assert record == index.record(rocket).to_dict()
    assert (record["width"], record["height"]) == (640, 427)
    assert record["bytes"] == (library[0] / ROCKET).stat().st_size


def test_thumbnails_are_upright_cached_by_content_and_revalidated(server, library):
    rocket = _id_of(server, library, ROCKET)
    r = server.get(f"/api/images/{rocket}/thumbnail", {"size": 256})
    assert r.status == 200 and r.headers["content-type"] in ("image/webp", "image/jpeg")
    thumb = Image.open(io.BytesIO(r.body))
    assert thumb.size == (256, 171)  # EXIF orientation applied: landscape
    reference = ImageOps.exif_transpose(Image.open(library[0] / ROCKET)).convert("RGB").resize((256, 171))
    diff = sum(abs(a - b) for a, b in zip(thumb.convert("RGB").tobytes(), reference.tobytes(), strict=True))
    assert diff / (256 * 171 * 3) < 12  # the same picture, not a rotated one
    assert "immutable" in r.headers["cache-control"]
    cached = list((server.cache / "thumbnails" / "256").glob("*"))
    record = server.get(f"/api/images/{rocket}").json()
    assert [p.stem for p in cached if p.stem == record["hash"]]  # keyed by content hash
    again = server.get(f"/api/images/{rocket}/thumbnail", {"size": 256},
                       headers={"If-None-Match": r.headers["etag"]})
    assert again.status == 304 and again.body == b""
    large = Image.open(io.BytesIO(server.get(f"/api/images/{rocket}/thumbnail", {"size": 512}).body))
    assert large.size == (512, 342)
    small = server.get(f"/api/images/{_id_of(server, library, 'misc/clock_motion.gif')}/thumbnail",
                       {"size": 1024})
    assert Image.open(io.BytesIO(small.body)).size == (400, 300)  # never enlarged
    r = server.get(f"/api/images/{rocket}/thumbnail", {"size": 300})
    assert r.status == 400 and r.json() == {"error": "size=300 is not a thumbnail size; choose one of: "
                                                     "256, 512, 1024, 2048, 4096"}


def test_originals_are_served_byte_for_byte_with_their_type(server, library):
    types = {"space/rocket.jpg": "image/jpeg", "animals/horse.png": "image/png",
             "animals/chelsea.heic": "image/heic", "food/coffee.webp": "image/webp",
             "textures/coins.tif": "image/tiff"}
    for name, media in types.items():
        r = server.get(f"/api/images/{_id_of(server, library, name)}/file")
        assert r.status == 200, name
        assert r.body == (library[0] / name).read_bytes()
        assert r.headers["content-type"] == media
        assert r.headers["content-disposition"] == f"inline; filename*=UTF-8''{name.split('/')[-1]}"


def test_tags_folders_info(server, index, library):
    tags = server.get("/api/tags").json()["tags"]
    assert tags == [t.to_dict() for t in index.tags()]
    assert {t["label"] for t in tags} == set(LABELS.split(",")) and tags[0]["images"] >= 1
    folders = server.get("/api/folders").json()["folders"]
    counts = [("animals", 2), ("food", 1), ("misc", 2), ("space", 3), ("textures", 3), ("travel", 2)]
    assert folders == [{"path": str(library[0] / f), "images": n} for f, n in counts]
    info = server.get("/api/info").json()
    assert info["images"] == 13 and info["db"] == str(library[1]) and info["models_loaded"]["clip"]
    assert info["settings"]["precision"] == "fp32" and info["limits"]["max_rank"] == 1000


# -- what the server refuses ----------------------------------------------------------------------
def test_files_only_by_the_id_of_an_indexed_row(server):
    attempts = [
        "/api/images/../../etc/passwd", "/api/images/%2e%2e/%2e%2e/etc/passwd/file",
        "/api/images/..%2F..%2Fetc%2Fpasswd/file", "/api/images/%2Fetc%2Fpasswd/file",
        "/api/images//etc/passwd/file", "/api/images/-1/file", "/api/images/1e3/file",
        "/api/images/0x1/thumbnail", "/static/../pyproject.toml", "/static/%2e%2e/app.py",
        "/api/images/99999/file", "/api/images/99999/thumbnail", "/api/images/99999999999999999999999",
        "/api/similar/-99999999999999999999999",
    ]
    for path in attempts:
        r = server.get(path)
        assert r.status in (404, 422), (path, r.status)
        assert set(r.json()) == {"error"}, path
        assert b"root:" not in r.body and b"[project]" not in r.body and b"import" not in r.body


def test_the_host_header_is_checked_and_no_cors_is_granted(server):
    for host in ["evil.example", "evil.example:80", f"attacker.test:{server.port}", "127.0.0.1.evil.example"]:
        r = server.get("/api/info", headers={"Host": host})
        assert r.status == 400 and "is not this server's address" in r.json()["error"], host
    for host in [f"127.0.0.1:{server.port}", f"localhost:{server.port}", "localhost", f"[::1]:{server.port}"]:
        assert server.get("/api/health", headers={"Host": host}).status == 200, host
    r = server.get("/api/search", {"q": "cat"}, headers={"Origin": "https://evil.example"})
    assert r.status == 200 and not any(h.startswith("access-control-") for h in r.headers)
    assert r.headers["cross-origin-resource-policy"] == "same-origin"
    pre = server.request("OPTIONS", "/api/search", headers={
        "Origin": "https://evil.example", "Access-Control-Request-Method": "GET"})
    # a preflight changes nothing, but it is no GET: refused for its origin, and no CORS either way
    assert pre.status == 403 and not any(h.startswith("access-control-") for h in pre.headers)
    assert pre.json()["error"].startswith("refused: this request came from another origin")


def test_error_responses_are_one_line_json(server):
    r = server.get("/api/nothing-here")
    assert r.status == 404
    assert r.json() == {"error": "no such address: /api/nothing-here; the API is listed at /docs"}
    r = server.request("DELETE", "/api/search")
    assert r.status == 405 and "DELETE is not allowed on /api/search" in r.json()["error"]


def test_gallery_and_docs_are_served_offline(server):
    page = server.get("/")
    assert page.status == 200 and b'<script src="/static/gallery.js"' in page.body
    assert "default-src 'self'" in page.headers["content-security-policy"]
    for asset in ("/static/gallery.js", "/static/gallery.css"):
        assert server.get(asset).status == 200
    docs = server.get("/docs")
    assert docs.status == 200 and b"/docs-static/swagger-ui-bundle.js" in docs.body
    assert b"cdn" not in docs.body.lower()
    assert server.get("/docs-static/swagger-ui-bundle.js").status == 200
    spec = server.get("/openapi.json").json()
    routes = {"/api/search", "/api/similar/{id}", "/api/similar", "/api/images/{id}/thumbnail"}
    assert routes <= set(spec["paths"])


def test_a_taken_port_is_refused_at_once(server, library):
    started = time.monotonic()
    r = cli("serve", "--db", library[1], "--port", server.port)
    assert r.exit_code == 1
    assert f"error: port {server.port} on 127.0.0.1 is already in use" in r.stderr
    assert time.monotonic() - started < 30


def test_other_addresses_need_a_token():
    r = cli("serve", "--host", "0.0.0.0")
    assert r.exit_code == 2
    assert "--host 0.0.0.0 would let other machines read your photos; set a token with --token" in r.stderr
    r = cli("serve", "--host", "0.0.0.0", "--token", "short")
    assert r.exit_code == 2 and "the token is 5 characters long; use at least 16" in r.stderr
