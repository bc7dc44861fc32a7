"""BLIP captioning (transformers' BlipForConditionalGeneration, the language-modelling head).

Decoding is deterministic, so the same photo and model always get the same caption: beam search
(3 beams, as BLIP's paper captions), at most 30 new tokens, and no 3-word phrase twice (the usual
guard against "a dog and a dog and a dog"). `DECODING` is passed to transformers' own `generate`
unchanged; tests check the captions equal its output.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch

from clipsearch.models.blip import BlipModel, load_pretrained

if TYPE_CHECKING:
    from PIL import Image

DECODING = {"num_beams": 3, "max_new_tokens": 30, "no_repeat_ngram_size": 3, "do_sample": False}


class Captioner(BlipModel):
    """Writes a sentence for each image. Build one with `load_captioner`; its identity names the
    weights, preprocessing, precision and decoding that wrote a caption."""

    def caption(self, images: Sequence[Image.Image], batch_size: int = 8) -> list[str]:
        out: list[str] = []
        dtype = next(self.model.parameters()).dtype
        with torch.inference_mode():
            for start in range(0, len(images), batch_size):
                inputs = self.processor(images=list(images[start:start + batch_size]), return_tensors="pt")
                pixels = inputs["pixel_values"].to(self.device, dtype)
                tokens = self.model.generate(pixel_values=pixels, **DECODING)
                texts = self.processor.batch_decode(tokens, skip_special_tokens=True)
                out += [" ".join(t.split()) for t in texts]
        return out


def load_captioner(name: str, device: str, precision: str = "auto") -> Captioner:
    """Load BLIP captioning weights and processor from a local folder or the hub (cache first)."""
    # bf16 weights rather than autocast: 1.25x the captions per second and half the memory
    # (BLIP base, 2 CPU cores), where autocast keeps fp32 weights and casts them per call
    got = load_pretrained("BlipForConditionalGeneration", name, device, precision, "--caption-model",
                          "Salesforce/blip-image-captioning-base", bf16_weights=True)
    # captions from other decoding settings are another model's: stale, made again
    settings = f"{got.identity}|{sorted(DECODING.items())}"
    identity = hashlib.blake2b(settings.encode(), digest_size=8).hexdigest()
    return Captioner(name, got.device, got.precision, got.model, got.processor, identity)
