"""Decoding: formats, EXIF orientation, transparency, draft-mode downscaling, bad files."""

from __future__ import annotations

import io

import numpy as np
import pytest
from conftest import SAMPLES
from corpus import oriented_png
from PIL import Image

from clipsearch.errors import UnreadableImageError
from clipsearch.media.images import decode, load_image


@pytest.mark.parametrize("name", ["animals/chelsea.heic", "food/coffee.webp", "misc/clock_motion.gif",
                                  "textures/coins.tif", "misc/camera.bmp", "space/astronaut.jpg"])
def test_every_sample_format_decodes_to_rgb(name):
    d = load_image(str(SAMPLES / name))
    assert d.image.mode == "RGB"
    assert d.image.size == (d.width, d.height)


def test_exif_orientation_is_applied_and_capture_date_read():
    d = load_image(str(SAMPLES / "space" / "rocket.jpg"))
    # the landscape photo is stored sideways (427x640 pixels) with Orientation=6
    with Image.open(SAMPLES / "space" / "rocket.jpg") as raw:
        assert raw.size == (427, 640)
        upright = raw.convert("RGB").transpose(Image.Transpose.ROTATE_270)  # 90 degrees clockwise
    assert (d.width, d.height) == (640, 427)
    assert np.array_equal(np.asarray(d.image), np.asarray(upright))
    assert d.taken == "2015-02-11T18:03:00"


@pytest.mark.parametrize("orientation", range(1, 9))
def test_all_eight_orientations_give_the_same_upright_picture(orientation):
    upright = Image.new("RGB", (60, 40), "white")
    upright.paste((255, 0, 0), (0, 0, 20, 10))  # a red mark in the top-left corner
    d = decode(oriented_png(upright, orientation), "x.png")
    assert d.image.size == (60, 40) and (d.width, d.height) == (60, 40)
    assert d.image.getpixel((5, 5)) == (255, 0, 0)
    assert d.image.getpixel((55, 35)) == (255, 255, 255)


def test_transparency_becomes_white():
    d = load_image(str(SAMPLES / "animals" / "horse.png"))
    assert d.image.getpixel((0, 0)) == (255, 255, 255)  # transparent corner
    assert np.asarray(d.image).mean() > 128  # a black horse on white, not black on black


def test_sixteen_bit_greyscale_keeps_its_tones():
    arr = np.linspace(0, 65535, 256 * 16, dtype=np.uint16).reshape(16, 256)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "PNG")
    d = decode(buf.getvalue(), "deep.png")
    values = np.asarray(d.image)[..., 0]
    assert values.min() == 0 and values.max() == 255
    assert 100 < values.mean() < 155  # a ramp, not clipped to white


def test_large_jpeg_decodes_at_reduced_scale_close_to_full_decode(embedder):
    big = Image.open(SAMPLES / "travel" / "china.jpg").resize((3200, 2136), Image.BICUBIC)
    buf = io.BytesIO()
    big.save(buf, "JPEG", quality=90)
    data = buf.getvalue()
    drafted = decode(data, "big.jpg", min_side=embedder.decode_min_side)
    full = decode(data, "big.jpg")
    assert (drafted.width, drafted.height) == (3200, 2136)  # metadata keeps the real size
    assert drafted.image.size == (800, 534)  # decoded at 1/4 scale, both sides >= 2 x 224
    a = embedder.preprocess(drafted.image).numpy()
    b = embedder.preprocess(full.image).numpy()
    assert np.abs(a - b).mean() < 0.02  # what the model sees barely changes


@pytest.mark.parametrize(("data", "reason"), [
    (b"", "empty file (0 bytes)"),
    (b"hello, I am text", "not a readable image"),
    ((SAMPLES / "travel" / "flower.jpg").read_bytes()[:3000], "truncated or incomplete file"),
])
def test_bad_bytes_raise_a_reason_naming_the_file(data, reason):
    with pytest.raises(UnreadableImageError) as err:
        decode(data, "/photos/bad.jpg")
    assert err.value.path == "/photos/bad.jpg"
    assert reason in err.value.reason
    assert str(err.value).startswith("/photos/bad.jpg: ")


def test_unreadable_and_vanished_files(tmp_path):
    with pytest.raises(UnreadableImageError, match="file disappeared while indexing"):
        load_image(str(tmp_path / "gone.jpg"))
    (tmp_path / "x.jpg").mkdir()
    with pytest.raises(UnreadableImageError, match="is a folder"):
        load_image(str(tmp_path / "x.jpg"))
