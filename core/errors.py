"""strop's exceptions. Each message says what went wrong, why, and how to fix it."""

from __future__ import annotations


class StropError(Exception):
    """A failure the user can act on; `str(err)` is the whole message."""


class ModelNotFound(StropError):
    pass


class ModelLoadError(StropError):
    """The file exists but llama.cpp cannot load it (corrupt, truncated, unsupported)."""


class BadRequest(StropError):
    """The client sent something strop cannot complete (unknown document, bad position, ...)."""


class DiskFull(StropError):
    pass


class OfflineError(StropError):
    pass


class RemoteEngineError(StropError):
    """The remote inference server (`--engine URL`) is down, too slow, or answered with an error."""


class RemoteModelMismatch(RemoteEngineError):
    """The remote server serves another model than the local vocabulary strop tokenizes with."""
