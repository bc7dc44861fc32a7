"""BLIP re-ranking: equal to transformers' own ITM computation, ordered by the fused score,
--min-match cuts exactly, features are cached, and a missing model fails fast and says why."""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path

import margins
import numpy as np
import pytest
from conftest import SAMPLES, sample_files
from helpers import reference_image, reference_itm
from typer.testing import CliRunner

from clipsearch import open_index
from clipsearch.cli.commands import app
from clipsearch.models.blip import load_scorer
from clipsearch.models.hub import HUB_PROBE_SECONDS
from clipsearch.search.rerank import candidate_features
from clipsearch.store.featcache import FeatureCache

QUERY = "a photo of a dog on the beach"


@pytest.fixture(scope="module")
def reference(tiny_blip_dir) -> np.ndarray:
    files = sample_files(SAMPLES)
    return reference_itm(tiny_blip_dir, [reference_image(p) for p in files], QUERY)


@pytest.mark.parametrize("batch_size", [1, 3, 32])
def test_itm_probabilities_equal_transformers_with_and_without_the_cache(
        tiny_blip_dir, reference, batch_size, private_cache, monkeypatch):
    paths = [str(p) for p in sample_files(SAMPLES)]
    scorer = load_scorer(str(tiny_blip_dir), "cpu", "fp32")
    cache = FeatureCache(private_cache, scorer.identity, 1 << 30)

    computed = candidate_features(scorer, cache, paths, batch_size=batch_size)
    fresh = scorer.match(QUERY, [computed[p] for p in paths], batch_size=batch_size)
    margins.close(fresh, reference, 1e-5, "ITM probabilities against transformers'")
    assert len(list(cache.folder.iterdir())) == len(paths)

    again = load_scorer(str(tiny_blip_dir), "cpu", "fp32")  # a new process would start like this
    monkeypatch.setattr(again, "image_features", lambda *a, **k: pytest.fail("cache was not used"))
    cached = candidate_features(again, FeatureCache(private_cache, again.identity, 1 << 30), paths)
    margins.close(again.match(QUERY, [cached[p] for p in paths], batch_size), reference, 1e-5,
                  "ITM probabilities from cached features against transformers'")


def test_the_reference_is_not_trivially_flat(reference):
    """The equality test means something only if images get clearly different probabilities."""
    margins.at_least(reference.max() - reference.min(), 0.02, "spread of the reference ITM probabilities")


runner = CliRunner()


def search(db, *args, ok=True):
    r = runner.invoke(app, ["search", *map(str, args), "--db", str(db), "--device", "cpu"],
                      catch_exceptions=False)
    if ok:
        assert r.exit_code == 0, r.output
    return r


def rerank_json(db, blip, *args):
    r = search(db, QUERY, "--rerank", "--rerank-model", blip, "--rerank-precision", "fp32",
               "--json", *args)
    return json.loads(r.stdout)


def test_hits_are_ordered_by_itm_plus_clip(sample_index, tiny_blip_dir, reference):
    clip = {h["path"]: h["score"] for h in json.loads(search(sample_index, QUERY, "-k", 13, "--json").stdout)}
    hits = rerank_json(sample_index, tiny_blip_dir, "-k", 13, "--candidates", 13)

    assert [h["rank"] for h in hits] == list(range(1, 14))
    itm_of = dict(zip((p.relative_to(SAMPLES) for p in sample_files(SAMPLES)), reference, strict=True))
    for h in hits:
        assert h["clip"] == pytest.approx(clip[h["path"]], abs=1e-6)
        assert h["score"] == pytest.approx(h["itm"] + h["clip"], abs=1e-9)
        photo = Path(h["path"]).relative_to(sample_index.parent / "photos")
        assert h["itm"] == pytest.approx(itm_of[photo], abs=1e-5)
    assert [h["score"] for h in hits] == sorted((h["score"] for h in hits), reverse=True)
    assert [h["path"] for h in hits] != list(clip)  # BLIP did change the order


def test_only_the_top_candidates_are_read_and_k_are_returned(sample_index, tiny_blip_dir):
    reranked = rerank_json(sample_index, tiny_blip_dir, "-k", 13, "--candidates", 13)
    everything = {h["path"]: h for h in reranked}
    first_stage = [h["path"] for h in json.loads(search(sample_index, QUERY, "-k", 5, "--json").stdout)]

    hits = rerank_json(sample_index, tiny_blip_dir, "-k", 2, "--candidates", 5)
    expected = sorted(first_stage, key=lambda p: -everything[p]["score"])[:2]
    assert [h["path"] for h in hits] == expected


