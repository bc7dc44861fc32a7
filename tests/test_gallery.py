"""The web gallery in a real headless Chromium (Debian's chromium and chromium-driver, through
Selenium): search, thumbnails, the viewer and its keys, "similar", back/forward, tag filters, an
image upload, the error and empty states, and a phone-sized window. Any script error fails it.

Without the browser installed the test is skipped, unless CLIPSEARCH_REQUIRE_BROWSER=1 (CI sets
it), which makes a missing browser a failure."""

from __future__ import annotations

import os
import shutil
import signal
from pathlib import Path

import pytest
import serving
from conftest import WAIT

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_local_dir):
    from benchmarks.captions import captioner_folder
    from clipsearch.build.builder import open_builder

    photos, db = serving.index_samples(tmp_path_factory.mktemp("gallery"), tiny_local_dir, "sky,flower,stone")
    # captions of a random tiny captioner ("word12 word40 ..."): alt text, never a query's word
    captioner = captioner_folder(tmp_path_factory.mktemp("captioner"), "tiny")
    with open_builder(db, device="cpu", create=False) as builder:
        builder.use_captioner(str(captioner), "fp32")
        builder.caption()
    running = serving.start(db, "--watch", "--settle", "0.3")  # the last test adds a photo
    running.photos, running.db = photos, db
    yield running
    code, output = running.stop(signal.SIGTERM)
    assert code == 0, output


def _wait(driver, condition, what: str):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, WAIT, poll_frequency=0.1).until(lambda d: condition(d), message=what)


def _loaded_tiles(driver) -> int:
    """Tiles whose thumbnail has really arrived and decoded."""
    return driver.execute_script(
        "return Array.from(document.querySelectorAll('.tile img'))"
        ".filter(i => i.complete && i.naturalWidth > 0).length")


def _status(driver) -> str:
    return driver.find_element("id", "status").text


def _script_errors(driver) -> list[str]:
    """Console errors other than the HTTP statuses the test provokes on purpose."""
    return [e["message"] for e in driver.get_log("browser")
            if e["level"] == "SEVERE" and "Failed to load resource" not in e["message"]]


