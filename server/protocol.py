"""strop's additions to LSP: custom notifications, requests and commands (documented in README).

LSP has no events for a completion being shown, dismissed or partly accepted, so strop defines a
small set, keyed by the completion id that every item carries in its accept command.
"""

# Client → server notifications. Params: {"id": str}; partial accept adds
# {"acceptedLength": int}  (UTF-16 code units of the item's insertText that were inserted).
DID_SHOW = "strop/didShowCompletion"
DID_DISMISS = "strop/didDismissCompletion"
DID_PARTIALLY_ACCEPT = "strop/didPartiallyAcceptCompletion"
# Where the user is (LSP tells a server nothing about the cursor until a request). Sent by the
# editor plugins on cursor moves (debounced) and idle moments. Params:
# {"textDocument": {"uri": str}, "position": {"line": int, "character": int}} (negotiated encoding).
# The server evaluates the prompt of that position ahead of the next keystroke (a warm-up).
DID_MOVE_CURSOR = "strop/didMoveCursor"

# Client → server requests.
STATUS = "strop/status"  # → {"state", "model", "modelVersion", "fim", "lastLatencyMs", "enabled",
#                           "modelCalls", "warmups", "warming", "cursor": {"uri", "line", "character"} | None, ...}
STATS = "strop/stats"  # params {"json": true} → the same dict `strop stats --json` prints

# Server → client notification, sent whenever the state, model or last latency changes.
STATUS_CHANGED = "strop/statusChanged"

# workspace/executeCommand commands.
CMD_ACCEPT = "strop.accept"  # arguments: [{"id": str}]; item.command of every completion
CMD_TOGGLE = "strop.toggle"  # arguments: [] or [{"enabled": bool}] → {"enabled": bool}
