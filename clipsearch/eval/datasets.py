"""Evaluation datasets: captioned images for retrieval (JSONL, CSV, the Karpathy-split JSON of
COCO and Flickr30k) and class folders for zero-shot classification (ImageFolder layout).

Every image must exist when the dataset is read: a wrong path is reported at once, naming the
file, the line and the fix, rather than after minutes of indexing.
"""

from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass

from clipsearch.config import IMAGE_EXTENSIONS
from clipsearch.errors import BadInputError


@dataclass(frozen=True)
class CaptionSet:
    """Images, each with one or more captions (retrieval)."""

    source: str
    images: list[str]  # absolute paths, distinct
    captions: list[list[str]]  # per image

    @property
    def queries(self) -> int:
        return sum(len(c) for c in self.captions)


@dataclass(frozen=True)
class ClassSet:
    """Images, each of one class (zero-shot classification)."""

    source: str
    classes: list[str]  # labels, in folder-name order
    images: list[str]  # absolute paths
    labels: list[int]  # index into classes, per image


def read_captions(path: str | os.PathLike[str], images: str | os.PathLike[str] | None = None,
                  split: str = "test") -> CaptionSet:
    """A retrieval dataset by its file's form: `.jsonl` ({"image", "captions"} or {"image",
    "caption"} per line), `.csv` (columns image and caption; an image's rows are merged), or
    `.json` (Karpathy's split file: images[].filename, .filepath, .split, .sentences[].raw, where
    `split` chooses the images). Image paths are relative to `images`, else to the file's folder."""
    path = os.path.abspath(os.path.expanduser(os.fspath(path)))
    if not os.path.isfile(path):
        raise BadInputError(f"dataset not found: {path}")
    base = os.path.abspath(os.path.expanduser(os.fspath(images))) if images else os.path.dirname(path)
    if images and not os.path.isdir(base):
        raise BadInputError(f"--images: folder not found: {base}")
    kind = os.path.splitext(path)[1].lower()
    readers = {".jsonl": _jsonl, ".csv": _csv, ".json": lambda p, b: _karpathy(p, b, split)}
    if kind not in readers:
        raise BadInputError(f"{path}: a retrieval dataset is .jsonl, .csv or Karpathy's .json, "
                            f"not {kind or 'a file without an extension'}")
    try:
        rows = readers[kind](path, base)
    except UnicodeDecodeError:
        raise BadInputError(f"{path} is not UTF-8 text; save it as UTF-8") from None
    merged: dict[str, list[str]] = {}
    for where, image, captions in rows:
        full = os.path.normpath(os.path.join(base, os.path.expanduser(image)))
        if not os.path.isfile(full):
            hint = "pass --images DIR, the folder its paths are relative to" if not images else \
                "check --images and the path"
            raise BadInputError(f"{where}: image not found: {full}; {hint}")
        merged.setdefault(full, []).extend(captions)
    if not merged:
        raise BadInputError(f"{path} holds no captioned images"
                            + (f" in split {split!r}" if kind == ".json" else ""))
    return CaptionSet(path, list(merged), list(merged.values()))


def _text(value: object, where: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise BadInputError(f"{where}: a caption must be non-empty text, not {value!r}")
    return value.strip()


def _jsonl(path: str, _base: str) -> list[tuple[str, str, list[str]]]:
    rows = []
    with open(path, encoding="utf-8-sig") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            where = f"{path}, line {number}"
            try:
                item = json.loads(line)
            except json.JSONDecodeError as exc:
                raise BadInputError(f"{where}: not JSON ({exc.msg}); write one "
                                    '{"image": "path", "captions": ["..."]} per line') from None
            if not isinstance(item, dict) or not isinstance(item.get("image"), str) or not (
                    "captions" in item or "caption" in item):
                raise BadInputError(f'{where}: write {{"image": "path", "captions": ["..."]}}, '
                                    f"not {line.strip()[:80]}")
            captions = item.get("captions", [item.get("caption")])
            if isinstance(captions, str) or not isinstance(captions, list) or not captions:
                raise BadInputError(f"{where}: captions must be a non-empty list of texts")
            rows.append((where, item["image"], [_text(c, where) for c in captions]))
    return rows


def _csv(path: str, _base: str) -> list[tuple[str, str, list[str]]]:
    with open(path, encoding="utf-8-sig", newline="") as f:
        reader = csv.DictReader(f)
        if not reader.fieldnames or not {"image", "caption"} <= set(reader.fieldnames):
            raise BadInputError(f"{path}: the first line must name the columns image and caption "
                                f"(found: {', '.join(reader.fieldnames or []) or 'nothing'})")
        return [(f"{path}, line {reader.line_num}", row["image"] or "",
                 [_text(row["caption"], f"{path}, line {reader.line_num}")]) for row in reader]


def _karpathy(path: str, _base: str, split: str) -> list[tuple[str, str, list[str]]]:
    with open(path, encoding="utf-8") as f:
        try:
            data = json.load(f)
        except json.JSONDecodeError as exc:
            raise BadInputError(f"{path}: not JSON ({exc.msg})") from None
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise BadInputError(f"{path}: not a Karpathy split file (it has no 'images' list)")
    rows = []
    for number, item in enumerate(data["images"]):
        where = f"{path}, images[{number}]"
        try:
            if item.get("split") != split:
                continue
            image = os.path.join(item.get("filepath", ""), item["filename"])
            captions = [_text(s["raw"], where) for s in item["sentences"]]
        except (KeyError, TypeError, AttributeError):
            raise BadInputError(f"{where}: needs filename, split and sentences[].raw") from None
        rows.append((where, image, captions))
    return rows


def read_classes(folder: str | os.PathLike[str]) -> ClassSet:
    """One subfolder per class, named for it ('_' reads as a space: golden_retriever); images
    anywhere below each subfolder."""
    root = os.path.abspath(os.path.expanduser(os.fspath(folder)))
    if not os.path.isdir(root):
        raise BadInputError(f"folder not found: {root}")
    classes, images, labels = [], [], []
    for name in sorted(os.listdir(root)):
        sub = os.path.join(root, name)
        if name.startswith(".") or not os.path.isdir(sub):
            continue
        found = sorted(os.path.join(d, f) for d, _, files in os.walk(sub, followlinks=True) for f in files
                       if os.path.splitext(f)[1].lower() in IMAGE_EXTENSIONS and not f.startswith("."))
        if not found:
            continue
        classes.append(name.replace("_", " "))
        images += found
        labels += [len(classes) - 1] * len(found)
    if len(classes) < 2:
        raise BadInputError(f"{root} needs at least two subfolders of images, one per class "
                            f"(found {len(classes)}): the ImageFolder layout")
    return ClassSet(root, classes, images, labels)
