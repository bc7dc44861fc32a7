"""Shared fixtures: a tiny real open_clip model (random weights), saved the ways users' weights
arrive (a checkpoint file, an open_clip hub-layout folder), and copies of sample_images/."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import pytest

from benchmarks import common

# The torch-free query path exports each new index's text tower to ONNX (about 2 s even for the
# tiny model) and snapshots its rows. Tests of other things run without it, as indexes did before
# it existed; test_fastpath.py turns it on. Subprocesses inherit the setting.
os.environ.setdefault("CLIPSEARCH_FAST_QUERY", "0")
# Where it is on, the CLI makes the export in a job of its own (clipsearch.models.exportjob) and does not
# wait for it; tests that then check the fast path would race that job, so the export is made in
# the command itself unless a test (test_exportjob.py) says otherwise.
os.environ.setdefault("CLIPSEARCH_EXPORT", "now")
# Indexing defaults to auto (bf16 on this project's CPU); the tests that compare stored vectors
# with open_clip's to 1e-5 need fp32, so that is their default. test_models.py tests auto.
os.environ.setdefault("CLIPSEARCH_PRECISION", "fp32")

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "sample_images"
TINY = "clipsearch-tiny-test"
TINY_CFG = common.TINY_CFG  # the benchmarks' smoke-run model, the same tiny ViT


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> str:
    """Registers the tiny config with open_clip, as a user-provided model config would be."""
    import open_clip

    folder = tmp_path_factory.mktemp("model_configs")
    (folder / f"{TINY}.json").write_text(json.dumps(TINY_CFG))
    open_clip.add_model_config(folder)
    return TINY


def _tiny_weights(seed: int):
    import open_clip
    import torch

    torch.manual_seed(seed)
    model = open_clip.create_model(TINY)
    # Random init leaves logit-scale-only differences between seeds; make them distinct models.
    return model.state_dict()


@pytest.fixture(scope="session")
def tiny_checkpoint(tiny_model, tmp_path_factory) -> Path:
    """Random tiny weights saved to a .safetensors file: the `--pretrained FILE` path."""
    from safetensors.torch import save_file

    path = tmp_path_factory.mktemp("weights") / "tiny.safetensors"
    save_file({k: v.contiguous() for k, v in _tiny_weights(0).items()}, str(path))
    return path


@pytest.fixture(scope="session")
def tiny_local_dir(tiny_checkpoint, tmp_path_factory) -> Path:
    """The same weights in open_clip's hub layout: the `--model local-dir:FOLDER` path, which a
    fresh process can load without registering any config."""
    folder = tmp_path_factory.mktemp("tiny_hub_layout")
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": TINY_CFG}))
    shutil.copy(tiny_checkpoint, folder / "open_clip_model.safetensors")
    return folder


@pytest.fixture(scope="session")
def embedder(tiny_checkpoint):
    from clipsearch.models import load_embedder, parse_model_spec

    return load_embedder(parse_model_spec(TINY, str(tiny_checkpoint)), "cpu")


@pytest.fixture
def photos(tmp_path) -> Path:
    """A private, writable copy of sample_images/."""
    target = tmp_path / "photos"
    shutil.copytree(SAMPLES, target, ignore=shutil.ignore_patterns("*.md"))
    return target


@pytest.fixture(scope="session")
def sample_index(embedder, tmp_path_factory) -> Path:
    """sample_images/ indexed once with the tiny model, for read-only tests."""
    from clipsearch import index_folders

    photos = tmp_path_factory.mktemp("ro") / "photos"
    shutil.copytree(SAMPLES, photos, ignore=shutil.ignore_patterns("*.md"))
    db = photos.parent / "db"
    index_folders([photos], db, embedder=embedder, workers=2)
    return db


@pytest.fixture
def many_photos(tmp_path) -> Path:
    """300 small distinct PNGs in six folders: enough for several commits and interruptions."""
    from PIL import Image

    folder = tmp_path / "many"
    for i in range(300):
        sub = folder / f"roll{i // 50}"
        sub.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (96, 64), ((i * 7) % 256, (i * 13) % 256, (i * 29) % 256)).save(sub / f"{i}.png")
    return folder


def sample_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix != ".md")


@pytest.fixture(scope="session", autouse=True)
def session_cache(tmp_path_factory) -> Path:
    """The cache of what module and session fixtures make (text exports, thumbnails) before a
    test's own is in effect: never the user's."""
    folder = tmp_path_factory.mktemp("session-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CLIPSEARCH_CACHE", str(folder))
        yield folder


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch) -> Path:
    """Each test gets its own feature cache, so no test sees another's cached features."""
    folder = tmp_path / "cache"
    monkeypatch.setenv("CLIPSEARCH_CACHE", str(folder))
    return folder


