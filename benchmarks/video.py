"""Videos (issue 26): indexing speed in seconds of video per second of wall time for 1080p H.264 at
the default sampling (target >= 20x real time on a 2-core CPU with ViT-B-32 bf16), what decoding
costs against the model, storage per hour of video, and search latency over photos plus hours
of video.

    python -m benchmarks.video                          # 60 s of 1080p; 100k photos + 1,000 hours
    python -m benchmarks.video --seconds 20 --hours 10

The video is made here (benchmarks.videos): sample_images/ pictures, a scene every 8 seconds,
the camera panning across each, 30 frames a second, H.264 with a key frame a second as phones
write it; and the same with x264's default of one every 250 frames, which the sampler fills by
seeking. The search index is synthetic (benchmarks.common.random_index): a video's frames are
rows of one path, 900 an hour (the default sampling's most at one frame per 4 s; a cut adds one).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from benchmarks.common import (
    ClusteredVectors,
    model_args,
    model_spec,
    percentile_ms,
    random_index,
    script,
    timed,
)
from benchmarks.videos import make_video

TARGET_REALTIME = 20.0
SCENE_SECONDS = 8.0


def _scenes(seconds: float) -> list:
    from PIL import Image

    from benchmarks.common import ROOT

    sources = sorted((ROOT / "sample_images").rglob("*.jpg"))
    count = max(1, round(seconds / SCENE_SECONDS))
    return [(Image.open(sources[i % len(sources)]), seconds / count) for i in range(count)]


def speed(work: Path, seconds: float, size: tuple[int, int]) -> dict:
    """Sampling alone and a whole `index` run (ViT-B-32 bf16, random weights) of one video."""
    from clipsearch.media.video import frames

    out: dict = {"seconds": seconds, "size": f"{size[0]}x{size[1]}"}
    for gop, keyint in (("phone", 30), ("x264 default", None)):
        folder = work / f"video-{keyint}"
        folder.mkdir()
        path = str(folder / "clip.mp4")
        encode_s, _ = timed(lambda p=path, k=keyint: make_video(p, _scenes(seconds), size=size, fps=30,
                                                                   keyint=k, crf=23, pan=True))
        decode_s, sampled = timed(lambda p=path: [t for t, _image in frames(p, 224)])
        row = {"encode_s": round(encode_s, 1), "frames": len(sampled), "decode_s": round(decode_s, 2),
               "decode_realtime": round(seconds / decode_s, 1),
               "file_mb": round(Path(path).stat().st_size / 1e6, 1)}
        if keyint:  # the whole run, once: the model's cost does not depend on the key frames
            row |= _index_run(work, folder, seconds, decode_s)
        out[gop] = row
    return out


# The process's own peak (VmHWM): getrusage's ru_maxrss would also count the parent's resident
# memory at the fork, which Linux carries into the child's record across exec
PEAK = """
import sys
from clipsearch.cli.commands import main
sys.argv = ["clipsearch", *sys.argv[1:]]
try:
    main()
except SystemExit:
    pass
peak = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM"))
sys.stderr.write(f"peak_mb {peak / 1024:.0f}\\n")
"""


def long_memory(work: Path, minutes: list[float]) -> dict:
    """Peak memory of `clipsearch index` (its own process) over one video of each length: flat
    when decoding stays a few batches ahead of the model and only the vectors accumulate."""
    import subprocess
    import sys

    out = {}
    for m in minutes:
        folder = work / f"long-{m:g}"
        folder.mkdir()
        picture = _scenes(SCENE_SECONDS)[0][0]
        # a cut every 8 s, as the 1080p video: a key frame a second, 160x120 so that it encodes fast
        count = max(1, round(m * 60 / SCENE_SECONDS))
        scenes = [(picture.rotate(i * 7), SCENE_SECONDS) for i in range(count)]
        make_video(str(folder / "long.mp4"), scenes, size=(160, 120), fps=10, keyint=10, crf=35)
        begun = time.perf_counter()
        db = work / f"db-long-{m:g}"
        done = subprocess.run([sys.executable, "-c", PEAK, "index", str(folder), "--db", str(db),
                               *model_args(work), "--device", "cpu", "--precision", "bf16", "--quiet"],
                              capture_output=True, text=True, check=False)
        seconds = time.perf_counter() - begun
        peak = next((float(line.split()[1]) for line in done.stderr.splitlines()
                     if line.startswith("peak_mb")), None)
        out[f"{m:g}"] = {"peak_mb": peak, "index_s": round(seconds, 1), "exit": done.returncode}
    return out


def _index_run(work: Path, folder: Path, seconds: float, decode_s: float) -> dict:
    """`index` of the folder, in steady state: the model loaded and the index made (its text
    export too) by a first run over a one-second clip, as every video after a library's first
    finds them; the model's load is timed apart."""
    from clipsearch import index_folders
    from clipsearch.models import load_embedder
    from clipsearch.store.table import Store

    spec = model_spec(work)
    load_s, embedder = timed(lambda: load_embedder(spec, "cpu", "bf16"))
    db, first = work / "db-video", work / "first"
    first.mkdir()
    make_video(str(first / "first.mp4"), _scenes(1.0), size=(320, 240), fps=30, keyint=30)
    options = {"model": spec.name, "pretrained": spec.pretrained, "device": "cpu", "precision": "bf16",
               "embedder": embedder}
    first_s, _ = timed(lambda: index_folders([first], db, **options))
    index_s, summary = timed(lambda: index_folders([folder], db, **options))

    frames = Store.open(db).read(["path", "t"])
    rows = sum(1 for p in frames.column("path").to_pylist() if p.startswith(str(folder)))
    model_s = max(index_s - decode_s, 1e-9)
    return {"index_s": round(index_s, 2), "model_load_s": round(load_s, 2), "first_run_s": round(first_s, 2),
            "realtime": round(seconds / index_s, 1), "rows": rows, "embedded_frames": summary.frames,
            "model_share": round(model_s / index_s, 2), "rows_per_hour": round(rows * 3600 / seconds)}


