"""The real server over LSP with the real SmolLM2-135M (prefix-only: no FIM tokens)."""

from __future__ import annotations

import asyncio

import pytest
import pytest_asyncio
from lsprotocol import types as t
from pygls.exceptions import JsonRpcException

from tests.lsp_support import (change_full, close_all_docs, eventually, inline, insert, item_id, open_doc, rows,
                               send_raw, start, status, until_status)

pytestmark = [pytest.mark.slow, pytest.mark.asyncio(loop_scope="module")]

SOURCE = 'def add(a, b):\n    """Return the sum of a and b."""\n    return\n\n\nprint(add(1, 2))\n'


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def served(smollm_gguf, tmp_path_factory):
    home = tmp_path_factory.mktemp("home")
    root = tmp_path_factory.mktemp("repo")
    client = await start(smollm_gguf, home, root)
    yield client, home, root
    await client.shutdown_session()


@pytest.fixture(autouse=True)
def fresh_workspace(request):
    """Each test starts with no documents open. Other open documents are placed in the prompt as
    repository context, and copies of SOURCE (an unfinished `return`) teach SmolLM2 to leave the
    line unfinished too."""
    yield
    if "served" in request.fixturenames:
        close_all_docs(request.getfixturevalue("served")[0])


async def test_capabilities_and_status(served):
    client, home, root = served
    caps = client.strop_capabilities
    assert caps.inline_completion_provider
    assert caps.completion_provider is not None
    assert set(caps.execute_command_provider.commands) >= {"strop.accept", "strop.toggle"}
    assert caps.position_encoding in (None, t.PositionEncodingKind.Utf16)
    st = await status(client)
    assert st["fim"] is None and st["modelVersion"] and st["enabled"] is True


async def test_prefix_only_completion_is_logged_with_its_context(served):
    client, home, root = served
    uri = (root / "add.py").as_uri()
    open_doc(client, uri, SOURCE)
    result = await inline(client, uri, 2, len("    return"))
    (item,) = result.items
    assert item.insert_text.strip(), "SmolLM2 should continue a return statement"
    assert item.command.command == "strop.accept"
    assert item.range.start == t.Position(2, len("    return"))
    cid = item_id(item)
    row = next(r for r in rows(home) if r["id"] == cid)
    assert row["outcome"] == "pending" and row["completion"] == item.insert_text
    assert row["prefix"].endswith("    return") and row["suffix"] == ""
    assert row["path"] == "add.py" and row["language"] == "python"
    assert row["latency_ms"] > 0 and row["n_prompt_tokens"] > 10


async def test_an_edit_warms_the_prompt_at_its_end_before_the_request(served):
    """The editor sends the change at once and asks after its debounce: the prompt of the position
    the edit leaves the cursor at is evaluated in between, so the request only generates."""
    client, home, root = served
    uri = (root / "warm_on_change.py").as_uri()
    opened = (await status(client))["warmups"]
    open_doc(client, uri, SOURCE)
    await until_status(client, lambda st: st["warmups"] > opened and st["warming"] == 0)  # the end of the file
    pasted = "\n    total = a + b  # the sum of both numbers, checked below\n    if total"
    before = (await status(client))["warmups"]
    insert(client, uri, 1, len('    """Return the sum of a and b."""'), pasted, 2)
    await asyncio.sleep(0.15)  # the editor's debounce
    await until_status(client, lambda st: st["warmups"] > before and st["warming"] == 0, timeout_s=20)
    result = await inline(client, uri, 3, len("    if total"))
    (item,) = result.items
    row = next(r for r in rows(home) if r["id"] == item_id(item))
    assert row["prefix"].endswith(pasted)
    # ~20 new tokens were pasted; all but the healed last one were evaluated before the request.
    assert row["n_prompt_tokens"] - row["n_reused_tokens"] <= 2, row


async def test_accept_then_retention_on_save(served):
    client, home, root = served
    uri = (root / "acc.py").as_uri()
    open_doc(client, uri, SOURCE)
    (item,) = (await inline(client, uri, 2, len("    return"))).items
    cid = item_id(item)
    client.protocol.notify("strop/didShowCompletion", {"id": cid})
    insert(client, uri, 2, len("    return"), item.insert_text, 2)  # the editor inserts it
    await client.workspace_execute_command_async(t.ExecuteCommandParams(
        command="strop.accept", arguments=[{"id": cid}]))
    row = await eventually(lambda: next((r for r in rows(home) if r["id"] == cid and r["outcome"] == "accepted"), None))
    assert row["accepted_chars"] == len(item.insert_text) and row["shown_at"]
    # the user keeps all but the last character, then saves
    end = len("    return") + len(item.insert_text)
    client.text_document_did_change(t.DidChangeTextDocumentParams(
        text_document=t.VersionedTextDocumentIdentifier(uri=uri, version=3),
        content_changes=[t.TextDocumentContentChangePartial(
            range=t.Range(t.Position(2, end - 1), t.Position(2, end)), text="")]))
    client.text_document_did_save(t.DidSaveTextDocumentParams(text_document=t.TextDocumentIdentifier(uri=uri)))
    row = await eventually(lambda: next((r for r in rows(home) if r["id"] == cid and r["retained_chars"] is not None), None))
    assert row["retained_chars"] == len(item.insert_text) - 1


