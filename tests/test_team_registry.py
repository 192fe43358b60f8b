"""The team registry: versions published into a directory that a real `python -m http.server` serves,
followed by two real `strop serve` processes (each its own STROP_HOME) that fetch, verify and hot-swap
to the version a real `strop distill` run promoted and published; a corrupted published GGUF is
refused and the old model keeps serving."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from lsprotocol import types as t

from core.registry import GGUF_NAME, RegistryReader, repo_key
from core.team_registry import TeamRegistry, TeamRegistryError
from tests import lsp_support

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def http_registry(tmp_path):
    """(served directory, its http:// URL): a real static file server on 127.0.0.1."""
    root = tmp_path / "shared"
    root.mkdir()
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1",
                             "--directory", str(root)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 20
    while True:
        try:
            httpx.get(url + "/", timeout=1)
            break
        except httpx.HTTPError:
            if time.monotonic() > deadline:
                proc.kill()
                raise
            time.sleep(0.1)
    yield root, url
    proc.terminate()
    proc.wait(10)


@pytest.fixture
def publisher(tmp_path, fixture_repo_dir):
    """A publisher's local registry (as a nightly job's STROP_HOME would hold it) for the repository."""
    from distill.registry import Registry

    return Registry(tmp_path / "publisher" / "registry"), repo_key(fixture_repo_dir)


@pytest.fixture
def fixture_repo_dir(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "main.py").write_text("import os\n\n\ndef main():\n    return os.getcwd()\n")
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    return repo


def _register(registry, key, gguf: Path, name: str):
    return registry.add_version(key, gguf, {"source": "import", "name": name})


def test_fetch_streams_verifies_and_refuses_a_corrupt_file(tmp_path, http_registry, publisher, tiny_fim_model):
    shared, url = http_registry
    registry, key = publisher
    v1 = _register(registry, key, Path(tiny_fim_model.gguf_q8), "tiny-q8")
    TeamRegistry(str(shared), key).publish(v1)
    local = RegistryReader(tmp_path / "laptop" / "registry")
    team = TeamRegistry(url, key, local)
    assert team.promoted().version == v1.version
    got = team.fetch()
    assert got.read_bytes() == Path(tiny_fim_model.gguf_q8).read_bytes()
    assert local.promoted_version(key) == v1.version and local.get(key, v1.version).sha256 == v1.sha256

    v2 = _register(registry, key, Path(tiny_fim_model.gguf_f32), "tiny-f32")
    published = TeamRegistry(shared.as_uri(), key).publish(v2, promote=False)
    gguf = published / GGUF_NAME
    data = bytearray(gguf.read_bytes())
    data[len(data) // 2] ^= 0xFF  # bytes changed after the manifest was written
    gguf.write_bytes(bytes(data))
    TeamRegistry(str(shared), key).promote_shared(v2.version)
    with pytest.raises(TeamRegistryError, match="corrupt or incomplete.*not changed.*Publish"):
        team.fetch()
    assert local.promoted_version(key) == v1.version
    assert local.version_names(key) == [v1.version]
    assert not [p for p in local.versions_dir(key).iterdir() if p.name.startswith(".tmp-")]

    with pytest.raises(TeamRegistryError, match="HTTP registries are read-only"):
        team.publish(v2)
    with pytest.raises(TeamRegistryError, match="cannot download.*STROP_REGISTRY_URL"):
        TeamRegistry(f"http://127.0.0.1:{_free_port()}", key, local).promoted()


async def _serve_registry_model(home: Path, repo: Path, url: str):
    """`strop serve` without --model: it serves the repository's (fetched) promoted model."""
    c = lsp_support.make_test_lsp_client()
    env = {**os.environ, "STROP_HOME": str(home), "STROP_REGISTRY_URL": url, "STROP_REGISTRY_POLL_S": "0.5",
           "STROP_TIME_CAP_MS": "30000", **lsp_support.TIMING_FREE}
    await c.start_io(sys.executable, "-m", "strop", "serve", "--repo", str(repo), env=env)
    await c.initialize_session(t.InitializeParams(capabilities=lsp_support.CLIENT_CAPS, root_uri=repo.as_uri()))
    return c


def _strop(home: Path, *args: str, timeout: float = 300, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "strop", *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "STROP_HOME": str(home), "TQDM_DISABLE": "1", **env})


def test_two_servers_follow_what_a_distill_run_publishes_and_refuse_a_corrupt_version(
        tmp_path, http_registry, tiny_fim_model):
    """The nightly job's machine (its own STROP_HOME) imports the base and publishes it; two laptops
    follow the registry over HTTP; `strop distill --once` with `[registry] publish` promotes a new
    version and publishes it; both laptops hot-swap to it. A corrupt version published after it is
    refused and v2 keeps serving."""
    from distill.registry import Registry
    from tests.fixtures.cycle_settings import distill_args
    from tests.fixtures.fixture_repo import make_fixture_repo

    shared, url = http_registry
    repo = make_fixture_repo(tmp_path / "repo")
    key = repo_key(repo)
    nightly = tmp_path / "nightly"
    out = _strop(nightly, "models", "import", str(tiny_fim_model.gguf_q8), "--name", "tiny-q8", "--repo", str(repo),
                 "--promote")
    assert out.returncode == 0, out.stderr
    out = _strop(nightly, "models", "publish", "--to", str(shared), "--repo", str(repo))
    assert out.returncode == 0, out.stderr
    v1 = RegistryReader(nightly / "registry").promoted_version(key)
    homes = [tmp_path / "alice", tmp_path / "bob"]
    for home in homes:  # each laptop fetched v1 once (as `strop serve` would at its first poll)
        TeamRegistry(url, key, RegistryReader(home / "registry")).fetch()

    async def scenario():
        clients = [await _serve_registry_model(home, repo, url) for home in homes]
        try:
            for c in clients:
                st = await lsp_support.wait_ready(c)
                assert st["modelVersion"] == v1, st
            run = await asyncio.to_thread(lambda: subprocess.run(
                distill_args(repo), capture_output=True, text=True, timeout=900,
                env={**os.environ, "STROP_HOME": str(nightly), "TQDM_DISABLE": "1",
                     "STROP_REGISTRY_URL": str(shared), "STROP_REGISTRY_PUBLISH": "true"}))
            assert run.returncode == 0, run.stdout + run.stderr
            noise = [line for line in (run.stdout + run.stderr).splitlines()  # progress only, no libraries' chatter
                     if line.startswith(("DEBUG ", "INFO gguf")) or "FutureWarning" in line]
            assert noise == [], noise
            v2 = RegistryReader(nightly / "registry").promoted_version(key)
            assert v2 != v1 and f"published {v2} to the team registry" in run.stdout + run.stderr
            for c in clients:
                st = await lsp_support.until_status(c, lambda s: s.get("modelVersion") == v2, 120)
                assert st["model"].endswith("-distilled"), st
            promoted_bytes = RegistryReader(nightly / "registry").get(key, v2).gguf.read_bytes()
            for home in homes:
                assert RegistryReader(home / "registry").get(key, v2).gguf.read_bytes() == promoted_bytes

            registry = Registry(nightly / "registry")
            v3 = registry.add_version(key, Path(tiny_fim_model.gguf_f32), {"source": "import", "name": "tiny-f32"})
            gguf = TeamRegistry(str(shared), key).publish(v3, promote=False) / GGUF_NAME
            gguf.write_bytes(gguf.read_bytes()[:-4096])  # truncated after the manifest was written
            TeamRegistry(str(shared), key).promote_shared(v3.version)
            for c in clients:
                st = await lsp_support.until_status(c, lambda s: "corrupt or incomplete" in (s.get("message") or ""), 60)
                assert st["modelVersion"] == v2 and v3.version in st["message"]
            await asyncio.sleep(1.5)  # a few more polls: still refused, still serving v2
            for c, home in zip(clients, homes):
                st = await lsp_support.status(c)
                assert st["modelVersion"] == v2 and st["state"] != "error"
                assert RegistryReader(home / "registry").promoted_version(key) == v2
                assert v3.version not in RegistryReader(home / "registry").version_names(key)
        finally:
            for c in clients:
                await c.shutdown_session()

    asyncio.run(scenario())


def test_strop_models_publish_and_the_cycles_publish_switch(tmp_path, monkeypatch, fixture_repo_dir, tiny_fim_model):
    from types import SimpleNamespace

    from distill.cycle import _publish
    from distill.registry import Registry

    home, shared, key = tmp_path / "nightly", tmp_path / "shared", repo_key(fixture_repo_dir)
    registry = Registry(home / "registry")
    v1 = _register(registry, key, Path(tiny_fim_model.gguf_q8), "tiny-q8")
    registry.promote(key, v1.version)
    env = {**os.environ, "STROP_HOME": str(home)}

    def publish(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "strop", "models", "publish", *args, "--repo", str(fixture_repo_dir)],
                              env=env, capture_output=True, text=True, timeout=120)

    proc = publish("--to", shared.as_uri())
    assert proc.returncode == 0, proc.stderr
    assert json.loads((shared / key / "promoted.json").read_text())["version"] == v1.version
    assert (shared / key / "versions" / v1.version / GGUF_NAME).read_bytes() == Path(tiny_fim_model.gguf_q8).read_bytes()
    proc = publish("--to", "http://127.0.0.1:9/r")
    assert proc.returncode != 0 and "HTTP registries are read-only" in proc.stderr
    proc = publish()
    assert proc.returncode != 0 and "nowhere to publish" in proc.stderr

    # [registry] publish = true: the cycle's register stage publishes what it promotes
    v2 = _register(registry, key, Path(tiny_fim_model.gguf_f32), "tiny-f32")
    run = SimpleNamespace(key=key, registry=registry)
    monkeypatch.setenv("STROP_HOME", str(home))
    monkeypatch.setenv("STROP_REGISTRY_URL", str(shared))
    _publish(run, v2)  # publish = false (the default): nothing
    assert json.loads((shared / key / "promoted.json").read_text())["version"] == v1.version
    monkeypatch.setenv("STROP_REGISTRY_PUBLISH", "true")
    _publish(run, v2)
    state = json.loads((shared / key / "promoted.json").read_text())
    assert state["version"] == v2.version and state["history"] == [v1.version]
