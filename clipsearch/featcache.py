"""A bounded on-disk cache of per-image model features, keyed by the image's content hash.

Re-ranking reads the same few dozen candidates again and again; their BLIP vision features cost
far more to compute than to read back. Entries are safetensors files (no pickle, exact bf16),
written atomically so concurrent searches never see half a file, and evicted least recently used
first (reads bump the file's mtime) once the whole cache outgrows its bound.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import TYPE_CHECKING

from clipsearch.files import replacing

if TYPE_CHECKING:
    import torch

SUFFIX = ".safetensors"


class FeatureCache:
    def __init__(self, root: Path, namespace: str, max_bytes: int) -> None:
        self.root = Path(root)
        self.folder = self.root / namespace  # one folder per model identity
        self.max_bytes = max_bytes

    @property
    def enabled(self) -> bool:
        return self.max_bytes > 0

    def _file(self, key: str) -> Path:
        return self.folder / f"{key}{SUFFIX}"

    def get(self, key: str) -> torch.Tensor | None:
        if not self.enabled:
            return None
        from safetensors.torch import load_file

        path = self._file(key)
        try:
            tensor = load_file(str(path))["features"]
            os.utime(path)  # recently used: evicted last
            return tensor
        except FileNotFoundError:
            return None
        except Exception:  # a damaged entry is only a miss; drop it so it is rewritten
            with contextlib.suppress(OSError):
                path.unlink()
            return None

    def put(self, entries: dict[str, torch.Tensor]) -> None:
        """Store entries, then trim; a cache that cannot be written only costs speed."""
        if not self.enabled or not entries:
            return
        from safetensors.torch import save_file

        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            for key, tensor in entries.items():
                with replacing(self._file(key)) as tmp:
                    save_file({"features": tensor.contiguous()}, tmp)
            self.trim()
        except Exception:  # full disk, read-only cache, safetensors' own errors: only speed is lost
            return

    def trim(self) -> None:
        """Delete least recently used entries (across all namespaces) until under the bound."""
        files = []
        for path in self.root.glob(f"*/*{SUFFIX}"):
            with contextlib.suppress(FileNotFoundError):
                st = path.stat()
                files.append((st.st_mtime_ns, st.st_size, path))
        total = sum(size for _, size, _ in files)
        for _, size, path in sorted(files, key=lambda f: f[0]):
            if total <= self.max_bytes:
                break
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            total -= size

    def size(self) -> int:
        return sum(p.stat().st_size for p in self.root.glob(f"*/*{SUFFIX}"))
