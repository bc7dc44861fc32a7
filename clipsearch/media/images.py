"""Decoding one file into an upright RGB picture, safely, with the metadata the index keeps."""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import re
import stat
import threading
import warnings
from collections.abc import Callable, Iterator
from typing import BinaryIO

from PIL import Image, ImageOps, UnidentifiedImageError

from clipsearch.errors import UnreadableImageError
from clipsearch.media.exif import exif_time
from clipsearch.media.kinds import RAW_HEAD, Decoded, is_raw_name

_EXIF_IFD = 0x8769
_ORIENTATION = 0x0112
# Models resize the short side to their input size and keep the central square, so a 20000x2
# strip would first become a 2,240,000 x 224 image (gigabytes). Beyond this aspect ratio only
# the centre is kept; no photo, panoramas included, comes near it.
MAX_ASPECT = 100
_formats_registered = False
_registering = threading.Lock()


def register_formats() -> None:
    """HEIC/HEIF (iPhone photos) through pillow-heif, once per process; a decode thread that
    arrives meanwhile waits for it (one that went on found no HEIC opener yet)."""
    global _formats_registered
    if _formats_registered:
        return
    with _registering:
        if _formats_registered:
            return
        try:
            from pillow_heif import register_heif_opener
        except ImportError:  # optional at run time: HEIC files are then skipped with a reason
            register_heif_opener = None
        if register_heif_opener is not None:
            register_heif_opener()
        _formats_registered = True


def content_hash(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=16).hexdigest()


_HASH_CHUNK = 1 << 20


def hash_file(path: str) -> str:
    """content_hash of the file at `path`, read a MiB at a time: a 4 GB video never sits in memory."""
    with _reading(path):
        digest = hashlib.blake2b(digest_size=16)
        with open_regular(path) as f:
            while chunk := f.read(_HASH_CHUNK):
                digest.update(chunk)
        return digest.hexdigest()


# A RAW file is 20-80 MB, nearly all of it sensor data that its embedded preview makes unnecessary
# to read: its identity is drawn from its size, its first MiB (the headers: EXIF with the
# capture time to the sub-second, the maker notes), its last 64 KiB and 16 blocks of 64 KiB
# spread over the rest (sensor noise, unique to each shot), as digiKam identifies large files.
# Reading 2 MiB instead of all of it is what lets a RAW index at the speed of a JPEG (and a
# NAS send a few MiB, not the whole file). Distinct shots always differ there; an edit in place
# changes the headers. `person` keeps these digests apart from whole-content ones.
_RAW_BLOCK, _RAW_BLOCKS = 1 << 16, 16
_RAW_PERSON = b"clipsearch-raw1"


