-- strop's completion events, sent to the server keyed by the completion id.
-- LSP has no "shown"/"dismissed"/"partially accepted" events; strop defines three notifications
-- (server/protocol.py). Acceptance is the item's own command (`strop.accept`), run through
-- workspace/executeCommand, so a plain LSP client reports it too.

local client = require("strop.client")
local protocol = require("strop.protocol")

local M = {}

--- The completion id carried by an item's accept command, or nil for foreign items.
---@param command lsp.Command|nil
---@return string|nil
function M.completion_id(command)
  if type(command) ~= "table" or command.command ~= protocol.CMD_ACCEPT then
    return nil
  end
  local arg = type(command.arguments) == "table" and command.arguments[1] or nil
  return type(arg) == "table" and type(arg.id) == "string" and arg.id or nil
end

--- Length of `text` in UTF-16 code units (the unit of `acceptedLength`).
---@param text string
---@return integer
function M.utf16_len(text)
  if vim.fn.has("nvim-0.11") == 1 then
    return vim.str_utfindex(text, "utf-16")
  end
  local _, utf16 = vim.str_utfindex(text)
  return utf16
end

---@param client_id integer
---@param id string
function M.shown(client_id, id)
  client.notify(client_id, protocol.DID_SHOW, { id = id })
end

---@param client_id integer
---@param id string
function M.dismissed(client_id, id)
  client.notify(client_id, protocol.DID_DISMISS, { id = id })
end

---@param client_id integer
---@param id string
---@param accepted_utf16 integer UTF-16 code units of the item's insertText now in the buffer
function M.partially_accepted(client_id, id, accepted_utf16)
  client.notify(client_id, protocol.DID_PARTIALLY_ACCEPT, { id = id, acceptedLength = accepted_utf16 })
end

--- Runs the item's accept command on the server, which records the accept.
---@param client_id integer
---@param command lsp.Command
---@param bufnr integer
function M.accepted(client_id, command, bufnr)
  client.execute(client_id, command.command, command.arguments, bufnr)
end

return M
