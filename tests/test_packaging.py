"""What the package declares matches what it needs, and the Python API's progress bars."""

from __future__ import annotations

import ast
import re
import sys
from importlib.metadata import packages_distributions

import tomllib
from conftest import ROOT


def _declared() -> set[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    names = [*project["dependencies"], *project["optional-dependencies"]["ray"]]
    return {re.split(r"[<>=\[ ;]", n, maxsplit=1)[0].lower().replace("_", "-") for n in names}


def test_every_third_party_import_is_declared():
    """A module the package imports must arrive with `pip install clipsearch`, not by luck
    through another package's requirements (regex and ftfy came only with open_clip)."""
    owners = packages_distributions()
    imported: dict[str, str] = {}
    for path in (ROOT / "clipsearch").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top not in sys.stdlib_module_names and top != "clipsearch":
                    imported.setdefault(top, str(path.relative_to(ROOT)))
    declared = _declared()
    missing = {}
    for module, where in imported.items():
        dists = {d.lower().replace("_", "-") for d in owners.get(module, [module])}
        if not dists & declared:
            missing[module] = (where, sorted(dists))
    assert not missing, f"imported but not declared in pyproject.toml: {missing}"
    assert {"regex", "ftfy"} <= declared


def test_declared_packages_are_used_or_say_why():
    """A dependency nothing imports stays only with a comment saying what needs it."""
    text = (ROOT / "pyproject.toml").read_text()
    source = "\n".join(p.read_text(encoding="utf-8") for p in (ROOT / "clipsearch").rglob("*.py"))
    for name in ("torchvision", "python-multipart", "onnx", "onnxscript"):
        line_at = text.index(f'"{name}>=')
        before = text[:line_at].rstrip().splitlines()[-1]
        assert before.strip().startswith("#") or "#" in text[line_at:].splitlines()[0], name
    assert re.search(r"\bfrom tqdm|\bimport tqdm", source)  # tqdm is declared, so it is used


def test_index_folders_progress_true_draws_tqdm_bars(photos, tmp_path, embedder, capsys):
    from clipsearch import index_folders

    summary = index_folders([photos], tmp_path / "db", embedder=embedder, workers=1, progress=True)
    err = capsys.readouterr().err
    assert summary.added == 13
    assert "found 13 images" in err
    assert re.search(r"indexing: 100%\|.*\| 13/13", err), err
    assert "indexing" not in capsys.readouterr().err  # bars closed with the run
