"""`clipsearch eval`: its figures equal an independent computation straight against open_clip and
transformers on the same data, its dataset formats, and its messages for bad input."""

from __future__ import annotations

import json
import os
import shutil
from types import SimpleNamespace

import numpy as np
import pytest
from helpers import reference_itm, reference_tag_scores
from PIL import Image
from typer.testing import CliRunner

from benchmarks import trained
from clipsearch.cli.commands import app


def cli(*args):
    return CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False)


def _reference_clip(models):
    """open_clip itself, with the trained weights: model, preprocess, tokenizer."""
    import open_clip

    model, _, preprocess = open_clip.create_model_and_transforms(
        trained.CLIP_NAME, pretrained=str(models.clip_checkpoint))
    return SimpleNamespace(model=model.eval(), preprocess=preprocess,
                           tokenizer=open_clip.get_tokenizer(trained.CLIP_NAME))


def _ranks(order_rows, right) -> list[int]:
    return [next(r for r, item in enumerate(order, start=1) if item in right[q])
            for q, order in enumerate(order_rows)]


def _recall(ranks, ks=(1, 5, 10)) -> dict:
    return {f"R@{k}": sum(r <= k for r in ranks) / len(ranks) for k in ks}


def reference_retrieval(models, jsonl, candidates: int) -> dict:
    """The CLIP paper's protocol from open_clip and transformers directly: every image and
    caption embedded one by one, ranked by cosine; re-ranked by BLIP's match probability plus
    the cosine over each caption's top `candidates`."""
    import torch

    ref = _reference_clip(models)
    items = [json.loads(line) for line in jsonl.read_text().splitlines()]
    pictures = [Image.open(jsonl.parent / item["image"]).convert("RGB") for item in items]
    captions = [(i, c) for i, item in enumerate(items) for c in item["captions"]]
    with torch.inference_mode():
        images = torch.cat([ref.model.encode_image(ref.preprocess(p).unsqueeze(0)) for p in pictures])
        texts = torch.cat([ref.model.encode_text(ref.tokenizer([c])) for _, c in captions])
    images = (images / images.norm(dim=-1, keepdim=True)).numpy()
    texts = (texts / texts.norm(dim=-1, keepdim=True)).numpy()
    sims = texts @ images.T
    owner = np.array([i for i, _ in captions])
    t2i = _ranks(np.argsort(-sims, axis=1, kind="stable"), [{i} for i in owner])
    i2t = _ranks([owner[np.argsort(-sims[:, i], kind="stable")] for i in range(len(items))],
                 [{i} for i in range(len(items))])
    reranked = []
    for q, (item, caption) in enumerate(captions):
        top = np.argsort(-sims[q], kind="stable")[:candidates]
        itm = reference_itm(models.blip_dir, [pictures[i] for i in top], caption)
        fused = sorted(range(len(top)), key=lambda j: (-(itm[j] + sims[q, top[j]]), j))
        reranked.append(next((r for r, j in enumerate(fused, start=1) if top[j] == item), t2i[q]))
    return {"t2i": _recall(t2i), "i2t": _recall(i2t), "rerank": _recall(reranked),
            "t2i_median": float(np.median(t2i)), "i2t_median": float(np.median(i2t)),
            "rerank_median": float(np.median(reranked))}


def test_retrieval_figures_equal_open_clip_and_transformers_computed_directly(shapes_models, shapes_split):
    result = cli("eval", "retrieval", shapes_split.retrieval, "--model", trained.CLIP_NAME,
                 "--pretrained", shapes_models.clip_checkpoint, "--rerank", "--candidates", 8,
                 "--rerank-model", shapes_models.blip_dir, "--device", "cpu", "--json")
    assert result.exit_code == 0, result.output
    got = json.loads(result.stdout)
    want = reference_retrieval(shapes_models, shapes_split.retrieval, 8)
    assert {k: got["text_to_image"][k] for k in ("R@1", "R@5", "R@10")} == want["t2i"]
    assert {k: got["image_to_text"][k] for k in ("R@1", "R@5", "R@10")} == want["i2t"]
    assert {k: got["rerank"][k] for k in ("R@1", "R@5", "R@10")} == want["rerank"]
    assert got["text_to_image"]["median_rank"] == want["t2i_median"]
    assert got["image_to_text"]["median_rank"] == want["i2t_median"]
    assert got["rerank"]["median_rank"] == want["rerank_median"]
    assert got["queries"] == got["images"] == 32
    assert got["model"].startswith(trained.CLIP_NAME) and got["precision"] == "fp32"
    assert got["text_to_image"]["queries_per_second"] > 0
    # the figures are not all trivially 0 or 1: this compares something
    assert 0 < want["t2i"]["R@1"] < 1 and want["t2i"]["R@10"] > want["t2i"]["R@1"]


