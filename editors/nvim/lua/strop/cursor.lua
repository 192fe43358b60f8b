-- strop/didMoveCursor: where the cursor is. LSP tells a server nothing about the cursor until a
-- request; with this the server evaluates the prompt there before the next keystroke asks.
-- Sent `cursor_debounce_ms` after the cursor last moved (normal and insert mode) or a buffer,
-- window or Neovim itself was entered, and at once on CursorHold(I); only in buffers strop is
-- attached to, only while completions are on, and never the same place twice in a row.

local api = vim.api
local client = require("strop.client")
local config = require("strop.config")
local protocol = require("strop.protocol")
local status = require("strop.status")

local M = {}

---@class strop.CursorBuffer
---@field client_id integer
---@field timer uv.uv_timer_t debounce timer

---@type table<integer, strop.CursorBuffer>
local buffers = {}
---@type table<integer, string> client id → the last position sent to it ("uri line:character")
local last_sent = {}

local group ---@type integer|nil

--- Tells the server of `bufnr` where the cursor is, if it is in `bufnr` and somewhere new.
local function report(bufnr)
  local b = buffers[bufnr]
  local c = b and client.by_id(b.client_id)
  local st = c and status.get(c.id)
  if not c or (st and st.enabled == false) or api.nvim_get_current_buf() ~= bufnr then
    return
  end
  local params = vim.lsp.util.make_position_params(0, c.offset_encoding)
  local key = ("%s %d:%d"):format(params.textDocument.uri, params.position.line, params.position.character)
  if last_sent[c.id] ~= key and client.notify(c.id, protocol.DID_MOVE_CURSOR, params) then
    last_sent[c.id] = key
  end
end

--- Reports the cursor of the current buffer after the debounce (restarted by every call).
local function schedule()
  local bufnr = api.nvim_get_current_buf()
  local b = buffers[bufnr]
  if not b then
    return
  end
  b.timer:stop()
  b.timer:start(config.get().cursor_debounce_ms, 0, vim.schedule_wrap(function()
    report(bufnr)
  end))
end

--- An idle moment: report now.
local function report_now()
  local bufnr = api.nvim_get_current_buf()
  if buffers[bufnr] then
    buffers[bufnr].timer:stop()
    report(bufnr)
  end
end

local function detach(bufnr)
  local b = buffers[bufnr]
  if b then
    buffers[bufnr] = nil
    b.timer:stop()
    b.timer:close()
  end
end

local function create_autocmds()
  group = api.nvim_create_augroup("strop.cursor", { clear = true })
  api.nvim_create_autocmd({ "CursorMoved", "CursorMovedI", "BufEnter", "WinEnter", "FocusGained" }, {
    group = group,
    callback = schedule,
  })
  api.nvim_create_autocmd({ "CursorHold", "CursorHoldI" }, { group = group, callback = report_now })
  api.nvim_create_autocmd("LspDetach", {
    group = group,
    callback = function(args)
      local b = buffers[args.buf]
      if b and b.client_id == args.data.client_id then
        detach(args.buf)
      end
    end,
  })
  api.nvim_create_autocmd("BufUnload", {
    group = group,
    callback = function(args)
      detach(args.buf)
    end,
  })
end

---@param c vim.lsp.Client
---@param bufnr integer
function M.attach(c, bufnr)
  if not group then
    create_autocmds()
  end
  if buffers[bufnr] then
    buffers[bufnr].client_id = c.id
  else
    buffers[bufnr] = { client_id = c.id, timer = assert(vim.uv.new_timer()) }
  end
  -- The buffer may have been entered before the server attached to it.
  if bufnr == api.nvim_get_current_buf() then
    schedule()
  end
end

return M
