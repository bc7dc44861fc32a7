"""Copies of photos as a library collects them: resized, re-encoded, cropped, rotated, colour
shifted, burst-like neighbouring frames, the same picture in another format, and byte-for-byte
copies. The duplicate tests plant them; the dupes benchmark calibrates the threshold on them."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance


def _crop(share: float) -> Callable[[Image.Image], Image.Image]:
    def crop(img: Image.Image) -> Image.Image:
        w, h = img.size
        dx, dy = round(w * share / 2), round(h * share / 2)
        return img.crop((dx, dy, w - dx, h - dy))
    return crop


def _rotated(img: Image.Image, degrees: float = 2.0) -> Image.Image:
    w, h = img.size
    turned = img.rotate(degrees, Image.Resampling.BICUBIC)
    return _crop(0.08)(turned).resize((w, h), Image.Resampling.BICUBIC)  # no black corners


def _colour(img: Image.Image) -> Image.Image:
    return ImageEnhance.Color(ImageEnhance.Brightness(img).enhance(1.08)).enhance(0.85)


def _burst(img: Image.Image) -> Image.Image:
    """The next frame of a burst: the camera moved 2 %, the light changed a little, new noise."""
    w, h = img.size
    dx, dy = round(w * 0.02), round(h * 0.01)
    frame = img.crop((dx, dy, w, h)).resize((w, h), Image.Resampling.BICUBIC)
    pixels = np.asarray(ImageEnhance.Brightness(frame).enhance(0.97), np.int16)
    noise = np.random.default_rng(w * h).normal(0, 3, pixels.shape).astype(np.int16)
    return Image.fromarray(np.clip(pixels + noise, 0, 255).astype(np.uint8))


def _resized(img: Image.Image) -> Image.Image:
    w, h = img.size
    return img.resize((max(w // 3, 8), max(h // 3, 8)), Image.Resampling.LANCZOS)


# name -> (change, file extension, save options)
VARIANTS: dict[str, tuple[Callable[[Image.Image], Image.Image], str, dict]] = {
    "resized": (_resized, ".jpg", {"quality": 90}),
    "q75": (lambda i: i, ".jpg", {"quality": 75}),
    "q40": (lambda i: i, ".jpg", {"quality": 40}),
    "png": (lambda i: i, ".png", {}),
    "webp": (lambda i: i, ".webp", {"quality": 80}),
    "crop2": (_crop(0.02), ".jpg", {"quality": 90}),
    "crop5": (_crop(0.05), ".jpg", {"quality": 90}),
    "crop10": (_crop(0.10), ".jpg", {"quality": 90}),
    "rotate2": (_rotated, ".jpg", {"quality": 90}),
    "colour": (_colour, ".jpg", {"quality": 90}),
    "burst": (_burst, ".jpg", {"quality": 90}),
}


def write(source: Path, folder: Path, names: list[str] | None = None, copy: bool = True) -> list[Path]:
    """The variants of `source` (all of VARIANTS, or `names`) written into `folder`, plus a
    byte-for-byte copy when `copy`: the files of one planted group besides the source itself."""
    from clipsearch.media.images import load_image

    folder.mkdir(parents=True, exist_ok=True)
    img = load_image(str(source)).image  # HEIC too, upright
    out = []
    for name in names or list(VARIANTS):
        change, ext, options = VARIANTS[name]
        path = folder / f"{source.stem}_{name}{ext}"
        change(img).save(path, **options)
        out.append(path)
    if copy:
        out.append(Path(shutil.copy2(source, folder / f"{source.stem}_copy{source.suffix}")))
    return out
