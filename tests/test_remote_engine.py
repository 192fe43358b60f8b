"""Shared inference: strop's remote engine against a real server process on 127.0.0.1
(llama-cpp-python's OpenAI-compatible server, serving the same SmolLM2 GGUF strop tokenizes with)."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from concurrent.futures import TimeoutError as FutureTimeout
from pathlib import Path

import httpx
import pytest

from core.decode import Job
from core.errors import RemoteEngineError, RemoteModelMismatch
from core.models import resolve
from server.engine import Engine
from server.remote_engine import RemoteEngine
from tests.lsp_support import inline, open_doc, rows, start, status, until_status

pytestmark = [pytest.mark.slow]

PROMPTS = [
    "import os\n\n\ndef read_file(path):\n    ",
    "def add(a, b):\n    \"\"\"Return the sum of a and b.\"\"\"\n    return",
    "class Point:\n    def __init__(self, x, y):\n        self.x = x\n        self.y = y\n\n    def norm(self):\n",
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ModelServer:
    """`python -m llama_cpp.server` as a subprocess; its output is kept for assertions."""

    def __init__(self, model: Path, log: Path, *, threads: int = 1, port: int | None = None, wait: bool = True) -> None:
        self.port = port or _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "llama_cpp.server", "--model", str(model), "--host", "127.0.0.1",
             "--port", str(self.port), "--n_ctx", "4096", "--n_threads", str(threads),
             "--n_threads_batch", str(threads)],
            stdout=log.open("wb"), stderr=subprocess.STDOUT)
        if wait:
            self.wait()

    def wait(self) -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.output()
            try:
                if httpx.get(f"{self.url}/v1/models", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.2)
        raise TimeoutError(f"llama_cpp.server did not start: {self.output()}")

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


@pytest.fixture(scope="module")
def model_server(smollm_gguf, tmp_path_factory):
    srv = ModelServer(smollm_gguf, tmp_path_factory.mktemp("srv") / "server.log")
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def resolved(smollm_gguf):
    return resolve(smollm_gguf, None)


@pytest.fixture(scope="module")
def remote(model_server, resolved):
    engine = RemoteEngine(model_server.url, n_ctx=4096, first_token_ms=30000)
    engine.load(resolved)
    yield engine
    engine.close()


def _job(engine, text: str, key: str = "doc", **kw) -> Job:
    block_head = text.rsplit("\n", 1)[-1]
    return Job(key=key, pieces=(), tokens=engine.model.tokenize(text), max_tokens=kw.pop("max_tokens", 48),
               single_line=False, block_head=block_head, **kw)


def test_connect_detects_the_server_and_checks_its_tokenizer(remote):
    info = remote.info
    assert info.kind == "openai"
    assert info.prompt_form == "text"  # llama-cpp-python's server takes no token-id prompts
    assert info.tokenizer == "matches"
    assert info.model.endswith(".gguf")


def test_remote_greedy_generation_equals_the_local_engine(remote, resolved):
    local = Engine(n_ctx=4096, n_threads=1, n_gpu_layers=0, slots=1)
    local.load(resolved)
    try:
        for text in PROMPTS:
            want = local.submit(_job(local, text)).result(120)
            got = remote.submit(_job(remote, text)).result(120)
            assert want is not None and got is not None
            assert got.text == want.text, text
            # This server sends text; the ids are its local tokenization, equal here to the generated ids.
            assert got.tokens == want.tokens, text
            assert got.stop_reason == want.stop_reason, text
    finally:
        local.close()


def test_cancellation_closes_the_stream_and_the_server_stops(remote, model_server):
    counting = ", ".join(str(i) for i in range(1, 40)) + ", "
    long_job = Job(key="count", pieces=(), tokens=remote.model.tokenize(counting), max_tokens=1500,
                   single_line=False)
    fut = remote.submit(long_job)
    time.sleep(1.5)  # well into generation (about 100 tokens/s here)
    assert not fut.done(), "the counting prompt should still be generating"
    remote.abort("count")
    assert fut.result(5) is None
    t0 = time.perf_counter()
    after = remote.submit(_job(remote, PROMPTS[1], key="other", max_tokens=8)).result(60)
    elapsed = time.perf_counter() - t0
    assert after is not None
    # The server runs one request at a time: had it kept generating 1500 tokens (~15 s), this one waits.
    assert elapsed < 5, f"the next request waited {elapsed:.1f}s: the server kept generating"
    deadline = time.monotonic() + 5
    while "Disconnected from client" not in model_server.output() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert "Disconnected from client" in model_server.output()


def test_supersession_answers_the_older_request_none(remote):
    first = remote.submit(Job(key="same", pieces=(), tokens=remote.model.tokenize("1, 2, 3, 4, 5, "),
                              max_tokens=1000, single_line=False))
    time.sleep(0.3)
    second = remote.submit(_job(remote, PROMPTS[0], key="same"))
    assert first.result(5) is None
    assert second.result(60) is not None


def test_unreachable_server_is_a_clear_error(resolved):
    engine = RemoteEngine(f"http://127.0.0.1:{_free_port()}", n_ctx=4096)
    try:
        with pytest.raises(RemoteEngineError, match="unreachable .*connection refused.*STROP_ENGINE_URL"):
            engine.load(resolved)
    finally:
        engine.close()


def test_a_server_with_another_model_is_refused_and_said_so(model_server, tiny_fim_model):
    other = resolve(tiny_fim_model.gguf_q8, None)  # strop's local model differs from the served SmolLM2
    engine = RemoteEngine(model_server.url, n_ctx=2048)
    try:
        with pytest.raises(RemoteModelMismatch, match="tokenizer differs from the local model model-q8_0.gguf"):
            engine.load(other)
        assert engine.info is None
        with pytest.raises(RemoteEngineError, match="not connected"):
            engine.submit(Job(key="k", pieces=(), tokens=[1, 2], max_tokens=4, single_line=True)).result(5)
    finally:
        engine.close()


def test_a_bad_url_is_a_clear_error():
    with pytest.raises(RemoteEngineError, match="unknown server kind 'grpc'"):
        RemoteEngine("grpc+http://127.0.0.1:1", n_ctx=512)


def _engine(st: dict) -> dict:
    """strop/status's llamaSettings (the remote engine's state); pygls hands nested objects as tuples."""
    value = st["llamaSettings"]
    return value if isinstance(value, dict) else value._asdict()


SOURCE = 'import os\n\n\ndef read_file(path):\n    """Return the text of the file at path."""\n    \n'


async def test_lsp_round_trip_through_the_remote_engine(model_server, smollm_gguf, tmp_path):
    home, root = tmp_path / "home", tmp_path / "repo"
    root.mkdir()
    client = await start(smollm_gguf, home, root, "--engine", model_server.url)
    try:
        st = await status(client)
        assert _engine(st)["active"] == "remote" and st["workerPid"] is None  # no local model runs
        uri = (root / "read.py").as_uri()
        open_doc(client, uri, SOURCE)
        result = await inline(client, uri, 5, 4)
        (item,) = result.items
        assert item.insert_text.strip()
        row = next(r for r in rows(home) if r["completion"] == item.insert_text)
        st = await status(client)
        assert row["model_version"] == st["modelVersion"] and row["n_gen_tokens"] > 0
        assert st["modelCalls"] >= 1 and _engine(st)["fallbacks"] == 0
    finally:
        await client.shutdown_session()


async def test_killed_server_falls_back_to_local_and_the_user_is_told_once(smollm_gguf, tmp_path):
    srv = ModelServer(smollm_gguf, tmp_path / "server.log")
    home, root = tmp_path / "home", tmp_path / "repo"
    root.mkdir()
    client = await start(smollm_gguf, home, root, "--engine", srv.url)
    try:
        uri = (root / "read.py").as_uri()
        open_doc(client, uri, SOURCE)
        assert (await inline(client, uri, 5, 4)).items
        assert _engine(await status(client))["active"] == "remote"
        srv.stop()
        result = await inline(client, uri, 5, 4 - 1)  # a new position: not answered from the cache
        assert result.items and result.items[0].insert_text.strip()
        st = await status(client)
        assert _engine(st)["active"] == "local" and _engine(st)["fallbacks"] >= 1
        assert st["workerPid"] is not None
        assert (await inline(client, uri, 5, 2)).items is not None
        told = [m for m in client.messages if "remote engine" in m.message]
        assert len(told) == 1, [m.message for m in client.messages]
        assert "unreachable" in told[0].message and "local model" in told[0].message
        assert len(client.messages) == 1
    finally:
        await client.shutdown_session()
        srv.stop()


async def test_remote_back_after_restart_is_used_again(smollm_gguf, tmp_path):
    srv = ModelServer(smollm_gguf, tmp_path / "server.log")
    home, root = tmp_path / "home", tmp_path / "repo"
    root.mkdir()
    client = await start(smollm_gguf, home, root, "--engine", srv.url, env={"STROP_ENGINE_FALLBACK": "none"})
    try:
        uri = (root / "read.py").as_uri()
        open_doc(client, uri, SOURCE)
        srv.stop()
        assert not (await inline(client, uri, 5, 4)).items  # no fallback: no suggestion, no hang
        st = await status(client)
        assert _engine(st)["active"] == "none" and st["workerPid"] is None
        # Restarted on the same port; strop's background probe finds it (no request needed).
        again = ModelServer(smollm_gguf, tmp_path / "server2.log", port=srv.port, wait=False)
        try:
            await until_status(client, lambda s: _engine(s)["active"] == "remote", timeout_s=120)
            assert (await inline(client, uri, 5, 3)).items
        finally:
            again.stop()
    finally:
        await client.shutdown_session()
