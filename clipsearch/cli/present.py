"""Everything the CLI prints: result tables, JSON, plain paths, summaries and progress bars."""

from __future__ import annotations

import contextlib
import json
import re
import sys
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from clipsearch.progress import PHASES
from clipsearch.results import (
    CaptionSummary,
    CompactSummary,
    ForgetSummary,
    Hit,
    ImageRecord,
    IndexInfo,
    IndexSummary,
    Skipped,
    TagCount,
    TagSummary,
    Unwritten,
)
from clipsearch.results import Progress as IndexProgress

if TYPE_CHECKING:
    from clipsearch.build.check import CheckReport
    from clipsearch.eval.runner import RetrievalReport, ZeroShotReport
    from clipsearch.search.dupes import Group
    from clipsearch.server.service import Started

out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)


# C0 and C1 control characters, DEL, and the bidi overrides that reorder what a line shows
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def safe(text: str) -> str:
    """`text` as a terminal may show it: control characters escaped, as `ls -b` does (a file may
    be named `evil\\x1b[31m.jpg` or have a newline in its name). Backslashes are doubled only in
    text that has something escaped, so ordinary names read as they are, and escaped ones are
    unambiguous."""
    if not _UNSAFE.search(text):
        return text
    return _UNSAFE.sub(lambda m: _NAMED.get(m.group()) or (
        f"\\x{ord(m.group()):02x}" if ord(m.group()) < 0x100 else f"\\u{ord(m.group()):04x}"),
        text.replace("\\", "\\\\"))


def shown(text: str) -> str:
    """`text` for a rich table or line: control characters escaped (`safe`), markup too."""
    return escape(safe(text))


def _matched(words: dict[str, list[str]]) -> str:
    """The words a hit matched, each once: a place and a folder both named lisbon, or café and
    its unaccented cafe (every word is stored both ways), are one word to the reader."""
    from clipsearch.media.words import unaccented

    seen: set[str] = set()
    out = []
    for word in (w for found in words.values() for w in found):
        if word not in seen and unaccented(word) not in seen:
            out.append(word)
        seen.update((word, unaccented(word)))
    return " ".join(out)


def counted(n: int, one: str, many: str | None = None) -> str:
    """`n` and the noun, singular for one ("1 photo", "2 photos", "1 video: 3 moments")."""
    return f"{n:,} {one if n == 1 else many or one + 's'}"


def message(text: str) -> None:
    """One line on stderr, written directly: an interrupt can land inside a rich print, whose
    half-flushed buffer would otherwise be printed again in front of this line."""
    sys.stderr.write(safe(text) + "\n")
    sys.stderr.flush()


def hits(found: Sequence[Hit], fmt: str, none_found: str = "no matching images",
         preview: str | None = None) -> None:
    """Hits as JSON, paths, or a table; with `preview` (an image protocol, clipsearch.cli.preview)
    the table's rows carry thumbnails."""
    if not found:
        err.print(none_found, markup=False)
    if fmt == "table" and preview and found:
        _previews(found, preview)
        return
    if fmt == "json":
        print(json.dumps([h.to_dict() for h in found], indent=2, ensure_ascii=False))
    elif fmt in ("paths", "paths0"):
        paths_out([h.path for h in found], fmt == "paths0")
    else:
        if not found:
            return
        reranked = any(h.itm is not None for h in found)
        worded = not reranked and any(h.words is not None for h in found)
        table = Table(show_edge=False, pad_edge=False)
        table.add_column("rank", justify="right", style="dim")
        table.add_column("score", justify="right")
        if reranked:
            table.add_column("itm", justify="right")
            table.add_column("clip", justify="right", style="dim")
        if worded:  # fused with the photos' own words: the score is a rank fusion, CLIP's is beside it
            table.add_column("clip", justify="right", style="dim")
        table.add_column("path", overflow="fold")
        if worded:
            table.add_column("matched", overflow="fold", style="dim")
        from clipsearch.media.video import clock

        captioned = any(h.caption for h in found)
        if captioned:
            table.add_column("caption", overflow="fold", style="italic")
        for h in found:
            extra = [f"{h.itm:.3f}", f"{h.clip:.3f}"] if reranked else [f"{h.clip:.3f}"] if worded else []
            matched = [_matched(h.words or {})] if worded else []
            if captioned:
                matched.append(h.caption or "")
            score = f"{h.score:.4f}" if worded else f"{h.score:.3f}"
            where = shown(h.path) + (f"  @ {clock(h.t)}" if h.t is not None else "")  # a video's moment
            table.add_row(str(h.rank), score, *extra, where, *[shown(m) for m in matched])
        out.print(table)


