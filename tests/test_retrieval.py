"""core.retrieval and server.index_service on a real git repository made of httpx's code."""

import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from core.code_tokens import code_tokens
from core.retrieval import Chunk, RepoIndex, pack, query_around
from server.index_service import IndexService

HTTPX_FILES = Path(__file__).parent / "fixtures" / "httpx_ae1b9f66"  # encode/httpx@ae1b9f66 (SOURCE.md there)
FILES = ["httpx/_status_codes.py", "httpx/_auth.py", "httpx/_exceptions.py", "httpx/_utils.py",
         "httpx/_urlparse.py", "docs/quickstart.md"]
AWS_ID = "AKIA" + "Q7X3T5LZ2M4N6P8R"  # built at runtime: no literal for secret scanners
ENV_TOKEN = "s3cr3t" + "EnvValue9911"


def git(root: Path, *args: str) -> str:
    return subprocess.run(["git", "-c", "user.email=t@example.com", "-c", "user.name=t", *args],
                          cwd=root, check=True, capture_output=True, text=True).stdout


def commit_all(root: Path, message: str) -> None:
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", message)


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    root = tmp_path / "repo"
    root.mkdir()
    git(root, "init", "-q")
    for path in FILES:
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_bytes((HTTPX_FILES / path).read_bytes())
    (root / ".env").write_text(f"API_TOKEN={ENV_TOKEN}\nenv_only_marker_name = 1\n")
    (root / "httpx" / "_settings.py").write_text(
        "# deployment settings\n"
        f'AWS_ACCESS_KEY_ID = "{AWS_ID}"\n'
        "def settings_region_lookup():\n    return 'eu-west-1'\n")
    commit_all(root, "fixture")
    return root


def all_text(index: RepoIndex) -> str:
    return "".join(c.text for c in index.chunks())


def test_tokens_split_identifiers_and_drop_noise():
    assert code_tokens("parseHTTPHeader_v2(self, x)") == ["parsehttpheader_v2", "parse", "http", "header", "v2"]
    assert code_tokens("get_reason_phrase") == ["get_reason_phrase", "get", "reason", "phrase"]
    assert code_tokens("for i in range(n): return") == ["range"]


def test_an_identifier_defined_elsewhere_finds_its_definition(repo: Path):
    index = RepoIndex.build(repo)
    caller = "def encode_body(stream):\n    length = peek_filelike_length(stream)\n"
    top = index.query(caller, 3)[0]
    assert top.path == "httpx/_utils.py" and "def peek_filelike_length" in top.text
    assert top.end_line - top.start_line <= 20 and top.score > 0
    lines = (repo / top.path).read_text().splitlines(keepends=True)
    assert "".join(lines[top.start_line:top.end_line]) == top.text
    top = index.query("reason = codes.get_reason_phrase(response.status_code)", 1)[0]
    assert top.path == "httpx/_status_codes.py" and "def get_reason_phrase" in top.text


def test_building_an_index_writes_no_library_debug_lines(repo: Path, caplog):
    # bm25s sets its logger to DEBUG on import: `strop distill` printed "DEBUG bm25s: Building index"
    with caplog.at_level(logging.DEBUG):
        RepoIndex.build(repo).query("url parse", k=2)
    assert [r for r in caplog.records if r.name.startswith("bm25s") and r.levelno < logging.WARNING] == []


def test_results_do_not_overlap_and_exclusions_hold(repo: Path):
    index = RepoIndex.build(repo)
    found = index.query("is_redirect is_client_error is_server_error codes", 6)
    for a in found:
        for b in found:
            assert a is b or a.path != b.path or a.end_line <= b.start_line or b.end_line <= a.start_line
    assert all(c.path != "httpx/_status_codes.py"
               for c in index.query("get_reason_phrase", 4, exclude_path="httpx/_status_codes.py"))
    # The cursor sits inside get_reason_phrase: the chunks around it are excluded, the rest is not.
    text = (repo / "httpx/_status_codes.py").read_text()
    line = next(i for i, l in enumerate(text.splitlines()) if "def get_reason_phrase" in l) + 2
    around = query_around(index, "httpx/_status_codes.py", text, line, k=4, lines_before=3)
    assert around and all(c.path != "httpx/_status_codes.py" or c.end_line <= line - 3 or c.start_line > line
                          for c in around)


