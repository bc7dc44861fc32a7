"""Thumbnails of indexed images: made once from the indexed bytes (EXIF-oriented, JPEGs decoded
at reduced scale), kept in a bounded disk cache keyed by content hash, so an edited photo never
shows its old thumbnail and a moved one keeps its thumbnail."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from PIL import features

from clipsearch import config
from clipsearch.media.images import thumbnail
from clipsearch.results import ImageRecord

# grid, high-density grid; then the viewer's, chosen by the screen: up to a 4K screen's longest side
SIZES = (256, 512, 1024, 2048, 4096)
WEBP = features.check("webp")
MEDIA_TYPE = "image/webp" if WEBP else "image/jpeg"


class Thumbnails:
    def __init__(self, root: Path | None = None, max_bytes: int | None = None) -> None:
        from clipsearch.store.diskcache import DiskCache

        root = Path(root) if root else config.cache_folder(config.THUMBNAILS)
        bound = config.thumbnail_cache_bytes() if max_bytes is None else max_bytes
        suffix = ".webp" if WEBP else ".jpg"
        self._caches = {size: DiskCache(root, str(size), bound, suffix) for size in SIZES}
        self._renditions = DiskCache(root, "raw", bound, ".jpg")

    def get(self, record: ImageRecord, size: int, read: Callable[[], bytes]) -> bytes:
        """The thumbnail of `record` fitting a `size` box; `read()` gives the indexed bytes and
        is called only when the thumbnail is not cached yet."""
        cache = self._caches[size]
        cached = cache.read(record.hash)
        if cached is not None:
            return cached
        data = make(read(), record.path, size)
        cache.write(record.hash, data)
        return data

    def rendition(self, record: ImageRecord, read: Callable[[], bytes]) -> bytes:
        """The JPEG a browser shows of a RAW `record` (clipsearch.media.raw.rendition), made once."""
        from clipsearch.media.raw import rendition

        cached = self._renditions.read(record.hash)
        if cached is None:
            cached = rendition(read(), record.path)
            self._renditions.write(record.hash, cached)
        return cached

    def verify(self) -> tuple[int, int]:
        """Check every cached thumbnail: (checked, deleted as damaged; they are made again)."""
        return next(iter(self._caches.values())).verify()  # one folder holds every size


def make(data: bytes, name: str, size: int) -> bytes:
    """Encode the upright picture in `data`, scaled to fit a `size` x `size` box (never enlarged)."""
    return thumbnail(data, name, size, "WEBP" if WEBP else "JPEG")

