import os
import sqlite3
import stat

import pytest

from server import stats
from server.completion_log import SCHEMA_VERSION, CompletionLog, Record
from server.errors import StropError


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
    from server.completion_log import MIGRATIONS

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
