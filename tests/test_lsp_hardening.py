"""Regression tests of issue 8 against a real `strop serve` (SmolLM2) spoken to byte by byte:
what a clumsy or hostile client sends must not break the server, lose a completion, store a secret
or pop up noise. Each test names the defect it covers."""

from __future__ import annotations

import json
import os
import sqlite3
import time
from pathlib import Path

import pytest

from tests.raw_lsp import RawServer, frame

pytestmark = pytest.mark.slow

SOURCE = 'def add(a, b):\n    """Return the sum of a and b."""\n    return\n\n\nprint(add(1, 2))\n'
RETURN = (2, len("    return"))
ENV = {"STROP_TIME_CAP_MS": "30000"}


def start(model: Path, home: Path, root: Path, **env) -> RawServer:
    server = RawServer(model, home, root, env={**ENV, **env})
    server.initialize(root)
    server.wait_ready()
    return server


@pytest.fixture(scope="module")
def served(smollm_gguf, tmp_path_factory):
    home, root = tmp_path_factory.mktemp("home"), tmp_path_factory.mktemp("repo")
    server = start(smollm_gguf, home, root)
    yield server, home, root
    server.stop()


def items(reply: dict) -> list:
    assert "error" not in reply, reply["error"]
    return (reply["result"] or {}).get("items", [])


def logged(home: Path, cid: str) -> dict:
    con = sqlite3.connect(home / "completions.sqlite3")
    con.row_factory = sqlite3.Row
    try:
        return dict(con.execute("SELECT * FROM completions WHERE id = ?", (cid,)).fetchone())
    finally:
        con.close()


def completion_id(item: dict) -> str:
    return item["command"]["arguments"][0]["id"]


# --- defect 2: percent-encoded URIs ----------------------------------------------------------------

def test_percent_encoded_and_windows_uris_complete(served):
    server, home, root = served
    encoded = (root / "my file.py").as_uri()
    assert "%20" in encoded
    server.open(encoded, SOURCE)
    assert items(server.inline(encoded, *RETURN)), "the URI the editor opened it under"
    assert items(server.inline(encoded.replace("%20", " "), *RETURN)), "another spelling of the same file"
    server.open("file:///c%3A/Users/me/win.py", SOURCE)  # VS Code on Windows
    assert items(server.inline("file:///C:/Users/me/win.py", *RETURN))
    for uri in (encoded, "file:///c%3A/Users/me/win.py"):
        server.notify("textDocument/didClose", {"textDocument": {"uri": uri}})


# --- defect 4: lone surrogates ---------------------------------------------------------------------

def test_a_lone_surrogate_in_the_document_does_not_lose_the_completion(served):
    server, home, root = served
    uri = (root / "surrogate.py").as_uri()
    server.open(uri, "# caf\ud83d half an emoji\n" + SOURCE)  # json.dumps sends it as \ud83d
    (item,) = items(server.inline(uri, RETURN[0] + 1, RETURN[1]))
    row = logged(home, completion_id(item))
    assert row["prefix"].startswith("# caf\ufffd half an emoji\n") and row["completion"] == item["insertText"]
    server.notify("textDocument/didClose", {"textDocument": {"uri": uri}})


# --- defect 5: LSP's lines -------------------------------------------------------------------------

def test_line_separators_inside_a_line_do_not_move_edits_or_the_cursor(served):
    server, home, root = served
    uri = (root / "seps.py").as_uri()
    head = "s = '\u2028\x0c\x85\x0b\x1c'  # one LSP line\n"
    server.open(uri, head + SOURCE.replace("    return\n", "    retur\n"))
    line = 1 + RETURN[0]  # LSP counts only \n, \r\n and \r
    server.notify("textDocument/didChange", {"textDocument": {"uri": uri, "version": 2}, "contentChanges": [
        {"range": {"start": {"line": line, "character": 9}, "end": {"line": line, "character": 9}}, "text": "n"}]})
    (item,) = items(server.inline(uri, line, RETURN[1]))
    row = logged(home, completion_id(item))
    assert row["prefix"] == head + SOURCE[: SOURCE.index("    return") + len("    return")]
    assert item["range"]["start"] == {"line": line, "character": RETURN[1]}
    server.notify("textDocument/didClose", {"textDocument": {"uri": uri}})


