"""The files that make searches fast (text encoder export, row snapshot, FAISS file) on a disk
too full for them: said in one line, never retried by every search, made once there is room."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import pytest

needs_root = pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("unshare"),
                                reason="a small private volume (tmpfs in a mount namespace) needs root")


def _on_small_volume(tmp_path, size: str, script: str, fast: bool = True) -> dict[str, tuple[int, str, str]]:
    """Run `script` (bash; `cs` is the clipsearch CLI, $VOL a fresh tmpfs of `size`) in a private
    mount namespace; each `step NAME cs ...` line's (exit code, stdout, stderr). `fast`: with the
    torch-free query's files (the text export, about 10 s), which only some tests are about."""
    out = tmp_path / "out"
    out.mkdir()
    vol = tmp_path / "vol"
    vol.mkdir()
    forkcli, sock = Path(__file__).with_name("forkcli.py"), Path(tempfile.mkdtemp(dir="/tmp")) / "cli"
    head = textwrap.dedent(f"""\
        set -u
        mount -t tmpfs -o size={size} tmpfs {vol} || exit 99
        VOL={vol}
        export CLIPSEARCH_CACHE=$VOL/cache  # the user's exports, on the same small volume
        # each `cs` a new clipsearch process, forked from one with torch imported (forkcli.py),
        # started by the first `cs`: a script that runs none imports no torch for it
        cs() {{
            if [ ! -S {sock} ]; then
                {sys.executable} {forkcli} --serve {sock} </dev/null >/dev/null 2>&1 & trap "kill $!" EXIT
                for i in $(seq 600); do [ -S {sock} ] && break; sleep 0.1; done
            fi
            {sys.executable} {forkcli} {sock} "$@"
        }}
        step() {{ name=$1; shift; "$@" >{out}/$name.out 2>{out}/$name.err; echo $? >{out}/$name.rc; }}
        """)
    env = {**os.environ, "CLIPSEARCH_FAST_QUERY": "1" if fast else "0", "HF_HUB_OFFLINE": "1",
           "CLIPSEARCH_PRECISION": "fp32"}
    try:
        r = subprocess.run(["unshare", "--mount", "--propagation", "private", "bash", "-c", head + script],
                           capture_output=True, text=True, env=env, timeout=600)
    finally:
        shutil.rmtree(sock.parent, ignore_errors=True)
    assert r.returncode == 0, r.stderr
    return {p.stem: (int(p.read_text()), p.with_suffix(".out").read_text(), p.with_suffix(".err").read_text())
            for p in out.glob("*.rc")}


@needs_root
def test_an_export_that_does_not_fit_is_said_remembered_and_made_once_there_is_room(
        photos, tmp_path, tiny_local_dir):
    # the tiny model's text export is about 13 MB: the table, FAISS and manifest fit in 6 MB, it does not
    steps = _on_small_volume(tmp_path, "6m", f"""
        step index cs index {photos} --db $VOL/db --model local-dir:{tiny_local_dir} --json -q
        step search1 cs search "a horse" --db $VOL/db --json -k 3
        step search2 cs search "a horse" --db $VOL/db --json -k 3
        ls -A $VOL/cache/exports > {tmp_path}/out/fast-before.txt
        mount -o remount,size=64m $VOL
        step search3 cs search "a horse" --db $VOL/db --json -k 3
        step search4 cs search "a horse" --db $VOL/db --json -k 3
        ls -A $VOL/cache/exports > {tmp_path}/out/fast-after.txt
        ls -A $VOL/db/fast >> {tmp_path}/out/fast-after.txt
        """)
    code, out, err = steps["index"]
    assert code == 0, err
    summary = json.loads(out)
    assert summary["added"] == 13
    [missing] = summary["unwritten"]
    assert missing["what"] == "text encoder export" and 13_000_000 < missing["needs_bytes"] < 30_000_000
    assert missing["reason"].startswith("the disk is full (no space left on device)")
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(
        "warning: could not write what makes searches fast (the text encoder export, about 1")
    assert ("The index is intact and searches work, only slower; free about 1" in lines[0]
            and lines[0].endswith("MB there and run clipsearch index again"))
    assert "close error" not in err and "Traceback" not in err
    hits = json.loads(steps["search1"][1])
    assert len(hits) == 3
    for name in ("search1", "search2"):  # answered the full way, without trying the export again
        code, out, err = steps[name]
        assert code == 0 and json.loads(out) == hits and err == "", (name, err)
    # nothing of the failed export is left (the lock file exports are made under stays)
    [lock] = (tmp_path / "out" / "fast-before.txt").read_text().split()
    assert lock.startswith("text-") and lock.endswith(".lock")
    code, out, err = steps["search3"]  # the volume grew past what the export needs: made now
    assert code == 0
    found = json.loads(out)  # the export's vectors are the torch tower's within 1e-5
    assert [h["path"] for h in found] == [h["path"] for h in hits]
    assert all(abs(a["score"] - b["score"]) < 1e-5 for a, b in zip(found, hits, strict=True))
    assert "exporting the text encoder" in err
    assert steps["search4"] == (0, steps["search3"][1], "")  # and from then on the fast path
    made = (tmp_path / "out" / "fast-after.txt").read_text().split()
    assert any(n.startswith("text-") for n in made) and any(n.startswith("rows-v") for n in made)


