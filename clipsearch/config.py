"""Defaults and where things live. Precedence everywhere: flag > env var > index manifest > default."""

from __future__ import annotations

import os
from pathlib import Path

# ViT-B-32 trained on LAION-2B for 34B samples: the best text-to-image retrieval of the
# 224 px ViT-B/32 class in open_clip's published benchmark (MSCOCO R@5 65.4%, Flickr30k R@1
# 66.8%, vs 55.9% / 58.8% for OpenAI's ViT-B/32) at the same 14.8 GFLOPs per image. See README.
DEFAULT_MODEL = "ViT-B-32"
DEFAULT_PRETRAINED = "laion2b_s34b_b79k"

DEFAULT_BATCH_SIZE = 32
# Rows are committed to the table at least this often, so an interrupted run loses at most
# one such batch of work and never anything committed before it.
COMMIT_EVERY = 256

IMAGE_EXTENSIONS = frozenset(
    {
        ".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".webp", ".gif", ".tif", ".tiff",
        ".bmp", ".heic", ".heif", ".hif", ".avif",
    }
)


def data_dir() -> Path:
    """The user data directory (CLIPSEARCH_HOME overrides the platform default)."""
    home = os.environ.get("CLIPSEARCH_HOME")
    if home:
        return Path(home).expanduser()
    import platformdirs

    return platformdirs.user_data_path("clipsearch", appauthor=False)


def default_db() -> Path:
    """Where the index lives when neither --db nor CLIPSEARCH_DB says otherwise."""
    env = os.environ.get("CLIPSEARCH_DB")
    return Path(env).expanduser() if env else data_dir() / "index"


def default_workers() -> int:
    return max(1, min(8, os.cpu_count() or 1))
