"""An LSP client that sends what strop's editor plugins send (editors/nvim/lua/strop/), and nothing else.

- `initialize` with the repository as the workspace folder, UTF-16 positions;
- `textDocument/didOpen` / `didClose`; `didChange` per keystroke (incremental, as Neovim sends);
- `strop/didMoveCursor` `cursor_debounce_s` after the cursor last moved (by a jump, a keystroke or
  an accept), never the same position twice in a row (editors/nvim: cursor_debounce_ms = 150);
- `textDocument/inlineCompletion` (trigger Automatic) `debounce_s` after a keystroke, a keystroke
  cancelling the request in flight with `$/cancelRequest` (editors/nvim/lua/strop/ghost.lua,
  debounce_ms = 150); the driver decides when to ask, as the plugin does;
- `strop/didShowCompletion` when an answer is drawn, `strop/didDismissCompletion` when a shown one
  is contradicted, `strop/didPartiallyAcceptCompletion` on a word accept, and on a whole accept the
  text inserted (didChange) then the item's command (`workspace/executeCommand strop.accept`).
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
import uuid
from pathlib import Path

from lsprotocol import types as t
from pygls.lsp.client import LanguageClient

from server import protocol
from tests.lsp_support import CLIENT_CAPS, status, wait_ready


def utf16_len(text: str) -> int:
    return len(text.encode("utf-16-le")) // 2


def lsp_position(text: str, offset: int) -> t.Position:
    line_start = text.rfind("\n", 0, offset) + 1
    return t.Position(text.count("\n", 0, offset), utf16_len(text[line_start:offset]))


class Editor:
    def __init__(self, client: LanguageClient, *, debounce_s: float, cursor_debounce_s: float) -> None:
        self.client = client
        self.debounce_s = debounce_s
        self.cursor_debounce_s = cursor_debounce_s
        self.loop = asyncio.get_running_loop()
        self.uri: str | None = None
        self.text = ""
        self.cursor = 0
        self.version = 0
        self._cursor_timer: asyncio.TimerHandle | None = None
        self._cursor_sent: tuple | None = None
        self.statuses: list[dict] = []
        self.messages: list[str] = []
        self.sent: dict[str, int] = {}

    # --- the server ---------------------------------------------------------------------------
    @classmethod
    async def start(cls, argv: list[str], env: dict, root: Path, log_path: Path, cwd: Path, **timing) -> Editor:
        client = LanguageClient("strop-bench", "1")
        editor = cls(client, **timing)

        @client.feature(protocol.STATUS_CHANGED)
        def _status_changed(params) -> None:
            editor.statuses.append({"at": time.perf_counter(), "state": getattr(params, "state", None)})

        @client.feature(t.WINDOW_SHOW_MESSAGE)
        def _show_message(params: t.ShowMessageParams) -> None:
            editor.messages.append(params.message)

        @client.feature(t.WINDOW_LOG_MESSAGE)
        def _log_message(params: t.LogMessageParams) -> None:
            pass

        await client.start_io(argv[0], *argv[1:], env=env, cwd=str(cwd))
        log = log_path.open("ab")
        editor._stderr_task = asyncio.ensure_future(_drain(client._server.stderr, log))
        await client.initialize_async(t.InitializeParams(
            capabilities=CLIENT_CAPS, root_uri=root.as_uri(), process_id=os.getpid(),
            workspace_folders=[t.WorkspaceFolder(uri=root.as_uri(), name=root.name)]))
        client.initialized(t.InitializedParams())
        editor.ready = await wait_ready(client, timeout_s=120)
        return editor

    async def stop(self) -> str | None:
        """shutdown + exit as an editor sends them on quit; the process is killed if it lingers.
        Returns how the shutdown failed, if it did (the result says so; the run goes on)."""
        self.cancel_cursor_timer()
        server = self.client._server
        failed = None
        try:
            await asyncio.wait_for(self.client.shutdown_async(None), 30)
        except Exception as err:  # noqa: BLE001 - a server that fails its shutdown is a finding, not a crash
            failed = f"shutdown: {type(err).__name__}: {err}"[:300]
        try:
            self.client.exit(None)
            await asyncio.wait_for(server.wait(), 15)
        except (TimeoutError, ConnectionError, RuntimeError):
            failed = failed or "exit: the server did not exit within 15 s"
        finally:
            if server.returncode is None:
                server.kill()
                await server.wait()
            await self.client.stop()
            await self._stderr_task
        return failed

    async def status(self) -> dict:
        """strop/status with nested objects (`unanswered`, `index`) as plain dicts, for the results file."""
        def plain(v):
            if v is None or isinstance(v, (str, int, float, bool, list, dict)):
                return v
            return {k: plain(getattr(v, k)) for k in dir(v) if not k.startswith("_")}

        return {k: plain(v) for k, v in (await status(self.client)).items()}

    async def wait_idle(self, timeout_s: float = 30.0) -> None:
        """Until the server reports nothing running (a warm-up or a job left from before)."""
        deadline = time.perf_counter() + timeout_s
        while time.perf_counter() < deadline:
            if (await self.status()).get("state") in ("idle", "error", "disabled"):
                return
            await asyncio.sleep(0.05)

    def _notify(self, method: str, params) -> None:
        self.sent[method] = self.sent.get(method, 0) + 1
        self.client.protocol.notify(method, params)

    # --- the document -------------------------------------------------------------------------
    def open(self, uri: str, text: str, cursor: int, language: str = "python") -> None:
        self.uri, self.text, self.version = uri, text, 1
        self._cursor_sent = None
        self._notify(t.TEXT_DOCUMENT_DID_OPEN, t.DidOpenTextDocumentParams(
            text_document=t.TextDocumentItem(uri=uri, language_id=language, version=1, text=text)))
        self.move(cursor)

    def close(self) -> None:
        self.cancel_cursor_timer()
        self._notify(t.TEXT_DOCUMENT_DID_CLOSE, t.DidCloseTextDocumentParams(
            text_document=t.TextDocumentIdentifier(uri=self.uri)))
        self.uri = None

    def position(self) -> t.Position:
        return lsp_position(self.text, self.cursor)

    def move(self, offset: int) -> None:
        self.cursor = offset
        self._restart_cursor_timer()

    def insert(self, text: str) -> None:
        """A keystroke (or an accepted suggestion) at the cursor."""
        pos = self.position()
        self.version += 1
        self.text = self.text[:self.cursor] + text + self.text[self.cursor:]
        self._notify(t.TEXT_DOCUMENT_DID_CHANGE, t.DidChangeTextDocumentParams(
            text_document=t.VersionedTextDocumentIdentifier(uri=self.uri, version=self.version),
            content_changes=[t.TextDocumentContentChangePartial(range=t.Range(pos, pos), text=text)]))
        self.move(self.cursor + len(text))

    # --- where the cursor is ------------------------------------------------------------------
    def _restart_cursor_timer(self) -> None:
        self.cancel_cursor_timer()
        self._cursor_timer = self.loop.call_later(self.cursor_debounce_s, self._send_cursor)

    def cancel_cursor_timer(self) -> None:
        if self._cursor_timer is not None:
            self._cursor_timer.cancel()
            self._cursor_timer = None

    def _send_cursor(self) -> None:
        self._cursor_timer = None
        pos = self.position()
        where = (self.uri, pos.line, pos.character)
        if self.uri is None or where == self._cursor_sent:
            return
        self._cursor_sent = where
        self._notify(protocol.DID_MOVE_CURSOR, {"textDocument": {"uri": self.uri},
                                                "position": {"line": pos.line, "character": pos.character}})

    # --- completions --------------------------------------------------------------------------
    def request(self) -> tuple[str, asyncio.Future]:
        msg_id = uuid.uuid4().hex
        self.sent[t.TEXT_DOCUMENT_INLINE_COMPLETION] = self.sent.get(t.TEXT_DOCUMENT_INLINE_COMPLETION, 0) + 1
        fut = self.client.protocol.send_request(t.TEXT_DOCUMENT_INLINE_COMPLETION, t.InlineCompletionParams(
            text_document=t.TextDocumentIdentifier(uri=self.uri), position=self.position(),
            context=t.InlineCompletionContext(trigger_kind=t.InlineCompletionTriggerKind.Automatic)), msg_id=msg_id)
        return msg_id, asyncio.wrap_future(fut)

    def cancel(self, msg_id: str) -> None:
        self._notify("$/cancelRequest", t.CancelParams(id=msg_id))

    def shown(self, cid: str) -> None:
        self._notify(protocol.DID_SHOW, {"id": cid})

    def dismissed(self, cid: str) -> None:
        self._notify(protocol.DID_DISMISS, {"id": cid})

    def partially_accepted(self, cid: str, accepted_utf16: int) -> None:
        self._notify(protocol.DID_PARTIALLY_ACCEPT, {"id": cid, "acceptedLength": accepted_utf16})

    def accepted(self, command: t.Command) -> asyncio.Future:
        self.sent[t.WORKSPACE_EXECUTE_COMMAND] = self.sent.get(t.WORKSPACE_EXECUTE_COMMAND, 0) + 1
        return asyncio.ensure_future(self.client.workspace_execute_command_async(
            t.ExecuteCommandParams(command=command.command, arguments=command.arguments)))


def first_item(result) -> t.InlineCompletionItem | None:
    items = result.items if isinstance(result, t.InlineCompletionList) else (result or [])
    return items[0] if items and isinstance(items[0].insert_text, str) and items[0].insert_text else None


def item_id(item: t.InlineCompletionItem) -> str | None:
    args = item.command.arguments if item.command else None
    arg = args[0] if args else None
    return arg.get("id") if isinstance(arg, dict) else getattr(arg, "id", None)


async def _drain(stream, sink) -> None:
    """The server's stderr into its log file (an unread pipe would block the server)."""
    try:
        while line := await stream.readline():
            sink.write(line)
    finally:
        sink.close()


def server_argv(model: Path | None) -> list[str]:
    """`strop serve` from this work tree, as the plugins start it (`--model` only when configured)."""
    return [sys.executable, "-m", "strop", "serve", *(["--model", str(model)] if model else [])]
