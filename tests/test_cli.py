"""The command line, through typer's CliRunner and as the installed console script."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import TINY, sample_files
from typer.testing import CliRunner

from clipsearch.cli.commands import app

runner = CliRunner()


def cli(*args, env=None):
    return runner.invoke(app, [str(a) for a in args], env=env, catch_exceptions=False)


@pytest.fixture
def db(photos, tmp_path, tiny_checkpoint):
    db = tmp_path / "db"
    r = cli("index", photos, "--db", db, "--model", TINY, "--pretrained", tiny_checkpoint,
            "--device", "cpu", "-q")
    assert r.exit_code == 0, r.output
    return db


def test_index_prints_a_summary_and_json(photos, tmp_path, tiny_checkpoint, db):
    (photos / "broken.jpg").write_bytes(b"definitely not a jpeg")
    r = cli("index", photos, "--db", db, "--json")
    assert r.exit_code == 0, r.output
    summary = json.loads(r.stdout)
    assert summary["unchanged"] == 13 and summary["added"] == 0
    assert summary["skipped"] == [{"path": str(photos / "broken.jpg"),
                                   "reason": "not a readable image (unknown or corrupt format)"}]
    r = cli("index", photos, "--db", db, "-q")
    assert "added 0, updated 0, moved 0, removed 0, unchanged 13, skipped 1" in r.stderr
    assert f"skipped {photos / 'broken.jpg'}: not a readable image" in r.stderr


def test_search_json_paths_and_table(photos, db):
    r = cli("search", "a cat", "--db", db, "-k", 5, "--json")
    assert r.exit_code == 0, r.output
    hits = json.loads(r.stdout)
    assert [h["rank"] for h in hits] == [1, 2, 3, 4, 5]
    assert set(hits[0]) == {"path", "score", "rank", "kind"} and hits[0]["kind"] == "photo"
    assert all(Path(h["path"]).is_file() for h in hits)
    scores = [h["score"] for h in hits]
    assert scores == sorted(scores, reverse=True)

    r = cli("search", "a cat", "--db", db, "-k", 5, "--paths")
    assert r.stdout.splitlines() == [h["path"] for h in hits]

    r = cli("search", "a cat", "--db", db, "-k", 2)
    assert r.exit_code == 0
    assert "rank" in r.stdout and "score" in r.stdout
    assert f"{hits[0]['score']:.3f}" in r.stdout


def test_search_in_folder_and_large_k(photos, db):
    r = cli("search", "stone", "--db", db, "--in", photos / "textures", "-k", 50, "--paths")
    assert r.exit_code == 0, r.output
    assert sorted(r.stdout.splitlines()) == sorted(str(p) for p in sample_files(photos / "textures"))
    r = cli("search", "stone", "--db", db, "-k", 100, "--json")
    assert len(json.loads(r.stdout)) == 13


def test_query_terms_may_come_as_separate_arguments_and_filters_apply(photos, db):
    """`clipsearch search beach + sunset` as the shell splits it: one query of three words."""
    joined = cli("search", '"stone" + "wall" - "sky"', "--db", db, "--json")
    split = cli("search", "stone", "+", "wall", "-", "sky", "--db", db, "--json")
    assert joined.exit_code == split.exit_code == 0, split.output
    assert json.loads(joined.stdout) == json.loads(split.stdout)

    r = cli("search", "stone", "--db", db, "--ext", "png", "--after", "2000", "--paths", "-k", 50)
    assert sorted(r.stdout.splitlines()) == sorted(str(p) for p in photos.rglob("*.png"))
    r = cli("similar", photos / "travel" / "china.jpg", "--db", db, "--ext", "tif", "--paths")
    assert r.stdout.splitlines() == [str(photos / "textures" / "coins.tif")]


def test_similar_and_info(photos, db, tiny_checkpoint):
    r = cli("similar", photos / "travel" / "china.jpg", "--db", db, "--json", "-k", 3)
    assert r.exit_code == 0, r.output
    top = json.loads(r.stdout)[0]
    assert top["path"] == str(photos / "travel" / "china.jpg")
    assert top["score"] == pytest.approx(1.0, abs=1e-5)

    r = cli("info", "--db", db, "--json")
    info = json.loads(r.stdout)
    assert {"images", "roots", "model", "pretrained", "dim", "bytes"} <= set(info)
    assert info["images"] == 13
    assert info["roots"] == [str(photos)]
    assert (info["model"], info["pretrained"], info["dim"]) == (TINY, str(tiny_checkpoint), 32)
    assert info["bytes"] > 13 * 32 * 4
    r = cli("info", "--db", db)
    assert "images" in r.stdout and "13" in r.stdout


def test_db_from_environment(photos, db):
    r = cli("search", "a cat", "--json", env={"CLIPSEARCH_DB": str(db)})
    assert r.exit_code == 0, r.output
    assert len(json.loads(r.stdout)) == 10


def test_errors_are_one_line_with_exit_codes(photos, db, tmp_path, tiny_checkpoint):
    cases = [
        (("search", "cat", "--db", tmp_path / "empty"), 1, "error: no index at"),
        (("index", tmp_path / "missing", "--db", db), 2, "error: folder not found:"),
        (("search", "cat", "--db", db, "--json", "--paths"), 2, "--json and --paths cannot be combined"),
        (("similar", tmp_path / "nope.jpg", "--db", db), 2, "error: image not found:"),
        (("search", "cat", "--db", db, "--in", tmp_path / "nope"), 2, "error: --in: folder not found"),
        (("index", photos, "--db", db, "--model", "ViT-B-32", "--pretrained", "openai"), 1,
         f"was built with {TINY} ({tiny_checkpoint}), not ViT-B-32 (openai)"),
        (("index", photos, "--db", tmp_path / "n", "--model", "ViT-B-3"), 2,
         "error: unknown model 'ViT-B-3'; close matches: ViT-B-32"),
        (("index", photos, "--db", tmp_path / "n", "--model", "ViT-B-32", "--pretrained", "laion9"), 2,
         "error: unknown pretrained tag 'laion9' for ViT-B-32; choose one of: openai"),
        (("index", photos, "--db", tmp_path / "n", "--pretrained", tmp_path / "none.pt"), 2,
         "checkpoint file not found"),
        (("search", '"beach" + "sun', "--db", db), 2,
         "error: bad query '\"beach\" + \"sun': this quote is never closed"),
        (("search", "cat", "--db", db, "--after", "last week"), 2, "--after 'last week' is not a date"),
        (("search", "cat", "--db", db, "--min-match", "1.5"), 2,
         "--min-match 1.5 is not a probability between 0 and 1"),
    ]
    for args, code, message in cases:
        r = cli(*args)
        assert r.exit_code == code, (args, r.output)
        assert message in r.stderr, (args, r.stderr)
        assert len(r.stderr.strip().splitlines()) == 1, r.stderr
        assert "Traceback" not in r.output


def test_same_checkpoint_moved_elsewhere_is_accepted(photos, db, tiny_checkpoint, tmp_path):
    moved = tmp_path / "moved.safetensors"
    shutil.copy(tiny_checkpoint, moved)
    r = cli("index", photos, "--db", db, "--pretrained", moved, "--json")
    assert r.exit_code == 0, r.output
    r = cli("info", "--db", db, "--json")
    assert json.loads(r.stdout)["pretrained"] == str(moved)


def test_help_has_examples():
    for command in ("index", "search", "similar", "info", "serve"):
        r = cli(command, "--help")
        assert r.exit_code == 0
        assert "Example: clipsearch" in r.stdout


def test_help_names_values_as_clis_do():
    import re

    for command_args in (["index"], ["search"], ["similar"], ["serve"], ["tag"], ["dupes"], ["info"],
                         ["eval", "retrieval"], ["eval", "zeroshot"]):
        r = cli(*command_args, "--help")
        assert r.exit_code == 0
        assert not re.search(r"<[a-z]", r.stdout), r.stdout  # no <int range>, <list[str]>, <dir>
    assert " search [OPTIONS] QUERY...\n" in cli("search", "--help").stdout
    assert " index [OPTIONS] [FOLDERS...]\n" in cli("index", "--help").stdout
    text = cli("search", "--help").stdout
    assert re.search(r"-k, --top INTEGER\s", text) and re.search(r"--in DIRECTORY\s", text)
    assert re.search(r"--device TEXT\s", text)


def test_version_is_the_installed_packages():
    from importlib.metadata import version

    r = subprocess.run([_script(), "--version"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stdout == f"clipsearch {version('clipsearch')}\n"
    assert cli("--version").stdout == r.stdout


def test_shell_completion_script_and_answers():
    def shown(shell: str) -> str:
        # typer's own switch from detecting the calling shell to taking its name
        env = {**os.environ, "_TYPER_COMPLETE_TEST_DISABLE_SHELL_DETECTION": "1"}
        r = subprocess.run([_script(), "--show-completion", shell], capture_output=True, text=True,
                           env=env, timeout=60)
        assert r.returncode == 0, r.stderr
        return r.stdout

    bash = shown("bash")
    assert "_CLIPSEARCH_COMPLETE=complete_bash" in bash
    assert "complete -o default -F _clipsearch_completion clipsearch" in bash
    assert "#compdef clipsearch" in shown("zsh")
    assert "complete --command clipsearch" in shown("fish")
    # what bash asks the installed script while someone types `clipsearch se<TAB>`
    env = {**os.environ, "_CLIPSEARCH_COMPLETE": "complete_bash", "COMP_WORDS": "clipsearch se",
           "COMP_CWORD": "1"}
    r = subprocess.run([_script()], capture_output=True, text=True, env=env, timeout=60)
    assert r.stdout.split() == ["search", "serve"], (r.stdout, r.stderr)
    env.update(COMP_WORDS="clipsearch search --re", COMP_CWORD="2")
    r = subprocess.run([_script()], capture_output=True, text=True, env=env, timeout=60)
    assert {"--rerank", "--rerank-model", "--rerank-precision"} <= set(r.stdout.split()), r.stdout


def _script() -> str:
    found = shutil.which("clipsearch") or str(Path(sys.executable).parent / "clipsearch")
    assert os.access(found, os.X_OK), "the clipsearch console script is not installed"
    return found


def test_installed_console_script_end_to_end(photos, tmp_path, tiny_local_dir):
    """A fresh process with nothing registered: weights arrive as an open_clip hub-layout folder."""
    env = {**os.environ, "CLIPSEARCH_DB": str(tmp_path / "db"), "HF_HUB_OFFLINE": "1"}
    r = subprocess.run([_script(), "index", str(photos), "--model", f"local-dir:{tiny_local_dir}",
                        "--device", "cpu"], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "added 13," in r.stderr
    r = subprocess.run([_script(), "similar", str(photos / "animals" / "horse.png"), "--paths", "-k", "2"],
                       capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[0] == str(photos / "animals" / "horse.png")
    r = subprocess.run([_script(), "search", "x", "--db", str(tmp_path / "nothing")],
                       capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 1
    assert r.stderr.startswith("error: no index at")


def test_a_built_package_holds_the_server_and_the_gallery(tmp_path):
    """What `pip install` (not -e) gets: every subpackage, and the gallery's files."""
    import zipfile

    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                        "-w", str(tmp_path), str(Path(__file__).resolve().parents[1])],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    names = set(zipfile.ZipFile(next(tmp_path.glob("clipsearch-*.whl"))).namelist())
    for name in ("clipsearch/server/app.py", "clipsearch/server/static/index.html",
                 "clipsearch/server/static/gallery.js", "clipsearch/server/static/gallery.css",
                 "clipsearch/models/openclip.py", "clipsearch/server/client.py", "clipsearch/py.typed"):
        assert name in names, name


