"""`clipsearch index --ray` against a local run on the same photos, and what caps a cluster: the
driver's commit rate with embedding stubbed out, and the driver's memory.

    python -m benchmarks.cluster                       # 1,000 photos of 0.3 MP; 20,000 stubbed rows
    python -m benchmarks.cluster --photos 200 --rows 5000

Both runs are `clipsearch index` as a new process with ViT-B-32 (random weights, fp32), the
text export made beforehand (a one-off of an index's first run). The Ray run starts its local
runtime (all cores) itself, as `--ray` does; a Ray run over the unchanged folder measures that
fixed cost alone. Target (issue 15, 2 cores): Ray end to end >= 0.8 of local.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks import common
from benchmarks.common import bench_embedder, model_args, model_spec, photos, script, seed_export, timed

# `clipsearch` in this process, then its own peak resident memory: the driver's, not Ray's
# workers' (they are other processes)
_DRIVER = """
import sys
from clipsearch.cli.commands import main
sys.argv = ["clipsearch", *sys.argv[1:]]
try:
    main()
finally:
    peak = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM")) / 1024
    sys.stderr.write(f"driver peak: {peak}\\n")
"""


def _index(folder: Path, db: Path, model: list[str], env: dict, *extra: str) -> tuple[float, float]:
    """(seconds, driver peak MB) of one `clipsearch index` run."""
    cmd = [sys.executable, "-c", _DRIVER, "index", str(folder), "--db", str(db), *model, "--precision",
           "fp32", "-q", *extra]
    seconds, r = timed(lambda: subprocess.run(cmd, capture_output=True, text=True, env=env))
    if r.returncode:
        raise RuntimeError(r.stderr[-800:])
    peak = next(line for line in r.stderr.splitlines() if line.startswith("driver peak: "))
    return seconds, float(peak.removeprefix("driver peak: "))


def end_to_end(work: Path, n: int, per_photo: bool = True) -> dict:
    """Both ways over `n` photos, and (`per_photo`) over the first quarter of them and again over
    the unchanged folder: the difference between the two sizes is each way's cost per photo,
    without what a run pays once (starting Ray and its workers, loading models, the closing
    compaction)."""
    model_flags = model_args(work)
    every = photos(work / "ray-photos", n, size=(640, 480))
    quarter = work / "ray-photos-quarter"
    quarter.mkdir()
    for p in every[:max(1, n // 4)]:
        os.link(p, quarter / Path(p).name)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "CLIPSEARCH_HOME": str(work / "home"),
           "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)
    model = model_spec(work).to_dict()
    out = {"photos": n, "quarter": max(1, n // 4)}
    for name, extra in (("local", ()), ("ray", ("--ray",))):
        for size, folder in (("", work / "ray-photos"), ("quarter_", quarter))[:2 if per_photo else 1]:
            db = work / f"db-ray-{size}{name}"
            seed_export(model, work)
            seconds, peak = _index(folder, db, model_flags, env, *extra)
            out[f"{size}{name}_s"], out[f"{size}{name}_driver_mb"] = seconds, peak
        out[f"{name}_img_s"] = n / out[f"{name}_s"]
    out["ratio"] = out["ray_img_s"] / out["local_img_s"]
    if not per_photo:
        return {**out, **_compare(work / "db-ray-local", work / "db-ray-ray")}
    out["ratio_per_photo"] = (out["local_s"] - out["quarter_local_s"]) / (out["ray_s"] - out["quarter_ray_s"])
    out["local_unchanged_s"], _ = _index(work / "ray-photos", work / "db-ray-local", model_flags, env)
    out["ray_unchanged_s"], _ = _index(work / "ray-photos", work / "db-ray-ray", model_flags, env, "--ray")
    return {**out, **_compare(work / "db-ray-local", work / "db-ray-ray")}


def _compare(local: Path, remote: Path) -> dict:
    """Whether both runs left the same rows: paths, hashes, and the largest vector difference."""
    from clipsearch.store.table import Store

    a, b = ({r["path"]: r for r in Store.open(db).read(["path", "hash", "vector"]).to_pylist()}
            for db in (local, remote))
    same = sorted(a) == sorted(b) and all(a[p]["hash"] == b[p]["hash"] for p in a)
    delta = max((float(np.abs(np.subtract(a[p]["vector"], b[p]["vector"])).max()) for p in a if p in b),
                default=0.0)
    return {"rows": len(b), "same_rows": same, "max_vector_delta": delta}


def commit_rate(work: Path, rows: int) -> dict:
    """The driver alone: a stub stands where the cluster's results come back (a vector per photo
    at once), so what is timed is receiving them, building rows and committing them."""
    from clipsearch import index_folders
    from clipsearch.build.distributed import Embedded
    folder = work / "stubbed"
    for i in range(rows):
        sub = folder / f"d{i // 1000}"
        sub.mkdir(parents=True, exist_ok=True)
        (sub / f"{i}.jpg").write_bytes(i.to_bytes(4, "little"))
    rng = np.random.default_rng(0)

    def cluster(paths, _known):
        vectors = rng.normal(size=(len(paths), common.DIM)).astype(np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        for n, (path, vector) in enumerate(zip(paths, vectors, strict=True)):
            yield Embedded(path, f"{n:032x}", vector, 640, 480)

    stamps: list[float] = []
    embedder = bench_embedder(work)
    db = work / "db-stubbed"
    seed_export(model_spec(work).to_dict(), work)
    seconds, summary = timed(lambda: index_folders(
        [folder], db, embedder=embedder, fanout=cluster,
        progress=lambda p: p.phase == "embed" and p.done and stamps.append(time.perf_counter())))
    assert summary.added == rows, summary
    loop = stamps[-1] - stamps[0]
    return {"rows": rows, "rows_s": (rows - 1) / loop, "run_s": seconds}


def measure(work: Path, n: int, rows: int, per_photo: bool = True) -> dict:
    """`per_photo`: also the runs that split a run's once-only costs from its per-photo ones (the
    smoke run, which judges nothing, leaves them out: each starts Ray)."""
    return {**end_to_end(work, n, per_photo), "commit": commit_rate(work, rows)}


def report(f: dict) -> None:
    print(f"  {f['photos']:,} photos of 0.3 MP: local {f['local_img_s']:.1f} img/s ({f['local_s']:.1f} s), "
          f"--ray {f['ray_img_s']:.1f} img/s ({f['ray_s']:.1f} s): ratio {f['ratio']:.2f} (target 0.80)")
    if "ratio_per_photo" in f:
        print(f"  per photo (the {f['photos']:,} less the first {f['quarter']:,}): --ray runs at "
              f"{f['ratio_per_photo']:.2f} of local; over the unchanged folder: "
              f"local {f['local_unchanged_s']:.1f} s, "
              f"--ray {f['ray_unchanged_s']:.1f} s")
    print(f"  same rows and hashes: {f['same_rows']}, largest vector difference {f['max_vector_delta']:.1e}")
    print(f"  driver peak memory: local {f['local_driver_mb']:.0f} MB (model included), "
          f"--ray {f['ray_driver_mb']:.0f} MB")
    c = f["commit"]
    print(f"  driver commit rate, embedding stubbed: {c['rows_s']:,.0f} rows/s over {c['rows']:,} rows "
          f"(the whole run {c['run_s']:.1f} s)")


def main() -> None:
    script(__doc__, "# index --ray against local, ViT-B-32 (random weights), fp32",
           {"--photos": {"type": int, "default": 1000}, "--rows": {"type": int, "default": 20_000}},
           lambda work, a: measure(work, a.photos, a.rows), report)


if __name__ == "__main__":
    main()
