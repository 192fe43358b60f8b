-- What each strop server last said about itself (strop/status, strop/statusChanged): kept for the
-- statusline and the health check; errors become one notification per distinct message.

local M = {}

---@class strop.Status
---@field state "idle"|"working"|"error"|"disabled"
---@field model string
---@field modelVersion string
---@field fim string|nil
---@field lastLatencyMs number|nil
---@field enabled boolean
---@field message string|nil

---@type table<integer, strop.Status>
local by_client = {}
---@type table<integer, string>
local notified_error = {}

local function nil_if_null(v)
  if v == vim.NIL then
    return nil
  end
  return v
end

---@param client_id integer
---@param status table as sent by the server
function M.set(client_id, status)
  for key, value in pairs(status) do
    status[key] = nil_if_null(value)
  end
  by_client[client_id] = status
  if status.state == "error" and status.message and status.message ~= notified_error[client_id] then
    notified_error[client_id] = status.message
    vim.notify("strop: " .. status.message, vim.log.levels.ERROR)
  elseif status.state ~= "error" then
    notified_error[client_id] = nil
  end
  pcall(vim.cmd.redrawstatus)
  vim.api.nvim_exec_autocmds("User", { pattern = "StropStatus", modeline = false, data = status })
end

--- Handler for the server's strop/statusChanged notification.
function M.on_status_changed(err, result, ctx)
  if not err and type(result) == "table" then
    M.set(ctx.client_id, result)
  end
end

---@param client_id integer
---@return strop.Status|nil
function M.get(client_id)
  return by_client[client_id]
end

function M.forget(client_id)
  by_client[client_id] = nil
  notified_error[client_id] = nil
end

--- A short text for a statusline: "strop: idle 85ms", "strop: off", "strop: error", ...
---@param status strop.Status|nil
---@return string
function M.format(status)
  if not status then
    return "strop: starting"
  end
  if status.enabled == false or status.state == "disabled" then
    return "strop: off"
  end
  if status.state == "idle" and status.lastLatencyMs then
    return ("strop: idle %dms"):format(math.floor(status.lastLatencyMs + 0.5))
  end
  return "strop: " .. (status.state or "starting")
end

return M
