"""Duplicates: the near-duplicate threshold's calibration, and `clipsearch dupes` at scale.

    python -m benchmarks.dupes                         # calibration, 100k and 1M (about 8 min)
    python -m benchmarks.dupes --sizes 100000

Calibration: every photo gets the copies of benchmarks.variants (resized, re-encoded, cropped 2-10 %,
rotated, colour shifted, a burst's next frame, another format, a byte copy), all indexed through
the engine. Positives are (photo, its copy) pairs, negatives every pair of distinct photos. It
runs with the CLIP trained on the shapes task (benchmarks.trained; photos are its pictures drawn
at 3x its input size, as photos are larger than CLIP's input, and the hardest negatives are the
same composition drawn again: another photo of the same subject), and with ViT-B-32 with random
weights on sample_images/. For each threshold: the share of copies found (recall) and of distinct
pairs merged.

Scale (targets: 100k <= 10 s; 1M <= 2 min and <= 2 GB): clustered vectors as in the scale section,
with planted duplicate groups of 2-4 (cosines 0.98-0.999 with their original, 0.96 or more
with each other), in a real table
whose search structure an index run has left; `clipsearch dupes --json` runs as a user runs it,
timed with its peak memory, and its groups are checked against the planted ones.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks import fixtures, shapes, variants
from benchmarks.common import ROOT, ClusteredVectors, bench_embedder, random_index, script

THRESHOLDS = (0.90, 0.92, 0.94, 0.95, 0.96, 0.97, 0.98, 0.99)
UPSCALE = 3


# -- calibration -----------------------------------------------------------------------------
def _cosines(db: Path, groups: dict[str, list[Path]], redraws: list[tuple[str, str]]) -> dict:
    from clipsearch.search.engine import open_index

    index = open_index(db)
    table, matrix = index.store.vectors(["path"])
    vector = dict(zip(table.column("path").to_pylist(), matrix, strict=True))
    originals = list(groups)
    positive: dict[str, list[float]] = {}
    for source, copies in groups.items():
        for copy in copies:
            kind = copy.stem.rsplit("_", 1)[1]
            positive.setdefault(kind, []).append(float(vector[source] @ vector[str(copy)]))
    stacked = np.stack([vector[o] for o in originals])
    sims = stacked @ stacked.T
    redrawn = {tuple(sorted(p)) for p in redraws}
    negative, hardest = [], []
    for i in range(len(originals)):
        for j in range(i + 1, len(originals)):
            pair = tuple(sorted((originals[i], originals[j])))
            (hardest if pair in redrawn else negative).append(float(sims[i, j]))
    every_positive = [c for cs in positive.values() for c in cs]
    every_negative = negative + hardest
    table_rows = {f"{t:.2f}": {"recall": float(np.mean(np.array(every_positive) >= t)),
                               "merged": float(np.mean(np.array(negative) >= t)),
                               "merged_redrawn": float(np.mean(np.array(hardest) >= t)) if hardest else None}
                  for t in THRESHOLDS}
    subject = {p: p for p in originals}
    for a, b in redraws:
        subject[b] = subject[a]
    found, merged, redrawn_merged = _grouped(index.dupes(), groups, subject)
    return {"photos": len(originals), "copies": len(every_positive), "distinct_pairs": len(every_negative),
            "by_kind": {k: {"min": min(v), "median": float(np.median(v))} for k, v in positive.items()},
            "distinct_max": max(negative) if negative else None,
            "redrawn_max": max(hardest) if hardest else None, "thresholds": table_rows,
            "default": {"groups_found": found, "groups": len(groups), "false_merges": merged,
                        "same_subject_merges": redrawn_merged}}


def _grouped(found_groups, planted: dict[str, list[Path]], subject: dict[str, str]) -> tuple[int, int, int]:
    """(planted groups found whole, groups joining photos of different subjects, groups joining
    only different photos of one subject)."""
    owner = {}
    for source, copies in planted.items():
        for path in [source, *map(str, copies)]:
            owner[path] = source
    whole, merged, same_subject = 0, 0, 0
    for g in found_groups:
        sources = {owner.get(m.image.path, m.image.path) for m in g.members}
        subjects = {subject.get(s, s) for s in sources}
        merged += len(subjects) > 1
        same_subject += len(sources) > 1 and len(subjects) == 1
    for source, copies in planted.items():
        want = {source, *map(str, copies)}
        whole += any(want <= {m.image.path for m in g.members} for g in found_groups)
    return whole, merged, same_subject


def calibrate_trained(work: Path, compositions: int = 32) -> dict:
    """The trained shapes CLIP: each held-out composition drawn twice (the second drawing is the
    hardest negative), each drawing with every kind of copy."""
    from clipsearch import index_folders

    models = fixtures.models(work)
    folder = work / "shapes-photos"
    rng = random.Random(7)
    groups: dict[str, list[Path]] = {}
    redraws = []
    for i, scene in enumerate(shapes.split()[1][:compositions]):
        drawn = []
        for k in range(2):
            path = folder / f"scene{i:02d}-{k}.jpg"
            path.parent.mkdir(parents=True, exist_ok=True)
            picture = shapes.render(scene, rng)
            picture.resize((shapes.SIZE * UPSCALE,) * 2, resample=3).save(path, quality=95)
            groups[str(path)] = variants.write(path, folder / "copies" / path.stem)
            drawn.append(str(path))
        redraws.append(tuple(drawn))
    db = work / "shapes-db"
    index_folders([folder], db, model=f"local-dir:{models.clip_dir}", device="cpu", precision="fp32",
                  workers=2)
    return _cosines(db, groups, redraws)


def calibrate_random(work: Path, photos: int | None = None) -> dict:
    """ViT-B-32 with random weights on sample_images/ (the first `photos` of them): what the
    issue's figures were taken with."""
    import shutil

    from clipsearch import index_folders

    folder = work / "sample-photos"
    folder.mkdir()
    sources = sorted(p for p in (ROOT / "sample_images").rglob("*") if p.is_file() and p.suffix != ".md")
    for source in sources[:photos]:
        shutil.copy2(source, folder / source.name)
    groups = {str(p): variants.write(p, folder / "copies" / p.stem) for p in sorted(folder.iterdir())
              if p.is_file()}
    db = work / "sample-db"
    index_folders([folder], db, embedder=bench_embedder(work), workers=2)
    return _cosines(db, groups, [])


