import os
import sqlite3
import stat

import pytest

from server import stats
from core.completion_log import SCHEMA_VERSION, CompletionLog, Record
from core.errors import StropError


def rec(cid, **kw):
    base = dict(id=cid, repo="/r", path="a.py", language="python", model="m", model_version="v1", prefix="p",
                suffix="s", snippets=[], completion="hello", multiline=False, latency_ms=100.0)
    base.update(kw)
    return Record(**base)


def test_schema_permissions_and_wal(tmp_path):
    db = tmp_path / "log.sqlite3"
    CompletionLog(db).add(rec("a"))
    assert stat.S_IMODE(os.stat(db).st_mode) == 0o600
    con = sqlite3.connect(db)
    assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert con.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION


def test_outcomes_and_accept_is_final(tmp_path):
    log = CompletionLog(tmp_path / "l.db")
    log.add(rec("a"))
    assert log.get("a")["outcome"] == "pending"
    log.mark_shown("a")
    assert log.get("a")["outcome"] == "shown"
    log.mark_outcome("a", "accepted", 5)
    log.mark_outcome("a", "dismissed")
    row = log.get("a")
    assert row["outcome"] == "accepted" and row["accepted_chars"] == 5 and row["shown_at"]
    log.mark_retention("a", 4)
    assert log.get("a")["retained_chars"] == 4


def test_a_version_1_log_is_migrated_in_place_and_keeps_its_rows(tmp_path):
    from core.completion_log import MIGRATIONS

    db = tmp_path / "old.db"
    con = sqlite3.connect(db)
    con.executescript(MIGRATIONS[0])
    con.execute("INSERT INTO completions (id, created_at, prefix, suffix, completion, outcome) "
                "VALUES ('old', 1.0, 'p', 's', 'c', 'accepted')")
    con.execute("PRAGMA user_version=1")
    con.commit()
    con.close()
    log = CompletionLog(db)
    assert log.get("old")["outcome"] == "accepted" and log.get("old")["stop_reason"] is None
    log.add(rec("new", stop_reason="eog"))
    assert log.get("new")["stop_reason"] == "eog"
    assert sqlite3.connect(db).execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 2


def test_newer_schema_is_refused_with_a_clear_message(tmp_path):
    db = tmp_path / "l.db"
    CompletionLog(db).close()
    con = sqlite3.connect(db)
    con.execute(f"PRAGMA user_version={SCHEMA_VERSION + 1}")
    con.commit()
    con.close()
    with pytest.raises(StropError, match="newer than this strop"):
        CompletionLog(db)


def test_stats_per_model_and_language(tmp_path):
    log = CompletionLog(tmp_path / "l.db")
    for i in range(10):
        log.add(rec(f"c{i}", model_version="v1" if i < 6 else "v2", language="python" if i % 2 else "go",
                    latency_ms=float(10 * (i + 1))))
        log.mark_shown(f"c{i}")
    log.mark_outcome("c0", "accepted", 5)
    log.mark_retention("c0", 4)
    log.mark_outcome("c7", "dismissed")
    s = stats.compute(log.rows())
    assert s["total"]["shown"] == 10 and s["total"]["accepted"] == 1
    assert s["total"]["acceptance_rate"] == 0.1
    assert s["total"]["retained_chars"] == 4 and s["total"]["accepted_chars"] == 5
    assert s["by_model_version"]["v1"]["completions"] == 6
    assert s["by_language"]["go"]["accepted"] == 1
    assert 50 <= s["total"]["latency_ms_p50"] <= 60
    assert "acc.chars" in stats.render(s)


# --- concurrency, hostile text, secrets, retention -----------------------------------------------------

_OPEN_AND_ADD = """
import sys, time
from pathlib import Path
from core.completion_log import CompletionLog, Record
path, start, cid = Path(sys.argv[1]), float(sys.argv[2]), sys.argv[3]
while time.time() < start:
    pass
CompletionLog(path).add(Record(id=cid, repo="/r", path="a.py", language="python", model="m", model_version="v",
                               prefix="p", suffix="s", snippets=[], completion="c", multiline=False))
"""


@pytest.mark.slow
def test_two_processes_creating_a_fresh_log_at_once_both_work(tmp_path):
    """Both processes start their open at the same instant on a log that does not exist yet: the
    migration (schema creation) and the switch to WAL must not fail in either."""
    import subprocess
    import sys
    import time

    failures = []
    for batch in range(4):
        procs = []
        start = time.time() + 1.5  # both are imported and spinning by then
        for trial in range(5):
            db = tmp_path / f"t{batch}-{trial}" / "completions.sqlite3"
            db.parent.mkdir()
            for side in "ab":
                procs.append((db, side, subprocess.Popen(
                    [sys.executable, "-c", _OPEN_AND_ADD, str(db), str(start), side],
                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)))
        for db, side, proc in procs:
            _, err = proc.communicate(timeout=120)
            if proc.returncode != 0:
                failures.append(f"{db.parent.name}/{side}: {err.strip().splitlines()[-1]}")
        for db in {db for db, _, _ in procs}:
            con = sqlite3.connect(db)
            assert sorted(r[0] for r in con.execute("SELECT id FROM completions")) == ["a", "b"] or failures
            assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
            con.close()
    assert not failures, f"{len(failures)} of 40 opens failed: {failures[:3]}"