@needs_root
def test_an_export_job_that_finds_the_disk_full_is_told_once_by_the_next_command(
        photos, tmp_path, tiny_local_dir):
    """The export runs in a job of its own (the CLI's default): `index` has ended before it fails,
    so the next command says so, in the same one line, and only once."""
    steps = _on_small_volume(tmp_path, "6m", f"""
        export CLIPSEARCH_EXPORT=background
        step index cs index {photos} --db $VOL/db --model local-dir:{tiny_local_dir} -q
        for i in $(seq 600); do [ -e $VOL/db/unwritten.json ] && break; sleep 0.1; done  # the job failed
        step search1 cs search "a horse" --db $VOL/db --json -k 3
        step search2 cs search "a horse" --db $VOL/db --json -k 3
        step info cs info --db $VOL/db
        """)
    code, _, err = steps["index"]
    assert code == 0 and "could not write" not in err, err  # the job had not failed yet
    code, out, err = steps["search1"]
    assert code == 0 and len(json.loads(out)) == 3
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(
        "warning: could not write what makes searches fast (the text encoder export, about 1"), err
    assert lines[0].endswith("MB there and run clipsearch index again")
    for name in ("search2", "info"):
        code, _, err = steps[name]
        assert code == 0 and "could not write" not in err, (name, err)


@needs_root
def test_a_search_structure_that_does_not_fit_is_an_oserror_not_faiss_noise(tmp_path):
    script = f"""
        step save {sys.executable} -c '
import numpy as np, sys
from clipsearch.store.ann import AnnIndex
ann = AnnIndex.empty(20_000, 128)
ann.add(np.arange(20_000), np.random.default_rng(0).random((20_000, 128), dtype=np.float32))
ann.table_version = 3
try:
    ann.save(sys.argv[1])
except OSError as exc:
    print("OSError", exc.errno)
print(sorted(p.name for p in __import__("pathlib").Path(sys.argv[1], "ann").iterdir()))
' $VOL
        """
    code, out, err = _on_small_volume(tmp_path, "4m", script, fast=False)["save"]
    assert code == 0, err
    assert out.splitlines() == ["OSError 28", "[]"]  # nothing half-written is left behind
    assert err == ""  # FAISS's own writer printed "close error: No space left on device" here


@pytest.fixture
def fast_index(photos, tmp_path, tiny_local_dir, monkeypatch):
    """sample_images indexed with the fast query path on: an export, a snapshot, a FAISS file."""
    from typer.testing import CliRunner

    from clipsearch.cli.commands import app

    monkeypatch.setenv("CLIPSEARCH_FAST_QUERY", "1")
    db = tmp_path / "db"
    r = CliRunner().invoke(app, ["index", str(photos), "--db", str(db), "--model",
                                 f"local-dir:{tiny_local_dir}", "-q"], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    return db


def _export(db):
    from clipsearch.models import onnxtext
    from clipsearch.store.table import Manifest

    return onnxtext.folder(Manifest.load(db).model)


def _cli(*args):
    from typer.testing import CliRunner

    from clipsearch.cli.commands import app

    r = CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False)
    return r.exit_code, r.stdout, r.stderr


