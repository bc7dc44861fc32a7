"""Keeping a library out of an import that would load it for nothing: pyarrow's first look for
pandas (clipsearch.search.fastpath), open_clip's imports of timm and transformers
(clipsearch.models.openclip)."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterable, Iterator


class _KeptOut:
    """An import finder that says these packages are not installed."""

    def __init__(self, names: set[str]) -> None:
        self.names = names

    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in self.names:
            raise ModuleNotFoundError(f"No module named {name!r} (kept out: not needed here)", name=name)
        return None


@contextlib.contextmanager
def kept_out(names: Iterable[str]) -> Iterator[None]:
    """Inside, importing any of these top-level packages fails as if it were not installed (those
    already imported stay); outside, they import as usual."""
    finder = _KeptOut(set(names) - set(sys.modules))
    sys.meta_path.insert(0, finder)
    try:
        yield
    finally:
        sys.meta_path.remove(finder)
