"""What a file is, by its name, and what decoding a photo gives: the ground that the decoders
(images, raw, video), the metadata reader (words) and the indexer's per-file step
(clipsearch.build.prepare) share, importing none of them."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

from clipsearch.config import RAW_EXTENSIONS, VIDEO_EXTENSIONS

if TYPE_CHECKING:  # this module stays light: the CLI's client asks it what a path is
    from PIL import Image

# How much of a RAW's start is read for its headers: its metadata (EXIF, maker notes, embedded
# XMP) and the first part of its identity (clipsearch.media.images.raw_identity)
RAW_HEAD = 1 << 20


@dataclass
class Decoded:
    image: Image.Image  # RGB, EXIF orientation applied
    width: int  # of the full-size upright image, not of a reduced draft
    height: int
    taken: str | None  # EXIF capture time, ISO 8601 without zone, as the camera wrote it


def is_video_name(path: str) -> bool:
    return os.path.splitext(path)[1].lower() in VIDEO_EXTENSIONS


def is_raw_name(path: str) -> bool:
    return os.path.splitext(path)[1].lower() in RAW_EXTENSIONS
