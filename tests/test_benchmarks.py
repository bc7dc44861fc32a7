"""The benchmark scripts still run, at their smallest size (correctness only, no timings)."""

from __future__ import annotations

import json
import sys

from benchmarks import tagging


def test_the_tagging_benchmark_runs_and_reports_its_figures(tmp_path, monkeypatch, capsys):
    out = tmp_path / "figures.json"
    monkeypatch.setattr(sys, "argv", ["tagging", "--images", "300", "--labels", "4", "--json", str(out)])
    tagging.main()
    figures = json.loads(out.read_text())
    assert (figures["images"], figures["labels"], figures["texts"]) == (300, 4, 4 * 8 + 5)
    assert figures["tags_kept"] > 0
    assert "score + choose + commit 300 images" in capsys.readouterr().out