# -- scale -----------------------------------------------------------------------------------
class PlantedVectors(ClusteredVectors):
    """Clustered vectors in which 1 row in `share` starts a group of 2-4 near-copies of one photo
    (cosine 0.98-0.999 with it, 0.96 or more with each other); `planted` lists the groups by row number."""

    def __init__(self, share: int = 100, **kw):
        super().__init__(**kw)
        self.share, self.drawn, self.planted = share, 0, []

    def draw(self, n: int, spread: float | None = None) -> np.ndarray:
        out = super().draw(n, spread)
        row = 0
        while row < n:
            size = int(self.rng.integers(2, 5))
            if self.rng.random() < 1 / self.share and row + size <= n:
                noise = self.rng.standard_normal((size - 1, self.dim)).astype(np.float32) / np.sqrt(self.dim)
                scale = self.rng.uniform(0.05, 0.2, (size - 1, 1)).astype(np.float32)
                copies = out[row] + noise * scale
                out[row + 1:row + size] = copies / np.linalg.norm(copies, axis=1, keepdims=True)
                self.planted.append(list(range(self.drawn + row, self.drawn + row + size)))
                row += size
            else:
                row += 1
        self.drawn += n
        return out


# the CLI as a user runs it, then its own peak resident memory (KB) on stderr's last line: VmHWM,
# as ru_maxrss would also count the benchmark process this one was forked from
_CLI = """
import sys
from clipsearch.cli.commands import app
try:
    app(sys.argv[1:])
except SystemExit as exit:
    if exit.code:
        raise
print(next(l.split()[1] for l in open("/proc/self/status") if l.startswith("VmHWM")), file=sys.stderr)
"""


