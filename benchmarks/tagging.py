"""Zero-shot tagging speed: label prompts through the text tower once, then every stored vector
scored against them, tags chosen and committed; plus a search filtered by tag at that size.

    python -m benchmarks.tagging                      # 100k images, 100 labels (ViT-B-32 size)
    python -m benchmarks.tagging --images 10000 --labels 20

The index is a real LanceDB table of random unit vectors (512-d, as ViT-B-32's), the text tower
is open_clip's ViT-B-32 architecture with random weights saved to a local checkpoint; weights do
not change speed. Target (issue 4, 2-core CPU): tagging 100k images with 100 labels <= 5 s, no
image decoded or embedded.
"""

from __future__ import annotations

import collections
from pathlib import Path

import numpy as np

from benchmarks.common import DIM, random_index, script, timed, vit_b_32_embedder


def measure(work: Path, images: int, labels: int, embedder=None) -> dict:
    from clipsearch.search import Filters, allowed_ids
    from clipsearch.tagging import BUILTIN_LABELS, Tagger, label_set, tag_store

    build_s, store = timed(lambda: random_index(work / "db-tagging", images))
    names = [*BUILTIN_LABELS, *(f"object {i}" for i in range(labels))][:labels]
    chosen = label_set(names, threshold=0.5)
    prompts = sum(len(p) for p in chosen.prompts.values())
    embedder = embedder or vit_b_32_embedder(work)
    embed_s, tagger = timed(lambda: Tagger.embed(chosen, embedder.embed_texts))
    # random-weight label vectors sit at cosine ~0 from everything; shift the threshold so that
    # a realistic few tags per image are kept and written
    probs = tagger.scores(store.vectors()[1][:1000])
    threshold = float(np.quantile(probs, 1 - 3 / labels))
    tagger = Tagger(label_set(names, threshold=threshold), tagger.vectors, tagger.background)
    tag_s, tagged = timed(lambda: tag_store(store, tagger))
    common = collections.Counter(t for i in tagged[:2000] for t, _ in i.tags)
    label = common.most_common(1)[0][0] if common else names[0]
    filter_s, allowed = timed(lambda: allowed_ids(store, Filters.make(tags=[label])))
    return {"images": images, "labels": labels, "texts": prompts + 5, "embed_labels_s": embed_s,
            "tag_s": tag_s, "tags_kept": sum(len(i.tags) for i in tagged), "tag_filter_s": filter_s,
            "filter_label": label, "filtered_images": len(allowed), "build_s": build_s}


def report(f: dict) -> None:
    print(f"  {f['labels']} labels x {(f['texts'] - 5) // f['labels']} prompts + background = {f['texts']} "
          f"texts; index of {f['images']:,} images ({DIM}-d)")
    print(f"  embed label prompts (ViT-B-32 text tower, once per `tag`): {f['embed_labels_s']:6.2f} s")
    print(f"  score + choose + commit {f['images']:,} images: {f['tag_s']:6.2f} s ({f['tags_kept']:,} tags; "
          "target <= 5 s)")
    print(f"  search filter --tag {f['filter_label']!r} ({f['filtered_images']:,} images): "
          f"{f['tag_filter_s']:6.2f} s")


def main() -> None:
    script(__doc__, "# zero-shot tagging",
           {"--images": {"type": int, "default": 100_000}, "--labels": {"type": int, "default": 100}},
           lambda work, a: measure(work, a.images, a.labels), report)

if __name__ == "__main__":
    main()
