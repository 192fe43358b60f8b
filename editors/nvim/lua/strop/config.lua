-- strop's options: the defaults live here and nowhere else (see `:help strop-config`).

local M = {}

---@class strop.Keymaps
---@field accept string|false       accept the whole suggestion; falls back to the key itself
---@field accept_word string|false  accept up to the end of the next word
---@field accept_line string|false  accept up to the end of the current line
---@field dismiss string|false      hide the suggestion and tell the server it was dismissed

---@class strop.Config
---@field cmd string[]              how to start the server (LSP over stdio)
---@field cli string[]|nil          the `strop` CLI for :StropDistill, :StropLog and the health check; nil = `cmd` up to "serve"
---@field model string|nil          a .gguf file, passed as `--model`; nil = promoted model, else the embedded one
---@field log_level string|nil      passed as `--log-level`
---@field env table<string,string>  extra environment for the server and CLI (e.g. STROP_HOME), over Neovim's own
---@field filetypes string[]|nil    attach only to these filetypes; nil = every file buffer
---@field exclude_filetypes string[] never attach to these
---@field mode "auto"|"native"|"fallback" native = vim.lsp.inline_completion (Neovim 0.12+); fallback = strop's own ghost text; auto picks
---@field keymaps strop.Keymaps     insert-mode keys, set buffer-locally where strop is attached
---@field debounce_ms integer       fallback mode: quiet time after a keystroke before asking the server
---@field cursor_debounce_ms integer quiet time after a cursor move before telling the server where it is
---@field auto_start boolean        start the server when a matching buffer opens; false = only on :StropStart
---@field root_markers string[]     the workspace root is the nearest ancestor holding one of these
M.defaults = {
  cmd = { "strop", "serve" },
  cli = nil,
  model = nil,
  log_level = nil,
  env = {},
  filetypes = nil,
  exclude_filetypes = { "help", "gitcommit", "gitrebase", "hgcommit", "svn", "cvs", "text", "markdown" },
  mode = "auto",
  keymaps = {
    accept = "<Tab>",
    accept_word = "<M-Right>",
    accept_line = "<M-C-Right>",
    dismiss = "<C-]>",
  },
  debounce_ms = 150,
  cursor_debounce_ms = 150,
  auto_start = true,
  root_markers = { ".git" },
}

---@type strop.Config
local current = vim.deepcopy(M.defaults)

local function is_key(v)
  return v == false or type(v) == "string"
end

local function is_string(v)
  return type(v) == "string"
end

-- Hand-rolled instead of vim.validate: its signature differs between 0.10 and 0.11+.
local function check(name, value, ok, expected)
  if not ok then
    error(("strop: option %s must be %s, got %s"):format(name, expected, vim.inspect(value)), 0)
  end
end

local function is_list_of_strings(v)
  if type(v) ~= "table" then
    return false
  end
  for _, s in ipairs(v) do
    if type(s) ~= "string" then
      return false
    end
  end
  return true
end

--- Merges `opts` over the defaults, checks every field and makes the result current.
local function non_empty_strings(v)
  return is_list_of_strings(v) and #v > 0
end

local function optional(v, pred)
  return v == nil or pred(v)
end

---@param opts table|nil
---@return strop.Config
function M.setup(opts)
  local cfg = vim.tbl_deep_extend("force", vim.deepcopy(M.defaults), opts or {})
  -- Lists replace the default instead of merging index by index.
  for _, key in ipairs({ "cmd", "cli", "filetypes", "exclude_filetypes", "root_markers" }) do
    if opts and opts[key] ~= nil then
      cfg[key] = vim.deepcopy(opts[key])
    end
  end
  check("cmd", cfg.cmd, non_empty_strings(cfg.cmd), "a non-empty list of strings")
  check("cli", cfg.cli, optional(cfg.cli, non_empty_strings), "nil or a non-empty list of strings")
  check("model", cfg.model, optional(cfg.model, is_string), "nil or a path")
  check("log_level", cfg.log_level, optional(cfg.log_level, is_string), "nil or a level name")
  check("env", cfg.env, type(cfg.env) == "table", "a table of NAME = value")
  check("filetypes", cfg.filetypes, optional(cfg.filetypes, is_list_of_strings), "nil or a list of filetypes")
  check("exclude_filetypes", cfg.exclude_filetypes, is_list_of_strings(cfg.exclude_filetypes), "a list of filetypes")
  check("mode", cfg.mode, vim.tbl_contains({ "auto", "native", "fallback" }, cfg.mode), '"auto", "native" or "fallback"')
  for _, key in ipairs({ "accept", "accept_word", "accept_line", "dismiss" }) do
    check("keymaps." .. key, cfg.keymaps[key], is_key(cfg.keymaps[key]), "a key (string) or false")
  end
  for _, key in ipairs({ "debounce_ms", "cursor_debounce_ms" }) do
    check(key, cfg[key], type(cfg[key]) == "number" and cfg[key] >= 0, "a number >= 0")
  end
  check("auto_start", cfg.auto_start, type(cfg.auto_start) == "boolean", "true or false")
  check("root_markers", cfg.root_markers, is_list_of_strings(cfg.root_markers), "a list of file names")
  if cfg.mode == "native" and not M.native_available() then
    error("strop: mode = \"native\" needs Neovim 0.12+ (vim.lsp.inline_completion); use \"auto\" or \"fallback\"")
  end
  current = cfg
  return cfg
end

---@return strop.Config
function M.get()
  return current
end

--- Neovim 0.12 renders LSP inline completions itself.
function M.native_available()
  return vim.lsp.inline_completion ~= nil and vim.lsp.inline_completion.get ~= nil
end

--- "native" or "fallback": the path this Neovim and these options use.
function M.path()
  if current.mode == "fallback" or (current.mode == "auto" and not M.native_available()) then
    return "fallback"
  end
  return "native"
end

--- The server command line with the options that become flags.
---@return string[]
function M.server_cmd()
  local cmd = vim.deepcopy(current.cmd)
  if current.model then
    vim.list_extend(cmd, { "--model", vim.fn.expand(current.model) })
  end
  if current.log_level then
    vim.list_extend(cmd, { "--log-level", current.log_level })
  end
  return cmd
end

--- The `strop` CLI: `cli`, else `cmd` up to (not including) its "serve" argument.
---@return string[]
function M.cli_cmd()
  if current.cli then
    return vim.deepcopy(current.cli)
  end
  local cli = {}
  for _, arg in ipairs(current.cmd) do
    if arg == "serve" then
      break
    end
    table.insert(cli, arg)
  end
  return cli
end

--- Extra environment for the server and CLI. Both also inherit Neovim's own environment
--- (vim.system merges), so STROP_* variables set in the shell pass through; `env` wins over them.
---@return table<string,string>
function M.env()
  local env = {}
  for name, value in pairs(current.env) do
    env[name] = tostring(value)
  end
  return env
end

--- Whether strop should attach to a buffer of this filetype.
---@param filetype string
function M.wants_filetype(filetype)
  if vim.tbl_contains(current.exclude_filetypes, filetype) then
    return false
  end
  return current.filetypes == nil or vim.tbl_contains(current.filetypes, filetype)
end

return M