def test_the_gallery_in_a_real_browser(server, browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    driver, base = browser, server.url
    driver.get(base + "/")
    _wait(driver, lambda d: "13 photos indexed" in _status(d), "the start page says what is indexed")

    # type a query after pressing /
    driver.find_element(By.TAG_NAME, "body").send_keys("/")
    assert driver.switch_to.active_element.get_attribute("id") == "q"
    driver.switch_to.active_element.send_keys("a photo of a rocket", Keys.ENTER)
    _wait(driver, lambda d: _loaded_tiles(d) == 13, "13 thumbnails load")
    assert driver.current_url == f"{base}/?q=a+photo+of+a+rocket"
    assert _status(driver) == "13 best of 13 photos"
    api = server.get("/api/search", {"q": "a photo of a rocket", "k": 48}).json()["hits"]
    tiles = driver.find_elements(By.CSS_SELECTOR, ".tile")
    assert [int(t.get_attribute("data-id")) for t in tiles] == [h["id"] for h in api]
    first = tiles[0]
    score = f"{api[0]['score']:.3f}"
    # rocket.jpg's own name matched the query's word, beside what CLIP sees: the tile marks it
    assert api[0]["path"].endswith("rocket.jpg") and api[0]["words"] == {"name": ["rocket"]}
    assert first.find_element(By.CSS_SELECTOR, ".score").get_attribute("textContent") == f"{score} · rocket"
    title = first.find_element(By.CSS_SELECTOR, ".open").get_attribute("title")
    assert f"score {score} · CLIP {api[0]['clip']:.3f}" in title and "name: rocket" in title
    # each thumbnail's alt text is its caption (its name when the caption is empty)
    alts = [t.find_element(By.CSS_SELECTOR, "img").get_attribute("alt") for t in tiles]
    assert alts == [h["caption"] or Path(h["path"]).name for h in api] and any(h["caption"] for h in api)

    # the viewer: opens on a click, arrows move, Esc closes
    first.find_element(By.CSS_SELECTOR, ".open").click()
    viewer = driver.find_element(By.ID, "viewer")
    _wait(driver, lambda d: viewer.is_displayed(), "the viewer opens")
    assert driver.find_element(By.ID, "v-path").text == api[0]["path"]
    assert driver.find_element(By.ID, "v-caption").text == api[0]["caption"]
    assert driver.find_element(By.ID, "v-matched").text == "matched name: rocket"
    large = "const i = document.getElementById('v-img'); return i.complete && i.naturalWidth > 0"
    _wait(driver, lambda d: d.execute_script(large), "the large image loads")
    _wait(driver, lambda d: " kB" in d.find_element(By.ID, "v-meta").text, "the file size is shown")
    driver.switch_to.active_element.send_keys(Keys.ARROW_RIGHT)
    _wait(driver, lambda d: d.find_element(By.ID, "v-path").text == api[1]["path"], "→ shows the next photo")
    driver.switch_to.active_element.send_keys(Keys.ESCAPE)
    _wait(driver, lambda d: not viewer.is_displayed(), "Esc closes the viewer")

    # "similar" on a photo, then back
    target = driver.find_elements(By.CSS_SELECTOR, ".tile")[2]
    wanted = int(target.get_attribute("data-id"))
    driver.execute_script("arguments[0].click()", target.find_element(By.CSS_SELECTOR, ".similar"))
    _wait(driver, lambda d: d.current_url == f"{base}/?similar={wanted}", "the address holds it")
    _wait(driver, lambda d: _loaded_tiles(d) == 13, "similar photos load")
    assert int(driver.find_elements(By.CSS_SELECTOR, ".tile")[0].get_attribute("data-id")) == wanted
    driver.back()
    _wait(driver, lambda d: d.find_element(By.ID, "q").get_attribute("value") == "a photo of a rocket",
          "back restores the query")
    _wait(driver, lambda d: _loaded_tiles(d) == 13, "and its results")

    # filter by a tag chip
    driver.find_element(By.ID, "toggle-filters").click()
    chip = _wait(driver, lambda d: d.find_element(By.CSS_SELECTOR, '#tags .chip[data-tag="sky"]'), "chips")
    driver.save_screenshot(str(tmp_path / "gallery.png"))
    assert (tmp_path / "gallery.png").stat().st_size > 10_000
    if os.environ.get("CLIPSEARCH_SCREENSHOT"):  # how the README's and the docs' picture is made
        shutil.copy(tmp_path / "gallery.png", os.environ["CLIPSEARCH_SCREENSHOT"])
    chip.click()
    sky = server.get("/api/search", {"q": "a photo of a rocket", "tag": "sky", "k": 48}).json()["hits"]
    _wait(driver, lambda d: "tag=sky" in d.current_url
          and len(d.find_elements(By.CSS_SELECTOR, ".tile")) == len(sky), "the tag filters the results")
    shown = [int(t.get_attribute("data-id")) for t in driver.find_elements(By.CSS_SELECTOR, ".tile")]
    assert shown == [h["id"] for h in sky] and sky
    assert chip.get_attribute("aria-pressed") == "true"

    # search by an image file
    driver.get(base + "/")
    _wait(driver, lambda d: "photos indexed" in _status(d), "the start page")
    driver.find_element(By.ID, "file").send_keys(str(Path(server.photos) / "travel" / "flower.jpg"))
    _wait(driver, lambda d: _loaded_tiles(d) == 13, "photos like the uploaded one load")
    assert driver.current_url == f"{base}/?upload=flower.jpg"
    assert driver.find_element(By.CSS_SELECTOR, ".tile .open").get_attribute("title").startswith("flower.jpg")

    # the error and nothing-matches states say what to do
    driver.get(base + "/?q=%22beach")
    _wait(driver, lambda d: "Could not search: bad query" in _status(d), "a bad query is explained")
    driver.get(base + "/?q=cat&tag=sky&ext=avif")
    _wait(driver, lambda d: "No photos match these filters" in _status(d), "the empty state")
    driver.get(base + "/?q=cat&place=Lisbon")  # no sample carries a GPS position
    _wait(driver, lambda d: "No photos match these filters" in _status(d), "a place filter")
    assert driver.find_element(By.ID, "f-place").get_attribute("value") == "Lisbon"

    # at phone width: three columns, nothing wider than the screen
    driver.set_window_size(390, 844)
    driver.get(base + "/?q=stone")
    _wait(driver, lambda d: _loaded_tiles(d) == 13, "thumbnails at phone width")
    columns = driver.execute_script(
        "return getComputedStyle(document.getElementById('grid')).gridTemplateColumns.split(' ').length")
    assert columns == 3
    assert driver.execute_script("return document.documentElement.scrollWidth <= window.innerWidth")
    assert _script_errors(driver) == []


def test_a_watching_gallery_offers_the_photos_added_since(server, browser):
    from selenium.webdriver.common.by import By

    driver, base = browser, server.url
    driver.set_window_size(1280, 900)
    driver.get(base + "/?q=stone")
    _wait(driver, lambda d: _loaded_tiles(d) == 13, "the results")
    live = driver.find_element(By.ID, "live")
    _wait(driver, lambda d: live.text == "watching the folders", "the watcher's state is shown")
    fresh = driver.find_element(By.ID, "fresh")
    assert not fresh.is_displayed()
    shutil.copy(Path(server.photos) / "travel" / "flower.jpg", Path(server.photos) / "flower again.jpg")
    from PIL import Image

    Image.new("RGB", (90, 70), (10, 200, 30)).save(Path(server.photos) / "green.png")
    _wait(driver, lambda d: fresh.is_displayed() and fresh.text == "2 new photos: show", "new photos offered")
    assert _loaded_tiles(driver) == 13  # nothing moves under the user's eyes until asked
    fresh.click()
    _wait(driver, lambda d: _loaded_tiles(d) == 15, "the results again, with the new photos")
    assert not fresh.is_displayed() and _script_errors(driver) == []


@pytest.fixture(scope="module")
def dupes_server(planted):
    running = serving.start(planted.db)
    yield running
    code, output = running.stop(signal.SIGTERM)
    assert code == 0, output


def test_the_duplicates_view_in_a_real_browser(dupes_server, browser, planted):
    from selenium.webdriver.common.by import By

    driver, base = browser, dupes_server.url
    driver.set_window_size(1280, 900)
    driver.get(base + "/")
    _wait(driver, lambda d: "photos indexed" in _status(d), "the start page")
    driver.find_element(By.ID, "dupes-link").click()
    _wait(driver, lambda d: d.current_url == f"{base}/?view=dupes", "the address holds the view")
    groups = dupes_server.get("/api/dupes").json()["groups"]
    _wait(driver, lambda d: len(d.find_elements(By.CSS_SELECTOR, ".dupe-group")) == len(groups) == 13,
          "one row per group")
    assert len(driver.find_elements(By.CSS_SELECTOR, ".tile")) == 13 * 7
    _wait(driver, lambda d: _loaded_tiles(d) >= 7, "the thumbnails in view load (the rest lazily)")
    assert "13 groups of duplicates; 78 photos besides the ones to keep" in _status(driver)
    for group, row in zip(groups, driver.find_elements(By.CSS_SELECTOR, ".dupe-group"), strict=True):
        tiles = row.find_elements(By.CSS_SELECTOR, ".tile")
        assert [int(t.get_attribute("data-id")) for t in tiles] == [m["id"] for m in group["members"]]
        assert [t for t in tiles if "keeper" in t.get_attribute("class")] == tiles[:1]
        caption = tiles[0].find_element(By.CSS_SELECTOR, ".score").get_attribute("textContent")
        assert caption.startswith("keep")
        assert group["reason"] in row.find_element(By.TAG_NAME, "h2").text
    assert "active" in driver.find_element(By.ID, "dupes-link").get_attribute("class")

    # a member opens in the viewer, with its path
    first_row = driver.find_elements(By.CSS_SELECTOR, ".dupe-group")[0]
    second = first_row.find_elements(By.CSS_SELECTOR, ".tile")[1]
    second.find_element(By.CSS_SELECTOR, ".open").click()
    _wait(driver, lambda d: d.find_element(By.ID, "viewer").is_displayed(), "the viewer opens")
    assert driver.find_element(By.ID, "v-path").text == groups[0]["members"][1]["path"]
    assert "similarity" in driver.find_element(By.ID, "v-meta").text
    driver.find_element(By.CSS_SELECTOR, "#viewer .close").click()

    # a folder's duplicates only
    folder = str(planted.photos / "copies" / "astronaut")
    driver.get(f"{base}/?view=dupes&in={folder}")
    _wait(driver, lambda d: len(d.find_elements(By.CSS_SELECTOR, ".dupe-group")) == 1, "one group in it")
    driver.get(f"{base}/?view=dupes&in={planted.photos / 'space'}")
    _wait(driver, lambda d: "No duplicates in this folder" in _status(d), "none in another")

    # a search showing one photo per group: the keepers
    driver.get(base + "/?q=a+photo&collapse=1")
    _wait(driver, lambda d: _loaded_tiles(d) == 13, "13 keepers load")
    keepers = {g["keeper"]["id"] for g in groups}
    shown = {int(t.get_attribute("data-id")) for t in driver.find_elements(By.CSS_SELECTOR, ".tile")}
    assert shown == keepers
    box = driver.find_element(By.ID, "f-collapse")
    assert box.is_displayed() and box.is_selected()  # an active filter opens the filters
    box.click()
    _wait(driver, lambda d: "collapse" not in d.current_url and _loaded_tiles(d) == 48, "all photos again")
    assert _script_errors(driver) == []


@pytest.fixture(scope="module")
def sizes_server(tmp_path_factory, tiny_local_dir):
    """A 64-px stamp and a 3000 x 2000 photo: the two ends of what a viewer must fit."""
    from PIL import Image
    from typer.testing import CliRunner

    from clipsearch.cli.commands import app

    root = tmp_path_factory.mktemp("sizes")
    photos, db = root / "photos", root / "db"
    photos.mkdir()
    Image.new("RGB", (64, 48), (200, 40, 40)).save(photos / "stamp.png")
    Image.radial_gradient("L").resize((3000, 2000)).convert("RGB").save(photos / "large.jpg", quality=80)
    r = CliRunner().invoke(app, ["index", str(photos), "--db", str(db), "--model",
                                 f"local-dir:{tiny_local_dir}", "-q"], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    running = serving.start(db)
    yield running
    running.stop(signal.SIGTERM)


def test_the_viewer_fits_every_photo_and_loads_what_the_screen_can_show(sizes_server, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    driver, base = browser, sizes_server.url
    shown = """const i = document.getElementById('v-img'), box = i.getBoundingClientRect();
        const scale = Math.min(box.width / i.naturalWidth, box.height / i.naturalHeight);
        return {box: [box.width, box.height], natural: [i.naturalWidth, i.naturalHeight],
                drawn: [i.naturalWidth * scale, i.naturalHeight * scale], src: i.currentSrc,
                dpr: window.devicePixelRatio}"""
    for width, height, dpr in ((1600, 1000, 1), (1280, 900, 2)):
        driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {
            "width": width, "height": height, "deviceScaleFactor": dpr, "mobile": False})
        try:
            for name in ("stamp.png", "large.jpg"):
                driver.get(f"{base}/?q=a+photo")
                _wait(driver, lambda d: _loaded_tiles(d) == 2, "two tiles")
                opens = driver.find_elements(By.CSS_SELECTOR, ".tile .open")
                next(o for o in opens if o.get_attribute("title").startswith(name)).click()
                # the stamp's first rendition has all its pixels; the photo's is the smallest with as
                # many as the screen shows: 1245 px, then 2 x 730 x 1.5
                want = "size=512" if name == "stamp.png" else "size=2048" if dpr == 1 else "size=4096"
                _wait(driver, lambda d, want=want: want in d.execute_script(shown)["src"]
                      and d.execute_script(shown)["natural"][0] > 0, f"{name}: the {want} rendition loads")
                s = driver.execute_script(shown)
                fills = max(s["drawn"][0] / s["box"][0], s["drawn"][1] / s["box"][1])
                assert fills > 0.99, s  # fitted to the viewer, the stamp scaled up too
                assert s["box"][0] > 0.8 * width and s["box"][1] > 0.7 * height, s
                if name == "large.jpg":  # as many pixels as the screen shows
                    assert s["natural"][0] >= s["drawn"][0] * dpr, s
                driver.switch_to.active_element.send_keys(Keys.ESCAPE)
        finally:
            driver.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})
    assert _script_errors(driver) == []


