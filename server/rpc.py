"""strop's JSON-RPC layer over pygls's LSP protocol: every request gets exactly one answer, with the
right code and a one-line message a user can act on; nothing a client sends becomes a popup.

- A request whose params do not fit the LSP schema is answered InvalidParams naming the field
  (`textDocument/inlineCompletion: params.position.line: ...`); pygls dropped it unanswered. A
  notification that does not fit is dropped and logged once, at debug level.
- Document URIs are normalised here, as messages arrive (`documents.normalize_uri`), so every
  handler and the workspace see one spelling.
- The lifecycle follows LSP: before `initialize` requests get ServerNotInitialized and
  notifications are dropped; a second `initialize` is InvalidRequest (the workspace is kept); a
  repeated `initialized` is ignored (one log connection, one model load); after `shutdown` requests
  get InvalidRequest; `exit` ends the process with 0 after `shutdown`, 1 without (pygls).
- Replies carry no tracebacks: an internal error is logged (one line; the traceback at debug
  level) and answered with its one-line message.
"""

from __future__ import annotations

import logging
import re

import cattrs
from cattrs import v as cattrs_v
from lsprotocol import types as t
from pygls.exceptions import (JsonRpcException, JsonRpcInvalidParams, JsonRpcInvalidRequest,
                              JsonRpcServerNotInitialized)
from pygls.protocol import LanguageServerProtocol

from .documents import InvalidUri, StropWorkspace, normalize_uri

log = logging.getLogger(__name__)


class Rejected(Exception):
    """The message was answered with an error (a request) or dropped (anything else) before dispatch."""


def message_id(data: object) -> int | str | None:
    """The id of a raw message if it is a usable JSON-RPC id, else None (an error reply then says null)."""
    mid = data.get("id") if isinstance(data, dict) else None
    return mid if isinstance(mid, (str, int)) and not isinstance(mid, bool) else None


def is_request(data: dict) -> bool:
    return "method" in data and "id" in data


_SNAKE = re.compile(r"_([a-z0-9])")


def _lsp_name(python_path: str) -> str:
    """`.params.content_changes[0].range` → `params.contentChanges[0].range` (LSP spells fields in camelCase)."""
    return _SNAKE.sub(lambda m: m.group(1).upper(), python_path.lstrip("$").lstrip("."))


def _describe(exc: BaseException, type_: type | None) -> str:
    if isinstance(exc, ValueError) and not isinstance(exc, cattrs.BaseValidationError) and str(exc) \
            and "invalid literal" not in str(exc):
        return str(exc).rstrip(".")  # lsprotocol's range checks name the field and the value
    return cattrs_v.format_exception(exc, type_)


def schema_error(method: str, err: BaseException) -> str:
    """One line naming the first field of a message that does not fit the LSP schema."""
    cause = err.__cause__ or err
    if isinstance(cause, (cattrs.ClassValidationError, cattrs.IterableValidationError)):
        found = cattrs.transform_error(cause, path="", format_exception=_describe)
    else:
        found = [f"{cause}".splitlines()[0] if str(cause) else type(cause).__name__]
    what, _, where = found[0].rpartition(" @ ") if " @ " in found[0] else ("", "", found[0])
    more = f" (and {len(found) - 1} more)" if len(found) > 1 else ""
    field = _lsp_name(where) if what else ""
    return f"{method}: {field + ': ' if field else ''}{what or where}{more}"[:500]


def _normalize_document_uri(data: dict) -> None:
    params = data.get("params")
    doc = params.get("textDocument") if isinstance(params, dict) else None
    if isinstance(doc, dict) and isinstance(doc.get("uri"), str):
        doc["uri"] = normalize_uri(doc["uri"])


class StropProtocol(LanguageServerProtocol):
    """See the module doc."""

    def __init__(self, server, converter) -> None:
        super().__init__(server, converter)
        self._initialized_seen = False

    @property
    def _workspace(self) -> StropWorkspace | None:
        return self.__dict__.get("_strop_workspace")

    @_workspace.setter
    def _workspace(self, workspace) -> None:
        """pygls's `initialize` builds a plain Workspace; serve documents from a StropWorkspace
        (one URI spelling, LSP's lines) built from the same arguments."""
        if workspace is not None and not isinstance(workspace, StropWorkspace):
            workspace = StropWorkspace(workspace.root_uri, workspace._sync_kind, list(workspace.folders.values()),
                                       workspace.position_encoding)
        self.__dict__["_strop_workspace"] = workspace

    # --- arriving messages --------------------------------------------------------------------
    def structure_message(self, data: dict):
        """The typed message for one raw JSON-RPC message (a dict with "jsonrpc": "2.0"), or Rejected."""
        method = data.get("method") or "message"
        try:
            _normalize_document_uri(data)
            return super().structure_message(data)
        except InvalidUri as err:
            self.reject(data, JsonRpcInvalidParams(f"{method}: params.textDocument.uri: {err}"))
        except JsonRpcException as err:
            self.reject(data, JsonRpcInvalidParams(schema_error(method, err)))
        raise Rejected

    def reject(self, data: dict, error: JsonRpcException) -> None:
        """Answer a request with `error`; log anything else once, at debug level, and drop it."""
        if is_request(data):
            self._send_response(message_id(data), None, error.to_response_error())
        else:
            log.debug("ignored %s", error.message)

    def handle_message(self, message) -> None:
        method = getattr(message, "method", None)
        if method is None or method == t.EXIT:  # a response from the client, or exit (pygls)
            super().handle_message(message)
            return
        request = hasattr(message, "id")
        error: JsonRpcException | None = None
        if self._shutdown:
            error = JsonRpcInvalidRequest(f"{method}: the server is shutting down; after `shutdown` only "
                                          "`exit` is accepted.")
        elif self._workspace is None and method != t.INITIALIZE:
            error = JsonRpcServerNotInitialized(f"{method}: the server is not initialized; send `initialize` "
                                                "first.")
        elif self._workspace is not None and method == t.INITIALIZE:
            error = JsonRpcInvalidRequest("initialize: the server is already initialized; LSP allows one "
                                          "`initialize` per connection.")
        elif method == t.INITIALIZED:
            if self._initialized_seen:
                error = JsonRpcInvalidRequest("initialized: already received; ignored.")
            self._initialized_seen = True
        if error is None:
            super().handle_message(message)
        elif request:
            self._send_response(message.id, None, error.to_response_error())
        else:
            log.debug("ignored %s", error.message)

    # --- answers ------------------------------------------------------------------------------
    def _send_response(self, msg_id, result=None, error: t.ResponseError | None = None) -> None:
        if error is not None and isinstance(error.data, dict) and "traceback" in error.data:
            log.error("internal error answering request %s: %s", msg_id, error.message)
            log.debug("traceback:\n%s", "".join(error.data["traceback"]))
            error = t.ResponseError(code=error.code, message=f"strop: internal error: {error.message}. This is "
                                    "a bug in strop; the server keeps running.")
        super()._send_response(msg_id, result, error)
