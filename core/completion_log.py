"""The completion log: every completion strop shows, and what became of it, in local SQLite.

WAL mode (readers such as `strop stats` never block the server), a versioned schema migrated in
place under an exclusive transaction (any number of processes may open a fresh log at once), and an
owner-only file. The distillation cycle reads accepted contexts back from here.

What is stored has been through the secret rules (`core.secrets`) first: keys, tokens and
passwords in the prefix, suffix, completion and snippets are stored as `REDACTED`. Rows older than
the retention period (`STROP_LOG_RETENTION_DAYS`, default 30) are deleted when a log is opened
with `open_log()`; `strop log purge` deletes rows and rewrites the file so their bytes are gone.
"""

from __future__ import annotations

import json
import os
import re
import sqlite3
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from core.secrets import redact, redact_pieces

from core.paths import log_db_path, log_retention_days
from core.errors import DiskFull, StropError

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
BUSY_TIMEOUT_S = 30.0  # how long an open or a write waits for another process holding the log
_SURROGATE = re.compile("[\ud800-\udfff]")


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


def storable(text: str) -> str:
    """`text` as SQLite can store it: UTF-8 has no lone surrogates (an editor sends them for half a
    pair of a split emoji), so each becomes U+FFFD; the length in code points is kept."""
    return _SURROGATE.sub("\ufffd", text)


def open_log(path: Path | None = None) -> "CompletionLog":
    """The log at `path` (default: the one under STROP_HOME), pruned to the retention period."""
    return CompletionLog(path or log_db_path(), retention_days=log_retention_days())


