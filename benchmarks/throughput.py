"""Indexing throughput, end to end, against the raw model forward on the same preprocessed
batches in the same run (target, issue 5: ratio >= 0.90 for photo-sized JPEGs).

    python -m benchmarks.throughput                  # 64 photos of 12 MP and 64 of 0.3 MP
    python -m benchmarks.throughput --photos 256

End to end is `index_folders` with the model already loaded: scan, read, hash, decode in worker
threads, preprocess, embed, commit, compact and build the search structure. The raw forward is
`embed_images` alone on the very tensors the pipeline would feed it. Both use every core, so the
ratio also shows what decoding costs the model: on a CPU they share the cores, and the best
ratio possible is fwd / (fwd + decode) in CPU-seconds per image, printed beside it.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from benchmarks.common import photos, timed, vit_b_32_embedder


def raw_forward(embedder, paths: list[str], batch_size: int) -> tuple[float, float]:
    """(images per second of embed_images alone, decode+preprocess CPU-seconds per image)."""
    import time

    import torch

    from clipsearch.images import load_image

    start = time.process_time()
    tensors = [embedder.preprocess(load_image(p, embedder.decode_min_side).image) for p in paths]
    decode_cpu = (time.process_time() - start) / len(paths)
    batches = [torch.stack(tensors[i:i + batch_size]) for i in range(0, len(tensors), batch_size)]
    embedder.embed_images(batches[0][:4])  # warm-up
    seconds, _ = timed(lambda: [embedder.embed_images(b) for b in batches])
    return len(paths) / seconds, decode_cpu


def end_to_end(embedder, folder: Path, db: Path, batch_size: int) -> float:
    from clipsearch import index_folders

    seconds, summary = timed(lambda: index_folders([folder], db, embedder=embedder, batch_size=batch_size))
    assert summary.embedded == len(list(folder.glob("*.jpg"))), summary
    return summary.embedded / seconds


def measure(work: Path, n: int, embedder=None, batch_size: int = 32) -> dict:
    import torch

    embedder = embedder or vit_b_32_embedder(work)
    threads = torch.get_num_threads()
    out = {}
    for label, size in (("12 MP", (4000, 3000)), ("0.3 MP", (640, 480))):
        folder = work / f"photos {label}"
        paths = photos(folder, n, size)
        raw, decode_cpu = raw_forward(embedder, paths, batch_size)
        e2e = end_to_end(embedder, folder, work / f"db {label}", batch_size)
        forward_cpu = threads / raw  # CPU-seconds per image when the forward has every core
        out[label] = {
            "images": n, "end_to_end_img_s": e2e, "raw_forward_img_s": raw, "ratio": e2e / raw,
            "decode_cpu_ms": 1000 * decode_cpu, "ratio_bound": forward_cpu / (forward_cpu + decode_cpu),
            "mb_per_photo": float(np.mean([os.path.getsize(p) for p in paths])) / 1e6,
        }
    return out


def report(figures: dict) -> None:
    for label, f in figures.items():
        print(f"  {label} JPEGs ({f['mb_per_photo']:.1f} MB each, {f['images']}): end to end "
              f"{f['end_to_end_img_s']:5.1f} img/s, raw forward {f['raw_forward_img_s']:5.1f} img/s, "
              f"ratio {f['ratio']:.2f} (target 0.90; decode {f['decode_cpu_ms']:.0f} CPU-ms/img "
              f"caps it at {f['ratio_bound']:.2f})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photos", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="clipsearch-bench-tput-"))
    try:
        figures = measure(work, args.photos, batch_size=args.batch_size)
        print("# indexing throughput, ViT-B-32 (random weights), fp32")
        report(figures)
        if args.json:
            args.json.write_text(json.dumps(figures, indent=2))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
