"""The documentation says what the code does: the reference pages are the code's own (--help,
OpenAPI), every command and option and every environment variable is in them, every file an
index holds is on the on-disk page, the site builds with `mkdocs build --strict` (a broken link
or a missing page fails), and the service files for systemd and launchd are valid and start the
command they claim to."""

from __future__ import annotations

import importlib.util
import os
import plistlib
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import TINY
from typer.testing import CliRunner

from clipsearch.cli.commands import app
from tools import reference

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
UNIT = DOCS / "service" / "clipsearch.service"
PLIST = DOCS / "service" / "com.clipsearch.serve.plist"


def test_the_reference_pages_are_what_the_code_generates(capsys):
    assert reference.main(["--check"]) == 0, capsys.readouterr().err  # names the stale page and the fix


def _sections(page: str) -> dict[str, str]:
    parts = re.split(r"^## clipsearch (.+)$", page, flags=re.M)
    return {parts[i]: parts[i + 1] for i in range(1, len(parts), 2)}


def test_every_command_and_option_of_the_cli_is_in_the_reference():
    sections = _sections((DOCS / "reference" / "cli.md").read_text(encoding="utf-8"))
    found = reference.commands()
    assert {"index", "search", "serve", "roots move", "eval retrieval"} <= {" ".join(p) for p, _ in found}
    for path, command in found:
        name = " ".join(path)
        assert name in sections, f"clipsearch {name} has no section in docs/reference/cli.md"
        for param in command.params:
            if param.param_type_name == "option" and not param.hidden:
                for opt in param.opts + param.secondary_opts:
                    assert re.search(rf"(?<![\w-]){re.escape(opt)}(?![\w-])", sections[name]), \
                        f"{opt} of clipsearch {name} is not in docs/reference/cli.md"


def test_the_http_reference_lists_every_route_the_server_has():
    page = (DOCS / "reference" / "http-api.md").read_text(encoding="utf-8")
    spec = reference.openapi()
    assert len(spec["paths"]) >= 15
    for route, methods in spec["paths"].items():
        for method in methods:
            assert f"## {method.upper()} `{route}`" in page
    assert "| `q` (required) | query | string |" in page


def test_the_environment_page_names_every_variable_the_code_reads_and_no_other():
    read = set()
    for source in (ROOT / "clipsearch").rglob("*.py"):
        read |= set(re.findall(r"CLIPSEARCH_[A-Z0-9_]+", source.read_text(encoding="utf-8")))
    documented = set(re.findall(r"`(CLIPSEARCH_[A-Z0-9_]+)`",
                                (DOCS / "reference" / "environment.md").read_text(encoding="utf-8")))
    assert read - documented == set(), "read by the code, missing from docs/reference/environment.md"
    assert documented - read == set(), "documented, but no code reads it"


def test_every_file_an_index_holds_is_on_the_on_disk_page(photos, tmp_path, tiny_checkpoint, embedder,
                                                          seed_export):
    seed_export(embedder)
    runner = CliRunner()
    db = tmp_path / "db"
    env = {"CLIPSEARCH_FAST_QUERY": "1"}  # with the torch-free path's files (made in the command)

    def cli(*args):
        result = runner.invoke(app, [str(a) for a in args], env=env, catch_exceptions=False)
        assert result.exit_code == 0, result.output

    model = ("--model", TINY, "--pretrained", tiny_checkpoint, "--device", "cpu", "-q")
    cli("index", photos, "--db", db, *model)
    next(p for p in sorted(photos.rglob("*.jpg"))).unlink()
    cli("index", photos, "--db", db, *model)  # a removed photo: its vector is kept
    cli("tag", "--labels", "beach,dog", "--db", db, "--device", "cpu")
    page = (DOCS / "reference" / "index-layout.md").read_text(encoding="utf-8")
    named = re.sub(r"v<[A-Z]>", "v<V>", page)
    seen = {p.name for p in db.iterdir()}
    assert {"manifest.json", "images.lance", "tags.lance", "kept.lance", "ann", "fast"} <= seen
    for entry in db.iterdir():
        shown = entry.name + ("/" if entry.is_dir() else "")
        assert f"`{shown}`" in page, f"{shown} in an index is not on docs/reference/index-layout.md"
    for folder in ("ann", "fast"):
        for entry in (db / folder).iterdir():
            pattern = re.sub(r"v\d+", "v<V>", entry.name.removesuffix(".sum"))
            pattern = re.sub(r"^text-[^./]+", "text-<model key>", pattern)
            assert pattern in named, f"{folder}/{entry.name} is not on the on-disk page"


