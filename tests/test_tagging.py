"""Zero-shot tagging: scores equal the reference prompt-ensemble computation, thresholds and --top
cut exactly, tags are stored per content and become search filters, later index runs keep them
current, and label files parse or fail with the line at fault."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from helpers import reference_tag_scores, stored_vectors
from typer.testing import CliRunner

from clipsearch import index_folders, open_builder, open_index
from clipsearch.cli.commands import app
from clipsearch.enrich.tagging import TEMPLATES, Tagger, label_set, tag_store
from clipsearch.errors import BadInputError, CorruptIndexError
from clipsearch.store.table import Store

LABELS = ["dog", "cat", "beach", "space", "food", "texture"]
runner = CliRunner()


def cli(*args):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture
def db(sample_index, tmp_path) -> Path:
    """A private copy of the sample index (its rows still point at the shared, read-only photos)."""
    return Path(shutil.copytree(sample_index, tmp_path / "db"))


@pytest.fixture
def reference(sample_index, embedder) -> dict[str, np.ndarray]:
    stored = stored_vectors(sample_index)
    paths = sorted(stored)
    scores = reference_tag_scores(embedder, np.stack([stored[p] for p in paths]), LABELS)
    return dict(zip(paths, scores, strict=True))


def tag_json(db, *args) -> dict[str, list[tuple[str, float]]]:
    r = cli("tag", "--db", db, "--device", "cpu", "--json", *args)
    assert r.exit_code == 0, r.output
    return {i["path"]: [(t["label"], t["score"]) for t in i["tags"]] for i in json.loads(r.stdout)}


def search_paths(db, *args) -> list[str]:
    r = cli("search", "anything", "--db", db, "--device", "cpu", "-k", 20, "--paths", *args)
    assert r.exit_code == 0, r.output
    return r.stdout.splitlines()


def test_scores_equal_the_reference_prompt_ensemble(db, embedder, reference):
    with open_builder(db, embedder=embedder) as builder:
        summary = builder.tag(label_set(LABELS, threshold=0.0))
    assert sorted(i.path for i in summary.images) == sorted(reference)
    for image in summary.images:
        assert sorted(label for label, _ in image.tags) == sorted(LABELS)
        for label, score in image.tags:
            assert score == pytest.approx(reference[image.path][LABELS.index(label)], abs=1e-5)

    rows, label_set_stored = Store.open(db).read_tags()
    assert list(label_set_stored["prompts"]) == LABELS
    hash_of = dict(zip(*Store.open(db).read(["path", "hash"]).to_pydict().values(), strict=True))
    by_hash = {h: p for p, h in hash_of.items()}
    for h, label, score in zip(*rows.to_pydict().values(), strict=True):
        assert score == pytest.approx(reference[by_hash[h]][LABELS.index(label)], abs=1e-5)


def test_the_reference_is_not_trivially_saturated(reference):
    """Threshold tests mean something only if scores spread between 0 and 1."""
    scores = np.concatenate(list(reference.values()))
    assert ((scores > 0.05) & (scores < 0.95)).sum() >= 5


@pytest.mark.parametrize("threshold, top", [(0.1, None), (0.001, 2), (0.0, 1), (0.5, None)])
def test_threshold_and_top_keep_exactly_the_expected_labels(db, reference, threshold, top):
    extra = ["--top", top] if top else []
    tagged = tag_json(db, "--labels", ",".join(LABELS), "--threshold", threshold, *extra)
    untagged = 0
    for path, scores in reference.items():
        order = sorted(range(len(LABELS)), key=lambda j: -scores[j])
        expected = [LABELS[j] for j in order if scores[j] >= threshold][:top]
        assert [label for label, _ in tagged[path]] == expected, path
        untagged += not expected
    r = cli("tag", "--db", db, "--device", "cpu", "--labels", ",".join(LABELS), "--threshold", threshold,
            *extra)
    assert f"tagged {13 - untagged} of 13 images with 6 labels; {untagged} fit no label" in r.stderr


def test_an_image_that_fits_no_label_gets_none(db, reference):
    tagged = tag_json(db, "--labels", ",".join(LABELS), "--threshold", 0.5)
    assert any(tags == [] for tags in tagged.values())
    assert any(tags != [] for tags in tagged.values())
    assert all(scores.max() < 0.5 for p, scores in reference.items() if tagged[p] == [])


def test_tags_become_search_filters(db):
    tagged = tag_json(db, "--labels", ",".join(LABELS), "--threshold", 0.02)
    unfiltered = search_paths(db)
    with_texture = [p for p in unfiltered if "texture" in dict(tagged[p])]
    with_both = [p for p in with_texture if "dog" in dict(tagged[p])]
    assert 0 < len(with_both) < len(with_texture) < len(unfiltered)  # the filters really cut

    assert search_paths(db, "--tag", "texture") == with_texture  # CLIP's order, among the tagged
    assert search_paths(db, "--tag", "texture", "--tag", "dog") == with_both
    # case-insensitive, as --place and --camera are: one rule for every filter
    assert search_paths(db, "--tag", "Texture", "--tag", "DOG") == with_both
    r = cli("similar", unfiltered[-1], "--db", db, "-k", 20, "--paths", "--tag", "dog", "--tag", "texture")
    assert sorted(r.stdout.splitlines()) == sorted(with_both)


def test_an_unknown_tag_is_refused_naming_the_tags_that_exist(db):
    r = cli("search", "x", "--db", db, "--tag", "dog")
    assert r.exit_code == 2
    assert "--tag: this index has no tags yet; run: clipsearch tag" in r.stderr

    tag_json(db, "--labels", "dog,cat")
    r = cli("search", "x", "--db", db, "--tag", "horse")
    assert r.exit_code == 2
    assert "error: --tag 'horse' is not a tag in this index; tags: dog, cat" in r.stderr


def test_retagging_replaces_every_previous_tag(db):
    tag_json(db, "--labels", ",".join(LABELS), "--threshold", 0.0)
    tagged = tag_json(db, "--labels", "sunset,receipt", "--threshold", 0.0)
    assert {label for tags in tagged.values() for label, _ in tags} == {"sunset", "receipt"}
    rows, stored = Store.open(db).read_tags()
    assert set(rows.column("label").to_pylist()) == {"sunset", "receipt"}
    assert list(stored["prompts"]) == ["sunset", "receipt"]
    r = cli("search", "x", "--db", db, "--tag", "texture")
    assert "tags: sunset, receipt" in r.stderr


def test_tags_lists_every_label_with_its_image_count(db):
    tagged = tag_json(db, "--labels", ",".join(LABELS), "--threshold", 0.01)
    r = cli("tags", "--db", db, "--json")
    counts = {c["label"]: c["images"] for c in json.loads(r.stdout)}
    assert counts == {label: sum(label in dict(t) for t in tagged.values()) for label in LABELS}
    assert list(counts.values()) == sorted(counts.values(), reverse=True)
    table = [[c for c in line.split() if c.isalnum()] for line in cli("tags", "--db", db).stdout.splitlines()]
    assert table[0] == ["tag", "images"]
    assert ["texture", str(counts["texture"])] in table

    info = json.loads(cli("info", "--db", db, "--json").stdout)
    assert info["labels"] == LABELS


def test_later_index_runs_tag_new_content_without_the_text_model(photos, tmp_path, embedder, monkeypatch):
    db = tmp_path / "db"
    index_folders([photos], db, embedder=embedder, workers=0)
    with open_builder(db, embedder=embedder) as builder:
        summary = builder.tag(label_set(LABELS, threshold=0.01))
    before = {i.path: i.tags for i in summary.images}

    shutil.copy(photos / "space" / "rocket.jpg", photos / "rocket copy.jpg")
    from PIL import Image

    Image.open(photos / "travel" / "flower.jpg").rotate(90).save(photos / "new flower.png")
    (photos / "food" / "coffee.webp").unlink()
    monkeypatch.setattr(embedder, "embed_texts", lambda *a, **k: pytest.fail("text model used"))
    index_folders([photos], db, embedder=embedder, workers=0)
    monkeypatch.undo()

    store = Store.open(db)
    rows, stored = store.read_tags()
    tagger = Tagger.from_dict(stored)
    vectors = stored_vectors(db)
    hash_of = dict(zip(*store.read(["path", "hash"]).to_pydict().values(), strict=True))
    new = str(photos / "new flower.png")
    expected = reference_tag_scores(embedder, vectors[new][None, :], LABELS)[0]
    mine = {label: s for h, label, s in zip(*rows.to_pydict().values(), strict=True) if h == hash_of[new]}
    assert mine == {LABELS[j]: pytest.approx(expected[j], abs=1e-5) for j in range(6) if expected[j] >= 0.01}
    assert set(rows.column("hash").to_pylist()) <= set(hash_of.values())  # the deleted photo's are gone
    # the run tagged only what it changed, and that equals tagging everything again
    assert max(stored["table_version"], store.manifest.tags_version) == store.version
    assert stored["table_version"] < store.version and tagger.labels.threshold == 0.01
    amended = sorted(zip(*rows.to_pydict().values(), strict=True))
    tag_store(store, tagger, per_image=False)
    whole = sorted(zip(*Store.open(db).read_tags()[0].to_pydict().values(), strict=True))
    assert [r[:2] for r in amended] == [r[:2] for r in whole] and len(whole) > 5
    assert [r[2] for r in amended] == pytest.approx([r[2] for r in whole], abs=1e-6)

    copy = str(photos / "rocket copy.jpg")
    for label, _ in before[str(photos / "space" / "rocket.jpg")]:
        assert copy in search_paths(db, "--tag", label)


def test_a_run_stopped_before_tagging_is_caught_up_by_the_next(photos, tmp_path, embedder, monkeypatch):
    import clipsearch.build.builder

    db = tmp_path / "db"
    index_folders([photos], db, embedder=embedder, workers=0)
    with open_builder(db, embedder=embedder) as builder:
        builder.tag(label_set(LABELS, threshold=0.0))
    from PIL import Image

    Image.open(photos / "space" / "rocket.jpg").rotate(90).save(photos / "again.jpg")  # new content
    monkeypatch.setattr(clipsearch.build.builder, "_retag", lambda *_: None)  # as if killed right there
    index_folders([photos], db, embedder=embedder, workers=0)
    monkeypatch.undo()
    assert str(photos / "again.jpg") not in search_paths(db, "--tag", "dog")

    summary = index_folders([photos], db, embedder=embedder, workers=0)  # nothing changed on disk
    assert summary.added == 0
    assert str(photos / "again.jpg") in search_paths(db, "--tag", "dog")


def test_label_files_take_comments_custom_prompts_and_placeholders(tmp_path):
    f = tmp_path / "labels.txt"
    f.write_text("\ufeff# my labels\ncat\n\nreceipt: a photo of a {}; a scanned shop receipt  # paper\n"
                 "  beach  \n", encoding="utf-8")
    labels = label_set(labels="dog", labels_file=f, threshold=0.3, top=2)
    assert labels.prompts == {
        "cat": [t.format("cat") for t in TEMPLATES],
        "receipt": ["a photo of a receipt", "a scanned shop receipt"],
        "beach": [t.format("beach") for t in TEMPLATES],
        "dog": [t.format("dog") for t in TEMPLATES],
    }
    assert (labels.threshold, labels.top) == (0.3, 2)


@pytest.mark.parametrize("kwargs, message", [
    ({"labels": "cat, dog,cat"}, "label 'cat' is given twice; keep one"),
    ({"labels": " , "}, "--labels ' , ' names no label; pass --labels 'cat,dog,beach', or leave"),
    ({"labels": "cat", "threshold": 1.5}, "--threshold 1.5 is not between 0 and 1"),
    ({"labels": "cat", "top": 0}, "--top must be at least 1, not 0"),
])
def test_bad_label_options_say_what_to_fix(kwargs, message):
    with pytest.raises(BadInputError) as err:
        label_set(**kwargs)
    assert message in str(err.value)


def test_a_bad_labels_file_names_the_line(tmp_path):
    f = tmp_path / "labels.txt"
    f.write_text("cat\n: a photo\n")
    r = cli("tag", "--db", tmp_path, "--labels-file", f)
    assert r.exit_code == 2
    assert f"--labels-file {f}, line 2: write 'label' or 'label: prompt; prompt', not ': a photo'" in r.stderr
    r = cli("tag", "--db", tmp_path, "--labels-file", tmp_path / "missing.txt")
    assert r.exit_code == 2 and "missing.txt" in r.stderr


def test_the_stored_label_set_round_trips_exactly_and_damage_is_named(embedder):
    tagger = Tagger.embed(label_set(LABELS, threshold=0.2, top=3), embedder.embed_texts)
    again = Tagger.from_dict(json.loads(json.dumps(tagger.to_dict())))
    assert again.labels == tagger.labels
    np.testing.assert_array_equal(again.vectors, tagger.vectors)
    np.testing.assert_array_equal(again.background, tagger.background)
    with pytest.raises(CorruptIndexError, match="run clipsearch tag again"):
        Tagger.from_dict(tagger.to_dict() | {"vectors": "AAAA"})


def test_an_empty_index_is_tagged_with_nothing_and_the_api_takes_plain_labels(tmp_path, embedder):
    (tmp_path / "empty").mkdir()
    index_folders([tmp_path / "empty"], tmp_path / "db", embedder=embedder)
    with open_builder(tmp_path / "db", embedder=embedder) as builder:
        summary = builder.tag("beach, snow", top=1)
    index = open_index(tmp_path / "db", embedder=embedder)
    assert (summary.labels, summary.images, summary.untagged) == (["beach", "snow"], [], 0)
    assert [(c.label, c.images) for c in index.tags()] == [("beach", 0), ("snow", 0)]


def test_tagging_while_another_process_writes_is_refused_and_keeps_the_old_tags(db, embedder):
    from clipsearch.errors import IndexBusyError
    from clipsearch.store.table import lock_dir

    index = open_index(db, embedder=embedder)
    with open_builder(db, embedder=embedder) as builder:
        builder.tag("dog,cat")
    with lock_dir(db), pytest.raises(IndexBusyError, match="is writing to the index at"), \
            open_builder(db, embedder=embedder) as builder:
        builder.tag("beach")
    assert {c.label for c in index.tags()} == {"dog", "cat"}


def test_tagging_streams_the_vectors_in_bounded_batches(many_photos, tmp_path, embedder, monkeypatch):
    """A million vectors are 2 GB: tagging must never ask for them all at once. In batches of
    64 rows it writes exactly the tags one batch of everything would."""
    from clipsearch.enrich.tagging import tag_store

    copies = many_photos / "copies"
    copies.mkdir()
    for name in ("roll0/0.png", "roll5/299.png"):  # copies in other batches share their tags
        shutil.copy(many_photos / name, copies / name.replace("/", "-"))
    db = tmp_path / "db"
    index_folders([many_photos], db, embedder=embedder, workers=0)
    embed = open_index(db, embedder=embedder).embed_texts
    tagger = Tagger.embed(label_set("red,green,blue,dark", threshold=0.3), embed)

    store = Store.open(db)
    whole = tag_store(store, tagger, batch_rows=1_000_000)
    whole_rows = store.read_tags()[0].sort_by([("hash", "ascending"), ("label", "ascending")])

    asked: list[int] = []
    original = Store.batches

    def bounded(self, columns, where=None, batch_rows=16_384):
        for batch in original(self, columns, where, batch_rows):
            asked.append(batch.num_rows)
            yield batch

    monkeypatch.setattr(Store, "batches", bounded)
    monkeypatch.setattr(Store, "vectors", lambda *a, **k: pytest.fail("every vector read at once"))
    streamed = tag_store(store, tagger, batch_rows=64)
    assert max(asked) <= 64 and sum(asked) == 302
    rows = Store.open(db).read_tags()[0].sort_by([("hash", "ascending"), ("label", "ascending")])
    # the same tags; scores to float32 rounding (a matrix product's blocking follows its batch)
    pairs = [(r["hash"], r["label"]) for r in rows.to_pylist()]
    assert pairs == [(r["hash"], r["label"]) for r in whole_rows.to_pylist()] and rows.num_rows > 0
    assert np.allclose(rows.column("score").to_numpy(), whole_rows.column("score").to_numpy(), atol=1e-5)
    assert (streamed.images, streamed.untagged) == (whole.images, whole.untagged) == (302, whole.untagged)
    assert [(i.path, [t for t, _ in i.tags]) for i in streamed.per_image] == [
        (i.path, [t for t, _ in i.tags]) for i in whole.per_image]
