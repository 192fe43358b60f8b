"""Repository retrieval: a BM25 index over sliding-window chunks of a repository's tracked files.

    index = RepoIndex.build(repo_root, excludes=["docs/"], store_dir=store_dir_for(repo_root))
    chunks = query_around(index, "httpx/_client.py", buffer_text, cursor_line, k=4)
    prompt_chunks = pack(chunks, budget=1200)              # or budget=400, count=count_tokens

Chunks: windows of WINDOW_LINES = 20 lines every STRIDE_LINES = 10 (half a window). With a stride
of half the window, every span of up to 10 lines (a typical definition with its signature and
docstring) lies whole inside some window, while each line is indexed only twice; 20 lines (about
200 tokens of code) is what fits several times in the prompt's budget for repository context.
Line numbers are 0-based and `end_line` is exclusive, as in LSP positions and Python slices.

Files: `git ls-files`, filtered by core.repo_files.FileRules (secret files never opened, gitignore-
style excludes, binary/huge/minified skipped); texts are redacted with core.secrets before they are
chunked, so neither chunk texts nor tokens carry a secret.

Incremental updates. bm25s's index is a static sparse matrix, so an update re-tokenises only the
files that changed (tokens are cached per line of each file) and then rebuilds the matrix from the
cached tokens of all chunks; the rebuild is the cheap part (measured in
benchmarks/results/retrieval.json). Updates are copy-on-write: a new immutable snapshot is built
under a writer lock and swapped in with one assignment, so `query` never waits for an update and
is safe from any thread.

Persistence (`store_dir`): one JSON file per repository, written atomically (temporary file, then
rename). Loading reuses every file whose (size, mtime) or git blob id is unchanged without reading
or re-tokenising it; a change of the tokenizer, the window or the file rules discards the cache.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import bm25s
import numpy as np

from core.code_tokens import TOKENIZER_VERSION, code_tokens
from core.errors import StropError
from core.paths import strop_home
from core.repo_files import FileRules, blob_sha, relative_path, tracked_files

logging.getLogger("bm25s").setLevel(logging.WARNING)  # bm25s sets its own logger to DEBUG on import

WINDOW_LINES = 20
STRIDE_LINES = 10
FORMAT_VERSION = 1
_CANDIDATES_PER_RESULT = 4  # top-scoring windows looked at per result asked, before overlaps go

Progress = Callable[[int, int], None]  # (files done, files total)


class RetrievalError(StropError):
    pass


@dataclass(frozen=True)
class Chunk:
    path: str  # repository-relative posix path
    start_line: int  # 0-based
    end_line: int  # exclusive
    text: str
    score: float = 0.0


@dataclass(frozen=True)
class _File:
    sha: str  # git blob id of the bytes read (or of the text given to update_file)
    size: int
    mtime_ns: int
    lines: tuple[str, ...]  # redacted, with their "\n"
    line_tokens: tuple[tuple[str, ...], ...]

    def windows(self) -> list[tuple[int, int]]:
        n = len(self.lines)
        out, start = [], 0
        while start < n:
            end = min(n, start + WINDOW_LINES)
            if any(self.line_tokens[start:end]):
                out.append((start, end))
            if end == n:
                break
            start += STRIDE_LINES
        return out


@dataclass(frozen=True)
class _Snapshot:
    files: Mapping[str, _File]
    chunks: tuple[tuple[str, int, int], ...]  # (path, start, end) per bm25 document
    bm25: bm25s.BM25 | None
    chunk_ids_by_path: Mapping[str, np.ndarray]
    total_bytes: int = 0


def _snapshot(files: Mapping[str, _File]) -> _Snapshot:
    chunks, corpus = [], []
    for path in sorted(files):
        f = files[path]
        for start, end in f.windows():
            chunks.append((path, start, end))
            corpus.append([t for toks in f.line_tokens[start:end] for t in toks])
    bm25 = None
    if corpus:
        bm25 = bm25s.BM25()
        bm25.index(corpus, show_progress=False)
    by_path: dict[str, list[int]] = {}
    for i, (path, _, _) in enumerate(chunks):
        by_path.setdefault(path, []).append(i)
    return _Snapshot(dict(files), tuple(chunks), bm25,
                     {p: np.asarray(ids, dtype=np.int64) for p, ids in by_path.items()},
                     sum(len(line) for f in files.values() for line in f.lines))


def _make_file(text: str, sha: str, size: int, mtime_ns: int) -> _File:
    lines = tuple(text.splitlines(keepends=True))
    return _File(sha, size, mtime_ns, lines, tuple(tuple(code_tokens(line)) for line in lines))


def store_dir_for(repo_root: str | os.PathLike) -> Path:
    """Where the index of a repository is kept: STROP_HOME/index/<name>-<hash of its real path>."""
    root = Path(repo_root).resolve()
    digest = hashlib.sha256(str(root).encode("utf-8", "surrogateescape")).hexdigest()[:12]
    return strop_home() / "index" / f"{root.name or 'root'}-{digest}"


@dataclass
class _Stats:
    build_seconds: float = 0.0
    last_update_seconds: float = 0.0
    last_update_files: int = 0
    updated_at: float = 0.0
    tokenised_files: int = 0  # files (re-)tokenised since this object was made
    reused_files: int = 0  # files taken from the persisted index unchanged
    skipped: dict[str, int] = field(default_factory=dict)


class RepoIndex:
    """A BM25 index of one repository's chunks. Build with RepoIndex.build(); query from any thread."""

    _CACHE_NAME = "index.json"

    def __init__(self, repo_root: Path, rules: FileRules, store_dir: Path | None):
        self.root = Path(repo_root).resolve()
        self.rules = rules
        self.store_dir = Path(store_dir) if store_dir is not None else None
        self._snap = _snapshot({})
        self._skipped: dict[str, tuple[int, int, str]] = {}  # path -> (size, mtime_ns, reason)
        self._write = threading.Lock()
        self._stats = _Stats()
        self._dirty = False
        self._tracked: frozenset[str] = frozenset()
        self._version = 0

    # --- building -------------------------------------------------------------------------------

    @classmethod
    def build(cls, repo_root: str | os.PathLike, *, excludes: Iterable[str] = (),
              store_dir: str | os.PathLike | None = None, rules: FileRules | None = None,
              progress: Progress | None = None) -> RepoIndex:
        """Index the repository's tracked files; with `store_dir`, start from (and then write) the
        persisted index there, re-reading only the files that changed since it was written."""
        index = cls(Path(repo_root), rules or FileRules(excludes=tuple(excludes)),
                    Path(store_dir) if store_dir is not None else None)
        t0 = time.perf_counter()
        index._load()
        index.refresh(progress=progress)
        index._stats.build_seconds = time.perf_counter() - t0
        index.save()
        return index

    def refresh(self, *, progress: Progress | None = None) -> list[str]:
        """Bring the index in line with the working tree's tracked files; returns the changed paths.

        A file whose size and mtime match its entry is not read; one whose bytes hash to its
        entry's blob id is not re-tokenised. Yields the GIL between files (build runs in threads)."""
        with self._write:
            t0 = time.perf_counter()
            paths = tracked_files(self.root)
            self._tracked = frozenset(paths)
            old = self._snap.files
            files: dict[str, _File] = {}
            changed: list[str] = []
            skipped: dict[str, tuple[int, int, str]] = {}
            for i, path in enumerate(paths):
                if progress is not None:
                    progress(i, len(paths))
                prev = old.get(path)
                entry = self._refreshed(path, prev, skipped)
                if entry is not None:
                    files[path] = entry
                    if prev is None or prev.sha != entry.sha:
                        changed.append(path)
                    elif prev is not entry:
                        self._dirty = True  # only its stat changed: persist, no rebuild
                time.sleep(0)  # let the event loop's thread run between files
            changed += [p for p in old if p not in files]
            if skipped != self._skipped:
                self._skipped, self._dirty = skipped, True
            if progress is not None:
                progress(len(paths), len(paths))
            if changed or self._snap.bm25 is None:
                self._swap(files, changed, t0)
            elif self._dirty:
                snap = self._snap
                self._snap = _Snapshot(files, snap.chunks, snap.bm25, snap.chunk_ids_by_path, snap.total_bytes)
            return changed

    def _refreshed(self, path: str, entry: _File | None, skipped: dict) -> _File | None:
        reason = self.rules.skip_path(path)
        if reason is not None:
            skipped[path] = (0, 0, reason)
            return None
        try:
            st = (self.root / path).stat()
        except OSError:
            return None  # deleted in the working tree but still in git's index
        if entry is not None and (entry.size, entry.mtime_ns) == (st.st_size, st.st_mtime_ns):
            self._stats.reused_files += 1
            return entry
        prev = self._skipped.get(path)
        if prev is not None and prev[:2] == (st.st_size, st.st_mtime_ns):
            skipped[path] = prev
            return None
        try:
            data = (self.root / path).read_bytes()
        except OSError:
            return None
        sha = blob_sha(data)
        if entry is not None and entry.sha == sha:
            return _File(sha, st.st_size, st.st_mtime_ns, entry.lines, entry.line_tokens)
        text, reason = self.rules.decode(data)
        if text is None:
            skipped[path] = (st.st_size, st.st_mtime_ns, reason)
            return None
        self._stats.tokenised_files += 1
        return _make_file(text, sha, st.st_size, st.st_mtime_ns)

    # --- incremental updates --------------------------------------------------------------------

    def update_file(self, path: str | os.PathLike, text: str) -> bool:
        """Index `text` as the content of `path` (e.g. the buffer just saved). Only that file is
        re-tokenised; returns False when the path is not indexable (a secret file, excluded, ...)."""
        return bool(self.apply({path: text}))

    def remove_file(self, path: str | os.PathLike) -> bool:
        return bool(self.apply({path: None}))

    def apply(self, updates: Mapping[str | os.PathLike, str | None]) -> list[str]:
        """Several updates (None removes a file) with one rebuild; returns the paths that changed."""
        with self._write:
            t0 = time.perf_counter()
            files = dict(self._snap.files)
            changed = []
            for raw_path, text in updates.items():
                path = relative_path(self.root, raw_path)
                if text is None or self.rules.skip_path(path):
                    if files.pop(path, None) is not None:
                        changed.append(path)
                    continue
                data = text.encode("utf-8", "surrogateescape")
                sha = blob_sha(data)
                if path in files and files[path].sha == sha:
                    continue
                decoded, _ = self.rules.decode(data)
                if decoded is None:
                    if files.pop(path, None) is not None:
                        changed.append(path)
                    continue
                try:
                    st = (self.root / path).stat()
                    size, mtime_ns = st.st_size, st.st_mtime_ns
                except OSError:
                    size, mtime_ns = -1, -1  # not on disk: the next refresh re-reads it
                self._stats.tokenised_files += 1
                files[path] = _make_file(decoded, sha, size, mtime_ns)
                changed.append(path)
            if changed:
                self._swap(files, changed, t0)
            return changed

    @property
    def version(self) -> int:
        """Changes whenever the indexed content does (for callers that cache query results)."""
        return self._version

    def _swap(self, files: dict[str, _File], changed: list[str], t0: float) -> None:
        self._snap = _snapshot(files)
        self._version += 1
        self._dirty = True
        self._stats.last_update_seconds = time.perf_counter() - t0
        self._stats.last_update_files = len(changed)
        self._stats.updated_at = time.time()

    # --- querying -------------------------------------------------------------------------------

    def query(self, text: str, k: int = 4, *, exclude_path: str | None = None,
              exclude_span: tuple[str, int, int] | None = None,
              keep_path: Callable[[str], bool] | None = None) -> list[Chunk]:
        """The k best chunks for `text`, best first; no two overlap. `exclude_path` drops a whole
        file; `exclude_span=(path, start, end)` drops that file's chunks overlapping lines
        [start, end) (the text around the cursor, already in the prompt); `keep_path`: only files
        it accepts."""
        snap = self._snap
        tokens = list(dict.fromkeys(code_tokens(text)))
        if snap.bm25 is None or not tokens or k <= 0:
            return []
        scores = snap.bm25.get_scores(tokens)
        if exclude_path is not None and exclude_path in snap.chunk_ids_by_path:
            scores[snap.chunk_ids_by_path[exclude_path]] = 0.0
        if keep_path is not None:
            for path, ids in snap.chunk_ids_by_path.items():
                if not keep_path(path):
                    scores[ids] = 0.0
        if exclude_span is not None and exclude_span[0] in snap.chunk_ids_by_path:
            span_path, lo, hi = exclude_span
            for i in snap.chunk_ids_by_path[span_path]:
                _, start, end = snap.chunks[i]
                if start < hi and lo < end:
                    scores[i] = 0.0
        n = min(len(scores), k * _CANDIDATES_PER_RESULT)
        top = np.argpartition(-scores, n - 1)[:n] if n < len(scores) else np.arange(len(scores))
        order = sorted((i for i in top.tolist() if scores[i] > 0), key=lambda i: (-scores[i], snap.chunks[i]))
        out: list[Chunk] = []
        for i in order:
            path, start, end = snap.chunks[i]
            if any(c.path == path and c.start_line < end and start < c.end_line for c in out):
                continue
            out.append(Chunk(path, start, end, "".join(snap.files[path].lines[start:end]), float(scores[i])))
            if len(out) == k:
                break
        return out

    def chunks(self) -> list[Chunk]:
        """Every indexed chunk (score 0), in (path, start_line) order."""
        snap = self._snap
        return [Chunk(p, s, e, "".join(snap.files[p].lines[s:e])) for p, s, e in snap.chunks]

    def paths(self) -> list[str]:
        """The indexed files."""
        return sorted(self._snap.files)

    def is_tracked(self, path: str | os.PathLike) -> bool:
        """Was `path` among git's tracked files at the last refresh (indexed or not)?"""
        return relative_path(self.root, path) in self._tracked

    def stats(self) -> dict:
        snap = self._snap
        skipped: dict[str, int] = {}
        for _, _, reason in self._skipped.values():
            skipped[reason] = skipped.get(reason, 0) + 1
        return {
            "root": str(self.root),
            "files": len(snap.files),
            "chunks": len(snap.chunks),
            "bytes": snap.total_bytes,  # characters of indexed (redacted) text
            "vocabulary": len(snap.bm25.vocab_dict) if snap.bm25 is not None else 0,
            "build_seconds": round(self._stats.build_seconds, 4),
            "last_update_seconds": round(self._stats.last_update_seconds, 4),
            "last_update_files": self._stats.last_update_files,
            "updated_at": self._stats.updated_at,
            "tokenised_files": self._stats.tokenised_files,
            "reused_files": self._stats.reused_files,
            "skipped": skipped,
        }

    # --- persistence ----------------------------------------------------------------------------

    def _key(self) -> dict:
        return {"format": FORMAT_VERSION, "tokenizer": TOKENIZER_VERSION, "window": WINDOW_LINES,
                "stride": STRIDE_LINES, "rules": self.rules.as_key(), "root": str(self.root)}

    def save(self) -> None:
        """Write the index to store_dir atomically (no-op without a store_dir or changes)."""
        if self.store_dir is None or not self._dirty:
            return
        snap = self._snap
        doc = {"key": self._key(), "files": {
            path: {"sha": f.sha, "size": f.size, "mtime_ns": f.mtime_ns, "lines": f.lines,
                   "tokens": [" ".join(t) for t in f.line_tokens]}
            for path, f in snap.files.items()},
            "skipped": self._skipped}
        self.store_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd, tmp = tempfile.mkstemp(dir=self.store_dir, prefix=".index-", suffix=".tmp")
        try:
            with os.fdopen(fd, "w", encoding="utf-8", errors="surrogateescape") as out:
                json.dump(doc, out, separators=(",", ":"))
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, self.store_dir / self._CACHE_NAME)
        except OSError as err:
            Path(tmp).unlink(missing_ok=True)
            raise RetrievalError(f"cannot write the retrieval index to {self.store_dir}: {err}; "
                                 "free disk space or fix the directory's permissions.") from None
        self._dirty = False

    def _load(self) -> None:
        if self.store_dir is None:
            return
        try:
            with open(self.store_dir / self._CACHE_NAME, encoding="utf-8", errors="surrogateescape") as f:
                doc = json.load(f)
        except (OSError, ValueError):
            return  # none yet, or unreadable: build from scratch
        if doc.get("key") != json.loads(json.dumps(self._key())):
            return
        files = {
            path: _File(e["sha"], e["size"], e["mtime_ns"], tuple(e["lines"]),
                        tuple(tuple(t.split()) for t in e["tokens"]))
            for path, e in doc["files"].items()}
        self._skipped = {p: tuple(v) for p, v in doc.get("skipped", {}).items()}
        self._snap = _Snapshot(files, (), None, {})  # refresh() builds the matrix


