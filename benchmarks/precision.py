"""Embedding precision modes: model forward throughput of each (`--precision`) and how close its
image and text vectors come to fp32's (cosine), on the same photos and texts.

    python -m benchmarks.precision                   # fp32, bf16, int8 on a CPU; fp32, bf16, fp16 on a GPU

Random weights make the timings real and the closeness only indicative: trained weights have
other value ranges, so measure again with --pretrained weights before trusting a mode.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from benchmarks.common import bench_embedder, photos, script, timed
from benchmarks.query import QUERIES


def measure(work: Path, n: int = 64, device: str = "cpu", batch_size: int = 32) -> dict:
    import torch

    from clipsearch.media.images import load_image

    modes = ["fp32", "bf16", "int8"] if device == "cpu" else ["fp32", "bf16", "fp16"]
    paths = photos(work / "photos-precision", n, size=(1024, 768))
    images = [load_image(p).image for p in paths]
    out, reference = {}, None
    for mode in modes:
        embedder = bench_embedder(work, device, mode)
        pixels = torch.stack([embedder.preprocess(im) for im in images])
        embedder.embed_images(pixels[:4])  # warm-up
        seconds, vectors = timed(lambda e=embedder, p=pixels: np.concatenate(
            [e.embed_images(p[i:i + batch_size]) for i in range(0, len(p), batch_size)]))
        texts = embedder.embed_texts(QUERIES)
        if reference is None:
            reference = (vectors, texts)
        image_cos = (vectors * reference[0]).sum(axis=1)
        text_cos = (texts * reference[1]).sum(axis=1)
        out[mode] = {"img_s": n / seconds, "image_cos_min": float(image_cos.min()),
                     "image_cos_mean": float(image_cos.mean()), "text_cos_min": float(text_cos.min())}
    return out


def report(figures: dict) -> None:
    base = figures["fp32"]["img_s"]
    for mode, f in figures.items():
        print(f"  {mode:>4}: {f['img_s']:5.1f} img/s ({f['img_s'] / base:.2f}x fp32); cosine to fp32: "
              f"images min {f['image_cos_min']:.4f} mean {f['image_cos_mean']:.4f}, "
              f"texts min {f['text_cos_min']:.4f}")


def main() -> None:
    script(__doc__, "# embedding precision modes, ViT-B-32 (random weights)",
           {"--photos": {"type": int, "default": 64}, "--device": {"default": "cpu"}},
           lambda work, a: measure(work, a.photos, a.device), report)

if __name__ == "__main__":
    main()