# --- defect 11: errors users can act on, no noise --------------------------------------------------

def test_bad_input_gets_one_line_errors_naming_the_field_and_no_popups(served):
    server, home, root = served
    uri = (root / "errs.py").as_uri()
    server.open(uri, SOURCE)
    before_notes, before_err = len(server.notifications), len(server.stderr)
    # garbage notifications: each dropped (debug log), none a popup
    server.notify("textDocument/didChange", {"textDocument": {"uri": (root / "nope.py").as_uri(), "version": 2},
                                             "contentChanges": [{"text": "x"}]})
    server.notify("textDocument/didOpen", {"textDocument": {"uri": uri}})
    server.notify("textDocument/didClose", {"textDocument": 7})
    server.notify("strop/didShowCompletion", {"id": {"x": 1}})
    server.notify("strop/didDismissCompletion", [1, 2])
    server.notify("strop/didPartiallyAcceptCompletion", {"id": "x", "acceptedLength": 2**80})
    server.notify("$/setTrace", {"value": 3})
    server.notify("no/such/notification", {"a": 1})
    # bad requests: the right code, a one-line message naming the field
    replies = {
        "missing params": server.call("textDocument/inlineCompletion", None),
        "wrong type": server.call("textDocument/inlineCompletion", {
            "textDocument": {"uri": uri}, "position": {"line": "two", "character": 0}, "context": {"triggerKind": 1}}),
        "negative": server.call("textDocument/completion", {
            "textDocument": {"uri": uri}, "position": {"line": -1, "character": 0}}),
        "bogus accept": server.call("workspace/executeCommand", {"command": "strop.accept",
                                                                 "arguments": [{"id": "no-such-completion"}]}),
        "toggle no": server.call("workspace/executeCommand", {"command": "strop.toggle",
                                                              "arguments": [{"enabled": "no"}]}),
        "unknown method": server.call("no/such/request", {}),
    }
    expect = {"missing params": (-32602, "params"), "wrong type": (-32602, "params.position.line"),
              "negative": (-32602, "line"), "bogus accept": (-32602, "no-such-completion"),
              "toggle no": (-32602, "enabled"), "unknown method": (-32601, "no/such/request")}
    for case, reply in replies.items():
        code, names = expect[case]
        assert reply.get("error", {}).get("code") == code, (case, reply)
        message = reply["error"]["message"]
        assert names in message and "\n" not in message and "Traceback" not in message, (case, message)
        assert not reply["error"].get("data"), (case, reply)
    server.write(frame(b'{"jsonrpc": "2.0", "id": 99, "method": '))  # not JSON
    server.write(frame(b'[{"jsonrpc": "2.0", "id": 98, "method": "strop/status"}]'))  # a batch
    server.write(frame({"id": 97, "method": "strop/status"}))  # no "jsonrpc"
    assert server.call("strop/status", {})["result"]["enabled"] is True
    nulls = [r["error"]["code"] for r in server.replies.get(json.dumps(None), [])]
    assert -32700 in nulls and -32600 in nulls
    assert server.wait(97)["error"]["code"] == -32600
    assert items(server.inline(uri, *RETURN)), "the server keeps serving"
    assert not [n for n in server.notifications[before_notes:] if n["method"] == "window/showMessage"]
    noise = server.stderr[before_err:]
    assert not [line for line in noise if "Traceback" in line or "ERROR" in line or "WARNING" in line], noise
    server.notify("textDocument/didClose", {"textDocument": {"uri": uri}})


# --- defect 6: a huge Content-Length ---------------------------------------------------------------

def test_a_huge_content_length_does_not_kill_the_server(smollm_gguf, tmp_path):
    server = start(smollm_gguf, tmp_path / "home", tmp_path)
    server.write(b"Content-Length: 99999999999999\r\n\r\n{}")
    time.sleep(2)
    assert server.alive(), server.stderr
    code = server.finish()  # the client goes away inside the message it announced
    assert code == 1 and not [line for line in server.stderr if "MemoryError" in line or "Traceback" in line]