def _previews(found: Sequence[Hit], protocol: str) -> None:
    from clipsearch.cli.preview import row, thumbnail_png
    from clipsearch.media.video import clock

    reranked = any(h.itm is not None for h in found)
    for h in found:
        scores = f"{h.score:.3f}" + (f"  itm {h.itm:.3f}  clip {h.clip:.3f}" if reranked else "")
        where = safe(h.path) + (f"  @ {clock(h.t)}" if h.t is not None else "")
        sys.stdout.write(row(thumbnail_png(h.path, h.t), f"{h.rank:>3}  {scores}  {where}", protocol))
    sys.stdout.flush()


def paths_out(paths: Sequence[str], null: bool = False) -> None:
    """Paths exactly as they are, for other programs: one per line, or each ended by a NUL
    (`xargs -0`), the one separator no path can contain."""
    if null:
        sys.stdout.write("".join(f"{p}\0" for p in paths))
        sys.stdout.flush()
    else:
        for p in paths:
            print(p)


def dupes(groups: Sequence[Group], fmt: str, extras: bool = False) -> None:
    """Duplicate groups as JSON, paths (every member, or with `extras` all but the keepers), or
    one table per group with the keeper first and why it is the keeper."""
    if fmt == "json":
        print(json.dumps([g.to_dict() for g in groups], indent=2, ensure_ascii=False))
        return
    if fmt in ("paths", "paths0"):
        from clipsearch.search.dupes import paths

        paths_out(paths(groups, extras), fmt == "paths0")
        return
    if not groups:
        err.print("no duplicates found")
        return
    for g in groups:
        title = f"group {g.number} ({g.kind}, {len(g.members)} photos): keep the first, {shown(g.reason)}"
        table = Table(show_edge=False, pad_edge=False, title_justify="left", title=title)
        table.add_column("", style="bold")
        table.add_column("similarity", justify="right")
        table.add_column("size", justify="right")
        table.add_column("pixels", justify="right")
        table.add_column("taken")
        table.add_column("path", overflow="fold")
        for n, m in enumerate(g.members):
            i = m.image
            pixels = f"{i.width}x{i.height}" if i.width and i.height else "?"
            table.add_row("keep" if n == 0 else "", f"{m.similarity:.3f}", _bytes(i.bytes), pixels,
                          shown(i.taken or ""), shown(i.path))
        out.print(table)
        out.print()
    extra = sum(len(g.extras) for g in groups)
    err.print(f"{counted(len(groups), 'group')}; {counted(extra, 'photo')} besides the keepers "
              "(clipsearch dupes --paths --extras lists them)")


def compacted(done: CompactSummary) -> None:
    err.print(f"compacted the index at {done.db} in {done.seconds:.1f} s: {_bytes(done.bytes_before)} "
              f"-> {_bytes(done.bytes_after)} on disk", highlight=False)


