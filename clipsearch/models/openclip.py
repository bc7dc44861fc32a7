"""open_clip adapter: resolves weights (cache first, fail fast offline) and embeds batches."""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import sys
import warnings
from collections.abc import Iterator, Sequence

import torch

from clipsearch.errors import BadInputError, ModelLoadError, UnknownModelError
from clipsearch.imports import kept_out
from clipsearch.models import (
    HF_HUB_PREFIX,
    LOCAL_DIR_PREFIX,
    ModelSpec,
    closest,
    hub,
    register_backend,
)
from clipsearch.models.base import Embedder

# open_clip imports timm and transformers, when they are installed, for the few models whose towers
# they build (timm image towers, Hugging Face text towers): 0.8 s and 55 MB of every process that
# loads a CLIP model. They are kept out while open_clip is imported and brought in for a model that
# needs them (_bring_in), or that may: one whose config cannot be read before it loads.
_OPTIONAL = {"timm_model": ("timm", "TimmModel"), "hf_model": ("transformers", "HFTextEncoder")}


def _import_open_clip():
    if "open_clip" not in sys.modules:
        with kept_out(library for library, _tower in _OPTIONAL.values()):
            importlib.import_module("open_clip")
    return sys.modules["open_clip"]


open_clip = _import_open_clip()


def _model_config(name: str) -> dict | None:
    """The open_clip config of a model name, read without building it; None if unknown here."""
    if name.startswith(LOCAL_DIR_PREFIX):
        try:
            path = os.path.join(name[len(LOCAL_DIR_PREFIX):], "open_clip_config.json")
            with open(path, encoding="utf-8") as f:
                return json.load(f).get("model_cfg")
        except (OSError, ValueError, AttributeError):
            return None
    if name.startswith(HF_HUB_PREFIX):
        return None
    return open_clip.get_model_config(name)


def _bring_in(name: str) -> None:
    """Import the libraries this model's towers are built with, if open_clip was imported
    without them: their open_clip modules are run again, now that the import can succeed."""
    cfg = _model_config(name)
    vision, text = ((cfg or {}).get("vision_cfg") or {}), ((cfg or {}).get("text_cfg") or {})
    needed = {"timm_model": cfg is None or bool(vision.get("timm_model_name")),
              "hf_model": cfg is None or bool(text.get("hf_model_name") or text.get("hf_tokenizer_name"))}
    for module_name, (library, tower) in _OPTIONAL.items():
        module = importlib.import_module(f"open_clip.{module_name}")
        if needed[module_name] and getattr(module, library) is None:
            importlib.reload(module)
            # open_clip.model imported the tower's class by name: hand it the one just defined
            setattr(open_clip.model, tower, getattr(module, tower))

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

    def drop_text_tower(self) -> None:
        # everything but the image tower and the logit scale is the text side, whatever the
        # model's class calls it (CLIP's transformer and embeddings, CustomTextCLIP's `text`)
        model = self.model
        for name, _child in list(model.named_children()):
            if name != "visual":
                delattr(model, name)
        for name, _param in list(model.named_parameters(recurse=False)):
            if name not in ("logit_scale", "logit_bias"):
                delattr(model, name)
        self.has_text = False
        _give_back_freed_memory()

    def _encode_texts(self, texts: Sequence[str]) -> torch.Tensor:
        tokens = self.tokenizer(list(texts)).to(self.device)
        if not self.cuts_padding:
            return self.model.encode_text(tokens)
        return encode_text_unpadded(self.model, tokens)


def _give_back_freed_memory() -> None:
    """Return the heap's free pages to the system (glibc's malloc_trim). Freed weights otherwise
    stay in the main thread's heap, where the decode threads, which allocate from heaps of their
    own, cannot reuse them."""
    import ctypes

    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).malloc_trim(0)


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
def _loading_only_once(dtype: torch.dtype = torch.float32) -> Iterator[None]:
    """Build the model without the work the checkpoint undoes at once.

    - torch.nn.init is skipped: every weight is overwritten by the checkpoint (open_clip loads it
      strictly, so a missing one is an error, never left random), and drawing 150M random numbers
      cost a second of every search's start-up.
    - The checkpoint's tensors become the weights (load_state_dict(assign=True)) instead of being
      copied into them, so the weights are never in memory twice (ViT-B-32: 600 MB less at peak).
    - For bf16 or fp16 (`dtype`), a .safetensors checkpoint is read a tensor at a time and each
      converted as it is read (_read_converted), rather than mapped whole and the model converted
      once loaded: the fp32 weights are never all in memory beside the converted ones (ViT-B-32:
      the peak of a first `index` 550 MB lower). Whatever type a checkpoint stores (fp16 ones
      are common), the weights are assigned at `dtype`.
    """
    import safetensors.torch
    # nn.MultiheadAttention calls the init functions it imported by name
    modules = (torch.nn.init, torch.nn.modules.activation)
    saved = [(m, name, getattr(m, name)) for m in modules for name in _INIT_FUNCTIONS if hasattr(m, name)]
    load_state_dict = torch.nn.Module.load_state_dict

    def assigning(self, state_dict, strict=True, assign=False):
        # assigned tensors keep their stored type: an fp16 checkpoint must still run at `dtype`
        state_dict = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state_dict.items()}
        return load_state_dict(self, state_dict, strict=strict, assign=True)

    load_file = safetensors.torch.load_file

    def converting(filename, device="cpu"):
        return _read_converted(filename, dtype) if str(device) == "cpu" else load_file(filename, device)

    for module, name, _ in saved:
        setattr(module, name, lambda tensor, *args, **kwargs: tensor)
    torch.nn.Module.load_state_dict = assigning
    if dtype != torch.float32:  # open_clip imports load_file when it reads a checkpoint
        safetensors.torch.load_file = converting
    try:
        yield
    finally:
        safetensors.torch.load_file = load_file
        torch.nn.Module.load_state_dict = load_state_dict
        for module, name, function in saved:
            setattr(module, name, function)


_SAFETENSORS_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool,
}


def _read_converted(path: str, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """The tensors of a .safetensors file (its documented layout: an 8-byte little-endian header
    length, a JSON header of names, dtypes, shapes and data offsets, then the data), floating
    ones converted to `dtype` as each is read, so that at most one is ever in memory in its stored
    type. safetensors.torch.load_file maps the file instead, whose touched pages then count
    against the process until the last tensor is converted."""
    import json
    import struct

    with open(path, "rb") as f:
        (length,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(length))
        start = 8 + length
        out = {}
        for name, info in header.items():
            if name == "__metadata__":
                continue
            begin, end = info["data_offsets"]
            stored = _SAFETENSORS_DTYPES[info["dtype"]]
            raw = torch.empty(end - begin, dtype=torch.uint8)
            f.seek(start + begin)
            if f.readinto(raw.numpy()) != end - begin:
                raise ValueError(f"{path} is cut short: {name} lies past its end")
            tensor = raw.view(stored).reshape(info["shape"])
            out[name] = tensor.to(dtype) if tensor.is_floating_point() else tensor
    return out


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
        _bring_in(name)
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision, torch.float32)
        try:
            with _loading_only_once(dtype):
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
        _give_back_freed_memory()  # what reading and converting the weights let go
        return OpenClipEmbedder(spec, device, model, preprocess, tokenizer, precision)
