-- strop's user commands; the plugin itself starts with require("strop").setup().

if vim.g.loaded_strop then
  return
end
vim.g.loaded_strop = true

local function command(name, desc, fn, opts)
  vim.api.nvim_create_user_command(name, fn, vim.tbl_extend("force", { desc = desc }, opts or {}))
end

command("StropStats", "strop: acceptance statistics", function()
  require("strop.commands").stats()
end)

command("StropToggle", "strop: completions on/off (no argument: flip)", function(args)
  require("strop.commands").toggle(args.args)
end, {
  nargs = "?",
  complete = function()
    return { "on", "off" }
  end,
})

command("StropDistill", "strop: run one distillation cycle for this workspace", function()
  require("strop.commands").distill()
end)

command("StropLog", "strop: the most recent completions (default 50)", function(args)
  require("strop.commands").log(tonumber(args.args))
end, { nargs = "?" })

command("StropStart", "strop: start the server for matching buffers", function()
  require("strop").start()
end)
