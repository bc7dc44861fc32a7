"""Videos (clipsearch.media.video): made here with PyAV from the shapes task's pictures, indexed beside
photos with the trained CLIP, found at the second a scene was planted, upright when the phone
held them upright, and served with HTTP Range requests; bad files are reported, never fatal."""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from benchmarks import shapes
from benchmarks.videos import make_video, truncate
from clipsearch.cli.commands import app
from clipsearch.search.engine import open_index
from tests import serving
from tests.test_gallery import _script_errors, _wait

runner = CliRunner()
PLANTED = shapes.Scene((shapes.Obj("red", "circle"),))
PLANTED_AT = 12.0  # seconds: the planted scene runs from here for SCENE seconds
SCENE = 4.0


def picture(scene: shapes.Scene, seed: int) -> Image.Image:
    return shapes.render(scene, random.Random(seed))


@pytest.fixture(scope="module")
def library(shapes_models, tmp_path_factory):
    """Photos and videos: `party.mp4` shows six scenes of four seconds, the red circle from
    PLANTED_AT; `phone.mp4` is stored landscape and displayed portrait (its top half red);
    truncated, empty and audio-only files beside them; a Live Photo (IMG_0001.png and .MOV).
    Indexed through the CLI."""
    root = tmp_path_factory.mktemp("videos")
    photos = root / "photos"
    photos.mkdir()
    others = [s for s in shapes.singles() if s != PLANTED]
    for i, scene in enumerate(others[:4]):
        picture(scene, i).save(photos / f"photo{i}.png")
    scenes = [(picture(s, 10 + i), SCENE) for i, s in enumerate(others[4:9])]
    scenes.insert(int(PLANTED_AT // SCENE), (picture(PLANTED, 99), SCENE))
    make_video(str(photos / "party.mp4"), scenes, size=(128, 128), created="2023-07-04T20:31:07Z")
    half = Image.new("RGB", (128, 96), (40, 160, 60))
    half.paste((215, 40, 40), (0, 0, 64, 96))  # the stored left half: the displayed top half
    make_video(str(photos / "phone.mp4"), [(half, 10.0)], size=(128, 96), rotation=-90)
    make_video(str(root / "cut.mp4"), scenes[:2], size=(128, 128))
    shutil.copy(truncate(str(root / "cut.mp4"), 0.5), photos / "cut.mp4")
    (photos / "empty.mov").write_bytes(b"")
    # a Live Photo: the still and its motion, one item
    picture(others[0], 7).save(photos / "IMG_0001.png")
    make_video(str(photos / "IMG_0001.MOV"), [(picture(others[0], 7), 2.0)], size=(64, 64))
    _audio_only(photos / "voice.m4v")
    db = root / "db"
    result = runner.invoke(app, ["index", str(photos), "--db", str(db), "--model",
                                 f"local-dir:{shapes_models.clip_dir}", "--device", "cpu", "--json"])
    assert result.exit_code == 0, result.output
    return photos, db, json.loads(result.stdout)


def _audio_only(path: Path) -> None:
    import av
    import numpy as np

    with av.open(str(path), "w", format="mp4") as out:
        stream = out.add_stream("aac", rate=16000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
        frame.sample_rate = 16000
        for packet in [*stream.encode(frame), *stream.encode()]:
            out.mux(packet)


def search(db: Path, *args: str) -> list[dict]:
    result = runner.invoke(app, ["search", *args, "--db", str(db), "--json", "--no-server", "--words", "off"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_a_planted_scene_is_found_at_its_second(library):
    photos, db, summary = library
    hits = search(db, PLANTED.caption(), "-k", "3")
    video = next(h for h in hits if h["kind"] == "video")
    assert video["path"] == str(photos / "party.mp4") and hits.index(video) == 0, hits
    assert abs(video["t"] - PLANTED_AT) <= 2.0, video
    assert video["moments"][0]["t"] == video["t"] and len({m["t"] for m in video["moments"]}) == len(
        video["moments"]), video
    assert [h["path"] for h in hits].count(video["path"]) == 1  # one hit per video
    table = runner.invoke(app, ["search", PLANTED.caption(), "--db", str(db), "--no-server", "-k", "1",
                                "--words", "off"])
    assert f"@ 0:{int(video['t']):02d}" in table.stdout, table.stdout
    # beside a thumbnail of that moment (one frame decoded, not the file read whole)
    shown = runner.invoke(app, ["search", PLANTED.caption(), "--db", str(db), "--no-server", "-k", "1",
                                "--words", "off", "--preview=kitty"])
    assert shown.exit_code == 0 and "\x1b_G" in shown.stdout and f"@ 0:{int(video['t']):02d}" in shown.stdout


def test_one_kind_only(library):
    photos, db, _summary = library
    only_photos = search(db, PLANTED.caption(), "-k", "20", "--photos")
    only_videos = search(db, PLANTED.caption(), "-k", "20", "--videos")
    assert {h["kind"] for h in only_photos} == {"photo"} and len(only_photos) == 5
    assert sorted(h["path"] for h in only_videos) == [str(photos / "party.mp4"), str(photos / "phone.mp4")]
    both = runner.invoke(app, ["search", "x", "--db", str(db), "--photos", "--videos", "--no-server"])
    assert both.exit_code == 2 and "choose one of --photos and --videos" in both.output


def test_bad_videos_are_reported_and_the_rest_indexed(library):
    photos, _db, summary = library
    skipped = {Path(s["path"]).name: s["reason"] for s in summary["skipped"]}
    assert set(skipped) == {"cut.mp4", "empty.mov", "voice.m4v"}, skipped
    assert "truncated" in skipped["cut.mp4"] and "empty file" in skipped["empty.mov"]
    assert "no video track" in skipped["voice.m4v"]
    assert summary["added"] == 7 and summary["frames"] >= 6 + 3, summary  # the Live Photo's video is no item


class _Counting:
    """A container whose seeks are counted (and stopped past `most`): the rest is the real one's."""

    def __init__(self, container, most: int) -> None:
        self._container, self.seeks, self.most = container, 0, most

    def seek(self, *args, **kwargs):
        self.seeks += 1
        if self.seeks > self.most:
            raise AssertionError(f"more than {self.most} seeks")
        return self._container.seek(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self._container, name)


@pytest.mark.parametrize("claimed", [1e6, None])
def test_a_header_that_lies_about_the_length_costs_no_more(tmp_path, monkeypatch, claimed):
    """A 20 s video whose header claims a million seconds is filled up to its last frame, not to
    the claim; with no length at all, it still keeps at most MAX_FRAMES moments (a key frame a
    second, one kept every 4 s: 5 moments, over the 3 allowed here)."""
    import contextlib
    import dataclasses

    from clipsearch.media import video

    path = make_video(str(tmp_path / "v.mp4"), [(picture(PLANTED, 1), 20.0)], keyint=15)
    probed, opened, counted = video.probe, video._open, []
    monkeypatch.setattr(video, "probe", lambda c, p: dataclasses.replace(probed(c, p), duration=claimed))
    monkeypatch.setattr(video, "MAX_FRAMES", 3)

    @contextlib.contextmanager
    def counting(p):
        with opened(p) as container:
            counted.append(_Counting(container, most=20))
            yield counted[-1]

    monkeypatch.setattr(video, "_open", counting)
    got = [t for t, _ in video.frames(path)]
    assert len(got) <= 3 and max(got) <= 20.0, got
    assert counted[0].seeks <= 3


def test_similar_to_a_video_on_the_torch_free_path(tmp_path, tiny_local_dir, monkeypatch, seed_export):
    """`similar VIDEO` in a new process reads the video's frames from the snapshot: the fast path
    answers it, without falling back to the slow one."""
    from clipsearch import index_folders

    folder = tmp_path / "clips"
    folder.mkdir()
    video = make_video(str(folder / "party.mp4"), [(picture(PLANTED, 1), 3.0)], keyint=15)
    picture(PLANTED, 2).save(folder / "still.png")
    monkeypatch.setenv("CLIPSEARCH_FAST_QUERY", "1")
    seed_export(model=f"local-dir:{tiny_local_dir}")
    index_folders([folder], tmp_path / "db", model=f"local-dir:{tiny_local_dir}", device="cpu")
    code, out, err, _heavy = serving.run_cli("similar", video, "--db", tmp_path / "db", "--json",
                                             env=serving.environment(CLIPSEARCH_FAST_QUERY="1"))
    assert code == 0, err
    assert "fast search path failed" not in err, err
    assert json.loads(out)[0]["path"] == video


def test_a_portrait_phone_video_is_upright_and_dated(library):
    photos, db, _summary = library
    index = open_index(db)
    rows = index.store.by_paths([str(photos / "phone.mp4")], ["id", "t", "width", "height"]).to_pylist()
    assert {(r["width"], r["height"]) for r in rows} == {(96, 128)}
    # one key frame at 0 s; the frames at 4 and 8 s were found by seeking
    times = sorted(r["t"] for r in rows)
    assert len(times) == 3, rows
    assert all(abs(t - want) <= 1.0 for t, want in zip(times, [0, 4, 8], strict=True)), rows
    from clipsearch.media.video import frame_at

    frame = frame_at(str(photos / "phone.mp4"), 5.0)
    assert frame.size == (96, 128)
    top, bottom = frame.getpixel((48, 20)), frame.getpixel((48, 108))
    assert top[0] > 180 > top[1] and bottom[1] > 120 > bottom[0], (top, bottom)
    party = index.store.by_paths([str(photos / "party.mp4")], ["taken", "duration"]).to_pylist()[0]
    assert party["taken"] == "2023-07-04T20:31:07" and party["duration"] == pytest.approx(24.0, abs=0.2)
    dated = search(db, PLANTED.caption(), "--videos", "--after", "2023-07-04", "--before", "2023-07-05")
    assert [h["path"] for h in dated] == [str(photos / "party.mp4")]  # phone.mp4 has only its mtime


def test_copied_and_moved_videos_keep_their_moments_without_decoding(library, tmp_path):
    photos, db, _summary = library
    copy_db = tmp_path / "db"
    shutil.copytree(db, copy_db)
    folder = tmp_path / "photos"
    shutil.copytree(photos, folder)
    original = open_index(copy_db).store.by_paths([str(photos / "party.mp4")], ["t"]).column("t").to_pylist()

    def index() -> dict:
        result = runner.invoke(app, ["index", str(folder), "--db", str(copy_db), "--device", "cpu", "--json"])
        assert result.exit_code == 0, result.output
        return json.loads(result.stdout)

    copied = index()
    assert copied["added"] == 7 and copied["embedded"] == 0 and copied["frames"] == 0, copied
    (folder / "party.mp4").rename(folder / "renamed.mp4")
    moved = index()
    # (a move, counted as added and removed: the original library holds the same content too)
    assert moved["embedded"] == moved["frames"] == 0 and moved["added"] == moved["removed"] == 1, moved
    hits = search(copy_db, PLANTED.caption(), "-k", "1", "--videos", "--in", str(folder))
    assert hits[0]["path"] == str(folder / "renamed.mp4") and abs(hits[0]["t"] - PLANTED_AT) <= 2.0
    times = open_index(copy_db).store.by_paths([str(folder / "renamed.mp4")], ["t"]).column("t").to_pylist()
    assert sorted(times) == sorted(original)
    assert not open_index(copy_db).store.by_paths([str(folder / "party.mp4")], ["t"]).num_rows


def test_a_video_back_within_the_kept_window_is_not_decoded_again(tmp_path, tiny_local_dir):
    """A video moved out of the library and back (a mistaken move, a restore) within the week its
    vectors are kept: its moments come back as they were, nothing decoded; an index from before
    videos were kept this way has its kept photos carried over."""
    import time

    import lancedb
    import pyarrow as pa

    from clipsearch import index_folders
    from clipsearch.store.kept import Kept
    from clipsearch.store.table import Store

    folder, db = tmp_path / "clips", tmp_path / "db"
    folder.mkdir()
    video = make_video(str(folder / "party.mp4"), [(picture(PLANTED, 1), 9.0)], keyint=15)
    picture(PLANTED, 2).save(folder / "still.png")  # the root is not emptied by the move

    def run():
        return index_folders([folder], db, model=f"local-dir:{tiny_local_dir}", device="cpu")

    run()
    before = Store.open(db).by_paths([video], ["t", "vector"]).sort_by("t").to_pydict()
    # a kept table as an earlier release left it (no frame columns), holding one photo
    dim = len(before["vector"][0])
    lancedb.connect(db).create_table("kept", pa.table({
        "hash": ["an earlier photo"], "vector": pa.array([[0.5] * dim], pa.list_(pa.float32(), dim)),
        "width": [1], "height": [1], "taken": pa.array([None], pa.string()),
        "removed_at": [int(time.time())]}))
    away = tmp_path / "away.mp4"
    Path(video).rename(away)
    assert run().removed == 1
    away.rename(video)
    back = run()
    assert (back.added, back.embedded, back.frames) == (1, 0, 0), back
    after = Store.open(db).by_paths([video], ["t", "vector"]).sort_by("t").to_pydict()
    assert after["t"] == before["t"] and len(before["t"]) >= 2
    assert after["vector"] == before["vector"]
    assert Kept(Store.open(db)).get("an earlier photo") is not None


@pytest.fixture(scope="module")
def served(library):
    """The library's index behind a real HTTP server, in this process."""
    with serving.in_process(library[1]) as server:
        yield server


def test_the_server_seeks_in_a_video_and_shows_its_moments(library, served):
    photos, _db, _summary = library
    client = served
    asked = {"q": PLANTED.caption(), "k": "2", "kind": "video", "words": "0"}
    page = client.get("/api/search", asked).json()
    hit = page["hits"][0]
    assert hit["kind"] == "video" and abs(hit["t"] - PLANTED_AT) <= 2.0 and hit["duration"] > 20
    size = (photos / "party.mp4").stat().st_size
    part = client.get(f"/api/images/{hit['id']}/file", headers={"Range": "bytes=100-299"})
    assert part.status == 206 and len(part.body) == 200
    assert part.headers["content-range"] == f"bytes 100-299/{size}"
    assert part.body == (photos / "party.mp4").read_bytes()[100:300]
    assert part.headers["content-type"] == "video/mp4"
    shown = client.get(f"/api/images/{hit['id']}/thumbnail", {"size": "256"})
    other = client.get(f"/api/images/{hit['id']}/thumbnail", {"size": "256", "t": "1"})
    assert shown.status == other.status == 200 and shown.body != other.body
    past = client.get(f"/api/images/{hit['id']}/thumbnail", {"t": "999"})
    assert past.status == 400 and "past the end" in past.json()["error"]
    # the Live Photo: its still is the hit, its video plays beside it
    hits = client.get("/api/search", {"q": "IMG_0001", "k": "20"}).json()["hits"]
    assert not any(h["path"].endswith(".MOV") for h in hits)
    live = next(h for h in hits if h["path"].endswith("IMG_0001.png"))
    assert live["motion"] is True and not any(h["motion"] for h in hits if h is not live)
    motion = client.get(f"/api/images/{live['id']}/motion", headers={"Range": "bytes=0-9"})
    assert motion.status == 206 and motion.body == (photos / "IMG_0001.MOV").read_bytes()[:10]
    assert motion.headers["content-type"] == "video/quicktime"
    plain = next(h for h in hits if h["kind"] == "photo" and not h["motion"])
    none = client.get(f"/api/images/{plain['id']}/motion")
    assert none.status == 404 and "no Live Photo video" in none.json()["error"]
    # a link planted beside a photo, named as its video, is not its video
    secret = photos.parent / "secret.txt"
    secret.write_text("not for the gallery")
    planted = Path(plain["path"]).with_suffix(".MOV")
    planted.symlink_to(secret)
    try:
        refused = client.get(f"/api/images/{plain['id']}/motion")
        again = next(h for h in client.get("/api/search", {"q": "IMG_0001", "k": "20"}).json()["hits"]
                     if h["id"] == plain["id"])
    finally:
        planted.unlink()
    assert refused.status == 404 and b"not for the gallery" not in refused.body
    assert again["motion"] is False


@pytest.mark.slow
def test_the_gallery_plays_a_video_from_its_moment(served, browser):
    from selenium.webdriver.common.by import By


    hit = served.get("/api/search", {"q": PLANTED.caption(), "k": "1", "kind": "video", "words": "0"}).json()
    t = hit["hits"][0]["t"]
    browser.get(f"{served.url}/?q={PLANTED.caption().replace(' ', '+')}&kind=video")
    tile = _wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, ".tile.playable"), "a video tile")[0]
    assert tile.find_element(By.CSS_SELECTOR, ".play").text == f"▶ 0:{int(t):02d}"
    tile.find_element(By.CSS_SELECTOR, ".open").click()
    # playing from its moment: the browser seeks there through Range requests
    state = "const v = document.getElementById('v-video'); return [v.readyState, v.currentTime, !!v.error]"
    _wait(browser, lambda d: (s := d.execute_script(state))[0] >= 2 and abs(s[1] - t) < 1.5,
          "the video at its second")
    assert not browser.execute_script(state)[2] and browser.find_element(By.ID, "v-video").is_displayed()
    assert not browser.find_element(By.ID, "v-img").is_displayed()
    assert _script_errors(browser) == []


def test_a_re_encoded_video_is_a_duplicate_and_a_shared_opening_is_not(shapes_models, tmp_path):
    others = [s for s in shapes.singles() if s != PLANTED]
    scenes = [(picture(s, 10 + i), SCENE) for i, s in enumerate([others[4], PLANTED, *others[5:8]])]
    folder = tmp_path / "videos"
    folder.mkdir()
    make_video(str(folder / "trip.mp4"), scenes, size=(128, 128))
    # a re-encode at a far lower bitrate. Not at another size: the tiny CLIP sees 64 pixels, and
    # how 96 and 128 pixels resample to them moved its mean frame by 0.92-0.99 (by training run)
    # where a real CLIP hardly moves, so a size change tested the tiny model, not the grouping
    make_video(str(folder / "trip-small.mp4"), scenes, size=(128, 128), crf=40)
    # the same opening scene, then other pictures of other things
    make_video(str(folder / "other.mp4"), scenes[:1] + [(picture(s, 50 + i), SCENE) for i, s in
                                                         enumerate(others[:4])], size=(128, 128))
    db = tmp_path / "db"
    assert runner.invoke(app, ["index", str(folder), "--db", str(db), "--model",
                               f"local-dir:{shapes_models.clip_dir}", "--device", "cpu"]).exit_code == 0
    result = runner.invoke(app, ["dupes", "--db", str(db), "--json"])
    assert result.exit_code == 0, result.output
    groups = [sorted(Path(m["path"]).name for m in g["members"]) for g in json.loads(result.stdout)]
    assert groups == [["trip-small.mp4", "trip.mp4"]], groups
    tagged = runner.invoke(app, ["tag", "--db", str(db), "--labels", "blue square,photo", "--json"])
    assert tagged.exit_code == 0, tagged.output
    tags = {Path(i["path"]).name: [t["label"] for t in i["tags"]] for i in json.loads(tagged.stdout)}
    assert set(tags) == {"trip.mp4", "trip-small.mp4", "other.mp4"}, tags
    # blue shapes are in the middle of trip, never in other: a video is tagged with what any of
    # its frames shows, not its first frame alone
    assert "blue square" in tags["trip.mp4"] and "blue square" in tags["trip-small.mp4"], tags
    assert "blue square" not in tags["other.mp4"], tags


def test_what_a_watcher_sees_a_changed_video_and_a_live_photos_motion(library, tmp_path):
    from clipsearch.build.builder import open_builder

    photos, db, _summary = library
    copy_db = tmp_path / "db"
    shutil.copytree(db, copy_db)
    folder = tmp_path / "photos"
    folder.mkdir()
    clip = folder / "clip.mp4"
    make_video(str(clip), [(picture(PLANTED, 1), SCENE)], size=(64, 64))
    make_video(str(folder / "IMG_0002.mov"), [(picture(PLANTED, 2), 1.0)], size=(64, 64))
    picture(PLANTED, 2).save(folder / "img_0002.jpg")  # a partner's name matches whatever its case
    with open_builder(copy_db, device="cpu") as builder:
        added = builder.update([str(clip), str(folder / "IMG_0002.mov"), str(folder / "img_0002.jpg")])
        assert (added.added, added.frames) == (2, 1), added  # the clip and the still; the motion is no item
        # the clip edited into a longer one: its rows replaced, all in one commit
        make_video(str(clip), [(picture(PLANTED, 1), SCENE), (picture(shapes.singles()[5], 3), SCENE)],
                   size=(64, 64))
        changed = builder.update([str(clip)])
    assert (changed.updated, changed.frames) == (1, 2), changed
    store = open_index(copy_db).store
    assert sorted(store.by_paths([str(clip)], ["t"]).column("t").to_pylist()) == [0.0, 4.0]
    assert not store.by_paths([str(folder / "IMG_0002.mov")], ["t"]).num_rows
    # the motion is served while it is the file recorded with its still, and a hit says so then only
    still, motion = folder / "img_0002.jpg", folder / "IMG_0002.mov"
    id_ = store.by_paths([str(still)], ["id"]).column("id")[0].as_py()
    with serving.in_process(copy_db) as client:

        def flagged() -> bool:
            hits = client.get("/api/search", {"q": "img_0002", "k": "50"}).json()["hits"]
            return next(h["motion"] for h in hits if h["id"] == id_)

        assert client.get(f"/api/images/{id_}/motion").body == motion.read_bytes() and flagged()
        make_video(str(motion), [(picture(shapes.singles()[5], 4), 1.0)], size=(64, 64))  # replaced
        replaced = client.get(f"/api/images/{id_}/motion")
        assert replaced.status == 404 and "IMG_0002.mov changed since" in replaced.json()["error"]
        assert not flagged()
        with open_builder(copy_db, device="cpu") as builder:  # what a watcher does when it sees it
            seen = builder.update([str(motion)])
        # nothing read but the folder: the still's row keeps its id, the new video is recorded
        assert (seen.added, seen.updated, seen.embedded, seen.unchanged) == (0, 0, 0, 1), seen
        assert client.get(f"/api/images/{id_}/motion").body == motion.read_bytes() and flagged()
        # a row from before partners were recorded: no motion until the next run records it
        open_index(copy_db).store.set_values("pairs", {None: [id_]})
        assert client.get(f"/api/images/{id_}/motion").status == 404 and not flagged()
        with open_builder(copy_db, device="cpu") as builder:
            again = builder.update([str(folder)])
        assert (again.updated, again.embedded) == (0, 0), again
        assert client.get(f"/api/images/{id_}/motion").body == motion.read_bytes() and flagged()


def test_moments_reach_the_end_of_the_stream_past_the_last_key_frame(tmp_path):
    """A phone clip may hold one key frame; a camera's, one every few seconds: the moments went on
    only a gap past the last key frame (6 s with one key frame: a single moment at 0:00; 20 s with
    key frames at 0, 7 and 14 s: none after 14 s)."""
    from clipsearch.media import video

    one_key = make_video(str(tmp_path / "clip.mp4"), [(picture(PLANTED, 1), 6.0)])  # x264's 250 frames
    assert [round(t) for t, _ in video.frames(one_key)] == [0, 4]
    sparse = make_video(str(tmp_path / "camera.mp4"), [(picture(PLANTED, 2), 20.0)], keyint=105)  # 7 s
    times = sorted(t for t, _ in video.frames(sparse))
    assert [round(t) for t in times if round(t) % 7 == 0] == [0, 7, 14]  # the key frames, and between
    assert times[-1] >= 16, times
    assert all(b - a <= video.MAX_GAP + 1 for a, b in zip(times, times[1:], strict=False)), times
