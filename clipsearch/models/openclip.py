"""open_clip adapter: resolves weights (cache first, fail fast offline) and embeds batches."""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Iterator, Sequence

import open_clip
import torch

from clipsearch.errors import BadInputError, ModelLoadError, UnknownModelError
from clipsearch.models import (
    HF_HUB_PREFIX,
    LOCAL_DIR_PREFIX,
    ModelSpec,
    closest,
    hub,
    register_backend,
)
from clipsearch.models.base import Embedder

_PREPROCESS_KEYS = {
    "mean": "image_mean", "std": "image_std",
    "interpolation": "image_interpolation", "resize_mode": "image_resize_mode",
}


class OpenClipEmbedder(Embedder):
    def __init__(self, spec, device, model, preprocess, tokenizer, precision: str = "fp32") -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.precision = precision
        self._dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision, torch.float32)
        # A causal text tower pooled at the end-of-text token never lets a later (padding) token
        # reach the pooled output, so the padded 77-token context can be cut after the longest
        # real text: ~8x less text-tower work for short queries and tag prompts, same vectors.
        self.cuts_padding = (
            type(model) is open_clip.CLIP and getattr(model, "attn_mask", None) is not None
            and model.text_pool_type in ("argmax", "eos")
            and isinstance(tokenizer, open_clip.tokenizer.SimpleTokenizer)
        )
        size = model.visual.image_size
        super().__init__(spec, device, preprocess, max(size) if isinstance(size, tuple | list) else size)

    def _encode_images(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.model.encode_image(pixels.to(self._dtype))

    def _encode_texts(self, texts: Sequence[str]) -> torch.Tensor:
        tokens = self.tokenizer(list(texts)).to(self.device)
        if not self.cuts_padding:
            return self.model.encode_text(tokens)
        return encode_text_unpadded(self.model, tokens)


def _quantizable(model: torch.nn.Module) -> dict:
    """The Linear layers int8 can replace: all but a ResNet tower's attention pool, which hands
    its projections' weights and biases to multi_head_attention_forward itself (a quantised
    layer has no such tensors)."""
    from open_clip.modified_resnet import AttentionPool2d

    pooled = {f"{name}.{child}" for name, m in model.named_modules() if isinstance(m, AttentionPool2d)
              for child, _ in m.named_children()}
    qconfig = torch.ao.quantization.default_dynamic_qconfig
    return {name: qconfig for name, m in model.named_modules()
            if type(m) is torch.nn.Linear and name not in pooled}  # as the type set {Linear} matches


def encode_text_unpadded(model: open_clip.CLIP, tokens: torch.Tensor) -> torch.Tensor:
    """open_clip's CLIP.encode_text on tokens cut after the last end-of-text token.

    Only for causal text towers pooled at the end-of-text token (the caller checks): every
    position up to it then sees exactly what it sees in the full-length pass.
    """
    if model.text_pool_type == "argmax":  # the end-of-text token has the highest id
        ends = tokens.argmax(dim=-1)
    else:
        ends = (tokens == model.text_eos_id).int().argmax(dim=-1)
    return encode_tokens(model, tokens[:, :int(ends.max()) + 1])


def encode_tokens(model: open_clip.CLIP, text: torch.Tensor) -> torch.Tensor:
    """encode_text for tokens of any length up to the context (no padding needed): the graph
    that is exported to ONNX for torch-free queries (clipsearch.models.export)."""
    n = text.shape[1]
    cast_dtype = model.transformer.get_cast_dtype()
    x = model.token_embedding(text).to(cast_dtype) + model.positional_embedding[:n].to(cast_dtype)
    x = model.transformer(x, attn_mask=model.attn_mask[:n, :n])
    x = model.ln_final(x)
    x = open_clip.transformer.text_global_pool(x, text, model.text_pool_type,
                                               eos_token_id=getattr(model, "text_eos_id", None))
    if model.text_projection is None:
        return x
    if isinstance(model.text_projection, torch.nn.Linear):
        return model.text_projection(x)
    return x @ model.text_projection


def _require_hub(spec: ModelSpec, url: str) -> None:
    hub.require_hub(
        f"model {spec.describe()}", url,
        "pass a local checkpoint with --pretrained /path/to/file "
        "(or --model local-dir:/path/to/folder)",
    )


def _weights_names(filename: str) -> list[str]:
    stem, ext = os.path.splitext(filename)
    names = [filename]
    if ext in (".bin", ".pth", ".pt"):
        names.insert(0, stem.replace("pytorch_model", "model") + ".safetensors")
        names.insert(0, stem + ".safetensors")
    return names


def _resolve(spec: ModelSpec) -> tuple[str, str | None, dict]:
    """(model_name, pretrained, preprocess overrides) for open_clip, reading caches before any network.

    When the weights are cached they are passed to open_clip as local files, so a cached model
    loads with no network at all; when they are not, the hub is probed first so that an offline
    machine fails in seconds instead of retrying for a minute.
    """
    if spec.name.startswith(LOCAL_DIR_PREFIX) or spec.weights_path:
        return spec.name, spec.pretrained, {}
    if spec.name.startswith(HF_HUB_PREFIX):
        repo = spec.name[len(HF_HUB_PREFIX):]
        config = hub.cached_hf_file(repo, ["open_clip_config.json"])
        weights = hub.cached_hf_file(repo, _weights_names("open_clip_pytorch_model.bin"))
        if config and weights and os.path.dirname(config) == os.path.dirname(weights):
            return LOCAL_DIR_PREFIX + os.path.dirname(config), None, {}
        _require_hub(spec, hub.hf_endpoint())
        return spec.name, None, {}
    cfg = open_clip.get_pretrained_cfg(spec.name, spec.pretrained or "")
    overrides = {arg: cfg[key] for key, arg in _PREPROCESS_KEYS.items() if cfg.get(key) is not None}
    if cfg.get("hf_hub"):
        repo, _, filename = cfg["hf_hub"].partition("/")
        local = hub.cached_hf_file(repo, _weights_names(filename or "open_clip_pytorch_model.bin"))
        if local:
            return spec.name, local, overrides
        _require_hub(spec, hub.hf_endpoint())
    elif cfg.get("url"):
        local = os.path.join(os.path.expanduser("~/.cache/clip"), os.path.basename(cfg["url"]))
        if os.path.isfile(local):
            return spec.name, local, overrides
        _require_hub(spec, cfg["url"])
    return spec.name, spec.pretrained, {}


_INIT_FUNCTIONS = ("uniform_", "normal_", "trunc_normal_", "constant_", "zeros_", "ones_", "eye_",
                   "xavier_uniform_", "xavier_normal_", "kaiming_uniform_", "kaiming_normal_",
                   "orthogonal_")


@contextlib.contextmanager
def _loading_only_once() -> Iterator[None]:
    """Build the model without the work the checkpoint undoes at once.

    - torch.nn.init is skipped: every weight is overwritten by the checkpoint (open_clip loads it
      strictly, so a missing one is an error, never left random), and drawing 150M random numbers
      cost a second of every search's start-up.
    - The checkpoint's tensors become the weights (load_state_dict(assign=True)) instead of being
      copied into them, so the weights are never in memory twice (ViT-B-32: 600 MB less at peak).
    """
    # nn.MultiheadAttention calls the init functions it imported by name
    modules = (torch.nn.init, torch.nn.modules.activation)
    saved = [(m, name, getattr(m, name)) for m in modules for name in _INIT_FUNCTIONS if hasattr(m, name)]
    load_state_dict = torch.nn.Module.load_state_dict

    def assigning(self, state_dict, strict=True, assign=False):
        return load_state_dict(self, state_dict, strict=strict, assign=True)

    for module, name, _ in saved:
        setattr(module, name, lambda tensor, *args, **kwargs: tensor)
    torch.nn.Module.load_state_dict = assigning
    try:
        yield
    finally:
        torch.nn.Module.load_state_dict = load_state_dict
        for module, name, function in saved:
            setattr(module, name, function)


@register_backend("open_clip")
class OpenClipBackend:
    def validate(self, spec: ModelSpec) -> None:
        if spec.name.startswith((HF_HUB_PREFIX, LOCAL_DIR_PREFIX)):
            return
        models = open_clip.list_models()
        if spec.name not in models:
            raise UnknownModelError(
                f"unknown model {spec.name!r}; close matches: {closest(spec.name, models)} "
                "(all names: python -c 'import open_clip; print(open_clip.list_models())')"
            )
        if spec.weights_path:
            return
        tags = open_clip.list_pretrained_tags_by_model(spec.name)
        if not spec.pretrained:
            raise UnknownModelError(
                f"--model {spec.name} needs --pretrained: one of {', '.join(tags) or '(none published)'}"
                ", or a checkpoint file path (random weights would make search meaningless)"
            )
        if spec.pretrained not in tags:
            raise UnknownModelError(
                f"unknown pretrained tag {spec.pretrained!r} for {spec.name}; choose one of: "
                f"{', '.join(tags) or '(none published)'}, or give a checkpoint file path"
            )

    def load(self, spec: ModelSpec, device: str, precision: str = "fp32") -> OpenClipEmbedder:
        name, pretrained, overrides = _resolve(spec)
        try:
            with _loading_only_once():
                model, _, preprocess = open_clip.create_model_and_transforms(
                    name, pretrained=pretrained, device=device, weights_only=True, **overrides
                )
            model = model.to(device)  # assigned weights arrive where the checkpoint was read to
            tokenizer = open_clip.get_tokenizer(name)
        except BadInputError:
            raise
        except Exception as exc:
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            if "weights_only" in str(exc) or "Unpickl" in type(exc).__name__:
                reason = ("it holds pickled Python objects, not only tensors, and is refused for "
                          "safety; convert it to .safetensors")
            raise ModelLoadError(f"cannot load model {spec.describe()}: {reason[:300]}") from exc
        model.eval()
        if precision in ("bf16", "fp16"):
            model = model.to(torch.bfloat16 if precision == "bf16" else torch.float16)
        elif precision == "int8":
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # torch points eager quantisation users at torchao
                model = torch.ao.quantization.quantize_dynamic(model, _quantizable(model), dtype=torch.qint8)
            for module in model.modules():  # open_clip reads the activations' dtype off a weight
                if isinstance(module, torch.ao.nn.quantized.dynamic.Linear):
                    module.int8_original_dtype = torch.float32
        return OpenClipEmbedder(spec, device, model, preprocess, tokenizer, precision)
