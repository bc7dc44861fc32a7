"""Words that are not in the pixels: file and folder names, places from GPS, cameras, dates,
keywords and people from IPTC/XMP and sidecars, searched in the same box as CLIP."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from benchmarks import words as hybrid
from benchmarks.words import exif, sidecar
from clipsearch import index_folders, open_index
from clipsearch.cli.commands import app
from clipsearch.media.words import read_meta
from clipsearch.search.query import parse

LISBON, PARIS = (38.7139, -9.1394), (48.8584, 2.2945)  # Lisbon's Baixa; the Eiffel Tower
INTENDENTE = (38.7205, -9.1357)  # a quarter of Lisbon too


def cli(*args):
    return CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False)


def _photo(path: Path, seed: int, **options) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 255, (96, 128, 3), np.uint8)
    Image.fromarray(pixels).save(path, **options)
    return path


@pytest.fixture(scope="module")
def library(tmp_path_factory, tiny_local_dir):
    """A small library whose photos say things their pixels do not, indexed with the tiny model."""
    root = tmp_path_factory.mktemp("words") / "Photos"
    _photo(root / "Paris 2019" / "IMG_2041.JPG", 1, exif=exif(("FUJIFILM", "X100V"), PARIS,
                                                             "2019:07:14 12:00:00", "XF23mmF2 R WR"))
    august = exif(("Google", "Pixel 7"), PARIS, "2019:08:02 09:00:00")
    _photo(root / "Paris 2019" / "IMG_2042.JPG", 2, exif=august)
    party = _photo(root / "Grandma's 80th" / "party.jpg", 3)
    (party.parent / "party.xmp").write_text(sidecar(["birthday"], hierarchy=["People|Family|Grandma"]))
    xmp = sidecar(["streetcar"]).encode()
    _photo(root / "misc" / "tram.jpg", 4, exif=exif(("Apple", "iPhone 15"), LISBON), xmp=xmp)
    (root / "misc" / "tram.jpg.xmp").write_text(sidecar(people=["Ana Lopes"]))
    bad = exif(("Canon", "Canon EOS R5"))
    bad.get_ifd(0x8825).update({2: (38.0, 42.0, 0.0), 4: (9.0, 8.0, 0.0)})  # no N/S, E/W
    _photo(root / "misc" / "bad_gps.jpg", 5, exif=bad)
    (root / "misc" / "bad_gps.jpg.xmp").write_text("<x:xmpmeta this is not xml")
    for i in range(6):
        _photo(root / "camera roll" / f"DSC{i:04d}.png", 10 + i)
    db = root.parent / "db"
    summary = index_folders([root], db, model=f"local-dir:{tiny_local_dir}", device="cpu", workers=2)
    return root, db, summary


def _search(db, *args) -> list[dict]:
    r = cli("search", *args, "--db", db, "--json", "--no-server")
    assert r.exit_code == 0, r.output
    return json.loads(r.stdout)


def test_an_index_run_reads_what_photos_say(library):
    root, db, summary = library
    r = cli("info", "IMG_2041.JPG", "--db", db, "--json")
    assert r.exit_code == 0, r.output
    (about,) = json.loads(r.stdout)
    assert about["camera"] == "FUJIFILM X100V" and about["lens"] == "XF23mmF2 R WR"
    assert about["place"].startswith("Paris, ") and about["place"].endswith("France")
    assert abs(about["lat"] - PARIS[0]) < 1e-4 and about["taken"] == "2019-07-14T12:00:00"
    index = open_index(db)
    (party,) = index.about(root / "Grandma's 80th" / "party.jpg")
    assert party.keywords == ["birthday", "People", "Family", "Grandma"]  # Lightroom's sidecar name
    (tram,) = index.about("TRAM.JPG")  # a bare name, any case
    assert tram.place.startswith("Lisbon") and tram.camera == "Apple iPhone 15"
    assert tram.keywords == ["streetcar"] and tram.people == ["Ana Lopes"]  # embedded XMP, sidecar
    (bad,) = index.about(root / "misc" / "bad_gps.jpg")
    assert bad.lat is None and bad.place is None and bad.camera == "Canon EOS R5"
    notes = {(Path(n.path).name, n.reason) for n in summary.metadata_notes}
    assert ("bad_gps.jpg", "GPS position without its hemispheres (N/S, E/W)") in notes
    assert ("bad_gps.jpg", "bad_gps.jpg.xmp: not XML, ignored") in notes
    assert summary.added == 11 and not summary.skipped  # no photo dropped for its metadata
    places = json.loads(cli("facets", "--db", db, "--json").stdout)
    assert places["places"][0] == {"name": "Paris, Île-de-France, France", "images": 2}
    assert {"name": "FUJIFILM X100V", "images": 1} in places["cameras"]


def test_a_city_is_one_facet_whatever_its_quarters(tmp_path, embedder, monkeypatch):
    """GeoNames has no region for Lisbon: its quarters (Baixa, Intendente) stood where the region
    stands and split the city in the facets; `info` names the quarter. A word a photo matches
    twice (its place and its folder) is shown once."""
    from clipsearch.cli import present

    where = [("tram.jpg", LISBON), ("cafe.jpg", INTENDENTE), ("eiffel.jpg", PARIS)]
    for i, (name, position) in enumerate(where):
        _photo(tmp_path / "photos" / name, i, exif=exif(("Apple", "iPhone 15"), position))
    (tmp_path / "photos" / "Lisbon Café").mkdir()
    (tmp_path / "photos" / "tram.jpg").rename(tmp_path / "photos" / "Lisbon Café" / "tram.jpg")
    db = tmp_path / "db"
    index_folders([tmp_path / "photos"], db, embedder=embedder, fast_path=False)
    places = json.loads(cli("facets", "--db", db, "--json").stdout)["places"]
    assert places == [{"name": "Lisbon, Portugal", "images": 2},
                      {"name": "Paris, Île-de-France, France", "images": 1}]
    (cafe,) = open_index(db, embedder=embedder).about("cafe.jpg")
    assert (cafe.place, cafe.near) == ("Lisbon, Portugal", "Intendente")
    shown = cli("info", "cafe.jpg", "--db", db).stdout.splitlines()
    assert any(line.split() == ["near", "│", "Intendente"] for line in shown), shown
    found = cli("search", "x", "--place", "intendente", "--db", db, "--json", "--no-server").stdout
    assert [h["path"] for h in json.loads(found)] == [str(tmp_path / "photos" / "cafe.jpg")]
    monkeypatch.setattr(present.out, "width", 300)
    table = cli("search", "lisbon cafe", "--db", db, "--no-server", "-k", 3).stdout
    (tram,) = [line for line in table.splitlines() if "tram.jpg" in line]
    assert tram.split("│")[-1].split() == ["lisbon", "cafe"], tram  # its place and its folder: one lisbon


def test_an_index_from_before_names_its_places_again_without_reading_a_file(tmp_path, embedder):
    """Rows indexed when a city's quarter could stand where the region does are named again by
    the next index run, from their stored positions."""
    from clipsearch.store.table import Manifest, Store

    _photo(tmp_path / "photos" / "tram.jpg", 1, exif=exif(("Apple", "iPhone 15"), LISBON))
    _photo(tmp_path / "photos" / "cafe.jpg", 2, exif=exif(("Apple", "iPhone 15"), INTENDENTE))
    db = tmp_path / "db"
    index_folders([tmp_path / "photos"], db, embedder=embedder, fast_path=False)
    store = Store.open(db)  # as the release before wrote them
    rows = store.read(["path", "id"])
    ids = dict(zip(rows.column("path").to_pylist(), rows.column("id").to_pylist(), strict=True))
    tram, cafe = (ids[str(tmp_path / "photos" / name)] for name in ("tram.jpg", "cafe.jpg"))
    store.set_values("place", {"Lisbon, Baixa, Portugal": [tram], "Lisbon, Intendente, Portugal": [cafe]})
    manifest = Manifest.load(db)
    manifest.places_version = 0
    manifest.write(db / "manifest.json")
    assert len(json.loads(cli("facets", "--db", db, "--json").stdout)["places"]) == 2
    again = index_folders([tmp_path / "photos"], db, embedder=embedder, fast_path=False)
    assert (again.unchanged, again.embedded, again.words_filled) == (2, 0, 2)
    places = json.loads(cli("facets", "--db", db, "--json").stdout)["places"]
    assert places == [{"name": "Lisbon, Portugal", "images": 2}]
    assert Manifest.load(db).places_version == 1
    assert index_folders([tmp_path / "photos"], db, embedder=embedder, fast_path=False).words_filled == 0


@pytest.mark.parametrize("query", ["IMG_2041", "2041", "img_2041.jpg", "x100v", "july 2019 paris"])
def test_a_name_a_camera_or_a_month_finds_its_photo_first(library, query):
    _, db, _ = library
    first = _search(db, query, "-k", 3)[0]
    assert Path(first["path"]).name == "IMG_2041.JPG", query
    assert first["words"] and isinstance(first["clip"], float)


def test_places_keywords_people_and_folders_find_their_photos_first(library):
    _, db, _ = library
    for query, wanted in [("Lisbon", {"tram.jpg"}), ("lisb", {"tram.jpg"}), ("Portugal", {"tram.jpg"}),
                          ("ana", {"tram.jpg"}), ("grandma birthday", {"party.jpg"}),
                          ("paris", {"IMG_2041.JPG", "IMG_2042.JPG"})]:
        found = [Path(h["path"]).name for h in _search(db, query, "-k", len(wanted))]
        assert set(found) == wanted, (query, found)
    (hit,) = _search(db, "grandma birthday", "-k", 1)
    assert hit["words"] == {"folder": ["grandma"], "keywords": ["birthday", "grandma"]}
    paris = _search(db, "paris", "-k", 1)[0]["words"]
    assert paris["place"] == ["paris"] and paris["folder"] == ["paris"]


def test_without_a_matching_word_the_ranking_is_clips_to_the_bit(library):
    _, db, _ = library
    index = open_index(db)
    for query in ["a zebra crossing at dusk", "the of a in"]:  # no photo's words; stop words
        fused = index.search(query, k=11)
        assert fused == index.search(query, k=11, words=False)
        assert all(h.words is None for h in fused)
    assert index.search("IMG_2041", k=11) != index.search("IMG_2041", k=11, words=False)
    plain = _search(db, "IMG_2041", "-k", 11, "--words", "off")
    reference = index.search_vector(index.query_vector(parse("IMG_2041")), 11)
    assert [(h["path"], h["score"]) for h in plain] == [(h.path, h.score) for h in reference]
    assert all("words" not in h and "clip" not in h for h in plain)


def test_place_and_camera_filters(library):
    _, db, _ = library
    assert [Path(h["path"]).name for h in _search(db, "photo", "--place", "portugal")] == ["tram.jpg"]
    assert {Path(h["path"]).name for h in _search(db, "photo", "--place", "Île-de-France")} == {
        "IMG_2041.JPG", "IMG_2042.JPG"}
    assert [Path(h["path"]).name for h in _search(db, "x", "--camera", "pixel 7")] == ["IMG_2042.JPG"]
    assert _search(db, "x", "--camera", "Leica") == []
    r = cli("search", "x", "--place", "!!", "--db", db)
    assert r.exit_code != 0 and "--place '!!' has no letters or digits" in r.output


def test_an_edited_sidecar_is_read_again_without_embedding(library, tmp_path, tiny_local_dir):
    root, db, _ = library
    own_root, own_db = tmp_path / "Photos", tmp_path / "db"
    shutil.copytree(root, own_root)
    model = f"local-dir:{tiny_local_dir}"
    index_folders([own_root], own_db, model=model, device="cpu")
    assert all("words" not in h for h in _search(own_db, "anniversary", "-k", 11))  # nobody has it yet
    lightroom = own_root / "Grandma's 80th" / "party.xmp"
    lightroom.write_text(sidecar(["birthday", "anniversary"]))
    os.utime(lightroom, ns=(1, 2_000_000_000_000_000_000))  # a later mtime, whatever the clock says
    darktable = own_root / "camera roll" / "DSC0003.png.xmp"
    darktable.write_text(sidecar(["anniversary"]))
    summary = index_folders([own_root], own_db, model=model, device="cpu")
    assert summary.embedded == 0 and summary.added == 0
    found = {Path(h["path"]).name for h in _search(own_db, "anniversary", "-k", 2)}
    assert found == {"party.jpg", "DSC0003.png"}
    assert index_folders([own_root], own_db, model=model, device="cpu").unchanged == 11  # read once


def test_keywords_clipsearch_wrote_are_not_read_as_the_users(tmp_path):
    from clipsearch.enrich.xmp import merge_subjects

    photo = _photo(tmp_path / "a.jpg", 0)
    (tmp_path / "a.jpg.xmp").write_text(sidecar(["beach"]))
    assert merge_subjects(str(photo), ["beach", "sunset"])
    assert read_meta(str(photo)).keywords == ["beach"]  # the user's beach stays; our sunset is ours


def test_bad_metadata_is_a_note_never_an_error(tmp_path):
    (tmp_path / "huge.jpg.xmp").write_bytes(b"<x:xmpmeta>" + b" " * (5 << 20) + b"</x:xmpmeta>")
    cases = {
        "huge.jpg": {},
        "south.jpg": {"exif": exif(gps=(-95.0, 10.0))},
        "zero.jpg": {"exif": exif(gps=(0.0, 0.0))},
    }
    notes = {}
    for name, options in cases.items():
        photo = _photo(tmp_path / name, 0, **options)
        notes[name] = read_meta(str(photo)).notes
    assert notes["huge.jpg"] == ["huge.jpg.xmp: XMP packet over 4 MB, ignored"]
    assert notes["south.jpg"][0].startswith("GPS position out of range (-95.0000")
    assert notes["zero.jpg"] == ["GPS position out of range (0.0000, 0.0000)"]
    broken = exif(("Ca\xffnon", b"EOS \xff\xfe R5"))  # not UTF-8: read as Latin-1, never fatal
    meta = read_meta(str(_photo(tmp_path / "latin.jpg", 0, exif=broken)))
    assert meta.camera and "R5" in meta.camera
    (tmp_path / "junk.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    assert read_meta(str(tmp_path / "junk.jpg")).notes == ["metadata unreadable (UnidentifiedImageError)"]


def test_landmarks_are_found_by_the_city_a_person_would_name():
    from clipsearch.media.places import names

    landmarks = {  # where the nearest GeoNames place is a suburb or a quarter for most of them
        "Paris": (48.8584, 2.2945), "San Francisco": (37.8199, -122.4783),
        "New York City": (40.6892, -74.0445), "Rome": (41.8902, 12.4922), "Berlin": (52.5163, 13.3777),
        "Sydney": (-33.8568, 151.2153), "Tokyo": (35.6586, 139.7454), "London": (51.5007, -0.1246),
        "Barcelona": (41.4036, 2.1744), "Lisbon": (38.6916, -9.2160), "Rio de Janeiro": (-22.9519, -43.2105),
        "Los Angeles": (34.1341, -118.3215),
    }
    found = names(list(landmarks.values()))
    named = [city for city, places in zip(landmarks, found, strict=True) if places[0] == city]
    assert len(named) >= 0.9 * len(landmarks), set(landmarks) - set(named)
    ventura, = names([(34.2746, -119.229)])
    assert "Ventura County" in ventura and "Los Angeles" not in ventura


# -- words and pixels together, on the trained shapes task -------------------------------------------
@pytest.fixture(scope="module")
def hybrid_figures(shapes_models, tmp_path_factory):
    return hybrid.quality(tmp_path_factory.mktemp("hybrid"), shapes_models.clip_dir)


def test_fused_is_at_least_as_good_as_words_or_pixels_on_every_kind(hybrid_figures):
    for kind in ("words", "pixels", "both"):
        figures = hybrid_figures[kind]
        for k in ("R@1", "R@5"):
            best_alone = max(figures["pixels"][k], figures["words"][k])
            assert figures["scaled"][k] >= best_alone, (kind, k, figures)
    assert hybrid_figures["pixels"]["scaled"] == hybrid_figures["pixels"]["pixels"]  # no word matched
    assert hybrid_figures["words"]["scaled"]["R@1"] == 1.0  # a name, a place, a keyword: found first
    assert hybrid_figures["both"]["scaled"]["R@5"] > hybrid_figures["both"]["pixels"]["R@5"]


def test_the_vocabulary_a_server_builds_finds_the_same_to_the_bit(library):
    _, db, _ = library
    words = open_index(db).word_index()
    asked = [["img", "2041", "img_2041"], ["par"], ["grandma", "birthday"], ["2019", "jul"], ["x"], ["zzz"]]
    scanned = [words.scores(q) for q in asked]
    words._build_lookup()  # what the second query of a large index starts in a thread
    for q, (rows, scores) in zip(asked, scanned, strict=True):
        looked_up = words.scores(q)
        assert np.array_equal(looked_up[0], rows) and np.array_equal(looked_up[1], scores), q
    assert len(scanned[0][0]) >= 2 and len(scanned[-1][0]) == 0


def test_a_bare_name_is_found_whatever_its_letters(tmp_path, embedder):
    """Names are compared lowered on both sides: casefold on one side only turned Straße into
    strasse, so the exact name of the file found nothing."""
    _photo(tmp_path / "photos" / "Straße.jpg", 1)
    db = tmp_path / "db"
    index_folders([tmp_path / "photos"], db, embedder=embedder, fast_path=False)
    index = open_index(db, embedder=embedder)
    for given in ("Straße.jpg", "STRAßE.JPG", "straße.jpg"):
        assert [r.path for r in index.about(given)] == [str(tmp_path / "photos" / "Straße.jpg")], given
