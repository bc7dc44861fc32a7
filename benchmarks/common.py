"""What the benchmark scripts share: timing, and real-size models with random weights loaded
through the same path as a user's local checkpoint (weights do not change speed)."""

from __future__ import annotations

import time
from pathlib import Path


def timed(fn):
    """(seconds, result) of calling fn()."""
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def vit_b_32_embedder(folder: Path, device: str = "cpu"):
    """open_clip's ViT-B-32 with random weights, saved to a .safetensors file and loaded the way
    `--pretrained FILE` is."""
    import open_clip
    import torch
    from safetensors.torch import save_file

    from clipsearch.models import load_embedder, parse_model_spec

    torch.manual_seed(0)
    path = Path(folder) / "vit-b-32-random.safetensors"
    state = open_clip.create_model("ViT-B-32").state_dict()
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    return load_embedder(parse_model_spec("ViT-B-32", str(path)), device)
