"""The shapes models that the tests, the benchmarks and `eval` read: committed in
tests/fixtures/shapes/ and written only by the recipe (benchmarks.shapes, benchmarks.trained and
benchmarks.captioner):

    python -m benchmarks.trained --write tests/fixtures/shapes

Nothing trains them on the fly. `stale()` says when the recipe's sources no longer match the key
the fixtures were written with (tests/test_recipe.py fails with it), so a change to the recipe is
committed with the models it makes.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from benchmarks import trained
from benchmarks.common import ROOT

FOLDER = ROOT / "tests" / "fixtures" / "shapes"
BLIP, CAPTIONER, RECIPE = "blip", "captioner", "recipe.json"
# what shapes the weights; not the torch release, a folder's path or this file, which only reads them
SOURCES = ("benchmarks/shapes.py", "benchmarks/trained.py", "benchmarks/captioner.py")
WRITE = "python -m benchmarks.trained --write tests/fixtures/shapes"


@dataclass(frozen=True)
class Trained:
    clip_checkpoint: Path  # --pretrained FILE, with trained.CLIP_NAME registered
    clip_dir: Path  # --model local-dir:FOLDER (open_clip's hub layout, made from the checkpoint)
    blip_dir: Path  # --rerank-model FOLDER
    captioner_dir: Path  # --caption-model FOLDER
    log: dict  # each training's steps, seconds and losses


def recipe_key() -> str:
    """A digest of the recipe's sources, as the committed fixtures record it."""
    digest = hashlib.sha256()
    for name in SOURCES:
        digest.update(name.encode() + b"\0" + (ROOT / name).read_bytes().replace(b"\r\n", b"\n"))
    return digest.hexdigest()[:16]


def stale(folder: Path = FOLDER) -> str | None:
    """Why the models in `folder` are not what the recipe makes now, or None when they are."""
    recipe = Path(folder) / RECIPE
    if not recipe.is_file():
        return f"{recipe} is missing: write the trained models with `{WRITE}`"
    written = json.loads(recipe.read_text())["key"]
    if written != recipe_key():
        return (f"the trained models in {folder} were written by another recipe (key {written}, the "
                f"sources' now {recipe_key()}): regenerate them with `{WRITE}` and commit them with "
                "the recipe's change")
    return None


def models(work: Path, folder: Path = FOLDER) -> Trained:
    """The committed models, with CLIP's name registered with open_clip and its hub-layout
    folder written under `work`."""
    work = Path(work)
    trained.register_clip_config(work / "model_configs")
    checkpoint = Path(folder) / trained.CLIP_FILE
    hub = work / "clip"
    hub.mkdir(parents=True, exist_ok=True)
    (hub / "open_clip_config.json").write_text(json.dumps({"model_cfg": trained.CLIP_CFG}))
    shutil.copyfile(checkpoint, hub / "open_clip_model.safetensors")
    log = json.loads((Path(folder) / RECIPE).read_text())["log"]
    return Trained(checkpoint, hub, Path(folder) / BLIP, Path(folder) / CAPTIONER, log)