class CompletionLog:
    def __init__(self, path: Path, *, retention_days: float | None = None) -> None:
        """`retention_days`: delete rows older than that many days now (None: keep them)."""
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
            self._db = sqlite3.connect(self.path, check_same_thread=False, timeout=BUSY_TIMEOUT_S,
                                       isolation_level=None)
        except sqlite3.DatabaseError as err:
            raise _translate(err, self.path) from err
        try:
            self._db.row_factory = sqlite3.Row
            self._set_wal()
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute("PRAGMA secure_delete=ON")  # deleted rows are overwritten, not left in free pages
            self._migrate()
            if retention_days is not None:
                self.prune(retention_days)
        except BaseException as err:
            self._db.close()
            if isinstance(err, sqlite3.DatabaseError):
                raise _translate(err, self.path) from err
            raise
        for extra in ("-wal", "-shm"):
            side = Path(str(self.path) + extra)
            if side.exists():
                os.chmod(side, 0o600)

    def _set_wal(self) -> None:
        """Switch to WAL. The switch needs the file to itself for a moment and SQLite answers "database
        is locked" at once rather than waiting for a process that is creating or migrating the same
        log, so retry until the busy timeout."""
        deadline = time.monotonic() + BUSY_TIMEOUT_S
        delay = 0.002
        while True:
            try:
                if self._db.execute("PRAGMA journal_mode=WAL").fetchone()[0].lower() == "wal":
                    return
                why = "SQLite kept another journal mode"
            except sqlite3.OperationalError as err:
                if "locked" not in str(err) and "busy" not in str(err):
                    raise
                why = str(err)
            if time.monotonic() > deadline:
                raise StropError(f"the completion log {self.path} could not be switched to WAL mode within "
                                 f"{BUSY_TIMEOUT_S:.0f} s ({why}): another process holds it. Stop other strop "
                                 "processes, or point STROP_HOME elsewhere.")
            time.sleep(delay)
            delay = min(2 * delay, 0.05)

    def _version(self) -> int:
        return self._db.execute("PRAGMA user_version").fetchone()[0]

    def _migrate(self) -> None:
        """Bring the schema to SCHEMA_VERSION. The version is read again inside an exclusive
        transaction, so of two processes opening a fresh log at once one migrates and the other
        waits (busy timeout), then finds the work done."""
        if self._version() == SCHEMA_VERSION:
            return
        self._db.execute("BEGIN EXCLUSIVE")
        try:
            version = self._version()
            if version > SCHEMA_VERSION:
                raise StropError(f"the completion log {self.path} has schema version {version}, newer than this "
                                 f"strop understands ({SCHEMA_VERSION}). Upgrade strop or point STROP_HOME "
                                 "elsewhere.")
            for v in range(version, SCHEMA_VERSION):
                for stmt in MIGRATIONS[v].split(";"):
                    if stmt.strip():
                        self._db.execute(stmt)
            self._db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _write(self, sql: str, args: tuple) -> int:
        with self._lock:
            try:
                return self._db.execute(sql, args).rowcount
            except sqlite3.Error as err:
                raise _translate(err, self.path) from err
            except (ValueError, OverflowError) as err:  # a value SQLite cannot hold (text, integer size)
                raise StropError(f"the completion log {self.path} cannot store a value: {err}.") from err

    # --- writes -------------------------------------------------------------------------------
    def add(self, rec: Record, *, now: float | None = None) -> None:
        """Store a completion. Its texts go through the secret rules first (see the module doc), and
        lone surrogates become U+FFFD: a completion is never lost to what its text holds."""
        # Secrets of the document as it is (one may span the cursor), then of the document as the
        # completion would leave it.
        prefix, suffix = redact_pieces([storable(rec.prefix), storable(rec.suffix)])
        prefix, completion, suffix = redact_pieces([prefix, storable(rec.completion), suffix])
        snippets = [{**s, "path": storable(str(s.get("path", ""))), "text": redact(storable(s.get("text", "")))[0]}
                    for s in rec.snippets]
        values = (rec.id, now or time.time(), rec.repo, rec.path, rec.language, rec.model, rec.model_version,
                  rec.trigger, prefix, suffix, json.dumps(snippets), completion, int(rec.multiline),
                  ",".join(rec.rules), rec.latency_ms, rec.prompt_ms, rec.gen_ms, rec.n_prompt_tokens,
                  rec.n_reused_tokens, rec.n_gen_tokens, rec.source, rec.stop_reason)
        self._write(
            """INSERT INTO completions (id, created_at, repo, path, language, model, model_version, trigger,
               prefix, suffix, snippets, completion, multiline, rules, latency_ms, prompt_ms, gen_ms,
               n_prompt_tokens, n_reused_tokens, n_gen_tokens, source, stop_reason)
               VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)""",
            tuple(storable(v) if isinstance(v, str) else v for v in values),
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

    def prune(self, older_than_days: float) -> int:
        """Delete the rows created more than `older_than_days` days ago; how many."""
        return self._write("DELETE FROM completions WHERE created_at < ?", (time.time() - older_than_days * 86400,))

    def purge(self, older_than_days: float | None = None) -> int:
        """Delete rows (all, or those older than `older_than_days`) so that their bytes are gone from
        the disk: deleted pages are overwritten (secure_delete), the file is rebuilt (VACUUM) and the
        WAL is checkpointed and truncated. Returns how many rows went."""
        n = self.prune(older_than_days) if older_than_days is not None else self._write("DELETE FROM completions", ())
        with self._lock:
            try:
                self._db.execute("VACUUM")
                busy = self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0]
            except sqlite3.Error as err:
                raise _translate(err, self.path) from err
        if busy:
            raise StropError(f"{n} rows were deleted from {self.path}, but another process (a running "
                             "`strop serve`?) kept the write-ahead log open, so their old bytes may still be in "
                             f"{self.path.name}-wal. Stop it and run `strop log purge` again.")
        return n

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
        """(rows, newest change) of what a distillation cycle learns from: the accepted (or partly
        accepted) completions of a repository, and when their outcome or retention last changed. A
        completion only shown, dismissed, or answered without the model is never training data, so it
        does not make the next cycle run."""
        with self._lock:
            row = self._db.execute(
                "SELECT COUNT(*), COALESCE(MAX(MAX(COALESCE(outcome_at, 0), COALESCE(retention_checked_at, 0))), 0) "
                "FROM completions WHERE repo = ? AND outcome IN ('accepted', 'partial')", (repo,)).fetchone()
        return int(row[0]), float(row[1])
