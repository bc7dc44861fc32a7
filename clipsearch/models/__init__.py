"""Model registry and model specs; the adapters (openclip.py, blip.py, captioner.py) and the
text tower's ONNX export (export.py makes it, onnxtext.py runs it with the BPE tokenizer of
bpe.py, exportjob.py makes it in a process of its own): the only place heavy ML imports happen.

This module imports no heavy library: backends import torch / open_clip / transformers inside
their own modules, which load only when a model is validated or loaded. May import store/ (where
an export's failure is remembered) and the ground floor.
"""

from __future__ import annotations

import difflib
import hashlib
import importlib
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Protocol

from clipsearch.errors import BadInputError, ModelLoadError, ModelMismatchError, UnknownModelError

if TYPE_CHECKING:
    from clipsearch.models.base import Embedder

HF_HUB_PREFIX = "hf-hub:"
LOCAL_DIR_PREFIX = "local-dir:"
CHECKPOINT_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin", ".ckpt", ".npz")


@dataclass(frozen=True)
class ModelSpec:
    """Which embedding model an index uses. Two specs name the same model when `same_model`."""

    name: str  # a model name, or 'hf-hub:org/repo', or 'local-dir:/abs/folder'
    pretrained: str | None = None  # a pretrained tag, or an absolute checkpoint file path
    backend: str = "open_clip"
    weights_sha256: str | None = None  # identity of local weights (file or local-dir)

    @property
    def weights_path(self) -> str | None:
        """The local file holding the weights, for checkpoint-file and local-dir specs."""
        if self.pretrained and os.path.isabs(self.pretrained):
            return self.pretrained
        if self.name.startswith(LOCAL_DIR_PREFIX):
            return find_checkpoint_in_dir(self.name[len(LOCAL_DIR_PREFIX):])
        return None

    def describe(self) -> str:
        return f"{self.name} ({self.pretrained})" if self.pretrained else self.name

    def same_model(self, other: ModelSpec) -> bool:
        if self.backend != other.backend:
            return False
        if self.weights_sha256 or other.weights_sha256:
            # local weights are identified by content, so a moved checkpoint file still matches
            return self.weights_sha256 == other.weights_sha256
        return (self.name, self.pretrained) == (other.name, other.pretrained)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> ModelSpec:
        return cls(**{k: data.get(k) for k in ("name", "pretrained", "weights_sha256")},
                   backend=data.get("backend", "open_clip"))


class Backend(Protocol):
    def validate(self, spec: ModelSpec) -> None: ...

    def load(self, spec: ModelSpec, device: str, precision: str = "fp32") -> Embedder: ...


_BACKENDS: dict[str, Callable[[], Backend]] = {}
_BUILTIN = {"open_clip": "clipsearch.models.openclip"}


def register_backend(name: str) -> Callable[[Callable[[], Backend]], Callable[[], Backend]]:
    """Register a backend factory under `name` (used as a decorator)."""

    def wrap(factory: Callable[[], Backend]) -> Callable[[], Backend]:
        _BACKENDS[name] = factory
        return factory

    return wrap


def list_backends() -> list[str]:
    return sorted(set(_BACKENDS) | set(_BUILTIN))


def get_backend(name: str) -> Backend:
    if name not in _BACKENDS and name in _BUILTIN:
        importlib.import_module(_BUILTIN[name])
    if name not in _BACKENDS:
        raise UnknownModelError(
            f"unknown model backend {name!r}; choose one of: {', '.join(list_backends())}"
        )
    return _BACKENDS[name]()


def closest(word: str, choices: Sequence[str], n: int = 5) -> str:
    near = difflib.get_close_matches(word, choices, n=n, cutoff=0.4)
    return ", ".join(near or list(choices)[:n])


def find_checkpoint_in_dir(folder: str) -> str | None:
    for name in ("open_clip_model.safetensors", "open_clip_pytorch_model.bin"):
        if os.path.isfile(os.path.join(folder, name)):
            return os.path.join(folder, name)
    return None


def file_sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def _looks_like_path(value: str) -> bool:
    return (os.sep in value or value.startswith((".", "~"))
            or value.lower().endswith(CHECKPOINT_SUFFIXES) or os.path.exists(value))


