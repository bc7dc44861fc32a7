"""The re-rank feature cache: bounded, least recently used out first, and a damaged or unwritable
cache only ever costs speed."""

from __future__ import annotations

import os
import time

import torch

from clipsearch.store.featcache import FeatureCache


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
    cache = FeatureCache(tmp_path / "c", "m", int(3.5 * size))  # a trim leaves 90%: 3 entries
    cache.put({"a": _entry(1), "b": _entry(2), "c": _entry(3)})
    for key, ago in (("a", 30), ("b", 20), ("c", 10)):
        _age(cache, key, ago)
    assert cache.get("a") is not None  # a read makes "a" the most recently used
    cache.put({"d": _entry(4)})
    assert cache.size() <= 0.9 * 3.5 * size
    assert cache.get("b") is None
    assert all(cache.get(k) is not None for k in ("a", "c", "d"))


def test_a_damaged_entry_is_a_miss_and_is_removed(tmp_path):
    cache = FeatureCache(tmp_path, "m", 1 << 20)
    cache.put({"a": _entry(1)})
    (cache.folder / "a.safetensors").write_bytes(b"\x00garbage")
    assert cache.get("a") is None
    assert not (cache.folder / "a.safetensors").exists()


def test_bit_rot_of_the_same_size_is_caught_by_the_checksum(tmp_path):
    cache = FeatureCache(tmp_path, "m", 1 << 20)
    cache.put({"a": _entry(1)})
    path = cache.folder / "a.safetensors"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01  # one bit of a float: safetensors alone would load it
    path.write_bytes(bytes(data))
    assert cache.get("a") is None and not path.exists()


def test_a_read_that_fails_for_want_of_resources_keeps_the_entry(tmp_path, monkeypatch):
    import builtins
    import errno

    cache = FeatureCache(tmp_path, "m", 1 << 20)
    cache.put({"a": _entry(1)})
    path = cache.folder / "a.safetensors"
    real_open = builtins.open
    for code in (errno.EMFILE, errno.ENOSPC, errno.EIO):
        def failing(file, *args, code=code, **kwargs):
            if str(file) == str(path):
                raise OSError(code, os.strerror(code))
            return real_open(file, *args, **kwargs)

        monkeypatch.setattr(builtins, "open", failing)
        assert cache.get("a") is None  # a miss for now ...
        monkeypatch.setattr(builtins, "open", real_open)
        assert path.exists()  # ... but the entry itself was fine and stays
    assert torch.equal(cache.get("a"), _entry(1))


def test_a_full_cache_is_swept_once_per_tenth_of_its_bound_not_on_every_write(tmp_path, monkeypatch):
    from clipsearch.store.diskcache import DiskCache

    cache = DiskCache(tmp_path, "t", 100 * 1000, ".bin")
    for i in range(100):
        cache.write(f"{i:04d}", bytes(1000 - 21))  # 1,000 bytes each with the checksum
    sweeps = []
    real = DiskCache._entries
    monkeypatch.setattr(DiskCache, "_entries", lambda self: sweeps.append(1) or real(self))
    for i in range(100, 200):  # the cache is full: every write evicts
        cache.write(f"{i:04d}", bytes(1000 - 21))
    assert 90_000 - 1000 <= cache.size() <= 100_000
    assert len(sweeps) <= 11, len(sweeps)  # one per ~10 writes of 1% each; before: one per write


def test_size_zero_turns_the_cache_off(tmp_path):
    cache = FeatureCache(tmp_path, "m", 0)
    cache.put({"a": _entry(1)})
    assert cache.get("a") is None and not cache.folder.exists()


def test_a_cache_path_that_is_a_file_is_skipped_silently(tmp_path):
    (tmp_path / "c").write_text("not a folder")
    cache = FeatureCache(tmp_path / "c", "m", 1 << 20)
    cache.put({"a": _entry(1)})
    assert cache.get("a") is None
