"""A messy library (tests/corpus.py): every bad file is skipped with its one-line reason, every
odd but valid one is indexed correctly, the run completes with exit code 0, and a later run
keeps all of it."""

from __future__ import annotations

import io
import json
import os
import resource

import numpy as np
import pytest
from corpus import make_corpus, png_header_only
from helpers import row_paths, stored_vectors
from typer.testing import CliRunner

from clipsearch import index_folders
from clipsearch.cli.commands import app
from clipsearch.errors import UnreadableImageError
from clipsearch.media.images import MAX_ASPECT, decode


@pytest.fixture
def corpus(tmp_path):
    return make_corpus(tmp_path / "library", tmp_path / "outside")


def _expected(corpus):
    """(paths indexed, path -> reason words) for this process: root reads a mode-000 file."""
    ok, skipped = set(corpus.ok), dict(corpus.skipped)
    if os.geteuid() == 0:
        ok.add(corpus.unreadable)
    else:
        skipped[corpus.unreadable] = "permission denied; make the file readable"
    return ok, skipped


def test_every_bad_file_is_skipped_with_its_reason_and_the_rest_indexed(corpus, tmp_path, embedder):
    ok, skipped = _expected(corpus)
    assert len(ok) + len(skipped) >= 40 and len(skipped) >= 14

    found = []

    def delete_after_scan(progress):
        if progress.phase == "scan":
            found.append(progress.total)
            os.unlink(corpus.delete_after_scan)

    db = tmp_path / "db"
    summary = index_folders([corpus.root], db, embedder=embedder, workers=2, batch_size=4,
                            progress=delete_after_scan)
    assert set(row_paths(db)) == ok
    # the counts add up: "found N images" is what was added or skipped, less what the scan
    # itself could not open (a broken link, a pipe), which the summary says apart
    assert summary.unlisted >= 1 and found == [summary.added + len(summary.skipped) - summary.unlisted]
    reasons = {s.path: s.reason for s in summary.skipped}
    assert len(reasons) == len(summary.skipped)  # each bad file reported once
    assert set(reasons) == set(skipped)
    for path, words in skipped.items():
        assert words in reasons[path], (path, reasons[path])
        assert "\n" not in reasons[path] and len(reasons[path]) < 200

    # EXIF orientations 1-8 of one picture all decode to the same upright pixels
    vectors = stored_vectors(db)
    first = vectors[corpus.same_picture[0]]
    for path in corpus.same_picture[1:]:
        np.testing.assert_allclose(vectors[path], first, atol=1e-6)

    # a second run, through the CLI: nothing re-read, the same files skipped, exit code 0
    r = CliRunner().invoke(app, ["index", str(corpus.root), "--db", str(db), "--json"],
                           catch_exceptions=False)
    assert r.exit_code == 0, r.output
    again = json.loads(r.stdout)
    assert (again["unchanged"], again["added"], again["removed"], again["embedded"]) == (len(ok), 0, 0, 0)
    assert {s["path"] for s in again["skipped"]} == set(skipped) - {corpus.delete_after_scan}


def test_odd_file_names_survive_moves_and_deletes(corpus, tmp_path, embedder):
    """Paths with newlines, quotes and backslashes go through every SQL statement the store runs."""
    db = tmp_path / "db"
    index_folders([corpus.root], db, embedder=embedder, workers=0)
    newline = corpus.root / "odd" / "line\nbreak.jpg"
    odd = corpus.root / "odd" / "it's a \\ \"test\".jpg"
    newline.rename(odd)
    (corpus.root / "odd" / "grey.jpg").unlink()
    summary = index_folders([corpus.root], db, embedder=embedder, workers=0)
    assert (summary.moved, summary.removed, summary.embedded) == (1, 1, 0)
    paths = set(row_paths(db))
    assert str(odd) in paths and str(newline) not in paths
    assert str(corpus.root / "odd" / "grey.jpg") not in paths


def test_a_decompression_bomb_is_refused_without_allocating_it():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(UnreadableImageError, match="decompression bomb"):
        decode(png_header_only(50_000, 50_000), "bomb.png")  # 7.5 GB if decoded
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert grown_mb < 100


@pytest.mark.parametrize("size", [(20_000, 2), (3, 9_000), (3_000, 20)])
def test_extreme_strips_keep_their_centre_and_embed_like_the_full_image(size, embedder):
    """open_clip would scale a 20000x2 strip to 2,240,000x224 pixels before cropping its centre;
    the decoder keeps that centre first, which gives the very same model input."""
    import torch
    from PIL import Image

    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8))
    buf = io.BytesIO()
    image.save(buf, "PNG")
    decoded = decode(buf.getvalue(), "strip.png")
    w, h = decoded.image.size
    assert (decoded.width, decoded.height) == size  # the metadata keeps the real size
    assert max(w, h) <= MAX_ASPECT * min(w, h) and min(w, h) == min(size)
    if max(size) <= 100 * 224:  # small enough for open_clip itself to process uncropped
        with torch.inference_mode():
            full = embedder.model.encode_image(embedder.preprocess(image).unsqueeze(0))[0]
        np.testing.assert_allclose(embedder.embed_pil([decoded.image])[0], (full / full.norm()).numpy(),
                                   atol=1e-6)


def test_a_previously_indexed_photo_that_goes_bad_keeps_its_row(corpus, tmp_path, embedder):
    db = tmp_path / "db"
    index_folders([corpus.root], db, embedder=embedder, workers=0)
    victim = corpus.root / "odd" / "cmyk.jpg"
    before = stored_vectors(db)[str(victim)]
    victim.write_bytes(victim.read_bytes()[:100])  # damaged by a bad copy
    summary = index_folders([corpus.root], db, embedder=embedder, workers=0)
    assert [s.path for s in summary.skipped if s.path == str(victim)] == [str(victim)]
    np.testing.assert_array_equal(stored_vectors(db)[str(victim)], before)
    assert summary.removed == 0
