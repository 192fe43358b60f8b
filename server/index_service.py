"""Keeps the repository's retrieval index (core.retrieval.RepoIndex) fresh for `strop serve`.

    service = IndexService(workspace_root)      # nothing runs yet
    service.start()                             # returns at once; loads or builds in a thread
    service.query_around(path, text, line)      # [] until the index is ready, then chunks
    service.on_saved(path, text)                # from textDocument/didSave: that file re-indexed
    service.stats()                             # for strop doctor / strop/status
    service.stop()                              # persists the index, joins the thread

One daemon thread does all the work, so the asyncio loop never waits for the index and the first
suggestion is never delayed by it: it loads the persisted index (re-reading only files changed
since) or builds it, then serves a queue of saved files (coalesced: one matrix rebuild per batch)
and every `poll_seconds` looks at git (HEAD and the index file's mtime): after a commit, checkout,
pull or `git add` it refreshes, which re-reads only the files whose size/mtime changed. Edits
made outside the editor and outside git are picked up at the next git change. Each update swaps
a new immutable snapshot in (core.retrieval), so queries from the loop's thread never block; the
build yields the GIL between files. The index is written to disk at most every `save_seconds`
and at stop.

Only tracked files are indexed: a saved file git does not track joins after `git add`.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections.abc import Iterable
from pathlib import Path

from core import git
from core.errors import StropError
from core.retrieval import Chunk, RepoIndex, query_around, store_dir_for

log = logging.getLogger(__name__)

_STOP = object()


class IndexService:
    def __init__(self, repo_root: str | os.PathLike, *, excludes: Iterable[str] = (),
                 store_dir: str | os.PathLike | None = None, poll_seconds: float = 5.0,
                 save_seconds: float = 30.0):
        self.root = Path(repo_root).resolve()
        self.excludes = tuple(excludes)
        self.store_dir = Path(store_dir) if store_dir is not None else None
        self.poll_seconds = poll_seconds
        self.save_seconds = save_seconds
        self._index: RepoIndex | None = None
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._done = threading.Event()
        self._state = "not started"
        self._error: str | None = None
        self._progress = (0, 0)
        self._refreshes = 0

    # --- the API ----------------------------------------------------------------------------------

    def start(self) -> None:
        """Start the background thread; returns at once."""
        if self._thread is not None:
            return
        self._state = "building"
        self._thread = threading.Thread(target=self._run, name="strop-index", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Finish the queued updates, persist the index and end the thread."""
        if self._thread is None:
            return
        self._queue.put(_STOP)
        self._thread.join(timeout)
        self._thread = None

    def wait_ready(self, timeout: float | None = None) -> bool:
        """Block until the index is ready (or the build failed); True when ready. For tests/tools."""
        self._ready.wait(timeout)
        return self._index is not None

    @property
    def index(self) -> RepoIndex | None:
        """The index, or None while it is being built (or when building failed)."""
        return self._index

    def query(self, text: str, k: int = 4, **kwargs) -> list[Chunk]:
        index = self._index
        return index.query(text, k, **kwargs) if index is not None else []

    def query_around(self, path: str, text: str, line: int, **kwargs) -> list[Chunk]:
        """core.retrieval.query_around on the current index; `path` may be absolute."""
        index = self._index
        if index is None:
            return []
        try:
            rel = os.path.relpath(path, self.root) if os.path.isabs(path) else path
        except ValueError:
            return []
        return query_around(index, Path(rel).as_posix(), text, line, **kwargs)

    def on_saved(self, path: str | os.PathLike, text: str) -> None:
        """A document was saved with `text`; its chunks are re-made in the background."""
        self._queue.put((str(path), text))

    def stats(self) -> dict:
        index = self._index
        return {"state": self._state, "error": self._error, "progress": list(self._progress),
                "refreshes": self._refreshes, **(index.stats() if index is not None else {})}

    # --- the thread -------------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            store = self.store_dir if self.store_dir is not None else store_dir_for(self.root)
            self._index = RepoIndex.build(self.root, excludes=self.excludes, store_dir=store,
                                          progress=self._on_progress)
        except StropError as err:  # e.g. not a git work tree: an ordinary setup, said in status and doctor
            self._fail(str(err), level=logging.INFO)
            return
        except Exception as err:  # noqa: BLE001 - the server keeps serving without retrieval
            log.exception("building the retrieval index failed")
            self._fail(f"building the retrieval index of {self.root} failed ({err!r}); completions "
                       "go on without repository context. Run `strop doctor` and report this.")
            return
        self._state = "ready"
        self._ready.set()
        try:
            self._serve(self._index)
        finally:
            self._persist(self._index)
            self._state = "stopped"

    def _serve(self, index: RepoIndex) -> None:
        git_state = self._git_state()
        next_poll = time.monotonic() + self.poll_seconds
        next_save = time.monotonic() + self.save_seconds
        while True:
            try:
                item = self._queue.get(timeout=max(0.0, min(next_poll, next_save) - time.monotonic()))
            except queue.Empty:
                item = None
            saved: dict[str, str] = {}
            stop = False
            while item is not None:
                if item is _STOP:
                    stop = True
                else:
                    saved[item[0]] = item[1]
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    item = None
            self._guard(lambda: index.apply({p: t for p, t in saved.items() if self._tracked(index, p)}))
            if stop:
                return
            now = time.monotonic()
            if now >= next_poll:
                state = self._git_state()
                if state != git_state:
                    git_state = state
                    self._guard(index.refresh)
                    self._refreshes += 1
                next_poll = now + self.poll_seconds
            if now >= next_save:
                self._persist(index)
                next_save = now + self.save_seconds

    def _tracked(self, index: RepoIndex, path: str) -> bool:
        try:
            return index.is_tracked(path)
        except StropError:
            return False  # outside the repository

    def _git_state(self) -> tuple:
        """What changes when git changes the working tree or the index: HEAD and .git/index."""
        out = (git.output(self.root, "rev-parse", "HEAD", "--absolute-git-dir", timeout=10.0) or "").split()
        try:
            mtime = os.stat(Path(out[-1]) / "index").st_mtime_ns if out else 0
        except OSError:
            mtime = 0
        return (*out, mtime)

    def _guard(self, update) -> None:
        try:
            update()
            self._error = None
        except StropError as err:
            self._error = str(err)
        except Exception as err:  # noqa: BLE001 - one failed update must not end the service
            log.exception("updating the retrieval index failed")
            self._error = f"updating the retrieval index failed ({err!r}); it keeps its last state."

    def _persist(self, index: RepoIndex | None) -> None:
        if index is not None:
            self._guard(index.save)

    def _fail(self, message: str, level: int = logging.WARNING) -> None:
        self._error = message
        self._state = "failed"
        self._ready.set()
        log.log(level, "%s", message)

    def _on_progress(self, done: int, total: int) -> None:
        self._progress = (done, total)
