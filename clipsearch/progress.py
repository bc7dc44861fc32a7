"""Progress for the Python API: `index_folders(..., progress=True)` draws tqdm bars, which
`tqdm.auto` makes a widget in a notebook and a text bar in a terminal. The CLI keeps its own
rich display (clipsearch.cli.present); both hear the same Progress events."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator

from clipsearch.results import Progress

# what each phase's bar is called; the others are one-off notes
PHASES = {"embed": "indexing", "words": "reading words", "caption": "captioning",
          "text-to-image": "text queries", "re-rank": "re-ranked queries"}


@contextlib.contextmanager
def bars(**options) -> Iterator[Callable[[Progress], None]]:
    """A progress callback drawing one tqdm bar per phase (`options` go to each tqdm)."""
    from tqdm.auto import tqdm

    shown: dict[str, tqdm] = {}

    def report(p: Progress) -> None:
        if p.phase == "scan":
            tqdm.write(f"found {p.total} images", file=sys.stderr)
        elif p.phase == "prepare":
            tqdm.write("preparing fast searches: exporting the text encoder (once per model)",
                       file=sys.stderr)
        elif p.phase in PHASES:
            bar = shown.get(p.phase)
            if bar is None:
                bar = shown[p.phase] = tqdm(total=p.total, desc=PHASES[p.phase], unit="image", **options)
            bar.total = p.total
            bar.update(p.done - bar.n)

    try:
        yield report
    finally:
        for bar in shown.values():
            bar.close()