def test_zeroshot_figures_equal_the_prompt_ensembles_computed_directly(shapes_models, shapes_split):
    result = cli("eval", "zeroshot", shapes_split.zeroshot, "--model", trained.CLIP_NAME,
                 "--pretrained", shapes_models.clip_checkpoint, "--device", "cpu", "--json")
    assert result.exit_code == 0, result.output
    got = json.loads(result.stdout)
    ref = _reference_clip(shapes_models)
    classes = sorted(os.listdir(shapes_split.zeroshot))
    files = [(c, p) for c, name in enumerate(classes)
             for p in sorted((shapes_split.zeroshot / name).iterdir())]
    import torch

    with torch.inference_mode():
        vectors = torch.cat([ref.model.encode_image(ref.preprocess(Image.open(p).convert("RGB")).unsqueeze(0))
                             for _, p in files])
    vectors = (vectors / vectors.norm(dim=-1, keepdim=True)).numpy()
    scores = reference_tag_scores(ref, vectors, classes)
    truth = np.array([c for c, _ in files])
    order = np.argsort(-scores, axis=1, kind="stable")
    given = scores >= 0.5
    right = given[np.arange(len(truth)), truth]
    assert got["top1"] == pytest.approx(float(np.mean(order[:, 0] == truth)), abs=1e-12)
    assert got["top5"] == pytest.approx(float(np.mean((order[:, :5] == truth[:, None]).any(1))), abs=1e-12)
    assert got["tag_precision"] == pytest.approx(right.sum() / given.sum(), abs=1e-12)
    assert got["tag_recall"] == pytest.approx(right.mean(), abs=1e-12)
    assert got["images"] == 36 and got["classes"] == 12 and set(got["per_class"]) == set(classes)


@pytest.fixture
def dataset(tmp_path):
    """Three sample photos with captions, in each format eval reads."""
    from conftest import SAMPLES

    pics = tmp_path / "pics" / "sub"
    pics.mkdir(parents=True)
    names = {"rocket.jpg": "space/rocket.jpg", "flower.jpg": "travel/flower.jpg",
             "horse.png": "animals/horse.png"}
    for name, source in names.items():
        shutil.copy(SAMPLES / source, pics / name)
    captions = {"rocket.jpg": ["a rocket", "a launch"], "flower.jpg": ["a flower"], "horse.png": ["a horse"]}
    (tmp_path / "caps.jsonl").write_text("".join(
        json.dumps({"image": f"pics/sub/{n}", "captions": c}) + "\n" for n, c in captions.items()))
    (tmp_path / "caps.csv").write_text("image,caption\n" + "".join(
        f"sub/{n},{c}\n" for n, cs in captions.items() for c in cs))
    (tmp_path / "karpathy.json").write_text(json.dumps({"dataset": "flickr30k", "images": [
        {"filename": n, "split": "test", "sentences": [{"raw": c} for c in cs]} for n, cs in captions.items()
    ] + [{"filename": "not-there.jpg", "split": "train", "sentences": [{"raw": "x"}]}]}))
    return tmp_path


def test_the_three_formats_give_the_same_figures(dataset, tiny_model, tiny_checkpoint):
    common = ["--model", tiny_model, "--pretrained", tiny_checkpoint, "--device", "cpu", "--json"]
    runs = [cli("eval", "retrieval", dataset / "caps.jsonl", *common),
            cli("eval", "retrieval", dataset / "caps.csv", "--images", dataset / "pics", *common),
            cli("eval", "retrieval", dataset / "karpathy.json", "--images", dataset / "pics" / "sub",
                *common)]
    for run in runs:
        assert run.exit_code == 0, run.output
    figures = [json.loads(r.stdout) for r in runs]
    for f in figures:
        assert (f["queries"], f["images"]) == (4, 3)  # the train-split entry is not read
        f["text_to_image"].pop("queries_per_second"), f["image_to_text"].pop("queries_per_second")
    assert figures[0] == figures[1] == figures[2]