@pytest.fixture(scope="session")
def _made_exports(tmp_path_factory) -> tuple[dict[str, Path], Path]:
    return {}, tmp_path_factory.mktemp("made-exports")


@pytest.fixture
def seed_export(_made_exports, private_cache):
    """seed_export(embedder): the model's text export, made by the real exporter once a session,
    copied into this test's cache, as an earlier index run would have left it. For the tests
    whose subject is not the export (making it takes seconds each time); the tests of the export
    (test_fastpath, test_derived, test_firstrun) make their own."""
    made, root = _made_exports

    def seed(embedder=None, db: Path | None = None, model: str | None = None) -> Path:
        """For `embedder`'s model, the model of the index at `db`, or `model` (as --model takes it)."""
        from clipsearch.models import ModelSpec, load_embedder, onnxtext, parse_model_spec
        from clipsearch.models.export import export
        from clipsearch.store.table import Store

        if model is not None:
            embedder = load_embedder(parse_model_spec(model), "cpu", "fp32")
        spec = embedder.spec if embedder is not None else ModelSpec.from_dict(Store.open(db).manifest.model)
        target = onnxtext.folder(spec.to_dict())
        if target.name not in made:
            export(embedder or load_embedder(spec, "cpu", "fp32"), root / target.name)
            made[target.name] = root / target.name
        shutil.copytree(made[target.name], target)
        return target
    return seed


@pytest.fixture
def empty_hub_cache(tmp_path, monkeypatch):
    """A Hugging Face cache with nothing in it, and the network allowed (as far as env goes)."""
    import huggingface_hub.constants as hf

    monkeypatch.setattr(hf, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)


BLIP_WORDS = ["a", "an", "the", "of", "in", "on", "photo", "picture", "dog", "cat", "red", "car",
              "beach", "sunset", "people", "sky", "rocket", "coffee"]


@pytest.fixture(scope="session")
def tiny_blip_dir(tmp_path_factory) -> Path:
    """A tiny random BLIP ITM model, processor and tokenizer saved with save_pretrained: the
    `--rerank-model FOLDER` path, and the layout of a user's downloaded weights.

    224 px like the real models' draft-decoding regime; weights drawn at std 0.2 so that
    different images and texts get clearly different match probabilities.
    """
    import torch
    from transformers import (
        BertTokenizer,
        BlipConfig,
        BlipForImageTextRetrieval,
        BlipImageProcessor,
        BlipProcessor,
    )

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    vocab = {token: i for i, token in enumerate(specials + BLIP_WORDS)}
    config = BlipConfig(
        vision_config={"image_size": 224, "patch_size": 32, "hidden_size": 32, "intermediate_size": 37,
                       "num_hidden_layers": 2, "num_attention_heads": 2, "initializer_range": 0.2},
        text_config={"vocab_size": len(vocab), "hidden_size": 32, "intermediate_size": 37,
                     "num_hidden_layers": 2, "num_attention_heads": 2, "max_position_embeddings": 64,
                     "encoder_hidden_size": 32, "initializer_range": 0.2, "pad_token_id": 0,
                     "bos_token_id": 2, "sep_token_id": 3},
        image_text_hidden_size=16,
    )
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("tiny_blip")
    BlipForImageTextRetrieval(config).save_pretrained(folder)
    processor = BlipProcessor(BlipImageProcessor(size={"height": 224, "width": 224}),
                              BertTokenizer(vocab=vocab))
    processor.save_pretrained(folder)
    return folder


