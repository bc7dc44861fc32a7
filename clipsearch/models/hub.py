"""The Hugging Face hub as seen from an offline-first tool: read the cache before any network,
and when the network is needed, find out in seconds whether it is there.

huggingface_hub and transformers retry a dead connection for a minute or more; a photo search
that hangs that long before saying "offline" is broken, so every adapter asks here first.
"""

from __future__ import annotations

import os
import threading
import urllib.error
import urllib.request
from collections.abc import Sequence
from urllib.parse import urlsplit

from clipsearch.errors import OfflineError

HUB_PROBE_SECONDS = 3.0


def offline_env() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")


def hf_endpoint() -> str:
    return os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")


def reachable(url: str, timeout: float = HUB_PROBE_SECONDS) -> bool:
    """Whether `url`'s server answers within `timeout` seconds, DNS lookup included."""
    answered: list[bool] = []

    def probe() -> None:
        try:
            urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=timeout)
            answered.append(True)
        except urllib.error.HTTPError:
            answered.append(True)  # the server answered, if only with an error status
        except Exception:
            answered.append(False)

    # A thread bounds the whole probe: urlopen's timeout does not cover a hanging DNS lookup.
    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout)
    return bool(answered and answered[0])


def require_hub(what: str, url: str, local_hint: str) -> None:
    """Raise OfflineError naming `what` unless `url`'s server answers now.

    `local_hint` completes "... connect once to download it, or ..." with how to point
    clipsearch at weights already on disk.
    """
    parts = urlsplit(url)
    endpoint = f"{parts.scheme}://{parts.netloc}"
    if offline_env() or not reachable(endpoint):
        how = "HF_HUB_OFFLINE is set" if offline_env() else f"{endpoint} is unreachable"
        raise OfflineError(
            f"{what} is not in the local cache and {how}; connect once to download it, "
            f"or {local_hint}"
        )


def cached_hf_file(repo: str, filenames: Sequence[str]) -> str | None:
    """The first of `filenames` present in the local HF cache for `repo`, without any network."""
    from huggingface_hub import try_to_load_from_cache

    for filename in filenames:
        found = try_to_load_from_cache(repo, filename)
        if isinstance(found, str):
            return found
    return None
