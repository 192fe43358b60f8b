"""Remote first, local while the remote is down, the remote again once it is back.

- A request whose remote call fails (server down, no first token in time, an HTTP error, a model
  mismatch) is answered by the local engine, when one is configured (`STROP_ENGINE_FALLBACK=local`,
  the default); the local model is loaded on the first failure (it is the same GGUF strop
  tokenizes with), not before, so a developer machine runs no model while the remote serves.
- The user is told once (`window/showMessage` through the server's "restarting" state), then the
  engine is quiet; a background probe retries the remote with backoff (1 s doubling to 60 s) and
  switches back when it answers and still serves the same model. Requests meanwhile never wait on
  a dead remote.
- Without a fallback, requests get no suggestion while the remote is down.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future

from .engine import Engine
from .remote_engine import PromptNotExact, RemoteEngine
from core.decode import Job
from core.errors import ModelLoadError, RemoteEngineError
from core.fim import Piece
from core.models import ResolvedModel

log = logging.getLogger(__name__)

BACKOFF_START_S = 1.0
BACKOFF_MAX_S = 60.0
LOCAL_WAIT_S = 120.0  # a request that triggers the local load waits for it this long


class FallbackEngine:
    def __init__(self, remote: RemoteEngine, make_local: Callable[[], Engine] | None,
                 on_state: Callable[[str, str | None], None] | None = None) -> None:
        self.remote = remote
        self._make_local = make_local
        self.local: Engine | None = None
        self.use_remote = False
        self.remote_error: str | None = None
        self.fallbacks = 0  # requests answered locally because the remote failed
        self._on_state = on_state or (lambda state, msg: None)
        self._told = False
        self._lock = threading.Lock()
        self._resolved: ResolvedModel | None = None
        self._stopped = threading.Event()
        self._retrying = False
        self._settled = threading.Event()  # the first connection attempt is over (either way)

    # --- what the Completer and the LSP read --------------------------------------------------
    @property
    def model(self):
        """The vocabulary, once the first connection attempt has settled which engine serves."""
        return self.remote.model if self._settled.is_set() else None

    @property
    def load_error(self) -> str | None:
        return self.remote.load_error or (self.local.load_error if self.local else None)

    @property
    def model_calls(self) -> int:
        return self.remote.model_calls + (self.local.model_calls if self.local else 0)

    @property
    def warmups(self) -> int:
        return self.remote.warmups + (self.local.warmups if self.local else 0)

    @property
    def warming(self) -> int:
        return self.remote.warming + (self.local.warming if self.local else 0)

    @property
    def crashes(self) -> list:
        return self.local.crashes if self.local else []

    @property
    def settings(self) -> dict:
        return {**self.remote.settings, "active": "remote" if self.use_remote else "local" if self._make_local else "none",
                "remoteError": self.remote_error, "fallbacks": self.fallbacks,
                **({"local": self.local.settings} if self.local else {})}

    @property
    def fallback_reason(self) -> str | None:
        return self.remote_error

    @property
    def speeds(self) -> dict:
        return self.remote.speeds if self.use_remote or self.local is None else self.local.speeds

    @property
    def worker_pid(self) -> int | None:
        return self.local.worker_pid if self.local else None

    def _active(self):
        return self.remote if self.use_remote or self.local is None else self.local

    # --- lifecycle ----------------------------------------------------------------------------
    def load(self, resolved: ResolvedModel) -> None:
        """The vocabulary (ModelLoadError when it cannot load), then the remote; a remote that
        cannot serve moves to the local engine (or to no suggestions) and is retried."""
        self._resolved = resolved
        self.remote.load_vocab(resolved)
        try:
            self.remote.connect()
        except RemoteEngineError as err:
            self._settled.set()
            self._remote_down(err)
            return
        self.use_remote = True
        self._settled.set()
        self._on_state("idle", None)

    def load_async(self, resolved: ResolvedModel, done: Callable[[bool, str | None], None] | None = None) -> None:
        def work() -> None:
            try:
                self.load(resolved)
                if self.local is not None and self.local.model is not None:
                    self.local.load_async(resolved)  # a promotion: the fallback follows it
            except ModelLoadError as err:
                self.remote.load_error = str(err)
                self._on_state("error", str(err))
                if done:
                    done(False, str(err))
                return
            if done:
                done(True, None)

        threading.Thread(target=work, name="strop-remote-load", daemon=True).start()

    def wait_ready(self, timeout: float) -> bool:
        return self._settled.wait(timeout)

    def close(self) -> None:
        self._stopped.set()
        self.remote.close()
        if self.local is not None:
            self.local.close()

    # --- requests -----------------------------------------------------------------------------
    def count_tokens(self, text: str) -> int:
        return self.remote.count_tokens(text)

    def tokenize(self, pieces: Sequence[Piece]) -> list[int]:
        return self.remote.tokenize(pieces)

    def cached_prefix(self, tokens: Sequence[int]) -> int:
        return self._active().cached_prefix(tokens)

    def submit(self, job: Job) -> Future:
        out: Future = Future()
        if not self.use_remote:
            self._submit_local(job, out)
            return out

        def done(fut: Future) -> None:
            try:
                _resolve(out, fut.result())
            except RemoteEngineError as err:
                if not isinstance(err, PromptNotExact):  # that one prompt only: the server is fine
                    self._remote_down(err)
                threading.Thread(target=self._submit_local, args=(job, out), daemon=True,
                                 name="strop-fallback").start()  # not on the remote's event loop
            except Exception as err:
                if not out.done():
                    out.set_exception(err)

        self.remote.submit(job).add_done_callback(done)
        return out

    def warm(self, *jobs: Job) -> None:
        self._active().warm(*jobs)

    def pause_warm_ups(self) -> None:
        if self.local is not None:  # the remote's warm-ups do not run on this machine's cores
            self.local.pause_warm_ups()

    def resume_warm_ups(self) -> None:
        if self.local is not None:
            self.local.resume_warm_ups()

    def abort(self, job_key: str) -> None:
        self.remote.abort(job_key)
        if self.local is not None:
            self.local.abort(job_key)

    # --- falling back and coming back ----------------------------------------------------------
    def _submit_local(self, job: Job, out: Future) -> None:
        local = self._ensure_local()
        if local is None or not local.wait_ready(LOCAL_WAIT_S) or local.model is None:
            _resolve(out, None)
            return
        with self._lock:
            self.fallbacks += 1
        local.submit(job).add_done_callback(lambda f: _chain(f, out))

    def _ensure_local(self) -> Engine | None:
        if self._make_local is None or self._resolved is None:
            return None
        with self._lock:
            if self.local is None:
                self.local = self._make_local()
                self.local.load_async(self._resolved)
            return self.local

    def _remote_down(self, err: RemoteEngineError) -> None:
        with self._lock:
            was_up, self.use_remote, self.remote_error = self.use_remote, False, str(err)
            tell, self._told = not self._told, True
            start_retry, self._retrying = not self._retrying, True
        if was_up or tell:
            log.warning("%s", err)
        if tell:
            then = ("completing with the local model until it is back" if self._make_local
                    else "no completions until it is back (STROP_ENGINE_FALLBACK=none)")
            self._on_state("restarting", f"{err} Meanwhile: {then}.")
        if self._make_local is not None:
            self._ensure_local()
        if start_retry:
            threading.Thread(target=self._retry, name="strop-remote-retry", daemon=True).start()

    def _retry(self) -> None:
        wait = BACKOFF_START_S
        while not self._stopped.wait(wait):
            try:
                self.remote.connect()
            except RemoteEngineError as err:
                log.debug("remote engine still down: %s", err)
                wait = min(BACKOFF_MAX_S, wait * 2)
                continue
            with self._lock:
                self.use_remote, self.remote_error, self._retrying = True, None, False
            log.info("the remote engine at %s is back; completing there again", self.remote.url)
            self._on_state("idle", None)
            return


def _resolve(fut: Future, value) -> None:
    if not fut.done():
        fut.set_result(value)


def _chain(src: Future, out: Future) -> None:
    try:
        _resolve(out, src.result())
    except Exception as err:
        if not out.done():
            out.set_exception(err)