def test_an_oversized_message_is_skipped_and_answered(smollm_gguf, tmp_path):
    server = start(smollm_gguf, tmp_path / "home", tmp_path, STROP_MAX_MESSAGE_BYTES="65536")
    body = json.dumps({"jsonrpc": "2.0", "id": "big", "method": "textDocument/didOpen",
                       "params": {"text": "x" * 100_000}}).encode()
    server.write(frame(body))
    assert server.call("strop/status", {})["result"]["enabled"] is True, "the stream is in step again"
    (skipped,) = server.replies[json.dumps(None)]
    assert skipped["error"]["code"] == -32600 and "larger than the limit" in skipped["error"]["message"]
    assert server.stop() == 0


# --- defect 7 (lifecycle; the worker process is another change) --------------------------------------

def test_exit_without_shutdown_exits_1(smollm_gguf, tmp_path):
    server = start(smollm_gguf, tmp_path / "home", tmp_path)
    server.notify("exit")
    assert server.finish() == 1


def test_after_shutdown_requests_are_invalid_and_exit_exits_0(smollm_gguf, tmp_path):
    server = start(smollm_gguf, tmp_path / "home", tmp_path)
    assert server.call("shutdown")["result"] is None
    reply = server.call("strop/status", {}, timeout=10)
    assert reply["error"]["code"] == -32600 and "shutdown" in reply["error"]["message"]
    server.notify("exit")
    assert server.finish() == 0


# --- defect 8: repeated initialize / initialized ------------------------------------------------------

def _open_logs(pid: int, db: Path) -> int:
    fds = Path(f"/proc/{pid}/fd")
    return sum(1 for fd in fds.iterdir() if os.path.realpath(fd) == str(db))


def test_repeated_initialized_is_idempotent_and_a_second_initialize_keeps_the_workspace(smollm_gguf, tmp_path):
    home = tmp_path / "home"
    server = start(smollm_gguf, home, tmp_path)
    uri = (tmp_path / "kept.py").as_uri()
    server.open(uri, SOURCE)
    rss = server.rss_bytes()
    for _ in range(30):
        server.notify("initialized", {})
    again = server.call("initialize", {"processId": None, "rootUri": None, "capabilities": {}})
    assert again["error"]["code"] == -32600
    time.sleep(3)  # what the repeats started (a model load each, before) would be under way
    assert server.call("strop/status", {})["result"]["modelVersion"]
    assert _open_logs(server.proc.pid, home / "completions.sqlite3") == 1
    assert sum("loaded" in line for line in server.stderr) == 1, server.stderr
    assert server.rss_bytes() < rss + 100 * 2**20
    assert items(server.inline(uri, *RETURN)), "the document opened before is still there"
    assert server.stop() == 0


# --- defect 9: secrets never reach disk or a prompt ----------------------------------------------------

AWS_ID = "AKIA" + "Q7X3T5LZ2M4N6P8R"  # built at runtime: no literal for secret scanners
AWS_SECRET = "wJalrXUtnFEMI/K7MDENG/" + "bPxRfiCY3xq9Tz8Lk2"
GH = "gh" + "p_" + "R8d2Kq7Lm3Xz9Tb4Wn6Yc1Vf5Hs0Jp2Ga7Qe"
DB_PASSWORD = "hunter2-" + "Xq93kLm2"


def _leaks(home: Path) -> list[str]:
    found = []
    for path in home.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            found += [f"{path.name}: {s[:8]}" for s in (AWS_ID, AWS_SECRET, GH, DB_PASSWORD) if s.encode() in data]
    return found


