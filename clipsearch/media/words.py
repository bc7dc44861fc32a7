"""What a photo says beyond its pixels: its file and folder names, the camera and lens, when it
was taken, the place its GPS position names (clipsearch.media.places), and the keywords, titles and
people that photo managers wrote into it or into an XMP sidecar beside it.

An index run reads them with no model and no network (`read_meta`, in the decode workers, from
the bytes already read) and stores them as columns; `row_words` turns them into the row's
`words`: tokens tagged with the field they came from, `token` + SEP + field code, so that one
prefix comparison over a flat string column finds them and the field stays known for saying why
a photo matched. Searching them, and ranking them with CLIP, is clipsearch.search.wordsearch.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import unicodedata
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import pyarrow as pa
from PIL import ExifTags, Image, IptcImagePlugin

from clipsearch.media import places
from clipsearch.media.exif import Meta, exif_text, read_exif
from clipsearch.media.kinds import RAW_HEAD, is_raw_name, is_video_name
from clipsearch.media.scan import is_under, sidecar_names

SEP = "\x1f"  # between a token and its field code: no text a person types holds it
FIELDS = {"n": "name", "f": "folder", "p": "place", "c": "camera", "k": "keywords", "h": "people",
          "d": "date"}
# A query word of this many letters or more also matches the words it begins ("lisb" finds
# Lisbon), at this weight against a whole word's 1: the word index's rule and the captions'
PREFIX_FROM, PREFIX_WEIGHT = 3, 0.5
# words that carry no meaning of their own in a query; they never match
STOP_WORDS = frozenset({"a", "an", "and", "are", "as", "at", "be", "by", "for", "from", "has", "in",
                        "is", "it", "its", "of", "on", "or", "the", "to", "with", "photo", "photos",
                        "picture", "pictures", "image", "images"})
MAX_XMP_BYTES = 4 << 20  # a packet larger than this is not a photo manager's keywords
_MONTHS = ("january", "february", "march", "april", "may", "june", "july", "august", "september",
           "october", "november", "december")
WORD = re.compile(r"[^\W_]+", re.UNICODE)

_XMP_FIELDS = {  # (namespace, local name) -> what it holds
    ("http://purl.org/dc/elements/1.1/", "subject"): "keywords",
    ("http://purl.org/dc/elements/1.1/", "title"): "title",
    ("http://purl.org/dc/elements/1.1/", "description"): "description",
    ("http://ns.adobe.com/lightroom/1.0/", "hierarchicalSubject"): "hierarchy|",
    ("http://www.digikam.org/ns/1.0/", "TagsList"): "hierarchy/",
    ("http://www.metadataworkinggroup.com/schemas/regions/", "Name"): "people",
    ("http://ns.microsoft.com/photo/1.2/t/Region#", "PersonDisplayName"): "people",
    ("http://ns.adobe.com/photoshop/1.0/", "Headline"): "title",
}
OWN_NS = "https://clipsearch.dev/ns/xmp/1.0/"  # what `tag --write-xmp` added (clipsearch.enrich.xmp)
_RDF_LI = "{http://www.w3.org/1999/02/22-rdf-syntax-ns#}li"


# -- reading -------------------------------------------------------------------------------------
def sidecars(path: str) -> list[str]:
    """The XMP sidecars beside a photo (clipsearch.media.scan.sidecar_names)."""
    folder, name = os.path.split(path)
    return [p for n in sidecar_names(name) if os.path.isfile(p := os.path.join(folder, n))]


def photos_of_sidecar(sidecar: str, is_photo: Callable[[str], bool]) -> list[str]:
    """The photos a sidecar belongs to: `IMG_1.jpg` for `IMG_1.jpg.xmp`, every `IMG_1.*` photo
    for Lightroom's `IMG_1.xmp`."""
    stem = sidecar[:-4]
    if is_photo(stem):
        return [stem]
    folder, name = os.path.split(sidecar)
    try:
        names = os.listdir(folder or ".")
    except OSError:
        return []
    return sorted(os.path.join(folder, n) for n in names if is_photo(n) and name in sidecar_names(n))


def sidecar_mtime(path: str) -> int:
    """The newest modification time of the photo's sidecars (ns), 0 without one: a change here
    means its words are read again, with no embedding."""
    newest = 0
    for side in sidecars(path):
        with contextlib.suppress(OSError):
            newest = max(newest, os.stat(side).st_mtime_ns)
    return newest