# --- queries from a cursor, and packing -----------------------------------------------------------


def cursor_query(text: str, line: int, *, lines_before: int = 12) -> str:
    """The query for a cursor on `line` (0-based) of `text`: the `lines_before` lines above it and
    the cursor's line itself (identifiers being used there say most about what comes next)."""
    lines = text.splitlines()
    return "\n".join(lines[max(0, line - lines_before): line + 1])


def query_around(index: RepoIndex, path: str, text: str, line: int, *, k: int = 4,
                 lines_before: int = 12, exclude_lines: tuple[int, int] | None = None) -> list[Chunk]:
    """Chunks for a cursor on `line` of `path` (whose current text is `text`), excluding the chunks
    of the same file overlapping `exclude_lines` (default: the query window, lines_before above the
    cursor to the cursor's line) since the prompt's local window already holds them."""
    lo, hi = exclude_lines if exclude_lines is not None else (line - lines_before, line + 1)
    return index.query(cursor_query(text, line, lines_before=lines_before), k,
                       exclude_span=(path, lo, hi))


def pack(chunks: Sequence[Chunk], budget: int, *, count: Callable[[str], int] = len,
         max_chunks: int | None = None) -> list[Chunk]:
    """The chunks to put in a prompt: chosen by score, laid out by place.

    Chosen greedily, best score first: each chunk whose `count(chunk.text)` (characters by
    default, or a token counter) still fits in `budget` is taken, at most `max_chunks` of them.
    Returned sorted by (path, start_line), not by
    score: the repository context is the head of the prompt, and the KV cache keeps only the
    prefix that did not change. Ordered by place, the same chosen set gives the same bytes whatever
    the scores, and a keystroke that swaps one chunk out changes the prompt only from that chunk's
    place on; ordered by score, a small change in the query reorders the head and the cache is lost.
    """
    chosen: list[Chunk] = []
    used = 0
    for chunk in sorted(chunks, key=lambda c: (-c.score, c.path, c.start_line)):
        if max_chunks is not None and len(chosen) >= max_chunks:
            break
        cost = count(chunk.text)
        if used + cost <= budget:
            chosen.append(chunk)
            used += cost
    return sorted(chosen, key=lambda c: (c.path, c.start_line))