def measure_scale(work: Path, n: int) -> dict:
    from clipsearch.store.ann import current

    vectors = PlantedVectors()
    store = random_index(work / f"dupes-{n}", n, vectors)
    build_s = time.perf_counter()
    current(store)  # what the index run that added these rows leaves behind
    build_s = time.perf_counter() - build_s
    out = work / f"dupes-{n}.json"
    started = time.perf_counter()
    with open(out, "w") as f:
        done = subprocess.run([sys.executable, "-c", _CLI, "dupes", "--db", str(store.path), "--json"],
                              stdout=f, stderr=subprocess.PIPE, text=True, check=True)
    seconds = time.perf_counter() - started
    peak_kb = int(done.stderr.strip().splitlines()[-1])
    groups = json.loads(out.read_text())
    row_of = {f"/photos/{i // 1000:03d}/IMG_{i:07d}.jpg": i for g in vectors.planted for i in g}
    found = [{row_of.get(m["path"], -1) for m in g["members"]} for g in groups]
    whole = sum(any(set(p) <= f for f in found) for p in vectors.planted)
    planted_of = {i: k for k, g in enumerate(vectors.planted) for i in g}
    merged = sum(len({planted_of.get(i, ("other", i)) for i in f}) > 1 for f in found)
    import shutil

    shutil.rmtree(store.path, ignore_errors=True)
    return {"vectors": n, "planted_groups": len(vectors.planted), "groups_found": len(groups),
            "planted_found": whole, "recall": whole / max(len(vectors.planted), 1), "false_merges": merged,
            "seconds": seconds, "peak_mb": peak_kb / 1024,
            "structure_build_s": build_s}


def measure(work: Path, sizes: list[int], calibration: bool = True, compositions: int = 32,
            sample_photos: int | None = None) -> dict:
    out: dict = {"scale": {str(n): measure_scale(work, n) for n in sizes}}
    if calibration:
        out["calibration"] = {"trained": calibrate_trained(work, compositions),
                              "random_vit_b_32": calibrate_random(work, sample_photos)}
    return out


def report(figures: dict) -> None:
    from clipsearch.search.dupes import DEFAULT_THRESHOLD

    for name, c in figures.get("calibration", {}).items():
        kinds = ", ".join(f"{k} {v['min']:.3f}" for k, v in c["by_kind"].items())
        print(f"  calibration, {name}: {c['photos']} photos, {c['copies']} copies, {c['distinct_pairs']} "
              f"distinct pairs; lowest cosine per copy: {kinds}")
        print(f"    distinct photos up to {c['distinct_max']:.3f}" + (
            f", the same subject drawn again up to {c['redrawn_max']:.3f}" if c["redrawn_max"] else ""))
        for t, row in c["thresholds"].items():
            mark = " <- default" if abs(float(t) - DEFAULT_THRESHOLD) < 1e-9 else ""
            again = row["merged_redrawn"]
            redrawn = "" if again is None else f"; redrawn, merged {again:.3f}"
            print(f"    {t}: copies found {row['recall']:.3f}; distinct subjects, pairs merged "
                  f"{row['merged']:.4f}{redrawn}{mark}")
        d = c["default"]
        print(f"    clipsearch dupes at {DEFAULT_THRESHOLD}: {d['groups_found']}/{d['groups']} "
              f"planted groups found whole; {d['false_merges']} groups join different subjects, "
              f"{d['same_subject_merges']} join two drawings of one subject")
    for f in figures["scale"].values():
        target = "<= 10 s" if f["vectors"] <= 100_000 else "<= 120 s, <= 2048 MB"
        print(f"  {f['vectors']:>9,} vectors: clipsearch dupes {f['seconds']:.1f} s, "
              f"peak {f['peak_mb']:.0f} MB (target {target}); "
              f"planted groups found {f['planted_found']}/{f['planted_groups']} "
              f"(recall {f['recall']:.3f}), false merges {f['false_merges']}")


def main() -> None:
    script(__doc__, "# duplicates (targets: 100k <= 10 s; 1M <= 2 min, <= 2 GB)",
           {"--sizes": {"default": "100000,1000000"},
            "--no-calibration": {"action": "store_true"}},
           lambda work, a: measure(work, [int(s) for s in a.sizes.split(",")], not a.no_calibration), report)


if __name__ == "__main__":
    main()
