"""BLIP captions: captions per second per precision, the captioner's memory, and captioning in
the background of a watching server while it answers queries.

    python -m benchmarks.captions                 # BLIP-base architecture, random weights

The model is BLIP base's captioning architecture (ViT-B/16 at 384 px, 12-layer BERT decoder with
cross-attention) with random weights: timings are those of Salesforce/blip-image-captioning-base,
except that random weights never write the end token, so every caption runs to the 30-token limit
(a real caption stops after 10-15): figures are a floor on captions per second.
Target (issue 25): a query's p50 while the server captions in the background <= 2x its idle p50.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

from benchmarks.common import percentile_ms, script
from benchmarks.query import QUERIES
from benchmarks.serve import Served, _env, _small_photos, _spec

PACE = 0.5  # seconds between the searches made while the server captions


def captioner_folder(folder: Path, size: str = "base") -> Path:
    """A BLIP captioner with random weights and a processor, saved as a user's download would be:
    BLIP base's architecture, or a tiny one (the smoke run)."""
    import torch
    from transformers import (
        BertTokenizer,
        BlipConfig,
        BlipForConditionalGeneration,
        BlipImageProcessor,
        BlipProcessor,
    )

    if (folder / "config.json").exists():
        return folder
    torch.manual_seed(0)
    if size == "base":
        config, pixels = BlipConfig(vision_config={"initializer_range": 0.02}), 384
    else:
        config, pixels = BlipConfig(
            vision_config={"image_size": 64, "patch_size": 16, "hidden_size": 32, "intermediate_size": 64,
                           "num_hidden_layers": 1, "num_attention_heads": 2, "initializer_range": 0.02},
            text_config={"vocab_size": 64, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
                         "num_attention_heads": 2, "encoder_hidden_size": 32, "pad_token_id": 0,
                         "bos_token_id": 2, "sep_token_id": 3}), 64
    model = BlipForConditionalGeneration(config)
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    filler = [f"word{i}" for i in range(config.text_config.vocab_size - len(specials))]
    processor = BlipProcessor(BlipImageProcessor(size={"height": pixels, "width": pixels}),
                              BertTokenizer(vocab={t: i for i, t in enumerate(specials + filler)}))
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def speed(work: Path, n: int, precisions: tuple[str, ...], size: str) -> dict:
    """Captions per second and the process's peak memory, each precision in a process of its own."""
    folder = captioner_folder(work / f"captioner-{size}", size)
    paths = _small_photos(work / "photos-captions", n)
    out = {}
    for precision in precisions:
        r = subprocess.run([sys.executable, "-c", _CHILD, str(folder), precision, *paths],
                           capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"},
                           timeout=3600)
        if r.returncode:
            raise RuntimeError(r.stderr[-1000:])
        out[precision] = json.loads(r.stdout.strip().splitlines()[-1])
    return out


_CHILD = """
import json, resource, sys, time
from PIL import Image
from clipsearch.models.captioner import load_captioner
folder, precision, paths = sys.argv[1], sys.argv[2], sys.argv[3:]
images = [Image.open(p).convert("RGB") for p in paths]
import transformers.models.blip.modeling_blip
imported = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
captioner = load_captioner(folder, "cpu", precision)
captioner.caption(images[:1], 1)  # warm-up
started = time.perf_counter()
captioner.caption(images, 8)
seconds = time.perf_counter() - started
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"captions_per_s": len(images) / seconds, "peak_rss_mb": peak,
                  "model_and_captions_mb": peak - imported}))
"""


def background(work: Path, n: int, size: str, seconds_idle: float = 10.0) -> dict:
    """A watching server with `--captions` over `n` photos: query p50 while it captions and once
    every photo has its caption (idle: the same process, nothing left to do), and the time until
    every photo has one."""
    import http.client

    from benchmarks.common import prepare_fast, random_index
    from clipsearch.store.ann import current
    from clipsearch.store.table import Store

    folder = captioner_folder(work / f"captioner-{size}", size)
    photos = _small_photos(work / "photos-background", n)
    db = work / "db-captions"
    store = random_index(db, 0, model=_spec(work), files=photos)
    current(store)
    prepare_fast(store, work)  # as an index run leaves it: the server does not export at its start
    server = Served(db, _env(work), ["--watch", str(Path(photos[0]).parents[1]), "--captions",
                                     "--caption-model", str(folder), "--settle", "0.5"])
    started = time.monotonic()
    busy: list[float] = []
    done = threading.Event()

    def captioned() -> int:  # read beside the server, as any reader of the index may
        found = Store.open(db).read_captions()
        return 0 if found is None else found.num_rows

    try:
        def ask() -> None:
            while not done.is_set():
                busy.extend(_latencies(server, PACE, PACE))

        asker = threading.Thread(target=ask, daemon=True)
        asker.start()
        deadline = started + 3600
        while time.monotonic() < deadline and captioned() < n:
            time.sleep(0.25)
        total = time.monotonic() - started
        done.set()
        asker.join(timeout=30)
        idle = _latencies(server, seconds_idle)
    except (OSError, http.client.HTTPException):
        done.set()
        raise
    finally:
        server.stop()
    p50_idle, p50_busy = percentile_ms(idle), percentile_ms(busy)
    return {"photos": n, "seconds_to_caption_all": total, "query_p50_idle_ms": p50_idle,
            "query_p50_captioning_ms": p50_busy, "ratio": p50_busy / p50_idle if p50_idle else None,
            "queries_during": len(busy)}


def _latencies(server: Served, seconds: float, pace: float = PACE) -> list[float]:
    """Searches for `seconds`, one every `pace` seconds (a person browsing, not a load test:
    a server searched without pause has no quiet moments to caption in)."""
    conn, out = server.connection(), []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        start = time.perf_counter()
        status, _ = server.get(conn, "/api/search", {"q": QUERIES[len(out) % len(QUERIES)], "k": 24})
        if status == 200:
            out.append(time.perf_counter() - start)
        time.sleep(max(0.0, pace - (time.perf_counter() - start)))
    return out


def measure(work: Path, photos: int = 16, precisions: tuple[str, ...] = ("fp32", "bf16"), size: str = "base",
            background_photos: int = 1000, idle_seconds: float = 10.0) -> dict:
    return {"model": size, "speed": speed(work, photos, precisions, size),
            "background": background(work, background_photos, size, idle_seconds)}


def report(f: dict) -> None:
    print(f"BLIP captioner ({f['model']} architecture, random weights: every caption 30 tokens)")
    for precision, s in f["speed"].items():
        print(f"  {precision}: {s['captions_per_s']:.2f} captions/s (batches of 8); memory: the process's "
              f"peak {s['peak_rss_mb']:.0f} MB, {s['model_and_captions_mb']:.0f} MB above its imports")
    b = f["background"]
    ratio = f"{b['ratio']:.2f}x" if b["ratio"] else "-"
    print(f"  serve --watch --captions, {b['photos']} photos: all captioned in "
          f"{b['seconds_to_caption_all']:.0f} s;"
          f" query p50 {b['query_p50_idle_ms']:.1f} ms idle, {b['query_p50_captioning_ms']:.1f} ms while"
          f" captioning ({ratio}; target <= 2x)")


def main() -> None:
    script(__doc__, "captions", {"--photos": {"type": int, "default": 16},
                                 "--background-photos": {"type": int, "default": 1000}},
           lambda work, args: measure(work, args.photos, background_photos=args.background_photos), report)


if __name__ == "__main__":
    main()
