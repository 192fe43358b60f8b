"""A cursor report's warm-up waits a moment for the request the editor sends on the same debounce,
and runs after that request is answered instead of in front of it."""

from __future__ import annotations

import asyncio

from lsprotocol import types as t

from server import lsp
from server.config import ServeConfig


async def test_a_cursor_report_warm_up_is_deferred_held_by_a_request_and_replaced_by_a_newer_one() -> None:
    server = lsp.StropServer(ServeConfig())
    ran: list[tuple[str, int]] = []
    warm_now = server._warm_now

    def record(uri: str, pos: t.Position) -> None:
        ran.append((uri, pos.line))
        warm_now(uri, pos)  # no completer here: it stops after its bookkeeping

    server._warm_now = record
    server.loop = asyncio.get_running_loop()
    try:
        server.warm_up("file:///a.py", t.Position(3, 0))
        server.warm_up("file:///a.py", t.Position(4, 0))  # the newer position replaces the older
        server.warm_up("file:///b.py", t.Position(7, 0))
        assert ran == []  # not in front of a request that may be right behind
        held = server.hold_warm_up("file:///b.py")  # b's request came
        assert held == ("file:///b.py", t.Position(7, 0))
        await asyncio.sleep(lsp.WARM_DEFER_S * 3)
        assert ran == [("file:///a.py", 4)]
        server.warm_up(*held)  # b's request answered: its warm-up runs now
        await asyncio.sleep(lsp.WARM_DEFER_S * 3)
        assert ran == [("file:///a.py", 4), ("file:///b.py", 7)]
        assert server.hold_warm_up("file:///b.py") is None and server.warm_timers == {}
    finally:
        server.engine.close()


def test_the_cursor_after_an_edit_is_the_end_of_the_inserted_text() -> None:
    from pygls.workspace.position_codec import PositionCodec

    from server.documents import LspTextDocument

    def after(text, l0, c0, l1, c1, new, encoding=t.PositionEncodingKind.Utf16):
        doc = LspTextDocument("file:///a.py", source=text, position_codec=PositionCodec(encoding))
        change = t.TextDocumentContentChangePartial(range=t.Range(t.Position(l0, c0), t.Position(l1, c1)), text=new)
        doc.apply_change(change)
        return lsp.cursor_after(doc, [change])

    text = "def f(x):\n    return x\n"
    assert after(text, 1, 10, 1, 10, "a") == t.Position(1, 11)  # a keystroke
    assert after(text, 1, 12, 1, 12, "\n    ") == t.Position(2, 4)  # Enter, indented
    assert after(text, 1, 4, 1, 10, "") == t.Position(1, 4)  # a deletion
    assert after(text, 1, 10, 1, 4, "") == t.Position(1, 4)  # its range reversed
    assert after(text, 0, 0, 0, 0, "x = '😀'\r\ny") == t.Position(1, 1)
    assert after(text, 0, 0, 0, 0, "😀") == t.Position(0, 2)  # UTF-16 code units
    assert after(text, 0, 0, 0, 0, "😀", t.PositionEncodingKind.Utf32) == t.Position(0, 1)
    assert after(text, 1, 2**31 - 1, 1, 2**31 - 1, "!") == t.Position(1, 13)  # past the line's end: at its end
    doc = LspTextDocument("file:///a.py", source=text)
    assert lsp.cursor_after(doc, [t.TextDocumentContentChangeWholeDocument(text="all new")]) is None
    two = [t.TextDocumentContentChangePartial(range=t.Range(t.Position(0, 0), t.Position(0, 0)), text="a")] * 2
    assert lsp.cursor_after(doc, two) is None  # several at once (multi-cursor)