def raw_identity(size: int, read_at: Callable[[int, int], bytes]) -> str:
    """The content hash of a RAW file of `size` bytes, `read_at(offset, length)` reading it."""
    digest = hashlib.blake2b(digest_size=16, person=_RAW_PERSON)
    digest.update(size.to_bytes(8, "little"))
    if size <= RAW_HEAD + (_RAW_BLOCKS + 1) * _RAW_BLOCK:
        digest.update(read_at(0, size))
        return digest.hexdigest()
    digest.update(read_at(0, RAW_HEAD))
    span = size - RAW_HEAD - _RAW_BLOCK
    for i in range(_RAW_BLOCKS):
        digest.update(read_at(RAW_HEAD + span * i // _RAW_BLOCKS, _RAW_BLOCK))
    digest.update(read_at(size - _RAW_BLOCK, _RAW_BLOCK))
    return digest.hexdigest()


def raw_file_identity(path: str) -> tuple[str, bytes]:
    """raw_identity of the RAW file at `path`, read from the file (2 MiB of it), and its first
    RAW_HEAD bytes (its metadata)."""
    with _reading(path), open_regular(path) as f:
        size = os.fstat(f.fileno()).st_size
        head = f.read(RAW_HEAD)

        def read_at(at: int, n: int) -> bytes:
            if at + n <= len(head):
                return head[at:at + n]
            f.seek(at)
            return f.read(n)

        return raw_identity(size, read_at), head


def identity(path: str, data: bytes) -> str:
    """The content hash the index keeps for the file at `path` whose bytes are `data`:
    content_hash, or raw_identity for a RAW."""
    if is_raw_name(path):
        return raw_identity(len(data), lambda at, n: data[at:at + n])
    return content_hash(data)


def read_file(path: str) -> bytes:
    """The bytes of the regular file at `path` (as long as it was when opened: one still being
    written is read again by the next run, which sees its new size)."""
    with _reading(path), open_regular(path) as f:
        return f.read(os.fstat(f.fileno()).st_size)


class NotRegularFileError(OSError):
    pass


def open_regular(path: str) -> BinaryIO:
    """`path` opened for reading when it is a regular file. Opened without blocking first: a FIFO
    would hang the open itself (a watcher with it), and a device such as /dev/zero never ends."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    try:
        mode = os.fstat(fd).st_mode
        if stat.S_ISDIR(mode):
            raise IsADirectoryError(path)
        if not stat.S_ISREG(mode):
            raise NotRegularFileError(path)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


@contextlib.contextmanager
def _reading(path: str) -> Iterator[None]:
    try:
        yield
    except FileNotFoundError:
        raise UnreadableImageError(path, "file disappeared while indexing") from None
    except PermissionError:
        raise UnreadableImageError(path, "permission denied; make the file readable") from None
    except IsADirectoryError:
        raise UnreadableImageError(path, "is a folder, not an image file") from None
    except NotRegularFileError:
        raise UnreadableImageError(path, "not a regular file (device, pipe or socket)") from None
    except OSError as exc:
        raise UnreadableImageError(path, f"cannot read file ({exc.strerror or exc})") from None


def _capture_time(img: Image.Image) -> str | None:
    try:
        exif = img.getexif()
        return exif_time(exif.get_ifd(_EXIF_IFD), exif)
    except Exception:  # EXIF in the wild is often malformed; a missing date is not an error
        return None


def _quarter_turned(img: Image.Image) -> bool:
    try:
        return img.getexif().get(_ORIENTATION) in (5, 6, 7, 8)
    except Exception:
        return False


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        # 16-bit greyscale: keep the top 8 bits instead of letting convert() clip to white
        import numpy as np

        arr = np.asarray(img, dtype=np.uint32) >> 8
        img = Image.fromarray(arr.clip(0, 255).astype(np.uint8), mode="L")
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "RGBa", "La", "PA"):
        # transparent areas become white, as a viewer shows them; convert() would turn them black
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def _central_strip(img: Image.Image) -> Image.Image:
    w, h = img.size
    short = max(1, min(w, h))
    if max(w, h) <= MAX_ASPECT * short:
        return img
    keep = MAX_ASPECT * short
    if w > h:
        left = (w - keep) // 2
        return img.crop((left, 0, left + keep, h))
    top = (h - keep) // 2
    return img.crop((0, top, w, top + keep))


def decode(data: bytes, path: str, min_side: int | None = None) -> Decoded:
    """Decode image bytes; `min_side` lets large JPEGs decode at a reduced scale (draft mode).

    The draft keeps both sides at least `min_side`, so the model's own resize still has enough
    pixels to filter from; choose it well above the model's input size.
    """
    if is_raw_name(path):
        from clipsearch.media.raw import decode as decode_raw

        return decode_raw(data, path, min_side)
    register_formats()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # EXIF and palette warnings say nothing actionable
            with Image.open(io.BytesIO(data)) as img:
                full_size = img.size
                if min_side and img.format == "JPEG":
                    img.draft(None, (min_side, min_side))
                img.load()
                taken = _capture_time(img)
                turned = _quarter_turned(img)
                try:
                    upright = ImageOps.exif_transpose(img)
                except Exception:  # a corrupt orientation tag: keep the pixels as stored
                    upright = img
                rgb = _to_rgb(_central_strip(upright))
    except UnreadableImageError:
        raise
    except Image.DecompressionBombError as exc:
        pixels = re.search(r"\((\d+) pixels\)", str(exc))
        size = f"{int(pixels.group(1)) / 1e6:,.0f} megapixels" if pixels else "its size"
        raise UnreadableImageError(
            path, f"refused as a possible decompression bomb: {size} is over the safety limit of "
                  f"{2 * Image.MAX_IMAGE_PIXELS / 1e6:,.0f} megapixels") from None
    except UnidentifiedImageError:
        if not data:
            raise UnreadableImageError(path, "empty file (0 bytes)") from None
        raise UnreadableImageError(path, "not a readable image (unknown or corrupt format)") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        text = str(exc) or type(exc).__name__
        if "truncated" in text.lower() or isinstance(exc, EOFError):
            raise UnreadableImageError(
                path, "truncated or incomplete file; copy it again from its source") from None
        raise UnreadableImageError(path, f"cannot decode image ({text})") from None
    width, height = reversed(full_size) if turned else full_size
    return Decoded(rgb, width, height, taken)


def load_image(path: str, min_side: int | None = None) -> Decoded:
    return decode(read_file(path), path, min_side)


def thumbnail(data: bytes, name: str, size: int, fmt: str = "WEBP") -> bytes:
    """The upright picture in `data`, scaled to fit a `size` x `size` box (never enlarged),
    encoded as `fmt`: WEBP (quality 80), JPEG (85) or PNG."""
    image = decode(data, name, min_side=size).image
    image.thumbnail((size, size), Image.Resampling.LANCZOS, reducing_gap=2.0)
    out = io.BytesIO()
    if fmt == "WEBP":
        image.save(out, "WEBP", quality=80, method=4)
    elif fmt == "JPEG":
        image.save(out, "JPEG", quality=85, optimize=True)
    else:
        image.save(out, fmt)
    return out.getvalue()