def read_meta(path: str, data: bytes | None = None) -> Meta:
    """EXIF, IPTC and XMP of the photo at `path` (from `data`, its bytes, when the caller has
    them) and of its sidecars. Never raises: what cannot be read becomes a note."""
    meta = Meta()
    try:
        from clipsearch.media.video import read_tags

        if is_video_name(path):
            read_tags(path, meta)
        elif is_raw_name(path):
            from clipsearch.media.raw import preview_of
            from clipsearch.media.raw import read_tags as read_raw_tags

            if data is None:
                with open(path, "rb") as f:
                    data = f.read(RAW_HEAD)  # where a RAW keeps its metadata
            tags = read_raw_tags(data, lambda: preview_of(path))
            if tags is not None:
                read_exif(tags.base, tags.detail, tags.gps, meta)
                packet = tags.base.get(0x02BC)  # XMP in the RAW itself (DNG: Lightroom's keywords)
                if isinstance(packet, bytes | str):
                    _read_xmp(packet.encode() if isinstance(packet, str) else packet, meta, "embedded XMP")
        else:
            with Image.open(io.BytesIO(data) if data is not None else path) as opened:
                _read_image(opened, meta)
    except Exception as exc:  # a photo is never dropped for its metadata
        meta.notes.append(f"metadata unreadable ({type(exc).__name__})")
    for side in sidecars(path):
        try:
            with open(side, "rb") as f:
                packet = f.read(MAX_XMP_BYTES + 1)
        except OSError as exc:
            meta.notes.append(f"{os.path.basename(side)}: unreadable ({exc.strerror})")
            continue
        _read_xmp(packet, meta, os.path.basename(side))
    return meta


def _read_image(img: Image.Image, meta: Meta) -> None:
    exif = img.getexif()
    read_exif(exif, lambda: exif.get_ifd(ExifTags.IFD.Exif), lambda: exif.get_ifd(ExifTags.IFD.GPSInfo), meta)
    iptc = IptcImagePlugin.getiptcinfo(img) if img.format in ("JPEG", "TIFF") else None
    if iptc:
        for key, kind in (((2, 25), "keywords"), ((2, 5), "title"), ((2, 105), "title"),
                          ((2, 120), "description")):
            value = iptc.get(key)
            values = value if isinstance(value, list) else [value] if value else []
            meta.add(kind, (exif_text(v) or "" for v in values))
    packet = img.info.get("xmp") or img.info.get("XML:com.adobe.xmp")
    if packet:
        _read_xmp(packet.encode() if isinstance(packet, str) else packet, meta, "embedded XMP")


def _read_xmp(packet: bytes, meta: Meta, where: str) -> None:
    if len(packet) > MAX_XMP_BYTES:
        meta.notes.append(f"{where}: XMP packet over {MAX_XMP_BYTES >> 20} MB, ignored")
        return
    body = packet  # the xpacket wrapper and padding around it are not XML's business
    for opening, closing in ((b"<x:xmpmeta", b"</x:xmpmeta>"), (b"<rdf:RDF", b"</rdf:RDF>")):
        start, end = packet.find(opening), packet.rfind(closing)
        if 0 <= start < end:
            body = packet[start:end + len(closing)]
            break
    try:
        root = ET.fromstring(body)
    except (ET.ParseError, ValueError):
        meta.notes.append(f"{where}: not XML, ignored")
        return
    ours: set[str] = set()
    found: list[tuple[str, list[str]]] = []
    for element in root.iter():
        for name, value in element.attrib.items():  # the attribute form: <rdf:Description dc:title="..">
            kind = _XMP_FIELDS.get(_split(name))
            if kind:
                found.append((kind, [value]))
        namespace, local = _split(element.tag)
        if namespace == OWN_NS and local in ("tags", "caption"):
            items = [li.text for li in element.iter(_RDF_LI)] or [element.text]
            ours |= {(i or "").strip() for i in items}
            continue
        kind = _XMP_FIELDS.get((namespace, local))
        if kind:
            items = [li.text or "" for li in element.iter(_RDF_LI)] or [element.text or ""]
            found.append((kind, items))
    for kind, items in found:
        if kind.startswith("hierarchy"):
            levels = [level for item in items for level in item.split(kind[-1])]
            meta.add("keywords", levels)
        elif kind in ("keywords", "description"):  # leaving out what clipsearch wrote itself
            meta.add(kind, [i for i in items if i.strip() not in ours])
        else:
            meta.add(kind, items)


def _split(name: str) -> tuple[str, str]:
    if name.startswith("{"):
        namespace, _, local = name[1:].partition("}")
        return namespace, local
    return "", name


# -- tokens --------------------------------------------------------------------------------------
def tokens(text: str) -> list[str]:
    """The words of `text` as a search compares them: case-folded, each also without its
    accents (München: münchen and munchen), in order, once each."""
    text = unicodedata.normalize("NFKC", text).casefold()
    out: list[str] = []
    for word in WORD.findall(text):
        for form in (word, unaccented(word)):
            if form not in out:
                out.append(form)
    return out


def unaccented(word: str) -> str:
    return "".join(c for c in unicodedata.normalize("NFKD", word) if not unicodedata.combining(c))


