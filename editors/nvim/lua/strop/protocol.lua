-- strop's additions to LSP, mirroring server/protocol.py (tests/e2e/test_nvim.py checks they agree).

return {
  -- Client → server notifications, params {id}; partial accept adds {acceptedLength} (UTF-16 units).
  DID_SHOW = "strop/didShowCompletion",
  DID_DISMISS = "strop/didDismissCompletion",
  DID_PARTIALLY_ACCEPT = "strop/didPartiallyAcceptCompletion",
  -- Where the cursor is, params {textDocument = {uri}, position = {line, character}} (offset encoding).
  DID_MOVE_CURSOR = "strop/didMoveCursor",
  -- Client → server requests.
  STATUS = "strop/status",
  STATS = "strop/stats",
  -- Server → client notification, same shape as the strop/status result.
  STATUS_CHANGED = "strop/statusChanged",
  -- workspace/executeCommand commands.
  CMD_ACCEPT = "strop.accept",
  CMD_TOGGLE = "strop.toggle",
}
