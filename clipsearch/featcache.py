"""A bounded on-disk cache of per-image model features, keyed by the image's content hash.

Re-ranking reads the same few dozen candidates again and again; their BLIP vision features cost
far more to compute than to read back. Entries are safetensors files (no pickle, exact bf16) in
a DiskCache: written atomically, least recently used out first.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from clipsearch.diskcache import DiskCache

if TYPE_CHECKING:
    import torch

SUFFIX = ".safetensors"


class FeatureCache(DiskCache):
    def __init__(self, root: Path, namespace: str, max_bytes: int) -> None:
        super().__init__(root, namespace, max_bytes, SUFFIX)  # one namespace per model identity

    def get(self, key: str) -> torch.Tensor | None:
        from safetensors.torch import load_file

        return self.read(key, lambda path: load_file(path)["features"])

    def put(self, entries: dict[str, torch.Tensor]) -> None:
        from safetensors.torch import save_file

        for key, tensor in entries.items():
            if not self.write(key, lambda tmp, t=tensor: save_file({"features": t.contiguous()}, tmp)):
                return
