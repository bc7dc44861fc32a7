"""What the benchmark scripts share: timing, photos and vectors to measure on, and real-size
models with random weights loaded through the same path as a user's local checkpoint (weights do
not change speed)."""

from __future__ import annotations

import hashlib
import os
import resource
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
# The model every section embeds with: ViT-B-32 with random weights (weights do not change speed).
# The smoke run (`--smoke`: does everything still run) swaps in a tiny one of the same kind
# (use_tiny_model), in open_clip's hub layout so that the sections' child processes load it by
# its path alone. Read them as common.MODEL and common.DIM, after the swap.
MODEL = "ViT-B-32"
DIM = 512  # the model's embedding size
# 224 px like the real models, so that JPEG draft decoding behaves as it does for users (the
# tests' tiny model too)
TINY_CFG = {"embed_dim": 32,
            "vision_cfg": {"image_size": 224, "layers": 2, "width": 64, "head_width": 32, "patch_size": 32},
            "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2}}


def timed(fn):
    """(seconds, result) of calling fn()."""
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def percentile_ms(seconds: list[float], q: float = 50) -> float:
    return float(np.percentile(seconds, q) * 1000)


def peak_rss_mb(children: bool = False) -> float:
    """Peak resident memory of this process (or of its finished children), in MB."""
    who = resource.RUSAGE_CHILDREN if children else resource.RUSAGE_SELF
    return resource.getrusage(who).ru_maxrss / 1024


def save_checkpoint(model, path: Path) -> Path:
    """`model`'s weights as a .safetensors file, the way a user's `--pretrained FILE` comes."""
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


def random_checkpoint(folder: Path, name: str, filename: str) -> Path:
    """open_clip's `name` with random weights (seed 0) in `folder`/`filename`, made once."""
    import open_clip
    import torch

    path = Path(folder) / filename
    if not path.exists():
        torch.manual_seed(0)
        save_checkpoint(open_clip.create_model(name), path)
    return path


def use_tiny_model(folder: Path) -> None:
    """Make every section embed with a tiny ViT (TINY_CFG, random weights) instead of ViT-B-32."""
    import json

    import open_clip
    import torch

    global MODEL, DIM
    hub = Path(folder) / "tiny-model"
    hub.mkdir(parents=True, exist_ok=True)
    (hub / "open_clip_config.json").write_text(json.dumps({"model_cfg": TINY_CFG}))
    torch.manual_seed(0)
    model = open_clip.CLIP(TINY_CFG["embed_dim"], open_clip.model.CLIPVisionCfg(**TINY_CFG["vision_cfg"]),
                           open_clip.model.CLIPTextCfg(**TINY_CFG["text_cfg"]))
    save_checkpoint(model, hub / "open_clip_model.safetensors")
    MODEL, DIM = f"local-dir:{hub}", TINY_CFG["embed_dim"]


def model_args(folder: Path) -> list[str]:
    """The benchmark's model as a user passes it to `clipsearch index`: --model, --pretrained."""
    if MODEL.startswith("local-dir:"):
        return ["--model", MODEL]
    weights = random_checkpoint(folder, MODEL, f"{MODEL.lower()}-random.safetensors")
    return ["--model", MODEL, "--pretrained", str(weights)]


def model_spec(folder: Path):
    """The benchmark's model as clipsearch's ModelSpec."""
    from clipsearch.models import parse_model_spec

    return parse_model_spec(*model_args(folder)[1::2])


def bench_embedder(folder: Path, device: str = "cpu", precision: str = "fp32"):
    """The benchmark's model, loaded the way a user's local weights are."""
    from clipsearch.models import load_embedder

    return load_embedder(model_spec(folder), device, precision)


def photos(folder: Path, n: int, size: tuple[int, int] = (4000, 3000), grain: float = 6.0) -> list[str]:
    """`n` distinct JPEGs (quality 90) made from sample_images/: at the default size 12 MP like a
    phone's, with sensor-like grain so that they weigh what real photos weigh (~2.5 MB) and cost
    what they cost to decode (a smooth upscale compresses to half that)."""
    from PIL import Image

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    sources = sorted(p for p in (ROOT / "sample_images").rglob("*")
                     if p.suffix.lower() in (".jpg", ".png", ".webp", ".tif", ".bmp"))
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        with Image.open(sources[i % len(sources)]) as img:
            base = img.convert("RGB").resize(size, Image.Resampling.BICUBIC).rotate(i * 3)
        pixels = np.asarray(base, np.int16)
        if grain:
            pixels = pixels + rng.normal(0, grain, pixels.shape).astype(np.int16)
        path = folder / f"photo_{i:04d}.jpg"
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(path, quality=90)
        out.append(str(path))
    return out


class ClusteredVectors:
    """Unit vectors drawn around topic centres, as photo libraries cluster (trips, pets, screenshots):
    random isotropic vectors would have no neighbourhoods at all, which no real collection looks
    like and which no approximate index can search."""

    def __init__(self, dim: int | None = None, topics: int = 2000, spread: float = 0.9, seed: int = 0):
        dim = dim or DIM
        self.rng = np.random.default_rng(seed)
        centres = self.rng.standard_normal((topics, dim)).astype(np.float32)
        self.centres = centres / np.linalg.norm(centres, axis=1, keepdims=True)
        self.dim, self.spread = dim, spread

    def draw(self, n: int, spread: float | None = None) -> np.ndarray:
        spread = self.spread if spread is None else spread
        picked = self.centres[self.rng.integers(0, len(self.centres), n)]
        x = picked + spread * self.rng.standard_normal((n, self.dim)).astype(np.float32) / np.sqrt(self.dim)
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    def queries(self, n: int) -> np.ndarray:
        """Query vectors: near the topics, farther from them than photos are (like text queries)."""
        return self.draw(n, spread=1.3 * self.spread)


def random_index(folder: Path, n: int, vectors: ClusteredVectors | None = None, chunk: int = 50_000,
                 model: dict | None = None, files: list[str] | None = None, words: bool = False,
                 video_frames: int = 0, frames_per_video: int = 900):
    """A real clipsearch table of `n` photos whose vectors come from `vectors`: fake paths, or the
    real `files` (their sizes, times, dimensions and content hashes, so a server serves them).
    `model` is the manifest's model spec (default: a ViT-B-32 nobody can load). `words`: each
    fake photo also carries the words a real one would (name, folder, a city, a camera).
    `video_frames`: the last this many rows are frames of videos (clipsearch.media.video), one every
    4 seconds, `frames_per_video` to a video."""
    import pyarrow as pa

    from clipsearch.store.table import Manifest, Store

    vectors = vectors or ClusteredVectors()
    n = len(files) if files is not None else n
    store = Store.create(folder, Manifest(model=model or {"name": "ViT-B-32", "pretrained": "random"},
                                          dim=vectors.dim))
    for start in range(0, n, chunk):
        m = min(chunk, n - start)
        ids = np.arange(start, start + m)
        if files is None:
            rows = {"path": [f"/photos/{i // 1000:03d}/IMG_{i:07d}.jpg" for i in ids],
                    "size": np.full(m, 3_000_000), "mtime_ns": np.zeros(m, np.int64),
                    "hash": [hashlib.blake2b(str(i).encode(), digest_size=16).hexdigest() for i in ids],
                    "width": np.full(m, 4000, np.int32), "height": np.full(m, 3000, np.int32)}
        else:
            rows = _file_rows(files[start:start + m])
        if words and files is None:
            rows |= _fake_words(ids)
        frame = ids - (n - video_frames)
        if video_frames and (frame >= 0).any():
            rows["path"] = [f"/videos/{f // frames_per_video:05d}.mp4" if f >= 0 else p
                            for f, p in zip(frame.tolist(), rows["path"], strict=True)]
            rows["t"] = pa.array(np.where(frame >= 0, (frame % frames_per_video) * 4.0, np.nan),
                                 from_pandas=True)
            rows["duration"] = pa.array(np.where(frame >= 0, frames_per_video * 4.0, np.nan),
                                        from_pandas=True)
        store.add(pa.table({
            "id": ids, **rows, "taken": pa.nulls(m, pa.string()),
            "vector": pa.FixedSizeListArray.from_arrays(pa.array(vectors.draw(m).ravel()), vectors.dim),
        }))
    store.manifest.next_id = n
    store.save_manifest()
    store.compact()  # as every index run ends: merged commits, lookup indexes
    return store


_CITIES = ["Lisbon", "Paris", "Tokyo", "Berlin", "Sydney", "Chicago", "Porto", "Kyoto", "Munich", "Osaka"]
_CAMERAS = ["Google Pixel 7", "Apple iPhone 15", "FUJIFILM X100V", "Canon EOS R5", "SONY ILCE-7M4"]


def _fake_words(ids: np.ndarray) -> dict:
    from clipsearch.media.exif import Meta
    from clipsearch.media.words import row_words, word_columns

    rows = []
    for i in ids.tolist():
        meta = Meta(camera=_CAMERAS[i % len(_CAMERAS)])
        place = [_CITIES[(i // 7) % len(_CITIES)], None, None, "Region", "Country"]
        rows.append(row_words(f"/photos/{i // 1000:03d}/IMG_{i:07d}.jpg", ["/photos"], meta, None, place, 0))
    return word_columns(rows)


def _file_rows(files: list[str]) -> dict:
    from PIL import Image

    from clipsearch.media.images import content_hash

    stats = [os.stat(f) for f in files]
    sizes = []
    for f in files:
        with Image.open(f) as img:
            sizes.append(img.size)
    return {"path": list(files), "size": np.array([s.st_size for s in stats]),
            "mtime_ns": np.array([s.st_mtime_ns for s in stats], np.int64),
            "hash": [content_hash(Path(f).read_bytes()) for f in files],
            "width": np.array([w for w, _ in sizes], np.int32),
            "height": np.array([h for _, h in sizes], np.int32)}


def script(doc: str, title: str, options: dict[str, dict], measure, report) -> None:
    """What every section's `python -m benchmarks.<name>` does: parse `options` (flag -> argparse
    keywords) plus --json, measure in a scratch folder, print `title` and the report."""
    import argparse
    import json
    import shutil
    import tempfile

    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    for flag, keywords in options.items():
        parser.add_argument(flag, **keywords)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="clipsearch-bench-"))
    own_cache(work)
    try:
        figures = measure(work, args)
        print(title)
        report(figures)
        if args.json:
            args.json.write_text(json.dumps(figures, indent=2))
    finally:
        shutil.rmtree(work, ignore_errors=True)


def seed_export(model: dict, work: Path) -> None:
    """Make the exported text tower of the benchmark's model where every index of it finds it,
    unless it is there: the user's cache (one per benchmark run, see `own_cache`), so a run
    exports once (about 10 s, a one-off cost of a user's first index, not of its throughput or
    memory)."""
    from clipsearch.models import exportjob, onnxtext
    from clipsearch.models.export import export

    with exportjob.exporting(model):
        if not onnxtext.exported(model):
            export(bench_embedder(work), onnxtext.folder(model))


def own_cache(work: Path) -> None:
    """One cache folder for this benchmark run and every process it starts (they inherit it):
    never the user's, and shared by the sections as one user's indexes share it."""
    import os

    os.environ["CLIPSEARCH_CACHE"] = str(Path(work) / "cache")


def prepare_fast(store, work: Path) -> float:
    """What an index run leaves for the fast path: the text export and the row snapshot; the
    seconds it took (the export made once per benchmark run, see seed_export)."""
    from clipsearch.build.fastprep import prepare_fast as prepare

    seconds, _ = timed(lambda: seed_export(store.manifest.model, work))
    return seconds + timed(lambda: prepare(store, lambda: bench_embedder(work), retry=True))[0]
