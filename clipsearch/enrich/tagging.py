"""Zero-shot tagging from the stored image vectors: label sets, prompt ensembles, thresholds.

Each label is embedded through several prompt templates, averaged and renormalised (the CLIP
paper's prompt ensembling). An image gets a label when the label beats a *background* prompt
ensemble ("a photo.", "a picture of something." ...):

    score = sigmoid(100 * (cos(image, label) - cos(image, background)))

100 is CLIP's trained logit scale, so this is CLIP's own two-way softmax between "this label" and
"just some photo". Each label is judged on its own (multi-label), and an image none of whose
labels beats the background gets no tag, instead of the least bad label that a softmax over the
labels alone would force on it. No image is decoded or embedded: tagging is one matrix product.

A `Tagger` (the label set with its embedded label and background vectors) is stored with the
tags, so images indexed later are tagged the same way without loading the text model again.
"""

from __future__ import annotations

import base64
import os
import stat
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from clipsearch.errors import BadInputError, CorruptIndexError
from clipsearch.results import ImageTags
from clipsearch.store.table import TAGS_SCHEMA

if TYPE_CHECKING:
    from clipsearch.store.table import Store

TEMPLATES = (
    "a photo of {}.", "a good photo of {}.", "a close-up photo of {}.", "a blurry photo of {}.",
    "a bright photo of {}.", "a dark photo of {}.", "a cropped photo of {}.", "a picture of {}.",
)
BACKGROUND = ("a photo.", "a picture.", "an image.", "a photo of something.", "a snapshot.")
LOGIT_SCALE = 100.0
DEFAULT_THRESHOLD = 0.5
BUILTIN_LABELS = (
    "people", "portrait", "selfie", "group photo", "baby", "child", "dog", "cat", "bird", "horse",
    "wildlife", "insect", "flower", "tree", "forest", "garden", "beach", "sea", "lake", "river",
    "mountain", "snow", "desert", "sunset", "night sky", "city", "street", "building", "interior",
    "food", "drink", "car", "bicycle", "boat", "airplane", "train", "sports", "concert", "wedding",
    "birthday party", "document", "receipt", "screenshot", "text", "painting", "map", "space",
    "texture", "animal", "vehicle",
)


@dataclass(frozen=True)
class LabelSet:
    """Labels and the prompts each is embedded through."""

    prompts: dict[str, list[str]]
    threshold: float = DEFAULT_THRESHOLD
    top: int | None = None

    @property
    def labels(self) -> list[str]:
        return list(self.prompts)


def label_set(labels: str | Sequence[str] | None = None, labels_file: str | os.PathLike[str] | None = None,
              threshold: float = DEFAULT_THRESHOLD, top: int | None = None, *,
              labels_text: str | None = None) -> LabelSet:
    """Build a label set from a comma list, a file (one `label` or `label: prompt; prompt` per
    line, '#' comments; `{}` in a prompt stands for the label) or such a file's text (what the
    CLI hands a server: it never opens a path a request names), or the built-in photo subjects
    when none is given."""
    check_threshold(threshold)
    if top is not None and top < 1:
        raise BadInputError(f"--top must be at least 1, not {top}")
    entries: list[tuple[str, list[str]]] = []
    if labels_file is not None:
        labels_text = read_labels_file(os.fspath(labels_file))
        entries += _parse_labels(labels_text, f"--labels-file {os.fspath(labels_file)}")
    elif labels_text is not None:
        entries += _parse_labels(labels_text, "the labels file")
    if labels is not None:
        items = labels.split(",") if isinstance(labels, str) else list(labels)
        given = [(item.strip(), []) for item in items if item.strip()]
        if not given:  # asked for labels and gave none: never fall back to replacing their tags
            raise BadInputError(f"--labels {labels if isinstance(labels, str) else ','.join(labels)!r} "
                                "names no label; pass --labels 'cat,dog,beach', or leave --labels out "
                                "for the built-in photo subjects")
        entries += given
    if labels_text is None and labels is None:
        entries = [(label, []) for label in BUILTIN_LABELS]
    if not entries:
        raise BadInputError("no labels given; pass --labels 'cat,dog,beach' or a --labels-file")
    prompts: dict[str, list[str]] = {}
    for label, custom in entries:
        if label in prompts:
            raise BadInputError(f"label {label!r} is given twice; keep one")
        prompts[label] = [p.replace("{}", label) for p in custom] or [t.format(label) for t in TEMPLATES]
    return LabelSet(prompts, threshold, top)


