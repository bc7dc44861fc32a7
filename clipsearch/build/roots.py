"""Whether a root (a folder given to `index`) is there: a drive that is not plugged in, a share
that dropped, or an empty file system mounted in its place must not read as "every photo was
deleted". A root is offline when it is missing or holds nothing, or when a scan finds none of
the photos the index holds under it (or, on another device than before, fewer than half of
them). Nothing under an offline root is removed; `--prune-offline` removes on purpose."""

from __future__ import annotations

import os
from collections.abc import Sequence
from datetime import datetime, timezone

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

FEW_FOUND_ON_NEW_DEVICE = 0.5


def absent(root: str) -> str | None:
    """Why `root` cannot be there (None when it may be): missing, not a folder, or empty. Cheap
    enough to ask before every batch of a watcher."""
    try:
        with os.scandir(root) as it:
            if next(it, None) is None:
                return "it is empty (a mount point whose drive is not there?)"
    except FileNotFoundError:
        return "it is missing (an unplugged drive, an unmounted share?)"
    except NotADirectoryError:
        return "it is not a folder any more"
    except OSError as exc:
        return f"it cannot be read ({exc.strerror})"
    return None


def device(root: str) -> int | None:
    try:
        return os.stat(root).st_dev
    except OSError:
        return None


def lost(root: str, stored: pa.Array, found: np.ndarray, recorded_device: int | None) -> str | None:
    """Why `root` counts as offline after a scan (None when it does not): `stored` are the
    indexed paths of the scan's scope, `found` says which of them the scan saw again."""
    under = pc.starts_with(stored, root.rstrip(os.sep) + os.sep).to_numpy(zero_copy_only=False)
    rows = int(under.sum())
    if rows == 0:
        return None
    seen = int(found[under].sum())
    if seen == 0:
        return f"none of its {rows} indexed photos are there (an unplugged drive, an unmounted share?)"
    now = device(root)
    if recorded_device is not None and now is not None and now != recorded_device \
            and seen < FEW_FOUND_ON_NEW_DEVICE * rows:
        return f"it is on another device now and holds only {seen} of its {rows} indexed photos"
    return None


def away(path: str, roots: Sequence[str], mounts: dict[str, int],
         asked: dict[str, str | None] | None = None) -> tuple[str, str] | None:
    """The folder between `path` and its root that is not there the way a root can be offline,
    and why: a symlinked folder or a nested mount (`mounts`, as recorded while it was mounted)
    that is missing or empty. Rows under it are kept, as under an offline root. `asked` keeps
    each folder's answer for one run. None when there is no such folder."""
    asked = {} if asked is None else asked
    from clipsearch.media.scan import root_of

    root = root_of(path, roots)
    if root is None:
        return None
    folder = os.path.dirname(path)
    while len(folder) > len(root):
        if folder not in asked:
            link = os.path.islink(folder)
            why = absent(folder) if link or folder in mounts else None
            asked[folder] = None if why is None else (
                f"it links to a folder that {why.removeprefix('it ')}" if link
                else f"it was a drive of its own when indexed, and {why}")
        if asked[folder] is not None:
            return folder, asked[folder]
        folder = os.path.dirname(folder)
    return None


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
