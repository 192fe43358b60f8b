-- The suggestion shown in each buffer: where it is anchored, what it still adds, and what the
-- user's keys make of it (typed through, contradicted, accepted whole or a word/line at a time).
-- Both display paths (inline.lua, ghost.lua) share this, so the events mean the same on both.

local api = vim.api
local events = require("strop.events")

local M = {}

---@class strop.Suggestion
---@field client_id integer
---@field id string            completion id (from the item's accept command)
---@field command lsp.Command  the item's accept command
---@field row integer          anchor: 0-based row of the cursor when it was shown
---@field col integer          anchor: 0-based byte column of the cursor when it was shown
---@field text string          what the suggestion adds at the anchor
---@field offset_utf16 integer UTF-16 units of insertText already in the buffer at the anchor (range start..cursor)

---@type table<integer, strop.Suggestion>
local shown = {}

local function window_of(bufnr)
  if api.nvim_get_current_buf() == bufnr then
    return api.nvim_get_current_win()
  end
  local win = vim.fn.bufwinid(bufnr)
  return win ~= -1 and win or nil
end

---@return integer|nil row, integer|nil col  0-based row, byte column
local function cursor(bufnr)
  local win = window_of(bufnr)
  if not win then
    return nil, nil
  end
  local pos = api.nvim_win_get_cursor(win)
  return pos[1] - 1, pos[2]
end

--- Buffer text from (r1, c1) to (r2, c2), or nil when the second position is before the first.
local function text_between(bufnr, r1, c1, r2, c2)
  if r2 < r1 or (r2 == r1 and c2 < c1) then
    return nil
  end
  local ok, lines = pcall(api.nvim_buf_get_text, bufnr, r1, c1, r2, c2, {})
  return ok and table.concat(lines, "\n") or nil
end

--- A suggestion for an item whose insertText replaces the buffer from (start_row, start_col)
--- (nil: from the cursor) to the cursor; nil when the item is not strop's or the buffer
--- between its start and the cursor is not the start of its text.
---@return strop.Suggestion|nil
function M.from_item(bufnr, client_id, insert_text, start_row, start_col, command)
  local id = events.completion_id(command)
  local row, col = cursor(bufnr)
  if not id or not row then
    return nil
  end
  local before = text_between(bufnr, start_row or row, start_col or col, row, col)
  if not before or insert_text:sub(1, #before) ~= before then
    return nil
  end
  return {
    client_id = client_id,
    id = id,
    command = command,
    row = row,
    col = col,
    text = insert_text:sub(#before + 1),
    offset_utf16 = events.utf16_len(before),
  }
end

---@param bufnr integer
---@return strop.Suggestion|nil
function M.current(bufnr)
  return shown[bufnr]
end

--- Records `s` as on screen; the server hears about each id once.
---@param s strop.Suggestion
function M.show(bufnr, s)
  local previous = shown[bufnr]
  shown[bufnr] = s
  if not previous or previous.id ~= s.id then
    events.shown(s.client_id, s.id)
  end
end

--- What the shown suggestion still adds at the cursor: "" once typed through to its end,
--- nil when nothing is shown or the text since the anchor is not the suggestion's start.
---@return string|nil
function M.remaining(bufnr)
  local s = shown[bufnr]
  local row, col = cursor(bufnr)
  if not s or not row then
    return nil
  end
  local typed = text_between(bufnr, s.row, s.col, row, col)
  if not typed or s.text:sub(1, #typed) ~= typed then
    return nil
  end
  return s.text:sub(#typed + 1)
end

--- The user rejected the suggestion (Esc, moved away, typed something else).
function M.dismiss(bufnr)
  local s = shown[bufnr]
  shown[bufnr] = nil
  if s then
    events.dismissed(s.client_id, s.id)
  end
end

--- The suggestion left the screen without a verdict (replaced by a newer answer): the server
--- already knows it was superseded.
function M.forget(bufnr)
  shown[bufnr] = nil
end

--- After a keystroke or cursor move: the text still to come, or nil. A suggestion the keys
--- contradict is dismissed; one typed through to its end is forgotten.
---@return string|nil
function M.check(bufnr)
  if not shown[bufnr] then
    return nil
  end
  local rest = M.remaining(bufnr)
  if rest == nil then
    M.dismiss(bufnr)
  elseif rest == "" then
    M.forget(bufnr)
    return nil
  end
  return rest
end

--- The part of `rest` taken by accepting "all", the next "word" or the rest of the "line".
---@param rest string
---@param part "all"|"word"|"line"
---@return string
function M.slice(rest, part)
  if part == "word" then
    return rest:match("^%s*[%w_]+") or rest:match("^%s*[^%w_%s]+") or rest
  elseif part == "line" then
    -- A suggestion that starts a new line takes that whole next line.
    local newline = rest:find("\n", rest:sub(1, 1) == "\n" and 2 or 1, true)
    return newline and rest:sub(1, newline - 1) or rest
  end
  return rest
end

--- Inserts the suggestion ("all") or its next word/line at the cursor and tells the server:
--- the whole rest runs the accept command, a part sends didPartiallyAcceptCompletion.
--- Edits the buffer, so it cannot run under textlock (schedule it from expr mappings).
---@param part "all"|"word"|"line"
---@return boolean applied
function M.apply(bufnr, part)
  local s = shown[bufnr]
  local rest = M.remaining(bufnr)
  local row, col = cursor(bufnr)
  if not s or not rest or rest == "" or not row then
    return false
  end
  local text = M.slice(rest, part)
  local lines = vim.split(text, "\n", { plain = true })
  api.nvim_buf_set_text(bufnr, row, col, row, col, lines)
  local end_row = row + #lines - 1
  local end_col = (#lines == 1 and col or 0) + #lines[#lines]
  api.nvim_win_set_cursor(assert(window_of(bufnr)), { end_row + 1, end_col })
  if text == rest then
    shown[bufnr] = nil
    events.accepted(s.client_id, s.command, bufnr)
  else
    local consumed = s.text:sub(1, #s.text - #rest + #text)
    events.partially_accepted(s.client_id, s.id, s.offset_utf16 + events.utf16_len(consumed))
  end
  return true
end

return M