def test_min_match_drops_exactly_the_hits_below_it(sample_index, tiny_blip_dir):
    everything = rerank_json(sample_index, tiny_blip_dir, "-k", 13, "--candidates", 13)
    cutoff = float(np.median([h["itm"] for h in everything]))

    kept = rerank_json(sample_index, tiny_blip_dir, "-k", 13, "--candidates", 13, "--min-match", cutoff)
    assert [h["path"] for h in kept] == [h["path"] for h in everything if h["itm"] >= cutoff]
    assert 0 < len(kept) < 13


def test_no_real_match_prints_nothing_and_says_so(sample_index, tiny_blip_dir):
    r = search(sample_index, QUERY, "--rerank-model", tiny_blip_dir, "--min-match", "0.999", "--json")
    assert json.loads(r.stdout) == []
    assert f"no image matches {QUERY!r} with a match probability of at least 0.999" in r.stderr


def test_the_table_shows_itm_and_clip(sample_index, tiny_blip_dir):
    r = search(sample_index, QUERY, "--rerank", "--rerank-model", tiny_blip_dir, "-k", 2)
    header = r.stdout.splitlines()[0].split()
    assert [c for c in header if c.isalpha()] == ["rank", "score", "itm", "clip", "path"]


def test_an_image_only_query_cannot_be_reranked(sample_index, tiny_blip_dir):
    rocket = sample_files(SAMPLES)[0].parent.parent / "space" / "rocket.jpg"
    r = search(sample_index, str(rocket), "--rerank", "--rerank-model", tiny_blip_dir, ok=False)
    assert r.exit_code == 2
    assert "need a text term" in r.stderr


def test_python_api_reranks_with_the_same_numbers(sample_index, tiny_blip_dir):
    cli_hits = rerank_json(sample_index, tiny_blip_dir, "-k", 4)
    index = open_index(sample_index, device="cpu", rerank_model=str(tiny_blip_dir), rerank_precision="fp32")
    api_hits = index.search(QUERY, k=4, rerank=True)
    assert [h.path for h in api_hits] == [h["path"] for h in cli_hits]
    for api, cli in zip(api_hits, cli_hits, strict=True):
        assert (api.score, api.itm, api.clip) == pytest.approx((cli["score"], cli["itm"], cli["clip"]))


def _offline_message(seconds: float) -> str:
    from clipsearch.errors import OfflineError

    started = time.monotonic()
    with pytest.raises(OfflineError) as err:
        load_scorer("Salesforce/blip-itm-base-coco", "cpu")
    assert time.monotonic() - started < seconds
    message = str(err.value)
    assert "Salesforce/blip-itm-base-coco" in message and "--rerank-model /path/to/folder" in message
    return message


def test_missing_rerank_model_fails_at_once_offline(empty_hub_cache, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert "HF_HUB_OFFLINE is set" in _offline_message(1.0)


def test_missing_rerank_model_fails_fast_when_the_hub_is_unreachable(empty_hub_cache, monkeypatch):
    with socket.socket() as silent:  # accepts connections but never replies
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{silent.getsockname()[1]}")
        assert "is unreachable" in _offline_message(HUB_PROBE_SECONDS + 2.0)


def test_a_cached_hub_download_loads_with_no_network(tiny_blip_dir, tmp_path, monkeypatch, reference):
    """The layout huggingface_hub leaves after a download, found by name with the network off."""
    import huggingface_hub.constants as hf

    repo = tmp_path / "hub" / "models--Salesforce--blip-itm-base-coco"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("f00d")
    snapshot = repo / "snapshots" / "f00d"
    snapshot.mkdir(parents=True)
    for f in tiny_blip_dir.iterdir():
        (snapshot / f.name).write_bytes(f.read_bytes())
    monkeypatch.setattr(hf, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    scorer = load_scorer("Salesforce/blip-itm-base-coco", "cpu", "fp32")
    features = scorer.image_features([reference_image(sample_files(SAMPLES)[0])])
    assert scorer.match(QUERY, features)[0] == pytest.approx(reference[0], abs=1e-5)


def test_a_folder_that_is_not_a_saved_model_is_refused(sample_index, tmp_path):
    r = search(sample_index, QUERY, "--rerank", "--rerank-model", tmp_path, ok=False)
    assert r.exit_code == 2 and "has no config.json" in r.stderr and str(tmp_path) in r.stderr
    r = search(sample_index, QUERY, "--rerank", "--rerank-model", tmp_path / "nope", ok=False)
    assert r.exit_code == 2 and f"folder not found: {tmp_path / 'nope'}" in r.stderr
