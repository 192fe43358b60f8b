"""Team signals: `strop log export` (a real CLI process per laptop STROP_HOME) writes scrubbed bundles;
the cycle's real split and harvest stages ingest several, each completion once, each logged prompt
traceable to its bundle, and a planted secret nowhere in what the cycle writes."""

from __future__ import annotations

import gzip
import json
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from core.completion_log import CompletionLog
from core.errors import StropError
from core.log_bundle import read_bundle
from core.registry import repo_key
from distill.cycle import STAGES, Cycle, CycleConfig, manifest_data
from distill.records import Prompt, read_jsonl
from tests.fixtures.fixture_repo import fixture_repo  # noqa: F401  (a pytest fixture)

GH = "gh" + "p_" + "R8d2Kq7Lm3Xz9Tb4Wn6Yc1Vf5Hs0Jp2Ga7Qe"  # built at runtime: no literal for secret scanners
AWS_ID = "AKIA" + "Q7X3T5LZ2M4N6P8R"

SHARED = ("src/util.py", "def twice(x):\n    return ", "\n", "x * 2")


def _row(db: Path, repo: Path, cid: str, path: str, prefix: str, suffix: str, completion: str,
         retained: int | None, snippets: list | None = None) -> None:
    """An accepted completion as an older strop logged it: raw SQL, texts not scrubbed, so the export's
    own scrubbing is what keeps a secret in."""
    CompletionLog(db).close()  # the schema
    with sqlite3.connect(db) as con:
        con.execute("INSERT INTO completions (id, created_at, repo, path, language, prefix, suffix, snippets, "
                    "completion, outcome, accepted_chars, retained_chars) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                    (cid, time.time(), str(repo.resolve()), path, "python", prefix, suffix,
                     json.dumps(snippets or []), completion, "accepted", len(completion), retained))


def _export(home: Path, repo: Path, out: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "STROP_HOME": str(home)}
    return subprocess.run([sys.executable, "-m", "strop", "log", "export", str(out), "--repo", str(repo)],
                          env=env, capture_output=True, text=True, timeout=120)


@pytest.fixture
def bundles(tmp_path, fixture_repo):  # noqa: F811
    alice, bob = tmp_path / "alice", tmp_path / "bob"
    for home in (alice, bob):
        home.mkdir()
    a_db, b_db = alice / "completions.sqlite3", bob / "completions.sqlite3"
    _row(a_db, fixture_repo, "a1", "src/client.py", f"import os\nTOKEN = '{GH}'\n\ndef url():\n    return ", "\n",
         "os.environ['URL']", 17, snippets=[{"path": "src/keys.py", "text": f"AWS = '{AWS_ID}'\n"}])
    _row(a_db, fixture_repo, "a2", *SHARED, retained=5)
    _row(a_db, fixture_repo, "a3", "src/gone.py", "x = ", "", "deleted_later()", retained=0)  # not retained
    _row(a_db, fixture_repo, "a4", ".env", "A=", "", "b", retained=1)  # a secret file never leaves
    _row(b_db, fixture_repo, "b1", *SHARED, retained=5)  # the same completion, another laptop
    _row(b_db, fixture_repo, "b2", "src/server.py", "def port():\n    return ", "\n", "8080", retained=4)
    outs = []
    for home, name in ((alice, "alice.bundle"), (bob, "bob.bundle")):
        proc = _export(home, fixture_repo, tmp_path / name)
        assert proc.returncode == 0, proc.stderr
        assert "exported" in proc.stdout
        outs.append(tmp_path / name)
    return outs


def test_export_writes_a_scrubbed_bundle_with_its_header(bundles, fixture_repo):  # noqa: F811
    a, b = (read_bundle(p, repo_key(fixture_repo)) for p in bundles)
    assert a.header["count"] == 2 and b.header["count"] == 2
    assert a.header["format"] == "strop-log-bundle" and a.header["version"] == 1
    assert a.header["repo_key"] == repo_key(fixture_repo) and a.id != b.id and len(a.id) == 64
    assert {r["path"] for r in a.rows} == {"src/client.py", "src/util.py"}
    raw = gzip.decompress(bundles[0].read_bytes()).decode()
    assert GH not in raw and AWS_ID not in raw and GH[:12] not in raw
    assert "os.environ['URL']" in raw  # the completion itself stays


def test_a_damaged_or_foreign_bundle_is_refused(bundles, tmp_path, fixture_repo):  # noqa: F811
    with pytest.raises(StropError, match="holds completions of repository .*, not other-1234"):
        read_bundle(bundles[0], "other-1234")
    data = bytearray(gzip.decompress(bundles[0].read_bytes()))
    data[-10] ^= 0x01
    damaged = tmp_path / "damaged.bundle"
    damaged.write_bytes(gzip.compress(bytes(data)))
    with pytest.raises(StropError, match="damaged"):
        read_bundle(damaged, repo_key(fixture_repo))
    (tmp_path / "plain.txt").write_text("hello")
    with pytest.raises(StropError, match="not a strop log bundle"):
        read_bundle(tmp_path / "plain.txt")


def test_the_cycle_ingests_bundles_once_each_traceable_and_never_the_secret(
        bundles, tmp_path, monkeypatch, fixture_repo):  # noqa: F811
    monkeypatch.setenv("STROP_HOME", str(tmp_path / "nightly"))
    base = tmp_path / "base.gguf"
    base.write_bytes(b"GGUF")  # only named: the split and harvest stages never load the model
    c = Cycle(fixture_repo, CycleConfig(base_model=base, max_prompts=20, max_eval_items=8), progress=False,
              bundles=tuple(bundles))
    d = c.root / "cycle-test"
    d.mkdir()
    c._run_stages(d, STAGES[:2])  # split, harvest

    ids = {p.name: read_bundle(p).id for p in bundles}
    logged = [p for p in read_jsonl(d / "prompts.jsonl", Prompt) if p.source == "log"]
    assert sorted(p.path for p in logged) == ["src/client.py", "src/server.py", "src/util.py"]  # the overlap once
    assert {p.path: p.bundle for p in logged} == {
        "src/client.py": ids["alice.bundle"], "src/util.py": ids["alice.bundle"], "src/server.py": ids["bob.bundle"]}
    data = manifest_data(d)
    assert data["log_bundles"] == {ids["alice.bundle"]: 2, ids["bob.bundle"]: 1}
    written = "".join(f.read_text() for f in d.iterdir() if f.is_file()) + json.dumps(data)
    assert GH not in written and AWS_ID not in written and GH[:12] not in written
