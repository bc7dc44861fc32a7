"""Exporting the CLIP text tower to ONNX, so that a query runs without torch
(clipsearch.models.onnxtext runs it).

The exported graph is `encode_tokens`, the same function the torch path runs on tokens cut after
their last end-of-text token, with the batch and the length left free. The tokenizer's merge list
and settings are saved beside it (clipsearch.models.bpe). Before the export is kept, it must match the
torch path on a set of varied texts: the same token ids, and unit vectors within 1e-5.
"""

from __future__ import annotations

import json
import os
import shutil
import warnings
from pathlib import Path

import numpy as np
import torch

from clipsearch.models.bpe import CLEANERS, Tokenizer
from clipsearch.models.openclip import OpenClipEmbedder, encode_tokens, open_clip

TOLERANCE = 1e-5
# Texts the export is checked on: plain, long (cut at the context), empty, accented, CJK, emoji,
# punctuation, HTML entities, mojibake, special-token lookalikes.
CHECK_TEXTS = [
    "a red car", "A photo of a DOG running on the beach at sunset!", "", "   ", "naïve café",
    "日本の桜", "🐶🚗✨ party", "it's we're they've", "&amp; &lt;b&gt;", "Ã©tÃ©", "x" * 400,
    "word " * 90, "<end_of_text> inside", "3.14159 and 1,000,000", "snake_case kebab-case",
    '"beach" + "sunset"', "tab\there\nnewline", "ALL CAPS SHOUTING", "ß Ω ≈ ç √",
]


class NotExportable(Exception):
    """This model's text tower or tokenizer is not one the torch-free path reproduces."""


def _tokenizer_of(embedder: OpenClipEmbedder) -> Tokenizer:
    if not isinstance(embedder, OpenClipEmbedder):
        raise NotExportable(f"its embedder ({type(embedder).__name__}) is not an open_clip model")
    tok = embedder.tokenizer
    if not embedder.cuts_padding:
        raise NotExportable("its text tower is not a causal one pooled at the end-of-text token")
    if not isinstance(tok, open_clip.tokenizer.SimpleTokenizer) or tok.reduction_fn is not None:
        raise NotExportable(f"its tokenizer ({type(tok).__name__}) is not CLIP's plain BPE tokenizer")
    clean = tok.clean_fn.__name__.removeprefix("_clean_")
    if clean not in CLEANERS:
        raise NotExportable(f"its tokenizer cleans text in an unknown way ({clean})")
    merges = sorted(tok.bpe_ranks, key=tok.bpe_ranks.__getitem__)
    return Tokenizer(merges, [tok.decoder[i] for i in tok.all_special_ids], tok.context_length, clean)


class _TextTower(torch.nn.Module):
    def __init__(self, model: open_clip.CLIP) -> None:
        super().__init__()
        self.model = model

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return encode_tokens(self.model, tokens)


def export(embedder: OpenClipEmbedder, folder: Path) -> dict:
    """Write the exported text encoder into `folder` (made whole or not at all) and return what
    its check measured; NotExportable when the model is one the export cannot reproduce."""
    from clipsearch.models.onnxtext import MODEL, REPORT, OnnxTextEncoder

    tokenizer = _tokenizer_of(embedder)
    if embedder.precision != "fp32" or embedder.device != "cpu":
        raise ValueError("export from the fp32 model on the CPU")
    folder = Path(folder)
    work = folder.with_name(f".{folder.name}.{os.getpid()}.tmp")
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    try:
        example = torch.from_numpy(tokenizer(["a photo of a dog", "a car"])[:, :8])
        length = torch.export.Dim("length", min=2, max=tokenizer.context_length)
        with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
            warnings.simplefilter("ignore")  # the exporter's notes on its own internals
            torch.onnx.export(_TextTower(embedder.model).eval(), (example,), str(work / MODEL),
                              input_names=["tokens"], output_names=["features"], opset_version=18,
                              dynamo=True, external_data=True, verbose=False,
                              dynamic_shapes=({0: torch.export.Dim("batch"), 1: length},))
        tokenizer.save(work)
        (work / REPORT).write_text(json.dumps({"pool": embedder.model.text_pool_type}))
        report = {"pool": embedder.model.text_pool_type, **_check(embedder, tokenizer, OnnxTextEncoder(work))}
        (work / REPORT).write_text(json.dumps(report, indent=2))
        from clipsearch.store import derived

        for path in sorted(work.iterdir()):  # checksums of what was checked, for `clipsearch check`
            derived.record_sum(path)
        try:
            work.rename(folder)
        except OSError:  # another process finished the same export first: keep theirs
            shutil.rmtree(work, ignore_errors=True)
        return report
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise


def size_estimate(embedder: OpenClipEmbedder) -> int:
    """About the bytes an export of this model's text tower takes: its fp32 weights, the
    tokenizer and a margin."""
    text = sum(p.numel() for name, p in embedder.model.named_parameters() if not name.startswith("visual."))
    return int(text * 4 * 1.02) + 4_000_000


def _check(embedder: OpenClipEmbedder, tokenizer: Tokenizer, encoder) -> dict:
    ours, theirs = tokenizer(CHECK_TEXTS), embedder.tokenizer(CHECK_TEXTS).numpy()
    if not np.array_equal(ours, theirs):
        raise NotExportable("its tokenizer could not be reproduced without open_clip")
    difference = float(np.abs(encoder.embed_texts(CHECK_TEXTS) - embedder.embed_texts(CHECK_TEXTS)).max())
    if not difference <= TOLERANCE:
        raise NotExportable(f"the exported encoder is {difference:.1e} off the torch one (over {TOLERANCE})")
    return {"texts": len(CHECK_TEXTS), "max_abs_difference": difference, "tolerance": TOLERANCE,
            "torch": torch.__version__}
