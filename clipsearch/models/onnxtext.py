"""Query texts to vectors with the exported text tower, run by onnxruntime: no torch, no
open_clip. Made by clipsearch.models.export, once per model for all of a user's indexes, in
`exports/text-<model key>/` of the cache folder (clipsearch.config.cache_dir); the key is the
weights' identity (the model's name and tag, or the checksum of local weights), so two indexes of
one model share one export (about 244 MB for ViT-B-32) and the second index needs none made. A
model whose export failed leaves `text-<key>.unsupported` there with the reason, so it is not
tried again. Older releases kept an export inside each index (`fast/text-<key>/`): `adopt`
moves it to the shared place.

Once an index has an export, every query on it uses it (the fast path, the full path and the
server alike), so their results are the same to the last bit.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from clipsearch import config
from clipsearch.models.bpe import Tokenizer

FORMAT = 1  # of the export: a new one makes every index export again
MODEL = "text.onnx"
REPORT = "export.json"


def exports() -> Path:
    """The folder of every export of this user."""
    return config.cache_folder(config.EXPORTS)


def folder(model: dict) -> Path:
    """Where the export for a model (an index's manifest's model spec) lives."""
    identity = {"format": FORMAT, **{k: model.get(k) for k in ("name", "pretrained", "weights_sha256")}}
    key = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]
    return exports() / f"text-{key}"


def unsupported(model: dict) -> str | None:
    """Why the export of this model failed before, or None."""
    marker = folder(model).with_suffix(".unsupported")
    try:
        return marker.read_text(encoding="utf-8").strip() or "unsupported"
    except OSError:
        return None


def mark_unsupported(model: dict, reason: str) -> None:
    marker = folder(model).with_suffix(".unsupported")
    try:
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text(reason + "\n", encoding="utf-8")
    except OSError:
        pass  # a read-only cache: tried again next time, which costs only time


def exported(model: dict) -> bool:
    found = folder(model)
    return (found / REPORT).is_file() and (found / MODEL).is_file()


def adopt(db: Path, model: dict) -> None:
    """Move the export an older release made inside the index at `db` to the shared place
    (unless that has one already), and remove what else those releases kept there. The caller
    holds the model's export lock (clipsearch.models.exportjob.exporting)."""
    old = Path(db) / "fast"
    mine = old / folder(model).name
    if (mine / REPORT).is_file() and not exported(model):
        work = folder(model).with_name(f".{folder(model).name}.{os.getpid()}.tmp")
        try:
            work.parent.mkdir(parents=True, exist_ok=True)
            shutil.rmtree(work, ignore_errors=True)
            shutil.copytree(mine, work)  # another file system, often: copied whole, then renamed in
            work.rename(folder(model))
        except OSError:
            shutil.rmtree(work, ignore_errors=True)
            return  # kept where it is: the full path answers until an export is made
    if old.is_dir():
        for stale in old.iterdir():
            if stale.name.startswith(("text-", ".text-", "export.")):
                if stale.is_dir():
                    shutil.rmtree(stale, ignore_errors=True)
                else:
                    stale.unlink(missing_ok=True)


class OnnxTextEncoder:
    """Unit vectors of texts, as the torch path computes them: token ids cut after the last
    end-of-text token of the batch, the tower, then L2 normalisation."""

    def __init__(self, path: Path) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        options.log_severity_level = 3
        # Re-laying the weights out for faster matrix products ("prepacking") would take 0.1 s of
        # the 0.13 s that opening ViT-B-32's tower costs a one-off query, to save 4.5 ms a query
        # (9 -> 4.5 ms). It also changes the last bits of the vectors, so every process must do
        # the same: none does, and a search prints the same whichever process answers it.
        options.add_session_config_entry("session.disable_prepacking", "1")
        self.folder = Path(path)
        self.session = ort.InferenceSession(str(Path(path) / MODEL), options,
                                            providers=["CPUExecutionProvider"])
        self.tokenizer = Tokenizer.load(path)
        self.pool = json.loads((Path(path) / REPORT).read_text())["pool"]
        self.dim = int(self.session.get_outputs()[0].shape[-1])

    def embed_texts(self, texts: Sequence[str], batch_size: int = 256) -> np.ndarray:
        out = []
        for start in range(0, len(texts), batch_size):
            tokens = self.tokenizer(texts[start:start + batch_size])
            # the end-of-text token the tower pools at: the highest id, or the first end token
            ends = (tokens.argmax(axis=1) if self.pool == "argmax"
                    else (tokens == self.tokenizer.eot).argmax(axis=1))
            features = self.session.run(None, {"tokens": tokens[:, :int(ends.max()) + 1]})[0]
            vectors = normalized(features)
            # damaged weights (bit rot, a bad copy) give NaN, inf or zero vectors: never search
            # with those, which would answer "no matching images" as if that were true
            lengths = np.linalg.norm(vectors, axis=-1)
            if not (np.isfinite(vectors).all() and np.allclose(lengths, 1, atol=1e-3)):
                raise DamagedExport(f"the exported text encoder in {self.folder} gives invalid vectors")
            out.append(vectors)
        return np.concatenate(out) if out else np.zeros((0, self.dim), np.float32)


class DamagedExport(RuntimeError):
    """The export loads but computes garbage: its files are damaged."""


def normalized(features: np.ndarray) -> np.ndarray:
    with np.errstate(all="ignore"):  # garbage in is caught by the caller, without numpy's warnings
        norms = np.linalg.norm(features.astype(np.float32), axis=-1, keepdims=True)
        return (features / np.maximum(norms, 1e-12)).astype(np.float32)


def open_for(model: dict) -> OnnxTextEncoder | None:
    """The model's exported encoder, or None (none yet, or it does not load)."""
    if not exported(model):
        return None
    try:
        return OnnxTextEncoder(folder(model))
    except Exception:  # a damaged export: the torch path answers, and the next index run re-exports
        return None
