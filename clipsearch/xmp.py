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
import xml.etree.ElementTree as ET
from collections.abc import Sequence

from clipsearch.errors import SidecarError
from clipsearch.files import replacing

X = "adobe:ns:meta/"
RDF = "http://www.w3.org/1999/02/22-rdf-syntax-ns#"
DC = "http://purl.org/dc/elements/1.1/"
_XPACKET_BEGIN = '<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>\n'
_XPACKET_END = '\n<?xpacket end="w"?>'


def sidecar_path(image: str) -> str:
    return image + ".xmp"


def _register(data: bytes) -> None:
    ET.register_namespace("x", X)
    ET.register_namespace("rdf", RDF)
    ET.register_namespace("dc", DC)
    with contextlib.suppress(ET.ParseError):
        for _, (prefix, uri) in ET.iterparse(io.BytesIO(data), events=("start-ns",)):
            if prefix:  # keep the writer's prefixes (darktable:, digiKam:, lr: ...)
                with contextlib.suppress(ValueError):
                    ET.register_namespace(prefix, uri)


def _skeleton() -> ET.Element:
    root = ET.Element(f"{{{X}}}xmpmeta")
    rdf = ET.SubElement(root, f"{{{RDF}}}RDF")
    ET.SubElement(rdf, f"{{{RDF}}}Description", {f"{{{RDF}}}about": ""})
    return root


def merge_subjects(image: str, tags: Sequence[str]) -> bool:
    """Add `tags` to the sidecar of `image`; True when the file was written."""
    path = sidecar_path(image)
    data = b""
    if os.path.exists(path):
        try:
            with open(path, "rb") as f:
                data = f.read()
            parser = ET.XMLParser(target=ET.TreeBuilder(insert_comments=True, insert_pis=True))
            root = ET.fromstring(data, parser=parser)
        except (OSError, ET.ParseError) as exc:
            raise SidecarError(path, f"cannot read the existing sidecar ({exc}); left untouched") from None
    else:
        root = _skeleton()
    _register(data)
    rdf = root if root.tag == f"{{{RDF}}}RDF" else root.find(f".//{{{RDF}}}RDF")
    if rdf is None:
        raise SidecarError(path, "no rdf:RDF element, so it is not XMP; left untouched")
    # dc:subject may live in any of several rdf:Description blocks; a second one would be invalid
    descriptions = rdf.findall(f"{{{RDF}}}Description")
    subject = next((s for d in descriptions if (s := d.find(f"{{{DC}}}subject")) is not None), None)
    if subject is None:
        description = descriptions[0] if descriptions else ET.SubElement(
            rdf, f"{{{RDF}}}Description", {f"{{{RDF}}}about": ""})
        subject = ET.SubElement(description, f"{{{DC}}}subject")
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
    body = ET.tostring(root, encoding="unicode")
    if b"<?xpacket" in data or not data:
        text = _XPACKET_BEGIN + body + _XPACKET_END
    else:
        text = '<?xml version="1.0" encoding="UTF-8"?>\n' + body
    _atomic_write(path, text.encode())
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
