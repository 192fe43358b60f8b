"""The real server over LSP with the tiny FIM model built by the fixture (StarCoder-style tokens),
exported through strop's own GGUF path."""

from __future__ import annotations

from pathlib import Path

import pytest
import pytest_asyncio

from core.fim import render
from tests.lsp_support import inline, item_id, open_doc, rows, start, status

pytestmark = [pytest.mark.slow, pytest.mark.asyncio(loop_scope="module")]

SOURCE = "import os\n\n\ndef read(path):\n    with open(path) as f:\n        return f.read()\n\n\ndef main():\n    data = \n    print(data)\n"


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def served(tiny_fim_model, tmp_path_factory):
    home = tmp_path_factory.mktemp("home")
    root = tmp_path_factory.mktemp("repo")
    client = await start(Path(tiny_fim_model.gguf_q8), home, root)
    yield client, home, root
    await client.shutdown_session()


async def test_fim_format_detected_from_gguf(served):
    client, home, root = served
    st = await status(client)
    assert st["fim"] == "starcoder"


async def test_fim_completion_uses_the_suffix(served):
    client, home, root = served
    uri = (root / "main.py").as_uri()
    open_doc(client, uri, SOURCE)
    line = SOURCE.split("\n").index("    data = ")
    result = await inline(client, uri, line, len("    data = "))
    # The fixture model is deterministic (fixed seed, greedy decoding); here it writes "()".
    assert result is not None and result.items, "the tiny FIM model completes `data = `"
    row = next(r for r in rows(home) if r["id"] == item_id(result.items[0]))
    assert row["suffix"].startswith("\n    print(data)")
    assert row["prefix"].endswith("    data = ")
    assert row["n_prompt_tokens"] > 10
    # the prompt layout the engine used: typed part of the line after the middle marker, its
    # indentation before the suffix marker
    from core.context import build
    from core.fim import KNOWN_FORMATS

    fmt = next(f for f in KNOWN_FORMATS if f.name == "starcoder")
    ctx = build(SOURCE, SOURCE.index("    data = ") + len("    data = "), fmt=fmt, count=len)
    assert render(ctx.pieces).endswith("\n    <fim_suffix>\n    print(data)\n<fim_middle>data = ")
    assert (await status(client))["modelCalls"] >= 1
