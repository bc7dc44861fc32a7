"""What the CLI prints on a fixed index, written to a folder or compared with one written before:
the check that a change meant to change nothing a user sees (a refactor, a move of modules)
changed nothing. Times are masked; everything else must be byte-identical.

    python -m tools.outputs --write /tmp/before     # before the change
    python -m tools.outputs --compare /tmp/before   # after it: lists every output that differs

The index is sample_images/ with a few photos of the shapes task, indexed with the committed
trained CLIP (benchmarks.fixtures) into a fixed folder, so that paths in the outputs match.
"""

from __future__ import annotations

import argparse
import difflib
import os
import random
import re
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WORK = Path("/tmp/clipsearch-outputs")
_TIMES = re.compile(r"\b\d+(?:\.\d+)? ?(?:ms|s)\b|\"(?:seconds|[a-z_]*_ms|total)\": [0-9.e-]+")


def _app():
    try:
        from clipsearch.cli.commands import app
    except ImportError:  # the layout before clipsearch/cli/ became a package
        from clipsearch.cli import app
    return app


def _library() -> tuple[Path, Path, str]:
    sys.path.append(str(ROOT))  # after PYTHONPATH: the clipsearch asked for is the one measured
    from benchmarks import fixtures, shapes

    shutil.rmtree(WORK, ignore_errors=True)
    photos, db = WORK / "photos", WORK / "db"
    shutil.copytree(ROOT / "sample_images", photos, ignore=shutil.ignore_patterns("*.md"))
    for i, scene in enumerate(shapes.singles()[:6]):
        shapes.render(scene, random.Random(i)).save(photos / f"shape {i}.png")
    shutil.copyfile(photos / "shape 0.png", photos / "copy of shape 0.png")
    for path in photos.rglob("*"):  # times shown (info PHOTO) must not follow the checkout's
        os.utime(path, ns=(1_600_000_000 * 10**9,) * 2)
    trained = fixtures.models(WORK / "models")
    return photos, db, f"local-dir:{trained.clip_dir}"


def commands(photos: Path, db: Path, model: str) -> list[tuple[str, list[str]]]:
    d = ["--db", str(db)]
    first = str(sorted(photos.rglob("*.jpg"))[0])
    return [
        ("index.json", ["index", str(photos), *d, "--model", model, "--json", "-q"]),
        ("search.json", ["search", "a red circle", *d, "--json", "-k", "8"]),
        ("search.table", ["search", "a red circle", *d, "-k", "8", "--preview", "off"]),
        ("search.paths", ["search", "a blue square", *d, "--paths", "-k", "5"]),
        ("search-filtered.json", ["search", "a photo", *d, "--json", "--ext", "png", "-k", "20"]),
        ("search-words.json", ["search", "shape", *d, "--json", "-k", "5"]),
        ("similar.json", ["similar", first, *d, "--json", "-k", "5"]),
        ("info.json", ["info", *d, "--json"]),
        ("info.table", ["info", *d]),
        ("info-photo.json", ["info", first, *d, "--json"]),
        ("tag.json", ["tag", *d, "--labels", "circle,square,triangle,photo", "--json"]),
        ("tags.table", ["tags", *d]),
        ("facets.json", ["facets", *d, "--json"]),
        ("search-tag.json", ["search", "a shape", *d, "--tag", "circle", "--json"]),
        ("dupes.json", ["dupes", *d, "--json"]),
        ("dupes.table", ["dupes", *d]),
        ("dupes-extras.paths", ["dupes", *d, "--extras", "--paths"]),
        ("roots.table", ["roots", *d]),
        ("index-again.json", ["index", str(photos), *d, "--json"]),
    ]


def run() -> dict[str, str]:
    from typer.testing import CliRunner

    os.environ.update({"HF_HUB_OFFLINE": "1", "CLIPSEARCH_CACHE": str(WORK / "cache"),
                       "CLIPSEARCH_FAST_QUERY": "0", "COLUMNS": "160"})
    photos, db, model = _library()
    runner, app, out = CliRunner(), _app(), {}
    for name, args in commands(photos, db, model):
        result = runner.invoke(app, args)
        text = _TIMES.sub("<time>", result.stdout)
        if name.startswith("info."):  # the index folder's size moves by a byte or two between runs
            text = re.sub(r'"bytes": \d+|\d+\.\d MB', "<size>", text)
        out[name] = f"exit {result.exit_code}\n" + text
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--write", type=Path, metavar="DIR")
    mode.add_argument("--compare", type=Path, metavar="DIR")
    args = parser.parse_args()
    outputs = run()
    if args.write:
        args.write.mkdir(parents=True, exist_ok=True)
        for name, text in outputs.items():
            (args.write / name).write_text(text)
        print(f"{len(outputs)} outputs written to {args.write}")
        return
    differ = []
    for name, text in outputs.items():
        before = (args.compare / name).read_text() if (args.compare / name).is_file() else ""
        if before != text:
            differ.append(name)
            sys.stdout.writelines(difflib.unified_diff(before.splitlines(True), text.splitlines(True),
                                                       f"before/{name}", f"after/{name}"))
    print(f"{len(outputs) - len(differ)} of {len(outputs)} outputs byte-identical"
          + (f"; differ: {', '.join(differ)}" if differ else ""))
    raise SystemExit(1 if differ else 0)


if __name__ == "__main__":
    main()