def check_threshold(threshold: float) -> None:
    if not 0.0 <= threshold <= 1.0:
        raise BadInputError(f"--threshold {threshold} is not between 0 and 1")


MAX_LABELS_FILE = 1 << 20  # a million characters: far more labels than anyone tags with


def read_labels_file(path: str | os.PathLike[str]) -> str:
    """A labels file's text (a regular file of UTF-8, at most MAX_LABELS_FILE characters)."""
    path = os.fspath(path)
    try:
        with open(path, encoding="utf-8-sig") as f:
            if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
                raise BadInputError(f"--labels-file {path} is not a regular file; give a text file of labels")
            text = f.read(MAX_LABELS_FILE + 1)
    except OSError as exc:
        raise BadInputError(f"--labels-file {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise BadInputError(f"--labels-file {path} is not UTF-8 text; save it as UTF-8") from None
    if len(text) > MAX_LABELS_FILE:
        raise BadInputError(f"--labels-file {path} is over {MAX_LABELS_FILE:,} characters; "
                            "give one label a line")
    return text


def _parse_labels(text: str, source: str) -> list[tuple[str, list[str]]]:
    lines = text.splitlines()
    entries = []
    for number, line in enumerate(lines, start=1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        label, _, rest = line.partition(":")
        label = label.strip()
        prompts = [p.strip() for p in rest.split(";") if p.strip()]
        if not label or (rest.strip() and not prompts):
            raise BadInputError(f"{source}, line {number}: write 'label' or "
                                f"'label: prompt; prompt', not {line!r}")
        entries.append((label, prompts))
    return entries


def ensemble(vectors: np.ndarray) -> np.ndarray:
    """Mean of unit prompt vectors, renormalised."""
    mean = vectors.astype(np.float64).mean(axis=0)
    return (mean / np.linalg.norm(mean)).astype(np.float32)


@dataclass(frozen=True)
class Tagger:
    """A label set with its embedded label vectors: everything tagging needs but the images."""

    labels: LabelSet
    vectors: np.ndarray  # (labels, dim) unit prompt ensembles
    background: np.ndarray  # (dim,) unit background ensemble

    @classmethod
    def embed(cls, labels: LabelSet, embed_texts: Callable[[Sequence[str]], np.ndarray]) -> Tagger:
        """Embed every label's prompts and the background prompts in one batch, then ensemble."""
        texts = [p for prompts in labels.prompts.values() for p in prompts] + list(BACKGROUND)
        vectors = embed_texts(texts)
        out, start = [], 0
        for prompts in labels.prompts.values():
            out.append(ensemble(vectors[start:start + len(prompts)]))
            start += len(prompts)
        return cls(labels, np.stack(out), ensemble(vectors[start:]))

    def scores(self, images: np.ndarray) -> np.ndarray:
        """(images x labels) probabilities that each label, rather than the background, fits."""
        margin = images @ self.vectors.T - (images @ self.background)[:, None]
        return (1.0 / (1.0 + np.exp(-LOGIT_SCALE * margin.astype(np.float64)))).astype(np.float32)

    def choose(self, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(image rows, label columns) of the kept tags: per image, the labels at or above the
        threshold, best first (ties in label order), at most `top`."""
        order = np.argsort(-probs, axis=1, kind="stable")
        keep = np.take_along_axis(probs, order, axis=1) >= self.labels.threshold
        if self.labels.top is not None:
            keep[:, self.labels.top:] = False
        rows, ranks = np.nonzero(keep)
        return rows, order[rows, ranks]

    def to_dict(self) -> dict:
        """JSON-ready, vectors included (float32, base64), so stored tags can be extended later."""
        return {
            "prompts": self.labels.prompts, "threshold": self.labels.threshold, "top": self.labels.top,
            "background": list(BACKGROUND), "logit_scale": LOGIT_SCALE,
            "dim": int(self.vectors.shape[1]),
            "vectors": base64.b64encode(self.vectors.astype("<f4").tobytes()).decode("ascii"),
            "background_vector": base64.b64encode(self.background.astype("<f4").tobytes()).decode("ascii"),
        }

    @classmethod
    def from_dict(cls, data: dict) -> Tagger:
        try:
            labels = LabelSet({k: list(v) for k, v in data["prompts"].items()}, float(data["threshold"]),
                              data.get("top"))
            dim = int(data["dim"])
            vectors = _floats(data["vectors"]).reshape(len(labels.prompts), dim)
            background = _floats(data["background_vector"]).reshape(dim)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise CorruptIndexError(f"the stored label set is damaged ({exc!r}); run clipsearch tag "
                                    "again to rebuild it") from None
        return cls(labels, vectors.astype(np.float32), background.astype(np.float32))


def _floats(text: str) -> np.ndarray:
    return np.frombuffer(base64.b64decode(text, validate=True), "<f4")


@dataclass
class Tagged:
    """What `tag_store` did: how many images it scored, how many fit no label, and each image's
    tags (sorted by path) when asked for."""

    images: int
    untagged: int
    per_image: list[ImageTags]


def tag_new(store: Store, tagger: Tagger, added: Sequence[str], removed: Sequence[str]) -> None:
    """Bring the stored tags in step with one commit: tag the content it `added` (hashes) and
    forget the tags of content it `removed` that no row holds any more. What a whole `tag_store`
    would give, at the cost of the change: a watcher commits every few seconds."""
    added = sorted(set(added))
    rows = store.by_hashes(added, ["hash", "vector"]) if added else None
    batches = []
    if rows is not None and len(rows):
        # every row: a video's frames are rows of one content, each may show something else
        hashes = np.asarray(rows.column("hash").to_pylist(), dtype=object)
        picked, cols = tagger.choose(probs := tagger.scores(store.matrix(rows.column("vector"))))
        names = np.asarray(tagger.labels.labels, dtype=object)
        batches.append(_best_per_content(hashes[picked], names[cols], probs[picked, cols]))
    removed = sorted(set(removed))
    if removed:
        held = set(store.by_hashes(removed, ["hash"]).column("hash").to_pylist())
        removed = [h for h in removed if h not in held]
    store.amend_tags(batches[0] if batches else None, [*added, *removed])


def _best_per_content(hashes: np.ndarray, labels: np.ndarray, scores: np.ndarray):
    """Tag rows with each (content, label) once, at its best score: a video is tagged with what
    any of its frames shows."""
    import pyarrow as pa

    table = pa.table([pa.array(hashes.tolist(), pa.string()), pa.array(labels.tolist(), pa.string()),
                      pa.array(scores, pa.float32())], schema=TAGS_SCHEMA)
    best = table.group_by(["hash", "label"], use_threads=False).aggregate([("score", "max")])
    return best.rename_columns(["hash", "label", "score"]).select(TAGS_SCHEMA.names).cast(TAGS_SCHEMA)


def tag_store(store: Store, tagger: Tagger, per_image: bool = True, batch_rows: int = 8_192) -> Tagged:
    """Score every image in `store` with `tagger` and replace the stored tags in one commit.

    Tags belong to content, not paths: copies of a photo share a hash (and a vector), so each
    content is scored once and a moved or copied photo keeps its tags. The vectors stream through
    in batches of `batch_rows`, so a million of them (2 GB) never sit in memory at once; only
    the hashes seen and the tags kept do.
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    names = np.asarray(tagger.labels.labels, dtype=object)
    seen: set[str] = set()
    tags_of: dict[str, list[tuple[str, float]]] = {}  # each tagged content's tags, for per_image
    paths: list[tuple[str, str]] = []
    counts = {"images": 0, "untagged": 0}
    videos = store.has_video
    columns = ["hash", "vector", *(["path"] if per_image or videos else []), *(["t"] if videos else [])]
    frames: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []  # videos' tags, kept to the end
    video_paths: dict[str, str] = {}

    def scored() -> Iterator[pa.RecordBatch]:
        for batch in store.batches(columns, batch_rows=batch_rows):
            vectors = store.matrix(batch.column("vector"))
            if vectors.shape[1] != tagger.vectors.shape[1]:
                raise CorruptIndexError(f"the stored label set has {tagger.vectors.shape[1]}-d vectors, "
                                        f"the index {vectors.shape[1]}-d ones; run clipsearch tag again")
            hashes = np.asarray(batch.column("hash").to_pylist(), dtype=object)
            # every row is scored (a copy scores as its original), each content's tags kept once
            rows, cols = tagger.choose(probs := tagger.scores(vectors))
            if videos and batch.column("t").null_count < batch.num_rows:
                video = pc.is_valid(batch.column("t")).to_numpy(zero_copy_only=False)
                on = video[rows]
                frames.append((hashes[rows[on]], names[cols[on]], probs[rows[on], cols[on]]))
                video_paths.update(zip(np.asarray(batch.column("path").to_pylist(), object)[video].tolist(),
                                       hashes[video].tolist(), strict=True))
                photo = np.flatnonzero(~video)
                keep_rows = ~video[rows]
                rows, cols = rows[keep_rows], cols[keep_rows]
                remap = np.full(len(hashes), -1)
                remap[photo] = np.arange(len(photo))
                rows, hashes, vectors, probs = remap[rows], hashes[photo], vectors[photo], probs[photo]
                batch = batch.take(pa.array(photo))
            counts["images"] += len(hashes)
            counts["untagged"] += len(hashes) - len(np.unique(rows))
            _, first = np.unique(hashes, return_index=True)
            new = np.zeros(len(hashes), bool)
            new[[i for i in first.tolist() if hashes[i] not in seen]] = True
            seen.update(hashes[new].tolist())
            keep = new[rows]
            rows, cols = rows[keep], cols[keep]
            if per_image:
                for r, label, score in zip(rows.tolist(), names[cols].tolist(), probs[rows, cols].tolist(),
                                           strict=True):
                    tags_of.setdefault(hashes[r], []).append((label, score))
                paths.extend(zip(batch.column("path").to_pylist(), hashes.tolist(), strict=True))
            yield pa.record_batch([pa.array(hashes[rows].tolist(), pa.string()),
                                   pa.array(names[cols].tolist(), pa.string()),
                                   pa.array(probs[rows, cols], pa.float32())], schema=TAGS_SCHEMA)

    def with_videos() -> Iterator[pa.RecordBatch]:
        yield from scored()
        tagged: set[str] = set()
        if frames:
            best = _best_per_content(*(np.concatenate(parts) for parts in zip(*frames, strict=True)))
            for h, label, score in zip(*(best.column(c).to_pylist() for c in ("hash", "label", "score")),
                                       strict=True):
                tags_of.setdefault(h, []).append((label, score))
                tagged.add(h)
            yield from best.to_batches()
        counts["images"] += len(video_paths)
        counts["untagged"] += sum(h not in tagged for h in video_paths.values())
        paths.extend(video_paths.items())

    store.write_tags(with_videos(), tagger.to_dict() | {"table_version": store.version})
    each = sorted((ImageTags(path, sorted(tags_of.get(h, []), key=lambda t: -t[1])) for path, h in paths),
                  key=lambda i: i.path)
    return Tagged(counts["images"], counts["untagged"], each)
