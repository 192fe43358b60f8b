-- The plugin's pure rules, run by tests/e2e/test_nvim.py with `nvim --clean -l` (argument: the
-- plugin folder). Prints one line per failed case and exits non-zero if any failed.

vim.opt.runtimepath:prepend(assert(_G.arg[1], "usage: nvim -l nvim_unit.lua <editors/nvim>"))

local failures = 0
local function expect(name, got, want)
  if not vim.deep_equal(got, want) then
    failures = failures + 1
    io.stdout:write(("FAIL %s: got %s, want %s\n"):format(name, vim.inspect(got), vim.inspect(want)))
  end
end

local slice = require("strop.suggestion").slice
for _, case in ipairs({
  { " fibonacci(n - 1)", "word", " fibonacci" },
  { "(n - 1) + x", "word", "(" },
  { "\n    x = 1", "word", "\n    x" },
  { "   ", "word", "   " },
  { "abc\ndef", "line", "abc" },
  { "\n    return x\n    y", "line", "\n    return x" },
  { "tail", "line", "tail" },
  { "a\nb", "all", "a\nb" },
}) do
  expect(("slice(%q, %s)"):format(case[1], case[2]), slice(case[1], case[2]), case[3])
end

local utf16_len = require("strop.events").utf16_len
expect("utf16_len ascii", utf16_len("abc"), 3)
expect("utf16_len é", utf16_len("é"), 1)
expect("utf16_len astral", utf16_len("😀"), 2)

local completion_id = require("strop.events").completion_id
expect("id", completion_id({ command = "strop.accept", arguments = { { id = "c1" } } }), "c1")
expect("foreign command", completion_id({ command = "other.accept", arguments = { { id = "c1" } } }), nil)
expect("no arguments", completion_id({ command = "strop.accept" }), nil)

local format = require("strop.status").format
expect("status idle", format({ state = "idle", enabled = true, lastLatencyMs = 85.6 }), "strop: idle 86ms")
expect("status off", format({ state = "idle", enabled = false }), "strop: off")
expect("status error", format({ state = "error", enabled = true }), "strop: error")
expect("status none", format(nil), "strop: starting")

local config = require("strop.config")
config.setup({ cmd = { "/venv/bin/python", "-m", "strop", "serve" }, model = "/m.gguf", filetypes = { "python", "lua" } })
expect("cli from cmd", config.cli_cmd(), { "/venv/bin/python", "-m", "strop" })
expect("server cmd", config.server_cmd(), { "/venv/bin/python", "-m", "strop", "serve", "--model", "/m.gguf" })
expect("wanted filetype", config.wants_filetype("python"), true)
expect("other filetype", config.wants_filetype("rust"), false)
config.setup({ exclude_filetypes = { "markdown" } })
expect("every filetype", config.wants_filetype("rust"), true)
expect("excluded filetype", config.wants_filetype("markdown"), false)
expect("keymaps merge", config.get().keymaps.accept, "<Tab>")
for _, bad in ipairs({ { cmd = {} }, { mode = "fast" }, { debounce_ms = -1 }, { cursor_debounce_ms = "fast" }, { keymaps = { accept = 1 } } }) do
  local ok, err = pcall(config.setup, bad)
  expect("rejects " .. vim.inspect(bad), ok, false)
  expect("names the option in " .. tostring(err), tostring(err):match("^strop: option ") ~= nil, true)
end

local lines = require("strop.commands").format_table({ total = { n = 1 }, list = { 1, 2 }, none = vim.NIL })
expect("format_table", lines, { "list: 1, 2", "none: -", "total:", "  n: 1" })

if failures > 0 then
  os.exit(1)
end
io.stdout:write("ok\n")