def test_the_table_and_progress(dataset, tiny_model, tiny_checkpoint):
    result = cli("eval", "retrieval", dataset / "caps.jsonl", "--model", tiny_model,
                 "--pretrained", tiny_checkpoint, "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert "text → image" in result.stdout and "image → text" in result.stdout
    assert "R@1" in result.stdout and "median rank" in result.stdout
    assert "4 captions, 3 images" in result.stderr and "found 3 images" in result.stderr


def test_a_kept_index_is_reused_and_a_foreign_one_refused(dataset, tiny_model, tiny_checkpoint, sample_index):
    common = ["--model", tiny_model, "--pretrained", tiny_checkpoint, "--device", "cpu", "--json"]
    db = dataset / "pics" / ".." / "evaldb"  # spelled with '..', as a user may
    first = cli("eval", "retrieval", dataset / "caps.jsonl", "--db", db, *common)
    again = cli("eval", "retrieval", dataset / "caps.jsonl", "--db", db, *common, "-q")
    assert first.exit_code == again.exit_code == 0, first.output + again.output
    first, again = json.loads(first.stdout), json.loads(again.stdout)
    assert (first["embedded"], again["embedded"]) == (3, 0)
    assert first["images"] == again["images"] == 3 and first["queries"] == 4
    assert first["text_to_image"]["R@1"] == again["text_to_image"]["R@1"]
    foreign = cli("eval", "retrieval", dataset / "caps.jsonl", "--db", sample_index, *common)
    assert foreign.exit_code == 2
    assert f"--db {sample_index} indexes other folders" in foreign.stderr
    assert "give it a new folder" in foreign.stderr


@pytest.mark.parametrize("content, message", [
    ('{"image": "pics/sub/gone.jpg", "captions": ["x"]}\n', "line 1: image not found: "),
    ('{"image": "pics/sub/horse.png"}\n', 'line 1: write {"image": "path", "captions": ["..."]}'),
    ('{"image": "pics/sub/horse.png", "captions": []}\n', "line 1: captions must be a non-empty list"),
    ("\n{oops\n", "line 2: not JSON"),
])
def test_bad_datasets_are_named_with_the_line_and_the_fix(dataset, content, message):
    bad = dataset / "bad.jsonl"
    bad.write_text(content)
    result = cli("eval", "retrieval", bad)
    assert result.exit_code == 2
    assert message in result.stderr and str(bad) in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_other_bad_input(dataset, tmp_path):
    missing = cli("eval", "retrieval", dataset / "caps.csv")
    assert missing.exit_code == 2
    assert "image not found" in missing.stderr and "pass --images DIR" in missing.stderr
    (tmp_path / "c.txt").write_text("x")
    assert "is .jsonl, .csv or Karpathy's .json" in cli("eval", "retrieval", tmp_path / "c.txt").stderr
    (tmp_path / "one" / "only").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(tmp_path / "one" / "only" / "a.png")
    one = cli("eval", "zeroshot", tmp_path / "one")
    assert one.exit_code == 2 and "needs at least two subfolders" in one.stderr
    assert "between 0 and 1" in cli("eval", "zeroshot", tmp_path / "one", "--threshold", "2").stderr


def test_a_dataset_of_unreadable_images_measures_nothing(tmp_path, tiny_model, tiny_checkpoint):
    (tmp_path / "a.jpg").write_bytes(b"not a picture")
    (tmp_path / "caps.jsonl").write_text('{"image": "a.jpg", "captions": ["x"]}\n')
    result = cli("eval", "retrieval", tmp_path / "caps.jsonl", "--model", tiny_model,
                 "--pretrained", tiny_checkpoint, "--device", "cpu")
    assert result.exit_code == 2
    assert "none of the dataset's 1 images could be indexed" in result.stderr
    assert str(tmp_path / "a.jpg") in result.stderr


def test_an_unreadable_image_is_skipped_and_its_captions_left_out(dataset, tiny_model, tiny_checkpoint):
    (dataset / "pics" / "sub" / "horse.png").write_bytes(b"not a picture")
    result = cli("eval", "retrieval", dataset / "caps.jsonl", "--model", tiny_model,
                 "--pretrained", tiny_checkpoint, "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert "3 captions, 2 images" in result.stderr
    assert f"skipped {dataset / 'pics' / 'sub' / 'horse.png'}" in result.stderr
    assert "1 caption of skipped images left out" in result.stderr


def test_top_5_of_five_classes_or_fewer_is_no_figure(tmp_path, tiny_model, tiny_checkpoint):
    """With 3 classes every image's class is among its top 5: 100 % said nothing."""
    from conftest import SAMPLES

    for name in ("animals", "food", "space"):
        shutil.copytree(SAMPLES / name, tmp_path / "classes" / name)
    common = ["--model", tiny_model, "--pretrained", tiny_checkpoint, "--device", "cpu"]
    shown = cli("eval", "zeroshot", tmp_path / "classes", *common)
    assert shown.exit_code == 0, shown.output
    assert "top-5 needs more than 5 classes: with 3, every image's class is among its top 5" in shown.stderr
    (row,) = [line for line in shown.stdout.splitlines() if "-" in line.split()]
    assert [cell.strip() for cell in row.split("│")][1] == "-"  # top-1, then no top-5
    figures = json.loads(cli("eval", "zeroshot", tmp_path / "classes", *common, "--json").stdout)
    assert figures["top5"] is None and 0 <= figures["top1"] <= 1
