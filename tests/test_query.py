"""The query language: what parses into which terms, what is refused and where, and what the
terms do to the query vector and the ranking."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import SAMPLES
from PIL import Image

from clipsearch import open_index
from clipsearch.errors import QueryError
from clipsearch.search.query import parse

ROCKET = SAMPLES / "space" / "rocket.jpg"


def terms(query):
    return [(t.kind, t.value, t.weight) for t in parse(query)]


@pytest.mark.parametrize("query, expected", [
    ("a dog on a beach", [("text", "a dog on a beach", 1.0)]),
    ('"beach" + "sunset" - "people"', [("text", "beach", 1.0), ("text", "sunset", 1.0),
                                         ("text", "people", -1.0)]),
    ('beach + 2:"sunset" - 0.5:people', [("text", "beach", 1.0), ("text", "sunset", 2.0),
                                         ("text", "people", -0.5)]),
    ('"beach"+"sunset"-"people"', [("text", "beach", 1.0), ("text", "sunset", 1.0),
                                   ("text", "people", -1.0)]),
    ("a dog -people", [("text", "a dog", 1.0), ("text", "people", -1.0)]),
    ("-2:dogs + cats", [("text", "dogs", -2.0), ("text", "cats", 1.0)]),
    ("black-and-white t-shirt", [("text", "black-and-white t-shirt", 1.0)]),
    ("clock showing 10:30", [("text", "clock showing 10:30", 1.0)]),
    ("temperature -20C", [("text", "temperature -20C", 1.0)]),
    ('a "vintage" car', [("text", "a vintage car", 1.0)]),
    (f'{ROCKET} + "at night"', [("image", str(ROCKET), 1.0), ("text", "at night", 1.0)]),
    (f'"{ROCKET}" - 3:smoke', [("image", str(ROCKET), 1.0), ("text", "smoke", -3.0)]),
])
def test_valid_queries(query, expected):
    assert terms(query) == expected


@pytest.mark.parametrize("query, message", [
    ('"beach" + "sun', "this quote is never closed; add the closing \" (at character 11: '\"sun')"),
    ('"beach" +', "nothing to search for after '+'; add a term or remove it (at character 9: '+')"),
    ("beach - 2:", "nothing to search for after the weight; add a term or remove it (at character 9"),
    ("beach + 0:sand", "a weight must be greater than 0; use - to subtract (at character 9: '0:sand')"),
    ("beach 2:sand", "a weight goes at the start of a term; put + or - before it (at character 7"),
    ("- people", "every term is subtracted; add at least one term to look for"),
    ("./holiday.jpg", "image file not found: "),
    ("   ", "the query is empty"),
])
def test_malformed_queries_point_at_the_offending_part(query, message):
    with pytest.raises(QueryError) as err:
        parse(query)
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def _unit(v):
    return v / np.linalg.norm(v)


def test_terms_combine_as_a_weighted_sum_of_unit_vectors(sample_index, embedder):
    index = open_index(sample_index, embedder=embedder)
    beach, sunset, people = embedder.embed_texts(["beach", "sunset", "people"])
    rocket = index.image_vector(ROCKET)

    def vector(query):
        return index.query_vector(parse(query), query)

    np.testing.assert_allclose(vector("beach"), beach, atol=1e-6)
    np.testing.assert_allclose(vector('"beach" + "sunset"'), _unit(beach + sunset), atol=1e-6)
    np.testing.assert_allclose(vector('beach + 2:sunset - people'), _unit(beach + 2 * sunset - people),
                               atol=1e-6)
    np.testing.assert_allclose(vector(f'{ROCKET} + 0.5:"at night"'),
                               _unit(rocket + 0.5 * embedder.embed_texts(["at night"])[0]), atol=1e-6)


def test_terms_that_cancel_out_are_refused(sample_index, embedder):
    index = open_index(sample_index, embedder=embedder)
    with pytest.raises(QueryError, match="cancel each other out"):
        index.search('"beach" - "beach"')


def test_an_image_term_searches_like_similar(sample_index, embedder):
    index = open_index(sample_index, embedder=embedder)
    by_query = index.search(str(ROCKET), k=5)
    assert [h.path for h in by_query] == [h.path for h in index.similar(ROCKET, k=5)]


def test_subtracting_a_term_pushes_its_best_match_down(sample_index, embedder):
    index = open_index(sample_index, embedder=embedder)
    top = index.search("a rocket launch", k=13, words=False)  # pixels: rocket.jpg's name would hold it
    first = top[0].path
    pushed = index.search(f'"a rocket launch" - 2:{first}', k=13, words=False)
    assert [h.path for h in pushed].index(first) > 0


def test_a_bare_file_name_that_is_not_a_file_here_is_words(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (term,) = parse("IMG_2041.jpg")  # the indexed photo of that name is found by its words
    assert term.kind == "text" and term.value == "IMG_2041.jpg"
    Image.new("RGB", (8, 8)).save(tmp_path / "here.png")
    (term,) = parse("here.png")
    assert term.kind == "image" and term.value == str(tmp_path / "here.png")
