"""RAW photos (clipsearch.media.raw): DNGs written here from the shapes task's pictures (a Bayer mosaic,
with PiDNG), indexed by default beside JPEGs with the trained CLIP: through the embedded preview
or the sensor data, upright by their orientation tag, dated and placed by their EXIF; a RAW +
JPEG pair is one photo; bad RAWs are skipped with their reason, never fatal."""

from __future__ import annotations

import io
import json
import os
import random
import shutil
import struct
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from benchmarks import shapes
from benchmarks.raws import make_dng
from benchmarks.words import sidecar
from clipsearch.cli.commands import app
from clipsearch.media import raw
from clipsearch.media.images import load_image
from tests import serving

runner = CliRunner()
SIDE = 256  # the shapes' 64 px pictures, enlarged: a camera's preview is larger than the model


def picture(scene: shapes.Scene, seed: int) -> Image.Image:
    return shapes.render(scene, random.Random(seed)).resize((SIDE, SIDE), Image.Resampling.BICUBIC)


def halves() -> Image.Image:
    """Stored landscape: its left half red, its right half green."""
    image = Image.new("RGB", (SIDE, SIDE * 2 // 3), (40, 160, 60))
    image.paste((215, 40, 40), (0, 0, SIDE // 2, SIDE * 2 // 3))
    return image


def unknown_camera_cr3(path: Path, model: str) -> None:
    """A Canon CR3's boxes (ISO media) with its camera's EXIF (CMT1) and no picture: what a
    camera newer than the installed LibRaw looks like to it."""
    def box(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", 8 + len(payload)) + kind + payload

    exif = Image.Exif()
    exif[0x010F], exif[0x0110] = "Canon", model
    canon = bytes.fromhex("85c0b687820f11e08111f4ce462b6a48")
    path.write_bytes(box(b"ftyp", b"crx " + struct.pack(">I", 1) + b"crx isom")
                     + box(b"moov", box(b"uuid", canon + box(b"CMT1", exif.tobytes()))) + bytes(4096))


@pytest.fixture(scope="module")
def library(shapes_models, tmp_path_factory):
    """RAWs beside JPEGs and PNGs, indexed through the CLI with the trained CLIP."""
    root = tmp_path_factory.mktemp("raws")
    photos = root / "photos"
    (photos / "card").mkdir(parents=True)
    (photos / "exports").mkdir()
    singles = shapes.singles()
    for i, scene in enumerate(singles[:4]):
        shapes.render(scene, random.Random(i)).save(photos / f"other{i}.png")
    sea = singles[5]
    make_dng(str(photos / "card" / "sea.dng"), picture(sea, 1), preview=SIDE,
             taken="2024:07:14 18:30:00", lens="RF 24-70mm F2.8 L IS USM", gps=(38.7223, -9.1393),
             xmp=sidecar(["regatta"]).encode())
    picture(sea, 1).save(photos / "exports" / "sea.jpg", quality=90)  # what an editor exported
    make_dng(str(photos / "card" / "bare.dng"), picture(singles[6], 2))  # no preview: demosaiced
    make_dng(str(photos / "card" / "small.dng"), picture(singles[7], 3), preview=48)  # too small
    make_dng(str(photos / "card" / "turned.dng"), halves(), orientation=6, preview=SIDE)
    # a camera set to RAW + JPEG: one photo
    make_dng(str(photos / "card" / "IMG_0002.DNG"), picture(singles[8], 4), preview=SIDE)
    picture(singles[8], 4).save(photos / "card" / "IMG_0002.JPG", quality=90)
    # bad ones
    whole = (photos / "card" / "sea.dng").read_bytes()
    (photos / "card" / "cut.dng").write_bytes(whole[:len(whole) // 2])
    shutil.copy(photos / "other0.png", photos / "card" / "renamed.nef")
    unknown_camera_cr3(photos / "card" / "new.cr3", "Canon EOS R99")
    db = root / "db"
    result = runner.invoke(app, ["index", str(photos), "--db", str(db), "--model",
                                 f"local-dir:{shapes_models.clip_dir}", "--device", "cpu", "--json"])
    assert result.exit_code == 0, result.output
    return photos, db, json.loads(result.stdout)


def cli_json(*args: str) -> list[dict]:
    result = runner.invoke(app, [*args, "--json", "--no-server"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_raws_are_indexed_by_default_and_bad_ones_skipped_with_their_reason(library):
    photos, _db, summary = library
    skipped = {Path(s["path"]).name: s["reason"] for s in summary["skipped"]}
    assert set(skipped) == {"cut.dng", "renamed.nef", "new.cr3"}, skipped
    assert "truncated" in skipped["cut.dng"]
    assert "not a RAW file but a PNG image" in skipped["renamed.nef"] and ".png" in skipped["renamed.nef"]
    version = raw.libraw_version()
    assert "Canon EOS R99" in skipped["new.cr3"] and f"LibRaw {version}" in skipped["new.cr3"]
    # 4 PNGs, the export, sea, bare, small, turned, and the pair once
    assert summary["added"] == 10, summary


def test_a_raw_is_known_by_2_mib_of_it(tmp_path):
    """A RAW's content hash is drawn from its headers, its end and blocks spread over its sensor
    data (images.raw_identity): a copy has the same, another shot or an edit of its metadata or of
    its pixels another, whether it is read from the file or from its bytes."""
    from clipsearch.media.images import identity, raw_file_identity
    from clipsearch.media.kinds import RAW_HEAD

    big = Image.effect_noise((1400, 1000), 64).convert("RGB")  # 2.8 MB as a 16-bit mosaic
    first = make_dng(str(tmp_path / "a.dng"), big, taken="2024:07:14 18:30:00")
    data = Path(first).read_bytes()
    assert len(data) > 2 * RAW_HEAD
    digest, head = raw_file_identity(first)
    assert digest == identity(first, data) and head == data[:RAW_HEAD]
    shutil.copy(first, tmp_path / "copy.dng")
    assert raw_file_identity(str(tmp_path / "copy.dng"))[0] == digest
    retimed = make_dng(str(tmp_path / "b.dng"), big, taken="2024:07:14 18:30:01")
    assert raw_file_identity(retimed)[0] != digest
    edited = bytearray(data)
    middle = RAW_HEAD + (len(data) - RAW_HEAD - (1 << 16)) // 2  # inside the 9th sampled block
    edited[middle] ^= 0xFF
    (tmp_path / "edited.dng").write_bytes(bytes(edited))
    assert raw_file_identity(str(tmp_path / "edited.dng"))[0] != digest
    assert identity("a.jpg", data) != digest  # a whole-content hash is of another kind


def test_the_preview_is_used_when_it_is_large_enough(library):
    photos, _db, _summary = library
    card = photos / "card"
    via = {name: raw.decode((card / name).read_bytes(), name, 2 * shapes.SIZE).via
           for name in ("sea.dng", "bare.dng", "small.dng")}
    assert via == {"sea.dng": "preview", "bare.dng": "demosaic", "small.dng": "demosaic"}
    # either way the same picture, in its colours
    for name in ("sea.dng", "bare.dng"):
        assert load_image(str(card / name)).image.size[0] >= shapes.SIZE


def test_orientation_dates_and_words_come_from_the_raw(library):
    photos, db, _summary = library
    turned = load_image(str(photos / "card" / "turned.dng"))
    assert (turned.width, turned.height) == (SIDE * 2 // 3, SIDE)  # upright: portrait
    top, bottom = turned.image.getpixel((turned.image.width // 2, 5)), turned.image.getpixel(
        (turned.image.width // 2, turned.image.height - 5))
    assert top[0] > 150 > top[1] and bottom[1] > 120 > bottom[0], (top, bottom)  # red on top
    demosaiced = raw.decode((photos / "card" / "bare.dng").read_bytes(), "bare.dng")
    assert demosaiced.via == "demosaic" and demosaiced.width == SIDE
    # capture time, camera, lens and place, as a JPEG's
    found = cli_json("search", "lisbon", "--db", str(db), "-k", "3", "--after", "2024-07-01",
                     "--before", "2024-07-31")
    assert found and Path(found[0]["path"]).name == "sea.dng", found
    assert found[0]["words"].get("place"), found[0]
    keyword = cli_json("search", "regatta", "--db", str(db), "-k", "1")  # from the DNG's own XMP
    assert Path(keyword[0]["path"]).name == "sea.dng" and keyword[0]["words"] == {"keywords": ["regatta"]}
    info = cli_json("search", "canon eos r5", "--db", str(db), "-k", "20", "--camera", "eos r5")
    # every DNG says Canon EOS R5; the pair's JPEG, saved here without EXIF, says nothing
    assert {Path(h["path"]).name for h in info} == {"sea.dng", "bare.dng", "small.dng", "turned.dng"}, info


def test_a_raw_and_jpeg_pair_is_one_photo(library):
    photos, db, _summary = library
    hits = cli_json("search", "IMG_0002", "--db", str(db), "-k", "20")
    pair = [h for h in hits if Path(h["path"]).stem == "IMG_0002"]
    assert len(pair) == 1, hits
    assert pair[0]["path"] == str(photos / "card" / "IMG_0002.JPG")
    assert pair[0]["original"] == str(photos / "card" / "IMG_0002.DNG")
    assert not any("original" in h for h in hits if h is not pair[0])


def test_a_raw_and_the_jpeg_it_came_from_find_each_other(library):
    photos, db, _summary = library
    raw_file, jpeg = photos / "card" / "sea.dng", photos / "exports" / "sea.jpg"
    for asked, other in ((raw_file, jpeg), (jpeg, raw_file)):
        hits = cli_json("similar", str(asked), "--db", str(db), "-k", "3")
        assert [h["path"] for h in hits[:2]] == [str(asked), str(other)], hits


def test_dupes_keeps_a_pair_whole(library, tmp_path):
    photos, db, _summary = library
    # a copy of the pair's JPEG elsewhere: the pair is the keeper, and --extras never lists the
    # pair's RAW without its JPEG
    copy_db = tmp_path / "db"
    shutil.copytree(db, copy_db)
    shutil.copy(photos / "card" / "IMG_0002.JPG", photos / "exports" / "IMG_0002 copy.jpg")
    try:
        assert runner.invoke(app, ["index", str(photos), "--db", str(copy_db)]).exit_code == 0
        result = runner.invoke(app, ["dupes", "--db", str(copy_db), "--json"])
        assert result.exit_code == 0, result.output
        groups = json.loads(result.stdout)
    finally:
        (photos / "exports" / "IMG_0002 copy.jpg").unlink()
    group = next(g for g in groups if any(Path(m["path"]).stem == "IMG_0002" for m in g["members"]))
    assert group["keeper"]["path"] == str(photos / "card" / "IMG_0002.JPG")
    assert group["keeper"]["original"] == str(photos / "card" / "IMG_0002.DNG")
    assert "its RAW is beside it" in group["reason"], group
    extras = runner.invoke(app, ["dupes", "--db", str(copy_db), "--paths", "--extras"]).stdout.split("\n")
    assert str(photos / "card" / "IMG_0002.DNG") not in extras


def test_dupes_never_lists_the_raw_a_kept_rendition_uses(library, tmp_path):
    """Two renditions of one shot beside its RAW (`IMG_0002.JPG` and a byte-identical
    `IMG_0002.jpg`): both pair with `IMG_0002.DNG`; the extra rendition is listed, the RAW the
    keeper uses is not."""
    photos, db, _summary = library
    copy_db = tmp_path / "db"
    shutil.copytree(db, copy_db)
    second = photos / "card" / "IMG_0002.jpg"
    shutil.copy(photos / "card" / "IMG_0002.JPG", second)
    try:
        assert runner.invoke(app, ["index", str(photos), "--db", str(copy_db)]).exit_code == 0
        result = runner.invoke(app, ["dupes", "--db", str(copy_db), "--exact", "--json"])
        extras = runner.invoke(app, ["dupes", "--db", str(copy_db), "--exact", "--paths", "--extras"])
    finally:
        second.unlink()
    group = next(g for g in json.loads(result.stdout) if any(Path(m["path"]).stem == "IMG_0002"
                                                            for m in g["members"]))
    assert {m.get("original") for m in group["members"]} == {str(photos / "card" / "IMG_0002.DNG")}
    assert extras.exit_code == 0, extras.output
    listed = extras.stdout.splitlines()
    extra = next(m["path"] for m in group["members"][1:])
    assert extra in listed and group["keeper"]["path"] not in listed
    assert str(photos / "card" / "IMG_0002.DNG") not in listed


def test_a_jpeg_that_comes_or_goes_changes_what_its_raw_is(library, tmp_path):
    from clipsearch.build.builder import open_builder
    from clipsearch.search.engine import open_index

    photos, db, _summary = library
    copy_db = tmp_path / "db"
    shutil.copytree(db, copy_db)
    raw_file = photos / "card" / "bare.dng"
    jpeg = photos / "card" / "bare.jpg"
    load_image(str(raw_file)).image.save(jpeg, quality=90)
    try:
        with open_builder(copy_db, device="cpu") as builder:
            added = builder.update([str(jpeg)])  # what a watcher sees: the JPEG alone
            store = open_index(copy_db).store
            assert added.added == 1 and added.removed == 1, added
            assert not store.by_paths([str(raw_file)], ["path"]).num_rows
            assert store.by_paths([str(jpeg)], ["path"]).num_rows == 1
            jpeg.unlink()
            gone = builder.update([str(jpeg)])
            assert gone.removed == 1 and gone.added + gone.moved >= 1, gone
            store = open_index(copy_db).store
            assert store.by_paths([str(raw_file)], ["path"]).num_rows == 1
    finally:
        jpeg.unlink(missing_ok=True)


def test_the_server_shows_a_raw_and_hands_out_its_original(library):
    photos, db, _summary = library
    with serving.in_process(db) as client:
        hits = client.get("/api/search", {"q": "dng", "k": "20"}).json()["hits"]
        lone = next(h for h in hits if h["path"].endswith("sea.dng"))
        shown = client.get(f"/api/images/{lone['id']}/file")
        assert shown.status == 200 and shown.headers["content-type"] == "image/jpeg"
        assert Image.open(io.BytesIO(shown.body)).size == (SIDE, SIDE)  # the camera's preview
        thumb = client.get(f"/api/images/{lone['id']}/thumbnail", {"size": "256"})
        assert thumb.status == 200 and max(Image.open(io.BytesIO(thumb.body)).size) == SIDE
        kept = client.get(f"/api/images/{lone['id']}/original")
        assert kept.status == 200 and kept.body == (photos / "card" / "sea.dng").read_bytes()
        assert kept.headers["content-disposition"].startswith("attachment")
        pair = next(h for h in client.get("/api/search", {"q": "IMG_0002", "k": "20"}).json()["hits"]
                    if h["path"].endswith("IMG_0002.JPG"))
        assert pair["original"] == str(photos / "card" / "IMG_0002.DNG")
        shown = client.get(f"/api/images/{pair['id']}/file")
        kept = client.get(f"/api/images/{pair['id']}/original")
        assert shown.body == (photos / "card" / "IMG_0002.JPG").read_bytes()
        assert kept.body == (photos / "card" / "IMG_0002.DNG").read_bytes()
        # a link in the RAW's place (a synced folder, an unpacked archive) is not handed out
        raw_file, secret = photos / "card" / "IMG_0002.DNG", photos.parent / "secret.key"
        secret.write_text("not for the gallery")
        raw_file.rename(photos.parent / "IMG_0002.DNG.away")
        raw_file.symlink_to(secret)
        try:
            linked = client.get(f"/api/images/{pair['id']}/original")
        finally:
            raw_file.unlink()
            (photos.parent / "IMG_0002.DNG.away").rename(raw_file)
        # not the pair's original, nor a file to fall back from: refused until it is indexed again
        assert linked.status == 404 and b"not for the gallery" not in linked.body
        assert "IMG_0002.DNG changed since" in linked.json()["error"], linked.json()
        # the RAW rewritten in place (a regular file, but not the one indexed): refused as well
        before = raw_file.stat()
        raw_file.write_bytes(b"x" * 64)
        try:
            swapped = client.get(f"/api/images/{pair['id']}/original")
        finally:
            raw_file.write_bytes(kept.body)
            os.utime(raw_file, ns=(before.st_atime_ns, before.st_mtime_ns))
        assert swapped.status == 404 and b"x" * 64 not in swapped.body
        assert client.get(f"/api/images/{pair['id']}/original").body == kept.body  # as indexed again
