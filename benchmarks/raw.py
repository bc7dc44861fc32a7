"""RAW photos (issue 27): index throughput on RAW files against JPEGs of the same pixel count, in
one run (target: RAW >= 0.8 of JPEG), with the share of RAWs that took each decoding path and
what each path costs alone.

    python -m benchmarks.raw                        # 16 photos of 24 MP, 3 in 4 with a full preview
    python -m benchmarks.raw --photos 8 --megapixels 12

The photos are benchmarks.common.photos (sample_images/ with grain, JPEG quality 90); each RAW
is the same picture as a 12-bit Bayer mosaic in a DNG (benchmarks.raws; packed, uncompressed:
36 MB at 24 MP, where a camera's compressed RAW is 25-30 MB). Most cameras embed a
preview JPEG of the full size or near it (Nikon, Sony, Fujifilm, Canon's CR3): `preview_share` of
the RAWs carry one of the full size; the others only a 160 px thumbnail, so they are demosaiced
(at half size). Both folders are indexed by `index_folders` with ViT-B-32 (random weights, bf16
where the CPU has it) already loaded, after a warm-up run makes each index, best of `rounds`.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from benchmarks.common import bench_embedder, photos, script, seed_export, timed

TARGET_RATIO = 0.8


def make_raws(folder: Path, jpegs: list[str], preview_share: float) -> dict[str, list[str]]:
    """A DNG of each JPEG's pixels: the first `preview_share` of them with a full-size preview
    (under folder/preview), the others with a 160 px thumbnail only (folder/demosaic)."""
    from PIL import Image

    from benchmarks.raws import make_dng

    made: dict[str, list[str]] = {"preview": [], "demosaic": []}
    with_preview = round(len(jpegs) * preview_share)
    for i, path in enumerate(jpegs):
        with Image.open(path) as img:
            picture = img.convert("RGB")
        kind = "preview" if i < with_preview else "demosaic"
        (folder / kind).mkdir(parents=True, exist_ok=True)
        made[kind].append(make_dng(str(folder / kind / f"{Path(path).stem}.dng"), picture,
                                   preview=max(picture.size) if kind == "preview" else 160, bits=12))
    return made


def _rate(work: Path, label: str, folder: Path, embedder, rounds: int) -> float:
    """Photos a second of `index_folders` over `folder`, best of `rounds`, each into a new index
    made (with its first-use costs) by a run over one of its files."""
    from clipsearch import index_folders

    warm = work / f"warm-{label}"
    warm.mkdir()
    first = min(folder.iterdir())
    # one byte more: other content, so the timed run embeds every file of the folder
    (warm / f"warm{first.suffix}").write_bytes(first.read_bytes() + b"\0")
    best = 0.0
    for r in range(rounds):  # a new index each round: nothing of the last one is reused
        db = work / f"db-raw-{label}-{r}"
        seed_export(embedder.spec.to_dict(), work)
        index_folders([warm], db, embedder=embedder)
        seconds, summary = timed(lambda d=db: index_folders([folder], d, embedder=embedder))
        best = max(best, summary.embedded / seconds)
        shutil.rmtree(db, ignore_errors=True)
    return best


def measure(work: Path, n: int = 16, megapixels: float = 24.0, preview_share: float = 0.75,
            rounds: int = 2, embedder=None) -> dict:
    from clipsearch.media.images import content_hash, load_image, raw_file_identity, read_file
    from clipsearch.media.raw import decode

    started = time.perf_counter()
    embedder = embedder or bench_embedder(work, precision="bf16")
    width = int((megapixels * 1e6 * 3 / 2) ** 0.5) // 2 * 2
    size = (width, width * 2 // 3 // 2 * 2)
    jpeg_folder, raw_folder = work / "raw-bench" / "jpeg", work / "raw-bench" / "raw"
    jpegs = photos(jpeg_folder, n, size)
    made_s, made = timed(lambda: make_raws(raw_folder, jpegs, preview_share))
    raws = [p for kind in made.values() for p in kind]
    out: dict = {"photos": n, "size": f"{size[0]}x{size[1]}", "megapixels": round(size[0] * size[1] / 1e6, 1),
                 "made": {kind: len(files) for kind, files in made.items()}, "make_s": round(made_s, 1),
                 "jpeg_mb": round(sum(Path(p).stat().st_size for p in jpegs) / n / 1e6, 1),
                 "raw_mb": round(sum(Path(p).stat().st_size for p in raws) / n / 1e6, 1)}
    jpeg = _rate(work, "jpeg", jpeg_folder, embedder, rounds)
    out["jpeg_per_s"] = round(jpeg, 2)
    seconds = 0.0
    for kind, files in made.items():  # each path alone, then the library of both
        if files:
            rate = _rate(work, kind, raw_folder / kind, embedder, rounds)
            out[f"{kind}_per_s"], out[f"{kind}_ratio"] = round(rate, 2), round(rate / jpeg, 2)
            seconds += len(files) / rate
    out["raw_per_s"] = round(n / seconds, 2)
    out["ratio"] = round(n / seconds / jpeg, 2)
    # which path each RAW took, and what one decode costs on each (one thread)
    paths: dict[str, list[float]] = {"preview": [], "demosaic": []}
    for dng in map(Path, raws):
        data = dng.read_bytes()
        seconds, decoded = timed(lambda d=data, p=dng: decode(d, str(p), embedder.decode_min_side))
        paths[decoded.via].append(seconds)
    jpeg_s = [timed(lambda p=p: load_image(p, embedder.decode_min_side))[0] for p in jpegs]
    # what every file costs before any decoding: its content hash, as `index` makes it (all of a
    # JPEG read and hashed; 2 MiB of a RAW, images.raw_identity), and what hashing all of a RAW
    # would cost
    for label, files, digest in (
            ("jpeg", jpegs, lambda f: content_hash(read_file(f))),
            ("raw", raws, raw_file_identity), ("raw_whole", raws, lambda f: content_hash(read_file(f)))):
        seconds = sum(timed(lambda f=f, d=digest: d(f))[0] for f in files)
        out[f"hash_ms_{label}"] = round(1000 * seconds / n, 1)
    out["share"] = {via: round(len(s) / n, 2) for via, s in paths.items()}
    out["decode_ms"] = {"jpeg": round(1000 * sum(jpeg_s) / n, 1),
                        **{via: round(1000 * sum(s) / len(s), 1) for via, s in paths.items() if s}}
    out["seconds"] = round(time.perf_counter() - started, 1)
    return out


def report(figures: dict) -> None:
    def verdict(ratio: float | None) -> str:
        return "ok" if ratio is not None and ratio >= TARGET_RATIO else "MISSED"

    f = figures
    print(f"index {f['photos']} photos of {f['megapixels']} MP ({f['size']}), ViT-B-32 bf16, "
          f"JPEG {f['jpeg_per_s']}/s; RAW (DNG) through its embedded preview {f.get('preview_per_s')}/s: "
          f"ratio {f.get('preview_ratio')} (target >= {TARGET_RATIO}) {verdict(f.get('preview_ratio'))}")
    print(f"  RAW without a usable preview (demosaiced at half size): {f.get('demosaic_per_s')}/s, "
          f"ratio {f.get('demosaic_ratio')}; the library of both ({f['share']['preview']:.0%} with a "
          f"preview): {f['raw_per_s']}/s, ratio {f['ratio']} {verdict(f['ratio'])}")
    decode = figures["decode_ms"]
    print("  one decode (one thread): " + ", ".join(
        f"{'JPEG' if via == 'jpeg' else 'RAW ' + via} {ms} ms" for via, ms in decode.items()))
    print(f"  files: JPEG {figures['jpeg_mb']} MB, DNG {figures['raw_mb']} MB (12-bit mosaic, packed); "
          f"its content hash: JPEG {figures['hash_ms_jpeg']} ms, RAW {figures['hash_ms_raw']} ms from 2 MiB "
          f"of it ({figures['hash_ms_raw_whole']} ms from all of it)")


def main() -> None:
    script(__doc__, "# RAW photos", {
        "--photos": {"type": int, "default": 16},
        "--megapixels": {"type": float, "default": 24.0},
        "--preview-share": {"type": float, "default": 0.75},
    }, lambda work, args: measure(work, args.photos, args.megapixels, args.preview_share), report)


if __name__ == "__main__":
    main()