def test_lone_surrogates_never_cost_a_completion(tmp_path):
    log = CompletionLog(tmp_path / "l.db")
    log.add(rec("s", prefix="x = '\ud83d", suffix="\ude00'\n", completion="\udfff",
                snippets=[{"path": "b\udc80.py", "text": "y = '\ud800'"}], path="a\udcff.py"))
    row = log.get("s")
    assert row["prefix"] == "x = '\ufffd" and row["suffix"] == "\ufffd'\n" and row["completion"] == "\ufffd"
    assert row["path"] == "a\ufffd.py" and "\\ud800" not in row["snippets"]


def test_a_value_sqlite_cannot_hold_is_a_strop_error(tmp_path):
    log = CompletionLog(tmp_path / "l.db")
    log.add(rec("a"))
    with pytest.raises(StropError):
        log.mark_outcome("a", "partial", 2**70)


AWS_ID = "AKIA" + "Q7X3T5LZ2M4N6P8R"  # built at runtime: no literal for secret scanners
GH = "gh" + "p_" + "R8d2Kq7Lm3Xz9Tb4Wn6Yc1Vf5Hs0Jp2Ga7Qe"


def _bytes_on_disk(db) -> bytes:
    return b"".join(p.read_bytes() for p in db.parent.iterdir() if p.name.startswith(db.name))


def test_secrets_are_redacted_before_anything_is_stored(tmp_path):
    db = tmp_path / "l.db"
    log = CompletionLog(db)
    cut = 9
    log.add(rec("k", prefix=f'aws = "{AWS_ID[:cut]}', suffix=f'{AWS_ID[cut:]}"\n', completion=f'"{GH}"',
                snippets=[{"path": "conf.py", "text": f"GITHUB_TOKEN = '{GH}'"}]))
    row = log.get("k")
    assert "REDACTED" in row["prefix"] and "REDACTED" in row["completion"] and "REDACTED" in row["snippets"]
    raw = _bytes_on_disk(db)  # the database and its WAL
    for secret in (AWS_ID, AWS_ID[:cut], AWS_ID[cut:], GH):
        assert secret.encode() not in raw


def test_rows_older_than_the_retention_are_pruned_at_open(tmp_path, monkeypatch):
    import time

    from core.completion_log import open_log

    db = tmp_path / "l.db"
    log = CompletionLog(db)
    log.add(rec("old"), now=time.time() - 40 * 86400)
    log.add(rec("week"), now=time.time() - 7 * 86400)
    log.add(rec("new"))
    log.close()
    monkeypatch.setenv("STROP_LOG_RETENTION_DAYS", "never")
    assert {r["id"] for r in open_log(db).rows()} == {"old", "week", "new"}
    monkeypatch.delenv("STROP_LOG_RETENTION_DAYS")
    assert {r["id"] for r in open_log(db).rows()} == {"week", "new"}  # default: 30 days
    monkeypatch.setenv("STROP_LOG_RETENTION_DAYS", "2")
    assert {r["id"] for r in open_log(db).rows()} == {"new"}
    monkeypatch.setenv("STROP_LOG_RETENTION_DAYS", "soon")
    with pytest.raises(StropError, match="STROP_LOG_RETENTION_DAYS"):
        open_log(db)


def test_log_purge_leaves_no_bytes_of_the_purged_rows(tmp_path):
    import json
    import subprocess
    import sys
    import time

    home = tmp_path / "home"
    home.mkdir()
    db = home / "completions.sqlite3"
    log = CompletionLog(db)
    log.add(rec("old", prefix="OLD-MARKER-" * 50), now=time.time() - 10 * 86400)
    log.add(rec("new", prefix="NEW-MARKER-" * 50))
    log.close()
    env = dict(os.environ, STROP_HOME=str(home))

    def strop(*args):
        return subprocess.run([sys.executable, "-m", "strop", "log", *args], env=env, capture_output=True,
                              text=True, timeout=120)

    out = strop("purge", "--older-than", "5")
    assert out.returncode == 0 and "purged 1" in out.stdout, out.stderr
    assert b"OLD-MARKER" not in _bytes_on_disk(db) and b"NEW-MARKER" in _bytes_on_disk(db)
    assert [r["id"] for r in json.loads(strop("--json").stdout)] == ["new"]
    out = strop("purge")
    assert out.returncode == 0 and "purged 1" in out.stdout, out.stderr
    assert b"NEW-MARKER" not in _bytes_on_disk(db)
    bad = strop("purge", "--older-than", "soon")
    assert bad.returncode == 2 and "not a number of days" in bad.stderr


def test_the_change_stamp_moves_only_with_what_a_cycle_learns_from(tmp_path):
    log = CompletionLog(tmp_path / "log.sqlite3")
    before = log.change_stamp("/r")
    log.add(rec("shown-only"))
    log.mark_shown("shown-only")
    log.add(rec("typed", source="typed-through"))
    assert log.change_stamp("/r") == before  # shown, never accepted: no new training data
    log.add(rec("kept"))
    log.mark_outcome("kept", "accepted", 5)
    accepted = log.change_stamp("/r")
    assert accepted[0] == before[0] + 1 and accepted[1] > 0
    log.mark_retention("kept", 4)
    assert log.change_stamp("/r") != accepted  # its weight changed
