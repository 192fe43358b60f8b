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


def field(params, key: str):
    """`params[key]`, or None: pygls hands the params of methods outside LSP over as nested
    namedtuples (or dicts), whatever the client sent (a list, a string, nothing)."""
    if isinstance(params, dict):
        return params.get(key)
    return getattr(params, key, None) if isinstance(params, tuple) else None


def completion_id(method: str, params) -> str | None:
    """The completion id of one of strop's notifications, or None (logged) when it has none."""
    cid = field(params, "id")
    if isinstance(cid, str) and cid:
        return cid
    log.debug("ignored %s without a string id: %.200r", method, params)
    return None


def uinteger(value) -> bool:
    """An LSP uinteger: an int (not a bool) in 0 .. 2**31 - 1."""
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**31
