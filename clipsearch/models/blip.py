"""BLIP image-text matching (transformers' BlipForImageTextRetrieval, ITM head).

The scorer is split the way the re-ranker needs it: `image_features` runs the vision tower once
per image (the expensive part, cached by the caller), and `match` runs the text encoder with
cross-attention over those features for many (query, image) pairs in one batch.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import warnings
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, NamedTuple

import numpy as np
import torch

from clipsearch.errors import BadInputError, ModelLoadError
from clipsearch.models import hub

if TYPE_CHECKING:
    from PIL import Image

_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
_WEIGHTS = ("model.safetensors", "pytorch_model.bin")


class BlipModel:
    """A loaded BLIP model with its processor (the re-ranker's and the captioner's common part)."""

    def __init__(self, name: str, device: str, precision: str, model, processor, identity: str):
        self.name = name
        self.device = device
        self.precision = precision
        self.model = model
        self.processor = processor
        # names what this model produces: same weights, preprocessing and precision
        self.identity = identity
        size = model.config.vision_config.image_size
        self.image_size = int(max(size) if isinstance(size, tuple | list) else size)

    @property
    def decode_min_side(self) -> int:
        return 2 * self.image_size


class ItmScorer(BlipModel):
    """Match probabilities of (text, image) pairs. Build one with `load_scorer`."""

    def __init__(self, name: str, device: str, precision: str, model, processor, identity: str):
        super().__init__(name, device, precision, model, processor, identity)
        self.max_text_tokens = int(model.config.text_config.max_position_embeddings)

    @contextlib.contextmanager
    def _running(self) -> Iterator[None]:
        device_type = torch.device(self.device).type
        with torch.inference_mode(), torch.autocast(
            device_type, dtype=torch.bfloat16, enabled=self.precision == "bf16"
        ):
            yield

    def image_features(self, images: Sequence[Image.Image], batch_size: int = 8) -> list[torch.Tensor]:
        """The vision tower's output tokens for each image, on the CPU, in the model's dtype."""
        out: list[torch.Tensor] = []
        with self._running():
            for start in range(0, len(images), batch_size):
                pixels = self.processor(images=list(images[start:start + batch_size]),
                                        return_tensors="pt")["pixel_values"]
                tokens = self.model.vision_model(pixel_values=pixels.to(self.device)).last_hidden_state
                out.extend(t.to("cpu", torch.bfloat16 if self.precision == "bf16" else torch.float32)
                           for t in tokens)
        return out

    def match(self, text: str, features: Sequence[torch.Tensor], batch_size: int = 32) -> np.ndarray:
        """P(text matches image) for each image's features, from the ITM head's two logits."""
        tokens = self.processor(text=[text], return_tensors="pt", truncation=True,
                                max_length=self.max_text_tokens)
        ids, mask = tokens["input_ids"].to(self.device), tokens["attention_mask"].to(self.device)
        probs = []
        with self._running():
            for start in range(0, len(features), batch_size):
                embeds = torch.stack(list(features[start:start + batch_size])).to(self.device)
                n = embeds.shape[0]
                hidden = self.model.text_encoder(
                    input_ids=ids.expand(n, -1), attention_mask=mask.expand(n, -1),
                    encoder_hidden_states=embeds,
                    encoder_attention_mask=torch.ones(embeds.shape[:2], dtype=torch.long,
                                                      device=self.device),
                ).last_hidden_state
                logits = self.model.itm_head(hidden[:, 0, :]).float()
                probs.append(logits.softmax(dim=-1)[:, 1].cpu().numpy())
        return np.concatenate(probs) if probs else np.zeros(0, np.float32)


def resolve_precision(precision: str, device: str, flag: str = "--rerank-precision") -> str:
    from clipsearch.config import RERANK_PRECISIONS
    from clipsearch.models import native_bf16
    from clipsearch.models import resolve_precision as check

    native = torch.device(device).type == "cpu" and native_bf16()
    return check(precision, device, flag, RERANK_PRECISIONS, "bf16" if native else "fp32")


def _source(name: str, flag: str = "--rerank-model", example: str = "Salesforce/blip-itm-base-coco",
            ) -> tuple[str, bool]:
    """(what to pass to from_pretrained, whether it is already on disk)."""
    path = os.path.abspath(os.path.expanduser(name))
    if os.path.exists(path) and not os.path.isdir(path):
        raise BadInputError(f"{flag} {path} is a file; point it at the folder save_pretrained wrote "
                            "(config.json and the weights beside it)")
    if os.path.isdir(path):
        if not os.path.isfile(os.path.join(path, "config.json")):
            raise BadInputError(
                f"{flag} {path} has no config.json; point it at a folder written by "
                "save_pretrained (model and processor)"
            )
        return path, True
    if name.startswith(("/", ".", "~")) or name.count("/") > 1 or "\\" in name:
        raise BadInputError(f"{flag}: folder not found: {path}")
    if not _REPO_ID.match(name):
        raise BadInputError(f"{flag} {name!r} is neither a folder nor a hub name like {example}")
    config = hub.cached_hf_file(name, ["config.json"])
    weights = hub.cached_hf_file(name, _WEIGHTS)
    if config and weights and os.path.dirname(config) == os.path.dirname(weights):
        return name, True
    what = "caption model" if flag == "--caption-model" else "re-rank model"
    hub.require_hub(f"{what} {name}", hub.hf_endpoint(),
                    f"pass a folder saved with save_pretrained: {flag} /path/to/folder")
    return name, False


def _identity(name: str, source: str, local: bool, precision: str) -> str:
    folder = source if os.path.isdir(source) else None
    if folder is None and local:
        folder = os.path.dirname(hub.cached_hf_file(source, ["config.json"]) or "")
    parts = [source if folder == source else name, precision]  # a folder however it was spelt
    for filename in ("config.json", "preprocessor_config.json", "processor_config.json", *_WEIGHTS):
        with contextlib.suppress(OSError, TypeError):
            st = os.stat(os.path.join(folder, filename))
            parts.append(f"{filename}:{st.st_size}:{st.st_mtime_ns}")
    return hashlib.blake2b("|".join(parts).encode(), digest_size=8).hexdigest()


class Loaded(NamedTuple):
    model: object
    processor: object
    device: str
    precision: str
    identity: str  # names the weights, preprocessing and precision


def load_pretrained(model_class: str, name: str, device: str, precision: str, flag: str, example: str,
                    bf16_weights: bool = False) -> Loaded:
    """A BLIP model (`model_class` of transformers) and its processor from a local folder or the
    hub (cache first), on `device`, at `precision` ('auto': bf16 on CPUs that have it).
    `bf16_weights`: at bf16, load the weights as bf16 rather than run fp32 ones under autocast."""
    from clipsearch.models import resolve_device

    device = resolve_device(device)
    precision = resolve_precision(precision, device, flag.replace("-model", "-precision"))
    source, local = _source(name, flag, example)
    import transformers
    from packaging.version import Version
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    what = "caption model" if flag == "--caption-model" else "re-rank model"
    try:
        # transformers 5 loads weights in the type they were saved in (fp16 ones too) unless told;
        # the argument was torch_dtype before 4.56
        dtype = torch.bfloat16 if bf16_weights and precision == "bf16" else torch.float32
        named = "dtype" if Version(transformers.__version__) >= Version("4.56") else "torch_dtype"
        model = getattr(transformers, model_class).from_pretrained(source, local_files_only=local,
                                                                   **{named: dtype})
        processor = transformers.BlipProcessor.from_pretrained(source, local_files_only=local)
    except Exception as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ModelLoadError(
            f"cannot load {what} {name}: {reason[:300]}; pass a folder saved with save_pretrained: "
            f"{flag} /path/to/folder"
        ) from exc
    model.eval().to(device)
    if precision == "int8":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch points eager quantisation users at torchao
            model = torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)
    return Loaded(model, processor, device, precision, _identity(name, source, local, precision))


def load_scorer(name: str, device: str, precision: str = "auto") -> ItmScorer:
    """Load BLIP ITM weights and processor from a local folder or the hub (cache first)."""
    got = load_pretrained("BlipForImageTextRetrieval", name, device, precision, "--rerank-model",
                          "Salesforce/blip-itm-base-coco")
    return ItmScorer(name, got.device, got.precision, got.model, got.processor, got.identity)
