"""Requests for tests and fuzzing, registered only when STROP_DEBUG_REQUESTS=1 (server/protocol.py)."""

from __future__ import annotations

import os

from . import protocol
from .params import field


def register(server) -> None:
    if os.environ.get(protocol.DEBUG_ENV) != "1":
        return

    @server.feature(protocol.DEBUG_DOCUMENT)
    def debug_document(ls, params) -> dict | None:
        uri = field(field(params, "textDocument"), "uri")
        doc = ls.workspace.document(uri) if isinstance(uri, str) else None
        return None if doc is None else {"uri": doc.uri, "version": doc.version, "text": doc.source}
