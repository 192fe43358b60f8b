-- strop for Neovim: code completion from a local model that learns the repository, over LSP.
-- `require("strop").setup(opts)` (options: lua/strop/config.lua, `:help strop-config`).

local client = require("strop.client")
local config = require("strop.config")
local cursor = require("strop.cursor")
local status = require("strop.status")
local suggestion = require("strop.suggestion")

local M = {}

local configured = false

--- The display path for this Neovim and these options: inline.lua (native) or ghost.lua.
local function display()
  return config.path() == "native" and require("strop.inline") or require("strop.ghost")
end

-- Insert-mode keys in buffers strop is attached to; each types its own key when nothing is shown.
local function map_keys(bufnr)
  local keys = config.get().keymaps
  local function map(lhs, desc, action)
    if not lhs then
      return
    end
    vim.keymap.set("i", lhs, function()
      if action(bufnr) then
        return ""
      end
      return lhs
    end, { buffer = bufnr, expr = true, replace_keycodes = true, silent = true, desc = desc })
  end
  map(keys.accept, "strop: accept the suggestion", function(b)
    return display().accept(b, "all")
  end)
  map(keys.accept_word, "strop: accept the next word of the suggestion", function(b)
    return display().accept(b, "word")
  end)
  map(keys.accept_line, "strop: accept the rest of the line of the suggestion", function(b)
    return display().accept(b, "line")
  end)
  map(keys.dismiss, "strop: dismiss the suggestion", function(b)
    return display().dismiss(b)
  end)
end

local function on_attach(c, bufnr)
  display().attach(c, bufnr)
  cursor.attach(c, bufnr)
  map_keys(bufnr)
end

--- Configures strop and (with `auto_start`, the default) starts its server for matching buffers.
---@param opts table|nil see lua/strop/config.lua
function M.setup(opts)
  config.setup(opts)
  configured = true
  client.setup(on_attach)
end

--- Starts the server for matching buffers (what `auto_start` does at setup).
---@return boolean started
function M.start()
  if not configured then
    M.setup({ auto_start = false })
  end
  return client.start()
end

--- Accepts the shown suggestion ("all", default) or its next "word"/"line".
---@param part "all"|"word"|"line"|nil
---@return boolean accepted
function M.accept(part)
  return display().accept(vim.api.nvim_get_current_buf(), part or "all")
end

---@return boolean dismissed
function M.dismiss()
  return display().dismiss(vim.api.nvim_get_current_buf())
end

--- The suggestion on screen in a buffer: { id = completion id, text = what it still adds }, or nil.
---@param bufnr integer|nil default: current
---@return { id: string, text: string }|nil
function M.suggestion(bufnr)
  bufnr = (bufnr == nil or bufnr == 0) and vim.api.nvim_get_current_buf() or bufnr
  local s = suggestion.current(bufnr)
  if not s or not display().visible(bufnr) then
    return nil
  end
  return { id = s.id, text = suggestion.remaining(bufnr) or s.text }
end

--- What the server of a buffer last reported (strop/statusChanged), or nil.
---@param bufnr integer|nil default: current
---@return strop.Status|nil
function M.status(bufnr)
  local c = client.get(bufnr or 0)
  return c and status.get(c.id) or nil
end

--- A statusline component: "" where strop is not attached, else e.g. "strop: idle 85ms".
---@return string
function M.statusline()
  local c = client.get(0)
  if not c then
    return ""
  end
  return status.format(status.get(c.id))
end

return M