def test_control_characters_in_file_names_never_reach_the_terminal_raw(tmp_path, tiny_checkpoint):
    from PIL import Image

    folder = tmp_path / "photos"
    folder.mkdir()
    evil, split, plain = "evil\x1b[31mRED\x1b[0m.png", "two\nlines.png", "plain.png"
    for i, name in enumerate((evil, split, plain)):
        Image.new("RGB", (40, 30), (80 * i, 60, 200 - 50 * i)).save(folder / name)
    (folder / "bad\x1b]0;pwned\x07.jpg").write_bytes(b"not an image")
    db = tmp_path / "db"
    r = cli("index", folder, "--db", db, "--model", TINY, "--pretrained", tiny_checkpoint, "-q")
    assert r.exit_code == 0, r.output
    assert "\x1b" not in r.stderr and "\x07" not in r.stderr
    assert f"skipped {folder}/bad\\x1b]0;pwned\\x07.jpg: " in r.stderr

    table = cli("search", "x", "--db", db, "--no-server")
    assert table.exit_code == 0, table.output
    assert "\x1b" not in table.stdout
    assert "evil\\x1b[31mRED\\x1b[0m.png" in table.stdout and "two\\nlines.png" in table.stdout
    rows = [line for line in table.stdout.splitlines() if line.strip()[:1].isdigit()]
    assert len(rows) == 3  # the newline did not split a row

    hits = json.loads(cli("search", "x", "--db", db, "--json", "--no-server").stdout)
    assert {Path(h["path"]).name for h in hits} == {evil, split, plain}  # JSON stays exact
    null = cli("search", "x", "--db", db, "-0", "--no-server").stdout
    assert null.endswith("\0")
    assert set(null.split("\0")[:-1]) == {str(folder / n) for n in (evil, split, plain)}
    assert cli("search", "x", "--db", db, "--paths", "--null", "--no-server").stdout == null
    bad = cli("search", "x", "--db", db, "--json", "-0")
    assert bad.exit_code == 2 and "--json and --null cannot be combined" in bad.stderr

    missing = cli("similar", folder / "gone\x1b[2J.png", "--db", db)
    assert missing.exit_code == 2
    assert "gone\\x1b[2J.png" in missing.stderr and "\x1b" not in missing.stderr
    assert len(missing.stderr.strip().splitlines()) == 1


