"""The vectors clipsearch stores and queries with are exactly open_clip's own."""

from __future__ import annotations

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
    np.testing.assert_allclose(got, expected, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)


@pytest.mark.parametrize("query", ["a cat", "kids building a sandcastle on a sunny beach", "ß 東京 🚀"])
def test_text_query_vector_equals_open_clip_reference(embedder, sample_index, query):
    index = open_index(sample_index, embedder=embedder)
    got = embedder.embed_texts([query])[0]
    np.testing.assert_allclose(got, reference_text_vector(embedder, query), atol=1e-5)
    # and the search scores are the cosines with exactly those vectors
    stored = stored_vectors(sample_index)
    for hit in index.search(query, k=5):
        assert hit.score == pytest.approx(float(stored[hit.path] @ got), abs=1e-5)


def test_embedding_texts_in_batches_matches_one_by_one(embedder):
    texts = [f"photo number {i}" for i in range(7)]
    together = embedder.embed_texts(texts, batch_size=3)
    alone = np.stack([embedder.embed_texts([t])[0] for t in texts])
    np.testing.assert_allclose(together, alone, atol=1e-5)
