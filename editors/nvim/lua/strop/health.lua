-- :checkhealth strop

local client = require("strop.client")
local config = require("strop.config")
local protocol = require("strop.protocol")

local M = {}

local health = vim.health

local function check_neovim()
  local v = vim.version()
  local version = ("%d.%d.%d"):format(v.major, v.minor, v.patch)
  if vim.fn.has("nvim-0.10") == 0 then
    health.error("Neovim " .. version .. " is too old", { "strop needs Neovim 0.10 or newer" })
    return
  end
  if config.path() == "native" then
    health.ok(("Neovim %s: native inline completion (vim.lsp.inline_completion)"):format(version))
  elseif config.native_available() then
    health.ok(("Neovim %s: strop's own ghost text (mode = %q)"):format(version, config.get().mode))
  else
    health.ok(("Neovim %s: strop's own ghost text (native inline completion needs 0.12)"):format(version))
  end
end

local function check_executable()
  local cli = config.cli_cmd()
  local exe = cli[1] or config.get().cmd[1]
  if vim.fn.executable(exe) == 0 then
    health.error(("%q is not an executable on PATH"):format(exe), {
      "Install strop into an environment on Neovim's PATH: pip install strop",
      'Or give its path: require("strop").setup({ cmd = { "/path/to/strop", "serve" } })',
    })
    return
  end
  local cmd = vim.list_extend(vim.deepcopy(cli), { "--version" })
  local ok, done = pcall(function()
    return vim.system(cmd, { env = config.env(), text = true }):wait(15000)
  end)
  if ok and done.code == 0 then
    health.ok(("strop found: %s (%s)"):format(vim.trim(done.stdout), table.concat(cmd, " ")))
  else
    local why = ok and vim.trim(done.stderr ~= "" and done.stderr or ("exit code " .. done.code)) or tostring(done)
    health.warn(("`%s` failed: %s"):format(table.concat(cmd, " "), why))
  end
end

local function check_server()
  local c = client.get(0) or client.get()
  if not c then
    health.warn("strop's server is not running", {
      "Open a file of an enabled filetype (options `filetypes`, `exclude_filetypes`)",
      "With auto_start = false, start it with :StropStart",
    })
    return
  end
  health.ok(("server running: client %d, root %s, command: %s"):format(
    c.id,
    c.root_dir or "-",
    table.concat(c.config.cmd or {}, " ")
  ))
  local st, err = client.request_sync(c.id, protocol.STATUS, vim.empty_dict(), 10000, 0)
  if not st then
    health.error("the server did not answer strop/status: " .. tostring(err))
    return
  end
  local function value(v)
    return (v == nil or v == vim.NIL) and "-" or tostring(v)
  end
  health.info(("model: %s, version %s, FIM format %s"):format(
    value(st.model),
    value(st.modelVersion),
    (st.fim == nil or st.fim == vim.NIL) and "none (prefix-only)" or st.fim
  ))
  local latency = (st.lastLatencyMs == nil or st.lastLatencyMs == vim.NIL) and "no completion yet"
    or ("last latency %d ms"):format(math.floor(st.lastLatencyMs + 0.5))
  local state = ("state: %s, completions %s, %s"):format(value(st.state), st.enabled == false and "off" or "on", latency)
  if st.state == "error" then
    health.error(state .. ": " .. value(st.message))
  else
    health.ok(state)
  end
end

--- Where the server keeps its state: STROP_HOME, else $XDG_DATA_HOME/strop, else ~/.local/share/strop
--- (server/config.py strop_home()).
local function strop_home()
  local home = config.env().STROP_HOME or vim.env.STROP_HOME
  if home and home ~= "" then
    return vim.fn.expand(home)
  end
  local data = vim.env.XDG_DATA_HOME
  if not data or data == "" then
    data = vim.fs.joinpath(assert(vim.uv.os_homedir()), ".local", "share")
  end
  return vim.fs.joinpath(data, "strop")
end

local function check_home()
  local home = strop_home()
  if vim.fn.isdirectory(home) == 1 then
    if vim.fn.filewritable(home) == 2 then
      health.ok("STROP_HOME " .. home .. " is writable")
    else
      health.error("STROP_HOME " .. home .. " is not writable", { "Fix its permissions, or set STROP_HOME elsewhere" })
    end
    return
  end
  local parent = vim.fs.dirname(home)
  while parent and vim.fn.isdirectory(parent) == 0 and parent ~= vim.fs.dirname(parent) do
    parent = vim.fs.dirname(parent)
  end
  if parent and vim.fn.filewritable(parent) == 2 then
    health.ok("STROP_HOME " .. home .. " does not exist yet; the server will create it")
  else
    health.error("STROP_HOME " .. home .. " cannot be created", { "Set STROP_HOME (option `env` or the environment) to a writable folder" })
  end
end

function M.check()
  health.start("strop")
  check_neovim()
  check_executable()
  check_server()
  check_home()
end

return M