async def test_dismiss_and_partial_accept_notifications(served):
    client, home, root = served
    uri = (root / "dis.py").as_uri()
    open_doc(client, uri, SOURCE)
    (item,) = (await inline(client, uri, 2, len("    return"))).items
    cid = item_id(item)
    client.protocol.notify("strop/didShowCompletion", {"id": cid})
    client.protocol.notify("strop/didDismissCompletion", {"id": cid})
    await eventually(lambda: any(r["id"] == cid and r["outcome"] == "dismissed" for r in rows(home)))
    change_full(client, uri, SOURCE.replace("    return\n", "    return \n"), 2)
    (item2,) = (await inline(client, uri, 2, len("    return "))).items
    cid2 = item_id(item2)
    client.protocol.notify("strop/didPartiallyAcceptCompletion", {"id": cid2, "acceptedLength": 1})
    row = await eventually(lambda: next((r for r in rows(home) if r["id"] == cid2 and r["outcome"] == "partial"), None))
    assert row["accepted_chars"] == 1


async def test_typed_through_needs_no_model_call(served):
    client, home, root = served
    uri = (root / "typed.py").as_uri()
    open_doc(client, uri, SOURCE)
    (item,) = (await inline(client, uri, 2, len("    return"))).items
    text = item.insert_text
    assert len(text) >= 2
    calls = (await status(client))["modelCalls"]
    insert(client, uri, 2, len("    return"), text[:2], 2)
    (item2,) = (await inline(client, uri, 2, len("    return") + 2)).items
    assert item2.insert_text == text[2:]
    assert item_id(item2) == item_id(item)
    assert (await status(client))["modelCalls"] == calls
    # The answer without the model reaches the log, so `strop stats` counts it.
    from server.stats import compute

    typed = [r for r in rows(home) if r["source"] == "typed-through" and r["path"].endswith("typed.py")]
    assert len(typed) == 1 and typed[0]["completion"] == text[2:] and typed[0]["prefix"] == ""
    assert compute(rows(home))["total"]["without_model"] >= 1


async def test_newer_request_supersedes_older_ones(served):
    client, home, root = served
    uri = (root / "race.py").as_uri()
    open_doc(client, uri, SOURCE)
    before = await status(client)
    calls, superseded = before["modelCalls"], getattr(before["unanswered"], "superseded", 0)
    futures = []
    for i in range(5):
        change_full(client, uri, SOURCE.replace("    return\n", "    return " + "x" * i + "\n"), 2 + i)
        futures.append(asyncio.ensure_future(inline(client, uri, 2, len("    return ") + i)))
    results = await asyncio.gather(*futures)
    assert results[-1].items, "the newest request is answered with a completion"
    assert all(not r.items for r in results[:-1] if r is not None) or sum(bool(r.items) for r in results) <= 2
    # Each request runs the model at most once, and every one the next request found waiting or
    # running got nothing. Whether a superseded one had already started depends on whether the
    # worker took it before the next request was planned (about a millisecond either way), so
    # test_realtime holds the worker to check that a waiting one never starts.
    st = await status(client)
    assert st["modelCalls"] - calls <= 5
    assert getattr(st["unanswered"], "superseded", 0) - superseded >= sum(not r.items for r in results[:-1] if r is not None)


async def test_cancel_request_is_honoured_and_server_keeps_serving(served):
    client, home, root = served
    uri = (root / "cancel.py").as_uri()
    open_doc(client, uri, SOURCE)
    fut = client.protocol.send_request("textDocument/inlineCompletion", t.InlineCompletionParams(
        text_document=t.TextDocumentIdentifier(uri=uri), position=t.Position(2, len("    return")),
        context=t.InlineCompletionContext(trigger_kind=t.InlineCompletionTriggerKind.Invoked)), msg_id="cancel-me")
    client.protocol.notify("$/cancelRequest", t.CancelParams(id="cancel-me"))
    try:
        await asyncio.wait_for(asyncio.wrap_future(fut), 30)
    except JsonRpcException as err:
        assert err.code == t.LSPErrorCodes.RequestCancelled or "cancel" in str(err).lower()
    result = await inline(client, uri, 2, len("    return"))
    assert result.items


