"""Requests for tests and fuzzing, registered only when STROP_DEBUG_REQUESTS=1; not part of the
protocol editors speak (server/protocol.py).

strop/debugDocument: params {"textDocument": {"uri"}} -> {"uri", "version", "text"}, the server's
copy of an open document, or null when it is not open.
"""

from __future__ import annotations

import os

from .params import field

DEBUG_DOCUMENT = "strop/debugDocument"
DEBUG_ENV = "STROP_DEBUG_REQUESTS"


def register(server) -> None:
    if os.environ.get(DEBUG_ENV) != "1":
        return

    @server.feature(DEBUG_DOCUMENT)
    def debug_document(ls, params) -> dict | None:
        uri = field(field(params, "textDocument"), "uri")
        doc = ls.workspace.document(uri) if isinstance(uri, str) else None
        return None if doc is None else {"uri": doc.uri, "version": doc.version, "text": doc.source}