def _kitty_images(text: str) -> list[bytes]:
    """The PNGs a kitty-protocol stream shows: each image's chunks joined and decoded."""
    import base64
    import re

    images, current = [], ""
    for keys, payload in re.findall(r"\x1b_G([^;]*);([^\x1b]*)\x1b\\", text):
        current += payload
        if "m=0" in keys.split(","):
            images.append(base64.b64decode(current))
            current = ""
    return images


def test_preview_draws_thumbnails_beside_the_hits(photos, db):
    import base64
    import io
    import re

    from PIL import Image

    from clipsearch.cli.preview import detect

    hits = json.loads(cli("search", "a photo", "--db", db, "-k", 3, "--json", "--no-server").stdout)
    kitty = cli("search", "a photo", "--db", db, "-k", 3, "--preview=kitty", "--no-server")
    assert kitty.exit_code == 0, kitty.output
    assert kitty.stdout.startswith("\x1b_Ga=T,f=100,c=10,r=5,C=1,q=2,m=")
    shown = _kitty_images(kitty.stdout)
    assert len(shown) == 3
    for png, hit in zip(shown, hits, strict=True):
        with Image.open(io.BytesIO(png)) as img:
            assert img.format == "PNG" and max(img.size) == 128
        with Image.open(hit["path"]) as original:
            assert abs(img.size[0] / img.size[1] - original.size[0] / original.size[1]) < 0.05
    # beside each picture: the cursor moves right past it, then rank, score and path
    texts = re.findall(r"\x1b\[11C([^\n]*)\n{5}", kitty.stdout)
    assert texts == [f"{h['rank']:>3}  {h['score']:.3f}  {h['path']}" for h in hits]

    iterm = cli("search", "a photo", "--db", db, "-k", 3, "--preview=iterm", "--no-server").stdout
    found = re.findall(r"\x1b\]1337;File=inline=1;size=(\d+);width=10;height=5;preserveAspectRatio=1:"
                       r"([A-Za-z0-9+/=]+)\x07 ([^\n]*)\n", iterm)
    assert [text for *_, text in found] == [f"{h['rank']:>3}  {h['score']:.3f}  {h['path']}" for h in hits]
    assert all(int(size) == len(base64.b64decode(data)) for size, data, _ in found)

    for args in (["--json"], ["--paths"], ["-0"]):  # what programs read never carries pictures
        out = cli("search", "a photo", "--db", db, "-k", 3, "--preview=kitty", "--no-server", *args).stdout
        assert "\x1b" not in out
    plain = cli("similar", photos / "space" / "rocket.jpg", "--db", db, "-k", 3, "--preview", "auto",
                "--no-server")
    assert plain.exit_code == 0 and "\x1b" not in plain.stdout and "rocket.jpg" in plain.stdout
    assert "--preview shows thumbnails only in terminals that display images (kitty" in plain.stderr
    bad = cli("search", "a photo", "--db", db, "--preview=sixel")
    assert bad.exit_code == 2 and "--preview=sixel is not an image protocol" in bad.stderr

    assert detect({"TERM": "xterm-kitty"}) == detect({"KITTY_WINDOW_ID": "1"}) == "kitty"
    assert detect({"TERM_PROGRAM": "iTerm.app"}) == detect({"TERM_PROGRAM": "WezTerm"}) == "iterm"
    assert detect({"TERM": "xterm-256color"}) is None