def search(work: Path, photos: int, hours: float, queries: int = 50, k: int = 10) -> dict:
    """Search latency over `photos` photos and `hours` of video: the engine's search (moments
    folded into one hit per video) against the same search structure's rows alone."""
    from clipsearch.search.engine import open_index
    from clipsearch.search.nearest import nearest

    per_hour = 900
    frames = int(hours * per_hour)
    vectors = ClusteredVectors()
    db = work / "db-search"
    build_s, _store = timed(lambda: random_index(db, photos + frames, vectors, video_frames=frames,
                                                 frames_per_video=per_hour))
    index = open_index(db, device="cpu")
    qs = vectors.queries(queries)
    index.search_vector(qs[0], k)  # the search structure is built, and loaded, once
    grouped, plain, videos_hit = [], [], 0
    for q in qs:
        s, hits = timed(lambda q=q: index.search_vector(q, k))
        grouped.append(s)
        videos_hit += sum(h.t is not None for h in hits)
        s, _ = timed(lambda q=q: nearest(index.store, index.ann, q, k))
        plain.append(s)
    # what a frame's row weighs: its columns as stored (Lance keeps them uncompressed), from a
    # sample of the rows (the table's folder also holds the versions compaction keeps a while)
    sample = index.store.fetch(list(range(photos, min(photos + frames, photos + 10_000))), index.store.names)
    per_row = sample.nbytes / max(sample.num_rows, 1)
    return {"photos": photos, "hours": hours, "rows": photos + frames, "build_s": round(build_s, 1),
            "bytes_per_row": round(per_row),
            "p50_ms": round(percentile_ms(grouped), 2), "rows_alone_p50_ms": round(percentile_ms(plain), 2),
            "ratio": round(float(np.median(grouped) / np.median(plain)), 2),
            "video_hits_share": round(videos_hit / (len(qs) * k), 2)}


def measure(work: Path, seconds: float = 60.0, size: tuple[int, int] = (1920, 1080), photos: int = 100_000,
            hours: float = 1000.0, long_minutes: tuple[float, ...] = (1, 120)) -> dict:
    started = time.perf_counter()
    figures = {"speed": speed(work, seconds, size), "search": search(work, photos, hours),
               "long": long_memory(work, list(long_minutes))}
    figures["seconds"] = round(time.perf_counter() - started, 1)
    return figures


def report(figures: dict) -> None:
    s = figures["speed"]
    phone, default = s["phone"], s["x264 default"]
    ok = "ok" if phone["realtime"] >= TARGET_REALTIME else "MISSED"
    print(f"index {s['size']} H.264 ({s['seconds']:.0f} s, key frame a second), ViT-B-32 bf16: "
          f"{phone['realtime']}x real time (target >= {TARGET_REALTIME:.0f}x) {ok}; {phone['frames']} "
          f"frames kept; a library's first run adds the model's load ({phone['model_load_s']} s) and "
          f"the index's making ({phone['first_run_s']} s over a one-second clip)")
    print(f"  sampling alone (decoding, scaling): {phone['decode_realtime']}x real time "
          f"({phone['decode_s']} s); the model's share of the run: {phone['model_share']:.0%}")
    print(f"  x264's default GOP (250 frames; gaps filled by seeking): sampling "
          f"{default['decode_realtime']}x real time, {default['frames']} frames")
    q = figures["search"]
    mb = phone["rows_per_hour"] * q["bytes_per_row"] / 1e6
    print(f"storage: {phone['rows_per_hour']} rows an hour (a cut every {SCENE_SECONDS:.0f} s) x "
          f"{q['bytes_per_row']} bytes a row = {mb:.1f} MB per hour of video; 900 rows an hour, "
          f"{900 * q['bytes_per_row'] / 1e6:.1f} MB, without cuts")
    long = figures.get("long") or {}
    if long:
        print("index one long video (160x120, a cut every 8 s), the process's peak memory: " + "; ".join(
            f"{m} min {v['peak_mb']:.0f} MB in {v['index_s']} s" for m, v in long.items()))
    print(f"search over {q['photos']:,} photos + {q['hours']:,.0f} hours of video ({q['rows']:,} rows): "
          f"p50 {q['p50_ms']} ms, the rows alone {q['rows_alone_p50_ms']} ms ({q['ratio']}x for folding "
          f"moments into videos); {q['video_hits_share']:.0%} of hits were videos")


def main() -> None:
    script(__doc__, "# videos", {
        "--seconds": {"type": float, "default": 60.0, "help": "of 1080p video to index"},
        "--photos": {"type": int, "default": 100_000},
        "--hours": {"type": float, "default": 1000.0, "help": "of video beside the photos"},
    }, lambda work, args: measure(work, args.seconds, photos=args.photos, hours=args.hours), report)


if __name__ == "__main__":
    main()
