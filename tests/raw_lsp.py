"""A real `strop serve` subprocess spoken to byte by byte: what a broken or hostile client sends
(bad framing, invalid JSON, wrong types) goes on the wire exactly as given, and every byte the
server writes back is parsed and kept (replies by id, notifications, stderr lines)."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

from tests.lsp_support import TIMING_FREE

INIT_CAPS = {
    "general": {"positionEncodings": ["utf-16"]},
    "textDocument": {"inlineCompletion": {}, "completion": {}, "synchronization": {"didSave": True}},
    "workspace": {"executeCommand": {}},
}


def frame(obj_or_bytes) -> bytes:
    body = obj_or_bytes if isinstance(obj_or_bytes, bytes) else json.dumps(obj_or_bytes).encode()
    return b"Content-Length: %d\r\n\r\n" % len(body) + body


class RawServer:
    def __init__(self, model: Path, home: Path, root: Path, *, env: dict | None = None, args: tuple = ()) -> None:
        server_env = {**os.environ, "STROP_HOME": str(home), **TIMING_FREE, **(env or {})}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "strop", "serve", "--model", str(model), "--repo", str(root), *args],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=server_env)
        self.replies: dict[object, list[dict]] = {}
        self.notifications: list[dict] = []
        self.unparsable: list[bytes] = []
        self.stderr: list[str] = []
        self._cv = threading.Condition()
        self._ids = itertools.count(1)
        self._out = threading.Thread(target=self._read_stdout, daemon=True)
        self._err = threading.Thread(target=self._read_stderr, daemon=True)
        self._out.start()
        self._err.start()

    # --- reading ------------------------------------------------------------------------------
    def _read_stdout(self) -> None:
        out = self.proc.stdout
        while True:
            length = None
            while True:
                line = out.readline()
                if not line:
                    return
                if line in (b"\r\n", b"\n"):
                    break
                name, _, value = line.decode("ascii", "replace").partition(":")
                if name.strip().lower() == "content-length":
                    length = int(value.strip())
            body = out.read(length or 0)
            try:
                msg = json.loads(body)
            except ValueError:
                with self._cv:
                    self.unparsable.append(body)
                continue
            with self._cv:
                if "method" in msg:
                    self.notifications.append(msg)
                else:
                    self.replies.setdefault(_key(msg.get("id")), []).append(msg)
                self._cv.notify_all()

    def _read_stderr(self) -> None:
        for line in self.proc.stderr:
            self.stderr.append(line.decode("utf-8", "replace").rstrip("\n"))

    # --- writing ------------------------------------------------------------------------------
    def write(self, data: bytes) -> None:
        self.proc.stdin.write(data)
        self.proc.stdin.flush()

    def send(self, obj) -> None:
        self.write(frame(obj))

    def notify(self, method: str, params=None) -> None:
        msg = {"jsonrpc": "2.0", "method": method}
        if params is not None:
            msg["params"] = params
        self.send(msg)

    def request(self, method: str, params=None, *, msg_id=None) -> object:
        msg_id = next(self._ids) if msg_id is None else msg_id
        msg = {"jsonrpc": "2.0", "id": msg_id, "method": method}
        if params is not None:
            msg["params"] = params
        self.send(msg)
        return msg_id

    def wait(self, msg_id, timeout: float = 60.0) -> dict:
        """The (first) reply to `msg_id`; AssertionError if none comes in time."""
        deadline = time.monotonic() + timeout
        with self._cv:
            while not self.replies.get(_key(msg_id)):
                left = deadline - time.monotonic()
                if left <= 0 or self.proc.poll() is not None and not self._out.is_alive():
                    raise AssertionError(f"no reply to {msg_id!r} within {timeout:.0f} s "
                                         f"(server {'exited ' + str(self.proc.returncode) if self.proc.poll() is not None else 'alive'})")
                self._cv.wait(min(left, 0.2))
            return self.replies[_key(msg_id)][0]

    def call(self, method: str, params=None, timeout: float = 60.0) -> dict:
        return self.wait(self.request(method, params), timeout)

    # --- session ------------------------------------------------------------------------------
    def initialize(self, root: Path) -> dict:
        reply = self.call("initialize", {"processId": None, "rootUri": root.as_uri(), "capabilities": INIT_CAPS,
                                         "workspaceFolders": [{"uri": root.as_uri(), "name": root.name}]})
        self.notify("initialized", {})
        return reply

    def wait_ready(self, timeout: float = 90.0) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            st = self.call("strop/status", {})["result"]
            if st.get("modelVersion") or st.get("state") == "error":
                return st
            time.sleep(0.1)
        raise AssertionError("the server did not load its model in time")

    def open(self, uri: str, text: str, language: str = "python", version: int = 1) -> None:
        self.notify("textDocument/didOpen", {"textDocument": {"uri": uri, "languageId": language,
                                                              "version": version, "text": text}})

    def inline(self, uri: str, line: int, character: int, timeout: float = 60.0) -> dict:
        return self.call("textDocument/inlineCompletion", {
            "textDocument": {"uri": uri}, "position": {"line": line, "character": character},
            "context": {"triggerKind": 1}}, timeout)

    def rss_bytes(self) -> int:
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        return 0

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, timeout: float = 30.0) -> int:
        """shutdown + exit (when still running); the exit code."""
        if self.alive():
            try:
                self.call("shutdown", None, timeout)
                self.notify("exit")
            except (AssertionError, BrokenPipeError, OSError):
                pass
        return self.finish(timeout)

    def finish(self, timeout: float = 30.0) -> int:
        try:
            self.proc.stdin.close()
        except OSError:
            pass
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
        self._out.join(5)
        self._err.join(5)
        return code


def _key(msg_id):
    return json.dumps(msg_id)
