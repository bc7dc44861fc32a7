"""XMP sidecars: tags land in dc:subject of PHOTO.EXT.xmp; existing sidecars are merged, never
clobbered; a sidecar that cannot be read is left alone and reported."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from clipsearch import index_folders
from clipsearch.cli.commands import app
from clipsearch.enrich.xmp import merge_subjects
from clipsearch.errors import SidecarError

RDF = "{http://www.w3.org/1999/02/22-rdf-syntax-ns#}"
DC = "{http://purl.org/dc/elements/1.1/}"
DT = "{http://darktable.sf.net/}"
XMP = "{http://ns.adobe.com/xap/1.0/}"

DARKTABLE_SIDECAR = """<?xml version="1.0" encoding="UTF-8"?>
<x:xmpmeta xmlns:x="adobe:ns:meta/" x:xmptk="XMP Core 4.4.0-Exiv2">
 <rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">
  <rdf:Description rdf:about=""
    xmlns:xmp="http://ns.adobe.com/xap/1.0/"
    xmlns:dc="http://purl.org/dc/elements/1.1/"
    xmlns:lr="http://ns.adobe.com/lightroom/1.0/"
    xmlns:darktable="http://darktable.sf.net/"
   xmp:Rating="3"
   darktable:xmp_version="5">
   <!-- edited by hand -->
   <dc:subject>
    <rdf:Bag>
     <rdf:li>family</rdf:li>
     <rdf:li>beach</rdf:li>
    </rdf:Bag>
   </dc:subject>
   <lr:hierarchicalSubject>
    <rdf:Bag>
     <rdf:li>places|home</rdf:li>
    </rdf:Bag>
   </lr:hierarchicalSubject>
   <darktable:history>
    <rdf:Seq>
     <rdf:li darktable:operation="exposure" darktable:enabled="1"/>
    </rdf:Seq>
   </darktable:history>
  </rdf:Description>
 </rdf:RDF>
