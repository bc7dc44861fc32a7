"""XMP sidecars: tags as `dc:subject` keywords in `PHOTO.EXT.xmp`, the name digiKam and
darktable both read (Lightroom's `PHOTO.xmp` would collide between IMG_1.jpg and IMG_1.heic).

An existing sidecar is merged, never clobbered: its other content, namespace prefixes, comments
and xpacket wrapper are kept, existing keywords stay, and only missing tags are added. Files are
replaced atomically, so a crash leaves the old sidecar or the new one.
"""

from __future__ import annotations

import contextlib
import io
import os
import stat
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from typing import TYPE_CHECKING

from clipsearch.errors import SidecarError
from clipsearch.files import replacing
from clipsearch.media.words import OWN_NS
from clipsearch.results import Skipped

if TYPE_CHECKING:
    from clipsearch.results import ImageTags

X = "adobe:ns:meta/"
RDF = "http://www.w3.org/1999/02/22-rdf-syntax-ns#"
DC = "http://purl.org/dc/elements/1.1/"
_XPACKET_BEGIN = '<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>\n'
_XPACKET_END = '\n<?xpacket end="w"?>'


def sidecar_path(image: str) -> str:
    return image + ".xmp"


_XML = "http://www.w3.org/XML/1998/namespace"
_DEFAULT_PREFIXES = {X: "x", RDF: "rdf", DC: "dc", OWN_NS: "clipsearch"}


def _prefixes(data: bytes) -> dict[str, str]:
    """Namespace URI -> prefix for one document: the writer's own prefixes (darktable:, digiKam:,
    lr: ...) kept, x/rdf/dc for ours. Per document: ElementTree's register_namespace is one map
    for the whole process, which threads writing other sidecars would read and change."""
    found: dict[str, str] = {}
    with contextlib.suppress(ET.ParseError):
        for _, (prefix, uri) in ET.iterparse(io.BytesIO(data), events=("start-ns",)):
            if prefix and uri not in found and prefix not in found.values():
                found[uri] = prefix
    for uri, prefix in _DEFAULT_PREFIXES.items():
        if uri not in found and prefix not in found.values():
            found[uri] = prefix
    return found


def _serialize(root: ET.Element, prefixes: dict[str, str]) -> str:
    """The tree as text with `prefixes`, declared on the root element. Names are written out as
    prefix:local in a copy, so ElementTree's process-wide prefix map is neither read nor changed."""
    prefixes = dict(prefixes)

    def qualified(name: str) -> str:
        if not name.startswith("{"):
            return name
        uri, local = name[1:].split("}", 1)
        if uri == _XML:
            return f"xml:{local}"
        if uri not in prefixes:
            taken = set(prefixes.values())
            prefixes[uri] = next(f"ns{i}" for i in range(len(taken) + 1) if f"ns{i}" not in taken)
        return f"{prefixes[uri]}:{local}"

    def copy(element: ET.Element) -> ET.Element:
        if not isinstance(element.tag, str):  # a comment or processing instruction
            made = element.makeelement(element.tag, {})
            made.text = element.text
        else:
            made = ET.Element(qualified(element.tag), {qualified(k): v for k, v in element.attrib.items()})
            made.text = element.text
            made.extend(copy(child) for child in element)
        made.tail = element.tail
        return made

    out = copy(root)  # names every prefix it needs in `prefixes` first
    out.attrib = {**{f"xmlns:{prefix}": uri for uri, prefix in prefixes.items()}, **out.attrib}
    return ET.tostring(out, encoding="unicode")


def _skeleton() -> ET.Element:
    root = ET.Element(f"{{{X}}}xmpmeta")
    rdf = ET.SubElement(root, f"{{{RDF}}}RDF")
    ET.SubElement(rdf, f"{{{RDF}}}Description", {f"{{{RDF}}}about": ""})
    return root


def _open(image: str) -> tuple[str, bytes, ET.Element, ET.Element]:
    """(the sidecar's path, its bytes, its tree, its rdf:RDF element) for `image`; a new tree when
    there is no sidecar yet."""
    path = sidecar_path(image)
    data = b""
    try:
        mode = os.lstat(path).st_mode
    except OSError:
        mode = None
    if mode is not None and not stat.S_ISREG(mode):
        # a link (to a sidecar another tool shares) or a device: writing would replace the link
        # with a file of its own, or read forever
        raise SidecarError(path, "not a regular file (a link, a device or a pipe); left untouched")
    if mode is not None:
        try:
            with open(path, "rb") as f:
                data = f.read()
            parser = ET.XMLParser(target=ET.TreeBuilder(insert_comments=True, insert_pis=True))
            root = ET.fromstring(data, parser=parser)
        except (OSError, ET.ParseError) as exc:
            raise SidecarError(path, f"cannot read the existing sidecar ({exc}); left untouched") from None
    else:
        root = _skeleton()
    rdf = root if root.tag == f"{{{RDF}}}RDF" else root.find(f".//{{{RDF}}}RDF")
    if rdf is None:
        raise SidecarError(path, "no rdf:RDF element, so it is not XMP; left untouched")
    return path, data, root, rdf


