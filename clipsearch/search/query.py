"""The query language: text and image terms added and subtracted in embedding space.

    query   := [sign] term (sign term)*
    sign    := '+' | '-'
    term    := [weight ':'] piece+          e.g.  2:"golden hour"   0.5:beach
    piece   := word | "quoted text"
    weight  := a positive number

A term whose text is a path to an image file (it ends in an image extension, or starts with
/ ./ ../ or ~) stands for that image's embedding. Consecutive words form one term, so a plain
description needs no quotes; a '+' or '-' counts as an operator when it stands alone or touches a
quote or the start of a word (`-people`), never inside a word (`black-and-white`).

The query vector is the normalised sum of each term's unit vector times its signed weight.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from clipsearch.config import IMAGE_EXTENSIONS
from clipsearch.errors import QueryError

if TYPE_CHECKING:
    import numpy as np

_WEIGHT = re.compile(r"^(\d+(?:\.\d*)?|\.\d+):(?!\d)")
_PATH_START = ("/", "./", "../", "~")


@dataclass(frozen=True)
class Term:
    kind: str  # "text" or "image"
    value: str  # the text, or the image's absolute path
    weight: float  # signed: negative terms push results away
    start: int  # character offset in the query, for messages


@dataclass(frozen=True)
class _Token:
    kind: str  # "word", "quoted", "op", "weight"
    value: str
    start: int


def _fail(query: str, pos: int, reason: str) -> QueryError:
    return QueryError(f"bad query {query!r}: {reason} (at character {pos + 1}: "
                      f"{query[pos:pos + 20]!r})")


def _tokens(query: str) -> list[_Token]:
    tokens: list[_Token] = []
    i, n = 0, len(query)
    while i < n:
        c = query[i]
        if c.isspace():
            i += 1
        elif c == '"':
            end = query.find('"', i + 1)
            if end < 0:
                raise _fail(query, i, 'this quote is never closed; add the closing "')
            tokens.append(_Token("quoted", query[i + 1:end], i))
            i = end + 1
        else:
            end = i
            while end < n and not query[end].isspace() and query[end] != '"':
                end += 1
            tokens.extend(_split_word(query, query[i:end], i))
            i = end
    return tokens


def _split_word(query: str, word: str, start: int) -> list[_Token]:
    """One run of non-space characters: an operator, a weight, a word, or a combination."""
    out: list[_Token] = []
    rest = word[1:]
    if word[0] in "+-" and (not rest or not rest[0].isdigit() or _WEIGHT.match(rest)):
        # a sign opening a run is an operator (`- people`, `-people`, `-2:dogs`); `-20C` is a word
        out.append(_Token("op", word[0], start))
        word, start = rest, start + 1
    if word and (match := _WEIGHT.match(word)):
        out.append(_Token("weight", match.group(1), start))
        word, start = word[match.end():], start + match.end()
    end = start + len(word)
    if word and word[-1] in "+-" and end < len(query) and query[end] == '"':
        # `"beach"+"sunset"`: an operator glued to the next quote
        if len(word) > 1:
            out.append(_Token("word", word[:-1], start))
        out.append(_Token("op", word[-1], end - 1))
    elif word:
        out.append(_Token("word", word, start))
    return out


def parse(query: str, image_terms: bool = True) -> list[Term]:
    """Parse a query into signed, weighted terms; QueryError points at the offending part.

    `image_terms=False` refuses terms that name image files before looking for them: a server
    must not open (or reveal the existence of) paths that its clients send.
    """
    if not query or not query.strip():
        raise QueryError("the query is empty; describe what to find, e.g. 'a red car'")
    tokens = _tokens(query)
    terms: list[Term] = []
    i = 0
    while i < len(tokens):
        sign, op = 1.0, None
        if tokens[i].kind == "op":  # always, after the first term: words merge up to an operator
            op = tokens[i]
            sign = -1.0 if op.value == "-" else 1.0
            i += 1
        weight, weight_at = 1.0, None
        if i < len(tokens) and tokens[i].kind == "weight":
            weight_at = tokens[i].start
            weight = float(tokens[i].value)
            if weight <= 0:
                raise _fail(query, weight_at, "a weight must be greater than 0; use - to subtract")
            i += 1
        pieces: list[_Token] = []
        while i < len(tokens) and tokens[i].kind in ("word", "quoted"):
            pieces.append(tokens[i])
            i += 1
        if i < len(tokens) and tokens[i].kind == "weight":
            raise _fail(query, tokens[i].start, "a weight goes at the start of a term; put + or - "
                        "before it")
        if not pieces:
            at = weight_at if weight_at is not None else op.start if op else 0
            what = f"after {op.value!r}" if op and weight_at is None else "after the weight"
            raise _fail(query, at, f"nothing to search for {what}; add a term or remove it")
        text = " ".join(p.value.strip() for p in pieces).strip()
        if not text:
            raise _fail(query, pieces[0].start, "this term is empty")
        terms.append(_term(query, text, sign * weight, pieces, image_terms))
    if not any(t.weight > 0 for t in terms):
        raise _fail(query, terms[0].start, "every term is subtracted; add at least one term to "
                    "look for")
    return terms


def _term(query: str, text: str, weight: float, pieces: Sequence[_Token], image_terms: bool) -> Term:
    start = pieces[0].start
    looks_like_path = len(pieces) == 1 and (
        text.startswith(_PATH_START) or os.path.splitext(text)[1].lower() in IMAGE_EXTENSIONS
    )
    # a bare name (IMG_2041.jpg) is an image term only when that file is here; otherwise it is
    # words, which find the indexed photo of that name (clipsearch.search.wordsearch)
    bare = looks_like_path and not text.startswith(_PATH_START) and os.sep not in text
    if not looks_like_path or bare and not (image_terms and os.path.isfile(text)):
        return Term("text", text, weight, start)
    if not image_terms:
        raise _fail(query, start, "image files as query terms work only from the command line; to "
                    "search by an image here, upload it (POST /api/similar, or drop it on the gallery)")
    path = os.path.abspath(os.path.expanduser(text))
    if not os.path.isfile(path):
        raise _fail(query, start, f"image file not found: {path} (to search for these words "
                    "instead, drop the file extension or path)")
    return Term("image", path, weight, start)


def combine(terms: Sequence[Term], vectors: np.ndarray, query: str = "") -> np.ndarray:
    """The unit query vector: sum of each term's unit vector times its signed weight."""
    import numpy as np

    if len(terms) == 1 and terms[0].weight == 1.0:
        return vectors[0]  # a plain query is its own embedding, bit for bit
    weights = np.array([t.weight for t in terms], np.float32)
    total = (weights[:, None] * vectors).sum(axis=0)
    norm = float(np.linalg.norm(total))
    if norm < 1e-6:
        raise QueryError(f"bad query {query!r}: its terms cancel each other out; change a weight "
                         "or remove a term")
    return (total / norm).astype(np.float32)