def _bytes(n: float, tabular: bool = True) -> str:
    """A byte count in decimal units: in a table with one decimal always ('640 B', '13.0 MB'),
    in a sentence without a needless one ('640 bytes', '13 MB')."""
    for unit in ("bytes", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            if unit == "bytes":
                return f"{n:.0f} {'B' if tabular else 'bytes'}"
            return f"{n:.1f} {unit}" if tabular else f"{n:.1f} {unit}".replace(".0 ", " ")
        n /= 1000
    raise AssertionError("unreachable: GB ends the loop")


def serving(s: Started) -> None:
    """What `serve` says once it listens: where, what, and how to stop it (stdout, flushed at
    once: a service's output usually goes to a pipe or a log)."""
    if s.images is None:
        what = (f"no index at {s.db} yet; build one with: clipsearch index FOLDER --db {s.db} "
                "(it is served as soon as it exists)")
    else:
        what = f"{s.db}: {s.images} images, {s.model}"
    base = s.url.split("?", 1)[0]
    lines = [f"clipsearch is serving {what}", f"  gallery  {s.url}", f"  API      {base}docs"]
    if not s.discoverable and s.images is None:
        lines.append("  note: clipsearch search finds this server once it is started after the first "
                     "index run (it searches in its own process until then)")
    elif not s.discoverable:
        lines.append(f"  note: {s.db} is not writable, so clipsearch search will not find this server")
    lines.append("Ctrl-C (or SIGTERM) stops it")
    print("\n".join(safe(line) for line in lines), flush=True)


def summary(s: IndexSummary, as_json: bool, db=None) -> None:
    """An index run's summary; with `db`, what it could not write counts as told there."""
    if db is not None and s.unwritten:
        from clipsearch.store import derived

        derived.told(db, [u.what for u in s.unwritten])
    if as_json:
        print(json.dumps(s.to_dict(), indent=2, ensure_ascii=False))
        _unwritten(s.unwritten)  # on stderr, as a person running it for a script still needs to know
        offline(s.offline)
        empty(s.empty)
        return
    err.print(
        f"added {s.added}, updated {s.updated}, moved {s.moved}, removed {s.removed}, "
        f"unchanged {s.unchanged}, skipped {len(s.skipped)}"
        + (f" ({s.unlisted} of them not among the images found: what the scan could not open)"
           if s.unlisted else "") + " "
        f"[dim]({s.embedded} embedded in {s.seconds:.1f} s"
        + (f"; {counted(s.frames, 'frame')} of the videos among them" if s.frames else "") + ")[/dim]"
        + (f"; {s.sidecars_written} XMP sidecars written" if s.sidecars_written else "")
        + (f"; words read for {counted(s.words_filled, 'photo')} indexed before them"
           if s.words_filled else "")
    )
    _skipped(s.skipped)
    if s.metadata_notes:
        first = s.metadata_notes[0]
        others = len(s.metadata_notes) - 1
        more = f" (and {others} more: --json lists them)" if others else ""
        err.print(f"note: metadata left unread, photos indexed all the same: {shown(first.path)}: "
                  f"{shown(first.reason)}{more}")
    _unwritten(s.unwritten)
    offline(s.offline)
    empty(s.empty)


KINDS = ("JPEG, PNG, WebP, HEIC, AVIF, GIF, TIFF, BMP, camera RAW (CR2, CR3, NEF, ARW, DNG, RAF ...) "
         "and videos (MP4, MOV, MKV, WebM ...)")


def empty(folders: Sequence[str]) -> None:
    """One line per folder given to index that holds nothing it reads, and so is no root."""
    for folder in folders:
        message(f"warning: {folder} holds no photos or videos clipsearch reads ({KINDS}), so it "
                "is not kept as a root; --keep-empty keeps it, to watch it for photos to come")


def forgotten(s: ForgetSummary, as_json: bool) -> None:
    if as_json:
        print(json.dumps(s.to_dict(), indent=2, ensure_ascii=False))
        return
    err.print(f"forgot {counted(s.removed, 'photo')}, their kept vectors and "
              f"{counted(s.cache_files, 'cached file')}")
    if s.on_disk:
        message(f"note: {len(s.on_disk)} of them are still on disk (e.g. {s.on_disk[0]}); the next index "
                "run adds them again unless you delete them or leave them out with --exclude")


def offline(roots: dict[str, str]) -> None:
    """One line per root whose rows were kept because it looks unplugged rather than emptied."""
    for root, why in sorted(roots.items()):
        message(f"note: {root} looks offline: {why}; its photos stay in the index. Run clipsearch "
                "index with --prune-offline to remove them")


def _unwritten(missing: Sequence[Unwritten]) -> None:
    """One line for the files that make searches fast but could not be written."""
    if not missing:
        return

    needs = sum(u.needs_bytes for u in missing)
    what = "; ".join(f"the {u.what}, about {_bytes(u.needs_bytes, tabular=False)}" for u in missing)
    reasons = sorted({u.reason.split(";")[0] for u in missing})  # the fix is said once, below
    space = any("free some space" in u.reason for u in missing)
    fix = (f"free about {_bytes(needs, tabular=False)} there and run clipsearch index again" if space
           else "run clipsearch index again once the folder can be written")
    message(f"warning: could not write what makes searches fast ({what}) next to the index: "
            f"{'; '.join(reasons)}. The index is intact and searches work, only slower; {fix}")


def untold(db) -> None:
    """What could not be written since the last command that said so (a background export that
    found the disk full): said once, in the warning's one line."""
    from clipsearch.store import derived

    try:
        missing = derived.untold(db)
    except OSError:
        return
    if missing:
        _unwritten(missing)
        derived.told(db, [u.what for u in missing])


def tag_summary(s: TagSummary, as_json: bool) -> None:
    if as_json:
        print(json.dumps([i.to_dict() for i in s.images], indent=2, ensure_ascii=False))
    tagged = s.scored - s.untagged
    line = (f"tagged {tagged} of {s.scored} images with {len(s.labels)} labels; "
            f"{s.untagged} fit no label [dim]({s.seconds:.1f} s)[/dim]")
    if s.sidecars_written:
        line += f"; {s.sidecars_written} XMP sidecars written"
    err.print(line)
    _skipped(s.skipped)


def caption_summary(s: CaptionSummary, as_json: bool) -> None:
    if as_json:
        print(json.dumps(s.to_dict(), indent=2, ensure_ascii=False))
        return
    line = (f"captioned {counted(s.captioned, 'photo')} with {s.model} ({s.precision}) "
            f"[dim]({s.seconds:.1f} s)[/dim]")
    if s.stale:
        line += f"; {s.stale} had a caption from another model or precision"
    if s.left:
        line += f"; {s.left} left for the next run"
    if s.sidecars_written:
        line += f"; {s.sidecars_written} XMP sidecars written"
    err.print(line)
    _skipped(s.skipped)


def captions(records: Sequence[ImageRecord], as_json: bool) -> None:
    """`caption --show`: each photo's caption."""
    if as_json:
        print(json.dumps([{"path": r.path, "caption": r.caption} for r in records], indent=2,
                         ensure_ascii=False))
        return
    for r in records:
        line = shown(r.caption or "") if len(records) == 1 else f"{shown(r.path)}: {shown(r.caption or '')}"
        out.print(line, markup=False)


def tag_counts(counts: Sequence[TagCount], as_json: bool) -> None:
    if as_json:
        print(json.dumps([c.to_dict() for c in counts], indent=2, ensure_ascii=False))
        return
    if not counts:
        err.print("no tags yet; run: clipsearch tag")
        return
    table = Table(show_edge=False, pad_edge=False)
    table.add_column("tag")
    table.add_column("images", justify="right")
    for c in counts:
        table.add_row(shown(c.label), str(c.images))
    out.print(table)


def facets(found: dict[str, list[dict]], as_json: bool) -> None:
    if as_json:
        print(json.dumps(found, indent=2, ensure_ascii=False))
        return
    if not found["places"] and not found["cameras"]:
        err.print("no places or cameras known: the photos carry no GPS position or camera, or the "
                  "index is from before they were read (run: clipsearch index)")
        return
    for key, title in (("places", "place"), ("cameras", "camera")):
        if found[key]:
            table = Table(show_edge=False, pad_edge=False)
            table.add_column(title)
            table.add_column("images", justify="right")
            for item in found[key]:
                table.add_row(shown(item["name"]), str(item["images"]))
            out.print(table)


def about(records: Sequence[ImageRecord], as_json: bool) -> None:
    if as_json:
        print(json.dumps([r.to_dict() for r in records], indent=2, ensure_ascii=False))
        return
    for n, r in enumerate(records):
        table = Table(show_header=False, show_edge=False, pad_edge=False)
        table.add_column(style="bold")
        table.add_column(overflow="fold")
        position = f"{r.lat:.5f}, {r.lon:.5f}" if r.lat is not None and r.lon is not None else None
        for key, value in (
            ("path", r.path), ("id", str(r.id)), ("size", f"{r.width} x {r.height}, {r.bytes:,} bytes"),
            ("taken", r.taken), ("place", r.place), ("near", r.near), ("position", position),
            ("camera", r.camera),
            ("lens", r.lens), ("keywords", ", ".join(r.keywords)), ("people", ", ".join(r.people)),
            ("tags", ", ".join(r.tags)), ("caption", r.caption),
        ):
            if value:
                table.add_row(key, shown(value))
        if n:
            out.print()
        out.print(table)


def info(i: IndexInfo, as_json: bool) -> None:
    if as_json:
        print(json.dumps(i.to_dict(), indent=2, ensure_ascii=False))
        return
    table = Table(show_header=False, show_edge=False, pad_edge=False)
    table.add_column(style="bold")
    table.add_column(overflow="fold")
    for key, value in (
        ("index", i.db),
        ("images", f"{i.images} ({counted(i.videos, 'video')}: {counted(i.frames, 'moment')})"
         if i.videos else str(i.images)),
        ("roots", _roots(i) or "-"),  # shown already
        ("left out", ", ".join(i.exclude) or "-"),
        ("model", i.model), ("pretrained", i.pretrained or "-"), ("dim", str(i.dim)),
        ("size", f"{i.bytes / 1e6:.1f} MB"), ("search", i.ann),
        ("tags", f"{len(i.labels)} labels (clipsearch tags lists them)" if i.labels else "-"),
        ("captions", f"{i.captioned} of {i.images} photos ({', '.join(i.caption_models)})"
         if i.captioned else "-"),
    ):
        table.add_row(key, value if key == "roots" else shown(value))
    out.print(table)


def _roots(i: IndexInfo) -> str:
    """One line per root, each escaped on its own (the line breaks between them are not)."""
    return "\n".join(shown(r) + (f" (offline since {i.offline[r]})" if r in i.offline else " (online)")
                     for r in i.roots)


def roots(i: IndexInfo, as_json: bool) -> None:
    """`clipsearch roots`: the roots, then the --exclude patterns the index keeps."""
    if as_json:
        print(json.dumps({"roots": [{"path": r, "offline_since": i.offline.get(r)} for r in i.roots],
                          "exclude": i.exclude}, indent=2, ensure_ascii=False))
        return
    out.print(_roots(i) or "no roots yet: clipsearch index FOLDER adds one")
    if i.exclude:
        out.print(shown(f"left out: {', '.join(i.exclude)} "
                        "(clipsearch roots include PATTERN takes one back)"))


def check_report(r: CheckReport, as_json: bool) -> None:
    if as_json:
        print(json.dumps(r.to_dict(), indent=2, ensure_ascii=False))
        return
    table = Table(show_edge=False, pad_edge=False)
    for column in ("what", "file", "found", "done"):
        table.add_column(column, overflow="fold")
    for item in r.items:
        table.add_row(item.what, shown(item.path), item.status, item.action)
    out.print(table)
    repaired = sum(i.action not in ("none", "recorded") and i.healthy for i in r.items)
    failed = sum(not i.healthy for i in r.items)
    err.print(f"checked {len(r.items)} kinds of derived files in {shown(r.db)}: "
              + (f"{failed} could not be repaired" if failed else
                 f"{repaired} repaired" if repaired else "all intact"))


@contextlib.contextmanager
def progress_bar(enabled: bool = True) -> Iterator[callable]:
    """A callback for the indexer that draws one bar on stderr (nothing when disabled). When
    stderr is not a terminal (a log, a pipe) only the scan's count is printed, not a bar."""
    if not enabled:
        yield lambda _p: None
        return
    bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                   TimeRemainingColumn(), console=err, transient=True)
    tasks: dict[str, object] = {}
    told: set[str] = set()  # a job followed through a server repeats its last event

    def report(p: IndexProgress) -> None:
        if p.phase in ("scan", "prepare") and p.phase in told:
            return
        if p.phase == "scan":
            told.add(p.phase)
            err.print(f"found {counted(p.total, 'image')}")
        elif p.phase == "prepare":
            told.add(p.phase)
            err.print("preparing fast searches: exporting the text encoder (once per model, about 10 s)")
        elif p.phase in PHASES and err.is_terminal:
            if p.phase not in tasks:
                tasks[p.phase] = bar.add_task(PHASES[p.phase], total=p.total)
            bar.update(tasks[p.phase], completed=p.done)

    with bar if err.is_terminal else contextlib.nullcontext():
        yield report


