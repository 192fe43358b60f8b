"""The engine, LSP side: a supervised worker process runs the model; the newest request per
document wins; warm-ups fill idle time.

- llama.cpp runs in server/worker.py. This process loads only the vocabulary (to tokenize and count),
  so a native crash in the model costs at most the request in flight: the worker is restarted with
  backoff, and the server says so once.
- At first load the worker runs a canary decode (server/canary.py); a crash there moves to the next
  settings (no extra buffer types, i.e. no AMX/repacked kernels) and the verdict is remembered. Crashes
  that keep coming while serving move to the fallback settings too.
- A job still waiting when a newer one for the same document arrives is answered `None` at once
  (superseded) without touching the model; a running one is aborted at its next token or chunk.
- Warm-ups (`warm()`) evaluate prompts with no generation; they run only when no request waits and
  give way to any request within one prompt chunk (an aborted warm-up keeps what it evaluated and
  runs again after the request). A document's warm-ups are a ladder, smallest prompt first.
- The engine owns its Futures: callers must not cancel them (the completer shields them); they
  are resolved exactly once.
- A new model (a promotion) is loaded in a new worker beside the old one and swapped in between
  jobs; a model that fails to load is never swapped in.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, InvalidStateError
from dataclasses import replace
from multiprocessing.connection import Connection

from . import canary as canarymod
from core.decode import Generation, Job, Sampling, common_prefix
from core.errors import ModelLoadError
from core.fim import Piece
from core.llama_model import LoadedModel, PieceTokenCache, load_vocab, tokenize_pieces
from core.models import ResolvedModel

log = logging.getLogger(__name__)

__all__ = ["Engine", "Generation", "Job", "Sampling", "WorkerCrashed"]

LOAD_TIMEOUT_S = 300.0
CRASH_WINDOW_S = 120.0
CRASHES_BEFORE_FALLBACK = 3
MAX_RESTARTS = 6  # in a row without a successful load
WARM_TAIL_TOKENS = 16  # a running warm-up whose prompt a new one shares but for this many last tokens goes on


class WorkerCrashed(Exception):
    """The model process died (a signal or an exit) while loading or running."""


def describe_exit(code: int | None) -> str:
    if code is None:
        return "it stopped answering"
    if code < 0:
        try:
            return f"it was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"it was killed by signal {-code}"
    return f"it exited with status {code}"


class WorkerHandle:
    """One worker process and its connection."""

    def __init__(self, on_death: Callable[["WorkerHandle"], None] | None = None) -> None:
        ours, theirs = socket.socketpair()
        env = dict(os.environ)
        # stdout of the worker goes to our stderr: llama.cpp may print, and stdout may carry LSP.
        self.proc = subprocess.Popen([sys.executable, "-m", "server.worker", str(theirs.fileno())],
                                     pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL,
                                     stdout=sys.stderr.fileno() if _has_fileno(sys.stderr) else None, env=env)
        theirs.close()
        self.conn = Connection(ours.detach())
        self._send_lock = threading.Lock()
        self.closing = False
        if on_death is not None:  # an idle worker that dies is noticed at once, not at the next request
            def watch() -> None:
                self.proc.wait()
                if not self.closing:
                    on_death(self)

            threading.Thread(target=watch, name="strop-worker-watch", daemon=True).start()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def send(self, msg) -> None:
        try:
            with self._send_lock:
                self.conn.send(msg)
        except (OSError, ValueError) as err:
            raise WorkerCrashed(self._why()) from err

    def recv(self, timeout: float | None = None):
        try:
            if timeout is not None and not self.conn.poll(timeout):
                raise WorkerCrashed("it did not answer in time")
            return self.conn.recv()
        except (EOFError, OSError) as err:
            raise WorkerCrashed(self._why()) from err

    def _why(self) -> str:
        try:
            code = self.proc.wait(timeout=2)
        except subprocess.TimeoutExpired:
            code = None
        return describe_exit(code)

    def load(self, resolved: ResolvedModel, settings: dict, options: dict) -> dict:
        self.send(("load", resolved, settings, options))
        msg = self.recv(LOAD_TIMEOUT_S)
        if msg[0] == "load_error":
            raise ModelLoadError(msg[1])
        return msg[1]

    def run(self, job: Job) -> tuple[Generation | None, list]:
        self.send(("job", job))
        while True:
            msg = self.recv()
            if msg[0] == "result" and msg[1] == job.id:
                return msg[2], msg[3]

    def abort(self, job_id: int) -> None:
        try:
            self.send(("abort", job_id))
        except WorkerCrashed:
            pass  # the run() waiting on it reports the crash

    def close(self) -> None:
        self.closing = True
        try:
            with self._send_lock:
                self.conn.send(("exit",))
        except (OSError, ValueError):
            pass
        try:
            self.proc.wait(timeout=1)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.conn.close()


def _has_fileno(stream) -> bool:
    try:
        stream.fileno()
        return True
    except (AttributeError, OSError, ValueError):
        return False


class Engine:
    def __init__(self, *, n_ctx: int, n_threads: int, n_gpu_layers: int, slots: int = 4, heal: bool = False,
                 on_state: Callable[[str, str | None], None] | None = None) -> None:
        self.n_ctx, self.n_threads, self.n_gpu_layers, self.slots = n_ctx, n_threads, n_gpu_layers, slots
        self.heal = heal  # jobs heal their last token: the worker builds the healing table while idle
        self.model: LoadedModel | None = None  # the vocabulary of the model in service
        self.load_error: str | None = None
        self.model_calls = 0  # generations actually run (tests and benchmarks count these)
        self.warmups = 0  # warm-up evaluations run to completion
        self.crashes: list[tuple[float, str]] = []  # (time, why) of worker crashes
        self.settings: dict = {}  # llama.cpp settings in use (canary verdict)
        self.fallback_reason: str | None = None
        self.speeds: dict = {}  # prompt_tps / gen_tps measured at load
        self.worker_pid: int | None = None
        self._on_state = on_state or (lambda state, msg: None)
        self._cv = threading.Condition()
        self._pending: OrderedDict[str, tuple[Job, Future]] = OrderedDict()
        self._warm: OrderedDict[str, deque[Job]] = OrderedDict()  # per document: prompts to warm, in order
        self._warm_calls: dict[str, int] = {}  # per document: warm() calls so far (a newer one replaces)
        self._warm_order: dict[str, int] = {}  # per document: when its latest warm() call came
        self._warm_seq = 0
        self._running: Job | None = None
        self._paused = 0  # requests being planned: no warm-up starts meanwhile (pause_warm_ups)
        self._worker: WorkerHandle | None = None
        self._resolved: ResolvedModel | None = None
        self._next: tuple | None = None
        self._dead: WorkerHandle | None = None
        self._cached: list[tuple[int, ...]] = []
        self._ids = 0
        self._stopped = False
        self._ready = threading.Event()
        self._piece_cache = PieceTokenCache()
        self._thread = threading.Thread(target=self._loop, name="strop-engine", daemon=True)
        self._thread.start()

    # --- model lifecycle ----------------------------------------------------------------------
    def _options(self) -> dict:
        return {"n_ctx": self.n_ctx, "n_threads": self.n_threads, "n_gpu_layers": self.n_gpu_layers,
                "slots": self.slots, "heal": self.heal}

    def _spawn(self, resolved: ResolvedModel, settings_list: Sequence[dict] | None = None):
        """A worker with `resolved` loaded and its canary passed: (handle, info, settings, failures)."""
        key = canarymod.verdict_key(resolved.path, self.n_gpu_layers)
        tries = list(settings_list) if settings_list else canarymod.candidates_for(key)
        failures: list[str] = []
        for settings in tries:
            handle = WorkerHandle(self._worker_died)
            try:
                info = handle.load(resolved, settings, self._options())
            except WorkerCrashed as crash:
                handle.close()
                failures.append(f"{_describe(settings)}: {crash}")
                log.warning("llama.cpp crashed in the canary decode with %s (%s); trying the next settings",
                            _describe(settings), crash)
                continue
            except ModelLoadError:
                handle.close()
                raise
            if failures or settings_list is None:
                canarymod.record(key, resolved.path, settings, failures, info.get("speeds", {}))
            return handle, info, settings, failures
        raise ModelLoadError(
            f"llama.cpp crashes on this machine with {resolved.path} under every setting tried "
            f"({'; '.join(failures)}). Run `strop doctor` for the build and CPU details; a llama-cpp-python "
            "built without the failing CPU feature (e.g. CMAKE_ARGS=\"-DGGML_NATIVE=OFF\") avoids it.")

    def _load(self, resolved: ResolvedModel):
        t0 = time.perf_counter()
        vocab = load_vocab(resolved, n_ctx=self.n_ctx)
        try:
            handle, info, settings, failures = self._spawn(resolved)
        except BaseException:
            vocab.close()
            raise
        vocab.n_ctx = info.get("n_ctx", vocab.n_ctx)
        log.info("loaded %s (%s, fim=%s) in %.2fs; prompt %.0f tok/s (%s tokens per call), generation %.0f tok/s%s",
                 resolved.path, resolved.version, vocab.fim.name if vocab.fim else None, time.perf_counter() - t0,
                 info["speeds"].get("prompt_tps", 0), info["speeds"].get("prompt_chunk", "?"),
                 info["speeds"].get("gen_tps", 0),
                 f"; fallback settings {_describe(settings)} after: {'; '.join(failures)}" if failures else "")
        return vocab, handle, info, settings, failures

    def load(self, resolved: ResolvedModel) -> None:
        """Load synchronously (startup, CLI). Raises ModelLoadError."""
        loaded = self._load(resolved)
        with self._cv:
            self._next = (resolved, *loaded)
            self._cv.notify_all()
        self._ready.wait(timeout=60)

    def load_async(self, resolved: ResolvedModel, done: Callable[[bool, str | None], None] | None = None) -> None:
        """Load beside the serving model, then swap between jobs. Never swaps in a failed load."""

        def work() -> None:
            try:
                loaded = self._load(resolved)
            except ModelLoadError as err:
                log.error("%s", err)
                if self.model is None:
                    self.load_error = str(err)
                    self._on_state("error", str(err))
                if done:
                    done(False, str(err))
                return
            with self._cv:
                self._next = (resolved, *loaded)
                self._cv.notify_all()
            if done:
                done(True, None)

        threading.Thread(target=work, name="strop-model-load", daemon=True).start()

    def wait_ready(self, timeout: float) -> bool:
        return self._ready.wait(timeout)

    def close(self) -> None:
        with self._cv:
            self._stopped = True
            for job, fut in self._pending.values():
                _resolve(fut, None)
            self._pending.clear()
            self._warm.clear()
            worker, running = self._worker, self._running
            self._cv.notify_all()
        if worker is not None:
            if running is not None:
                worker.abort(running.id)
            worker.close()
        self._thread.join(timeout=5)
        with self._cv:
            nxt, self._next = self._next, None
        if nxt is not None:
            nxt[2].close()

    # --- requests -----------------------------------------------------------------------------
    def count_tokens(self, text: str) -> int:
        model = self.model
        if model is None:
            return max(1, len(text) // 3)
        return len(model.tokenize(text))

    def tokenize(self, pieces: Sequence[Piece]) -> list[int]:
        return tokenize_pieces(self.model, pieces, self._piece_cache)

    def cached_prefix(self, tokens: Sequence[int]) -> int:
        """How many leading tokens of `tokens` the worker holds in one of its KV states."""
        return max((common_prefix(c, tokens) for c in self._cached), default=0)

    def _prepare(self, job: Job) -> Job:
        with self._cv:
            self._ids += 1
            job_id = self._ids
        tokens = job.tokens if job.tokens is not None else (self.tokenize(job.pieces) if self.model else [])
        return replace(job, tokens=tokens, pieces=(), id=job_id)

    def pause_warm_ups(self) -> None:
        """A request is being planned: the running warm-up stops (NativeAbort, within ~1 ms; it is
        queued again) and none starts until `resume_warm_ups`, so the two do not share the cores and
        the worker is free when the request is submitted."""
        with self._cv:
            self._paused += 1
            running = self._running
            if running is not None and running.warm_only and self._worker:
                self._worker.abort(running.id)

    def resume_warm_ups(self) -> None:
        with self._cv:
            self._paused = max(0, self._paused - 1)
            self._cv.notify_all()

    def submit(self, job: Job) -> Future:
        """Queue a job; resolves to a Generation, or None when superseded, aborted or shut down."""
        fut: Future = Future()
        if self._stopped or self.model is None:
            fut.set_result(None)
            return fut
        job = self._prepare(job)
        with self._cv:
            if self._stopped or not job.tokens:  # an empty prompt: nothing to continue, no model call
                old = self._pending.pop(job.key, None)
                if old is not None:
                    _resolve(old[1], None)
                fut.set_result(None)
                return fut
            old = self._pending.pop(job.key, None)
            if old is not None:
                _resolve(old[1], None)  # superseded before it ran: no model call
            running = self._running
            if running is not None and (running.key == job.key or running.warm_only) and self._worker:
                self._worker.abort(running.id)
            self._pending[job.key] = (job, fut)
            self._cv.notify_all()
        return fut

    def warm(self, *jobs: Job) -> None:
        """Evaluate prompts of one document ahead of time, in order, when the engine would otherwise
        be idle (a ladder: each smaller prompt is usable as soon as it is done). Replaces the
        document's earlier warm-ups; the newest position goes first: a warm-up of another document
        in flight stops (NativeAbort: within ~1 ms) and resumes after this document's ladder."""
        if self._stopped or self.model is None or not jobs:
            return
        todo = deque(j for j in (self._prepare(replace(job, warm_only=True, heal=False)) for job in jobs)
                     if j.tokens and self.cached_prefix(j.tokens) < len(j.tokens) - 1)
        key = jobs[0].key
        with self._cv:
            self._warm_calls[key] = self._warm_calls.get(key, 0) + 1
            self._warm_seq += 1
            self._warm_order[key] = self._warm_seq
            for job in todo:
                job.warm_call = self._warm_calls[key]
            self._warm.pop(key, None)
            if todo:
                self._warm[key] = todo
            while len(self._warm) > max(1, self.slots):
                self._warm.popitem(last=False)
            running = self._running
            if running is not None and running.warm_only and self._worker:
                if running.key == key and any(j.tokens == running.tokens for j in todo):
                    running.warm_call = self._warm_calls[key]  # asked for again: let it run
                    todo = deque(j for j in todo if j.tokens != running.tokens)
                    if todo:
                        self._warm[key] = todo
                    else:
                        self._warm.pop(key, None)
                elif running.key == key and any(common_prefix(running.tokens, j.tokens) >= len(running.tokens) - WARM_TAIL_TOKENS
                                                for j in todo):
                    # The same prompt a few keys on (typing): the new one needs what this one evaluates.
                    # Aborting it on every keystroke lost its decode call each time, so while the user
                    # typed a long prompt never got warm. Its warm_call stays old: if a request interrupts
                    # it, it is not queued again (the new ladder holds its successor).
                    pass
                elif todo or running.key == key:
                    self._worker.abort(running.id)  # a newer position: of this document, or the one in focus now
            self._cv.notify_all()

    def _requeue_locked(self, key: str, job: Job) -> None:
        """Put an interrupted warm-up back at the head of its document's ladder, the documents kept in
        the order of their latest warm() call (the most recent is taken first)."""
        rest = self._warm.get(key)
        if rest is not None:
            rest.appendleft(job)
            return
        self._warm[key] = deque([job])
        order = self._warm_order
        for k in sorted(self._warm, key=lambda k: order.get(k, 0)):
            self._warm.move_to_end(k)

    @property
    def warming(self) -> int:
        """Warm-up prompts queued or running."""
        with self._cv:
            running = self._running is not None and self._running.warm_only
            return sum(len(q) for q in self._warm.values()) + running

    def abort(self, job_key: str) -> None:
        """Stop the running job of a document (cancellation)."""
        with self._cv:
            running = self._running
            if running is not None and running.key == job_key and self._worker:
                self._worker.abort(running.id)

    def _worker_died(self, handle: WorkerHandle) -> None:
        with self._cv:
            if handle is self._worker and self._running is None:
                self._dead = handle
                self._cv.notify_all()

    def _loop(self) -> None:
        while True:
            with self._cv:
                while (not self._stopped and not self._pending and (not self._warm or self._paused)
                       and self._next is None and self._dead is None):
                    self._cv.wait()
                if self._stopped:
                    return
                if self._next is not None:
                    self._swap_locked()
                    continue
                dead, self._dead = self._dead, None
            if dead is not None:
                if dead is self._worker:
                    self._recover(dead, dead._why())
                continue
            with self._cv:
                if not self._pending and (not self._warm or self._paused):
                    continue
                if self._pending:
                    key, (job, fut) = self._pending.popitem(last=False)
                else:
                    key, ladder = self._warm.popitem(last=True)
                    job, fut = ladder.popleft(), None
                    if ladder:
                        self._warm[key] = ladder  # the rest of this document's ladder comes next
                    if self.cached_prefix(job.tokens) >= len(job.tokens) - 1:
                        continue  # warm already (a request evaluated it)
                worker = self._worker
                if worker is None:
                    if fut is not None:
                        _resolve(fut, None)
                    continue
                self._running = job
            if fut is not None:
                self.model_calls += 1
                self._on_state("working", None)
            try:
                gen, cached = worker.run(job)
                self._cached = cached
                if job.warm_only and gen is not None and gen.stop_reason == "warm":
                    self.warmups += 1
                elif job.warm_only and gen is None:  # yielded: again later, unless its document moved on
                    with self._cv:
                        if not self._stopped and self._warm_calls.get(key) == job.warm_call:
                            self._requeue_locked(key, job)
                if fut is not None:
                    _resolve(fut, gen)
            except WorkerCrashed as crash:
                if fut is not None:
                    _resolve(fut, None)
                if not self._stopped and not worker.closing:  # not our own shutdown or swap
                    self._recover(worker, str(crash))
            except Exception as err:  # one failing request must never take the engine down
                log.exception("generation failed")
                if fut is not None and not fut.done():
                    try:
                        fut.set_exception(err)
                    except InvalidStateError:
                        pass
            finally:
                with self._cv:
                    self._running = None
                    idle = not self._pending
                if idle and fut is not None:
                    self._on_state("idle", None)

    def _swap_locked(self) -> None:
        resolved, vocab, handle, info, settings, failures = self._next
        self._next = None
        old_model, old_worker = self.model, self._worker
        self.model, self._worker, self._resolved = vocab, handle, resolved
        self.settings, self.speeds, self.worker_pid = settings, info.get("speeds", {}), info.get("pid")
        self.fallback_reason = "; ".join(failures) if failures else None
        self._cached = []
        self._piece_cache.clear()
        self.load_error = None
        self._ready.set()
        self._on_state("idle", None)
        if old_worker is not None:
            old_worker.close()
        if old_model is not None:
            old_model.close()

    def _recover(self, dead: WorkerHandle, why: str) -> None:
        """The worker died: restart it (with backoff), on fallback settings when crashes keep coming."""
        now = time.monotonic()
        self.crashes.append((now, why))
        dead.close()
        recent = [t for t, _ in self.crashes if now - t < CRASH_WINDOW_S]
        settings = dict(self.settings)
        if len(recent) >= CRASHES_BEFORE_FALLBACK and settings.get("use_extra_bufts", True):
            settings["use_extra_bufts"] = False
            self.fallback_reason = f"{len(recent)} crashes in {CRASH_WINDOW_S:.0f} s ({why})"
        message = (f"the model process crashed ({why}); the request in flight got no suggestion. "
                   "Restarting it.")
        log.error("%s", message)
        self._on_state("restarting", message)
        for attempt in range(MAX_RESTARTS):
            if self._stopped:
                return
            time.sleep(min(10.0, 0.25 * (2 ** attempt)))
            try:
                handle, info, used, failures = self._spawn(self._resolved, [settings] + [
                    c for c in canarymod.CANDIDATES if c != settings])
            except ModelLoadError as err:
                log.error("restart failed: %s", err)
                continue
            with self._cv:
                if self._stopped:
                    handle.close()
                    return
                self._worker, self.settings, self.worker_pid = handle, used, info.get("pid")
                self.speeds = info.get("speeds", self.speeds)
                self._cached = []
            if used.get("use_extra_bufts", True) is False and self.fallback_reason:
                canarymod.record(canarymod.verdict_key(self._resolved.path, self.n_gpu_layers), self._resolved.path,
                                 used, [self.fallback_reason], self.speeds)
            log.info("the model process is back (pid %s, settings %s)", handle.pid, _describe(used))
            self._on_state("idle", None)
            return
        with self._cv:
            self._worker = None
            for job, fut in self._pending.values():
                _resolve(fut, None)
            self._pending.clear()
        self.load_error = f"the model process keeps crashing ({why}); completions are off. See `strop doctor`."
        self._on_state("error", self.load_error)


def _describe(settings: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in sorted(settings.items())) or "defaults"


def _resolve(fut: Future, value) -> None:
    """Resolve a Future exactly once, whatever its caller did with it."""
    try:
        if not fut.done():
            fut.set_result(value)
    except InvalidStateError:
        pass