def parse_model_spec(model: str, pretrained: str | None = None, backend: str = "open_clip") -> ModelSpec:
    """The one place a user's --model / --pretrained pair becomes a ModelSpec.

    `model` is a model name, 'hf-hub:org/repo' or 'local-dir:/folder' (the last two carry their
    own weights, so `pretrained` must be empty); `pretrained` is a tag or a checkpoint file path.
    """
    model = model.strip()
    if not model:
        raise BadInputError("--model is empty; give a model name such as ViT-B-32")
    weights_sha = None
    if model.startswith((HF_HUB_PREFIX, LOCAL_DIR_PREFIX)):
        if pretrained:
            raise BadInputError(
                f"--pretrained {pretrained!r} cannot be combined with --model {model}: "
                "that model carries its own weights"
            )
        pretrained = None
        if model.startswith(LOCAL_DIR_PREFIX):
            folder = os.path.abspath(os.path.expanduser(model[len(LOCAL_DIR_PREFIX):]))
            if not os.path.isfile(os.path.join(folder, "open_clip_config.json")):
                raise BadInputError(
                    f"--model {model}: {folder} has no open_clip_config.json; point local-dir: at a "
                    "folder saved in open_clip's hub layout"
                )
            model = LOCAL_DIR_PREFIX + folder
            weights = find_checkpoint_in_dir(folder)
            if weights is None:
                raise BadInputError(
                    f"--model {model}: no open_clip_model.safetensors or "
                    "open_clip_pytorch_model.bin in that folder"
                )
            weights_sha = file_sha256(weights)
    elif pretrained and _looks_like_path(pretrained):
        path = os.path.abspath(os.path.expanduser(pretrained))
        if not os.path.isfile(path):
            raise BadInputError(f"--pretrained: checkpoint file not found: {path}")
        pretrained = path
        weights_sha = file_sha256(path)
    spec = ModelSpec(model, pretrained or None, backend, weights_sha)
    get_backend(backend).validate(spec)
    return spec


def check_weights_unchanged(spec: ModelSpec, recorded_stat: Sequence[int] | None) -> None:
    """Refuse to search with local weights that changed since the index was built.

    Re-hashing a large checkpoint costs a second, so it happens only when size or mtime moved.
    """
    path = spec.weights_path
    if path is None or spec.weights_sha256 is None:
        return
    try:
        st = os.stat(path)
    except OSError:
        raise ModelLoadError(
            f"the index's model weights are missing: {path}; restore that file, or re-index with "
            "--pretrained pointing at its new location"
        ) from None
    if recorded_stat and [st.st_size, st.st_mtime_ns] == list(recorded_stat):
        return
    if file_sha256(path) != spec.weights_sha256:
        raise ModelMismatchError(
            f"the checkpoint {path} changed since this index was built; restore the original, or "
            "index into a new --db with the new weights"
        )


def weights_stat(spec: ModelSpec) -> list[int] | None:
    path = spec.weights_path
    if path is None:
        return None
    st = os.stat(path)
    return [st.st_size, st.st_mtime_ns]


def resolve_device(device: str) -> str:
    device = (device or "auto").lower()
    if device not in ("auto", "cpu", "cuda", "mps") and not device.startswith("cuda:"):
        raise BadInputError(f"--device {device!r} is not one of: auto, cpu, cuda, cuda:N, mps")
    import torch

    if device == "auto":
        if torch.cuda.is_available():
            return "cuda"
        mps = getattr(torch.backends, "mps", None)
        return "mps" if mps is not None and mps.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise BadInputError(f"--device {device}: no CUDA GPU is available here; use --device cpu")
    if device == "mps" and not torch.backends.mps.is_available():
        raise BadInputError("--device mps: Apple's Metal backend is not available here; use --device cpu")
    return device


PRECISIONS = ("fp32", "bf16", "fp16", "int8")


def resolve_precision(precision: str | None, device: str, flag: str = "--precision",
                      choices: Sequence[str] = PRECISIONS, auto: str = "fp32") -> str:
    """Check a precision against what `device` can run; `auto` stands for the caller's choice."""
    precision = (precision or "auto").lower()
    if precision == "auto":
        return auto
    if precision not in choices:
        raise BadInputError(f"{flag} {precision!r} is not one of: {', '.join(choices)}")
    kind = device.split(":")[0]
    if precision == "int8" and kind != "cpu":
        gpu = " or ".join(p for p in ("fp16", "bf16") if p in choices)
        raise BadInputError(f"{flag} int8 is for CPUs; use {gpu} on a GPU")
    if precision == "fp16" and kind == "cpu":
        raise BadInputError(f"{flag} fp16 is for GPUs; on a CPU use bf16 (fast where it has native bf16)")
    return precision


def native_bf16() -> bool:
    """Whether this CPU multiplies bf16 in hardware (AMX or AVX512-BF16), which makes it ~2-3x
    faster than fp32 here; elsewhere bf16 is emulated and slower."""
    import torch

    checks = [getattr(torch.cpu, n, None) for n in ("_is_amx_tile_supported", "_is_avx512_bf16_supported")]
    return any(check() for check in checks if check is not None)


def auto_precision(device: str) -> str:
    """What `auto` means on `device`: fp16 on CUDA, bf16 on a CPU with native bf16, else fp32.
    `clipsearch eval` measured no recall lost to bf16 (docs/guides/eval.md)."""
    kind = device.split(":")[0]
    if kind == "cuda":
        return "fp16"
    return "bf16" if kind == "cpu" and native_bf16() else "fp32"


def load_embedder(spec: ModelSpec, device: str = "auto", precision: str = "fp32") -> Embedder:
    """The embedding model for `spec` on `device`, its weights in `precision` (fp32 gives
    open_clip's own vectors exactly; bf16, fp16 and int8 trade a little accuracy for speed;
    auto picks per device, see auto_precision)."""
    device = resolve_device(device)
    chosen = resolve_precision(precision, device, auto=auto_precision(device))
    return get_backend(spec.backend).load(spec, device, chosen)