NO_MKDOCS = importlib.util.find_spec("mkdocs") is None and not os.environ.get("CLIPSEARCH_REQUIRE_DOCS")
NO_SYSTEMD = shutil.which("systemd-analyze") is None and not os.environ.get("CLIPSEARCH_REQUIRE_SYSTEMD")


@pytest.mark.skipif(NO_MKDOCS, reason="MkDocs is not installed (pip install -e '.[docs]')")
def test_the_site_builds_strictly(tmp_path):
    result = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir",
                             str(tmp_path / "site")], cwd=ROOT, capture_output=True, text=True,
                            env={**os.environ, "NO_MKDOCS_2_WARNING": "1"}, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    site = tmp_path / "site"
    assert "clipsearch serve" in (site / "reference" / "cli" / "index.html").read_text(encoding="utf-8")
    python_api = (site / "reference" / "python-api" / "index.html").read_text(encoding="utf-8")
    assert "open_index" in python_api and "ClipsearchError" in python_api  # mkdocstrings rendered
    unit = (site / "guides" / "service" / "index.html").read_text(encoding="utf-8")
    text = re.sub(r"<[^>]+>", "", unit)  # the service files, included from docs/service/
    assert "ExecStart=%h/.local/bin/clipsearch serve --watch" in text and "com.clipsearch.serve" in text
    assert "fonts.googleapis" not in (site / "index.html").read_text(encoding="utf-8")  # readable offline


def test_the_readme_is_short_and_its_links_lead_somewhere():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(readme.splitlines()) <= 200
    for target in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", readme):
        if not target.startswith("http"):
            assert (ROOT / target).exists(), f"the README links to {target}, which is missing"
    assert "pip install -e \".[dev]\"" in readme and "python -m pytest" in readme


def _serve_args_are_valid(args: list[str]) -> None:
    """The service's command line parses as `clipsearch` parses it today."""
    assert args[0] == "serve"
    dict(reference.commands())[("serve",)].make_context("clipsearch serve", list(args[1:]))


def _fake_home(tmp_path: Path, record: Path) -> Path:
    home = tmp_path / "home"
    (home / ".local" / "bin").mkdir(parents=True)
    (home / "Library" / "Logs").mkdir(parents=True)
    stub = home / ".local" / "bin" / "clipsearch"
    stub.write_text(f'#!/bin/sh\nprintf "%s\\n" "$@" > "{record}"\necho started\n')
    stub.chmod(0o755)
    return home


@pytest.mark.skipif(NO_SYSTEMD, reason="systemd-analyze is not installed (apt-get install systemd)")
def test_the_systemd_unit_verifies_and_runs_clipsearch_serve(tmp_path):
    home = _fake_home(tmp_path, tmp_path / "args")
    result = subprocess.run(["systemd-analyze", "verify", str(UNIT)], capture_output=True, text=True,
                            env={**os.environ, "HOME": str(home)}, timeout=60)
    assert result.returncode == 0 and result.stderr.strip() == "", result.stderr
    exec_start = re.search(r"^ExecStart=(.+)$", UNIT.read_text(), re.M).group(1).split()
    assert exec_start[0] == "%h/.local/bin/clipsearch"
    _serve_args_are_valid(exec_start[1:])
    assert "--watch" in exec_start
    # verify must fail on a unit that is wrong, or this test proves nothing
    broken = tmp_path / "broken.service"
    broken.write_text(UNIT.read_text().replace("ExecStart=%h/.local/bin/", "ExecStart=%h/nowhere/"))
    result = subprocess.run(["systemd-analyze", "verify", str(broken)], capture_output=True, text=True,
                            env={**os.environ, "HOME": str(home)}, timeout=60)
    assert result.returncode != 0 and "nowhere/clipsearch" in result.stderr