def _holder(rdf: ET.Element, name: str) -> ET.Element:
    """The rdf:Description that holds `name` (a second one would be invalid), else the first."""
    descriptions = rdf.findall(f"{{{RDF}}}Description")
    holder = next((d for d in descriptions if d.find(name) is not None), None)
    if holder is None:
        holder = descriptions[0] if descriptions else ET.SubElement(
            rdf, f"{{{RDF}}}Description", {f"{{{RDF}}}about": ""})
    return holder


def _save(path: str, data: bytes, root: ET.Element) -> None:
    body = _serialize(root, _prefixes(data))
    if b"<?xpacket" in data or not data:
        text = _XPACKET_BEGIN + body + _XPACKET_END
    else:
        text = '<?xml version="1.0" encoding="UTF-8"?>\n' + body
    _atomic_write(path, text.encode())


def merge_subjects(image: str, tags: Sequence[str]) -> bool:
    """Add `tags` to the sidecar of `image`; True when the file was written."""
    path, data, root, rdf = _open(image)
    holder = _holder(rdf, f"{{{DC}}}subject")
    if holder.find(f"{{{DC}}}subject") is None:
        ET.SubElement(holder, f"{{{DC}}}subject")
    subject = holder.find(f"{{{DC}}}subject")
    # dc:subject is an rdf:Bag; some writers use rdf:Seq, which is kept rather than doubled
    bag = next((c for c in (subject.find(f"{{{RDF}}}{kind}") for kind in ("Bag", "Seq")) if c is not None),
               None)
    if bag is None:
        bag = ET.SubElement(subject, f"{{{RDF}}}Bag")
    present = {(li.text or "").strip() for li in bag.findall(f"{{{RDF}}}li")}
    missing = [t for t in tags if t not in present]
    if not missing:
        return False
    for tag in missing:
        ET.SubElement(bag, f"{{{RDF}}}li").text = tag
    # what clipsearch added is recorded as its own, so that reading the keywords back
    # (clipsearch.media.words) tells the user's from ours; a keyword the user had stays the user's
    record = holder.find(f"{{{OWN_NS}}}tags")
    if record is None:
        record = ET.SubElement(holder, f"{{{OWN_NS}}}tags")
    ours = record.find(f"{{{RDF}}}Bag")
    if ours is None:
        ours = ET.SubElement(record, f"{{{RDF}}}Bag")
    for tag in missing:
        ET.SubElement(ours, f"{{{RDF}}}li").text = tag
    _save(path, data, root)
    return True


def merge_description(image: str, caption: str) -> bool:
    """Write `caption` as the sidecar's description (dc:description, x-default), unless the
    user wrote one: only a description clipsearch wrote itself (recorded as clipsearch:caption)
    is replaced. True when the file was written."""
    path, data, root, rdf = _open(image)
    holder = _holder(rdf, f"{{{DC}}}description")
    element = holder.find(f"{{{DC}}}description")
    mine = holder.find(f"{{{OWN_NS}}}caption")
    if element is not None:
        present = [(li.text or "").strip() for li in element.iter(f"{{{RDF}}}li")] \
            or [(element.text or "").strip()]
        if mine is None or any(p and p != (mine.text or "").strip() for p in present):
            return False  # the user's words stay
        if present == [caption]:
            return False
        holder.remove(element)
    element = ET.SubElement(holder, f"{{{DC}}}description")
    alt = ET.SubElement(element, f"{{{RDF}}}Alt")
    ET.SubElement(alt, f"{{{RDF}}}li", {f"{{{_XML}}}lang": "x-default"}).text = caption
    if mine is None:
        mine = ET.SubElement(holder, f"{{{OWN_NS}}}caption")
    mine.text = caption
    _save(path, data, root)
    return True


def _atomic_write(path: str, data: bytes) -> None:
    folder = os.path.dirname(path) or "."
    try:
        mode = os.stat(path).st_mode & 0o777  # an edited sidecar keeps its permissions
    except FileNotFoundError:
        mode = None
    try:
        with replacing(path, mode) as tmp, open(tmp, "wb") as f:
            f.write(data)
    except OSError as exc:
        reason = f"cannot write in {folder} ({exc.strerror or exc}); left as it was"
        raise SidecarError(path, reason) from None


def write_sidecars(images: Sequence[ImageTags], skipped: list[Skipped]) -> int:
    """Merge each image's tags into its XMP sidecar; how many sidecars were written. A sidecar
    that cannot be read or written is reported in `skipped` and left as it is."""
    written = 0
    for image in images:
        if image.tags:
            try:
                written += merge_subjects(image.path, [t for t, _ in image.tags])
            except SidecarError as exc:
                skipped.append(Skipped(exc.path, exc.reason))
    return written


def write_captions(paths_captions: Sequence[tuple[str, str]], skipped: list[Skipped]) -> int:
    """Write each photo's caption into its XMP sidecar as its description (merge_description);
    how many sidecars were written. One that cannot be is reported in `skipped`."""
    written = 0
    for path, caption in paths_captions:
        try:
            written += merge_description(path, caption)
        except SidecarError as exc:
            skipped.append(Skipped(exc.path, exc.reason))
    return written
