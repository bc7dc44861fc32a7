"""The vectors clipsearch stores and queries with are exactly open_clip's own."""

from __future__ import annotations

import margins
import numpy as np
import pytest
from conftest import sample_files
from helpers import reference_image_vectors, reference_text_vector, stored_vectors

from clipsearch import index_folders, open_index


@pytest.mark.parametrize(("batch_size", "workers"), [(1, 0), (4, 2), (32, 3)])
def test_index_vectors_equal_open_clip_reference(embedder, photos, tmp_path, batch_size, workers):
    db = tmp_path / "db"
    index_folders([photos], db, embedder=embedder, batch_size=batch_size, workers=workers)
    files = sample_files(photos)
    stored = stored_vectors(db)
    assert sorted(stored) == sorted(str(p) for p in files)
    expected = reference_image_vectors(embedder, files)
    got = np.stack([stored[str(p)] for p in files])
    margins.close(got, expected, 1e-5, "stored image vectors against open_clip's")
    margins.close(np.linalg.norm(got, axis=1), 1.0, 1e-5, "stored vectors' norms")


@pytest.mark.parametrize("query", ["a cat", "kids building a sandcastle on a sunny beach", "ß 東京 🚀"])
def test_text_query_vector_equals_open_clip_reference(embedder, sample_index, query):
    index = open_index(sample_index, embedder=embedder)
    got = embedder.embed_texts([query])[0]
    margins.close(got, reference_text_vector(embedder, query), 1e-5, "query vectors against open_clip's")
    # and the search scores are the cosines with exactly those vectors
    stored = stored_vectors(sample_index)
    for hit in index.search(query, k=5):
        assert hit.score == pytest.approx(float(stored[hit.path] @ got), abs=1e-5)


def test_embedding_texts_in_batches_matches_one_by_one(embedder):
    texts = [f"photo number {i}" for i in range(7)]
    together = embedder.embed_texts(texts, batch_size=3)
    alone = np.stack([embedder.embed_texts([t])[0] for t in texts])
    margins.close(together, alone, 1e-5, "texts embedded in batches against one by one")


def test_text_vectors_cut_after_end_of_text_equal_the_full_context(embedder):
    """Texts are encoded without the padding after their end-of-text token; a causal tower
    pooled at that token must give the very vectors of the full 77-token pass."""
    import torch

    from clipsearch.models.openclip import encode_text_unpadded

    assert embedder.cuts_padding
    texts = ["a", "a photo of a dog.", "a close-up photo of a birthday party.",
             " ".join(["word"] * 100)]  # longer than the context: cut to 77 by the tokenizer
    tokens = embedder.tokenizer(texts)
    lengths = []
    hook = embedder.model.transformer.register_forward_pre_hook(
        lambda _module, args: lengths.append(args[0].shape[1]))
    try:
        with torch.inference_mode():
            full = embedder.model.encode_text(tokens)
            cut = encode_text_unpadded(embedder.model, tokens[:3])
            np.testing.assert_allclose(cut.numpy(), full[:3].numpy(), atol=1e-5)
            np.testing.assert_allclose(encode_text_unpadded(embedder.model, tokens).numpy(),
                                       full.numpy(), atol=1e-5)
    finally:
        hook.remove()
    # the longest short text: start + "a close - up photo of a birthday party ." + end = 12 tokens
    assert lengths == [77, 12, 77]
    got = embedder.embed_texts(texts)
    np.testing.assert_allclose(got, torch.nn.functional.normalize(full, dim=-1).numpy(), atol=1e-5)


def test_text_towers_pooled_elsewhere_keep_the_full_context(tiny_model, tmp_path):
    """A tower pooled at the last position would change if cut: it is run at full length."""
    import json

    import open_clip
    import torch
    from conftest import TINY_CFG

    from clipsearch.models.openclip import OpenClipEmbedder

    cfg = json.loads(json.dumps(TINY_CFG))
    cfg["text_cfg"]["pool_type"] = "last"
    (tmp_path / "tiny-last-pool.json").write_text(json.dumps(cfg))
    open_clip.add_model_config(tmp_path)
    model, _, preprocess = open_clip.create_model_and_transforms("tiny-last-pool")
    tokenizer = open_clip.get_tokenizer("tiny-last-pool")
    embedder = OpenClipEmbedder(None, "cpu", model.eval(), preprocess, tokenizer)
    assert not embedder.cuts_padding

    with torch.inference_mode():
        expected = torch.nn.functional.normalize(model.encode_text(embedder.tokenizer(["a dog"])), dim=-1)
    np.testing.assert_allclose(embedder.embed_texts(["a dog"]), expected.numpy(), atol=1e-6)