def test_an_options_value_is_its_value_with_or_without_equals(photos, db):
    """`--preview kitty` is --preview=kitty, not a bare --preview and a word of the query."""
    from clipsearch.cli.commands import arguments

    assert arguments(["search", "cat", "--preview", "kitty"]) == ["search", "cat", "--preview=kitty"]
    assert arguments(["search", "--preview", "Off", "astronaut"]) == ["search", "--preview=Off", "astronaut"]
    assert arguments(["search", "--preview", "astronaut"]) == ["search", "--preview=auto", "astronaut"]
    assert arguments(["search", "--", "--preview", "kitty"]) == ["search", "--", "--preview", "kitty"]
    query = ["search", "a photo", "--db", str(db), "-k", "3", "--no-server"]
    spaced = cli(*arguments([*query, "--preview", "kitty"]))
    joined = cli("search", "a photo", "--db", db, "-k", 3, "--preview=kitty", "--no-server")
    assert spaced.exit_code == 0 and spaced.stdout == joined.stdout and spaced.stderr == ""
    off = cli(*arguments([*query, "--preview", "off"]))
    plain = cli("search", "a photo", "--db", db, "-k", 3, "--no-server")
    assert off.exit_code == 0 and off.stdout == plain.stdout and off.stderr == ""


def test_a_bare_preview_means_auto(photos, tmp_path, tiny_local_dir):
    import serving

    db = tmp_path / "db"  # a model a new process can load without the test's registered config
    assert cli("index", photos, "--db", db, "--model", f"local-dir:{tiny_local_dir}", "-q").exit_code == 0
    code, out, err, _ = serving.run_cli("search", "a photo", "--preview", "--db", db, "-k", 2, "--no-server")
    assert code == 0, err
    assert "rank" in out and "\x1b" not in out  # stdout is a pipe: no terminal to draw in
    assert "force one with --preview=kitty or --preview=iterm" in err


