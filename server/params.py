"""Checks of what strop's own methods receive (their params are not in the LSP schema): a wrong
argument of a request is InvalidParams naming the field; a notification without what it needs is
dropped and logged at debug level."""

from __future__ import annotations

import logging

from pygls.exceptions import JsonRpcInvalidParams

log = logging.getLogger(__name__)


def command_arg(command: str, args: tuple, key: str, kind: type, shape: str):
    """`args[0][key]` of a workspace/executeCommand call, or None when absent; InvalidParams naming
    the field when it is there with another type."""
    if not args:
        return None
    if not isinstance(args[0], dict):
        raise JsonRpcInvalidParams(f"{command}: arguments[0] must be an object {shape}, got {args[0]!r:.80}.")
    value = args[0].get(key)
    if value is not None and (not isinstance(value, kind) or (kind is not bool and isinstance(value, bool))):
        wanted = "true or false" if kind is bool else f"a {kind.__name__}"
        raise JsonRpcInvalidParams(f"{command}: arguments[0].{key} must be {wanted}, got {value!r:.80}.")
    return value


def completion_id(method: str, params) -> str | None:
    """The completion id of one of strop's notifications, or None (logged) when it has none."""
    cid = params.get("id") if isinstance(params, dict) else getattr(params, "id", None)
    if isinstance(cid, str) and cid:
        return cid
    log.debug("ignored %s without a string id: %.200r", method, params)
    return None
