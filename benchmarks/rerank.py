"""BLIP re-rank speed and precision: top-N re-rank cold (no cached features) and warm, per
precision, plus how far bf16 / int8 ITM probabilities land from fp32.

    python -m benchmarks.rerank                       # BLIP-base architecture, random weights
    python -m benchmarks.rerank --rerank-model DIR    # real weights saved with save_pretrained

Without --rerank-model the model is BLIP base (ViT-B/16 at 384 px, 12-layer BERT text encoder
with cross-attention) with random weights drawn at std 0.02, so timings are those of
Salesforce/blip-itm-base-coco; precision differences are indicative only (real weights differ).
Targets (issue 3, 2-core CPU): top-20 cold <= 12 s, warm <= 2 s.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from benchmarks.common import photos, script, timed

QUERIES = ["a dog running on a beach", "a cup of coffee on a wooden table", "a rocket launch",
           "a red brick wall", "an astronaut in space"]


def blip_base_random(folder: Path) -> Path:
    """BLIP base with random weights and a processor, saved as a user's download would be."""
    import torch
    from transformers import (
        BertTokenizer,
        BlipConfig,
        BlipForImageTextRetrieval,
        BlipImageProcessor,
        BlipProcessor,
    )

    torch.manual_seed(0)
    config = BlipConfig(vision_config={"initializer_range": 0.02})
    model = BlipForImageTextRetrieval(config)
    words = sorted({w for q in QUERIES for w in q.split()})
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    filler = [f"[unused{i}]" for i in range(config.text_config.vocab_size - len(specials) - len(words))]
    tokenizer = BertTokenizer(vocab={t: i for i, t in enumerate(specials + words + filler)})
    processor = BlipProcessor(BlipImageProcessor(size={"height": 384, "width": 384}), tokenizer)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def measure(work: Path, candidates: int = 20, precisions: tuple[str, ...] = ("fp32", "bf16", "int8"),
            model_dir: str | None = None) -> dict:
    from clipsearch.models import native_bf16
    from clipsearch.models.blip import load_scorer
    from clipsearch.results import Hit
    from clipsearch.search.query import parse
    from clipsearch.search.rerank import candidate_features, match_probability, rerank
    from clipsearch.store.featcache import FeatureCache

    model_dir = model_dir or str(blip_base_random(work / "blip"))
    paths = photos(work / "photos-rerank", candidates)
    hits = [Hit(i + 1, p, 0.3 - 0.001 * i) for i, p in enumerate(paths)]
    results, probs = {"candidates": candidates, "native_bf16": native_bf16()}, {}
    for precision in precisions:
        load_s, scorer = timed(lambda p=precision: load_scorer(model_dir, "cpu", p))
        cache = FeatureCache(work / "cache", scorer.identity, 1 << 30)
        cold_s, _ = timed(lambda s=scorer, c=cache: rerank(hits, parse(QUERIES[0]), s, c, 10))
        warm = [timed(lambda s=scorer, c=cache, q=q: rerank(hits, parse(q), s, c, 10))[0] for q in QUERIES]
        feats = candidate_features(scorer, cache, paths)
        probs[precision] = np.concatenate([
            match_probability(scorer, parse(q), [feats[p] for p in paths]) for q in QUERIES])
        results[precision] = {"load_s": load_s, "cold_s": cold_s, "warm_s_median": float(np.median(warm))}
    if "fp32" in probs:
        for precision, p in probs.items():
            if precision == "fp32":
                continue
            diff = np.abs(p - probs["fp32"])
            top = [np.argmax(p[i:i + len(paths)]) == np.argmax(probs["fp32"][i:i + len(paths)])
                   for i in range(0, len(p), len(paths))]
            results[precision] |= {"itm_max_abs_diff": float(diff.max()),
                                   "itm_mean_abs_diff": float(diff.mean()),
                                   "top1_agreement": float(np.mean(top))}
    return results


def report(f: dict) -> None:
    n = f["candidates"]
    for precision, r in f.items():
        if not isinstance(r, dict):
            continue
        line = (f"  {precision:>4}: load {r['load_s']:5.2f} s | top-{n} cold {r['cold_s']:5.2f} s "
                f"(target 12 s) | warm {r['warm_s_median']:5.2f} s (target 2 s)")
        if "itm_max_abs_diff" in r:
            line += (f" | ITM vs fp32 max {r['itm_max_abs_diff']:.4f}, mean {r['itm_mean_abs_diff']:.4f}, "
                     f"same top-1 {r['top1_agreement']:.0%}")
        print(line)


def main() -> None:
    script(__doc__, "# BLIP re-rank (BLIP-base architecture with random weights unless --rerank-model)",
           {"--rerank-model": {"help": "a folder saved with save_pretrained"},
            "--candidates": {"type": int, "default": 20}, "--precisions": {"default": "fp32,bf16,int8"}},
           lambda work, a: measure(work, a.candidates, tuple(a.precisions.split(",")), a.rerank_model),
           report)

if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