def test_a_token_stays_with_its_own_port(browser, server, tmp_path):
    """A server started with a token: the printed address logs the gallery in, the token leaves
    the address bar and no cookie is kept; another port of the same host (another local user's
    server, say) never receives it, as a cookie it would (cookies are not isolated by port)."""
    import http.server
    import threading
    from urllib.parse import quote

    db = tmp_path / "db"
    shutil.copytree(server.db, db, ignore=shutil.ignore_patterns("server.json", ".lock"))
    token = "correct-horse+battery;staple€-7"  # what neither a header nor a cookie holds as it is
    seen: list[dict] = []

    class Elsewhere(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            seen.append({k.lower(): v for k, v in self.headers.items()})
            body = b"<!doctype html><title>elsewhere</title><p>another server"
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_args):
            pass

    other = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Elsewhere)
    threading.Thread(target=other.serve_forever, daemon=True).start()
    running = serving.start(db, "--token", token)
    driver = browser
    base = f"http://127.0.0.1:{running.port}"
    try:
        driver.get(f"{base}/?token={quote(token, safe='')}&q=sky")
        _wait(driver, lambda d: d.current_url == f"{base}/?q=sky" and _loaded_tiles(d) > 0, "logged in")
        assert driver.get_cookies() == []  # kept by the origin's service worker, not a cookie
        status = driver.execute_async_script(
            "fetch('/api/info').then(r => arguments[0](r.status))")
        assert status == 200
        driver.get(f"http://127.0.0.1:{other.server_address[1]}/elsewhere")
        _wait(driver, lambda d: seen, "the other port visited")
        assert not any("authorization" in h or "cookie" in h for h in seen), seen
        driver.get(f"{base}/?q=stone")  # and back: still logged in
        _wait(driver, lambda d: _loaded_tiles(d) > 0, "the gallery again, without the token")
        assert running.get("/api/info").status == 401  # a request without the worker: refused
        assert _script_errors(driver) == []
    finally:
        driver.get(f"{base}/static/login.js")  # a page of the origin (it needs no token): its worker goes
        driver.execute_async_script("navigator.serviceWorker.getRegistrations().then(rs => "
                                    "Promise.all(rs.map(r => r.unregister()))).then(() => arguments[0]())")
        other.shutdown()
        code, output = running.stop()
    assert code == 0, output
