"""RAW photos through rawpy (LibRaw): the camera's embedded preview when it is large enough for
the model, a half-size demosaic otherwise; orientation, capture time, camera, lens and GPS from
the RAW's own metadata."""

from __future__ import annotations

import contextlib
import io
import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from PIL import Image, ImageOps

from clipsearch.errors import UnreadableImageError
from clipsearch.media.exif import Meta, exif_time, read_exif
from clipsearch.media.kinds import RAW_HEAD, Decoded

# The preview is used when its short side is at least this share of what the caller asked for
# (min_side, twice the model's input): a 1620x1080 preview feeds a 224 px model as well as the
# sensor's 6000x4000 does
_PREVIEW_SHARE = 0.5
# A picture to look at (min_side None: the server's rendition) takes a preview this large
VIEW_SIDE = 1024
# A preview that is not the photo's shape (a 160x120 thumbnail of a 3:2 photo, letterboxed) is
# not the photo: aspect ratios must agree within this
_ASPECT_SLACK = 0.03
# LibRaw's flip (dcraw's) as the EXIF orientation it came from
_FLIP_TO_ORIENTATION = {0: 1, 1: 2, 2: 4, 3: 3, 4: 5, 5: 8, 6: 6, 7: 7}
_TIFF_MAGIC = (b"II*\x00", b"MM\x00*")


def libraw_version() -> str:
    import rawpy

    return ".".join(map(str, rawpy.libraw_version))


@dataclass
class RawDecoded(Decoded):
    via: str = "preview"  # "preview": the camera's embedded JPEG; "demosaic": the sensor's data


def decode(data: bytes, path: str, min_side: int | None = None) -> RawDecoded:
    """The upright picture of a RAW file's bytes: its embedded preview when the preview's short
    side reaches half of `min_side` (without one: VIEW_SIDE, or the half-size demosaic's, if
    smaller), else the sensor data demosaiced at half size. Raises UnreadableImageError with a
    reason that says what to do."""
    if not data:
        raise UnreadableImageError(path, "empty file (0 bytes)")
    return _decode(_Unread(data), data[:RAW_HEAD], path, min_side)


def decode_file(path: str, min_side: int | None, head: bytes) -> RawDecoded:
    """decode() of the RAW file at `path`, which LibRaw reads itself: only what the chosen path
    needs (the preview, or the sensor data). `head`: its first bytes (kinds.RAW_HEAD), read
    already, where its metadata is."""
    if not head:
        raise UnreadableImageError(path, "empty file (0 bytes)")
    return _decode(path, head, path, min_side)


def _decode(source, head: bytes, path: str, min_side: int | None) -> RawDecoded:
    import rawpy

    try:
        with rawpy.imread(source) as raw:
            thumb = _thumb(raw)  # extracted once: the picture, and the metadata of some formats
            taken = _taken(read_tags(head, lambda: thumb))
            sizes = raw.sizes
            flip = sizes.flip
            quarter = _FLIP_TO_ORIENTATION.get(flip, 1) in (5, 6, 7, 8)
            width, height = (sizes.height, sizes.width) if quarter else (sizes.width, sizes.height)
            need = int(min_side * _PREVIEW_SHARE) if min_side else _view_side(width, height)
            preview = _preview(thumb, width, height, need, flip, min_side) if thumb else None
            if preview is not None:
                return RawDecoded(preview, width, height, taken, via="preview")
            pixels = raw.postprocess(half_size=True, use_camera_wb=True, output_bps=8)
    except rawpy.LibRawFileUnsupportedError:
        raise UnreadableImageError(path, _unsupported(head, read_tags(head))) from None
    except (rawpy.LibRawIOError, rawpy.LibRawDataError):
        raise UnreadableImageError(
            path, "truncated or corrupt RAW file; copy it again from its card or source") from None
    except rawpy.LibRawError as exc:
        raise UnreadableImageError(path, f"LibRaw {libraw_version()} cannot decode it ({exc})") from None
    except OSError as exc:  # LibRaw could not open the file itself
        raise UnreadableImageError(path, f"cannot read file ({exc.strerror or exc})") from None
    return RawDecoded(Image.fromarray(pixels), width, height, taken, via="demosaic")


def _thumb(raw) -> bytes | None:
    """The RAW's embedded preview when it is a JPEG (LibRaw's choice: its largest), else None."""
    import rawpy

    try:
        thumb = raw.extract_thumb()
    except rawpy.LibRawError:  # none, or a broken one: the sensor data may still be whole
        return None
    return thumb.data if thumb.format == rawpy.ThumbFormat.JPEG else None


def _fits(size: tuple[int, int], width: int, height: int, need: int) -> bool:
    """Whether a preview of `size` stands for a photo of `width` x `height`: its short side at
    least `need` and its shape the photo's."""
    w, h = size
    photo, preview = max(width, height) / max(1, min(width, height)), max(w, h) / max(1, min(w, h))
    return min(w, h) >= need and abs(preview - photo) <= _ASPECT_SLACK * 2


def rendition(data: bytes, path: str) -> bytes:
    """A JPEG of the RAW file `data` that a browser shows: the camera's embedded preview as it
    is, when it is large enough (_view_side) and needs no turning; else decode()'s, encoded."""
    import rawpy

    with contextlib.suppress(rawpy.LibRawError, OSError), rawpy.imread(_Unread(data)) as raw:
        thumb, sizes = _thumb(raw), raw.sizes
        if thumb and sizes.flip == 0:
            with Image.open(io.BytesIO(thumb)) as img:
                if (_fits(img.size, sizes.width, sizes.height, _view_side(sizes.width, sizes.height))
                        and img.getexif().get(0x0112, 1) in (None, 1)):
                    return thumb
    out = io.BytesIO()
    decode(data, path).image.save(out, "JPEG", quality=90)
    return out.getvalue()


