-- Neovim 0.12+: the built-in LSP inline completion (vim.lsp.inline_completion) requests, renders
-- and accepts strop's items. This module adds what it lacks: the shown/dismissed events and
-- word/line accepts.

local api = vim.api
local suggestion = require("strop.suggestion")

local M = {}

local METHOD = "textDocument/inlineCompletion"
local NAMESPACE = "nvim.lsp.inline_completion" -- where the built-in client puts its ghost text

-- Neovim 0.12 has no event or getter for the item it shows: it lives in the private
-- `Completor.current` of runtime/lua/vim/lsp/inline_completion.lua (the upstream discussion of
-- a rendering API is neovim/neovim#37288). strop reads it here and nowhere else; should a later
-- Neovim move it, this returns nil and only the accept events (the item's command) remain.
local function completor(bufnr)
  local ok, capability = pcall(function()
    return vim.lsp._capability.all.inline_completion.active[bufnr]
  end)
  return ok and capability or nil
end

--- Whether ghost text is on screen in `bufnr`.
function M.visible(bufnr)
  local ns = api.nvim_get_namespaces()[NAMESPACE]
  return ns ~= nil and #api.nvim_buf_get_extmarks(bufnr, ns, 0, -1, { limit = 1 }) > 0
end

-- After each answer from strop: record what the built-in client now shows.
local function sync(bufnr, client_id)
  if not api.nvim_buf_is_valid(bufnr) then
    return
  end
  local c = completor(bufnr)
  local item = c and c.current
  if not item or item.client_id ~= client_id or type(item.insert_text) ~= "string" or not M.visible(bufnr) then
    suggestion.forget(bufnr)
    return
  end
  local start = item.range and item.range.start
  local s = suggestion.from_item(bufnr, client_id, item.insert_text, start and start.row, start and start.col, item.command)
  if s and s.text ~= "" then
    suggestion.show(bufnr, s)
  else
    suggestion.forget(bufnr)
  end
end

---@param client vim.lsp.Client
---@param bufnr integer
function M.attach(client, bufnr)
  -- The capability attaches to a buffer only while enabled for it; enabling for the client
  -- covers the buffers attached so far, so repeat it once this buffer has joined (LspAttach runs
  -- before that, hence the schedule).
  vim.schedule(function()
    vim.lsp.inline_completion.enable(true, { client_id = client.id })
  end)
  local group = api.nvim_create_augroup("strop.inline." .. bufnr, { clear = true })
  api.nvim_create_autocmd("LspRequest", {
    group = group,
    buffer = bufnr,
    callback = function(args)
      local request = args.data.request
      if args.data.client_id == client.id and request.method == METHOD and request.type == "complete" then
        -- This fires just before the response handler runs (both are scheduled, in this order);
        -- look at the result after it.
        vim.schedule(function()
          sync(bufnr, client.id)
        end)
      end
    end,
  })
  api.nvim_create_autocmd({ "TextChangedI", "CursorMovedI" }, {
    group = group,
    buffer = bufnr,
    callback = function()
      suggestion.check(bufnr)
    end,
  })
  api.nvim_create_autocmd({ "InsertLeave", "BufLeave" }, {
    group = group,
    buffer = bufnr,
    callback = function()
      suggestion.dismiss(bufnr)
    end,
  })
  api.nvim_create_autocmd("LspDetach", {
    group = group,
    buffer = bufnr,
    callback = function(args)
      if args.data.client_id == client.id then
        suggestion.forget(bufnr)
        api.nvim_del_augroup_by_id(group)
      end
    end,
  })
end

--- Accepts the shown suggestion, or its next word or line. Usable from an expr mapping.
---@param part "all"|"word"|"line"
---@return boolean accepted false when nothing is shown
function M.accept(bufnr, part)
  if suggestion.remaining(bufnr) then
    -- strop inserts at the cursor itself: the built-in accept replaces the item's range as it
    -- was at request time, which duplicates whatever was typed through since.
    return vim.lsp.inline_completion.get({
      bufnr = bufnr,
      on_accept = function()
        suggestion.apply(bufnr, part)
        if part ~= "all" then
          -- The built-in client has hidden the rest; its next answer shows what follows.
          suggestion.forget(bufnr)
        end
      end,
    })
  end
  -- Another server's item: the built-in accept.
  return part == "all" and vim.lsp.inline_completion.get({ bufnr = bufnr })
end

--- Hides the shown suggestion and reports it dismissed.
---@return boolean dismissed false when nothing is shown
function M.dismiss(bufnr)
  local c = completor(bufnr)
  if not (c and c.current and type(c.abort) == "function") then
    return false
  end
  suggestion.dismiss(bufnr)
  c:abort()
  return true
end

return M