def test_nothing_matched_nothing_asked_or_a_file_for_a_folder_is_said(photos, db, tmp_path):
    """Each of these printed a success (or fell back to a default) and exited 0."""
    def images() -> int:
        return json.loads(cli("info", "--db", db, "--json").stdout)["images"]

    held = images()
    missing = cli("forget", photos / "nonexistent", "--db", db)
    assert missing.exit_code == 2, missing.output
    said = f"{photos / 'nonexistent'}: no indexed photo is this file, lies under this folder"
    assert said in missing.stderr
    some = cli("forget", "rocket.jpg", "nonexistent.jpg", "--db", db)  # one of two: neither is forgotten
    assert some.exit_code == 2 and "nonexistent.jpg: no indexed photo" in some.stderr and images() == held
    bare = cli("forget", "ROCKET.jpg", "--db", db, "--json")  # a bare name, as `info` takes it
    assert bare.exit_code == 0 and json.loads(bare.stdout)["removed"] == 1 and images() == held - 1

    empty = cli("tag", "--labels", "", "--db", db)
    assert empty.exit_code == 2 and "--labels '' names no label" in empty.stderr
    assert cli("tags", "--db", db).stdout == ""  # no built-in labels tagged in their place

    unused = cli("search", "a photo", "--rerank-model", tmp_path, "--db", db)
    assert unused.exit_code == 2 and "add --rerank, or leave --rerank-model out" in unused.stderr
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(b"not a folder")
    a_file = cli("search", "a photo", "--rerank", "--rerank-model", weights, "--db", db, "--no-server")
    assert a_file.exit_code == 2
    assert f"--rerank-model {weights} is a file; point it at the folder" in a_file.stderr


