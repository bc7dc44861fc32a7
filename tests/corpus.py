"""A messy photo folder, made at test time: every kind of file a real library throws at an
indexer, each with what clipsearch must do with it (index it, or skip it saying why).

Nothing here is committed as data; `make_corpus` writes a few hundred KB into a temp folder.
"""

from __future__ import annotations

import io
import os
import shutil
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

SAMPLES = Path(__file__).resolve().parents[1] / "sample_images"


@dataclass
class Corpus:
    root: Path
    ok: set[str] = field(default_factory=set)  # paths that must end up indexed
    skipped: dict[str, str] = field(default_factory=dict)  # path -> words its reason must hold
    same_picture: list[str] = field(default_factory=list)  # paths that must decode identically
    delete_after_scan: str | None = None  # removed between the scan and the decode
    unreadable: str | None = None  # mode 000: skipped only where permissions apply (not root)


def _photo(seed: int, size=(160, 120)) -> Image.Image:
    with Image.open(SAMPLES / "travel" / "flower.jpg") as img:
        return img.convert("RGB").resize(size).rotate(seed * 7)


def _jpeg(img: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=90, **kw)
    return buf.getvalue()


def _png(img: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG", **kw)
    return buf.getvalue()


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_header_only(width: int, height: int) -> bytes:
    """A valid PNG signature and IHDR declaring width x height, with a few bytes of pixel data:
    what a decompression bomb looks like before anything is decoded."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr)
            + _chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + _chunk(b"IEND", b""))


def _jpeg_declaring(width: int, height: int) -> bytes:
    """A real JPEG whose frame header (SOF0) is rewritten to claim width x height."""
    data = bytearray(_jpeg(_photo(1, (16, 16))))
    sof = data.index(b"\xff\xc0")
    data[sof + 5:sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def oriented_png(upright: Image.Image, orientation: int) -> bytes:
    """Pixels stored so that applying EXIF `orientation` gives back `upright`."""
    inverse = {1: None, 2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180,
               4: Image.Transpose.FLIP_TOP_BOTTOM, 5: Image.Transpose.TRANSPOSE,
               6: Image.Transpose.ROTATE_90, 7: Image.Transpose.TRANSVERSE,
               8: Image.Transpose.ROTATE_270}[orientation]
    stored = upright.transpose(inverse) if inverse is not None else upright
    exif = Image.Exif()
    exif[0x0112] = orientation
    return _png(stored, exif=exif.tobytes())


def _animated(fmt: str) -> bytes:
    frames = [_photo(i, (64, 48)) for i in range(3)]
    buf = io.BytesIO()
    frames[0].save(buf, fmt, save_all=True, append_images=frames[1:], duration=100, loop=0)
    return buf.getvalue()


def _corrupt_exif_jpeg() -> bytes:
    """A good JPEG whose EXIF block claims an IFD far beyond its end."""
    data = _jpeg(_photo(2), exif=b"Exif\x00\x00MM\x00\x2a\x00\x00\x00\x08" + b"\xff" * 30)
    return data


def make_corpus(root: Path, outside: Path) -> Corpus:
    """Write the corpus under `root`; `outside` receives the target of a symlink leaving it."""
    c = Corpus(root)
    root.mkdir(parents=True)
    outside.mkdir(parents=True, exist_ok=True)

    def put(rel: str, data: bytes, expect: str | None = None) -> str:
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        if expect is None:
            c.ok.add(str(path))
        else:
            c.skipped[str(path)] = expect
        return str(path)

    # --- broken or hostile: skipped, each with its reason ------------------------------------
    good_jpeg, good_png = _jpeg(_photo(3)), _png(_photo(4))
    put("bad/empty.jpg", b"", "empty file (0 bytes)")
    put("bad/truncated.jpg", good_jpeg[: len(good_jpeg) // 2], "truncated or incomplete file")
    put("bad/truncated.png", good_png[: len(good_png) // 2], "truncated or incomplete file")
    put("bad/random bytes.jpg", os.urandom(4096), "not a readable image")
    put("bad/notes.png", b"shopping list: eggs, milk\n" * 20, "not a readable image")
    put("bad/bomb.png", png_header_only(50_000, 50_000), "decompression bomb")
    put("bad/bomb.jpg", _jpeg_declaring(60_000, 60_000), "decompression bomb")
    put("bad/truncated.gif", _animated("GIF")[:40], "not a readable image")
    put("bad/corrupt.webp", b"RIFF\x24\x00\x00\x00WEBPVP8 " + os.urandom(200), "cannot decode image")
    put("bad/corrupt.heic", b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00heicmif1" + os.urandom(300),
        "image")
    bad_name = os.fsencode(str(root / "bad")) + b"/caf\xe9.jpg"
    with open(bad_name, "wb") as f:
        f.write(good_jpeg)
    c.skipped[str(root / "bad" / "caf?.jpg")] = "file name is not valid UTF-8; rename the file"
    os.mkfifo(root / "bad" / "pipe.jpg")
    c.skipped[str(root / "bad" / "pipe.jpg")] = "not a regular file"
    (root / "bad" / "dangling.jpg").symlink_to(root / "nowhere.jpg")
    c.skipped[str(root / "bad" / "dangling.jpg")] = "broken symlink"
    c.delete_after_scan = put("bad/deleted soon.jpg", good_jpeg, "file disappeared while indexing")
    c.unreadable = put("bad/locked.jpg", _jpeg(_photo(5)))
    os.chmod(c.unreadable, 0)

    # --- odd but valid: indexed -----------------------------------------------------------
    put("odd/cmyk.jpg", _jpeg(_photo(6).convert("CMYK")))
    put("odd/16-bit.png", _png(Image.fromarray(np.asarray(_photo(7).convert("L"), "<u2") * 257)))
    palette = _photo(8).convert("P", palette=Image.Palette.ADAPTIVE, colors=32)
    put("odd/palette transparent.png", _png(palette, transparency=0))
    put("odd/grey alpha.png", _png(_photo(9).convert("LA")))
    put("odd/grey.jpg", _jpeg(_photo(10).convert("L")))
    put("odd/animated.gif", _animated("GIF"))
    put("odd/animated.webp", _animated("WEBP"))
    put("odd/corrupt exif.jpg", _corrupt_exif_jpeg())
    put("odd/png inside.jpg", _png(_photo(11)))
    put("odd/one pixel.png", _png(Image.new("RGB", (1, 1), "red")))
    put("odd/panorama 20000x2.png", _png(Image.new("RGB", (20_000, 2), "blue")))
    put("odd/line\nbreak.jpg", _jpeg(_photo(12)))
    put("odd/" + "long name " * 24 + ".jpg", _jpeg(_photo(13)))  # 245 bytes: near NAME_MAX
    deep = "/".join(f"level {i:02d} of a very deeply nested folder tree" for i in range(60))
    put(f"odd/{deep}/deep.jpg", _jpeg(_photo(14)))  # a path of over 3,000 characters
    shutil.copy(SAMPLES / "animals" / "chelsea.heic", root / "odd" / "iphone.heic")
    c.ok.add(str(root / "odd" / "iphone.heic"))
    upright = _photo(15, (90, 60))
    for orientation in range(1, 9):
        c.same_picture.append(put(f"odd/orientation {orientation}.png", oriented_png(upright, orientation)))
    (outside / "elsewhere.jpg").write_bytes(_jpeg(_photo(16)))
    (root / "odd" / "link to outside.jpg").symlink_to(outside / "elsewhere.jpg")
    c.ok.add(str(root / "odd" / "link to outside.jpg"))

    # --- folders that look like files, and loops: walked, never fatal -------------------------
    put("odd/folder.jpg/inside.jpg", _jpeg(_photo(17)))
    (root / "odd" / "loop").symlink_to(root, target_is_directory=True)
    return c