# Under pytest-xdist (-n 2, --dist loadfile, --no-loadscope-reorder) each module runs whole on
# one worker, in the order collected. The longest start first (measured: the smoke run about 3
# minutes, the kill tests 1-1.5 each, Ray 1.5 in all), so neither worker is left with one at the
# end; xdist's own reordering (by test count) had started the smoke run ten minutes in.
FIRST = ("test_benchmarks", "test_interrupt", "test_concurrency", "test_distributed")


def pytest_collection_modifyitems(config, items):
    def rank(item) -> int:
        name = item.module.__name__.rpartition(".")[2]
        return FIRST.index(name) if name in FIRST else len(FIRST)

    items.sort(key=rank)  # stable: each module stays in one piece, in its own order


@pytest.fixture(scope="session")
def shapes_models(tmp_path_factory):
    """CLIP, BLIP ITM and the captioner trained on the shapes task (benchmarks.shapes): the
    committed fixtures (benchmarks.fixtures), with CLIP's hub-layout folder made for the session."""
    from benchmarks import fixtures

    return fixtures.models(tmp_path_factory.mktemp("shapes_models"))


@pytest.fixture(scope="session")
def shapes_captioner(shapes_models) -> Path:
    """The BLIP captioner trained on the shapes task from the trained ITM model (benchmarks.captioner)."""
    return shapes_models.captioner_dir


@pytest.fixture(scope="session")
def shapes_split(tmp_path_factory):
    """The held-out split as files: captions.jsonl over unseen compositions, class folders of
    single objects, a blank picture."""
    from benchmarks import shapes

    return shapes.write_eval_split(tmp_path_factory.mktemp("shapes"))


@pytest.fixture(scope="session")
def shapes_index(shapes_models, shapes_split, tmp_path_factory) -> Path:
    """The whole held-out split indexed with the trained CLIP, loaded as a user's local folder."""
    from clipsearch import index_folders

    db = tmp_path_factory.mktemp("shapes_db") / "db"
    index_folders([shapes_split.root], db, model=f"local-dir:{shapes_models.clip_dir}", device="cpu",
                  workers=2)
    return db


PLANTED_KINDS = ["resized", "q40", "png", "webp", "crop2"]


@pytest.fixture(scope="session")
def planted(shapes_models, tmp_path_factory):
    """sample_images/ and, beside each photo, its copies (benchmarks.variants: resized, re-encoded,
    another format, cropped 2 %, a byte copy), indexed with the trained CLIP. `groups` maps each
    photo to its copies."""
    from types import SimpleNamespace

    from benchmarks import variants
    from clipsearch import index_folders

    root = tmp_path_factory.mktemp("planted")
    photos = root / "photos"
    shutil.copytree(SAMPLES, photos, ignore=shutil.ignore_patterns("*.md"))
    groups = {str(p): [str(c) for c in variants.write(p, photos / "copies" / p.stem, PLANTED_KINDS)]
              for p in sample_files(photos)}
    db = root / "db"
    index_folders([photos], db, model=f"local-dir:{shapes_models.clip_dir}", device="cpu", workers=2)
    return SimpleNamespace(photos=photos, db=db, groups=groups, model_dir=shapes_models.clip_dir)


CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
WAIT = 30  # seconds, for anything a page does


@pytest.fixture(scope="module")
def browser():
    if not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)):
        if os.environ.get("CLIPSEARCH_REQUIRE_BROWSER") == "1":
            pytest.fail(f"{CHROMIUM} and {CHROMEDRIVER} are needed: apt-get install chromium chromium-driver")
        pytest.skip("no Chromium here: apt-get install chromium chromium-driver")
    os.environ["SE_OFFLINE"] = "true"  # Selenium Manager must never try to download a driver
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    profile = tempfile.mkdtemp(prefix="clipsearch-chromium-")
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
                 f"--user-data-dir={profile}", "--window-size=1280,900"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(WAIT)
    driver.set_script_timeout(WAIT)
    yield driver
    driver.quit()
    shutil.rmtree(profile, ignore_errors=True)
