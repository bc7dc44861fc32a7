"""The indexer's step for each new or changed file, here or on a Ray worker: read it once, hash
it, read what it says (clipsearch.media.words), and decode and preprocess it only when its content is
not indexed already. A bad file never raises: its reason comes back."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from PIL import Image

from clipsearch.errors import UnreadableImageError
from clipsearch.media.exif import Meta
from clipsearch.media.images import (
    content_hash,
    decode,
    hash_file,
    raw_file_identity,
    read_file,
    register_formats,
)
from clipsearch.media.kinds import Decoded, is_raw_name, is_video_name
from clipsearch.media.words import read_meta


@dataclass
class Prepared:
    """A photo file as the indexer needs it: its content hash and, unless that content is
    already indexed, its preprocessed pixels; or why it was skipped (`unread`: the file could
    not be read at all, as opposed to decoded)."""

    hash: str | None = None
    pixels: object | None = None
    width: int | None = None
    height: int | None = None
    taken: str | None = None
    reason: str | None = None
    unread: bool = False
    meta: Meta | None = None  # what it says beyond its pixels (clipsearch.media.words)


def prepare_photo(path: str, known: Callable[[str], bool], min_side: int | None,
                  preprocess: Callable[[Image.Image], object]) -> Prepared:
    """Read, hash and, when `known(hash)` is false, decode and preprocess the photo at `path`:
    the work of an index run for each new or changed file, here or on a Ray worker. A bad file
    never raises: its reason comes back."""
    try:
        if is_video_name(path):
            return _prepare_video(path)
        if is_raw_name(path):
            return _prepare_raw(path, known, min_side, preprocess)
        try:
            data = read_file(path)
        except UnreadableImageError as exc:
            return Prepared(reason=exc.reason, unread=True)
        digest = content_hash(data)
        register_formats()
        return _decoded_unless_known(digest, read_meta(path, data), known,
                                     lambda: decode(data, path, min_side), preprocess)
    except UnreadableImageError as exc:
        return Prepared(reason=exc.reason)
    except Exception as exc:  # one bad file must never end the run
        return Prepared(reason=f"unexpected error ({type(exc).__name__}: {exc})")


def _prepare_video(path: str) -> Prepared:
    """A video is hashed here; its frames are decoded and embedded as the model takes them
    (Indexer._embed_video), never held all at once."""
    try:
        digest = hash_file(path)
    except UnreadableImageError as exc:
        return Prepared(reason=exc.reason, unread=True)
    return Prepared(digest, meta=read_meta(path))


def _prepare_raw(path: str, known: Callable[[str], bool], min_side: int | None,
                 preprocess: Callable[[Image.Image], object]) -> Prepared:
    """A RAW is identified from 2 MiB of it (raw_identity) and decoded by LibRaw from the file,
    which reads what the chosen path needs: the preview, or the sensor data."""
    from clipsearch.media.raw import decode_file

    try:
        digest, head = raw_file_identity(path)
    except UnreadableImageError as exc:
        return Prepared(reason=exc.reason, unread=True)
    return _decoded_unless_known(digest, read_meta(path, head), known,
                                 lambda: decode_file(path, min_side, head), preprocess)


def _decoded_unless_known(digest: str, meta: Meta, known: Callable[[str], bool],
                          decoded: Callable[[], Decoded],
                          preprocess: Callable[[Image.Image], object]) -> Prepared:
    """The Prepared of content `digest`: with its pixels, decoded and preprocessed, unless the
    index already holds that content."""
    if known(digest):
        return Prepared(digest, meta=meta)
    picture = decoded()
    return Prepared(digest, preprocess(picture.image), picture.width, picture.height, picture.taken,
                    meta=meta)