class _Unread:
    """`data` for rawpy.imread, which takes what read() returns: the bytes themselves, where a
    BytesIO would hand it a copy (50 MB of a RAW, copied for nothing)."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    def read(self) -> bytes:
        return self.data


def _view_side(width: int, height: int) -> int:
    """The short side a preview needs to be shown instead of the sensor data: VIEW_SIDE, or
    less when the half-size demosaic would be smaller still."""
    return min(VIEW_SIDE, min(width, height) // 2)


def _preview(thumb: bytes, width: int, height: int, need: int, flip: int,
             min_side: int | None) -> Image.Image | None:
    """The embedded preview `thumb` (JPEG), upright and reduced toward `min_side`, when it
    _fits the photo; else None."""
    try:
        with Image.open(io.BytesIO(thumb)) as img:
            w, h = img.size
            if not _fits((w, h), width, height, need):
                return None
            if min_side:
                img.draft("RGB", (min_side, min_side))
            img.load()
            own = img.getexif().get(0x0112, 1)
            if own not in (None, 1):  # the preview says its own orientation
                return ImageOps.exif_transpose(img).convert("RGB")
            upright = img.convert("RGB")
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError):
        return None
    orientation = _FLIP_TO_ORIENTATION.get(flip, 1)
    turned_already = orientation in (5, 6, 7, 8) and (w < h) == (width < height) and w != h
    if orientation != 1 and not turned_already:
        upright = upright.transpose(_TRANSPOSE[orientation])
    return upright


_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


def _unsupported(data: bytes, tags: Tags | None) -> str:
    """Why LibRaw refused a file: a camera it does not know (named), or no RAW at all."""
    version = libraw_version()
    camera = _camera(tags)
    if camera:
        return (f"a RAW of {camera}, which LibRaw {version} does not support; update rawpy "
                f"(pip install -U rawpy) or convert it to DNG")
    try:
        with Image.open(io.BytesIO(data)) as img:
            kind = img.format
    except Exception:
        kind = None
    if kind:
        return f"not a RAW file but a {kind} image with a RAW extension; rename it to .{kind.lower()}"
    return f"not a RAW format LibRaw {version} reads (unknown camera or not a RAW file)"


def _camera(tags: Tags | None) -> str | None:
    if tags is None:
        return None
    meta = Meta()
    read_exif(tags.base, {}, {}, meta)
    return meta.camera


def _taken(tags: Tags | None) -> str | None:
    return None if tags is None else exif_time(tags.detail, tags.base)


# -- metadata ------------------------------------------------------------------------------
@dataclass
class Tags:
    """A RAW's EXIF: its first IFD (make, model), the EXIF IFD (dates, lens) and the GPS IFD."""

    base: Mapping
    detail: Mapping
    gps: Mapping

    @classmethod
    def of(cls, exif: Image.Exif) -> Tags:
        """From Pillow's EXIF; a sub-IFD past the bytes read (or malformed) is left empty."""
        ifds = []
        for tag in (0x8769, 0x8825):
            try:
                ifds.append(exif.get_ifd(tag))
            except Exception:
                ifds.append({})
        return cls(exif, *ifds)


def read_tags(data: bytes, preview: Callable[[], bytes | None] | None = None) -> Tags | None:
    """The EXIF of a RAW file from `data`, its first bytes (kinds.RAW_HEAD) or all of them,
    where the common containers keep it: a TIFF structure (DNG, NEF, CR2, ARW, PEF, ORF, RW2
    ...), Canon CR3's CMT boxes; else its embedded preview JPEG's (`preview()` gives it). None
    when none of them holds any."""
    magic = data[:4]
    try:
        if data[4:12] == b"ftypcrx ":
            return _cr3_tags(data)
        exif = Image.Exif()
        if magic in _TIFF_MAGIC:
            exif.load(data)
        elif magic[:2] in (b"II", b"MM") and magic[2:] in (b"U\x00", b"RO", b"RS", b"\x00U"):
            # Panasonic RW2 and Olympus ORF: TIFF with a magic number of their own
            exif.load(magic[:2] + (b"*\x00" if magic[:2] == b"II" else b"\x00*") + data[4:])
        elif preview is not None and (jpeg := preview()):
            with Image.open(io.BytesIO(jpeg)) as img:
                exif = img.getexif()
        return Tags.of(exif) if len(exif) else None
    except Exception:  # metadata in the wild is often malformed; the pixels may still be fine
        return None


def preview_of(path: str) -> bytes | None:
    """The embedded preview JPEG of the RAW file at `path` (LibRaw reads only it), else None."""
    import rawpy

    try:
        with rawpy.imread(path) as raw:
            return _thumb(raw)
    except (rawpy.LibRawError, OSError):
        return None


def _cr3_tags(data: bytes) -> Tags | None:
    """CR3 (ISO media) keeps its TIFF IFD0, EXIF and GPS IFDs as boxes CMT1, CMT2 and CMT4."""
    found = []
    for name in (b"CMT1", b"CMT2", b"CMT4"):
        exif = Image.Exif()
        at = data.find(name, 0, 1 << 20)
        if at >= 4:
            size = struct.unpack(">I", data[at - 4:at])[0]
            exif.load(data[at + 4:at - 4 + size])
        found.append(exif)
    return Tags(*found) if len(found[0]) else None
