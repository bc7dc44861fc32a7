"""clipsearch beside rclip 3.x, side by side in one run: a first index, a rescan that finds nothing
changed, a one-off query on 300 photos, and a one-off query over 100k stored vectors.

    python -m benchmarks.peers                 # 300 photos of 0.3 MP, 2 runs each, 100k rows
    python -m benchmarks.peers --runs 3 --rows 0

Run by hand, not in the suite's smoke run: it installs rclip (pip, from the package registry) in a
virtual environment of its own. Both tools run the same random-weight ViT-B-32-256 (rclip's model):
open_clip's, saved to a .safetensors file that clipsearch loads with --pretrained, and its towers
exported to ONNX with rclip's input and output names into the folder RCLIP_DATADIR names, with
open_clip's tokenizer vocabulary; so both rank the same photos first. The tools alternate, and
each figure is the median of the runs; peak memory is each process's own (ru_maxrss of the child;
clipsearch's text export runs afterwards in a job of its own and is reported apart).

rclip's first run and its rescan include a query (it has no index-only command); clipsearch's do
not, and its one-off query is timed on its own. rclip's 100k database is written directly: its
`images` table holds each vector as 512 float32 bytes.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import statistics
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np

from benchmarks.common import ClusteredVectors, photos, random_checkpoint, random_index

RCLIP = "rclip==3.3.0"
MODEL = "ViT-B-32-256"
RCLIP_MODEL_DIR = "ViT-B-32-256-datacomp_s34b_b86k"  # where rclip 3.x looks for its towers
QUERY = "a dog on a beach"


def _checkpoint(work: Path) -> Path:
    return random_checkpoint(work, MODEL, "vit-b-32-256-random.safetensors")


def _rclip_datadir(work: Path, checkpoint: Path) -> Path:
    """rclip's data folder holding our weights: both towers in ONNX (input `input`, output
    `output`, a free batch) and the BPE vocabulary."""
    import open_clip
    import torch

    data = work / "rclip-data"
    models = data / RCLIP_MODEL_DIR
    models.mkdir(parents=True, exist_ok=True)
    (data / "tokenizer").mkdir(exist_ok=True)
    shutil.copy(Path(open_clip.__file__).parent / "bpe_simple_vocab_16e6.txt.gz",
                data / "tokenizer" / "bpe_simple_vocab_16e6.txt.gz")
    model = open_clip.create_model(MODEL, pretrained=str(checkpoint)).eval()

    class Tower(torch.nn.Module):
        def __init__(self, method: str) -> None:
            super().__init__()
            self.model, self.method = model, method

        def forward(self, x):
            return getattr(self.model, self.method)(x)

    torch.backends.mha.set_fastpath_enabled(False)  # the fused kernel has no ONNX form
    examples = {"visual.onnx": ("encode_image", torch.zeros(2, 3, 256, 256)),
                "textual.onnx": ("encode_text", torch.zeros(2, 77, dtype=torch.long))}
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        for name, (method, example) in examples.items():
            torch.onnx.export(Tower(method), (example,), str(models / name), input_names=["input"],
                              output_names=["output"], opset_version=18, dynamo=False,
                              dynamic_axes={"input": {0: "n"}, "output": {0: "n"}})
    return data


def _rclip_venv(work: Path) -> Path:
    venv = work / "rclip-venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run([str(venv / "bin" / "pip"), "install", "-q", RCLIP], check=True)
    return venv / "bin" / "rclip"


def _timed(command: list[str], env: dict, cwd: Path | None = None) -> tuple[float, str]:
    """(seconds, stdout) of one process."""
    started = time.perf_counter()
    r = subprocess.run(command, capture_output=True, text=True, env=env, cwd=cwd)
    seconds = time.perf_counter() - started
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed: {r.stderr.strip()[-800:]}")
    return seconds, r.stdout


def _peak_of(command: list[str], env: dict, cwd: Path | None = None) -> tuple[float, float, str]:
    """(seconds, peak resident MB, stdout) of one process; the peak from /usr/bin/time (NaN
    where there is none), which times the command itself, not this script's other children."""
    if not Path("/usr/bin/time").exists():
        seconds, out = _timed(command, env, cwd)
        return seconds, float("nan"), out
    report = Path(env["PEERS_WORK"]) / "time.txt"
    seconds, out = _timed(["/usr/bin/time", "-o", str(report), "-f", "%M", *command], env, cwd)
    return seconds, int(report.read_text().split()[-1]) / 1024, out


