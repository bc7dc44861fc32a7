"""A picture of what a terminal shows for `clipsearch search --preview=kitty`: a small emulator
of the part of kitty's behaviour that output uses (printable text, newlines, cursor-forward, and
the graphics protocol's transmit-and-display with the cursor left in place), drawn with Pillow.
tests/test_docs.py uses it to check the output's layout and to make docs/terminal.png."""

from __future__ import annotations

import base64
import io
import re
from dataclasses import dataclass, field

from PIL import Image, ImageDraw, ImageFont

CELL = (9, 18)  # a cell of DejaVu Sans Mono at 15 px, in pixels
BACKGROUND, FOREGROUND, PROMPT = (30, 31, 36), (214, 216, 222), (126, 198, 153)
FONT = "/usr/share/fonts/truetype/dejavu/DejaVuSansMono.ttf"
_TOKEN = re.compile(r"\x1b_G(?P<keys>[^;]*);(?P<data>[^\x1b]*)\x1b\\|\x1b\[(?P<n>\d*)C|(?P<nl>\n)|(?P<ch>.)",
                    re.S)


@dataclass
class Screen:
    """What the output put where: text by (row, column), pictures by their top-left cell."""

    text: dict[tuple[int, int], str] = field(default_factory=dict)
    # (row, column, columns, rows, picture)
    pictures: list[tuple[int, int, int, int, Image.Image]] = field(default_factory=list)

    @property
    def rows(self) -> int:
        bottom = [r + 1 for r, _ in self.text] + [r + h for r, _, _, h, _ in self.pictures]
        return max(bottom, default=0)

    def line(self, row: int) -> str:
        cells = {c: ch for (r, c), ch in self.text.items() if r == row}
        return "".join(cells.get(c, " ") for c in range(max(cells, default=-1) + 1))


def emulate(output: str) -> Screen:
    screen, row, col, pending, keys = Screen(), 0, 0, [], {}
    for token in _TOKEN.finditer(output):
        if token["keys"] is not None:
            chunk = dict(kv.split("=", 1) for kv in token["keys"].split(",") if kv)
            keys = chunk if not pending else keys
            pending.append(token["data"])
            if chunk.get("m", "0") == "0":  # the last chunk: display it at the cursor
                picture = Image.open(io.BytesIO(base64.b64decode("".join(pending)))).convert("RGB")
                screen.pictures.append((row, col, int(keys["c"]), int(keys["r"]), picture))
                pending = []
                if keys.get("C") != "1":
                    col += int(keys["c"])
        elif token["n"] is not None:
            col += int(token["n"] or 1)
        elif token["nl"]:
            row, col = row + 1, 0
        else:
            screen.text[(row, col)] = token["ch"]
            col += 1
    return screen


def render(screen: Screen, prompt: str, width: int = 100) -> Image.Image:
    """The screen below a prompt line, `width` columns wide."""
    cw, ch = CELL
    font = ImageFont.truetype(FONT, 15)
    top = 1  # the prompt's row
    canvas = Image.new("RGB", ((width + 2) * cw, (screen.rows + top + 2) * ch), BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    draw.text((cw, ch // 2), "$ ", font=font, fill=PROMPT)
    draw.text((3 * cw, ch // 2), prompt, font=font, fill=FOREGROUND)
    for row, col, cols, rows, picture in screen.pictures:
        box = (cols * cw, rows * ch)
        picture = picture.copy()
        picture.thumbnail(box)
        x = (col + 1) * cw + (box[0] - picture.width) // 2
        y = (row + top + 1) * ch + ch // 2 + (box[1] - picture.height) // 2
        canvas.paste(picture, (x, y))
    for row in range(screen.rows):
        draw.text((cw, (row + top + 1) * ch + ch // 2), screen.line(row), font=font, fill=FOREGROUND)
    return canvas
