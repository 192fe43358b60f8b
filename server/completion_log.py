"""The completion log: every completion strop shows, and what became of it, in local SQLite.

WAL mode (readers such as `strop stats` never block the server), a versioned schema migrated in
place, and an owner-only file. The distillation cycle reads accepted contexts back from here.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from .errors import DiskFull, StropError

SCHEMA_VERSION = 2

# Migrations: index i brings the schema from version i to i + 1.
MIGRATIONS = [
    """
    CREATE TABLE completions (
        id TEXT PRIMARY KEY,
        created_at REAL NOT NULL,
        repo TEXT NOT NULL DEFAULT '',
        path TEXT NOT NULL DEFAULT '',
        language TEXT NOT NULL DEFAULT '',
        model TEXT NOT NULL DEFAULT '',
        model_version TEXT NOT NULL DEFAULT '',
        trigger TEXT NOT NULL DEFAULT 'automatic',
        prefix TEXT NOT NULL,           -- prefix window the prompt was built from
        suffix TEXT NOT NULL,           -- suffix window
        snippets TEXT NOT NULL DEFAULT '[]',  -- JSON [{path, text}] of other files in the prompt
        completion TEXT NOT NULL,
        multiline INTEGER NOT NULL DEFAULT 0,
        rules TEXT NOT NULL DEFAULT '',  -- post-processing rules that changed the text
        latency_ms REAL,                 -- request received → result ready
        prompt_ms REAL,                  -- prompt evaluation (time to first token)
        gen_ms REAL,                     -- generation after the first token
        n_prompt_tokens INTEGER,
        n_reused_tokens INTEGER,         -- prompt tokens served from the KV cache
        n_gen_tokens INTEGER,
        source TEXT NOT NULL DEFAULT 'model',  -- model | typed-through | cache
        outcome TEXT NOT NULL DEFAULT 'pending',  -- pending|shown|accepted|partial|dismissed
        shown_at REAL,
        outcome_at REAL,
        accepted_chars INTEGER,
        retained_chars INTEGER,
        retention_checked_at REAL
    );
    CREATE INDEX completions_created ON completions(created_at);
    CREATE INDEX completions_repo_outcome ON completions(repo, outcome);
    """,
    # 2: why generation stopped (eog | newline | block | time | max_tokens), for latency and
    # hygiene analysis; NULL for completions logged before.
    """
    ALTER TABLE completions ADD COLUMN stop_reason TEXT;
    """,
]

OUTCOMES = ("pending", "shown", "accepted", "partial", "dismissed")


@dataclass(frozen=True)
class Record:
    id: str
    repo: str
    path: str
    language: str
    model: str
    model_version: str
    prefix: str
    suffix: str
    snippets: list[dict]
    completion: str
    multiline: bool
    rules: tuple[str, ...] = ()
    trigger: str = "automatic"
    latency_ms: float | None = None
    prompt_ms: float | None = None
    gen_ms: float | None = None
    n_prompt_tokens: int | None = None
    n_reused_tokens: int | None = None
    n_gen_tokens: int | None = None
    source: str = "model"
    stop_reason: str | None = None


def _translate(err: sqlite3.Error, path: Path) -> StropError:
    text = str(err).lower()
    if "full" in text or "disk i/o" in text:
        return DiskFull(f"the completion log {path} cannot grow: the disk is full. Free some space; "
                        "completions keep being served but are not logged meanwhile.")
    return StropError(f"the completion log {path} failed: {err}. If the file is damaged, move it aside; "
                      "strop creates a new one.")


class CompletionLog:
    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fresh = not self.path.exists()
        if fresh:
            # Create owner-only before SQLite opens it, so there is no window with wider permissions.
            fd = os.open(self.path, os.O_CREAT | os.O_RDWR, 0o600)
            os.close(fd)
        os.chmod(self.path, 0o600)
        self._lock = threading.Lock()
        try:
            self._db = sqlite3.connect(self.path, check_same_thread=False, timeout=10, isolation_level=None)
            self._db.row_factory = sqlite3.Row
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._migrate()
        except sqlite3.DatabaseError as err:
            raise _translate(err, self.path) from err
        for extra in ("-wal", "-shm"):
            side = Path(str(self.path) + extra)
            if side.exists():
                os.chmod(side, 0o600)

    def _migrate(self) -> None:
        version = self._db.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise StropError(f"the completion log {self.path} has schema version {version}, newer than this "
                             f"strop understands ({SCHEMA_VERSION}). Upgrade strop or point STROP_HOME elsewhere.")
        for v in range(version, SCHEMA_VERSION):
            with self._db:
                self._db.execute("BEGIN")
                for stmt in MIGRATIONS[v].split(";"):
                    if stmt.strip():
                        self._db.execute(stmt)
                self._db.execute(f"PRAGMA user_version={v + 1}")

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _write(self, sql: str, args: tuple) -> int:
        with self._lock:
            try:
                return self._db.execute(sql, args).rowcount
            except sqlite3.Error as err:
                raise _translate(err, self.path) from err

    # --- writes -------------------------------------------------------------------------------
    def add(self, rec: Record, *, now: float | None = None) -> None:
        self._write(
            """INSERT INTO completions (id, created_at, repo, path, language, model, model_version, trigger,
               prefix, suffix, snippets, completion, multiline, rules, latency_ms, prompt_ms, gen_ms,
               n_prompt_tokens, n_reused_tokens, n_gen_tokens, source, stop_reason)
               VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)""",
            (rec.id, now or time.time(), rec.repo, rec.path, rec.language, rec.model, rec.model_version,
             rec.trigger, rec.prefix, rec.suffix, json.dumps(rec.snippets), rec.completion, int(rec.multiline),
             ",".join(rec.rules), rec.latency_ms, rec.prompt_ms, rec.gen_ms, rec.n_prompt_tokens,
             rec.n_reused_tokens, rec.n_gen_tokens, rec.source, rec.stop_reason),
        )

    def mark_shown(self, cid: str) -> bool:
        return self._write(
            "UPDATE completions SET shown_at = COALESCE(shown_at, ?), "
            "outcome = CASE WHEN outcome = 'pending' THEN 'shown' ELSE outcome END WHERE id = ?",
            (time.time(), cid)) > 0

    def mark_outcome(self, cid: str, outcome: str, accepted_chars: int | None = None) -> bool:
        """Record accepted / partial / dismissed. An accept is final: a later dismiss of the same id
        (clients send both when the ghost text disappears after an accept) does not undo it."""
        assert outcome in OUTCOMES
        return self._write(
            "UPDATE completions SET outcome = ?, outcome_at = ?, shown_at = COALESCE(shown_at, ?), "
            "accepted_chars = COALESCE(?, accepted_chars) "
            "WHERE id = ? AND NOT (outcome = 'accepted' AND ? != 'accepted') "
            "AND NOT (outcome = 'partial' AND ? = 'dismissed')",
            (outcome, time.time(), time.time(), accepted_chars, cid, outcome, outcome)) > 0

    def mark_retention(self, cid: str, retained_chars: int) -> bool:
        return self._write("UPDATE completions SET retained_chars = ?, retention_checked_at = ? WHERE id = ?",
                           (retained_chars, time.time(), cid)) > 0

    # --- reads --------------------------------------------------------------------------------
    def get(self, cid: str) -> dict | None:
        with self._lock:
            row = self._db.execute("SELECT * FROM completions WHERE id = ?", (cid,)).fetchone()
        return dict(row) if row else None

    def recent(self, limit: int = 20) -> list[dict]:
        with self._lock:
            rows = self._db.execute("SELECT * FROM completions ORDER BY created_at DESC LIMIT ?", (limit,)).fetchall()
        return [dict(r) for r in rows]

    def rows(self, where: str = "1=1", args: tuple = ()) -> Iterator[dict]:
        with self._lock:
            rows = self._db.execute(f"SELECT * FROM completions WHERE {where}", args).fetchall()
        return (dict(r) for r in rows)

    def accepted_contexts(self, repo: str) -> list[dict]:
        """Accepted (or partly accepted) completions of a repository, with the context to rebuild them."""
        return list(self.rows("repo = ? AND outcome IN ('accepted', 'partial')", (repo,)))

    def change_stamp(self, repo: str) -> tuple[int, float]:
        """(rows, newest outcome time) for a repository: cheap 'did the log change' check for the scheduler."""
        with self._lock:
            row = self._db.execute(
                "SELECT COUNT(*), COALESCE(MAX(COALESCE(outcome_at, created_at)), 0) FROM completions WHERE repo = ?",
                (repo,)).fetchone()
        return int(row[0]), float(row[1])
