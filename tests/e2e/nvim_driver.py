"""Drives a real headless Neovim over its RPC socket.

pynvim is not a dependency, so every call goes through nvim's own client: `nvim --server SOCK
--remote-expr EXPR` (answers) and `--remote-send KEYS` (typing). Each call is a short process
(about 0.1-0.3 s here), which bounds how fast `wait_for` polls. Every wait has a deadline.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CALL_TIMEOUT_S = 15.0


def nvim_executable() -> str | None:
    return shutil.which("nvim")


def lua_string(text: str) -> str:
    """A Lua long-bracket string literal holding `text` verbatim."""
    level = 0
    while f"]{'=' * level}]" in text:
        level += 1
    eq = "=" * level
    return f"[{eq}[{text}]{eq}]"


def poll(check: Callable[[], Any], timeout_s: float, what: str, interval_s: float = 0.05) -> Any:
    """Calls `check` until it returns something truthy (returned) or `timeout_s` passes."""
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while True:
        last = check()
        if last:
            return last
        if time.monotonic() >= deadline:
            raise TimeoutError(f"waited {timeout_s:.0f} s for {what}; last value: {last!r}")
        time.sleep(interval_s)


@dataclass
class Nvim:
    """A headless Neovim listening on `socket`, its output going to `log_path`."""

    exe: str
    proc: subprocess.Popen
    socket: Path
    log_path: Path

    @classmethod
    def start(
        cls,
        *,
        init_lua: Path,
        files: list[Path],
        cwd: Path,
        env: dict[str, str],
        socket: Path,
        log_path: Path,
        timeout_s: float = 20.0,
    ) -> "Nvim":
        exe = nvim_executable()
        if exe is None:
            raise FileNotFoundError("nvim is not on PATH")
        cmd = [exe, "--clean", "-u", str(init_lua), "--headless", "--listen", str(socket), *map(str, files)]
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(
                cmd, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
            )
        nvim = cls(exe=exe, proc=proc, socket=socket, log_path=log_path)
        try:
            poll(nvim._ready, timeout_s, "nvim to listen on its socket")
        except BaseException:
            nvim.close()
            raise
        return nvim

    def _ready(self) -> bool:
        if self.proc.poll() is not None:
            raise RuntimeError(f"nvim exited with {self.proc.returncode}:\n{self.output()}")
        if not self.socket.exists():
            return False
        try:
            return self.expr("1") == "1"
        except RuntimeError:
            return False

    def _remote(self, *args: str) -> str:
        result = subprocess.run(
            [self.exe, "--clean", "--headless", "--server", str(self.socket), *args],
            capture_output=True,
            text=True,
            stdin=subprocess.DEVNULL,
            timeout=CALL_TIMEOUT_S,
        )
        if result.returncode != 0 or result.stderr.strip():
            raise RuntimeError(f"nvim {' '.join(args)!r} failed ({result.returncode}): {result.stderr.strip()}")
        return result.stdout

    def expr(self, expr: str) -> str:
        """The value of a Vim expression, as text."""
        return self._remote("--remote-expr", expr)

    def lua(self, code: str) -> Any:
        """Runs Lua statements in Neovim; the value they `return`, through JSON."""
        chunk = lua_string(f"return vim.json.encode((function() {code} end)())")
        answer = self.expr(f"luaeval('assert(loadstring({chunk.replace(chr(39), chr(39) * 2)}))()')")
        return json.loads(answer)

    def keys(self, keys: str) -> None:
        """Types `keys` (with <Esc>-style names), as a user would."""
        self._remote("--remote-send", keys)

    def command(self, command: str) -> None:
        self.lua(f"vim.cmd({lua_string(command)}) return true")

    def wait_for(self, code: str, timeout_s: float, what: str) -> Any:
        """Polls Lua `code` until it returns something truthy; returns that."""
        try:
            return poll(lambda: self.lua(code), timeout_s, what)
        except TimeoutError as err:
            raise AssertionError(f"{err}\n--- :messages ---\n{self.messages()}\n--- nvim output ---\n{self.output()}") from None

    def messages(self) -> str:
        try:
            return self.lua('return vim.api.nvim_exec2("messages", { output = true }).output')
        except (RuntimeError, subprocess.TimeoutExpired) as err:
            return f"(unavailable: {err})"

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:] if self.log_path.exists() else ""

    def close(self, timeout_s: float = 10.0) -> None:
        """Quits Neovim (which stops its language servers); kills it after `timeout_s`."""
        if self.proc.poll() is None:
            try:
                self._remote("--remote-send", "<C-\\><C-N>:qa!<CR>")
            except (RuntimeError, subprocess.TimeoutExpired):
                pass
            try:
                self.proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=timeout_s)
