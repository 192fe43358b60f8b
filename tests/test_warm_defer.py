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