def _damage(path, at: float = 0.5, data: bytes = b"\xff" * 4096) -> None:
    """Overwrite bytes in the middle of a file, keeping its size (bit rot, a bad copy)."""
    size = path.stat().st_size
    start = min(int(size * at), max(size - len(data), 0))
    with open(path, "r+b") as f:
        f.seek(start)
        f.write(data[:size - start])


def _same_hits(a: list[dict], b: list[dict]) -> bool:
    return ([h["path"] for h in a] == [h["path"] for h in b]
            and all(abs(x["score"] - y["score"]) < 1e-5 for x, y in zip(a, b, strict=True)))


def test_an_export_giving_invalid_vectors_is_never_searched_with(fast_index):
    db = fast_index
    export = _export(db)
    code, out, err = _cli("search", "a red car", "--db", db, "--json", "-k", 5)
    assert code == 0 and err == ""
    before = json.loads(out)
    data = export / "text.onnx.data"
    _damage(data, 0.05, b"\xff" * data.stat().st_size)  # NaN weights: all but the first 5%
    code, out, err = _cli("search", "a red car", "--db", db, "--json", "-k", 5)
    assert code == 0 and _same_hits(json.loads(out), before)  # the CLIP model answered
    assert err == (f"note: the exported text encoder in {export} gives invalid vectors (its files are "
                   "damaged); searching with the CLIP model instead, and the next search or index run "
                   "exports it again\n")
    assert "RuntimeWarning" not in err
    code, out, err = _cli("search", "a red car", "--db", db, "--json", "-k", 5)
    assert code == 0 and _same_hits(json.loads(out), before)
    assert "exporting the text encoder" in err  # made again, once
    assert _cli("search", "a red car", "--db", db, "--json", "-k", 5) == (0, out, "")


def test_check_finds_and_rebuilds_every_damaged_derived_file(fast_index, private_cache):
    from clipsearch.media.thumbnails import Thumbnails

    db = fast_index
    code, out, _ = _cli("search", "a red car", "--db", db, "--json", "-k", 5)
    before = json.loads(out)
    code, out, err = _cli("check", "--db", db, "--json")
    assert code == 0, err
    first = json.loads(out)
    assert first["ok"] and {i["action"] for i in first["items"]} == {"none"}, first
    assert {i["what"].split(" (")[0] for i in first["items"]} == {
        "manifest copy", "search structure", "text encoder export", "row snapshot", "thumbnails"}

    export = _export(db)
    [rows] = (db / "fast").glob("rows-v*.arrow")
    [faiss_file] = (db / "ann").glob("faiss-v*.index")
    _damage(export / "text.onnx.data", data=bytes(range(256)) * 4)  # finite garbage: no cheap check sees it
    _damage(rows, 0.6, b"\x01\x02\x03\x04")
    _damage(faiss_file, 0.7, b"\x00\x00\x80\x7f")
    thumbs = Thumbnails()._caches[256]
    thumbs.write("0123abcd", b"thumbnail bytes")
    _damage(thumbs.file("0123abcd"), 0.0, b"T")
    (db / "manifest.copy.json").unlink()

    code, out, err = _cli("check", "--db", db, "--json")
    assert code == 0, err
    report = {i["what"].split(" (")[0]: i for i in json.loads(out)["items"]}
    for what in ("text encoder export", "row snapshot", "search structure"):
        assert (report[what]["status"], report[what]["action"]) == ("damaged", "rebuilt"), report[what]
    assert report["manifest copy"]["status"] == "missing" and (db / "manifest.copy.json").is_file()
    assert report["thumbnails"]["status"] == "damaged (1)" and not thumbs.file("0123abcd").exists()
    assert "exporting the text encoder" in err

    code, out, err = _cli("check", "--db", db)
    assert code == 0 and err.strip().endswith("all intact"), err
    code, out, _ = _cli("search", "a red car", "--db", db, "--json", "-k", 5)
    assert _same_hits(json.loads(out), before)
