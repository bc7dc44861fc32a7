"""Search filters: capture date (EXIF, else file time), file type, folder, in any combination."""

from __future__ import annotations

import os
from datetime import datetime
from pathlib import Path

import pytest

from clipsearch import index_folders, open_index
from clipsearch.errors import BadInputError


def _at(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()  # local time, as a camera's clock


@pytest.fixture
def dated(photos: Path, tmp_path, embedder):
    """Every photo's file time is 2010 except two; rocket.jpg's EXIF says 2015-02-11T18:03."""
    for p in photos.rglob("*.*"):
        os.utime(p, (_at("2010-01-01T12:00"),) * 2)
    os.utime(photos / "animals" / "horse.png", (_at("2020-05-05T12:00"),) * 2)
    os.utime(photos / "textures" / "coins.tif", (_at("2021-03-01T10:00"),) * 2)
    os.utime(photos / "space" / "rocket.jpg", (_at("2024-01-01T12:00"),) * 2)  # EXIF wins
    db = tmp_path / "db"
    index_folders([photos], db, embedder=embedder, workers=1)
    return photos, open_index(db, embedder=embedder)


def names(hits):
    return sorted(Path(h.path).name for h in hits)


def test_dates_use_exif_capture_time_else_file_time(dated):
    _, index = dated
    assert names(index.search("x", k=20, after="2020")) == ["coins.tif", "horse.png"]
    assert names(index.search("x", k=20, after="2021-03")) == ["coins.tif"]
    assert names(index.search("x", k=20, after="2015-02", before="2015-03")) == ["rocket.jpg"]
    assert names(index.search("x", k=20, after="2015-02-11T18:03")) == [
        "coins.tif", "horse.png", "rocket.jpg"]  # --after includes its own instant
    assert "rocket.jpg" not in names(index.search("x", k=20, before="2015-02-11T18:03"))
    assert len(index.search("x", k=20, before="2015-02-12")) == 11


def test_extensions_count_every_spelling_of_a_format(dated):
    photos, index = dated
    jpgs = ["astronaut.jpg", "china.jpg", "flower.jpg", "hubble_deep_field.jpg", "rocket.jpg"]
    assert names(index.search("x", k=20, ext="jpg")) == jpgs
    assert names(index.search("x", k=20, ext="JPEG, .tif")) == sorted([*jpgs, "coins.tif"])
    assert names(index.similar(photos / "space" / "rocket.jpg", k=20, ext=["png"])) == [
        "brick.png", "grass.png", "horse.png"]


def test_filters_combine(dated):
    photos, index = dated
    hits = index.search("x", k=20, within=str(photos / "space"), ext="jpg", before="2015")
    assert names(hits) == ["astronaut.jpg", "hubble_deep_field.jpg"]


def test_top_k_is_taken_among_what_the_filters_allow(dated):
    _, index = dated
    assert len(index.search("x", k=2, ext="png")) == 2
    assert names(index.search("x", k=20, ext="png")) == ["brick.png", "grass.png", "horse.png"]


@pytest.mark.parametrize("kwargs, message", [
    ({"after": "yesterday"}, "--after 'yesterday' is not a date; write YYYY, YYYY-MM, YYYY-MM-DD"),
    ({"before": "2020-02-30"}, "--before '2020-02-30' is not a date"),
    ({"after": "0201"}, "--after 0201: give a year from 1678 to 2261 (no photo is older or newer)"),
    ({"after": "2021", "before": "2020"}, "--after 2021-01-01 00:00 is not before --before 2020-01-01"),
    ({"ext": "docx"}, "--ext 'docx' is not a file type clipsearch indexes; choose from: 3gp, avi, avif, bmp"),
])
def test_bad_filter_values_say_what_to_write(dated, kwargs, message):
    _, index = dated
    with pytest.raises(BadInputError) as err:
        index.search("x", **kwargs)
    assert message in str(err.value)
