"""Defaults and where things live. Precedence everywhere: flag > env var > index manifest > default."""

from __future__ import annotations

import os
from pathlib import Path

# ViT-B-32 trained on LAION-2B for 34B samples: the best text-to-image retrieval of the
# 224 px ViT-B/32 class in open_clip's published benchmark (MSCOCO R@5 65.4%, Flickr30k R@1
# 66.8%, vs 55.9% / 58.8% for OpenAI's ViT-B/32) at the same 14.8 GFLOPs per image. See docs/models.md.
DEFAULT_MODEL = "ViT-B-32"
DEFAULT_PRETRAINED = "laion2b_s34b_b79k"

# BLIP ViT-B fine-tuned for COCO retrieval: the image-text-matching head that re-ranks candidates.
DEFAULT_RERANK_MODEL = "Salesforce/blip-itm-base-coco"
# How many CLIP candidates BLIP reads per query: CLIP ViT-B/32's recall@20 to @30 on COCO is
# 85-89%, and each candidate costs BLIP a vision pass when its features are not cached yet.
DEFAULT_CANDIDATES = 24
RERANK_PRECISIONS = ("auto", "fp32", "bf16", "int8")
# BLIP image features are ~1.8 MB per photo (fp32, 577 tokens x 768); 1 GiB keeps ~600 photos.
DEFAULT_FEATURE_CACHE_MB = 1024
# Server thumbnails are 10-40 kB each (WebP): 2 GiB keeps both grid sizes of ~60,000 photos.
DEFAULT_THUMBNAIL_CACHE_MB = 2048

DEFAULT_BATCH_SIZE = 32
DEFAULT_KEEP_REMOVED_DAYS = 7.0
# Rows are committed to the table at least this often, so an interrupted run loses at most
# one such batch of work and never anything committed before it.
COMMIT_EVERY = 256
# ... and at least this often, in seconds: 256 photos are 20-40 s of embedding on a CPU, which a
# kill, a crash or a power cut would otherwise throw away (a small library would never commit)
COMMIT_SECONDS = 10.0

# The RAW formats LibRaw reads (clipsearch.media.raw), by their cameras' extensions
RAW_EXTENSIONS = frozenset(
    {
        ".3fr", ".ari", ".arw", ".bay", ".cap", ".cr2", ".cr3", ".crw", ".cs1", ".dcr", ".dcs",
        ".dng", ".drf", ".eip", ".erf", ".fff", ".gpr", ".iiq", ".k25", ".kdc", ".mdc", ".mef",
        ".mfw", ".mos", ".mrw", ".nef", ".nrw", ".orf", ".ori", ".pef", ".ptx", ".pxn", ".qtk",
        ".raf", ".raw", ".rdc", ".rw2", ".rwl", ".rwz", ".sr2", ".srf", ".srw", ".sti", ".x3f",
    }
)
# What a camera set to RAW + JPEG (or HEIF) writes beside the RAW: the pair is one photo, shown
# through this rendition, the RAW named as its original (clipsearch.media.scan.is_companion)
RENDITION_EXTENSIONS = frozenset({".jpg", ".jpeg", ".jpe", ".jfif", ".heic", ".heif", ".hif"})
IMAGE_EXTENSIONS = frozenset(
    {
        *RENDITION_EXTENSIONS, ".png", ".webp", ".gif", ".tif", ".tiff", ".bmp", ".avif",
        *RAW_EXTENSIONS,
    }
)
VIDEO_EXTENSIONS = frozenset({".mp4", ".mov", ".m4v", ".mkv", ".webm", ".avi", ".3gp"})
INDEXED_EXTENSIONS = IMAGE_EXTENSIONS | VIDEO_EXTENSIONS


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


def db_path(db: str | os.PathLike[str] | None) -> Path:
    """The index directory a command means: --db / CLIPSEARCH_DB, else the default, absolute."""
    return Path(db).expanduser().absolute() if db else default_db().absolute()


