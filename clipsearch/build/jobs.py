"""The writing commands a watching server runs for the CLI (`POST /api/jobs`): one typed request
per kind, which the client sends as JSON (`{"kind": ..., its fields}`) and the server reads back
into the same class (clipsearch.server.live), so neither restates the other.

Each checks what it can on its own when made, on either side; what needs the index (a folder
that is a root, labels that parse) is checked by the server before the job is queued. Plain
dataclasses: the server's validation reads their fields, and `__pydantic_config__` makes a field
this server does not know an error rather than ignored.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, get_args

from clipsearch.errors import BadInputError

MAX_NAMES = 1000  # folders, paths or patterns in one job
MAX_LABELS_TEXT = 1 << 20
_STRICT = {"extra": "forbid"}


def _bounded(what: str, names: list[str]) -> None:
    if len(names) > MAX_NAMES:
        raise BadInputError(f"{len(names)} {what} in one job; at most {MAX_NAMES}")


@dataclass(frozen=True)
class IndexJob:
    """`index FOLDERS`: they are watched from then on."""

    folders: list[str]
    exclude: list[str] = field(default_factory=list)
    compact: bool = False
    prune_offline: bool = False
    keep_empty: bool = False
    kind: Literal["index"] = "index"
    __pydantic_config__ = _STRICT

    def __post_init__(self) -> None:
        if not self.folders:
            raise BadInputError("no folder given; say which folder to index")
        _bounded("folders", self.folders)
        _bounded("exclude patterns", self.exclude)


@dataclass(frozen=True)
class TagJob:
    """`tag`: `labels` as the CLI's --labels takes them, or a labels file's text (`labels_text`,
    read by the CLI: the server never opens a path a request names)."""

    labels: str | None = None
    labels_text: str | None = None
    threshold: float = 0.5
    top: int | None = None
    write_xmp: bool | None = None
    per_image: bool = False
    kind: Literal["tag"] = "tag"
    __pydantic_config__ = _STRICT

    def __post_init__(self) -> None:
        if self.labels_text is not None and len(self.labels_text) > MAX_LABELS_TEXT:
            raise BadInputError(f"the labels file's text is over {MAX_LABELS_TEXT >> 20} MB")


@dataclass(frozen=True)
class CaptionJob:
    """`caption [FOLDERS]`, or `caption --show PHOTO` (`show`: a path or a bare file name)."""

    folders: list[str] = field(default_factory=list)
    limit: int | None = None
    show: str | None = None
    caption_model: str | None = None
    caption_precision: str = "auto"
    write_xmp: bool | None = None
    kind: Literal["caption"] = "caption"
    __pydantic_config__ = _STRICT

    def __post_init__(self) -> None:
        if self.limit is not None and self.limit < 1:
            raise BadInputError(f"--limit must be at least 1, not {self.limit}")
        _bounded("folders", self.folders)


@dataclass(frozen=True)
class OptimizeJob:
    """`optimize`."""

    kind: Literal["optimize"] = "optimize"
    __pydantic_config__ = _STRICT


@dataclass(frozen=True)
class ForgetJob:
    """`forget PATHS`: photos or folders."""

    paths: list[str]
    kind: Literal["forget"] = "forget"
    __pydantic_config__ = _STRICT

    def __post_init__(self) -> None:
        _bounded("paths", self.paths)


@dataclass(frozen=True)
class MoveJob:
    """`roots move OLD NEW`: the library's old place and its new one."""

    old: str
    new: str
    kind: Literal["move"] = "move"
    __pydantic_config__ = _STRICT


@dataclass(frozen=True)
class RemoveRootJob:
    """`roots remove ROOT`."""

    root: str
    kind: Literal["remove-root"] = "remove-root"
    __pydantic_config__ = _STRICT


@dataclass(frozen=True)
class IncludeJob:
    """`roots include PATTERN`: index again what an --exclude pattern left out."""

    pattern: str
    kind: Literal["include"] = "include"
    __pydantic_config__ = _STRICT


Job = IndexJob | TagJob | CaptionJob | OptimizeJob | ForgetJob | MoveJob | RemoveRootJob | IncludeJob
JOBS: tuple[type, ...] = get_args(Job)
