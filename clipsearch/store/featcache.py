"""A bounded on-disk cache of per-image model features, keyed by the image's content hash.

Re-ranking reads the same few dozen candidates again and again; their BLIP vision features cost
far more to compute than to read back. Entries are safetensors files (no pickle, exact bf16) in
a DiskCache: written atomically, least recently used out first.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from clipsearch.store.diskcache import DiskCache

if TYPE_CHECKING:
    import torch

SUFFIX = ".safetensors"


class FeatureCache(DiskCache):
    def __init__(self, root: Path, namespace: str, max_bytes: int) -> None:
        super().__init__(root, namespace, max_bytes, SUFFIX)  # one namespace per model identity

    def get(self, key: str) -> torch.Tensor | None:
        from safetensors.torch import load

        return self.read(key, lambda data: load(data)["features"])

    def put(self, entries: dict[str, torch.Tensor]) -> None:
        from safetensors.torch import save

        for key, tensor in entries.items():
            if not self.write(key, save({"features": tensor.contiguous()})):
                return
