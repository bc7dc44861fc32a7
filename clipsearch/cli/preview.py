"""Thumbnails inline in the terminal, beside search hits (`--preview`): the kitty graphics
protocol (kitty, Ghostty, Konsole) and iTerm2's inline images (iTerm2, WezTerm). Only the table
carries them, never --json or --paths."""

from __future__ import annotations

import base64
import os
from collections.abc import Mapping

from clipsearch.errors import BadInputError

PROTOCOLS = ("kitty", "iterm")
CHOICES = ("auto", *PROTOCOLS, "off")  # the values of --preview
PIXELS = 128  # thumbnail box
CELLS = (10, 5)  # columns x rows of the terminal one thumbnail takes
SUPPORTED = "kitty, Ghostty, Konsole (kitty graphics), iTerm2, WezTerm (iTerm2 images)"
_CHUNK = 4096  # the kitty protocol's largest payload per escape sequence


def detect(env: Mapping[str, str] = os.environ) -> str | None:
    """The image protocol the terminal in `env` speaks, or None."""
    term, program = env.get("TERM", ""), env.get("TERM_PROGRAM", "")
    if term in ("xterm-kitty", "xterm-ghostty") or "KITTY_WINDOW_ID" in env or program == "ghostty" \
            or "KONSOLE_VERSION" in env:
        return "kitty"
    if program in ("iTerm.app", "WezTerm") or env.get("LC_TERMINAL") == "iTerm2":
        return "iterm"
    return None


def choose(asked: str, terminal: bool, env: Mapping[str, str] = os.environ) -> str | None:
    """The protocol for `--preview=asked` ('auto' detects one, for a terminal only), or None."""
    asked = asked.lower()
    if asked == "auto":
        return detect(env) if terminal else None
    if asked not in PROTOCOLS:
        raise BadInputError(f"--preview={asked} is not an image protocol; choose auto, kitty, iterm or off")
    return asked


def image(png: bytes, protocol: str) -> str:
    """The escape sequence that shows `png` at the cursor, CELLS in size. kitty leaves the cursor
    where it was (C=1) and answers nothing (q=2); iTerm2 moves it past the image."""
    data = base64.b64encode(png).decode("ascii")
    columns, rows = CELLS
    if protocol == "iterm":
        return (f"\x1b]1337;File=inline=1;size={len(png)};width={columns};height={rows};"
                f"preserveAspectRatio=1:{data}\x07")
    chunks = [data[i:i + _CHUNK] for i in range(0, len(data), _CHUNK)] or [""]
    out = []
    for n, chunk in enumerate(chunks):
        more = int(n < len(chunks) - 1)
        keys = f"a=T,f=100,c={columns},r={rows},C=1,q=2,m={more}" if n == 0 else f"m={more}"
        out.append(f"\x1b_G{keys};{chunk}\x1b\\")
    return "".join(out)


def row(png: bytes | None, text: str, protocol: str) -> str:
    """One hit: its thumbnail (a blank box when it has none) with `text` beside its top line."""
    columns, rows = CELLS
    if protocol == "kitty":
        picture = image(png, protocol) if png else ""
        return f"{picture}\x1b[{columns + 1}C{text}" + "\n" * rows
    picture = image(png, protocol) if png else " " * columns
    return f"{picture} {text}\n"


def thumbnail_png(path: str, t: float | None = None) -> bytes | None:
    """A PNG thumbnail of the image at `path` (a video's frame at `t` seconds), or None when it
    cannot be read now."""
    import io

    from clipsearch.errors import UnreadableImageError
    from clipsearch.media.images import read_file, thumbnail
    from clipsearch.media.kinds import is_video_name

    try:
        if is_video_name(path):  # one frame decoded, never the whole file read
            from clipsearch.media.video import frame_at

            picture = frame_at(path, t or 0.0, PIXELS)
            picture.thumbnail((PIXELS, PIXELS))
            out = io.BytesIO()
            picture.save(out, "PNG")
            return out.getvalue()
        return thumbnail(read_file(path), path, PIXELS, "PNG")
    except (UnreadableImageError, OSError):
        return None
