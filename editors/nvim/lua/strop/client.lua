-- Starts strop's language server for matching buffers, and wraps the client calls whose form
-- differs between Neovim 0.10 (closures: `client.request(...)`) and 0.11+ (methods: `client:request(...)`).

local config = require("strop.config")
local protocol = require("strop.protocol")
local status = require("strop.status")

local M = {}

M.NAME = "strop"

local api = vim.api
local has_011 = vim.fn.has("nvim-0.11") == 1

---@type fun(client: vim.lsp.Client, bufnr: integer)
local on_attach_cb = function() end

local function call(c, method, ...)
  if has_011 then
    return c[method](c, ...)
  end
  return c[method](...)
end

---@param client_id integer
---@return vim.lsp.Client|nil
function M.by_id(client_id)
  return vim.lsp.get_client_by_id(client_id)
end

--- strop's client attached to `bufnr`, or (bufnr nil) any running strop client.
---@param bufnr integer|nil
---@return vim.lsp.Client|nil
function M.get(bufnr)
  return vim.lsp.get_clients({ name = M.NAME, bufnr = bufnr })[1]
end

---@return boolean sent
function M.notify(client_id, method, params)
  local c = M.by_id(client_id)
  return c ~= nil and call(c, "notify", method, params) or false
end

---@return boolean sent, integer|nil request_id
function M.request(client_id, method, params, handler, bufnr)
  local c = M.by_id(client_id)
  if not c then
    return false, nil
  end
  return call(c, "request", method, params, handler, bufnr)
end

--- Waits at most `timeout_ms` for the answer.
---@return table|nil result, string|nil error
function M.request_sync(client_id, method, params, timeout_ms, bufnr)
  local c = M.by_id(client_id)
  if not c then
    return nil, "strop's server is not running"
  end
  local response, err = call(c, "request_sync", method, params, timeout_ms, bufnr)
  if not response then
    return nil, err or "no answer"
  end
  if response.err then
    return nil, response.err.message or vim.inspect(response.err)
  end
  return response.result, nil
end

function M.cancel(client_id, request_id)
  local c = M.by_id(client_id)
  if c then
    call(c, "cancel_request", request_id)
  end
end

--- workspace/executeCommand on the server (never a client-side command of the same name).
---@param handler fun(err: lsp.ResponseError|nil, result: any)|nil errors are reported when nil
function M.execute(client_id, command, arguments, bufnr, handler)
  return M.request(client_id, "workspace/executeCommand", { command = command, arguments = arguments }, function(err, result)
    if handler then
      handler(err, result)
    elseif err then
      vim.notify(("strop: %s failed: %s"):format(command, err.message), vim.log.levels.ERROR)
    end
  end, bufnr)
end

--- The workspace root of a buffer: nearest ancestor with a root marker, else the file's folder.
---@param bufnr integer
---@return string
function M.root_dir(bufnr)
  local name = api.nvim_buf_get_name(bufnr)
  return vim.fs.root(bufnr, config.get().root_markers)
    or (name ~= "" and vim.fs.dirname(name))
    or assert(vim.uv.cwd())
end

local function wanted(bufnr)
  return api.nvim_buf_is_valid(bufnr)
    and vim.bo[bufnr].buftype == ""
    and api.nvim_buf_get_name(bufnr) ~= ""
    and config.wants_filetype(vim.bo[bufnr].filetype)
end

--- True when the server command can run; otherwise says how to fix it.
function M.executable()
  local exe = config.get().cmd[1]
  if vim.fn.executable(exe) == 1 then
    return true
  end
  vim.schedule(function()
    vim.notify(
      ("strop: cannot start the server: %q is not an executable on PATH. Install strop "
        .. "(`pip install strop`) into an environment on Neovim's PATH, or give its path: "
        .. 'require("strop").setup({ cmd = { "/path/to/strop", "serve" } }).'):format(exe),
      vim.log.levels.ERROR
    )
  end)
  return false
end

local function client_config()
  local cfg = {
    name = M.NAME,
    cmd = config.server_cmd(),
    cmd_env = config.env(),
    handlers = { [protocol.STATUS_CHANGED] = status.on_status_changed },
    on_init = function(c)
      M.request(c.id, protocol.STATUS, vim.empty_dict(), function(err, result)
        if not err and result then
          status.set(c.id, result)
        end
      end)
    end,
    on_attach = function(c, bufnr)
      on_attach_cb(c, bufnr)
    end,
    on_exit = function(code, signal, client_id)
      status.forget(client_id)
      if code ~= 0 and vim.v.exiting == vim.NIL then
        vim.schedule(function()
          vim.notify(
            ("strop: the server stopped (exit code %d, signal %d). Its last words are in the LSP log: "
              .. ":lua vim.cmd.tabedit(vim.lsp.get_log_path())"):format(code, signal),
            vim.log.levels.ERROR
          )
        end)
      end
    end,
  }
  if config.path() == "fallback" then
    -- Neovim < 0.12 does not announce inline completion; strop's fallback path speaks it itself.
    cfg.capabilities = vim.tbl_deep_extend("force", vim.lsp.protocol.make_client_capabilities(), {
      textDocument = { inlineCompletion = { dynamicRegistration = false } },
    })
  end
  return cfg
end

local function start_buffer(bufnr)
  if not wanted(bufnr) then
    return
  end
  local cfg = client_config()
  cfg.root_dir = M.root_dir(bufnr)
  vim.lsp.start(cfg, { bufnr = bufnr })
end

local function uses_lsp_config()
  return has_011 and vim.lsp.config ~= nil and vim.lsp.enable ~= nil
end

--- Registers the server; starts it now when `auto_start` is set.
---@param on_attach fun(client: vim.lsp.Client, bufnr: integer)
function M.setup(on_attach)
  on_attach_cb = on_attach
  if uses_lsp_config() then
    local cfg = client_config()
    cfg.filetypes = config.get().filetypes
    cfg.root_dir = function(bufnr, on_dir)
      if wanted(bufnr) then
        on_dir(M.root_dir(bufnr))
      end
    end
    vim.lsp.config(M.NAME, cfg)
  end
  if config.get().auto_start then
    M.start()
  end
end

--- Starts the server for every matching buffer, now and from now on.
---@return boolean started
function M.start()
  if not M.executable() then
    return false
  end
  if uses_lsp_config() then
    vim.lsp.enable(M.NAME)
    return true
  end
  api.nvim_create_autocmd("FileType", {
    group = api.nvim_create_augroup("strop.start", { clear = true }),
    callback = function(args)
      start_buffer(args.buf)
    end,
  })
  for _, bufnr in ipairs(api.nvim_list_bufs()) do
    if api.nvim_buf_is_loaded(bufnr) then
      start_buffer(bufnr)
    end
  end
  return true
end

return M