def test_the_index_knows_its_roots_and_keeps_no_empty_one(photos, db, tmp_path, monkeypatch):
    from PIL import Image

    from clipsearch.cli import present

    monkeypatch.setattr(present.out, "width", 400)  # no path folded in the tables below

    Image.new("RGB", (40, 30), (200, 30, 90)).save(photos / "space" / "new.png")
    again = cli("index", "--db", db, "--json")  # no folder: the stored roots, rescanned
    assert again.exit_code == 0, again.output
    assert json.loads(again.stdout)["added"] == 1
    none = cli("index", "--db", tmp_path / "nothing-here")
    assert none.exit_code == 2 and "no folder given, and no index at" in none.stderr

    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("not a photo")
    told = cli("index", empty, "--db", db)
    assert told.exit_code == 0
    assert (f"warning: {empty} holds no photos or videos clipsearch reads (JPEG, PNG" in told.stderr
            and "it is not kept as a root; --keep-empty keeps it" in told.stderr)
    assert json.loads(cli("roots", "--db", db, "--json").stdout)["roots"] == [
        {"path": str(photos), "offline_since": None}]
    kept = cli("index", empty, "--db", db, "--keep-empty")
    assert kept.exit_code == 0 and "warning" not in kept.stderr

    listed = cli("roots", "--db", db)  # one root a line, as `info` shows them
    assert listed.exit_code == 0 and listed.stdout.splitlines() == [f"{empty} (online)", f"{photos} (online)"]
    info = cli("info", "--db", db).stdout
    assert "\\n" not in info and f"{empty} (online)" in info and f"{photos} (online)" in info


def test_similar_takes_a_bare_name_as_info_and_forget_do(photos, db):
    by_name = cli("similar", "ROCKET.jpg", "--db", db, "--no-server", "--json", "-k", 3)
    by_path = cli("similar", photos / "space" / "rocket.jpg", "--db", db, "--no-server", "--json", "-k", 3)
    assert by_name.exit_code == 0 and by_name.stdout == by_path.stdout, by_name.output
    assert json.loads(by_name.stdout)[0]["path"] == str(photos / "space" / "rocket.jpg")


def test_similar_to_a_bad_file_a_missing_one_or_a_folder_is_bad_input_alike(photos, db, tmp_path):
    corrupt = tmp_path / "bad.jpg"
    corrupt.write_bytes(b"not a jpeg")
    for given, said in [(corrupt, f"{corrupt}: not a readable image"),
                        (tmp_path / "nope.jpg", f"image not found: {tmp_path / 'nope.jpg'}"),
                        (photos / "space", f"{photos / 'space'} is a folder; give one photo or video")]:
        r = cli("similar", given, "--db", db, "--no-server")
        assert (r.exit_code, r.stderr.count("\n")) == (2, 1) and said in r.stderr, r.output
