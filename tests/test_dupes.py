"""`clipsearch dupes` and `search --collapse`: planted copies of the photos in sample_images/
(resized, re-encoded, another format, cropped, byte copies) found with the trained CLIP, distinct
photos never merged, the keeper rule, and the paths that get there: all against all, the
temporary IVF, and the index's own IVF-SQ8 structure."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import margins
import numpy as np
import pytest
from conftest import TINY, sample_files
from PIL import Image
from typer.testing import CliRunner

from clipsearch.cli.commands import app

runner = CliRunner()
FILED = "identical but for the path; the one you filed: the other is in copies/, a folder of copies"


def cli(*args):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


def dupes_json(db, *args) -> list[dict]:
    r = cli("dupes", "--db", db, "--json", *args)
    assert r.exit_code == 0, r.output
    return json.loads(r.stdout)


def test_every_planted_group_is_found_and_no_distinct_photos_are_merged(planted):
    groups = dupes_json(planted.db)
    owner = {m: source for source, copies in planted.groups.items() for m in [source, *copies]}
    for source, copies in planted.groups.items():
        wanted = {source, *copies}
        assert any(wanted <= {m["path"] for m in g["members"]} for g in groups), source
    for g in groups:
        assert len({owner[m["path"]] for m in g["members"]}) == 1, g
    assert len(groups) == len(planted.groups) == 13
    # how far the default threshold (0.95) sits below each copy's similarity to its keeper
    margins.at_least(min(m["similarity"] for g in groups for m in g["members"]), 0.95,
                     "a planted copy's similarity to its keeper")
    # numbered, near-duplicate groups (copies of other formats are in them), largest first
    assert [g["group"] for g in groups] == list(range(1, 14))
    assert all(g["kind"] == "near" for g in groups)
    sizes = [len(g["members"]) for g in groups]
    assert sizes == sorted(sizes, reverse=True)


def test_json_fields_keeper_first_and_similarities(planted):
    groups = dupes_json(planted.db)
    fields = {"id", "path", "size", "width", "height", "taken", "similarity"}
    for g in groups:
        assert set(g) == {"group", "kind", "keeper", "members", "reason"}
        assert g["keeper"] == g["members"][0]
        assert all(set(m) == fields for m in g["members"])
        assert g["keeper"]["similarity"] == 1.0
        assert all(0.95 <= m["similarity"] <= 1.0 for m in g["members"])
        assert g["reason"]
    rocket = next(g for g in groups if any(m["path"].endswith("space/rocket.jpg") for m in g["members"]))
    by_name = {Path(m["path"]).name: m for m in rocket["members"]}
    assert by_name["rocket.jpg"]["size"] == os.path.getsize(planted.photos / "space" / "rocket.jpg")
    assert (by_name["rocket.jpg"]["width"], by_name["rocket.jpg"]["height"]) == (640, 427)
    assert by_name["rocket.jpg"]["taken"] == "2015-02-11T18:03:00"
    assert by_name["rocket_resized.jpg"]["width"] == 640 // 3
    # the byte copy is the same content: the same vector
    assert by_name["rocket_copy.jpg"]["similarity"] == by_name["rocket.jpg"]["similarity"]
    # at full size, the original (with its capture time) is kept over its re-encodes, and over
    # its byte copy, in a folder of copies
    assert rocket["keeper"]["path"].endswith("space/rocket.jpg")
    assert rocket["reason"] == FILED
    # without capture times, a lossless file is kept over lossy ones of the same size
    coffee = next(g for g in groups if any(m["path"].endswith("food/coffee.webp") for m in g["members"]))
    assert Path(coffee["keeper"]["path"]).name == "coffee_png.png"
    assert coffee["reason"] == "same size; original format: PNG over JPEG"


def test_the_table_names_the_keeper_and_why(planted):
    r = cli("dupes", "--db", planted.db)
    assert r.exit_code == 0, r.output
    assert r.stdout.count("keep the first") == 13
    assert "13 groups; " in r.stderr
    assert "original format: PNG over JPEG" in r.stdout and "2015-02-11T18:03" in r.stdout


def test_exact_finds_identical_content_only(planted):
    groups = dupes_json(planted.db, "--exact")
    assert len(groups) == 13
    for g in groups:
        assert g["kind"] == "exact"
        keeper = Path(g["keeper"]["path"])
        assert [m["path"] for m in g["members"]] == [
            str(keeper), str(planted.photos / "copies" / keeper.stem / f"{keeper.stem}_copy{keeper.suffix}")]
        assert len({Path(m["path"]).read_bytes() for m in g["members"]}) == 1
        # same bytes, same everything: the photo a person filed is kept, not the one in copies/
        assert g["reason"] == FILED
        assert "/copies/" not in g["keeper"]["path"]


def test_in_limits_the_photos_compared(planted):
    folder = planted.photos / "copies" / "astronaut"
    groups = dupes_json(planted.db, "--in", folder)
    assert len(groups) == 1
    paths = {m["path"] for m in groups[0]["members"]}
    assert paths == set(planted.groups[str(planted.photos / "space" / "astronaut.jpg")])
    assert dupes_json(planted.db, "--in", planted.photos / "space") == []
    r = cli("dupes", "--db", planted.db, "--in", planted.photos / "nowhere")
    assert r.exit_code == 2 and "--in: folder not found" in r.stderr


def test_paths_and_extras_for_piping(planted):
    groups = dupes_json(planted.db)
    r = cli("dupes", "--db", planted.db, "--paths", "--extras")
    assert r.exit_code == 0, r.output
    extras = r.stdout.splitlines()
    assert extras == [m["path"] for g in groups for m in g["members"][1:]]
    assert not {g["keeper"]["path"] for g in groups} & set(extras)
    everything = cli("dupes", "--db", planted.db, "--paths").stdout.splitlines()
    assert len(everything) == len(extras) + len(groups) == 13 * 7
    for args, message in ((["--extras"], "--extras lists paths: add --paths"),
                          (["--json", "--paths"], "cannot be combined"),
                          (["--threshold", "1.5"], "--threshold 1.5 is not a cosine similarity")):
        bad = cli("dupes", "--db", planted.db, *args)
        assert bad.exit_code == 2 and message in bad.stderr, bad.output
    # nothing was deleted or moved
    assert all(os.path.exists(p) for p in extras)


def test_a_higher_threshold_keeps_only_closer_copies(planted):
    loose = dupes_json(planted.db)
    strict = dupes_json(planted.db, "--threshold", "0.999")
    assert sum(len(g["members"]) for g in strict) < sum(len(g["members"]) for g in loose)
    assert all(m["similarity"] >= 0.999 for g in strict for m in g["members"])


def test_search_collapse_returns_one_keeper_per_group(planted):
    groups = dupes_json(planted.db)
    keepers = {g["keeper"]["path"] for g in groups}
    group_of = {m["path"]: g["group"] for g in groups for m in g["members"]}
    full = json.loads(cli("search", "a photo", "--db", planted.db, "-k", "200", "--json",
                          "--no-server").stdout)
    assert len(full) == 13 * 7
    r = cli("search", "a photo", "--db", planted.db, "-k", "200", "--json", "--collapse", "--no-server")
    assert r.exit_code == 0, r.output
    hits = json.loads(r.stdout)
    assert [h["path"] for h in hits if h["path"] in keepers] == [h["path"] for h in hits]
    assert len(hits) == len({group_of[h["path"]] for h in hits}) == 13
    assert [h["rank"] for h in hits] == list(range(1, 14))
    assert [h["score"] for h in hits] == sorted((h["score"] for h in hits), reverse=True)
    # a keeper's score is its own: the one it has without --collapse
    own = {h["path"]: h["score"] for h in full}
    assert all(h["score"] == pytest.approx(own[h["path"]], abs=1e-6) for h in hits)
    # pages of groups
    top = json.loads(cli("search", "a photo", "--db", planted.db, "-k", "3", "--json", "--collapse",
                         "--no-server").stdout)
    assert [h["path"] for h in top] == [h["path"] for h in hits[:3]]


def test_the_api_answers_what_the_cli_answers(planted):
    import serving

    server = serving.start(planted.db)
    try:
        r = server.get("/api/dupes")
        assert r.status == 200
        body = r.json()
        assert body["threshold"] == 0.95 and body["exact"] is False
        assert body["groups"] == dupes_json(planted.db)
        exact = server.get("/api/dupes", {"exact": "true", "in": str(planted.photos / "copies")}).json()
        assert exact["groups"] == dupes_json(planted.db, "--exact", "--in", planted.photos / "copies")
        bad = server.get("/api/dupes", {"threshold": "1.5"})
        assert bad.status == 422 and "threshold" in bad.json()["error"]
        hits = server.get("/api/search", {"q": "a photo", "k": 20, "collapse": "1"}).json()["hits"]
        cli_hits = json.loads(cli("search", "a photo", "--db", planted.db, "-k", "20", "--json",
                                  "--collapse", "--no-server").stdout)
        assert [(h["path"], h["rank"]) for h in hits] == [(h["path"], h["rank"]) for h in cli_hits]
        assert [h["score"] for h in hits] == pytest.approx([h["score"] for h in cli_hits], abs=1e-6)
        # the CLI's search goes through the running server, --collapse included
        via = json.loads(cli("search", "a photo", "--db", planted.db, "-k", "20", "--json",
                             "--collapse").stdout)
        assert [h["path"] for h in via] == [h["path"] for h in cli_hits]
    finally:
        code, output = server.stop()
    assert code == 0, output


# -- the keeper rule -----------------------------------------------------------------------------
def _exif(taken: str) -> Image.Exif:
    exif = Image.Exif()
    exif.get_ifd(0x8769)[0x9003] = taken  # DateTimeOriginal
    return exif


@pytest.fixture(scope="module")
def keeper_cases(tiny_checkpoint, tmp_path_factory):
    """One folder per rule, each holding one group, indexed with the tiny random model (whose
    vectors of any two versions of one picture are near-identical)."""
    from clipsearch import index_folders

    root = tmp_path_factory.mktemp("keeper")
    with Image.open(sample_files(Path(__file__).resolve().parents[1] / "sample_images")[5]) as img:
        base = img.convert("RGB")
    cases = root / "photos"
    size = cases / "size"
    size.mkdir(parents=True)
    base.save(size / "full.jpg", quality=90)
    half = base.resize((base.width // 2, base.height // 2))
    half.save(size / "a.jpg", quality=95, exif=_exif("2001:01:01 00:00:00"))
    metadata = cases / "metadata"
    metadata.mkdir()
    base.save(metadata / "converted.png")
    base.save(metadata / "original-with-a-longer-name.jpg", quality=90, exif=_exif("2019:07:01 12:00:00"))
    fmt = cases / "format"
    fmt.mkdir()
    base.save(fmt / "photo.webp", quality=90)
    base.save(fmt / "photo-exported-version.png")
    base.save(fmt / "p.jpg", quality=90)
    burst = cases / "burst"
    burst.mkdir()
    base.save(burst / "b.jpg", quality=90, exif=_exif("2020:05:01 10:00:02"))
    base.save(burst / "a-much-longer-name.jpg", quality=91, exif=_exif("2020:05:01 10:00:01"))
    base.save(burst / "c.jpg", quality=92)
    quality = cases / "quality"
    quality.mkdir()
    base.save(quality / "small-file.jpg", quality=40)
    base.save(quality / "large-file-with-a-long-name.jpg", quality=95)
    copies = cases / "copies"
    copies.mkdir()
    base.save(copies / "photo-copy.jpg", quality=90)
    shutil.copy(copies / "photo-copy.jpg", copies / "p.jpg")
    filed = cases / "filed" / "Lisbon 2019"  # the backup's path is the shorter one
    filed.mkdir(parents=True)
    base.save(filed / "IMG_2041.jpg", quality=90)
    (cases / "filed" / "backup").mkdir()
    shutil.copy(filed / "IMG_2041.jpg", cases / "filed" / "backup" / "IMG_2041.jpg")
    oldest = cases / "oldest"
    oldest.mkdir()
    base.save(oldest / "the-first-one.jpg", quality=90)
    shutil.copy(oldest / "the-first-one.jpg", oldest / "later.jpg")
    os.utime(oldest / "the-first-one.jpg", (1_600_000_000, 1_600_000_000))
    same = cases / "same"
    same.mkdir()
    base.save(same / "photo.jpg", quality=90)
    shutil.copy(same / "photo.jpg", same / "p.jpg")
    for name in ("photo.jpg", "p.jpg"):  # copied with their times (cp -p): nothing tells them apart
        os.utime(same / name, (1_600_000_000, 1_600_000_000))
    db = root / "db"
    index_folders([cases], db, model=TINY, pretrained=str(tiny_checkpoint), device="cpu", workers=2)
    return cases, db


@pytest.mark.parametrize(("case", "keeper", "reason"), [
    ("size", "full.jpg", "largest: "),
    ("metadata", "original-with-a-longer-name.jpg", "same size; the original: it has the camera's capture"),
    ("format", "photo-exported-version.png", "same size; original format: PNG over JPEG"),
    ("burst", "a-much-longer-name.jpg", "same size and format; taken first: 2020-05-01T10:00:01"),
    ("quality", "large-file-with-a-long-name.jpg", "same size, format and capture time; largest file"),
    ("copies", "p.jpg", "identical but for the path; the other is named as a copy (photo-copy.jpg)"),
    ("filed", "IMG_2041.jpg", "identical but for the path; the one you filed: the other is in backup/"),
    ("oldest", "the-first-one.jpg", "identical but for the path; the oldest file"),
    ("same", "p.jpg", "identical but for the path; shortest path"),
])
def test_the_keeper_rule(keeper_cases, case, keeper, reason):
    cases, db = keeper_cases
    groups = dupes_json(db, "--in", cases / case, "--threshold", "0.9")
    assert len(groups) == 1
    group = groups[0]
    assert Path(group["keeper"]["path"]).name == keeper
    assert case != "filed" or Path(group["keeper"]["path"]).parent.name == "Lisbon 2019"
    assert group["reason"].startswith(reason), group["reason"]


def test_the_format_order_goes_lossless_heic_jpeg_then_web_formats():
    from clipsearch.results import ImageRecord
    from clipsearch.search.dupes import preference

    def record(name: str) -> ImageRecord:
        return ImageRecord(0, f"/p/{name}", 100, 10, 10, None, 0, "h")

    names = ["x.webp", "x.jpg", "x.heic", "x.avif", "x.tif", "x.gif", "x.png"]
    ranked = [r.path for r in sorted(map(record, names), key=preference)]
    assert ranked[:4] == ["/p/x.png", "/p/x.tif", "/p/x.heic", "/p/x.jpg"]
    assert set(ranked[4:]) == {"/p/x.avif", "/p/x.gif", "/p/x.webp"}


# -- small and empty indexes; the search structures ----------------------------------------------
def test_an_index_of_one_image_and_an_empty_index(tmp_path, tiny_checkpoint):
    one = tmp_path / "one"
    one.mkdir()
    Image.new("RGB", (64, 48), (200, 30, 30)).save(one / "only.png")
    empty = tmp_path / "empty"
    empty.mkdir()
    for folder in (one, empty):
        db = tmp_path / f"db-{folder.name}"
        r = cli("index", folder, "--db", db, "--model", TINY, "--pretrained", tiny_checkpoint, "-q")
        assert r.exit_code == 0, r.output
        assert dupes_json(db) == []
        assert dupes_json(db, "--exact") == []
        table = cli("dupes", "--db", db)
        assert table.exit_code == 0 and "no duplicates found" in table.stderr
        assert cli("dupes", "--db", db, "--paths", "--extras").stdout == ""
    missing = cli("dupes", "--db", tmp_path / "nothing-here")
    assert missing.exit_code != 0 and "no index at" in missing.stderr


def test_a_file_indexed_twice_through_an_alias_is_never_an_extra(tmp_path, tiny_checkpoint):
    """A root indexed again through a symlinked alias: two rows name one file, and whichever is
    kept, the other is that same file, so --extras lists nothing; a real copy is still listed."""
    photos = tmp_path / "photos"
    photos.mkdir()
    Image.new("RGB", (64, 48), (200, 30, 30)).save(photos / "red.png")
    alias = tmp_path / "alias"
    alias.symlink_to(photos, target_is_directory=True)
    db = tmp_path / "db"
    for root in (photos, alias):
        r = cli("index", root, "--db", db, "--model", TINY, "--pretrained", tiny_checkpoint, "-q")
        assert r.exit_code == 0, r.output
    (group,) = dupes_json(db, "--exact")
    assert {m["path"] for m in group["members"]} == {str(photos / "red.png"), str(alias / "red.png")}
    assert cli("dupes", "--db", db, "--paths", "--extras").stdout == ""
    shutil.copy(photos / "red.png", photos / "red copy.png")
    r = cli("index", photos, "--db", db, "--model", TINY, "--pretrained", tiny_checkpoint, "-q")
    assert r.exit_code == 0, r.output
    listed = cli("dupes", "--db", db, "--paths", "--extras").stdout.splitlines()
    assert listed == [str(photos / "red copy.png")]


def _store_with(folder: Path, vectors: np.ndarray):
    from benchmarks.common import random_index

    class Given:
        dim = vectors.shape[1]

        def __init__(self):
            self.at = 0

        def draw(self, n):
            self.at += n
            return vectors[self.at - n:self.at]

    return random_index(folder, len(vectors), Given())


def test_a_chain_of_look_alikes_never_joins_unrelated_photos(tmp_path):
    from clipsearch.search.engine import open_index

    # a ~ b (0.97), b ~ c (0.98), but a and c only 0.90 apart: union-find would make one group
    e = np.eye(8, dtype=np.float32)
    b = e[0]
    c = 0.98 * e[0] + np.sqrt(1 - 0.98**2) * e[1]
    a = 0.97 * e[0] + np.sqrt(1 - 0.97**2) * (-0.4 * e[1] + np.sqrt(1 - 0.16) * e[2])
    far = e[5]
    vectors = np.stack([a, b, c, far]).astype(np.float32)
    assert float(vectors[0] @ vectors[2]) < 0.95
    store = _store_with(tmp_path / "db", vectors)
    groups = open_index(store.path).dupes(0.95)
    assert len(groups) == 1
    members = {m.image.id for m in groups[0].members}
    assert members == {1, 2}  # the most alike pair; a stays out
    assert groups[0].members[1].similarity == pytest.approx(0.98, abs=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("n", [20_000, 60_000])
def test_the_inverted_file_paths_find_the_planted_groups(tmp_path, n):
    """20k distinct vectors go through a temporary IVF over float vectors; 60k through the index's
    own IVF-SQ8 structure, re-scored exactly. Both find what all-against-all finds."""
    from benchmarks.dupes import PlantedVectors
    from clipsearch.search import dupes as finder
    from clipsearch.search.engine import open_index
    from clipsearch.store.ann import current

    vectors = PlantedVectors(share=50, dim=64)
    store = _store_with(tmp_path / "db", vectors.draw(n))
    ann = current(store)
    assert ann.kind == ("flat" if n <= 50_000 else "ivf")
    groups = open_index(store.path).dupes()
    found = sorted(sorted(m.image.id for m in g.members) for g in groups)
    assert found == sorted(vectors.planted)
    assert len(vectors.planted) > n // 250
    ids, matrix = store.vectors()
    vector = dict(zip(ids.column("id").to_pylist(), matrix, strict=True))
    for g in groups[:50]:
        for m in g.members:
            expected = float(vector[m.image.id] @ vector[g.keeper.image.id])
            assert m.similarity == pytest.approx(expected, abs=1e-5)
    # with every pair compared exactly, the same groups
    exact_max = finder.EXACT_MAX
    try:
        finder.EXACT_MAX = n
        everything = finder.find(store, None, finder.DEFAULT_THRESHOLD)
    finally:
        finder.EXACT_MAX = exact_max
    assert sorted(sorted(m.image.id for m in g.members) for g in everything) == found


def test_collapse_on_the_torch_free_path(planted, tmp_path, seed_export, monkeypatch):
    import serving

    from clipsearch.store import snapshot

    db = tmp_path / "db"
    shutil.copytree(planted.db, db)
    seed_export(db=db)
    monkeypatch.setenv("CLIPSEARCH_FAST_QUERY", "1")
    # no row snapshot yet: this is the full path, which writes one
    assert not any(p.is_file() for p in snapshot.files(db))
    expected = json.loads(cli("search", "a photo", "--db", db, "-k", "20", "--json", "--collapse",
                              "--no-server").stdout)
    assert all(p.is_file() for p in snapshot.files(db))
    env = serving.environment(CLIPSEARCH_FAST_QUERY="1")
    code, quick, err, heavy = serving.run_cli("search", "a photo", "-k", 20, "--json", "--collapse",
                                              "--no-server", "--db", db, env=env)
    assert code == 0, err
    assert "torch" not in heavy and "lancedb" not in heavy
    hits = json.loads(quick)
    assert [h["path"] for h in hits] == [h["path"] for h in expected]
    assert [h["score"] for h in hits] == pytest.approx([h["score"] for h in expected], abs=1e-5)
