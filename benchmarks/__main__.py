"""The benchmark suite: every figure issues 5, 10-15 and 20-26 ask for, in one run, printed as a
table of target against measured, and written to benchmarks/results/<timestamp>.json.

    python -m benchmarks              # full: 1M-vector scale, 1,000-photo memory (~25 min here)
    python -m benchmarks --quick      # the same measurements at smaller sizes (<= 10 min)
    python -m benchmarks --smoke      # tiny sizes, correctness only (CI)
    python -m benchmarks --only query,scale

Model weights do not change speed: ViT-B-32 and BLIP-base architectures run with random weights
saved to local files and loaded the way a user's checkpoint is. Absolute times depend on the
machine and its neighbours; the ratios each section prints are measured within one run.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import tempfile
import time
import traceback
from pathlib import Path

from benchmarks import (
    captions,
    change,
    cluster,
    common,
    diskcache,
    dupes,
    fixtures,
    memory,
    precision,
    query,
    raw,
    rerank,
    scale,
    serve,
    tagging,
    throughput,
    video,
    watch,
    words,
)
from benchmarks import eval as evaluation

RESULTS = Path(__file__).resolve().parent / "results"

SIZES = {  # mode -> section -> size
    "full": {"photos": 128, "queries_over": 100_000, "cold_runs": 5, "scale": [100_000, 1_000_000],
             "rerank": ("fp32", "bf16", "int8"), "candidates": 20, "tag_images": 100_000, "labels": 100,
             "tag_streamed": 1_000_000, "memory": [250, 500, 1000], "precision_photos": 64,
             "serve": {"images": 100_000, "n_photos": 10_000, "seconds": 30, "cli_runs": 5,
                       "big_photos": 16}, "eval": {"precisions": ("fp32", "bf16", "int8"), "renderings": 8},
             "dupes": {"sizes": [100_000, 1_000_000], "compositions": 32},
             "ray": {"n": 1000, "rows": 20_000},
             "diskcache": {"entries": 80_000, "writes": 4000, "writes_before": 100},
             "change": {"sizes": [10_000, 100_000, 1_000_000], "scan_sizes": [1_000_000], "churn": 6000,
                        "fragments": 100_000},
             "watch": {"samples": 40, "burst": 2000},
             "words": {"sizes": [100_000, 1_000_000], "read_photos": 200},
             "captions": {"photos": 16, "precisions": ("fp32", "bf16"), "size": "base",
                          "background_photos": 1000},
             "video": {"seconds": 60.0, "photos": 100_000, "hours": 1000.0, "long_minutes": (1, 120)},
             "raw": {"n": 16, "megapixels": 24.0}},
    "quick": {"photos": 48, "queries_over": 100_000, "cold_runs": 3, "scale": [100_000],
              "rerank": ("auto",), "candidates": 20, "tag_images": 100_000, "labels": 100,
              "tag_streamed": 200_000, "memory": [100, 200], "precision_photos": 32,
              "serve": {"images": 100_000, "n_photos": 2_000, "seconds": 15, "cli_runs": 3, "big_photos": 8},
              "eval": {"precisions": ("fp32", "bf16", "int8"), "renderings": 8},
              "dupes": {"sizes": [100_000], "compositions": 32}, "ray": {"n": 200, "rows": 5_000},
              "diskcache": {"entries": 80_000, "writes": 2000, "writes_before": 50},
              "change": {"sizes": [10_000, 100_000], "scan_sizes": [100_000], "churn": 6000,
                         "fragments": 100_000}, "watch": {"samples": 10, "burst": 300},
              "words": {"sizes": [100_000], "read_photos": 100},
              "captions": {"photos": 8, "precisions": ("fp32", "bf16"), "size": "base",
                           "background_photos": 100},
              "video": {"seconds": 30.0, "photos": 100_000, "hours": 100.0, "long_minutes": (1, 10)},
              "raw": {"n": 8, "megapixels": 12.0}},
    "smoke": {"photos": 2, "rounds": 1, "queries_over": 2_000, "cold_runs": 1, "cold_imports": False,
              "scale": [2_000],
              "rerank": ("fp32",), "candidates": 2, "rerank_model": str(fixtures.FOLDER / fixtures.BLIP),
              "tag_images": 500, "labels": 3,
              "tag_streamed": 2_000, "memory": [4], "precision_photos": 4,
              "serve": {"images": 2_000, "n_photos": 40, "seconds": 2, "cli_runs": 1, "big_photos": 2},
              "eval": {"precisions": ("fp32",), "renderings": 1},
              "dupes": {"sizes": [2_000], "compositions": 2, "sample_photos": 2},
              "ray": {"n": 4, "rows": 200, "per_photo": False},
              "diskcache": {"entries": 500, "writes": 100, "writes_before": 20},
              "change": {"sizes": [300], "scan_sizes": [], "churn": 0},
              "watch": {"samples": 2, "burst": 6, "settle": 0.3},
              "words": {"sizes": [2_000], "read_photos": 4},
              "captions": {"photos": 2, "precisions": ("fp32",), "size": "tiny", "background_photos": 4,
                           "idle_seconds": 2.0},
              "video": {"seconds": 4.0, "size": (320, 240), "photos": 2_000, "hours": 1.0,
                        "long_minutes": ()},
              "raw": {"n": 4, "megapixels": 0.3, "rounds": 1}},
}
SECTIONS = ["throughput", "query", "scale", "rerank", "tagging", "memory", "precision", "serve", "eval",
            "dupes", "ray", "diskcache", "change", "watch", "words", "captions", "video", "raw"]


def machine() -> dict:
    import torch

    return {"date": dt.datetime.now().isoformat(timespec="seconds"), "cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "processor": platform.processor() or platform.machine(),
            "python": platform.python_version(), "torch": torch.__version__,
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}


def run_section(name: str, work: Path, size: dict, shared: dict) -> dict:
    if name == "throughput":
        return throughput.measure(work, size["photos"], shared["embedder"], rounds=size.get("rounds", 3))
    if name == "query":
        return {"warm": query.warm(work, size["queries_over"], shared["embedder"]),
                "cold": query.cold(work, size["cold_runs"], size["queries_over"],
                                   imports=size.get("cold_imports", True))}
    if name == "scale":
        return scale.measure(work, size["scale"])
    if name == "rerank":
        return rerank.measure(work, size["candidates"], size["rerank"], size.get("rerank_model"))
    if name == "tagging":
        return {**tagging.measure(work, size["tag_images"], size["labels"], shared["embedder"]),
                "streamed": tagging.measure_streamed(work, size["tag_streamed"], size["labels"])}
    if name == "memory":
        return memory.measure(work, size["memory"])
    if name == "precision":
        return precision.measure(work, size["precision_photos"])
    if name == "serve":
        return serve.measure(work, **size["serve"])
    if name == "eval":
        return evaluation.measure(work, **size["eval"])
    if name == "dupes":
        return dupes.measure(work, **size["dupes"])
    if name == "ray":
        return cluster.measure(work, **size["ray"])
    if name == "diskcache":
        return diskcache.measure(work, **size["diskcache"])
    if name == "change":
        return change.measure(work, **size["change"])
    if name == "watch":
        return watch.measure(work, **size["watch"])
    if name == "words":
        return words.measure(work, **size["words"], embedder=shared["embedder"])
    if name == "captions":
        return captions.measure(work, **size["captions"])
    if name == "video":
        return video.measure(work, **size["video"])
    if name == "raw":
        return raw.measure(work, **size["raw"])
    raise ValueError(name)


def show(name: str, figures: dict) -> None:
    {"throughput": throughput, "query": query, "scale": scale, "rerank": rerank, "tagging": tagging,
     "memory": memory, "precision": precision, "serve": serve, "eval": evaluation,
     "dupes": dupes, "ray": cluster, "diskcache": diskcache, "change": change,
     "watch": watch, "words": words, "captions": captions, "video": video, "raw": raw}[name].report(figures)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="smaller sizes, at most 10 minutes")
    mode.add_argument("--smoke", action="store_true", help="tiny sizes: does everything still run")
    parser.add_argument("--only", help=f"comma-separated sections of: {', '.join(SECTIONS)}")
    parser.add_argument("--out", type=Path, help="the JSON file [default: benchmarks/results/<time>.json]")
    args = parser.parse_args()
    chosen = "smoke" if args.smoke else "quick" if args.quick else "full"
    sections = args.only.split(",") if args.only else SECTIONS
    unknown = set(sections) - set(SECTIONS)
    if unknown:
        parser.error(f"unknown section(s) {', '.join(sorted(unknown))}; choose from {', '.join(SECTIONS)}")

    work = Path(tempfile.mkdtemp(prefix="clipsearch-bench-"))
    common.own_cache(work)
    results = {"mode": chosen, "machine": machine(), "sections": {}, "failed": {}, "seconds": {}}
    print(f"# clipsearch benchmarks ({chosen}): {results['machine']['processor']}, "
          f"{results['machine']['cpus']} CPUs, torch {results['machine']['torch']}, "
          f"GPU: {results['machine']['gpu'] or 'none'}")
    try:
        if chosen == "smoke":  # does everything still run: a tiny model does for that
            common.use_tiny_model(work)
        shared = {"embedder": common.bench_embedder(work)}
        for name in sections:
            print(f"\n## {name}", flush=True)
            started = time.perf_counter()
            try:
                results["sections"][name] = figures = run_section(name, work, SIZES[chosen], shared)
                show(name, figures)
            except Exception as exc:  # one broken section must not hide the others' figures
                results["failed"][name] = f"{type(exc).__name__}: {exc}"
                traceback.print_exc()
            results["seconds"][name] = round(time.perf_counter() - started, 1)
            print(f"  ({name}: {results['seconds'][name]:.0f} s)", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    out = args.out or RESULTS / f"{dt.datetime.now():%Y%m%d-%H%M%S}-{chosen}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print(f"\nwritten: {out}")
    if results["failed"]:
        raise SystemExit(f"failed sections: {', '.join(results['failed'])}")


if __name__ == "__main__":
    main()
