"""The whole distillation cycle on CPU, on a fixture repository with git history and the tiny FIM
model: split → harvest → sample → train → export → evaluate → register → promote → a running
server swaps to the new model without failing a request. Plus resumption after kill -9."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.fixtures.fixture_repo import GITHUB_TOKEN, NEVER_READ_MARKERS, PLANTED_SECRETS, make_fixture_repo
from tests.fixtures.cycle_settings import distill_args
from tests.lsp_support import inline, open_doc, start, status

pytestmark = [pytest.mark.slow]


def _env(home: Path) -> dict:
    return dict(os.environ, STROP_HOME=str(home), PYTHONUNBUFFERED="1", TQDM_DISABLE="1")


def _distill(repo: Path, home: Path, *extra: str, **kw) -> subprocess.Popen:
    return subprocess.Popen(distill_args(repo) + list(extra), env=_env(home), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, **kw)


def _import_base(tiny_fim_model, repo: Path, home: Path) -> None:
    out = subprocess.run([sys.executable, "-m", "strop", "models", "import", str(tiny_fim_model.gguf_q8),
                          "--name", "tiny-fim", "--repo", str(repo), "--promote"],
                         env=_env(home), capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr


@pytest.fixture
def setup(tmp_path, tiny_fim_model):
    repo = make_fixture_repo(tmp_path / "repo")
    home = tmp_path / "home"
    _import_base(tiny_fim_model, repo, home)
    return repo, home


def _registry(home: Path, repo: Path):
    os.environ["STROP_HOME"] = str(home)
    from core.registry import repo_key
    from distill.registry import Registry

    return Registry(home / "registry"), repo_key(repo)


def _log_accepted_completion(home: Path, repo: Path) -> None:
    """A completion a user accepted and kept in the repository, as `strop serve` logs it."""
    from core.completion_log import CompletionLog, Record

    log = CompletionLog(home / "completions.sqlite3")
    log.add(Record(id="accepted-1", repo=str(repo.resolve()), path="scratch.py", language="python", model="tiny",
                   model_version="v1", prefix=f"import os\nTOKEN = '{GITHUB_TOKEN}'\n\ndef home():\n    return ",
                   suffix="\n", snippets=[],
                   completion="os.path.expanduser('~')", multiline=False))
    log.mark_outcome("accepted-1", "accepted", len("os.path.expanduser('~')"))
    log.mark_retention("accepted-1", len("os.path.expanduser('~')"))
    log.close()


def test_full_cycle_promotes_and_running_server_swaps(setup, tiny_fim_model):
    repo, home = setup
    reg, key = _registry(home, repo)
    base_version = reg.promoted(key).version
    _log_accepted_completion(home, repo)

    async def scenario():
        client = await start(Path(tiny_fim_model.gguf_q8), home, repo, env={"STROP_REGISTRY_POLL_S": "0.5"})
        # serve the registry's model, not an explicit file: restart without --model
        await client.shutdown_session()
        from pytest_lsp import make_test_lsp_client  # noqa: F401  (same client, started without --model)
        from tests import lsp_support
        c = lsp_support.make_test_lsp_client()
        await c.start_io(sys.executable, "-m", "strop", "serve", "--repo", str(repo),
                         env=dict(_env(home), STROP_REGISTRY_POLL_S="0.5", STROP_TIME_CAP_MS="30000"))
        from lsprotocol import types as t
        await c.initialize_session(t.InitializeParams(capabilities=lsp_support.CLIENT_CAPS, root_uri=repo.as_uri()))
        st = await lsp_support.wait_ready(c)
        assert st["modelVersion"] == base_version and st["fim"] == "starcoder"
        uri = (repo / "scratch.py").as_uri()
        open_doc(c, uri, "import os\n\ndef main():\n    path = os.path.join(\n")
        assert (await inline(c, uri, 3, len("    path = os.path.join("))) is not None

        proc = await asyncio.to_thread(lambda: _distill(repo, home, "--set", "mix.repository=0.5"))
        errors, answered = [], 0
        deadline = time.monotonic() + 900
        swapped = None
        while time.monotonic() < deadline:
            try:
                await inline(c, uri, 3, len("    path = os.path.join("))
                answered += 1
            except Exception as err:  # any failed request during the swap is a defect
                errors.append(repr(err))
            st = await status(c)
            if st["modelVersion"] != base_version:
                swapped = st["modelVersion"]
                break
            if proc.poll() is not None and time.monotonic() > deadline - 890 and reg.promoted(key).version == base_version:
                break
            await asyncio.sleep(0.3)
        output = proc.communicate(timeout=60)[0]
        assert proc.returncode == 0, output
        for _ in range(3):  # and it keeps serving with the new model
            await inline(c, uri, 3, len("    path = os.path.join("))
        await c.shutdown_session()
        return swapped, errors, answered, output

    swapped, errors, answered, output = asyncio.run(scenario())
    entry = reg.promoted(key)
    assert entry.version != base_version, output
    assert "and 1 accepted completions" in output, "the accepted completion trains as a verified sample"
    assert swapped == entry.version, "the running server swapped to the promoted model"
    assert errors == [] and answered > 0
    m = entry.manifest
    assert m["parent"] == base_version and m["source"] == "distill"
    assert m["data"]["samples"]["kept"] > 0 and m["decoding"]["temperature"] in (0.0, 0.6)
    mix = m["data"]["mix"]  # all three sources on, each recorded with its weight and its examples
    assert mix["weights"] == {"ssd": 1.0, "repository": 0.5, "log": 1.0}
    assert mix["examples"]["repository"] > 0 and mix["examples"]["log"] == 1
    assert mix["examples"]["ssd"] == m["data"]["samples"]["kept"]
    assert {"exact_match", "edit_similarity", "perplexity"} <= set(m["metrics"]["candidate"])
    for name in ("report.json", "report.txt", "report.png"):
        assert (Path(entry.path) / name).stat().st_size > 0
    # the promoted GGUF keeps the FIM metadata and loads
    import llama_cpp
    llm = llama_cpp.Llama(model_path=str(entry.gguf), n_ctx=64, verbose=False)
    assert llama_cpp.llama_vocab_fim_pre(llm._model.vocab) >= 0
    llm.close()
    # and the LoRA alone, as GGUF, applies on the parent it was trained from
    assert m["adapter"]["applies_to"] == base_version
    llm = llama_cpp.Llama(model_path=str(reg.get(key, base_version).gguf), lora_path=str(Path(entry.path) / "adapter.gguf"),
                          n_ctx=64, verbose=False)
    llm.close()
    # no planted secret (in the repository or in the log) and nothing of a never-read file reached
    # anything the cycle sampled, trained on, evaluated on or registered
    cycle_dir = max((home / "distill" / key).glob("cycle-*"))
    outputs = [p for p in [*cycle_dir.rglob("*"), *Path(entry.path).iterdir()]
               if p.is_file() and p.suffix in (".jsonl", ".json", ".txt")]
    assert {p.name for p in outputs} >= {"prompts.jsonl", "samples.jsonl", "targets.jsonl", "test.jsonl", "manifest.json"}
    for p in outputs:
        text = p.read_text(errors="replace")
        for planted in (*PLANTED_SECRETS, *NEVER_READ_MARKERS.values()):
            assert planted not in text, f"{planted!r} leaked into {p}"
    # nothing changed since: the next run is skipped
    again = _distill(repo, home)
    out = again.communicate(timeout=120)[0]
    assert again.returncode == 0 and "skipped" in out


@pytest.mark.parametrize("stage", ["sample", "train", "export"])
def test_kill_9_mid_stage_then_resume(setup, stage):
    repo, home = setup
    reg, key = _registry(home, repo)
    base = reg.promoted(key).version
    proc = _distill(repo, home, start_new_session=True)
    marker = {"sample": "sample: ", "train": "training a LoRA", "export": "exporting the merged"}[stage]
    if stage == "sample":
        marker = "sampling "
    seen = []
    deadline = time.monotonic() + 600
    for line in proc.stdout:
        seen.append(line)
        if marker in line or time.monotonic() > deadline:
            time.sleep(1.0 if stage != "export" else 0.5)  # let it get into the stage
            os.killpg(proc.pid, signal.SIGKILL)
            break
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL, "".join(seen)
    # the registry and the served model are intact
    assert reg.promoted(key).version == base
    assert not [p for p in (home / "registry" / key / "versions").iterdir() if not p.name.startswith(".")
                and p.name != base]
    # the next run resumes and finishes
    again = _distill(repo, home)
    out = again.communicate(timeout=900)[0]
    assert again.returncode == 0, out
    assert "resuming" in out
    assert reg.promoted(key).version != base


def test_lock_prevents_overlapping_cycles(setup):
    repo, home = setup
    from distill.lock import CycleLock

    reg, key = _registry(home, repo)
    with CycleLock.for_repo(key):
        proc = _distill(repo, home)
        out = proc.communicate(timeout=120)[0]
    assert proc.returncode == 1 and "pid" in out.lower()
