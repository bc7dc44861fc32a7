"""Run the tests that compare with a threshold under each CPU kernel and thread count, and report
the smallest margin each keeps (tests/margins.py records them).

    python -m tools.margins                       # the default tests, 3 kernels x 1 and 2 threads
    python -m tools.margins tests/test_dupes.py --threads 2

With fixed weights, machines differ by rounding alone: the same verdict everywhere needs every
margin well clear of the differences this shows between kernels.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TESTS = ["tests/test_meaning.py", "tests/test_captions.py", "tests/test_dupes.py", "tests/test_rerank.py",
         "tests/test_reference.py"]
KERNELS = ["default", "avx2", "avx512"]


def run(kernel: str, threads: int, tests: list[str], out: Path) -> dict:
    env = {**os.environ, "ATEN_CPU_CAPABILITY": kernel, "OMP_NUM_THREADS": str(threads),
           "MKL_NUM_THREADS": str(threads), "CLIPSEARCH_MARGINS": str(out), "HF_HUB_OFFLINE": "1"}
    probe = "import torch; print(torch.backends.cpu.get_cpu_capability(), torch.get_num_threads())"
    used = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True)
    tested = subprocess.run([sys.executable, "-m", "pytest", "-q", "-n", "2", "-p", "no:cacheprovider", "-m",
                             "not slow", *tests], env=env, cwd=ROOT, capture_output=True, text=True)
    lines = [json.loads(line) for line in out.read_text().splitlines()] if out.exists() else []
    said = tested.stdout.strip().splitlines() or [tested.stderr[-500:]]
    return {"kernel": kernel, "threads": threads, "ran_as": used.stdout.strip(), "exit": tested.returncode,
            "summary": said[-1], "margins": lines}


def share(m: dict) -> float:
    """A margin as a share of its bar, so that tolerances and quality bars compare."""
    return m["margin"] / max(abs(m["bar"]), 1e-12)


def report(runs: list[dict]) -> None:
    print("| kernel | threads | torch ran as | verdict | smallest margin (share of its bar) | of |")
    print("|---|---|---|---|---|---|")
    for r in runs:
        worst = min(r["margins"], key=share, default=None)
        what = f"{worst['what']}: {worst['value']:.6g} against {worst['bar']:.6g}" if worst else "none"
        margin = f"{worst['margin']:.3g} ({share(worst):.0%})" if worst else ""
        print(f"| {r['kernel']} | {r['threads']} | {r['ran_as']} | {r['summary']} | {margin} | {what} |")
    print("\nEach assertion, over every run: the smallest margin, and how far its value moved between runs")
    print("| test | assertion | bar | smallest margin | values differ by at most |")
    print("|---|---|---|---|---|")
    seen: dict[tuple[str, str], list[dict]] = {}
    for r in runs:
        for m in r["margins"]:
            seen.setdefault((m["test"], m["what"]), []).append(m)
    for (test, what), ms in sorted(seen.items(), key=lambda kv: min(m["margin"] for m in kv[1])):
        values = [m["value"] for m in ms]
        least = min(m["margin"] for m in ms)
        print(f"| {test.split('::')[-1]} | {what} | {ms[0]['bar']:.6g} | {least:.3g} | "
              f"{max(values) - min(values):.3g} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("tests", nargs="*", default=TESTS)
    parser.add_argument("--kernels", default=",".join(KERNELS))
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--json", type=Path, help="also write every run's margins here")
    args = parser.parse_args()
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        for kernel in args.kernels.split(","):
            for threads in map(int, args.threads.split(",")):
                runs.append(run(kernel, threads, args.tests, Path(tmp) / f"{kernel}-{threads}.jsonl"))
                print(f"{kernel}, {threads} thread(s): {runs[-1]['summary']}", file=sys.stderr, flush=True)
    if args.json:
        args.json.write_text(json.dumps(runs, indent=1))
    report(runs)
    if any(r["exit"] != 0 for r in runs):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
