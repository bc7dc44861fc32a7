"""The benchmark suite still runs, at its smallest size (correctness only: no timing is judged)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from conftest import ROOT

pytestmark = pytest.mark.slow


def test_the_suite_runs_every_section_at_smoke_size(tmp_path):
    out = tmp_path / "figures.json"
    r = subprocess.run([sys.executable, "-m", "benchmarks", "--smoke", "--out", str(out)], cwd=ROOT,
                       capture_output=True, text=True, timeout=900,  # about 3 minutes on 2 cores
                       env={**os.environ, "HF_HUB_OFFLINE": "1", "CLIPSEARCH_FAST_QUERY": "1"})
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    figures = json.loads(out.read_text())
    assert figures["failed"] == {}
    sections = figures["sections"]
    assert set(figures["seconds"]) == set(sections)  # each section's time, for the docs' table
    assert set(sections) == {"throughput", "query", "scale", "rerank", "tagging", "memory", "precision",
                             "serve", "eval", "dupes", "ray", "diskcache", "change", "watch", "words",
                             "captions", "video", "raw"}
    raw = sections["raw"]
    assert raw["photos"] == 4 and raw["share"] == {"preview": 0.75, "demosaic": 0.25}, raw
    assert raw["raw_per_s"] > 0 and raw["ratio"] > 0
    video = sections["video"]
    assert video["speed"]["phone"]["embedded_frames"] >= 1 and video["speed"]["phone"]["realtime"] > 0
    assert video["search"]["rows"] == 2_000 + 900 and 0 < video["search"]["video_hits_share"] <= 1
    captioned = sections["captions"]
    assert captioned["speed"]["fp32"]["captions_per_s"] > 0 and captioned["background"]["queries_during"] > 0
    assert captioned["background"]["photos"] == 4 and captioned["background"]["ratio"] > 0
    worded = sections["words"]
    assert worded["quality"]["words"]["scaled"]["R@1"] == 1.0 and worded["read"]["photos"] == 4
    assert worded["latency"]["2000"]["snapshot"]["hybrid_p50_ms"] > 0
    live = sections["watch"]
    assert live["samples"] == 2 and live["burst_photos"] == 6 and 0 < live["latency_p95_s"] < 60
    assert live["throughput_ratio"] > 0 and live["queries_during_burst"] > 0
    assert sections["throughput"]["12 MP"]["images"] == 2 and sections["throughput"]["12 MP"]["ratio"] > 0
    assert sections["scale"]["2000"]["recall_at_10"] == 1.0  # flat: exact by construction
    assert sections["tagging"]["tags_kept"] > 0
    assert set(sections["precision"]) == {"fp32", "bf16", "int8"}
    assert sections["precision"]["fp32"]["image_cos_min"] > 0.9999
    assert sections["query"]["cold"]["same_hits"] and sections["query"]["warm"]["onnx_p50_ms"] > 0
    load = sections["serve"]["load"]
    assert load["errors"] == 0 and load["requests"] > 0 and sections["serve"]["search"]["p50_ms"] > 0
    quality, seen = sections["eval"]["fp32"]["retrieval"], sections["eval"]["seen"]
    assert quality["images"] == 32 and quality["text_to_image"]["R@1"] > 0.5
    assert seen["rerank"]["R@1"] > seen["text_to_image"]["R@1"]
    found = sections["dupes"]["scale"]["2000"]
    assert found["recall"] == 1.0 and found["false_merges"] == 0 and found["planted_groups"] > 0
    calibrated = sections["dupes"]["calibration"]["trained"]
    assert calibrated["thresholds"]["0.95"]["recall"] == 1.0 and calibrated["default"]["false_merges"] == 0
    ray = sections["ray"]
    assert ray["same_rows"] and ray["rows"] == 4 and ray["max_vector_delta"] <= 1e-5
    assert ray["commit"]["rows_s"] > 0
    cache = sections["diskcache"]
    assert cache["after"]["writes"] == 100 and 0.85 * 500 <= cache["after"]["entries_after"] <= 500
    (changed,) = sections["change"]["sizes"]
    assert changed["rows"] == 300 and changed["add"]["added"] == changed["remove"]["removed"] == 10
    assert changed["add"]["written_mb"] < 5 and changed["during_compaction"]["queries"] > 0
    for name in sections:
        assert f"## {name}" in r.stdout

