"""Searches that mean something: with CLIP and BLIP trained on the shapes task (benchmarks.shapes),
a query finds the pictures it describes, tags name what is in them, and the re-ranker fixes the
binding mistakes CLIP makes. Every picture here is held out from training: its composition was
never seen."""

from __future__ import annotations

import json

import margins
import pytest
import serving
from typer.testing import CliRunner

from benchmarks import shapes
from clipsearch.cli.commands import app

TAG_ACCURACY = 0.75  # measured: precision 0.80, recall 0.89


def cli(*args):
    return CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False)


def _scenes(split, result) -> list[shapes.Scene]:
    assert result.exit_code == 0, result.output
    return [split.scenes[h["path"]] for h in json.loads(result.stdout)]


def _has(scene: shapes.Scene, colour: str | None, shape: str) -> bool:
    return any(o.shape == shape and colour in (None, o.colour) for o in scene.objects)


def test_a_description_finds_the_pictures_it_describes(shapes_index, shapes_split):
    red_circles = _scenes(shapes_split, cli("search", "a red circle", "--db", shapes_index, "-k", 3,
                                            "--json"))
    assert all(_has(s, "red", "circle") for s in red_circles), [s.caption() for s in red_circles]
    right = []
    for colour, shape in ((c, s) for c in shapes.COLOURS for s in shapes.SHAPES):
        found = _scenes(shapes_split, cli("search", f"a {colour} {shape}", "--db", shapes_index,
                                          "-k", 3, "--json"))
        right += [_has(s, colour, shape) for s in found]
    # each object is in about 1 picture of 8 here, so chance is 0.12; measured: 0.78
    print(f"precision@3 of the 12 colour-and-shape queries: {sum(right) / len(right):.2f}")
    margins.at_least(sum(right) / len(right), 0.7, "precision@3 of colour-and-shape queries")


def test_arithmetic_moves_a_query_from_one_colour_to_another(shapes_index, shapes_split):
    query = '"a red circle" - "red" + "blue"'
    found = _scenes(shapes_split, cli("search", query, "--db", shapes_index, "-k", 3, "--json"))
    assert all(_has(s, "blue", "circle") for s in found), [s.caption() for s in found]
    assert not any(_has(s, "red", "circle") for s in found)


def test_similar_finds_the_same_composition_first(shapes_index, shapes_split):
    folder = shapes_split.zeroshot / "green triangle"
    found = cli("similar", folder / "0.png", "--db", shapes_index, "-k", 3, "--paths")
    assert found.exit_code == 0, found.output
    assert sorted(found.stdout.split("\n")[:3]) == sorted(str(p) for p in folder.iterdir())


@pytest.fixture(scope="module")
def tagged(shapes_index, tmp_path_factory):
    """A copy of the index tagged with the three shape names."""
    import shutil

    db = tmp_path_factory.mktemp("tagged") / "db"
    shutil.copytree(shapes_index, db)
    result = cli("tag", "--labels", "circle,square,triangle", "--db", db, "--json")
    assert result.exit_code == 0, result.output
    return db, {i["path"]: {t["label"] for t in i["tags"]} for i in json.loads(result.stdout)}


def test_tags_name_the_shapes_in_each_picture(tagged, shapes_split):
    _, tags = tagged
    given = [(label, label in {o.shape for o in s.objects}) for p, s in shapes_split.scenes.items()
             for label in tags[p]]
    present = [(shape, shape in tags[p]) for p, s in shapes_split.scenes.items()
               for shape in {o.shape for o in s.objects}]
    exact = [tags[p] == {o.shape for o in s.objects} for p, s in shapes_split.scenes.items()]
    precision, recall = sum(r for _, r in given) / len(given), sum(r for _, r in present) / len(present)
    print(f"shape tags: precision {precision:.2f}, recall {recall:.2f}, exactly right on "
          f"{sum(exact) / len(exact):.0%} of {len(exact)} pictures")
    # measured: precision 0.8, recall 0.8, exactly right 56% (chance: 1 in 8)
    margins.at_least(precision, TAG_ACCURACY, "shape tags' precision")
    margins.at_least(recall, TAG_ACCURACY, "shape tags' recall")
    margins.at_least(sum(exact) / len(exact), 0.45, "pictures whose shape tags are exactly right")
    assert tags[str(shapes_split.blank)] == set()  # nothing beats the background