</x:xmpmeta>
"""


def subjects(sidecar: Path) -> list[str]:
    root = ET.parse(sidecar).getroot()
    found = root.findall(f".//{DC}subject")
    assert len(found) == 1, "exactly one dc:subject"
    return [li.text for li in found[0].iter(f"{RDF}li")]


def test_a_new_sidecar_holds_the_tags(tmp_path):
    image = tmp_path / "IMG_0001.jpg"
    assert merge_subjects(str(image), ["beach", "sunset"]) is True
    sidecar = tmp_path / "IMG_0001.jpg.xmp"
    assert sidecar.read_text().startswith('<?xpacket begin="\ufeff"')
    assert subjects(sidecar) == ["beach", "sunset"]
    about = ET.parse(sidecar).getroot().find(f".//{RDF}Description")
    assert about.get(f"{RDF}about") == ""


def test_an_existing_sidecar_keeps_its_content_and_gains_only_missing_tags(tmp_path):
    image = tmp_path / "DSC_1.nef"
    sidecar = tmp_path / "DSC_1.nef.xmp"
    sidecar.write_text(DARKTABLE_SIDECAR)
    sidecar.chmod(0o600)

    assert merge_subjects(str(image), ["beach", "dog"]) is True
    assert subjects(sidecar) == ["family", "beach", "dog"]
    root = ET.parse(sidecar).getroot()
    description = root.find(f".//{RDF}Description")
    assert description.get(f"{XMP}Rating") == "3" and description.get(f"{DT}xmp_version") == "5"
    history = root.find(f".//{DT}history/{RDF}Seq/{RDF}li")
    assert history.get(f"{DT}operation") == "exposure" and history.get(f"{DT}enabled") == "1"
    assert [li.text for li in root.iter(f"{RDF}li") if li.text and "|" in li.text] == ["places|home"]
    text = sidecar.read_text()
    assert "<!-- edited by hand -->" in text
    assert "darktable:history" in text and "lr:hierarchicalSubject" in text  # the writer's prefixes
    assert sidecar.stat().st_mode & 0o777 == 0o600

    before = sidecar.read_bytes()
    assert merge_subjects(str(image), ["dog", "beach"]) is False  # nothing missing: not rewritten
    assert sidecar.read_bytes() == before


def test_subjects_in_a_later_description_are_extended_not_doubled(tmp_path):
    sidecar = tmp_path / "a.jpg.xmp"
    sidecar.write_text(
        '<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
        '<rdf:Description rdf:about="" xmlns:xmp="http://ns.adobe.com/xap/1.0/" xmp:Rating="1"/>'
        '<rdf:Description rdf:about="" xmlns:dc="http://purl.org/dc/elements/1.1/">'
        "<dc:subject><rdf:Seq><rdf:li>old</rdf:li></rdf:Seq></dc:subject></rdf:Description>"
        "</rdf:RDF></x:xmpmeta>")
    merge_subjects(str(tmp_path / "a.jpg"), ["new"])
    assert subjects(sidecar) == ["old", "new"]


@pytest.mark.parametrize("content, reason", [
    ("<x:xmpmeta xmlns:x='adobe:ns:meta/'><unclosed>", "cannot read the existing sidecar"),
    ("<html><body>not xmp</body></html>", "no rdf:RDF element, so it is not XMP"),
])
def test_an_unreadable_sidecar_is_left_untouched(tmp_path, content, reason):
    sidecar = tmp_path / "a.jpg.xmp"
    sidecar.write_text(content)
    with pytest.raises(SidecarError, match=reason):
        merge_subjects(str(tmp_path / "a.jpg"), ["beach"])
    assert sidecar.read_text() == content
    assert [p.name for p in tmp_path.iterdir()] == ["a.jpg.xmp"]  # no temporary file left behind


def test_a_sidecar_that_is_a_link_or_a_device_is_left_as_it_is(tmp_path):
    shared = tmp_path / "shared.xmp"
    shared.write_text("<x:xmpmeta xmlns:x='adobe:ns:meta/'/>")
    (tmp_path / "a.jpg.xmp").symlink_to(shared)  # another tool's sidecar, shared through a link
    (tmp_path / "b.jpg.xmp").symlink_to("/dev/zero")
    for image in ("a.jpg", "b.jpg"):
        with pytest.raises(SidecarError, match="not a regular file"):
            merge_subjects(str(tmp_path / image), ["beach"])
    assert (tmp_path / "a.jpg.xmp").is_symlink() and (tmp_path / "b.jpg.xmp").is_symlink()
    assert shared.read_text() == "<x:xmpmeta xmlns:x='adobe:ns:meta/'/>"


def test_tag_write_xmp_writes_each_tagged_photo_and_reports_bad_sidecars(photos, tmp_path, embedder):
    db = tmp_path / "db"
    index_folders([photos], db, embedder=embedder, workers=0)
    horse = photos / "animals" / "horse.png"
    (photos / "animals" / "horse.png.xmp").write_text("not xml at all")
    runner = CliRunner()
    r = runner.invoke(app, ["tag", "--db", str(db), "--labels", "dog,cat,beach,space,food,texture",
                            "--threshold", "0.02", "--write-xmp", "--json"], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    tagged = {i["path"]: [t["label"] for t in i["tags"]] for i in json.loads(r.stdout)}
    written = 0
    for path, labels in tagged.items():
        sidecar = Path(path + ".xmp")
        if path == str(horse):
            assert sidecar.read_text() == "not xml at all"
        elif labels:
            assert subjects(sidecar) == labels
            written += 1
        else:
            assert not sidecar.exists()
    assert 0 < written < len(tagged) - 1
    assert f"{written} XMP sidecars written" in r.stderr
    assert f"skipped {horse}.xmp: cannot read the existing sidecar" in r.stderr


def test_sidecars_stay_in_step_with_later_index_runs(photos, tmp_path, tiny_checkpoint):
    """`tag --write-xmp` is remembered: an index run that adds photos writes their sidecars (with
    the tags it gives them), a moved photo gets one at its new path, a deleted photo's sidecar
    is left alone, and `--no-write-xmp` stops it."""
    import shutil

    from conftest import TINY

    runner = CliRunner()

    def cli(*args):
        r = runner.invoke(app, [str(a) for a in args], catch_exceptions=False)
        assert r.exit_code == 0, r.output
        return r

    db, later = tmp_path / "db", tmp_path / "later"
    shutil.move(photos / "travel", later)  # added by the second run
    cli("index", photos, "--db", db, "--model", TINY, "--pretrained", tiny_checkpoint, "-q")
    labels = ("--labels", "dog,cat,beach,space,food,texture", "--threshold", "0", "--top", "2")
    cli("tag", "--db", db, *labels, "--write-xmp")
    rocket = photos / "space" / "rocket.jpg"
    assert Path(f"{rocket}.xmp").exists()

    shutil.move(later, photos / "travel")
    moved = photos / "moved-rocket.jpg"
    shutil.move(rocket, moved)
    r = cli("index", photos, "--db", db, "--json")
    summary = json.loads(r.stdout)
    assert summary["added"] == 2 and summary["moved"] == 1
    tags = {i["path"]: [t["label"] for t in i["tags"]]
            for i in json.loads(cli("tag", "--db", db, *labels, "--json").stdout)}
    for new in (photos / "travel" / "china.jpg", photos / "travel" / "flower.jpg", moved):
        assert tags[str(new)], new
        assert subjects(Path(f"{new}.xmp")) == tags[str(new)]
    assert summary["sidecars_written"] == 3
    assert Path(f"{rocket}.xmp").exists()  # the old path's sidecar: other tools may own it

    cli("tag", "--db", db, "--labels", "dog,cat", "--threshold", "0.02", "--no-write-xmp")
    Image.new("RGB", (32, 32), (1, 2, 3)).save(photos / "newest.png")
    assert json.loads(cli("index", photos, "--db", db, "--json").stdout)["sidecars_written"] == 0
    assert not (photos / "newest.png.xmp").exists()


def _sidecar_declaring(prefix_of: dict[str, str]) -> str:
    declared = " ".join(f'xmlns:{p}="{uri}"' for uri, p in prefix_of.items())
    marks = " ".join(f'{p}:mark="{i}"' for i, p in enumerate(prefix_of.values()))
    return (f'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
            f'<rdf:Description rdf:about="" {declared} {marks}/></rdf:RDF></x:xmpmeta>')


def test_threads_writing_sidecars_with_conflicting_prefixes_keep_their_own(tmp_path):
    """Each sidecar keeps its writer's prefixes while another thread writes a sidecar that binds
    the same prefixes to other namespaces: the prefix map is the document's, not the process's."""
    import threading

    documents = {
        "a.jpg": {"http://one.example/": "foo", "http://two.example/": "bar"},
        "b.jpg": {"http://two.example/": "foo", "http://one.example/": "bar"},  # swapped
    }
    errors: list[str] = []
    start = threading.Barrier(len(documents))

    def write(name: str, prefix_of: dict[str, str]) -> None:
        start.wait()
        for i in range(150):
            sidecar = tmp_path / f"{name}.xmp"
            sidecar.write_text(_sidecar_declaring(prefix_of))
            merge_subjects(str(tmp_path / name), [f"tag{i}"])
            text = sidecar.read_text()
            for uri, prefix in prefix_of.items():
                if f'xmlns:{prefix}="{uri}"' not in text:
                    errors.append(f"{name} round {i}: {prefix}: lost in {text}")
                    return

    threads = [threading.Thread(target=write, args=item) for item in documents.items()]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors[0]
    assert "foo" not in ET.register_namespace.__globals__["_namespace_map"].values()  # never global
    root = ET.parse(tmp_path / "b.jpg.xmp").getroot()
    description = root.find(f".//{RDF}Description")
    assert description.get("{http://two.example/}mark") == "0"
    assert [li.text for li in root.find(f".//{DC}subject").iter(f"{RDF}li")] == ["tag149"]


def test_no_sidecar_is_written_beside_a_photo_that_is_gone_or_changed(photos, tmp_path, embedder):
    db = tmp_path / "db"
    index_folders([photos], db, embedder=embedder, workers=0)
    gone, changed = photos / "animals" / "horse.png", photos / "space" / "rocket.jpg"
    gone.unlink()
    changed.write_bytes(changed.read_bytes() + b"\0")  # edited since it was indexed
    r = CliRunner().invoke(app, ["tag", "--db", str(db), "--labels", "dog,cat,space", "--threshold", "0",
                                 "--write-xmp"], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    assert not Path(f"{gone}.xmp").exists() and not Path(f"{changed}.xmp").exists()
    assert Path(f"{photos / 'animals' / 'chelsea.heic'}.xmp").exists()
    assert "the photo is gone; no sidecar written" in r.output and "changed since it was indexed" in r.output
