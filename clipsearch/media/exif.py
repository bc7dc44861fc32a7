"""What a photo's EXIF says, as Pillow and rawpy hand it over: the capture time, the camera and
lens, the GPS position; and `Meta`, the record of what a photo says beyond its pixels that the
metadata reader (clipsearch.media.words) fills from EXIF, IPTC and XMP. The decoders (clipsearch.media.images,
clipsearch.media.raw, clipsearch.media.video) read EXIF through this module and import none of the others."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime

from PIL import ExifTags

_DATETIME_ORIGINAL = 0x9003
_DATETIME = 0x0132


@dataclass
class Meta:
    """A photo's own data beyond its pixels, as read from the file and its sidecars."""

    camera: str | None = None
    lens: str | None = None
    lat: float | None = None
    lon: float | None = None
    keywords: list[str] = field(default_factory=list)  # keywords, then titles and descriptions
    people: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # what was ignored, and why

    def add(self, kind: str, values: Iterable[str]) -> None:
        target = self.people if kind == "people" else self.keywords
        for value in values:
            value = " ".join(value.split())
            if value and value not in target:
                target.append(value)


def exif_time(detail: Mapping, base: Mapping) -> str | None:
    """The capture time of an EXIF (its EXIF IFD's DateTimeOriginal, else its first IFD's
    DateTime), ISO 8601 without zone, as the camera wrote it; None when missing or malformed."""
    value = detail.get(_DATETIME_ORIGINAL) or base.get(_DATETIME)
    if not value:
        return None
    text = value.decode("ascii", "ignore") if isinstance(value, bytes) else str(value)
    try:
        return datetime.strptime(text.strip("\x00 ")[:19], "%Y:%m:%d %H:%M:%S").isoformat()
    except ValueError:
        return None


def read_exif(base: Mapping, detail: Mapping | Callable[[], Mapping],
               gps: Mapping | Callable[[], Mapping], meta: Meta) -> None:
    """Camera, lens and position from an EXIF's first IFD, its EXIF IFD and its GPS IFD (each
    sub-IFD given, or read when asked: a malformed one becomes a note)."""
    make, model = exif_text(base.get(ExifTags.Base.Make)), exif_text(base.get(ExifTags.Base.Model))
    if model and make and model.lower().startswith(make.split()[0].lower()):
        make = None  # "Canon" + "Canon EOS R5": the model already says it
    meta.camera = " ".join(p for p in (make, model) if p) or None
    try:
        meta.lens = exif_text((detail() if callable(detail) else detail).get(ExifTags.Base.LensModel))
    except Exception:
        meta.notes.append("EXIF sub-IFD unreadable")
    try:
        block = gps() if callable(gps) else gps
    except Exception:
        block = {}
        meta.notes.append("GPS block unreadable")
    if block:
        position = _position(block)
        if isinstance(position, str):
            meta.notes.append(position)
        else:
            meta.lat, meta.lon = position


def exif_text(value: object) -> str | None:
    """An EXIF or IPTC text value as a clean string (bytes decoded, NULs and runs of spaces
    collapsed), or None when it holds none."""
    if isinstance(value, bytes):
        for encoding in ("utf-8", "latin-1"):
            try:
                value = value.decode(encoding)
                break
            except UnicodeDecodeError:
                continue
    if not isinstance(value, str):
        return None
    value = " ".join(value.replace("\x00", " ").split())
    return value or None


def _position(gps: dict) -> tuple[float, float] | str:
    """(lat, lon) from an EXIF GPS block, or why it was not used."""
    try:
        lat, lon = _degrees(gps[2]), _degrees(gps[4])
        lat_ref, lon_ref = exif_text(gps.get(1)), exif_text(gps.get(3))
    except (KeyError, TypeError, ValueError, ZeroDivisionError):
        return "GPS position incomplete or malformed"
    if lat_ref not in ("N", "S") or lon_ref not in ("E", "W"):
        return "GPS position without its hemispheres (N/S, E/W)"
    lat, lon = (-lat if lat_ref == "S" else lat), (-lon if lon_ref == "W" else lon)
    if not (-90 <= lat <= 90 and -180 <= lon <= 180) or (lat == 0 and lon == 0):
        return f"GPS position out of range ({lat:.4f}, {lon:.4f})"
    return lat, lon


def _degrees(value) -> float:
    parts = [float(v) for v in value]
    if len(parts) != 3 or any(p != p or p < 0 for p in parts):  # NaN or negative
        raise ValueError
    return parts[0] + parts[1] / 60 + parts[2] / 3600