def name_tokens(filename: str) -> list[str]:
    """A file name as people type it: IMG_2041.JPG -> img, 2041, img_2041, img_2041.jpg."""
    lowered = unicodedata.normalize("NFKC", filename).casefold()
    stem = os.path.splitext(lowered)[0]
    out = tokens(stem)
    for whole in (stem, lowered):
        if whole and whole not in out:
            out.append(whole)
    return out


def query_tokens(text: str) -> list[str]:
    """The words of a query that can match a photo's words: each word, and each typed chunk
    with its punctuation (IMG_2041.jpg) so a whole file name matches whole; stop words dropped."""
    out: list[str] = []
    for chunk in unicodedata.normalize("NFKC", text).casefold().split():
        chunk = chunk.strip("\"'()[]{},;:!?")
        for token in [*tokens(chunk), chunk]:
            if token and token not in STOP_WORDS and token not in out and WORD.search(token):
                out.append(token)
    return out


def folders_of(path: str, roots: Sequence[str]) -> list[str]:
    """The folder names from the indexed root (its own name included) down to the photo."""
    folder = os.path.dirname(path)
    root = max((r.rstrip(os.sep) for r in roots if is_under(folder, r)), key=len, default=None)
    if root is None:
        return [os.path.basename(folder)] if os.path.basename(folder) else []
    below = os.path.relpath(folder, root)
    names = [os.path.basename(root)] + ([] if below == "." else below.split(os.sep))
    return [n for n in names if n]


def date_tokens(taken: str | None) -> list[str]:
    """2019-07-14T...: 2019 and july."""
    if not taken or len(taken) < 7 or not taken[:4].isdigit() or not taken[5:7].isdigit():
        return []
    month = int(taken[5:7])
    return [taken[:4]] + ([_MONTHS[month - 1]] if 1 <= month <= 12 else [])


@dataclass(frozen=True)
class RowWords:
    """The word columns of one row."""

    camera: str | None
    lens: str | None
    place: str | None
    lat: float | None
    lon: float | None
    keywords: list[str]
    people: list[str]
    words: list[str]
    sidecar_ns: int


def row_words(path: str, roots: Sequence[str], meta: Meta, taken: str | None, place: list[str | None],
              sidecar_ns: int) -> RowWords:
    """A row's word columns from what was read of it; `place` is the geocoder's names for its
    position in their slots (clipsearch.media.places.names), the one a person says first."""
    tagged: list[str] = []

    def add(code: str, parts: Iterable[str]) -> None:
        for token in parts:
            entry = token + SEP + code
            if entry not in tagged:
                tagged.append(entry)

    add("n", name_tokens(os.path.basename(path)))
    for folder in folders_of(path, roots):
        add("f", tokens(folder))
    for name in place:
        if name:
            add("p", tokens(name))
    for text in (meta.camera, meta.lens):
        if text:
            add("c", tokens(text))
    for keyword in meta.keywords:
        add("k", tokens(keyword))
    for person in meta.people:
        add("h", tokens(person))
    add("d", date_tokens(taken))
    return RowWords(meta.camera, meta.lens, places.shown(place), meta.lat, meta.lon,
                    meta.keywords, meta.people, tagged, sidecar_ns)


def repath(words: Sequence[str] | None, path: str, roots: Sequence[str]) -> list[str]:
    """A row's words for the same photo at another path: its name and folders from the path,
    everything else as it was read (a moved library is not read again)."""
    kept = [w for w in words or () if w[-1:] not in ("n", "f") or w[-2:-1] != SEP]
    moved = row_words(path, roots, Meta(), None, [], 0).words
    return moved + [w for w in kept if w not in moved]


def word_rows(items: Sequence[tuple[str, Meta, str | None, int]], roots: Sequence[str]) -> list[RowWords]:
    """The word columns of rows given as (path, meta, taken, sidecar mtime); the places of their
    GPS positions are looked up together."""
    located = [i for i, (_p, meta, _t, _s) in enumerate(items) if meta.lat is not None]
    place_of: dict[int, list[str | None]] = {}
    if located:
        found = places.names([(items[i][1].lat, items[i][1].lon) for i in located])
        place_of = dict(zip(located, found, strict=True))
    return [row_words(path, roots, meta, taken, place_of.get(i, []), sidecar)
            for i, (path, meta, taken, sidecar) in enumerate(items)]


def word_columns(rows: Sequence[RowWords]) -> dict[str, pa.Array]:
    """The rows' word columns, typed as the table has them (clipsearch.store.table.WORD_FIELDS)."""
    from clipsearch.store.table import WORD_FIELDS

    return {f.name: pa.array([getattr(r, f.name) for r in rows], f.type) for f in WORD_FIELDS}