def test_the_retriever_gives_whole_chunks_of_files_in_the_cursor_files_language(repo: Path):
    """A hole in a Markdown file gets Markdown, a hole in Python gets Python; a snippet never ends
    inside a bracket it opened (the model would read the file after it as still in there)."""
    from core.context import OtherDocument, _snippet
    from core.repo_context import RetrievalSettings, Retriever

    index = RepoIndex.build(repo)
    query = "auth = httpx.DigestAuth('user', 'pass')\nclient = httpx.Client(auth=BasicAuth('user', 'pass'))\n"
    assert {c.path for c in index.query(query, 6)} >= {"docs/quickstart.md", "httpx/_auth.py"}  # both match
    assert "httpx/_auth.py" in {s.path for s in Retriever(lambda: index)("httpx/_new.py", query, len(query))}
    assert all(s.path.endswith(".py") for s in Retriever(lambda: index)("httpx/_new.py", query, len(query)))
    assert {s.path for s in Retriever(lambda: index)("docs/guide.md", query, len(query))} == {"docs/quickstart.md"}
    mixed = Retriever(lambda: index, RetrievalSettings(same_language=False))("httpx/_new.py", query, len(query))
    assert {s.path for s in mixed} >= {"docs/quickstart.md", "httpx/_auth.py"}
    # A chunk cut by the budget inside a call is cut back to where its brackets are closed.
    doc = OtherDocument("a.py", "x = 1\nresult = compute(\n    first,\n    second,\n)\ny = 2\n", 0)
    assert _snippet(doc, 8, 32, lambda t: len(t.split())).text == "x = 1"
    assert _snippet(doc, 100, 32, lambda t: len(t.split())).text == doc.text.rstrip("\n")


def test_update_and_remove_change_results(repo: Path):
    index = RepoIndex.build(repo)
    assert index.query("brand_new_retry_helper", 2) == []
    path = repo / "httpx/_utils.py"
    path.write_text(path.read_text() + "\n\ndef brand_new_retry_helper(attempts):\n    return attempts * 2\n")
    before = index.stats()["tokenised_files"]
    assert index.update_file("httpx/_utils.py", path.read_text())
    assert index.stats()["tokenised_files"] == before + 1  # only the edited file
    top = index.query("x = brand_new_retry_helper(3)", 2)[0]
    assert top.path == "httpx/_utils.py" and "def brand_new_retry_helper" in top.text
    assert index.update_file(str(path), path.read_text()) is False  # same content: nothing to do
    assert index.remove_file("httpx/_utils.py")
    assert index.query("brand_new_retry_helper", 5) == []
    assert all(c.path != "httpx/_utils.py" for c in index.query("peek_filelike_length", 5))
    assert "httpx/_utils.py" not in index.paths()


def test_excludes_are_gitignore_patterns(repo: Path):
    index = RepoIndex.build(repo, excludes=["docs/", "_url*.py"])
    assert "httpx/_urlparse.py" not in index.paths()
    assert not any(p.startswith("docs/") for p in index.paths())
    assert "httpx/_auth.py" in index.paths()
    assert index.stats()["skipped"]["excluded"] == 2
    assert "docs/quickstart.md" in RepoIndex.build(repo).paths()


def test_secrets_never_reach_a_chunk_or_the_disk(repo: Path, tmp_path: Path):
    store = tmp_path / "store"
    index = RepoIndex.build(repo, store_dir=store)
    assert ".env" not in index.paths()
    assert all(c.path != ".env" for c in index.query("env_only_marker_name API_TOKEN", 5))
    text = all_text(index)
    assert AWS_ID not in text and ENV_TOKEN not in text and "env_only_marker_name" not in text
    assert "settings_region_lookup" in text  # the file with the key is indexed, its key redacted
    assert 'AWS_ACCESS_KEY_ID = "REDACTED"' in text
    index.update_file(".env", (repo / ".env").read_text())  # a save of the secret file
    index.update_file("httpx/_auth.py", (repo / "httpx/_auth.py").read_text() + f"\nKEY = '{AWS_ID}'\n")
    index.save()
    assert AWS_ID not in all_text(index) and ENV_TOKEN not in all_text(index)
    on_disk = (store / "index.json").read_text()
    assert AWS_ID not in on_disk and ENV_TOKEN not in on_disk and "env_only_marker_name" not in on_disk
    assert oct((store / "index.json").stat().st_mode & 0o777) == "0o600"


