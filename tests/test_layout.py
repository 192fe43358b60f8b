"""The layout is a rule, not a convention: the import contracts in pyproject.toml hold (core imports
neither side; server and distill never import each other; serving never imports the training stack),
and a real `strop serve` process, and the model process it starts, load no training code."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TRAINING = ("distill", "torch", "transformers", "peft", "accelerate", "matplotlib")


def test_import_contracts_hold():
    exe = shutil.which("lint-imports") or pytest.fail("import-linter is not installed (test extra)")
    done = subprocess.run([exe, "--config", str(REPO / "pyproject.toml")], cwd=REPO, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "0 broken" in done.stdout


def _frame(body: dict) -> bytes:
    data = json.dumps(body).encode()
    return b"Content-Length: %d\r\n\r\n%s" % (len(data), data)


@pytest.mark.slow
def test_strop_serve_and_its_model_process_import_no_training_code(smollm_gguf, tmp_path):
    """Every module a serving session imports (with the model loaded and a completion asked for)
    is listed by Python's own import tracing, in the server and in the worker it spawns."""
    root = tmp_path / "repo"
    root.mkdir()
    uri = (root / "m.py").as_uri()
    messages = [
        {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {"capabilities": {}, "rootUri": root.as_uri()}},
        {"jsonrpc": "2.0", "method": "initialized", "params": {}},
        {"jsonrpc": "2.0", "method": "textDocument/didOpen", "params": {"textDocument": {
            "uri": uri, "languageId": "python", "version": 1, "text": "def add(a, b):\n    return "}}},
        {"jsonrpc": "2.0", "id": 2, "method": "textDocument/inlineCompletion", "params": {
            "textDocument": {"uri": uri}, "position": {"line": 1, "character": 11},
            "context": {"triggerKind": 2}}},
        {"jsonrpc": "2.0", "id": 3, "method": "shutdown"},
        {"jsonrpc": "2.0", "method": "exit"},
    ]
    env = {**os.environ, "STROP_HOME": str(tmp_path / "home"), "PYTHONPROFILEIMPORTTIME": "1",
           "STROP_FIRST_REQUEST_WAIT_MS": "60000"}
    err_path = tmp_path / "stderr.txt"
    with open(err_path, "wb") as err_file:  # a file: the import trace is far larger than a pipe's buffer
        proc = subprocess.Popen([sys.executable, "-m", "strop", "serve", "--model", str(smollm_gguf),
                                 "--repo", str(root)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=err_file, env=env)
    proc.stdin.write(b"".join(_frame(m) for m in messages[:4]))
    proc.stdin.flush()
    out = b""
    while b'"id": 2' not in out and b'"id":2' not in out:  # the completion's answer: the model was loaded
        chunk = proc.stdout.read1(65536)
        assert chunk, "strop serve ended before answering the completion"
        out += chunk
    proc.stdin.write(b"".join(_frame(m) for m in messages[4:]))
    proc.stdin.close()
    proc.stdout.read()
    assert proc.wait(timeout=120) == 0, err_path.read_text(errors="replace")[-2000:]
    err = err_path.read_text(errors="replace")
    names = [name.strip() for name in re.findall(r"^import time:\s+\d+ \|\s+\d+ \| ( *[\w.]+)$", err, re.M)]
    assert names.count("llama_cpp") == 2  # two processes traced: the server and the model's worker
    assert "llama_cpp" in names and "server.lsp" in names
    leaked = sorted(n for n in names if n.split(".")[0] in TRAINING)
    assert leaked == []