LAUNCHD_KEYS = {  # launchd.plist(5)
    "Label", "Disabled", "UserName", "GroupName", "Program", "ProgramArguments", "EnableGlobbing",
    "KeepAlive", "RunAtLoad", "WorkingDirectory", "EnvironmentVariables", "Umask", "TimeOut",
    "ExitTimeOut", "ThrottleInterval", "StartInterval", "StartCalendarInterval", "StandardInPath",
    "StandardOutPath", "StandardErrorPath", "Nice", "ProcessType", "LowPriorityIO", "WatchPaths",
    "AbandonProcessGroup", "SoftResourceLimits", "HardResourceLimits", "LimitLoadToSessionType",
}


def test_the_launchd_plist_is_valid_and_its_command_runs_clipsearch_serve(tmp_path):
    plist = plistlib.loads(PLIST.read_bytes())
    assert set(plist) <= LAUNCHD_KEYS, set(plist) - LAUNCHD_KEYS
    assert plist["Label"] == PLIST.stem
    assert plist["RunAtLoad"] is True and plist["KeepAlive"] == {"SuccessfulExit": False}
    program = plist["ProgramArguments"]
    assert program[:2] == ["/bin/sh", "-c"] and Path(program[0]).exists()
    # run it as launchd would, with a HOME of its own whose clipsearch records its arguments
    record = tmp_path / "args"
    home = _fake_home(tmp_path, record)
    subprocess.run(program, env={"HOME": str(home), "PATH": "/usr/bin:/bin"}, check=True, timeout=30)
    args = record.read_text().split("\n")[:-1]
    assert args == ["serve", "--watch", "--port", "8765"]
    _serve_args_are_valid(args)
    assert (home / "Library" / "Logs" / "clipsearch.log").read_text() == "started\n"


def test_the_terminal_picture_is_the_preview_output_laid_out_as_kitty_lays_it_out(sample_index):
    """`--preview=kitty` puts each thumbnail at the start of a 5-row band and its hit's text beside
    it, never under it. CLIPSEARCH_TERMINAL_SCREENSHOT=docs/terminal.png saves the picture."""
    from tools import terminal

    query = ["search", "an astronaut", "--db", str(sample_index), "-k", "4", "--no-server"]
    runner = CliRunner()
    paths = runner.invoke(app, [*query, "--paths"], catch_exceptions=False).stdout.split("\n")[:-1]
    shown = runner.invoke(app, [*query, "--preview=kitty"], catch_exceptions=False).stdout
    screen = terminal.emulate(shown)
    assert [(r, c, w, h) for r, c, w, h, _ in screen.pictures] == [(5 * i, 0, 10, 5) for i in range(4)]
    assert all(max(p.size) == 128 for *_, p in screen.pictures)
    for i, path in enumerate(paths):
        assert screen.line(5 * i) == " " * 11 + f"{i + 1:>3}  " + screen.line(5 * i)[16:21] + f"  {path}"
    assert not any(c < 10 for (_, c) in screen.text), "text drawn over a thumbnail"
    picture = terminal.render(screen, 'clipsearch search "an astronaut" --preview', width=72)
    assert picture.size == (74 * terminal.CELL[0], 23 * terminal.CELL[1])
    if os.environ.get("CLIPSEARCH_TERMINAL_SCREENSHOT"):
        home = str(sample_index.parent / "photos")
        shown = shown.replace(home, "~/Pictures")  # the test's temporary folder, as a reader's would read
        terminal.render(terminal.emulate(shown), 'clipsearch search "an astronaut" --preview',
                        width=72).save(os.environ["CLIPSEARCH_TERMINAL_SCREENSHOT"])
