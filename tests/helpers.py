"""Independent reference computations that tests compare clipsearch against."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageOps

if TYPE_CHECKING:
    from writers import Run


def reference_image(path: Path) -> Image.Image:
    """Plain Pillow: open, apply EXIF orientation, flatten transparency onto white."""
    from pillow_heif import register_heif_opener

    register_heif_opener()
    with Image.open(path) as img:
        img = ImageOps.exif_transpose(img)
        if img.mode in ("RGBA", "LA") or (img.mode == "P" and "transparency" in img.info):
            rgba = img.convert("RGBA")
            white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            return Image.alpha_composite(white, rgba).convert("RGB")
        return img.convert("RGB")


def reference_image_vectors(embedder, paths: list[Path]) -> np.ndarray:
    """open_clip directly: model.encode_image(preprocess(image)), one image at a time, normalised."""
    import torch

    out = []
    with torch.inference_mode():
        for p in paths:
            x = embedder.preprocess(reference_image(p)).unsqueeze(0)
            v = embedder.model.encode_image(x)[0]
            out.append((v / v.norm()).numpy())
    return np.stack(out)


def reference_text_vector(embedder, text: str) -> np.ndarray:
    import torch

    with torch.inference_mode():
        v = embedder.model.encode_text(embedder.tokenizer([text]))[0]
        return (v / v.norm()).numpy()


def stored_vectors(db: Path) -> dict[str, np.ndarray]:
    from clipsearch.store.table import Store

    table = Store.open(db).read(["path", "vector"]).to_pylist()
    return {r["path"]: np.asarray(r["vector"], np.float32) for r in table}


def row_paths(db: Path) -> list[str]:
    from clipsearch.store.table import Store

    return sorted(Store.open(db).read(["path"]).column("path").to_pylist())


def reference_itm(model_dir: Path, images: list[Image.Image], text: str) -> np.ndarray:
    """transformers directly: BlipProcessor + BlipForImageTextRetrieval, one pair at a time,
    softmax of the ITM head's logits, probability of 'match'."""
    import torch
    from transformers import BlipForImageTextRetrieval, BlipProcessor

    model = BlipForImageTextRetrieval.from_pretrained(model_dir).eval()
    processor = BlipProcessor.from_pretrained(model_dir)
    out = []
    with torch.inference_mode():
        for image in images:
            logits = model(**processor(images=image, text=text, return_tensors="pt")).itm_score
            out.append(logits.softmax(dim=-1)[0, 1].item())
    return np.array(out)


def reference_tag_scores(embedder, images: np.ndarray, labels: list[str]) -> np.ndarray:
    """The CLIP paper's prompt ensembling, from open_clip directly: each label's templates
    embedded one at a time, averaged, renormalised; sigmoid(100 * (cos label - cos background))."""
    from clipsearch.enrich.tagging import BACKGROUND, TEMPLATES

    def ensembled(prompts):
        mean = np.mean([reference_text_vector(embedder, p) for p in prompts], axis=0)
        return mean / np.linalg.norm(mean)

    background = ensembled(BACKGROUND)
    label_vecs = np.stack([ensembled([t.format(label) for t in TEMPLATES]) for label in labels])
    margin = images.astype(np.float64) @ label_vecs.T - (images.astype(np.float64) @ background)[:, None]
    return 1.0 / (1.0 + np.exp(-100.0 * margin))


# An index run in another process, printing its progress line by line; a per-image pause (test
# only) stretches the run so that whatever the test does alongside reliably overlaps it.
WRITER = """
import json, sys, time
import clipsearch
from clipsearch.build.distributed import RayOptions
pause = float(sys.argv[4])

def report(p):
    print(p.phase, p.done, p.total, time.monotonic(), flush=True)
    time.sleep(pause)

summary = clipsearch.index_folders(
    [sys.argv[1]], sys.argv[2], model=sys.argv[3], device="cpu", batch_size=4, workers=2,
    commit_every=int(sys.argv[5]), progress=report, ray=RayOptions(sys.argv[6]) if sys.argv[6] else None,
    commit_seconds=float(sys.argv[7]))
print("finished", json.dumps(summary.to_dict()), flush=True)
"""


def start_writer(photos: Path, db: Path, model_dir: Path, pause: float = 0.0,
                 commit_every: int = 16, ray: str = "", commit_seconds: float = 10.0) -> Run:
    """`ray`: the address of a Ray cluster to index through. A process of its own (forked from
    one with torch imported: tests.writers), killed and waited for as a subprocess is."""
    from writers import Run

    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return Run(WRITER, [str(photos), str(db), f"local-dir:{model_dir}", str(pause), str(commit_every), ray,
                        str(commit_seconds)], env)