def _rclip_db(data: Path, folder: Path, n: int) -> None:
    """rclip's database of `n` photos under `folder`, written directly (schema of rclip 3.x)."""
    vectors = ClusteredVectors(dim=512).draw(n).astype(np.float32)
    con = sqlite3.connect(data / "db.sqlite3")
    con.executescript("""
        CREATE TABLE IF NOT EXISTS images (id INTEGER PRIMARY KEY, deleted BOOLEAN,
          filepath TEXT NOT NULL UNIQUE, modified_at DATETIME NOT NULL, size INTEGER NOT NULL,
          vector BLOB NOT NULL, indexing BOOLEAN, hash TEXT);
        CREATE UNIQUE INDEX IF NOT EXISTS existing_images ON images(filepath) WHERE deleted IS NULL;
        CREATE INDEX IF NOT EXISTS hash_index ON images(hash) WHERE deleted IS NULL;
        CREATE TABLE IF NOT EXISTS db_version (version INTEGER);
        DELETE FROM db_version; INSERT INTO db_version(version) VALUES (4);""")
    con.executemany("INSERT INTO images(filepath, modified_at, size, vector, hash) VALUES (?, 0, 1, ?, ?)",
                    ((f"{folder}/{i // 1000:03d}/IMG_{i:07d}.jpg", vectors[i].tobytes(), str(i))
                     for i in range(n)))
    con.commit()
    con.close()


def measure(work: Path, n_photos: int = 300, runs: int = 2, rows: int = 100_000) -> dict:
    from clipsearch.models import exportjob
    from clipsearch.store.table import Manifest

    work = Path(work)
    clipsearch = str(Path(sys.executable).parent / "clipsearch")
    checkpoint = _checkpoint(work)
    library = work / "photos"
    photos(library, n_photos, size=(640, 480))
    data = _rclip_datadir(work, checkpoint)
    rclip = _rclip_venv(work)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PEERS_WORK": str(work), "CLIPSEARCH_FAST_QUERY": "1"}
    env.pop("CLIPSEARCH_EXPORT", None)
    renv = {**env, "RCLIP_DATADIR": str(data)}
    figures: dict[str, list] = {k: [] for k in (
        "rclip_first_s", "rclip_first_mb", "ours_first_s", "ours_first_mb", "export_s",
        "rclip_rescan_s", "ours_rescan_s", "rclip_query_s", "ours_query_s", "ours_first_results_s")}
    same_top = True
    for run in range(runs):
        (data / "db.sqlite3").unlink(missing_ok=True)
        s, mb, out = _peak_of([str(rclip), "-t", "5", QUERY], renv, cwd=library)
        figures["rclip_first_s"].append(s)
        figures["rclip_first_mb"].append(mb)
        rclip_top = [line.split("\t")[1].strip('"') for line in out.splitlines()[1:]]
        db = work / f"db-{run}"
        shutil.rmtree(db, ignore_errors=True)
        # a first user each run: no export of this model yet (it is one per model per user)
        env["CLIPSEARCH_CACHE"] = os.environ["CLIPSEARCH_CACHE"] = str(work / f"cache-{run}")
        shutil.rmtree(env["CLIPSEARCH_CACHE"], ignore_errors=True)
        s, mb, _ = _peak_of([clipsearch, "index", str(library), "--db", str(db), "--model", MODEL,
                             "--pretrained", str(checkpoint), "-q"], env)
        figures["ours_first_s"].append(s)
        figures["ours_first_mb"].append(mb)
        # the set-up command's flow: a search straight after the first index, while the export runs
        q, _ = _timed([clipsearch, "search", QUERY, "--db", str(db), "-k", "5", "--json"], env)
        figures["ours_first_results_s"].append(s + q)
        started = time.perf_counter()
        exportjob.wait(Manifest.load(db).model, 600)
        figures["export_s"].append(time.perf_counter() - started + q)
        for _ in range(2):  # rescans and one-off queries, alternating
            figures["rclip_rescan_s"].append(_timed([str(rclip), "-t", "5", QUERY], renv, cwd=library)[0])
            figures["ours_rescan_s"].append(_timed([clipsearch, "index", str(library), "--db", str(db), "-q"],
                                                   env)[0])
            figures["rclip_query_s"].append(_timed([str(rclip), "-n", "-t", "5", QUERY], renv,
                                                   cwd=library)[0])
            s, out = _timed([clipsearch, "search", QUERY, "--db", str(db), "-k", "5", "--json"], env)
            figures["ours_query_s"].append(s)
        same_top &= [h["path"] for h in json.loads(out)][:1] == rclip_top[:1]
    result = {k: statistics.median(v) for k, v in figures.items()}
    result |= {"photos": n_photos, "runs": runs, "same_first_hit": same_top}
    if rows:
        result |= _large(work, db, data, rclip, env, renv, rows, runs, clipsearch)
    return result


