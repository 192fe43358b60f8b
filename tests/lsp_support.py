"""Start the real `strop serve` as a subprocess and talk to it with pytest-lsp's real LSP client."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import sys
from pathlib import Path

from lsprotocol import types as t
from pytest_lsp import LanguageClient, make_test_lsp_client

CLIENT_CAPS = t.ClientCapabilities(
    general=t.GeneralClientCapabilities(position_encodings=[t.PositionEncodingKind.Utf16]),
    text_document=t.TextDocumentClientCapabilities(
        inline_completion=t.InlineCompletionClientCapabilities(dynamic_registration=False),
        completion=t.CompletionClientCapabilities(),
        synchronization=t.TextDocumentSyncClientCapabilities(did_save=True),
    ),
    workspace=t.WorkspaceClientCapabilities(execute_command=t.ExecuteCommandClientCapabilities()),
)


# Test servers are timing-free by default (no cold-prompt cut, no soft prediction stop): tests assert
# behaviour, not speed; the budget tests set their own.
TIMING_FREE = {"STROP_PREDICT_SOFT_MS": "0", "STROP_PROMPT_BUDGET_MS": "0"}


async def start(model: Path, home: Path, root: Path, *extra: str, env: dict | None = None,
                wait: bool = True) -> LanguageClient:
    client = make_test_lsp_client()
    client.strop_statuses = []

    @client.feature("strop/statusChanged")
    def _status_changed(params) -> None:  # the server pushes its state; keep the history
        client.strop_statuses.append(_plain(params))

    # A generous time cap: tests assert behaviour, not speed, on a machine that may be busy.
    server_env = {**os.environ, "STROP_HOME": str(home), "STROP_TIME_CAP_MS": "30000", **TIMING_FREE, **(env or {})}
    await client.start_io(sys.executable, "-m", "strop", "serve", "--model", str(model), "--repo", str(root),
                          *extra, env=server_env)
    result = await client.initialize_session(t.InitializeParams(
        capabilities=CLIENT_CAPS, root_uri=root.as_uri(),
        workspace_folders=[t.WorkspaceFolder(uri=root.as_uri(), name=root.name)]))
    client.strop_capabilities = result.capabilities  # what the server announced
    if wait:
        await wait_ready(client)
    return client


async def status(client: LanguageClient) -> dict:
    return _plain(await client.protocol.send_request_async("strop/status", {}))


def _plain(obj):
    if isinstance(obj, dict):
        return obj
    return {k: getattr(obj, k) for k in dir(obj) if not k.startswith("_")}


async def wait_ready(client: LanguageClient, timeout_s: float = 60) -> dict:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while loop.time() < deadline:
        st = await status(client)
        if st.get("modelVersion") or st.get("state") == "error":
            return st
        await asyncio.sleep(0.1)
    raise TimeoutError("the server did not load its model in time")


def open_doc(client: LanguageClient, uri: str, text: str, language: str = "python", version: int = 1) -> None:
    client.text_document_did_open(t.DidOpenTextDocumentParams(
        text_document=t.TextDocumentItem(uri=uri, language_id=language, version=version, text=text)))
    client.__dict__.setdefault("strop_open_uris", []).append(uri)


def close_all_docs(client: LanguageClient) -> None:
    """Close what open_doc opened: open documents become repository context of later prompts."""
    for uri in client.__dict__.pop("strop_open_uris", []):
        client.text_document_did_close(t.DidCloseTextDocumentParams(text_document=t.TextDocumentIdentifier(uri=uri)))


def change_full(client: LanguageClient, uri: str, text: str, version: int) -> None:
    client.text_document_did_change(t.DidChangeTextDocumentParams(
        text_document=t.VersionedTextDocumentIdentifier(uri=uri, version=version),
        content_changes=[t.TextDocumentContentChangeWholeDocument(text=text)]))


def insert(client: LanguageClient, uri: str, line: int, char: int, text: str, version: int) -> None:
    pos = t.Position(line, char)
    client.text_document_did_change(t.DidChangeTextDocumentParams(
        text_document=t.VersionedTextDocumentIdentifier(uri=uri, version=version),
        content_changes=[t.TextDocumentContentChangePartial(range=t.Range(pos, pos), text=text)]))


async def inline(client: LanguageClient, uri: str, line: int, char: int, invoked: bool = True):
    kind = t.InlineCompletionTriggerKind.Invoked if invoked else t.InlineCompletionTriggerKind.Automatic
    return await client.text_document_inline_completion_async(t.InlineCompletionParams(
        text_document=t.TextDocumentIdentifier(uri=uri), position=t.Position(line, char),
        context=t.InlineCompletionContext(trigger_kind=kind)))


async def until_status(client: LanguageClient, predicate, timeout_s: float = 60.0) -> dict:
    """Poll strop/status until `predicate(status)` holds; the status then."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        st = await status(client)
        if predicate(st):
            return st
        if loop.time() > deadline:
            raise AssertionError(f"status never matched: {st}")
        await asyncio.sleep(0.1)


def move_cursor(client: LanguageClient, uri: str, line: int, char: int) -> None:
    """What the editor plugins send on cursor moves (strop/didMoveCursor)."""
    client.protocol.notify("strop/didMoveCursor", {"textDocument": {"uri": uri},
                                                   "position": {"line": line, "character": char}})


def item_id(item: t.InlineCompletionItem) -> str:
    arg = item.command.arguments[0]
    return arg["id"] if isinstance(arg, dict) else arg.id


def rows(home: Path) -> list[dict]:
    con = sqlite3.connect(home / "completions.sqlite3")
    con.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in con.execute("SELECT * FROM completions ORDER BY created_at")]
    finally:
        con.close()


async def eventually(predicate, timeout_s: float = 10.0, interval_s: float = 0.05):
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if loop.time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(interval_s)


def send_raw(client: LanguageClient, method: str, params: dict, msg_id: str):
    """Send a request as raw JSON, bypassing the client's typed serialisation — what a buggy or
    hostile client would put on the wire. Returns a future for the response."""
    import json
    from concurrent.futures import Future

    fut: Future = Future()
    client.protocol._request_futures[msg_id] = fut
    body = json.dumps({"jsonrpc": "2.0", "id": msg_id, "method": method, "params": params})
    client.protocol.writer.write(f"Content-Length: {len(body.encode())}\r\n\r\n{body}".encode())
    return fut
