"""Query latency: a warm text query in-process over a large index, and a cold `clipsearch search`
as a fresh process (targets, issue 5: warm p50 <= 40 ms over 100k vectors; cold <= 2.5 s;
`clipsearch --help` < 0.5 s).

    python -m benchmarks.query                        # 100k stored vectors
    python -m benchmarks.query --images 20000 --cold-runs 1
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
from pathlib import Path

from benchmarks.common import (
    ROOT,
    percentile_ms,
    random_index,
    script,
    timed,
    vit_b_32_checkpoint,
    vit_b_32_embedder,
)

QUERIES = [
    "a dog running on a beach", "kids building a sandcastle", "a red car at night", "birthday cake",
    "snow on the mountains", "a cup of coffee on a wooden table", "my cat asleep on the sofa",
    "fireworks over the city", "a receipt from the supermarket", "a screenshot of a chat",
    "sunset over the sea", "a wedding dance", "an old stone bridge", "a plate of pasta",
    "a bicycle leaning on a wall", "the northern lights", "a crowded market", "a rainy street",
    "a baby laughing", "a boat on a lake", "a field of sunflowers", "a whiteboard with notes",
]


def warm(work: Path, images: int, embedder=None) -> dict:
    from clipsearch.engine import Index

    store = random_index(work / "db-query", images)
    embedder = embedder or vit_b_32_embedder(work)
    index = Index(store, embedder=embedder)
    build_s, _ = timed(lambda: index.ann)
    for q in QUERIES[:3]:  # warm-up: first calls allocate
        index.search(q, k=10)
    total, text, rest = [], [], []
    for q in QUERIES * 2:
        total.append(timed(lambda q=q: index.search(q, k=10))[0])
        seconds, vector = timed(lambda q=q: embedder.embed_texts([q])[0])
        text.append(seconds)
        rest.append(timed(lambda v=vector: index.search_vector(v, 10))[0])
    return {"images": images, "structure": index.ann.kind, "structure_build_s": build_s,
            "p50_ms": percentile_ms(total), "p90_ms": percentile_ms(total, 90),
            "text_p50_ms": percentile_ms(text), "search_and_rows_p50_ms": percentile_ms(rest)}


def _wall(cmd: list[str], env: dict) -> float:
    seconds, r = timed(lambda: subprocess.run(cmd, capture_output=True, text=True, env=env))
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed: {r.stderr.strip()[-500:]}")
    return seconds


def cold(work: Path, runs: int = 3) -> dict:
    """A fresh `clipsearch search` process against the bundled sample photos, ViT-B-32 weights."""
    script = str(Path(sys.executable).parent / "clipsearch")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "CLIPSEARCH_HOME": str(work / "home")}
    db = work / "db-cold"
    _wall([script, "index", str(ROOT / "sample_images"), "--db", str(db), "--model", "ViT-B-32",
           "--pretrained", str(vit_b_32_checkpoint(work)), "-q"], env)
    search = [_wall([script, "search", QUERIES[i % len(QUERIES)], "--db", str(db)], env) for i in range(runs)]
    imports = [_wall([sys.executable, "-c", "import torch, open_clip, lancedb, faiss"], env)
               for _ in range(runs)]
    torch_only = [_wall([sys.executable, "-c", "import torch"], env) for _ in range(runs)]
    helps = [_wall([script, "--help"], env) for _ in range(max(3, runs))]
    return {"search_s": statistics.median(search), "imports_s": statistics.median(imports),
            "import_torch_s": statistics.median(torch_only), "help_s": statistics.median(helps)}


def report(figures: dict) -> None:
    w, c = figures.get("warm"), figures.get("cold")
    if w:
        print(f"  warm text query over {w['images']:,} vectors ({w['structure']}): p50 {w['p50_ms']:.1f} ms, "
              f"p90 {w['p90_ms']:.1f} ms (target p50 <= 40 ms); text encoder {w['text_p50_ms']:.1f} ms, "
              f"search + rows {w['search_and_rows_p50_ms']:.1f} ms")
    if c:
        print(f"  cold `clipsearch search`: {c['search_s']:.2f} s (target 2.5 s); of which imports alone "
              f"{c['imports_s']:.2f} s (torch {c['import_torch_s']:.2f} s); `clipsearch --help` "
              f"{c['help_s']:.2f} s (target 0.5 s)")


def main() -> None:
    script(__doc__, "# query latency, ViT-B-32 (random weights)",
           {"--images": {"type": int, "default": 100_000}, "--cold-runs": {"type": int, "default": 3}},
           lambda work, a: {"warm": warm(work, a.images), "cold": cold(work, a.cold_runs)}, report)

if __name__ == "__main__":
    main()