def test_a_tag_filters_the_search(tagged, shapes_split):
    db, tags = tagged
    result = cli("search", "a picture", "--tag", "circle", "--db", db, "-k", 100, "--json")
    found = {h["path"] for h in json.loads(result.stdout)}
    assert found == {p for p, t in tags.items() if "circle" in t} and len(found) > 10
    with_circles = [_has(shapes_split.scenes[p], None, "circle") for p in found]
    base = sum(_has(s, None, "circle") for s in shapes_split.scenes.values()) / len(shapes_split.scenes)
    margins.at_least(sum(with_circles) / len(with_circles), base + 0.1, "circles among 'circle'-tagged")


def _clip_and_reranked(index, caption: str) -> tuple[str, str]:
    return (index.search(caption, 1)[0].path,
            index.search(caption, 1, rerank=True, candidates=4)[0].path)


@pytest.fixture(scope="module")
def seen_index(shapes_models, tmp_path_factory):
    """New pictures of the compositions the models were trained on, indexed."""
    from clipsearch import index_folders

    split = shapes.write_eval_split(tmp_path_factory.mktemp("seen"), seed=7, seen=True)
    db = split.root / "db"
    index_folders([split.root / "pairs"], db, model=f"local-dir:{shapes_models.clip_dir}", device="cpu",
                  workers=2)
    return split, db


def test_rerank_fixes_mistakes_that_clip_makes(seen_index, shapes_models):
    """BLIP reads the caption and the picture together: among CLIP's top 4 it finds the picture
    the caption describes where CLIP put another first (measured on three drawings: 14-15 of
    CLIP's 18-20 mistakes fixed in 112 captions, 0-3 made). Only on compositions seen in training,
    though: on held-out ones this tiny BLIP fixes none (benchmarks' eval section measures both)."""
    from clipsearch import open_index

    split, db = seen_index
    index = open_index(db, device="cpu", rerank_model=str(shapes_models.blip_dir))
    pictures = {s: p for p, s in split.scenes.items() if len(s.objects) == 2}
    fixed, broken = [], []
    for scene, path in pictures.items():
        clip_top, reranked_top = _clip_and_reranked(index, scene.caption())
        if clip_top != path and reranked_top == path:
            fixed.append(scene)
        if clip_top == path and reranked_top != path:
            broken.append(scene)
    print(f"re-rank fixed {len(fixed)} of CLIP's mistakes and made {len(broken)} in {len(pictures)} captions")
    margins.at_least(len(fixed), 8, "CLIP mistakes the re-rank fixes")
    margins.at_least(len(fixed), 2 * len(broken) + 1, "fixed beyond twice the broken")
    scene = fixed[0]
    alone = cli("search", scene.caption(), "--db", db, "-k", 1, "--paths")
    reranked = cli("search", scene.caption(), "--db", db, "-k", 1, "--paths", "--rerank", "--candidates", 4,
                   "--rerank-model", shapes_models.blip_dir)
    assert alone.stdout.strip() != pictures[scene]
    assert reranked.stdout.strip() == pictures[scene]


def test_min_match_returns_nothing_for_a_shape_never_shown(shapes_index, shapes_models, shapes_split):
    common = ["--db", shapes_index, "--rerank-model", shapes_models.blip_dir, "--min-match", 0.5, "--json"]
    absent = cli("search", "a red star", *common)
    assert absent.exit_code == 0, absent.output
    assert json.loads(absent.stdout) == []
    assert "no image matches 'a red star' with a match probability of at least 0.5" in absent.stderr
    present = _scenes(shapes_split, cli("search", "a red circle", *common))
    assert present and _has(present[0], "red", "circle") and len(present) < len(shapes_split.scenes) / 4


def test_the_http_api_finds_the_same(shapes_index, shapes_models, shapes_split, tmp_path):
    running = serving.start(shapes_index, "--rerank-model", shapes_models.blip_dir,
                            env=serving.environment(CLIPSEARCH_CACHE=str(tmp_path / "cache")))
    try:
        plain = running.get("/api/search", {"q": "a red circle", "k": 3}).json()["hits"]
        assert all(_has(shapes_split.scenes[h["path"]], "red", "circle") for h in plain)
        here = cli("search", "a red circle", "--db", shapes_index, "-k", 3, "--paths", "--no-server")
        assert [h["path"] for h in plain] == here.stdout.splitlines()
        none = running.get("/api/search", {"q": "a red star", "min_match": 0.5})
        assert none.status == 200 and none.json()["hits"] == []
    finally:
        running.stop()

