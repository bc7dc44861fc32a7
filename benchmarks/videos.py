"""Videos made at run time with PyAV (its wheel carries FFmpeg with libx264), for the tests and
the benchmarks: scenes of still pictures, each shown for some seconds, with a little motion so
that the encoder has something to do."""

from __future__ import annotations

from collections.abc import Sequence
from fractions import Fraction

import numpy as np
from PIL import Image


def make_video(path: str, scenes: Sequence[tuple[Image.Image, float]], *, size: tuple[int, int] = (320, 240),
               fps: int = 15, keyint: int | None = None, rotation: int = 0, created: str | None = None,
               crf: int = 28, codec: str = "libx264", pan: bool = False) -> str:
    """Write an H.264 MP4 of `scenes` (picture, seconds) at `size` (width, height). `keyint`:
    frames between key frames (x264's default, 250, unless given; phones use about one a
    second). `rotation`: the display matrix's counter-clockwise degrees (a portrait phone video
    is stored landscape with -90). `created`: the container's creation_time (UTC, ISO 8601).
    `pan`: the camera moves across each picture (a real video's motion, for the encoder and the
    decoder to work on), instead of a still with drifting brightness."""
    import av

    with av.open(path, "w") as out:
        if created:
            out.metadata["creation_time"] = created
        stream = out.add_stream(codec, rate=fps)
        stream.width, stream.height = size
        stream.pix_fmt = "yuv420p"
        options = {"crf": str(crf), "preset": "veryfast"}
        if keyint:
            options["g"] = str(keyint)
        stream.options = options
        stream.time_base = Fraction(1, fps)
        if rotation:
            stream.set_display_rotation(rotation)
        n = 0
        width, height = size
        for picture, seconds in scenes:
            count = max(1, round(seconds * fps))
            wide = (width + width // 4, height + height // 4) if pan else size
            base = np.asarray(picture.convert("RGB").resize(wide), np.int16)
            for i in range(count):
                if pan:  # across a quarter of the picture over the scene
                    x, y = (wide[0] - width) * i // count, (wide[1] - height) * i // (2 * count)
                    moved = np.ascontiguousarray(base[y:y + height, x:x + width].astype(np.uint8))
                else:  # a slow drift of brightness: motion enough to be encoded as a real video is
                    moved = np.clip(base + (i % 8) - 4, 0, 255).astype(np.uint8)
                frame = av.VideoFrame.from_ndarray(moved, format="rgb24")
                frame.pts = n
                n += 1
                for packet in stream.encode(frame):
                    out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


def truncate(path: str, keep: float) -> str:
    """Cut the file to its first `keep` share of bytes, as an interrupted copy leaves it."""
    with open(path, "rb+") as f:
        f.truncate(int(len(f.read()) * keep))
    return path