def eval_retrieval(r: RetrievalReport, as_json: bool) -> None:
    if as_json:
        print(json.dumps(r.to_dict(), indent=2, ensure_ascii=False))
        return
    table = Table(show_edge=False, pad_edge=False)
    table.add_column("direction")
    for column in ("R@1", "R@5", "R@10", "median rank", "queries/s"):
        table.add_column(column, justify="right")
    rows = [("text → image", r.text_to_image), ("image → text", r.image_to_text)]
    if r.rerank:
        rows.append((f"text → image, re-ranked top {r.candidates}", r.rerank))
    for name, d in rows:
        rank = "-" if d.median_rank is None else f"{d.median_rank:g}"
        table.add_row(name, *(f"{100 * d.recall[k]:.1f}" for k in ("R@1", "R@5", "R@10")), rank,
                      f"{d.queries / d.seconds:.1f}" if d.seconds else "-")
    out.print(table)
    err.print(f"{r.text_to_image.queries} captions, {r.images} images; {shown(r.model)}, {r.precision}"
              + (f"; re-rank: {shown(r.rerank_model)}" if r.rerank_model else "")
              + ("; pixels only (--words off)" if not r.words else "")
              + (f"; captions: {shown(r.caption_model)}" if r.caption_model else "") + "; recall in %")
    _skipped(r.skipped)
    if r.left_out:
        err.print(f"  {counted(r.left_out, 'caption')} of skipped images left out")


