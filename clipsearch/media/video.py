"""Videos: which frames stand for a video (PyAV, whose wheel carries its own FFmpeg), upright and
timed, and how the moments a search finds become one hit per video.

A video is sampled from its key frames alone (the decoder skips every other frame, so a 1080p
video costs a few decoded pictures a second of it): a key frame is kept when the picture changed
(a new scene) or when MAX_GAP seconds passed since the last kept one; where key frames are further
apart than that, a seek fills the gap. Each kept frame becomes a row of the index: the video's
path, size, hash and creation time, and the frame's time `t`.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime

import numpy as np
from PIL import Image

from clipsearch.errors import UnreadableImageError

# At least one frame every MAX_GAP seconds, a scene change at most every MIN_GAP: 4 s finds a
# scene within 2 s of where it starts (tests/test_video.py) at 900 rows an hour, 2 MB a row's
# worth of vectors and words (benchmarks/video.py)
MAX_GAP = 4.0
MIN_GAP = 1.0
# What counts as a new scene since the last kept frame: a quarter of the colours moved (the
# share of a 64-bin colour histogram's mass that moved), or a quarter of a 32x18 grey picture's
# brightness changed. A pan or a zoom over the same scene moves its pixels, not its colours
# (benchmarks/video.py: pans moved 0.3-5 % of the histogram, cuts 66-77 %; the grey pictures
# of a pan changed up to 9 %, which alone would have kept every key frame of it)
SCENE_CHANGE = 0.25
PICTURE_CHANGE = 0.25
MAX_FRAMES = 5_000  # per video: a day-long recording is sampled more sparsely, never without bound
MAX_PIXELS = 8192 * 8192
_FILL_FRAMES = 600  # decoded at most per gap filled by seeking (a GOP rarely holds more)
MOMENTS = 5  # a video hit lists its best moments, at most this many


@dataclass
class VideoInfo:
    duration: float | None  # seconds
    width: int  # of the upright picture
    height: int
    created: str | None  # ISO 8601 without zone, local time, as `taken` is for photos
    notes: list[str] = field(default_factory=list)  # what did not decode (a corrupt tail)
    stream_end: float | None = None  # seconds, as the packets read say (`frames` fills it in)


def _av():
    try:
        import av
    except ImportError as exc:  # a broken install: one line, not a traceback per video
        raise UnreadableImageError("", "videos need PyAV: pip install av") from exc
    av.logging.set_level(None)  # FFmpeg's own complaints about a bad stream are ours to report
    return av


def _open(path: str):
    av = _av()
    try:
        if os.path.getsize(path) == 0:
            raise UnreadableImageError(path, "empty file (0 bytes)")
        container = av.open(path, metadata_errors="ignore")
    except FileNotFoundError:
        raise UnreadableImageError(path, "file disappeared while indexing") from None
    except PermissionError:
        raise UnreadableImageError(path, "permission denied; make the file readable") from None
    except av.FFmpegError as exc:
        raise UnreadableImageError(
            path, f"not a readable video ({_why(exc)}); if it is truncated, copy it again from its source",
        ) from None
    if not container.streams.video:
        container.close()
        raise UnreadableImageError(path, "has no video track (audio only?); nothing to index")
    return container


def _why(exc: Exception) -> str:
    return getattr(exc, "strerror", None) or str(exc) or type(exc).__name__


def probe(container, path: str) -> VideoInfo:
    stream = container.streams.video[0]
    ctx = stream.codec_context
    width, height = ctx.width or 0, ctx.height or 0
    if width * height > MAX_PIXELS:
        raise UnreadableImageError(path, f"refused: {width}x{height} is over the limit of "
                                         f"{MAX_PIXELS / 1e6:,.0f} megapixels for a video frame")
    duration = None
    if stream.duration and stream.time_base:
        duration = float(stream.duration * stream.time_base)
    elif container.duration:
        duration = container.duration / 1_000_000
    return VideoInfo(duration if duration and math.isfinite(duration) and duration > 0 else None,
                     width, height, _created(container.metadata | stream.metadata))


def _created(meta: dict) -> str | None:
    """The local time it was recorded: Apple's own tag keeps the zone it was taken in; the
    container's creation_time is UTC, shown in this machine's zone."""
    for key, local in (("com.apple.quicktime.creationdate", False), ("creation_time", True)):
        value = meta.get(key)
        if not value:
            continue
        with contextlib.suppress(ValueError):
            when = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
            if when.year < 1971:  # an unset clock (1904 and 1970 epochs) says nothing
                continue
            if local and when.tzinfo is not None:
                when = when.astimezone()
            return when.replace(tzinfo=None, microsecond=0).isoformat()
    return None


def _upright(image: Image.Image, rotation: int) -> Image.Image:
    turn = {90: Image.Transpose.ROTATE_90, 180: Image.Transpose.ROTATE_180,
            270: Image.Transpose.ROTATE_270}.get(round(rotation / 90) * 90 % 360)
    return image.transpose(turn) if turn is not None else image


def _picture(frame, min_side: int | None) -> Image.Image:
    """The frame as RGB, scaled down so its short side is min_side (the model's decode size)."""
    w, h = frame.width, frame.height
    if min_side and min(w, h) > min_side:
        scale = min_side / min(w, h)
        w, h = max(1, round(w * scale)), max(1, round(h * scale))
    return _upright(frame.reformat(width=w, height=h, format="rgb24", interpolation="AREA").to_image(),
                    frame.rotation or 0)


def _signature(frame) -> tuple[np.ndarray, np.ndarray]:
    """(colour histogram, grey thumbnail) of a frame, for telling scenes apart."""
    bins = frame.reformat(width=64, height=36, format="rgb24").to_ndarray() // 64
    histogram = np.bincount((bins[..., 0] * 16 + bins[..., 1] * 4 + bins[..., 2]).ravel(), minlength=64)
    grey = frame.reformat(width=32, height=18, format="gray").to_ndarray().astype(np.float32) / 255.0
    return histogram.astype(np.float32) / histogram.sum(), grey


def _new_scene(a: tuple[np.ndarray, np.ndarray], b: tuple[np.ndarray, np.ndarray]) -> bool:
    return (float(np.abs(a[0] - b[0]).sum()) / 2 >= SCENE_CHANGE
            or float(np.abs(a[1] - b[1]).mean()) >= PICTURE_CHANGE)


def clock(seconds: float) -> str:
    """A time into a video as players show it: 1:42, 1:02:03."""
    whole = int(seconds)
    hours, minutes, secs = whole // 3600, whole // 60 % 60, whole % 60
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def frames(path: str, min_side: int | None = None, info: VideoInfo | None = None,
           ) -> Iterator[tuple[float, Image.Image]]:
    """(seconds, upright RGB picture) of the frames that stand for the video at `path`, in the
    order they are found. Raises UnreadableImageError when nothing decodes; what fails after the
    first frame ends the sampling there and is noted in `info.notes`."""
    av = _av()
    with _open(path) as container:
        found = probe(container, path)
        if info is not None:
            vars(info).update(vars(found))
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        duration = found.duration or 0.0
        gap = max(MAX_GAP, min(duration, 86_400.0) / MAX_FRAMES)
        kept: list[float] = []
        last_t, last_sig, rotation, last_seen = -math.inf, None, 0, 0.0
        try:
            stream.codec_context.skip_frame = "NONKEY"
            for frame in _key_frames(container, stream, info=found):
                t = float(frame.time if frame.time is not None else 0.0)
                rotation = frame.rotation or 0
                last_seen = max(last_seen, t)
                # a header with no length (or a wrong one) set too small a gap: the rows stay bounded
                if t - last_t < MIN_GAP or len(kept) >= MAX_FRAMES:
                    continue
                sig = _signature(frame)
                # past MAX_FRAMES only the gap keeps frames: a video's rows stay bounded
                if t - last_t >= gap or (len(kept) < MAX_FRAMES and _new_scene(sig, last_sig)):
                    kept.append(t)
                    last_t, last_sig = t, sig
                    yield t, _picture(frame, min_side)
        except av.FFmpegError as exc:
            if not kept:
                raise UnreadableImageError(path, f"no frame decodes ({_why(exc)}); the video codec may be "
                                                 "unsupported or the file corrupt") from None
            found.notes.append(f"the video stops decoding after {clock(kept[-1])} ({_why(exc)}); "
                               "indexed what decoded")
            if info is not None:
                info.notes = found.notes
            return
        if not kept:
            raise UnreadableImageError(path, "no frame decodes; the video codec may be unsupported or "
                                             "the file truncated")
        if rotation and round(rotation / 90) % 2 and info is not None:
            info.width, info.height = found.height, found.width
        # filled up to the end of the stream as its packets say (the last key frame may be long
        # before it), not to what a header claims (4e9 s would be millions of seeks)
        end = max(last_seen, found.stream_end or 0.0)
        yield from _fill(container, stream, kept, end, gap, min_side, MAX_FRAMES - len(kept))
        if duration and kept[-1] < duration - 2 * gap - 1:
            note = (f"the video ends at {clock(kept[-1])} of the {clock(duration)} its header says "
                    "(truncated?); indexed what decoded")
            found.notes.append(note)
            if info is not None:
                info.notes = found.notes


def _key_frames(container, stream, info: VideoInfo):
    """The key frames of `stream` decoded (the others skipped by the decoder), while every
    packet's end is noted in `info.stream_end`: where the stream really ends, which no key frame
    tells (a phone's clip may have one key frame in all)."""
    for packet in container.demux(stream):
        if packet.pts is not None and packet.time_base is not None:
            end = float((packet.pts + (packet.duration or 0)) * packet.time_base)
            info.stream_end = max(info.stream_end or 0.0, end)
        yield from packet.decode()


def _fill(container, stream, kept: list[float], end: float, gap: float, min_side: int | None,
          most: int = MAX_FRAMES) -> Iterator[tuple[float, Image.Image]]:
    """Frames between key frames that are more than `gap` apart, and after the last one up to
    the stream's `end`, found by seeking: at most `most`."""
    av = _av()
    bounds = [*sorted(kept), end]
    last = len(bounds) - 2  # the tail: a frame is owed once it is longer than a gap
    targets = list(itertools.islice(
        (a + gap * i for n, (a, b) in enumerate(zip(bounds, bounds[1:], strict=False))
         if b - a > (gap if n == last else 1.5 * gap)
         for i in range(1, math.ceil((b - a) / gap)) if a + gap * i < b - MIN_GAP), max(most, 0)))
    if not targets:
        return
    stream.codec_context.skip_frame = "NONREF"  # the pictures nothing else refers to are skipped
    for target in targets:
        try:
            container.seek(int(target / stream.time_base), stream=stream, backward=True)
            for n, frame in enumerate(container.decode(stream)):
                if frame.time is not None and frame.time >= target - 0.5:
                    yield float(frame.time), _picture(frame, min_side)
                    break
                if n >= _FILL_FRAMES:
                    break
        except av.FFmpegError:  # a gap that does not decode stays a gap
            return


def frame_at(path: str, t: float, min_side: int | None = None) -> Image.Image:
    """The upright picture of the video at `path` at about `t` seconds (a thumbnail, a re-rank)."""
    av = _av()
    with _open(path) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        try:
            if t > 0:
                container.seek(int(t / stream.time_base), stream=stream, backward=True)
            best = None
            for n, frame in enumerate(container.decode(stream)):
                best = frame
                if frame.time is None or frame.time >= t - 0.05 or n >= _FILL_FRAMES:
                    break
        except av.FFmpegError as exc:
            if best is None:
                raise UnreadableImageError(path, f"no frame decodes at {clock(t)} ({_why(exc)})") from None
        if best is None:
            raise UnreadableImageError(path, f"no frame at {clock(t)}; the video is shorter")
        return _picture(best, min_side)


def group(hits: Sequence, k: int) -> list:
    """Hits (clipsearch.results.Hit, best first) with a video's moments folded into one hit per
    video: its best moment's score and time, and its best MOMENTS moments listed. At most k."""
    out: list = []
    by_path: dict[str, int] = {}
    for hit in hits:
        t = hit.image.t if hit.image is not None else None
        if t is None:
            if len(out) < k:
                out.append(replace(hit, rank=len(out) + 1))
            continue
        at = by_path.get(hit.path)
        if at is None:
            if len(out) >= k:
                continue
            by_path[hit.path] = len(out)
            out.append(replace(hit, rank=len(out) + 1, t=t, moments=[(t, hit.score)]))
        elif len(out[at].moments) < MOMENTS:
            out[at] = replace(out[at], moments=[*out[at].moments, (t, hit.score)])
    return out


_ISO6709 = re.compile(r"([+-]\d+(?:\.\d+)?)([+-]\d+(?:\.\d+)?)")


def read_tags(path: str, meta) -> None:
    """The camera and the place a phone wrote into the video's container (clipsearch.media.exif.Meta)."""
    with _open(path) as container:
        tags = {k.lower(): v for k, v in (container.metadata | container.streams.video[0].metadata).items()}
    make, model = tags.get("com.apple.quicktime.make") or tags.get("make"), \
        tags.get("com.apple.quicktime.model") or tags.get("model")
    if model and make and model.lower().startswith(make.split()[0].lower()):
        make = None
    meta.camera = " ".join(p.strip() for p in (make, model) if p and p.strip()) or None
    where = tags.get("com.apple.quicktime.location.iso6709") or tags.get("location")
    match = _ISO6709.match(where or "")
    if match:
        lat, lon = float(match.group(1)), float(match.group(2))
        if -90 <= lat <= 90 and -180 <= lon <= 180 and (lat, lon) != (0.0, 0.0):
            meta.lat, meta.lon = lat, lon
