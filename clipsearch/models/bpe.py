"""CLIP's byte-level BPE tokenizer, without torch or open_clip.

It reproduces open_clip's SimpleTokenizer token for token (tests compare them on a large, varied
corpus): the text is repaired with ftfy, HTML entities are resolved twice, white space is
collapsed and, for most models, lower-cased; words are split by CLIP's pattern, spelled as
bytes mapped to printable characters, merged pair by pair in the order the merge list ranks
them, and framed by the start and end tokens, cut to the context length with the end token kept.

Its settings and merge list are saved next to an exported text encoder by the process that
exported it (which had open_clip loaded), so a query needs nothing else.
"""

from __future__ import annotations

import gzip
import html
import json
import string
from collections.abc import Sequence
from pathlib import Path

import numpy as np

SETTINGS = "tokenizer.json"
MERGES = "merges.txt.gz"
CLEANERS = ("lower", "whitespace", "canonicalize")
_WORDS = r"""'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""


def byte_symbols() -> dict[int, str]:
    """Each byte's printable stand-in, in vocabulary order: first the bytes that are printable
    characters themselves (! to ~, ¡ to ¬, ® to ÿ), then the others, shifted past 255 so that no
    byte is spelled as white space or a control character."""
    printable = [*range(33, 127), *range(161, 173), *range(174, 256)]
    others = [b for b in range(256) if b not in printable]
    return {b: chr(b) for b in printable} | {b: chr(256 + i) for i, b in enumerate(others)}


class Tokenizer:
    """`merges` are the merge list's pairs, best first; a token made by merge r has id 512 + r
    (after the 256 byte symbols and the same 256 ending a word), and the special tokens follow."""

    def __init__(self, merges: Sequence[tuple[str, str]] | Sequence[str], specials: Sequence[str],
                 context_length: int, clean: str = "lower") -> None:
        import regex

        if clean not in CLEANERS:
            raise ValueError(f"unknown text cleaning {clean!r}")
        self.byte_symbol = byte_symbols()
        symbols = list(self.byte_symbol.values())
        self.base_ids = {s: i for i, s in enumerate(symbols)}
        self.base_ids |= {s + "</w>": 256 + i for i, s in enumerate(symbols)}
        # keyed by the merge list's own lines ("first second"): read straight from the file
        lines = [pair if isinstance(pair, str) else " ".join(pair) for pair in merges]
        self.ranks = {line: rank for rank, line in enumerate(lines)}
        first_special = 512 + len(self.ranks)
        self.specials = list(specials)
        self.sot, self.eot = first_special, first_special + 1
        self.context_length = context_length
        self.clean = clean
        self.pattern = regex.compile("|".join(map(regex.escape, specials)) + "|" + _WORDS, regex.IGNORECASE)
        self._known: dict[str, list[int]] = {s: [first_special + i] for i, s in enumerate(specials)}

    # -- saving and loading next to an exported encoder ---------------------------------------
    def save(self, folder: Path) -> None:
        with gzip.open(Path(folder) / MERGES, "wt", encoding="utf-8") as f:
            f.write("\n".join(sorted(self.ranks, key=self.ranks.__getitem__)))
        (Path(folder) / SETTINGS).write_text(json.dumps({
            "specials": self.specials, "context_length": self.context_length, "clean": self.clean}))

    @classmethod
    def load(cls, folder: Path) -> Tokenizer:
        settings = json.loads((Path(folder) / SETTINGS).read_text())
        with gzip.open(Path(folder) / MERGES, "rt", encoding="utf-8") as f:
            merges = [line for line in f.read().split("\n") if line]
        return cls(merges, settings["specials"], settings["context_length"], settings["clean"])

    # -- tokenizing ---------------------------------------------------------------------------
    def _cleaned(self, text: str) -> str:
        # ftfy leaves printable ASCII without HTML entities as it is (checked on 200,000 random
        # texts) and takes 0.12 s to import: a plain query never pays for it
        if not (text.isascii() and text.isprintable() and "&" not in text):
            import ftfy

            text = ftfy.fix_text(text)
        text = html.unescape(html.unescape(text)).strip()
        if self.clean == "canonicalize":
            text = text.replace("_", " ").translate(str.maketrans("", "", string.punctuation)).lower()
        text = " ".join(text.split())
        return text.lower() if self.clean == "lower" else text

    def _word_ids(self, word: str) -> list[int]:
        """The ids of one word: its byte symbols merged pair by pair, best-ranked pair first."""
        if word in self._known:
            return self._known[word]
        last = word[-1] + "</w>"
        parts = [(c, self.base_ids[c]) for c in word[:-1]] + [(last, self.base_ids[last])]
        while len(parts) > 1:
            neighbours = zip(parts, parts[1:], strict=False)
            ranked = [(self.ranks.get(f"{a} {b}", -1), i) for i, ((a, _), (b, _)) in enumerate(neighbours)]
            best = min((rank for rank, _ in ranked if rank >= 0), default=None)
            if best is None:
                break
            pair = next((parts[i][0], parts[i + 1][0]) for rank, i in ranked if rank == best)
            merged, i = [], 0
            while i < len(parts):  # every occurrence of that pair, left to right
                if i + 1 < len(parts) and (parts[i][0], parts[i + 1][0]) == pair:
                    merged.append((parts[i][0] + parts[i + 1][0], 512 + best))
                    i += 2
                else:
                    merged.append(parts[i])
                    i += 1
            parts = merged
        ids = [i for _, i in parts]
        self._known[word] = ids
        return ids

    def encode(self, text: str) -> list[int]:
        """The ids of `text`, without the start and end tokens."""
        ids: list[int] = []
        for word in self.pattern.findall(self._cleaned(text)):
            ids += self._word_ids("".join(self.byte_symbol[b] for b in word.encode("utf-8")))
        return ids

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        """(len(texts), context_length) int64 ids, zero-padded: open_clip's layout."""
        out = np.zeros((len(texts), self.context_length), np.int64)
        for row, text in enumerate(texts):
            ids = [self.sot, *self.encode(text), self.eot]
            if len(ids) > self.context_length:
                ids = ids[:self.context_length]
                ids[-1] = self.eot
            out[row, :len(ids)] = ids
        return out
