"""The embedder interface. The base class batches and normalises; adapters encode one batch."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch
    from PIL import Image

    from clipsearch.models import ModelSpec


class Embedder(ABC):
    """Turns preprocessed image batches and texts into L2-normalised float32 vectors."""

    def __init__(
        self,
        spec: ModelSpec,
        device: str,
        preprocess: Callable[[Image.Image], torch.Tensor],
        image_size: int,
    ) -> None:
        self.spec = spec
        self.device = device
        # Applied to each decoded PIL image in the decode workers, off the model's thread.
        self.preprocess = preprocess
        self.image_size = image_size
        self.has_text = True  # False once drop_text_tower let its weights go
        self.dim = int(self.embed_texts([""]).shape[1])

    def drop_text_tower(self) -> None:
        """Let go of the text tower's weights, for a process that embeds only images (an index
        run); embedding text afterwards is refused. An adapter that cannot keeps it (has_text
        stays True)."""
        return None

    @property
    def decode_min_side(self) -> int:
        """Large JPEGs may be decoded at reduced scale, down to twice the model's input size."""
        return 2 * self.image_size

    @abstractmethod
    def _encode_images(self, pixels: torch.Tensor) -> torch.Tensor:
        """Raw features of one batch of preprocessed images, already on self.device."""

    @abstractmethod
    def _encode_texts(self, texts: Sequence[str]) -> torch.Tensor:
        """Raw features of one batch of texts."""

    def embed_images(self, pixels: torch.Tensor) -> np.ndarray:
        import torch

        with torch.inference_mode():
            features = self._encode_images(pixels.to(self.device, non_blocking=True))
            return _normalized(features)

    def embed_pil(self, images: Sequence[Image.Image]) -> np.ndarray:
        import torch

        return self.embed_images(torch.stack([self.preprocess(im) for im in images]))

    def embed_texts(self, texts: Sequence[str], batch_size: int = 256) -> np.ndarray:
        import torch

        if not self.has_text:
            raise RuntimeError("this model's text tower was let go (drop_text_tower): load it again")
        out = []
        with torch.inference_mode():
            for start in range(0, len(texts), batch_size):
                out.append(_normalized(self._encode_texts(texts[start:start + batch_size])))
        return np.concatenate(out) if out else np.zeros((0, self.dim), np.float32)


def _normalized(features: torch.Tensor) -> np.ndarray:
    import torch.nn.functional as F

    return F.normalize(features.float(), dim=-1).cpu().numpy().astype(np.float32, copy=False)