def test_planted_keys_and_a_dotenv_reach_no_file_under_strop_home(smollm_gguf, tmp_path):
    home, root = tmp_path / "home", tmp_path / "repo"
    root.mkdir()
    dotenv_text = f"DB_PASSWORD={DB_PASSWORD}\nAWS_SECRET_ACCESS_KEY={AWS_SECRET}\nGITHUB_TOKEN={GH}\n"
    (root / ".env").write_text(dotenv_text)
    app = (f'import boto3\n\nAWS_ACCESS_KEY_ID = "{AWS_ID}"\nAWS_SECRET_ACCESS_KEY = "{AWS_SECRET}"\n'
           f'GITHUB_TOKEN = "{GH}"\n\n\ndef client():\n    return boto3.client("s3", aws_access_key_id=')
    server = start(smollm_gguf, home, root)
    env_uri, app_uri = (root / ".env").as_uri(), (root / "app.py").as_uri()
    server.open(env_uri, dotenv_text, language="dotenv")
    server.open(app_uri, app)
    lines = app.split("\n")
    served_ids = []
    for line, col in [(len(lines) - 1, len(lines[-1])), (2, len(lines[2]) - 5), (4, len('GITHUB_TOKEN = "gh')),
                      (3, len(lines[3]))]:
        served_ids += [completion_id(i) for i in items(server.inline(app_uri, line, col))]
    assert served_ids, "the model answered in the ordinary file"
    for line in range(3):
        assert items(server.inline(env_uri, line, 5)) == [], "no completion inside a secret file"
    other = (root / "other.py").as_uri()
    server.open(other, SOURCE)
    served_ids += [completion_id(i) for i in items(server.inline(other, *RETURN))]
    assert not _leaks(home), "while serving (WAL not yet checkpointed)"
    con = sqlite3.connect(home / "completions.sqlite3")
    snippets = [json.loads(r[0]) for r in con.execute("SELECT snippets FROM completions")]
    paths = [r[0] for r in con.execute("SELECT path FROM completions")]
    con.close()
    assert ".env" not in paths and all(s["path"] != ".env" for row in snippets for s in row), "no .env as context"
    assert any(s["path"] == "app.py" for row in snippets for s in row), "ordinary files are context"
    assert server.stop() == 0
    assert not _leaks(home), "after shutdown"


def test_strop_complete_refuses_a_secret_file_without_opening_it(tmp_path):
    import subprocess
    import sys

    dotenv = tmp_path / ".env"
    dotenv.write_text(f"DB_PASSWORD={DB_PASSWORD}\n")
    out = subprocess.run([sys.executable, "-m", "strop", "complete", str(dotenv), "--line", "1", "--col", "4"],
                         env=dict(os.environ, STROP_HOME=str(tmp_path / "home")), capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 1 and "secret file" in out.stderr and "Traceback" not in out.stderr, out.stderr
    assert not (tmp_path / "home" / "completions.sqlite3").exists()


LONG = "".join(f"def handler_{i}(request):\n    return respond(request, {i})\n\n" for i in range(60))


def _generating(server, tmp_path) -> None:
    """Start a long generation (a 512-token block) and return while it runs."""
    uri = (tmp_path / "long.py").as_uri()
    server.open(uri, LONG + "def handler_60(request):\n")
    server.request("textDocument/inlineCompletion", {"textDocument": {"uri": uri},
                   "position": {"line": LONG.count("\n") + 1, "character": 0}, "context": {"triggerKind": 1}})
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if server.call("strop/status", {}, timeout=10)["result"]["state"] == "working":
            return
        time.sleep(0.05)
    raise AssertionError("the generation never started")


def test_closing_stdin_during_a_generation_exits_cleanly(smollm_gguf, tmp_path):
    """Defect 7: closing stdin while the model generated ended in SIGSEGV in 3 of 6 runs (llama.cpp
    torn down under a running decode in the server process). The model now runs in its own process."""
    for _ in range(3):
        server = start(smollm_gguf, tmp_path / "home", tmp_path, STROP_MAX_NEW_TOKENS="512",
                       STROP_PREDICT_SOFT_MS="0", STROP_TIME_CAP_MS="60000")
        _generating(server, tmp_path)
        code = server.finish(timeout=30)
        assert code == 1, f"stdin closed without shutdown: exit 1, got {code}"  # a signal would be negative


def test_shutdown_during_a_generation_answers_at_once(smollm_gguf, tmp_path):
    """Defect 7: `shutdown` during a generation took 3.2 s to answer."""
    server = start(smollm_gguf, tmp_path / "home", tmp_path, STROP_MAX_NEW_TOKENS="512",
                   STROP_PREDICT_SOFT_MS="0", STROP_TIME_CAP_MS="60000")
    _generating(server, tmp_path)
    t0 = time.monotonic()
    assert server.call("shutdown", None, timeout=30)["result"] is None
    assert time.monotonic() - t0 < 1.5
    server.notify("exit")
    assert server.finish() == 0
