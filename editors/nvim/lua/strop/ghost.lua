-- Neovim 0.10/0.11 (or mode = "fallback"): strop asks for and draws the ghost text itself.
-- A keystroke cancels the request in flight; after `debounce_ms` of quiet, one request is sent
-- for the cursor. Typing through a shown suggestion trims it and asks nothing.

local api = vim.api
local client = require("strop.client")
local config = require("strop.config")
local suggestion = require("strop.suggestion")

local M = {}

local METHOD = "textDocument/inlineCompletion"
local TRIGGER_AUTOMATIC = 2 -- lsp.InlineCompletionTriggerKind.Automatic

M.namespace = api.nvim_create_namespace("strop.ghost")
api.nvim_set_hl(0, "StropSuggestion", { link = "Comment", default = true })

---@class strop.GhostBuffer
---@field client_id integer
---@field timer uv.uv_timer_t  debounce timer
---@field request_id integer|nil the request in flight
---@field generation integer   bumped by every keystroke; answers from an older one are dropped

---@type table<integer, strop.GhostBuffer>
local buffers = {}

local has_011 = vim.fn.has("nvim-0.11") == 1

--- Byte column of an LSP `character` in `line`.
local function byte_col(line, character, encoding)
  if encoding == "utf-8" then
    return math.min(character, #line)
  end
  local ok, col
  if has_011 then
    ok, col = pcall(vim.str_byteindex, line, encoding, character, false)
  else
    ok, col = pcall(vim.str_byteindex, line, character, encoding == "utf-16")
  end
  return ok and col or #line
end

local function in_insert_mode()
  return api.nvim_get_mode().mode:sub(1, 1) == "i"
end

local function clear(bufnr)
  api.nvim_buf_clear_namespace(bufnr, M.namespace, 0, -1)
end

--- Draws `text` at the cursor: its first line inline, the others as virtual lines below.
local function render(bufnr, text)
  clear(bufnr)
  local pos = api.nvim_win_get_cursor(0)
  local lines = vim.split(text, "\n", { plain = true })
  local virt_lines = {}
  for i = 2, #lines do
    table.insert(virt_lines, { { lines[i], "StropSuggestion" } })
  end
  api.nvim_buf_set_extmark(bufnr, M.namespace, pos[1] - 1, pos[2], {
    virt_text = { { lines[1], "StropSuggestion" } },
    virt_text_pos = "inline",
    virt_lines = #virt_lines > 0 and virt_lines or nil,
    hl_mode = "combine",
  })
end

local function cancel(bufnr)
  local b = buffers[bufnr]
  b.generation = b.generation + 1
  b.timer:stop()
  if b.request_id then
    client.cancel(b.client_id, b.request_id)
    b.request_id = nil
  end
end

local function on_answer(bufnr, generation, encoding)
  return function(err, result)
    local b = buffers[bufnr]
    if not b or b.generation ~= generation or api.nvim_get_current_buf() ~= bufnr or not in_insert_mode() then
      return
    end
    b.request_id = nil
    if err or type(result) ~= "table" then
      return
    end
    local item = (result.items or result)[1]
    if not item or type(item.insertText) ~= "string" then
      return
    end
    local start_row, start_col
    if item.range then
      start_row = item.range.start.line
      local line = api.nvim_buf_get_lines(bufnr, start_row, start_row + 1, false)[1] or ""
      start_col = byte_col(line, item.range.start.character, encoding)
    end
    local s = suggestion.from_item(bufnr, b.client_id, item.insertText, start_row, start_col, item.command)
    if s and s.text ~= "" then
      suggestion.show(bufnr, s)
      render(bufnr, s.text)
    end
  end
end

local function request(bufnr)
  local b = buffers[bufnr]
  local c = b and client.by_id(b.client_id)
  if not c or api.nvim_get_current_buf() ~= bufnr or not in_insert_mode() then
    return
  end
  local params = vim.lsp.util.make_position_params(0, c.offset_encoding)
  params.context = { triggerKind = TRIGGER_AUTOMATIC }
  local _, request_id = client.request(b.client_id, METHOD, params, on_answer(bufnr, b.generation, c.offset_encoding), bufnr)
  b.request_id = request_id
end

local function on_keystroke(bufnr)
  local rest = suggestion.check(bufnr) -- dismisses a suggestion the keystroke contradicts
  if rest then
    render(bufnr, rest)
    return
  end
  clear(bufnr)
  cancel(bufnr)
  local generation = buffers[bufnr].generation
  buffers[bufnr].timer:start(config.get().debounce_ms, 0, vim.schedule_wrap(function()
    local b = buffers[bufnr]
    if b and b.generation == generation then
      request(bufnr)
    end
  end))
end

local function leave(bufnr)
  cancel(bufnr)
  clear(bufnr)
  suggestion.dismiss(bufnr)
end

local function detach(bufnr, group)
  local b = buffers[bufnr]
  if not b then
    return
  end
  cancel(bufnr)
  b.timer:close()
  buffers[bufnr] = nil
  suggestion.forget(bufnr)
  if api.nvim_buf_is_valid(bufnr) then
    clear(bufnr)
  end
  pcall(api.nvim_del_augroup_by_id, group)
end

---@param c vim.lsp.Client
---@param bufnr integer
function M.attach(c, bufnr)
  if buffers[bufnr] then
    buffers[bufnr].client_id = c.id
    return
  end
  buffers[bufnr] = { client_id = c.id, timer = assert(vim.uv.new_timer()), generation = 0 }
  local group = api.nvim_create_augroup("strop.ghost." .. bufnr, { clear = true })
  api.nvim_create_autocmd({ "InsertEnter", "TextChangedI", "CursorMovedI" }, {
    group = group,
    buffer = bufnr,
    callback = function()
      on_keystroke(bufnr)
    end,
  })
  api.nvim_create_autocmd({ "InsertLeave", "BufLeave" }, {
    group = group,
    buffer = bufnr,
    callback = function()
      leave(bufnr)
    end,
  })
  api.nvim_create_autocmd("LspDetach", {
    group = group,
    buffer = bufnr,
    callback = function(args)
      if args.data.client_id == c.id then
        detach(bufnr, group)
      end
    end,
  })
  api.nvim_create_autocmd("BufWipeout", {
    group = group,
    buffer = bufnr,
    callback = function()
      detach(bufnr, group)
    end,
  })
end

--- Whether ghost text is on screen in `bufnr`.
function M.visible(bufnr)
  return #api.nvim_buf_get_extmarks(bufnr, M.namespace, 0, -1, { limit = 1 }) > 0
end

--- Accepts the shown suggestion, or its next word or line. Usable from an expr mapping.
---@param part "all"|"word"|"line"
---@return boolean accepted false when nothing is shown
function M.accept(bufnr, part)
  local rest = suggestion.remaining(bufnr)
  if not rest or rest == "" then
    return false
  end
  -- Expr mappings may not edit the buffer (textlock); insert right after.
  vim.schedule(function()
    clear(bufnr)
    suggestion.apply(bufnr, part)
  end)
  return true
end

--- Hides the shown suggestion and reports it dismissed.
---@return boolean dismissed false when nothing is shown
function M.dismiss(bufnr)
  if not suggestion.current(bufnr) then
    return false
  end
  leave(bufnr)
  return true
end

return M
