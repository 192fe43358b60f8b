-- What the user commands do (:StropStats, :StropToggle, :StropDistill, :StropLog).

local api = vim.api
local client = require("strop.client")
local config = require("strop.config")
local protocol = require("strop.protocol")
local status = require("strop.status")

local M = {}

local function notify(msg, level)
  vim.notify("strop: " .. msg, level or vim.log.levels.INFO)
end

--- A read-only scratch buffer in a floating window; `q` closes it.
---@param title string
---@param lines string[]
---@return integer bufnr
function M.show_lines(title, lines)
  local buf = api.nvim_create_buf(false, true)
  api.nvim_buf_set_lines(buf, 0, -1, false, lines)
  vim.bo[buf].modifiable = false
  vim.bo[buf].bufhidden = "wipe"
  local width = #title + 4
  for _, line in ipairs(lines) do
    width = math.max(width, vim.fn.strdisplaywidth(line) + 2)
  end
  width = math.min(width, vim.o.columns - 4)
  local height = math.max(1, math.min(#lines, vim.o.lines - 6))
  api.nvim_open_win(buf, true, {
    relative = "editor",
    width = width,
    height = height,
    row = math.floor((vim.o.lines - height) / 2) - 1,
    col = math.floor((vim.o.columns - width) / 2),
    style = "minimal",
    border = "rounded",
    title = " " .. title .. " ",
    title_pos = "center",
  })
  vim.keymap.set("n", "q", "<Cmd>close<CR>", { buffer = buf, nowait = true })
  return buf
end

--- Nested tables as indented "key: value" lines, keys sorted.
---@return string[]
function M.format_table(value, indent, out)
  indent = indent or ""
  out = out or {}
  local keys = vim.tbl_keys(value)
  table.sort(keys, function(a, b)
    return tostring(a) < tostring(b)
  end)
  for _, key in ipairs(keys) do
    local v = value[key]
    if type(v) == "table" and not vim.islist(v) then
      table.insert(out, ("%s%s:"):format(indent, key))
      M.format_table(v, indent .. "  ", out)
    elseif type(v) == "table" then
      table.insert(out, ("%s%s: %s"):format(indent, key, table.concat(vim.tbl_map(vim.inspect, v), ", ")))
    else
      table.insert(out, ("%s%s: %s"):format(indent, key, v == vim.NIL and "-" or tostring(v)))
    end
  end
  return out
end

local function current_client()
  local c = client.get(0) or client.get()
  if not c then
    notify("the server is not running here; open a file of an enabled filetype, or :StropStart", vim.log.levels.WARN)
  end
  return c
end

--- :StropStats — the server's acceptance statistics in a floating window.
function M.stats()
  local c = current_client()
  if not c then
    return
  end
  client.request(c.id, protocol.STATS, { json = true }, function(err, result)
    if err then
      notify("strop/stats failed: " .. err.message, vim.log.levels.ERROR)
      return
    end
    M.show_lines("strop stats", M.format_table(result or {}))
  end, 0)
end

--- :StropToggle [on|off] — completions on or off in every strop server (default: flip).
---@param arg string|nil "on", "off" or ""
function M.toggle(arg)
  local c = current_client()
  if not c then
    return
  end
  local enabled
  if arg == "on" or arg == "off" then
    enabled = arg == "on"
  else
    local st = status.get(c.id)
    local currently_on = st == nil or st.enabled ~= false
    enabled = not currently_on
  end
  for _, each in ipairs(vim.lsp.get_clients({ name = client.NAME })) do
    client.execute(each.id, protocol.CMD_TOGGLE, { { enabled = enabled } }, 0, function(err, result)
      if err or type(result) ~= "table" then
        notify("strop.toggle failed: " .. (err and err.message or "no answer"), vim.log.levels.ERROR)
        return
      end
      -- Keep the next flip right even before the server's strop/statusChanged arrives.
      status.set(each.id, vim.tbl_extend("force", status.get(each.id) or {}, { enabled = result.enabled }))
      if each.id == c.id then
        notify("completions " .. (result.enabled and "on" or "off"))
      end
    end)
  end
end

local distill_job ---@type vim.SystemObj|nil

--- :StropDistill — one distillation cycle for the current workspace, as a background job;
--- its progress (stderr) arrives as notifications, at most one every 2 s.
function M.distill()
  if distill_job then
    notify("a distillation is already running", vim.log.levels.WARN)
    return
  end
  local root = client.root_dir(api.nvim_get_current_buf())
  local cmd = vim.list_extend(config.cli_cmd(), { "distill", "--once", "--repo", root })
  if vim.fn.executable(cmd[1]) == 0 then
    notify(("cannot run %q: not an executable on PATH (set `cli` or `cmd` in setup)"):format(cmd[1]), vim.log.levels.ERROR)
    return
  end
  notify("distilling " .. root .. " (this takes a while; progress follows)")
  local last_line, last_notified_ms = nil, 0
  local ok, job = pcall(vim.system, cmd, {
    env = config.env(),
    text = true,
    stderr = function(_, data)
      for line in (data or ""):gmatch("[^\r\n]+") do
        last_line = line
      end
      local now_ms = vim.uv.now()
      if last_line and now_ms - last_notified_ms >= 2000 then
        last_notified_ms = now_ms
        local line = last_line
        vim.schedule(function()
          notify("distill: " .. line)
        end)
      end
    end,
  }, function(done)
    vim.schedule(function()
      distill_job = nil
      if done.code == 0 then
        notify("distillation finished" .. (last_line and (": " .. last_line) or ""))
      else
        notify(("distillation failed (exit code %d): %s"):format(done.code, last_line or "no output"), vim.log.levels.ERROR)
      end
    end)
  end)
  if not ok then
    notify("cannot start `strop distill`: " .. tostring(job), vim.log.levels.ERROR)
    return
  end
  distill_job = job
end

--- :StropLog [N] — the N (default 50) most recent completions, from `strop log`.
---@param limit integer|nil
function M.log(limit)
  local cmd = vim.list_extend(config.cli_cmd(), { "log", "--limit", tostring(limit or 50) })
  local ok, err = pcall(vim.system, cmd, { env = config.env(), text = true }, function(done)
    vim.schedule(function()
      if done.code ~= 0 then
        notify(("`strop log` failed (exit code %d): %s"):format(done.code, vim.trim(done.stderr or "")), vim.log.levels.ERROR)
        return
      end
      M.show_lines("strop log", vim.split(vim.trim(done.stdout or ""), "\n", { plain = true }))
    end)
  end)
  if not ok then
    notify("cannot run `strop log`: " .. tostring(err), vim.log.levels.ERROR)
  end
end

return M
