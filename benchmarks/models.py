"""How fast the models people pick run here, for the docs' "Choosing a model" table: images a
second through the image tower (what indexing costs) and one text query's time (what a search
costs), with random weights, which cost what trained ones do.

    python -m benchmarks.models                          # this machine's CPU, precision auto
    python -m benchmarks.models --device cuda --precision fp16 --batch 256 --no-export
    python -m benchmarks.models --only ViT-B-32,MobileCLIP-S2

A model whose tokenizer and text tower build offline is saved as a .safetensors file and loaded
back through clipsearch's own path (`--pretrained FILE`), then its text tower is put through the
torch-free query's export and check. One whose tokenizer or text configuration comes from the
model hub (SigLIP's, the XLM-RoBERTa tower's) cannot be built on a machine without it: its image
tower is timed through open_clip alone where that builds, and the rest is reported with why.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

# (label, open_clip name): the families the docs compare
MODELS = [
    ("ViT-B-32", "ViT-B-32"),
    ("ViT-B-16", "ViT-B-16"),
    ("ViT-L-14", "ViT-L-14"),
    ("SigLIP B/16", "ViT-B-16-SigLIP"),
    ("SigLIP2 B/16", "ViT-B-16-SigLIP2"),
    ("MobileCLIP-S2", "MobileCLIP-S2"),
    ("MobileCLIP2-S2", "MobileCLIP2-S2"),
    ("XLM-R base ViT-B-32", "xlm-roberta-base-ViT-B-32"),
]


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:200]}" if text else type(exc).__name__


def _images_per_second(encode, size: int, batch: int, device: str, dtype, rounds: int) -> float:
    import torch

    pixels = torch.randn(batch, 3, size, size, device=device, dtype=dtype)
    with torch.inference_mode():
        encode(pixels)  # warm-up: kernels picked, memory allocated
        best = float("inf")
        for _ in range(rounds):
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            start = time.perf_counter()
            encode(pixels)
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            best = min(best, time.perf_counter() - start)
    return batch / best


def measure(label: str, name: str, folder: Path, device: str, precision: str, batch: int,
            rounds: int, export: bool) -> dict:
    import open_clip
    import torch

    from benchmarks.common import save_checkpoint
    from clipsearch.models import (
        auto_precision,
        load_embedder,
        parse_model_spec,
        resolve_device,
        resolve_precision,
    )

    device = resolve_device(device)
    precision = resolve_precision(precision, device, auto=auto_precision(device))
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision, torch.float32)
    row: dict = {"model": label, "open_clip": name, "device": device, "precision": precision}
    torch.manual_seed(0)
    try:
        model = open_clip.create_model(name)
    except Exception as exc:  # noqa: BLE001 - reported as the reason, in the table
        row["not_measured"] = f"the model does not build offline ({_first_line(exc)})"
        return row
    size = model.visual.image_size if hasattr(model.visual, "image_size") else 224
    size = size[0] if isinstance(size, tuple | list) else size
    row["image_size"] = int(size)
    row["params_m"] = round(sum(p.numel() for p in model.parameters()) / 1e6, 1)
    try:
        open_clip.get_tokenizer(name)
    except Exception as exc:  # noqa: BLE001
        row["text_not_measured"] = f"its tokenizer comes from the model hub ({_first_line(exc)})"
        visual = model.visual.to(device=device, dtype=dtype).eval()
        row["images_per_s"] = round(_images_per_second(visual, size, batch, device, dtype, rounds), 1)
        row["path"] = "open_clip image tower alone"
        return row
    path = save_checkpoint(model, folder / f"{name}.safetensors")
    del model
    spec = parse_model_spec(name, str(path))
    row["path"] = "clipsearch (--pretrained FILE)"
    # a query is embedded in fp32 (search's --precision default, and what the export is checked against)
    embedder = load_embedder(spec, device, "fp32")
    embedder.embed_texts(["warm up"])
    times = []
    for text in ["a dog running on a beach", "kids building a sandcastle", "a red car at night"] * 3:
        start = time.perf_counter()
        embedder.embed_texts([text])
        times.append(time.perf_counter() - start)
    row["text_ms_fp32"] = round(1000 * sorted(times)[len(times) // 2], 1)
    if export:
        from clipsearch.models.export import NotExportable
        from clipsearch.models.export import export as export_text

        try:
            export_text(embedder, folder / f"export-{name}")
            row["torch_free_query"] = "yes (exported and checked here)"
        except NotExportable as exc:
            row["torch_free_query"] = f"no: {_first_line(exc)}"
    if precision != "fp32":
        del embedder
        embedder = load_embedder(spec, device, precision)
    # the tower's forward without the vectors' normalisation and copy out, as the rows timed
    # through open_clip alone are, so that every row measures the same thing
    row["images_per_s"] = round(_images_per_second(embedder._encode_images, size, batch, device, dtype,
                                                   rounds), 1)
    del embedder
    path.unlink()
    return row


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.models", description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--only", help="comma-separated open_clip names")
    parser.add_argument("--no-export", action="store_true", help="skip the torch-free query's export check")
    parser.add_argument("--json", help="also write the rows to this file")
    args = parser.parse_args(argv)
    wanted = set(args.only.split(",")) if args.only else None
    rows = []
    with tempfile.TemporaryDirectory(prefix="clipsearch-models-") as tmp:
        for label, name in MODELS:
            if wanted and name not in wanted:
                continue
            row = measure(label, name, Path(tmp), args.device, args.precision, args.batch, args.rounds,
                          not args.no_export)
            rows.append(row)
            print(json.dumps(row), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return rows


if __name__ == "__main__":
    main()
