"""Typed errors. Library code raises these; only the CLI turns them into messages and exit codes,
and only the server's error handler into HTTP statuses: each class carries both.

Every message is one line that names the file or value at fault and says what to do about it.
"""

from __future__ import annotations


class ClipsearchError(Exception):
    """Base class of every error clipsearch raises on purpose."""

    exit_code = 1
    http_status = 500


class BadInputError(ClipsearchError):
    """A value given by the user cannot be used (missing folder, malformed option ...)."""

    exit_code = 2
    http_status = 400


class QueryError(BadInputError):
    """A search query does not parse; the message points at the offending part."""


class UnknownImageError(BadInputError):
    """No indexed image has the id asked for (the server's 404)."""

    http_status = 404


class UnknownJobError(BadInputError):
    """No job with that id on the server (finished long ago, or never)."""

    http_status = 404


class ImageChangedError(ClipsearchError):
    """An indexed image's file is gone, unreadable, or holds other content than was indexed."""

    http_status = 404


class UnknownModelError(BadInputError):
    """The model name or pretrained tag is not one open_clip knows."""


class ModelLoadError(ClipsearchError):
    """The model exists but its weights could not be loaded."""

    http_status = 503


class OfflineError(ModelLoadError):
    """The weights are not cached and the model hub cannot be reached."""


class IndexNotFoundError(ClipsearchError):
    """No index exists at the given database directory."""

    http_status = 503


class ModelMismatchError(ClipsearchError):
    """The index was built with another model than the one asked for."""


class SchemaVersionError(ClipsearchError):
    """The index was written by a newer clipsearch."""


class CorruptIndexError(ClipsearchError):
    """The index's files are damaged in a way clipsearch cannot repair by itself."""


class IndexWriteError(ClipsearchError):
    """The index could not be written (disk full, read-only, no permission); what was committed
    before is intact."""


class IndexBusyError(ClipsearchError):
    """Another process is writing to the same index."""


class NotAllowedError(ClipsearchError):
    """A request the server answers only with a stronger credential: a job (a write) needs the
    local secret the CLI reads, not the gallery's token."""

    http_status = 403


class ServeError(ClipsearchError):
    """The server cannot start (its port is taken, its address is not this machine's ...)."""


class RayUnavailableError(BadInputError):
    """--ray was asked for, but Ray is not installed or its cluster cannot be reached."""


class RayWorkerError(ClipsearchError):
    """The Ray job failed on its workers (a model they cannot load, a cluster that went away);
    what was committed before is kept."""


class WorkerCannotReadError(ClipsearchError):
    """A Ray worker could not read a photo that the driver can: the photos are not at the same
    path on every machine."""


class UnreadableImageError(ClipsearchError):
    """One file could not be decoded as an image. The indexer skips it and reports the reason;
    one given as a query is bad input, as a missing one is (exit code 2)."""

    exit_code = 2
    http_status = 422

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


class SidecarError(ClipsearchError):
    """An XMP sidecar could not be read or written; it is left as it was and reported."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


class IndexInterrupted(ClipsearchError):
    """Indexing was interrupted (Ctrl-C); everything committed so far is kept."""

    exit_code = 130

    def __init__(self, saved: int, what: str = "images") -> None:
        super().__init__(
            f"interrupted; progress is saved ({saved} {what} committed in this run): "
            "run the same command again to resume"
        )
        self.saved = saved