def test_a_reload_gives_identical_results_without_retokenising(repo: Path, tmp_path: Path):
    store = tmp_path / "store"
    first = RepoIndex.build(repo, store_dir=store)
    queries = ["peek_filelike_length(stream)", "DigestAuth nonce", "codes.is_error(status)",
               "raise HTTPStatusError(message, request=request, response=response)"]
    expected = [first.query(q, 4) for q in queries]
    again = RepoIndex.build(repo, store_dir=store)
    assert again.stats()["tokenised_files"] == 0
    assert again.stats()["reused_files"] == first.stats()["files"]
    assert [again.query(q, 4) for q in queries] == expected
    # One file changes on disk: only it is re-tokenised at the next load.
    (repo / "httpx/_auth.py").write_text((repo / "httpx/_auth.py").read_text() + "\ndef extra_auth_flow(): pass\n")
    third = RepoIndex.build(repo, store_dir=store)
    assert third.stats()["tokenised_files"] == 1
    assert third.query("extra_auth_flow()", 1)[0].path == "httpx/_auth.py"
    # A file touched but unchanged (new mtime, same bytes) is read and hashed, not re-tokenised.
    os.utime(repo / "httpx/_utils.py", ns=(1, 1))
    assert RepoIndex.build(repo, store_dir=store).stats()["tokenised_files"] == 0
    json.loads((store / "index.json").read_text())  # the atomic write left a whole file


def test_pack_order_is_stable_and_within_budget():
    chunks = [Chunk("b.py", 40, 60, "b" * 300, 9.0), Chunk("a.py", 20, 40, "a" * 300, 5.0),
              Chunk("a.py", 0, 20, "c" * 300, 7.0), Chunk("c.py", 0, 20, "d" * 300, 1.0)]
    packed = pack(chunks, budget=900)
    assert [(c.path, c.start_line) for c in packed] == [("a.py", 0), ("a.py", 20), ("b.py", 40)]
    jittered = [Chunk(c.path, c.start_line, c.end_line, c.text, c.score + s)
                for c, s in zip(reversed(chunks), (0.3, -0.2, 0.1, 0.0))]
    # The scores move and their ranking changes, but the same set is chosen: same order, same bytes.
    assert "".join(c.text for c in pack(jittered, budget=900)) == "".join(c.text for c in packed)
    assert [c.path for c in pack(chunks, budget=650)] == ["a.py", "b.py"]  # the two best fit
    assert [c.path for c in pack(chunks, budget=10_000, max_chunks=1)] == ["b.py"]
    assert pack(chunks, budget=9, count=lambda t: len(t) // 100) == packed  # a token counter


def test_the_service_picks_up_saves_and_commits(repo: Path, tmp_path: Path):
    service = IndexService(repo, store_dir=tmp_path / "store", poll_seconds=0.1)
    assert service.query("peek_filelike_length", 1) == []  # not started: no results, no wait
    service.start()
    try:
        assert service.wait_ready(30), service.stats()
        assert service.stats()["state"] == "ready" and service.stats()["files"] >= 6

        def eventually(cond, timeout=10.0):
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                if cond():
                    return True
                time.sleep(0.05)
            return False

        (repo / "httpx/_pool_limits.py").write_text("def compute_pool_limit_budget(n):\n    return n\n")
        commit_all(repo, "add a file")
        assert eventually(lambda: [c.path for c in service.query("compute_pool_limit_budget", 1)]
                          == ["httpx/_pool_limits.py"]), service.stats()
        assert service.stats()["refreshes"] >= 1

        auth = repo / "httpx/_auth.py"
        auth.write_text(auth.read_text() + "\ndef saved_not_committed_helper(): pass\n")
        service.on_saved(str(auth), auth.read_text())
        assert eventually(lambda: bool(service.query("saved_not_committed_helper", 1)))
        assert service.query_around(str(auth), "x = saved_not_committed_helper()\n", 0)[0].path == "httpx/_auth.py"

        (repo / "scratch.py").write_text("def untracked_scratch_fn(): pass\n")
        service.on_saved(str(repo / "scratch.py"), (repo / "scratch.py").read_text())
        service.on_saved("/elsewhere/outside.py", "def outside_fn(): pass\n")
        time.sleep(0.3)
        assert service.query("untracked_scratch_fn outside_fn", 2) == []  # only tracked files
        assert service.stats()["error"] is None
    finally:
        service.stop()
    assert service.stats()["state"] == "stopped"
    assert "saved_not_committed_helper" in (tmp_path / "store" / "index.json").read_text()


def test_the_service_reports_a_directory_that_is_not_a_repository(tmp_path: Path):
    service = IndexService(tmp_path, store_dir=tmp_path / "store")
    service.start()
    assert service.wait_ready(10) is False
    stats = service.stats()
    assert stats["state"] == "failed" and "not a git work tree" in stats["error"]
    assert service.query("anything", 3) == []
    service.stop()


def test_retrieval_is_core_importing_neither_server_nor_distill():
    code = ("import sys, core.retrieval; "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'server', 'distill'}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
