"""The re-rank feature cache: bounded, least recently used out first, and a damaged or unwritable
cache only ever costs speed."""

from __future__ import annotations

import os
import time

import torch

from clipsearch.featcache import FeatureCache


def _entry(value: float) -> torch.Tensor:
    return torch.full((50, 8), value)  # 1,600 bytes of data


def _age(cache: FeatureCache, key: str, seconds_ago: float) -> None:
    t = time.time() - seconds_ago
    os.utime(cache.folder / f"{key}.safetensors", (t, t))


def test_entries_round_trip_exactly_including_bf16(tmp_path):
    cache = FeatureCache(tmp_path, "model-a", 1 << 20)
    bf16 = torch.randn(7, 5).to(torch.bfloat16)
    cache.put({"k1": bf16, "k2": _entry(1.5)})
    assert torch.equal(cache.get("k1"), bf16) and cache.get("k1").dtype == torch.bfloat16
    assert torch.equal(cache.get("k2"), _entry(1.5))
    assert cache.get("missing") is None
    assert FeatureCache(tmp_path, "model-b", 1 << 20).get("k1") is None  # another model's features


def test_the_cache_stays_under_its_bound_dropping_least_recently_used(tmp_path):
    entry_bytes = FeatureCache(tmp_path / "probe", "m", 1 << 20)
    entry_bytes.put({"x": _entry(0)})
    size = entry_bytes.size()
    cache = FeatureCache(tmp_path / "c", "m", 3 * size)
    cache.put({"a": _entry(1), "b": _entry(2), "c": _entry(3)})
    for key, ago in (("a", 30), ("b", 20), ("c", 10)):
        _age(cache, key, ago)
    assert cache.get("a") is not None  # a read makes "a" the most recently used
    cache.put({"d": _entry(4)})
    assert cache.size() <= 3 * size
    assert cache.get("b") is None
    assert all(cache.get(k) is not None for k in ("a", "c", "d"))


def test_a_damaged_entry_is_a_miss_and_is_removed(tmp_path):
    cache = FeatureCache(tmp_path, "m", 1 << 20)
    cache.put({"a": _entry(1)})
    (cache.folder / "a.safetensors").write_bytes(b"\x00garbage")
    assert cache.get("a") is None
    assert not (cache.folder / "a.safetensors").exists()


def test_size_zero_turns_the_cache_off(tmp_path):
    cache = FeatureCache(tmp_path, "m", 0)
    cache.put({"a": _entry(1)})
    assert cache.get("a") is None and not cache.folder.exists()


def test_a_cache_path_that_is_a_file_is_skipped_silently(tmp_path):
    (tmp_path / "c").write_text("not a folder")
    cache = FeatureCache(tmp_path / "c", "m", 1 << 20)
    cache.put({"a": _entry(1)})
    assert cache.get("a") is None