async def test_utf16_positions_on_non_ascii_lines(served):
    client, home, root = served
    uri = (root / "uni.py").as_uri()
    line = 'greeting = "héllo 😀 wörld"; n = len(greeting) +'
    text = "import os\n" + line + "\n"
    open_doc(client, uri, text)
    utf16_col = len(line.encode("utf-16-le")) // 2  # 😀 is two UTF-16 code units
    assert utf16_col == len(line) + 1
    result = await inline(client, uri, 1, utf16_col)
    if result.items:
        cid = item_id(result.items[0])
        row = next(r for r in rows(home) if r["id"] == cid)
        assert row["prefix"].endswith(line), "the cursor maps to the end of the line, not one char early"
    # A position inside the emoji's surrogate pair and past the end are handled, not crashes.
    await inline(client, uri, 1, line.index("😀") + 1)
    await inline(client, uri, 1, utf16_col + 50)


async def test_classic_completion_for_older_clients(served):
    client, home, root = served
    uri = (root / "classic.py").as_uri()
    open_doc(client, uri, SOURCE)
    result = await client.text_document_completion_async(t.CompletionParams(
        text_document=t.TextDocumentIdentifier(uri=uri), position=t.Position(2, len("    return"))))
    (item,) = result.items
    assert item.text_edit.new_text.strip() and item.command.command == "strop.accept"


async def test_toggle_disables_completions(served):
    client, home, root = served
    uri = (root / "toggle.py").as_uri()
    open_doc(client, uri, SOURCE)
    off = await client.workspace_execute_command_async(t.ExecuteCommandParams(command="strop.toggle",
                                                                              arguments=[{"enabled": False}]))
    assert (off["enabled"] if isinstance(off, dict) else off.enabled) is False
    result = await inline(client, uri, 2, len("    return"))
    assert result is None or not result.items
    assert (await status(client))["state"] == "disabled"
    await client.workspace_execute_command_async(t.ExecuteCommandParams(command="strop.toggle",
                                                                        arguments=[{"enabled": True}]))


@pytest.mark.parametrize("case", ["unknown_doc", "line_out_of_range", "negative"])
async def test_bad_positions_get_an_error_response(served, case):
    client, home, root = served
    uri = (root / "bad.py").as_uri()
    open_doc(client, uri, SOURCE)
    target = {"unknown_doc": ((root / "nope.py").as_uri(), 0, 0), "line_out_of_range": (uri, 500, 0),
              "negative": (uri, 0, 0)}[case]
    if case == "negative":
        # lsprotocol refuses to build a negative Position, so send raw JSON as a broken client would
        fut = send_raw(client, "textDocument/inlineCompletion", {
            "textDocument": {"uri": uri}, "position": {"line": -1, "character": 0},
            "context": {"triggerKind": 1}}, "negative-position")
        with pytest.raises(JsonRpcException):
            await asyncio.wait_for(asyncio.wrap_future(fut), 10)
    else:
        with pytest.raises(JsonRpcException) as err:
            await inline(client, *target)
        assert "not open" in str(err.value) or "outside" in str(err.value)
    assert (await inline(client, uri, 2, len("    return"))).items, "the server keeps serving"


async def test_malformed_params_do_not_kill_the_server(served):
    client, home, root = served
    uri = (root / "mal.py").as_uri()
    open_doc(client, uri, SOURCE)
    fut = send_raw(client, "textDocument/inlineCompletion", {"textDocument": {"uri": uri}}, "no-position")
    with pytest.raises(JsonRpcException):
        await asyncio.wait_for(asyncio.wrap_future(fut), 10)
    fut = send_raw(client, "workspace/executeCommand", {"command": "strop.accept", "arguments": []}, "no-id")
    with pytest.raises(JsonRpcException):
        await asyncio.wait_for(asyncio.wrap_future(fut), 10)
    client.protocol.notify("strop/didPartiallyAcceptCompletion", {"id": 3, "acceptedLength": "x"})
    assert (await inline(client, uri, 2, len("    return"))).items


async def test_enormous_line_and_binary_content_get_empty_results(served):
    client, home, root = served
    big = (root / "big.py").as_uri()
    open_doc(client, big, "x = '" + "a" * 50_000 + "'\n")
    result = await inline(client, big, 0, 10)
    assert not result.items
    binary = (root / "bin.py").as_uri()
    open_doc(client, binary, "abc\x00def\n")
    assert not (await inline(client, binary, 0, 3)).items


async def test_start_of_an_empty_file_gets_an_empty_result(served):
    """SmolLM2 adds no BOS, so an empty document is an empty prompt: nothing to continue, no error."""
    client, home, root = served
    uri = (root / "empty.py").as_uri()
    open_doc(client, uri, "")
    calls = (await status(client))["modelCalls"]
    result = await inline(client, uri, 0, 0)
    assert result is not None and not result.items
    assert (await status(client))["modelCalls"] == calls
    assert (await status(client))["state"] != "error"
