"""A server whose model cannot be loaded stays up and says why (status + showMessage), and a
promoted model that cannot be loaded is never swapped in."""

import asyncio
import os
from pathlib import Path

import pytest

from tests.lsp_support import inline, open_doc, start, status

pytestmark = [pytest.mark.slow]


def test_corrupt_model_is_reported_not_fatal(tmp_path):
    corrupt = tmp_path / "corrupt.gguf"
    corrupt.write_bytes(b"GGUF" + os.urandom(65536))

    async def scenario():
        client = await start(corrupt, tmp_path / "home", tmp_path)
        st = await status(client)
        assert st["state"] == "error" and "could not load" in st["message"]
        assert any("could not load" in m.message for m in client.messages)
        uri = (tmp_path / "a.py").as_uri()
        open_doc(client, uri, "x = 1\n")
        result = await inline(client, uri, 0, 5)
        assert result is None or not result.items
        await client.shutdown_session()

    asyncio.run(scenario())


def test_unloadable_promotion_is_never_swapped_in(tmp_path, tiny_fim_model, smollm_gguf):
    os.environ["STROP_HOME"] = str(tmp_path / "home")
    from core.registry import repo_key
    from distill.registry import Registry

    reg = Registry(tmp_path / "home" / "registry")
    key = repo_key(tmp_path)
    first = reg.add_version(key, Path(tiny_fim_model.gguf_q8), {"name": "tiny", "source": "import"})
    reg.promote(key, first.version)
    second = reg.add_version(key, Path(smollm_gguf), {"name": "smol", "source": "import"})
    reg.promote(key, second.version)
    reg.rollback(key)

    async def scenario():
        from lsprotocol import types as t

        from tests import lsp_support
        c = lsp_support.make_test_lsp_client()
        await c.start_io(__import__("sys").executable, "-m", "strop", "serve", "--repo", str(tmp_path),
                         env=dict(os.environ, STROP_REGISTRY_POLL_S="0.3"))
        await c.initialize_session(t.InitializeParams(capabilities=lsp_support.CLIENT_CAPS, root_uri=tmp_path.as_uri()))
        st = await lsp_support.wait_ready(c)
        assert st["modelVersion"] == first.version
        # the promoted file is damaged after promotion (disk error, a bad copy): the server must keep
        # serving the model it has
        gguf = Path(second.gguf)
        os.chmod(gguf, 0o644)
        data = gguf.read_bytes()
        gguf.write_bytes(data[: len(data) // 3])
        reg_file = tmp_path / "home" / "registry" / key / "promoted.json"
        import json
        doc = json.loads(reg_file.read_text())
        doc["version"] = second.version
        reg_file.write_text(json.dumps(doc))
        await asyncio.sleep(3)
        st = await status(c)
        assert st["modelVersion"] == first.version and st["state"] != "error"
        uri = (tmp_path / "b.py").as_uri()
        open_doc(c, uri, "def f(x):\n    return ")
        assert await inline(c, uri, 1, 11) is not None
        await c.shutdown_session()

    asyncio.run(scenario())