def fast_query() -> bool:
    """CLIPSEARCH_FAST_QUERY=0 turns the exported text encoder and the row snapshot off
    (clipsearch.search.fastpath): queries then run on torch and LanceDB, as before they existed."""
    return os.environ.get("CLIPSEARCH_FAST_QUERY", "1").strip().lower() not in ("0", "false", "no", "off")


def background_export() -> bool:
    """Whether the CLI leaves the text encoder's export to a process of its own
    (clipsearch.models.exportjob), the default; CLIPSEARCH_EXPORT=now makes it in the command that
    needs it, which then waits for it (scripts that want the fast path ready when `index` ends)."""
    return os.environ.get("CLIPSEARCH_EXPORT", "background").strip().lower() != "now"


def index_precision() -> str:
    """The precision photos are embedded in unless a caller says (CLIPSEARCH_PRECISION, else
    auto: bf16 on CPUs with native bf16, fp16 on CUDA, fp32 elsewhere)."""
    return os.environ.get("CLIPSEARCH_PRECISION", "").strip().lower() or "auto"


def default_workers() -> int:
    return max(1, min(8, os.cpu_count() or 1))


def cache_dir() -> Path:
    """Disposable caches (CLIPSEARCH_CACHE, else CLIPSEARCH_HOME/cache, else the platform's)."""
    env = os.environ.get("CLIPSEARCH_CACHE")
    if env:
        return Path(env).expanduser()
    home = os.environ.get("CLIPSEARCH_HOME")
    if home:
        return Path(home).expanduser() / "cache"
    import platformdirs

    return platformdirs.user_cache_path("clipsearch", appauthor=False)


# The folders of cache_dir(), each named once: what makes and reads them, `check` and `forget`
THUMBNAILS, FEATURES, EXPORTS = "thumbnails", "itm-features", "exports"


def cache_folder(name: str) -> Path:
    """One of cache_dir()'s folders: THUMBNAILS, FEATURES (BLIP's per-image features) or EXPORTS
    (the text encoders' ONNX exports)."""
    return cache_dir() / name


def feature_cache_bytes() -> int:
    """The re-rank feature cache's bound (CLIPSEARCH_FEATURE_CACHE_MB; 0 turns the cache off)."""
    return _megabytes("CLIPSEARCH_FEATURE_CACHE_MB", DEFAULT_FEATURE_CACHE_MB)


def thumbnail_cache_bytes() -> int:
    """The server's thumbnail cache's bound (CLIPSEARCH_THUMBNAIL_CACHE_MB; 0 keeps none)."""
    return _megabytes("CLIPSEARCH_THUMBNAIL_CACHE_MB", DEFAULT_THUMBNAIL_CACHE_MB)


def keep_removed_days() -> float:
    """How long the vectors of removed photos are kept by content hash, so that a photo that
    comes back is not embedded again (CLIPSEARCH_KEEP_REMOVED_DAYS; 0 keeps none)."""
    value = os.environ.get("CLIPSEARCH_KEEP_REMOVED_DAYS", "").strip()
    try:
        return max(0.0, float(value)) if value else DEFAULT_KEEP_REMOVED_DAYS
    except ValueError:
        from clipsearch.errors import BadInputError

        raise BadInputError(f"CLIPSEARCH_KEEP_REMOVED_DAYS={value!r} is not a number of days, "
                            f"e.g. {DEFAULT_KEEP_REMOVED_DAYS:g}") from None


def _megabytes(variable: str, default: float) -> int:
    value = os.environ.get(variable, "").strip()
    try:
        mb = float(value) if value else default
    except ValueError:
        from clipsearch.errors import BadInputError

        raise BadInputError(
            f"{variable}={value!r} is not a number of megabytes, e.g. {default:g}"
        ) from None
    return max(0, int(mb * 1024 * 1024))