def eval_zeroshot(r: ZeroShotReport, as_json: bool) -> None:
    if as_json:
        print(json.dumps(r.to_dict(), indent=2, ensure_ascii=False))
        return
    table = Table(show_edge=False, pad_edge=False)
    for column in ("top-1", "top-5", f"tag precision @{r.threshold:g}", f"tag recall @{r.threshold:g}"):
        table.add_column(column, justify="right")
    table.add_row(*("-" if v is None else f"{100 * v:.1f}" for v in (r.top1, r.top5, r.tag_precision,
                                                                     r.tag_recall)))
    out.print(table)
    if r.top5 is None:
        err.print(f"top-5 needs more than 5 classes: with {r.classes}, every image's class is among "
                  "its top 5")
    worst = sorted(r.per_class.items(), key=lambda kv: (kv[1], kv[0]))[:3]
    err.print(f"{r.images} images, {r.classes} classes; {shown(r.model)}, {r.precision}; accuracy in %; "
              "hardest: " + ", ".join(f"{shown(name)} {100 * acc:.0f}" for name, acc in worst))
    _skipped(r.skipped)


def _skipped(skipped: Sequence[Skipped]) -> None:
    for s in skipped:
        err.print(f"  skipped {shown(s.path)}: {shown(s.reason)}")
