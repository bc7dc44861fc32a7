"""Ranking, filters and result sizes, through the Python API."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import SAMPLES
from helpers import stored_vectors

from clipsearch import open_index
from clipsearch.errors import BadInputError


@pytest.fixture
def index(sample_index, embedder):
    return open_index(sample_index, embedder=embedder)


def _photos(sample_index):
    return sample_index.parent / "photos"


def test_similar_on_an_indexed_image_returns_it_first(index, sample_index):
    for image in ["animals/horse.png", "space/rocket.jpg", "animals/chelsea.heic"]:
        hits = index.similar(_photos(sample_index) / image, k=3)
        assert hits[0].path == str(_photos(sample_index) / image)
        assert hits[0].score == pytest.approx(1.0, abs=1e-5)


def test_similar_accepts_an_image_outside_the_index(index, sample_index, tmp_path):
    from PIL import Image

    outside = tmp_path / "elsewhere.png"
    Image.open(_photos(sample_index) / "travel" / "flower.jpg").save(outside)  # same pixels, new file
    hits = index.similar(outside, k=1)
    assert hits[0].path == str(_photos(sample_index) / "travel" / "flower.jpg")
    assert hits[0].score > 0.999


def test_results_are_the_exact_top_k_by_cosine(index, sample_index, embedder):
    query = embedder.embed_texts(["a cup of coffee"])[0]
    stored = stored_vectors(sample_index)
    expected = sorted(stored, key=lambda p: -float(stored[p] @ query))[:5]
    hits = index.search("a cup of coffee", k=5, words=False)  # coffee.webp's name would come first
    assert [h.path for h in hits] == expected
    assert [h.rank for h in hits] == [1, 2, 3, 4, 5]
    assert all(a.score >= b.score for a, b in zip(hits, hits[1:], strict=False))


def test_k_larger_than_the_index_returns_every_image(index):
    hits = index.search("anything", k=1000)
    assert len(hits) == 13
    assert len({h.path for h in hits}) == 13


def test_in_filters_before_ranking_so_top_k_is_kept(index, sample_index, embedder):
    space = _photos(sample_index) / "space"
    query = embedder.embed_texts(["grass"])[0]
    stored = stored_vectors(sample_index)
    inside = [p for p in stored if p.startswith(str(space) + "/")]
    expected = sorted(inside, key=lambda p: -float(stored[p] @ query))
    # even when the space/ images rank below everything else overall, all 3 come back
    hits = index.search("grass", k=3, within=str(space))
    assert [h.path for h in hits] == expected
    assert index.search("grass", k=10, within=str(_photos(sample_index) / "animals"))[0].path.startswith(
        str(_photos(sample_index) / "animals") + "/")


def test_in_a_folder_name_prefix_does_not_leak(index, sample_index, tmp_path):
    # "/photos/space" must not match "/photos/spaceship/..."
    (_photos(sample_index) / "spa").mkdir(exist_ok=True)
    assert index.search("x", k=10, within=str(_photos(sample_index) / "spa")) == []


def test_bad_queries_raise_typed_errors(index, tmp_path):
    with pytest.raises(BadInputError, match="query is empty"):
        index.search("   ")
    with pytest.raises(BadInputError, match="folder not found"):
        index.search("cat", within=str(tmp_path / "nope"))
    with pytest.raises(BadInputError, match="image not found"):
        index.similar(tmp_path / "nope.jpg")


def test_similar_of_an_unreadable_image_names_the_file(index, tmp_path):
    from clipsearch.errors import UnreadableImageError

    bad = tmp_path / "bad.jpg"
    bad.write_text("not an image")
    with pytest.raises(UnreadableImageError, match="bad.jpg: not a readable image"):
        index.similar(bad)


def test_scores_are_cosines(index, sample_index, embedder):
    stored = stored_vectors(sample_index)
    q = embedder.embed_texts(["a rocket launch"])[0]
    for h in index.search("a rocket launch", k=13, words=False):  # with words, rocket.jpg's name fuses
        assert h.score == pytest.approx(float(np.dot(stored[h.path], q)), abs=1e-5)


def test_similar_puts_the_photo_asked_about_first_among_equal_scores(tmp_path, embedder):
    """A PNG and a BMP of the same pixels score 1.0 both; whichever is asked about comes first,
    by path, by id, on the fast path's snapshot too."""
    from PIL import Image

    from clipsearch import index_folders, open_index

    folder = tmp_path / "photos"
    folder.mkdir()
    with Image.open(SAMPLES / "space" / "astronaut.jpg") as img:
        pixels = img.convert("RGB")
    for name in ("a.png", "b.bmp", "c.tif"):
        pixels.save(folder / name)
    Image.new("RGB", (64, 64), (10, 200, 10)).save(folder / "other.png")
    db = tmp_path / "db"
    index_folders([folder], db, embedder=embedder, workers=0)
    index = open_index(db, embedder=embedder)
    ids = {Path(r.path).name: r.id for r in index.records(range(10), tags=False).values()}
    for name in ("a.png", "b.bmp", "c.tif"):
        hits = index.similar(folder / name, k=2)
        assert hits[0].path == str(folder / name), name
        assert hits[0].rank == 1 and hits[1].rank == 2
        assert hits[0].score == pytest.approx(hits[1].score, abs=1e-6)
        assert index.similar(ids[name], k=1)[0].path == str(folder / name)
        page = index.similar_page(ids[name], k=1, offset=1)
        assert page.hits[0].path != str(folder / name) and page.hits[0].rank == 2
