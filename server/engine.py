"""The engine: one thread owns the llama.cpp context; the newest request per document wins.

- The model never runs on the event loop: jobs go to a worker thread through `submit()`.
- A job still waiting when a newer one for the same document arrives is answered `None` at once
  (superseded) without touching the model; a running one is stopped at its next token.
- Prompts are token sequences built from `server.fim` pieces: specials by id, text tokenized with
  special parsing off. llama-cpp-python's `suffix=` infill path is not used (it builds wrong ids).
- `Llama.generate` reuses the longest common token prefix of the previous call (the KV cache).
- A new model (a promotion) is loaded beside the old one and swapped in between jobs; a model that
  fails to load is never swapped in.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path

from .errors import ModelLoadError
from .fim import FimFormat, Piece, Special, detect
from .models import ResolvedModel

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Sampling:
    temperature: float = 0.0
    top_k: int = 20
    top_p: float = 0.95
    seed: int | None = None


@dataclass
class Job:
    key: str  # supersession key: the document
    pieces: Sequence[Piece]
    max_tokens: int
    single_line: bool
    time_cap_ms: int
    sampling: Sampling = Sampling()
    # Checked after every generated line; True stops generation (e.g. the block has ended).
    should_stop: Callable[[str], bool] | None = None
    abort: threading.Event = field(default_factory=threading.Event)


@dataclass(frozen=True)
class Generation:
    text: str
    tokens: tuple[int, ...]
    n_prompt_tokens: int
    n_reused_tokens: int
    prompt_ms: float
    gen_ms: float
    stop_reason: str  # eog | newline | block | time | max_tokens | aborted
    model_version: str


@dataclass
class LoadedModel:
    llm: object  # llama_cpp.Llama
    resolved: ResolvedModel
    fim: FimFormat | None
    stop_ids: frozenset[int]
    special_ids: dict[str, int]
    add_bos: bool
    bos_id: int
    n_ctx: int
    pieces: dict[int, bytes] = field(default_factory=dict)

    def piece(self, token: int) -> bytes:
        """The bytes of one token (memoised; llama-cpp-python's wrapper returns a NUL-padded buffer)."""
        got = self.pieces.get(token)
        if got is None:
            import ctypes

            import llama_cpp

            size = 64
            while True:
                buf = ctypes.create_string_buffer(size)
                n = llama_cpp.llama_token_to_piece(self.llm._model.vocab, token, buf, size, 0, False)
                if n >= 0:
                    break
                size = -n
            got = self.pieces[token] = buf.raw[:n]
        return got


def load_model(resolved: ResolvedModel, *, n_ctx: int, n_threads: int, n_gpu_layers: int) -> LoadedModel:
    """Load a GGUF into llama.cpp and read its FIM convention from the vocabulary and metadata."""
    import llama_cpp

    path = Path(resolved.path)
    if not path.is_file():
        raise ModelLoadError(f"model file {path} does not exist.")
    try:
        llm = llama_cpp.Llama(model_path=str(path), n_ctx=n_ctx, n_threads=n_threads, n_threads_batch=n_threads,
                              n_gpu_layers=n_gpu_layers, n_batch=512, verbose=False)
    except (ValueError, RuntimeError, OSError) as err:
        raise ModelLoadError(
            f"llama.cpp could not load {path} ({err}). The file may be truncated or corrupt, or not a GGUF "
            "model: re-download or re-import it, or pass another --model.") from err
    # llama-cpp-python exposes the vocabulary only through its internal model wrapper.
    vocab = llm._model.vocab
    n_vocab = llama_cpp.llama_vocab_n_tokens(vocab)
    table = {}
    for tok in range(n_vocab):
        if llama_cpp.llama_vocab_get_attr(vocab, tok) & ~1:  # not a plain normal token: control/user-defined
            table[llm._model.token_get_text(tok)] = tok
    fim_ids = {k: getattr(llama_cpp, f"llama_vocab_fim_{k}")(vocab) for k in ("pre", "suf", "mid", "pad", "rep", "sep")}
    fmt = detect(table, fim_ids)
    stops = {t for t in range(n_vocab) if llama_cpp.llama_vocab_is_eog(vocab, t)}
    if fmt is not None:
        stops |= {table[s] for s in fmt.stop if s in table}
        stops |= {table[s] for s in (fmt.prefix, fmt.suffix, fmt.middle) if s in table}
    return LoadedModel(
        llm=llm, resolved=resolved, fim=fmt, stop_ids=frozenset(stops), special_ids=table,
        add_bos=bool(llama_cpp.llama_vocab_get_add_bos(vocab)), bos_id=llama_cpp.llama_vocab_bos(vocab),
        n_ctx=llm.n_ctx(),
    )


def tokenize_pieces(model: LoadedModel, pieces: Sequence[Piece], cache: dict | None = None) -> list[int]:
    """The exact token sequence strop sends to the model for a prompt layout."""
    llm = model.llm
    ids: list[int] = [model.bos_id] if model.add_bos and model.bos_id >= 0 else []
    for piece in pieces:
        if isinstance(piece, Special):
            ids.append(model.special_ids[piece.token])
            continue
        got = cache.get(piece) if cache is not None else None
        if got is None:
            got = llm.tokenize(piece.encode("utf-8", "surrogatepass"), add_bos=False, special=False)
            if cache is not None:
                cache[piece] = got
        ids.extend(got)
    return ids


class PieceTokenCache(OrderedDict):
    """Piece text → token ids. Most pieces repeat from one keystroke to the next."""

    def __init__(self, capacity: int = 128) -> None:
        super().__init__()
        self.capacity = capacity

    def get(self, key, default=None):  # type: ignore[override]
        if key in self:
            self.move_to_end(key)
            return self[key]
        return default

    def __setitem__(self, key, value) -> None:
        super().__setitem__(key, value)
        while len(self) > self.capacity:
            self.popitem(last=False)


class Engine:
    def __init__(self, *, n_ctx: int, n_threads: int, n_gpu_layers: int,
                 on_state: Callable[[str, str | None], None] | None = None) -> None:
        self.n_ctx, self.n_threads, self.n_gpu_layers = n_ctx, n_threads, n_gpu_layers
        self.model: LoadedModel | None = None
        self.load_error: str | None = None
        self.model_calls = 0  # generations actually run (tests and benchmarks count these)
        self._on_state = on_state or (lambda state, msg: None)
        self._cv = threading.Condition()
        self._pending: OrderedDict[str, tuple[Job, Future]] = OrderedDict()
        self._running: Job | None = None
        self._next_model: LoadedModel | None = None
        self._stopped = False
        self._ready = threading.Event()
        self._piece_cache = PieceTokenCache()
        self._thread = threading.Thread(target=self._loop, name="strop-engine", daemon=True)
        self._thread.start()

    # --- model lifecycle ----------------------------------------------------------------------
    def load(self, resolved: ResolvedModel) -> None:
        """Load synchronously (startup, CLI). Raises ModelLoadError."""
        loaded = self._load(resolved)
        with self._cv:
            self._next_model = loaded
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
                self._next_model = loaded
                self._cv.notify_all()
            if done:
                done(True, None)

        threading.Thread(target=work, name="strop-model-load", daemon=True).start()

    def _load(self, resolved: ResolvedModel) -> LoadedModel:
        t0 = time.perf_counter()
        loaded = load_model(resolved, n_ctx=self.n_ctx, n_threads=self.n_threads, n_gpu_layers=self.n_gpu_layers)
        log.info("loaded %s (%s, fim=%s) in %.2fs", resolved.path, resolved.version,
                 loaded.fim.name if loaded.fim else None, time.perf_counter() - t0)
        return loaded

    def wait_ready(self, timeout: float) -> bool:
        return self._ready.wait(timeout)

    def close(self) -> None:
        with self._cv:
            self._stopped = True
            for job, fut in self._pending.values():
                fut.set_result(None)
            self._pending.clear()
            if self._running:
                self._running.abort.set()
            self._cv.notify_all()
        self._thread.join(timeout=10)

    # --- requests -----------------------------------------------------------------------------
    def count_tokens(self, text: str) -> int:
        model = self.model
        if model is None:
            return max(1, len(text) // 3)
        return len(model.llm.tokenize(text.encode("utf-8", "surrogatepass"), add_bos=False, special=False))

    def submit(self, job: Job) -> Future:
        """Queue a job; resolves to a Generation, or None when superseded, aborted or shut down."""
        fut: Future = Future()
        with self._cv:
            if self._stopped:
                fut.set_result(None)
                return fut
            old = self._pending.pop(job.key, None)
            if old is not None:
                old[1].set_result(None)  # superseded before it ran: no model call
            if self._running is not None and self._running.key == job.key:
                self._running.abort.set()
            self._pending[job.key] = (job, fut)
            self._cv.notify_all()
        return fut

    def _loop(self) -> None:
        while True:
            with self._cv:
                while not self._stopped and not self._pending and self._next_model is None:
                    self._cv.wait()
                if self._stopped:
                    return
                if self._next_model is not None:
                    old, self.model, self._next_model = self.model, self._next_model, None
                    self._piece_cache.clear()
                    self.load_error = None
                    self._ready.set()
                    self._on_state("idle", None)
                    if old is not None:
                        old.llm.close()
                    continue
                key, (job, fut) = self._pending.popitem(last=False)
                if job.abort.is_set() or fut.done():
                    if not fut.done():
                        fut.set_result(None)
                    continue
                self._running = job
            try:
                if self.model is None:
                    fut.set_result(None)
                    continue
                self._on_state("working", None)
                result = self.generate(self.model, job)
                fut.set_result(result)
            except Exception as err:  # one failing request must never take the engine down
                log.exception("generation failed")
                if not fut.done():
                    fut.set_exception(err)
            finally:
                with self._cv:
                    self._running = None
                    idle = not self._pending
                if idle:
                    self._on_state("idle", None)

    def generate(self, model: LoadedModel, job: Job) -> Generation | None:
        """Run one job on `model` in the calling thread; None when the prompt is empty or the job
        was aborted."""
        llm = model.llm
        tokens = tokenize_pieces(model, job.pieces, self._piece_cache)
        if not tokens:  # e.g. the start of a file for a model that adds no BOS: nothing to continue
            return None
        room = model.n_ctx - job.max_tokens - 1
        if len(tokens) > room:
            tokens = tokens[:1] + tokens[len(tokens) - room + 1:] if model.add_bos else tokens[-room:]
        reused = 0
        for a, b in zip(llm._input_ids[: llm.n_tokens], tokens):  # what generate() will reuse
            if a != b:
                break
            reused += 1
        self.model_calls += 1
        t0 = time.perf_counter()
        t_first = None
        out: list[int] = []
        text_bytes = b""
        stop_reason = "max_tokens"
        s = job.sampling
        newline = llm.token_nl()
        if s.seed is not None:
            llm.set_seed(s.seed)
        gen = llm.generate(tokens, temp=s.temperature, top_k=s.top_k, top_p=s.top_p, min_p=0.0,
                           repeat_penalty=1.0, reset=True)
        try:
            for tok in gen:
                now = time.perf_counter()
                if t_first is None:
                    t_first = now
                if job.abort.is_set():
                    return None
                if tok in model.stop_ids:
                    stop_reason = "eog"
                    break
                out.append(tok)
                # One piece per token (detokenizing with the whole history would be O(prompt) per token).
                text_bytes += model.piece(tok)
                if tok == newline or b"\n" in text_bytes[-8:]:
                    if job.single_line:
                        stop_reason = "newline"
                        break
                    if job.should_stop is not None and job.should_stop(text_bytes.decode("utf-8", "ignore")):
                        stop_reason = "block"
                        break
                if len(out) >= job.max_tokens:
                    break
                if (now - t0) * 1000 >= job.time_cap_ms:
                    stop_reason = "time"
                    break
        finally:
            gen.close()
        t_end = time.perf_counter()
        t_first = t_first or t_end
        return Generation(
            text=text_bytes.decode("utf-8", "ignore"), tokens=tuple(out), n_prompt_tokens=len(tokens),
            n_reused_tokens=reused, prompt_ms=(t_first - t0) * 1000, gen_ms=(t_end - t_first) * 1000,
            stop_reason=stop_reason, model_version=model.resolved.version,
        )
