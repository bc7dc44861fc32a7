"""Retrieval quality per precision: `clipsearch eval` of the CLIP and BLIP trained on the shapes
task (benchmarks.trained), on its held-out split, once per `--precision` (the index and the
queries at that precision, the re-ranker too). The evidence for the default precision: if bf16
loses no recall, `auto` may pick it.

    python -m benchmarks.eval

The trained models are the tests' committed fixtures (benchmarks.fixtures).
"""

from __future__ import annotations

from pathlib import Path

from benchmarks import fixtures, shapes, trained
from benchmarks.common import script

CANDIDATES = 4  # a caption's group of twins is four pictures


def measure(work: Path, precisions: tuple[str, ...] = ("fp32", "bf16", "int8"), renderings: int = 8) -> dict:
    """Each precision over `renderings` drawings of the held-out split (32 queries each), so one
    flipped query moves a recall by 100 / (32 * renderings) points, not 3."""
    from clipsearch.eval.datasets import read_captions, read_classes
    from clipsearch.eval.runner import gallery, retrieval, zeroshot

    models = fixtures.models(work)
    splits = [shapes.write_eval_split(work / f"shapes-{seed}", seed=seed)
              for seed in range(1, renderings + 1)]
    out: dict = {"training": models.log, "renderings": renderings, "candidates": CANDIDATES,
                 "queries": renderings * len(read_captions(splits[0].retrieval).images)}
    for precision in precisions:
        options = {"model": trained.CLIP_NAME, "pretrained": str(models.clip_checkpoint), "device": "cpu",
                   "precision": precision, "rerank_model": str(models.blip_dir),
                   "rerank_precision": precision}
        runs = []
        for split in splits:
            captions, classes = read_captions(split.retrieval), read_classes(split.zeroshot)
            with gallery(captions.images, **options) as g:
                found = retrieval(captions, g, rerank=True, candidates=CANDIDATES).to_dict()
            with gallery(classes.images, **options) as g:
                tags = zeroshot(classes, g, 0.5).to_dict()
            runs.append({"retrieval": found, "zeroshot": tags})
        out[precision] = _mean(runs)
    # the same, on new drawings of the compositions the models were trained on (fp32)
    seen = read_captions(shapes.write_eval_split(work / "seen", seed=7, seen=True).retrieval)
    with gallery(seen.images, **{**options, "precision": "fp32", "rerank_precision": "fp32"}) as g:
        out["seen"] = retrieval(seen, g, rerank=True, candidates=CANDIDATES).to_dict()
    return out


def _mean(runs: list):
    """The mean of every number in a list of alike nested dicts (None where any is None)."""
    first = runs[0]
    if isinstance(first, dict):
        return {k: _mean([r[k] for r in runs]) for k in first}
    if isinstance(first, bool) or not isinstance(first, int | float) or any(r is None for r in runs):
        return first if all(r == first for r in runs) else None
    return sum(runs) / len(runs)


def report(figures: dict) -> None:
    log = figures["training"]
    steps = ", ".join(f"{name} {run['steps']} steps in {run['seconds']:.0f} s" for name, run in log.items())
    print(f"  trained (the committed fixtures, when they were written): {steps}")
    print(f"  held-out split: 32 unseen compositions, each beside its three twins, drawn "
          f"{figures['renderings']} times: {figures['queries']} queries; "
          f"re-rank of the top {figures['candidates']}")
    for precision, f in figures.items():
        if precision in ("training", "renderings", "candidates", "queries", "seen"):
            continue
        r, z = f["retrieval"], f["zeroshot"]
        t2i, i2t, rr = r["text_to_image"], r["image_to_text"], r["rerank"]
        print(f"  {precision:>4}: text->image R@1 {t2i['R@1']:.3f} R@5 {t2i['R@5']:.3f} "
              f"({t2i['queries_per_second']:.0f} q/s); re-ranked R@1 {rr['R@1']:.3f} "
              f"({rr['queries_per_second']:.1f} q/s); image->text R@1 {i2t['R@1']:.3f}; "
              f"zero-shot top-1 {z['top1']:.3f}, tags P {z['tag_precision']:.2f} R {z['tag_recall']:.2f}")
    seen = figures["seen"]
    print(f"  seen compositions (new drawings, {seen['queries']} queries, fp32): text->image R@1 "
          f"{seen['text_to_image']['R@1']:.3f}, re-ranked {seen['rerank']['R@1']:.3f}")
    base = figures.get("fp32")
    if base and "bf16" in figures:
        r1 = [figures[p]["retrieval"]["text_to_image"]["R@1"] for p in ("fp32", "bf16")]
        print(f"  bf16 vs fp32, text->image R@1: {100 * abs(r1[1] - r1[0]):.1f} points apart "
              "(within 0.5 makes auto the default)")


def main() -> None:
    script(__doc__, "# retrieval quality per precision, shapes task (trained tiny models)", {},
           lambda work, _a: measure(work), report)


if __name__ == "__main__":
    main()