def _large(work: Path, small_db: Path, data: Path, rclip: Path, env: dict, renv: dict, rows: int, runs: int,
           clipsearch: str) -> dict:
    """One-off queries over `rows` stored vectors: rclip's database written directly, and
    clipsearch's table with the same model's export (the user's, made for the 300-photo index)."""
    from clipsearch.build.fastprep import prepare_fast
    from clipsearch.store.ann import current
    from clipsearch.store.table import Manifest

    model = Manifest.load(small_db).model
    store = random_index(work / "db-large", rows, model=model, words=True)
    current(store)
    prepare_fast(store, lambda: None)  # the snapshot; the export is there
    folder = work / "large"
    folder.mkdir(exist_ok=True)
    (data / "db.sqlite3").unlink(missing_ok=True)
    _rclip_db(data, folder, rows)
    theirs, ours, peak = [], [], []
    for _ in range(runs + 1):
        s, mb, _ = _peak_of([str(rclip), "-n", "-t", "5", QUERY], renv, cwd=folder)
        theirs.append(s)
        peak.append(mb)
        ours.append(_timed([clipsearch, "search", QUERY, "--db", str(store.path), "-k", "5"], env)[0])
    return {"rows": rows, "rclip_query_large_s": statistics.median(theirs),
            "rclip_query_large_mb": statistics.median(peak), "ours_query_large_s": statistics.median(ours)}


def report(f: dict) -> None:
    def row(name, theirs, ours, target):
        ratio = ours / theirs if theirs else float("nan")
        print(f"{name:<44} {theirs:>9.2f} {ours:>11.2f} {ratio:>7.2f}   {target}")

    print(f"{f['photos']} photos of 0.3 MP, ViT-B-32-256 (random weights), medians of {f['runs']} runs")
    print(f"{'':<44} {'rclip 3.3':>9} {'clipsearch':>11} {'ratio':>7}   target")
    row("first index, s (rclip's includes a query)", f["rclip_first_s"], f["ours_first_s"], "ratio <= 1")
    row("first index, peak MB", f["rclip_first_mb"], f["ours_first_mb"], "clipsearch <= 1500")
    row("rescan, nothing changed, s (rclip's + query)", f["rclip_rescan_s"], f["ours_rescan_s"], "ratio <= 1")
    row("one-off query, s", f["rclip_query_s"], f["ours_query_s"], "ratio <= 1")
    print(f"clipsearch: first index + a search straight after (torch path while the export runs): "
          f"{f['ours_first_results_s']:.2f} s; the export job, done {f['export_s']:.2f} s after `index` "
          f"ended; same first hit as rclip: {f['same_first_hit']}")
    if "rows" in f:
        row(f"one-off query, {f['rows']:,} rows, s", f["rclip_query_large_s"], f["ours_query_large_s"],
            "ratio <= 0.5")
        print(f"rclip's peak at {f['rows']:,} rows: {f['rclip_query_large_mb']:.0f} MB")


if __name__ == "__main__":
    from benchmarks.common import script

    script(__doc__, "# beside rclip: first index, rescan, one-off queries",
           {"--photos": {"type": int, "default": 300, "dest": "n_photos"},
            "--runs": {"type": int, "default": 2}, "--rows": {"type": int, "default": 100_000}},
           lambda work, a: measure(work, a.n_photos, a.runs, a.rows), report)
