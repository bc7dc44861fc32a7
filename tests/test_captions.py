"""BLIP captions (clipsearch.enrich.captions): a tiny captioner trained on the shapes task writes them,
they are stored per content, searched as words beside CLIP, shown in results, and made in the
background by a watching server."""

from __future__ import annotations

import json
import shutil
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from typer.testing import CliRunner

from benchmarks import captioner as trained_captioner
from clipsearch.build.builder import open_builder
from clipsearch.cli.commands import app
from clipsearch.errors import IndexInterrupted
from clipsearch.search.engine import open_index
from tests import margins, serving

runner = CliRunner()


@pytest.fixture(scope="module")
def captioned(shapes_index, shapes_captioner, tmp_path_factory) -> Path:
    """A copy of the held-out shapes index, every photo captioned by the trained captioner
    through the CLI (the copy keeps the shared index free of captions)."""
    db = tmp_path_factory.mktemp("captioned") / "db"
    shutil.copytree(shapes_index, db)
    before = runner.invoke(app, ["search", "a red circle left of a blue square", "--db", str(db), "--json",
                                 "--words", "off", "-k", "8", "--no-server"])
    result = runner.invoke(app, ["caption", "--db", str(db), "--caption-model", str(shapes_captioner),
                                 "--device", "cpu", "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["captioned"] == open_index(db).store.count() and summary["skipped"] == []
    db.joinpath("pixels-before.json").write_text(before.stdout)
    return db


def test_trained_captions_name_the_colours_and_shapes(captioned, shapes_split):
    records = open_index(captioned).records(open_index(captioned).store.read(["id"]).column("id").to_pylist())
    said = {r.path: r.caption for r in records.values() if r.path in shapes_split.scenes}
    assert len(said) == len(shapes_split.scenes) and all(said.values())
    scores = trained_captioner.accuracy(said, shapes_split.scenes)
    pairs = trained_captioner.accuracy({p: c for p, c in said.items() if "/pairs/" in p}, shapes_split.scenes)
    print(f"held-out drawings: {scores}; two-object ones alone: {pairs}")
    margins.at_least(scores["colours_and_shapes"], 0.8, "captions naming the colours and shapes")


def test_a_captions_words_find_its_photo_and_hits_carry_it(captioned, monkeypatch, seed_export):
    index = open_index(captioned)
    ids = index.store.read(["id"]).column("id").to_pylist()
    record = next(r for r in index.records(ids).values() if "/pairs/" in r.path)
    # among the two-object drawings: elsewhere the class folders' names hold the same words
    result = runner.invoke(app, ["search", record.caption, "--db", str(captioned), "--json", "-k", "3",
                                 "--in", str(Path(record.path).parent), "--no-server"])
    assert result.exit_code == 0, result.output
    hits = json.loads(result.stdout)
    assert record.path in [h["path"] for h in hits]
    mine = next(h for h in hits if h["path"] == record.path)
    print(f"{record.caption!r} finds its photo at rank {mine['rank']}")
    assert mine["caption"] == record.caption
    assert set(mine["words"]["caption"]) >= {w for w in record.caption.split() if w not in ("a", "of")}
    # the caption never moves a pixels-only query
    after = runner.invoke(app, ["search", "a red circle left of a blue square", "--db", str(captioned),
                                "--json", "--words", "off", "-k", "8", "--no-server"])
    before = json.loads(captioned.joinpath("pixels-before.json").read_text())
    ranked = [(h["path"], h["score"]) for h in json.loads(after.stdout)]
    assert ranked == [(h["path"], h["score"]) for h in before]
    # the torch-free path reads the captions from its snapshot (which the first search on the
    # full path writes) and answers the same
    from clipsearch.store.snapshot import Snapshot

    seed_export(db=captioned)
    monkeypatch.setenv("CLIPSEARCH_FAST_QUERY", "1")  # queries through the text export from here
    answers = []
    for _ in range(2):
        fast = runner.invoke(app, ["search", record.caption, "--db", str(captioned), "--json", "-k", "3",
                                   "--in", str(Path(record.path).parent), "--no-server"])
        answers.append(json.loads(fast.stdout))
        assert Snapshot.open(captioned).read_captions().num_rows == index.store.read_captions().num_rows
    assert answers[0] == answers[1]
    assert [(h["path"], h["caption"], h["words"]) for h in answers[1]] == \
        [(h["path"], h["caption"], h["words"]) for h in hits]


def test_captions_do_not_lower_recall_on_twin_confusable_queries(shapes_models, shapes_split,
                                                                  shapes_captioner):
    base = ["eval", "retrieval", str(shapes_split.retrieval), "--model",
            f"local-dir:{shapes_models.clip_dir}", "--device", "cpu", "--json", "--quiet"]
    off = runner.invoke(app, [*base, "--words", "off"])
    on = runner.invoke(app, [*base, "--caption-model", str(shapes_captioner)])
    assert off.exit_code == 0 and on.exit_code == 0, off.output + on.output
    off, on = json.loads(off.stdout), json.loads(on.stdout)
    print(f"R@1 {off['text_to_image']['R@1']:.3f} without captions, {on['text_to_image']['R@1']:.3f} with")
    assert on["caption_model"] == str(shapes_captioner) and not off["words"]
    for k in ("R@1", "R@5"):
        assert on["text_to_image"][k] >= off["text_to_image"][k]


def test_captioner_output_is_transformers_generate(shapes_captioner, shapes_split):
    import torch
    from PIL import Image
    from transformers import BlipForConditionalGeneration, BlipProcessor

    from clipsearch.models.captioner import DECODING, load_captioner

    paths = sorted(p for p in shapes_split.scenes if "/pairs/" in p)[:5]
    images = [Image.open(p).convert("RGB") for p in paths]
    ours = load_captioner(str(shapes_captioner), "cpu", "fp32").caption(images, batch_size=2)
    model = BlipForConditionalGeneration.from_pretrained(shapes_captioner).eval()
    processor = BlipProcessor.from_pretrained(shapes_captioner)
    with torch.inference_mode():
        tokens = model.generate(**processor(images=images, return_tensors="pt"), **DECODING)
    assert ours == processor.batch_decode(tokens, skip_special_tokens=True)


def test_captioning_resumes_after_an_interrupt_and_redoes_stale_ones(shapes_index, shapes_captioner,
                                                                      tmp_path):
    from clipsearch.enrich.captions import caption_store

    db = tmp_path / "db"
    shutil.copytree(shapes_index, db)
    index = open_index(db, device="cpu", caption_model=str(shapes_captioner))
    total = index.store.count()
    seen = []

    def stop_after_two_batches(p):
        seen.append(p.done)
        if p.done >= 8:
            raise KeyboardInterrupt

    with pytest.raises(IndexInterrupted, match="8 captions committed"), index.store.writer_lock():
        caption_store(index.store, index.captioner, progress=stop_after_two_batches, batch_size=4,
                      commit_seconds=0)
    with open_builder(db, device="cpu", create=False) as builder:
        builder.use_captioner(str(shapes_captioner))
        again = builder.caption()
    assert again.captioned == total - 8 and again.stale == 0
    other = "fp32" if index.captioner.precision != "fp32" else "bf16"
    result = runner.invoke(app, ["caption", "--db", str(db), "--caption-model", str(shapes_captioner),
                                 "--caption-precision", other, "--limit", "5", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert "captioned 5 photos" in result.stderr
    assert f"{total} had a caption from another model" in result.stderr
    assert f"{total - 5} left for the next run" in result.stderr
    # --show by bare name prints the stored caption: a read, answered while another process writes
    from clipsearch.store.table import lock_dir

    with lock_dir(db):
        shown = runner.invoke(app, ["caption", "--db", str(db), "--show", "000.png", "--caption-model",
                                    str(shapes_captioner), "--device", "cpu"])
    assert shown.exit_code == 0 and shown.stdout.strip().startswith("a "), shown.output


def test_caption_goes_into_xmp_description_but_never_over_the_users(tmp_path):
    from clipsearch.enrich.xmp import merge_description, sidecar_path
    from clipsearch.media.words import read_meta

    ours, theirs = tmp_path / "ours.jpg", tmp_path / "theirs.jpg"
    from PIL import Image

    for p in (ours, theirs):
        Image.new("RGB", (8, 8)).save(p)
    Path(sidecar_path(str(theirs))).write_text(
        '<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
        '<rdf:Description xmlns:dc="http://purl.org/dc/elements/1.1/"><dc:description><rdf:Alt>'
        '<rdf:li xml:lang="x-default">Grandma at the lake</rdf:li></rdf:Alt></dc:description>'
        '</rdf:Description></rdf:RDF></x:xmpmeta>')
    assert merge_description(str(ours), "a dog on a beach")
    assert not merge_description(str(theirs), "a woman by the water")
    assert merge_description(str(ours), "a dog on the sand")  # ours is replaced by a new caption
    dc = "{http://purl.org/dc/elements/1.1/}description"
    assert [e.text for e in ET.parse(sidecar_path(str(ours))).getroot().iter()
            if e.tag.endswith("}li")] == ["a dog on the sand"]
    assert "Grandma at the lake" in Path(sidecar_path(str(theirs))).read_text()
    assert ET.parse(sidecar_path(str(ours))).getroot().find(f".//{dc}") is not None
    # read back, our caption is not the user's words; theirs is
    assert read_meta(str(ours)).keywords == []
    assert "Grandma at the lake" in read_meta(str(theirs)).keywords


def test_a_watching_server_captions_in_idle_time_and_runs_caption_jobs(shapes_index, shapes_captioner,
                                                                        tmp_path):
    db = tmp_path / "db"
    shutil.copytree(shapes_index, db)
    total = open_index(db).store.count()
    server = serving.start(db, "--watch", "--captions", "--caption-model", shapes_captioner,
                           "--device", "cpu")
    try:
        deadline, hits = time.monotonic() + 120, []
        while time.monotonic() < deadline:
            r = server.get("/api/search", {"q": "a green triangle", "k": total, "words": 0})
            hits = json.loads(r.body)["hits"]
            if all(h["caption"] for h in hits):
                break
            time.sleep(0.5)
        assert len(hits) == total and all(h["caption"] for h in hits)
        pair = next(h for h in hits if "/pairs/" in h["path"])
        image = json.loads(server.get(f"/api/images/{pair['id']}").body)
        assert image["caption"] == pair["caption"]
        code, out, err, _ = serving.run_cli("caption", "--db", db, "--show", Path(pair["path"]).name,
                                            "--caption-model", shapes_captioner)
        assert code == 0 and out.strip() == pair["caption"], err
        code, out, err, _ = serving.run_cli("caption", "--db", db, "--json")  # handed over: nothing left
        assert code == 0 and "handing this run to clipsearch serve --watch" in err, err
        assert json.loads(out)["captioned"] == 0
    finally:
        server.stop()


def test_a_missing_caption_model_is_one_line_at_once_offline(sample_index, empty_hub_cache, monkeypatch,
                                                             tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    started = time.monotonic()
    result = runner.invoke(app, ["caption", "--db", str(sample_index), "--device", "cpu"])
    assert result.exit_code != 0 and time.monotonic() - started < 10
    message = result.stderr.strip()
    assert len(message.splitlines()) == 1
    assert "caption model Salesforce/blip-image-captioning-base" in message
    assert "--caption-model /path/to/folder" in message
    (tmp_path / "empty").mkdir()
    result = runner.invoke(app, ["caption", "--db", str(sample_index), "--caption-model",
                                 str(tmp_path / "empty")])
    assert result.exit_code != 0 and "--caption-model" in result.stderr and "no config.json" in result.stderr


def test_a_caption_in_the_querys_order_outscores_its_twin_of_the_same_words():
    from clipsearch.enrich.captions import phrase_of, score
    from clipsearch.search.query import parse

    query = phrase_of(parse("a red circle left of a blue square"))
    right, right_words = score(query, "a red circle left of a blue square")
    twin, twin_words = score(query, "a blue circle left of a red square")
    assert right == 1.0 and 0 < twin < right and set(right_words) == set(twin_words)
    assert score(query, "a green triangle")[0] == 0.0 and score(query, None) == (0.0, [])
    assert score(phrase_of(parse('"a red circle" - "red"')), "a red circle")[1] == ["circle"]
