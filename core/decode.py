"""The decoding loop: one job on a loaded llama.cpp model, as serving, sampling and evaluation run it.

Runs in the worker process for serving (server/worker.py) and in-process for distillation. Per job:
1. pick the KV state that shares the longest token prefix with the prompt: the live one or one of a
   few saved per-sequence states (`llama_state_seq_*`), so switching between documents stays warm;
2. evaluate the rest of the prompt in small chunks, checking for an abort and the prompt deadline
   between chunks (an aborted or timed-out evaluation keeps what it evaluated: the next job reuses
   it); a warm-up's call is interrupted too (llama.cpp's abort callback, polled by ggml between
   graph nodes, stops it within about a millisecond and the interrupted batch is dropped from the
   KV cache), so it yields to a keystroke at once; a request's call is not: the request that
   supersedes it shares its prefix and needs that work; a warm-up job stops here;
3. generate with separate budgets: the prediction timers start at the first sampled token; past the
   soft budget generation stops at the next whole line/statement; the hard budget gives up (the
   caller then shows nothing rather than a fragment);
4. token healing: the prompt's last text token is taken back and the first generated tokens are
   constrained to start with its text, so a prompt that ends inside a token or in indentation does
   not force an odd tokenization (a stray space after indentation);
5. prompt-lookup speculative decoding (greedy only): a draft copied from an earlier occurrence of
   the last tokens is verified in one batch. The output is greedy decoding of the model, but
   llama.cpp's batched kernels round differently from its one-token path (logits differ by ~0.5
   here), so near-ties can resolve differently than without drafts.
"""

from __future__ import annotations

import bisect
import ctypes
import logging
import math
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from . import postprocess
from .fim import Piece
from .llama_model import LoadedModel, PieceTokenCache, load_model, tokenize_pieces
from .models import ResolvedModel

log = logging.getLogger(__name__)

PROMPT_CHUNK = 64  # tokens per decode while evaluating a prompt, until the canary has measured the speed
CHUNK_MS = 500.0  # a prompt decode call should take about this long: an interrupted one loses at most that
# A KV state shorter than this is not worth saving (~0.1 s to evaluate again here); prompts near the
# top of a file are shorter than the cold budget, so the floor is not the budget's.
MIN_SAVED_TOKENS = 16
MAX_HEAL_BYTES = 16
N_DRAFT = 8
NGRAM = 3


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
    sampling: Sampling = Sampling()
    block_head: str | None = None  # multi-line: the cursor line's typed part, for the block-end rule
    block_enclosing: int = 0  # multi-line: brackets open before the cursor's line (a whole element ends a unit)
    predict_soft_ms: float | None = None  # past this (from the first token), stop at the next whole line
    predict_hard_ms: float | None = None  # past this, give up: the result is marked incomplete
    prompt_deadline_ms: float | None = None  # evaluating the prompt longer than this answers nothing
    warm_only: bool = False  # evaluate the prompt, generate nothing
    heal: bool = False
    speculative: bool = False
    tokens: list[int] | None = None  # the prompt's ids, when already tokenized (the engine does)
    id: int = 0
    warm_call: int = 0  # a warm-up: which Engine.warm call of its document queued it


@dataclass(frozen=True)
class Generation:
    text: str
    tokens: tuple[int, ...]
    n_prompt_tokens: int
    n_reused_tokens: int
    prompt_ms: float
    gen_ms: float
    stop_reason: str  # eog | newline | block | soft_time | time | max_tokens | prompt_time | warm
    model_version: str
    n_drafted: int = 0
    n_accepted: int = 0

    @property
    def complete(self) -> bool:
        """Did generation end where the model or a rule chose, rather than at a cap?"""
        return self.stop_reason not in ("time", "max_tokens", "prompt_time")


@dataclass
class _Saved:
    tokens: tuple[int, ...]
    data: bytes


class NativeAbort:
    """llama.cpp's abort callback around a prompt evaluation: ggml asks it between graph nodes, so a
    decode call stops within ~1 ms of `should_stop()` turning true (llama_decode returns 2 and
    removes the interrupted batch from the KV cache; measured here: logits after a re-evaluation
    equal an uninterrupted run's). Installed only while a prompt is evaluated: each ask costs a
    Python call, ~600 per decode of SmolLM2, noise on a prompt chunk, 4 % of a one-token step."""

    POLL_S = 0.001  # ask `should_stop` at most this often (it may read a connection)

    def __init__(self, llm) -> None:
        import llama_cpp

        self._llama_cpp = llama_cpp
        self._ctx = llm._ctx.ctx
        self._fn = llama_cpp.ggml_abort_callback(self._ask)  # referenced: ggml keeps only the pointer
        self._none = ctypes.cast(None, llama_cpp.ggml_abort_callback)
        self._should_stop: Callable[[], bool] = lambda: False
        self._next = 0.0
        self.fired = False
        self.error: BaseException | None = None

    def _ask(self, _data) -> bool:
        if self.fired:
            return True
        now = time.perf_counter()
        if now < self._next:
            return False
        self._next = now + self.POLL_S
        try:
            self.fired = bool(self._should_stop())
        except BaseException as err:  # noqa: BLE001 - ctypes would print and drop it: stop, re-raise after
            self.error, self.fired = err, True
        return self.fired

    def eval(self, llm, tokens: Sequence[int], should_stop: Callable[[], bool]) -> bool:
        """`llm.eval(tokens)`, interruptible; False when `should_stop` stopped it (nothing of the
        interrupted call is kept: `llm.n_tokens` is where the call started)."""
        self._should_stop, self._next, self.fired, self.error = should_stop, 0.0, False, None
        self._llama_cpp.llama_set_abort_callback(self._ctx, self._fn, None)
        try:
            llm.eval(tokens)
        except RuntimeError:
            if not self.fired:
                raise
        finally:
            self._llama_cpp.llama_set_abort_callback(self._ctx, self._none, None)
            self._should_stop = lambda: False
        if self.error is not None:
            raise self.error
        return not self.fired


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def fit_context(model: LoadedModel, tokens: list[int], n_ctx: int, max_tokens: int) -> list[int]:
    """The prompt cut from the left so that it and `max_tokens` fit in `n_ctx` (a BOS is kept)."""
    room = n_ctx - max_tokens - 1
    if len(tokens) > room:
        keep_bos = model.add_bos and tokens and tokens[0] == model.bos_id
        tokens = tokens[:1] + tokens[len(tokens) - room + 1:] if keep_bos else tokens[-room:]
    return tokens


def stop_rule(job: Job, text: str, newline: bool, n_tokens: int, since_first_ms: float) -> str | None:
    """After each generated token: the stop reason when generation ends with it, else None. `text`
    is everything generated (needed only when the token brought a newline). Every engine, local or
    remote, stops on these rules."""
    if newline:
        if job.single_line:
            return "newline"
        if job.block_head is not None and postprocess.generation_done(text, job.block_head):
            return "block"
        if (job.predict_soft_ms is not None and since_first_ms >= job.predict_soft_ms
                and postprocess.statement_complete(text[: text.rfind("\n")], job.block_head or "", job.block_enclosing)):
            return "soft_time"
    if n_tokens >= job.max_tokens:
        return "max_tokens"
    if job.predict_hard_ms is not None and since_first_ms >= job.predict_hard_ms:
        return "time"
    return None


class _HealTable:
    """Which tokens are consistent with a text still to be produced (token healing).

    Reading every token's bytes takes 0.77 s for SmolLM2's 49k vocabulary and 1.86 s for Qwen's 152k
    (one llama.cpp call each, measured under load), so the table is built in steps (`step()`), which the worker runs while
    it is idle after a load: the first keystroke does not pay for it."""

    STEP = 2048  # tokens read per step: a message waits at most one step

    def __init__(self, model: LoadedModel) -> None:
        import llama_cpp

        self._model = model
        self._n_vocab = llama_cpp.llama_vocab_n_tokens(model.vocab_model.vocab)
        self._next = 0
        self._pairs: list[tuple[bytes, int]] = []
        self.keys: list[bytes] = []
        self.ids: list[int] = []
        self.exact: dict[bytes, list[int]] = {}
        self.ready = False

    def step(self, n: int = STEP) -> bool:
        """Read the next `n` tokens; True once the table is complete."""
        if self.ready:
            return True
        model, end = self._model, min(self._n_vocab, self._next + n)
        for t in range(self._next, end):
            if not model.is_control(t):
                piece = model.piece(t)
                if piece:
                    self._pairs.append((piece, t))
        self._next = end
        if end >= self._n_vocab:
            pairs, self._pairs = sorted(self._pairs), []
            self.keys = [p[0] for p in pairs]
            self.ids = [p[1] for p in pairs]
            for piece, tok in pairs:
                if len(piece) <= MAX_HEAL_BYTES:
                    self.exact.setdefault(piece, []).append(tok)
            self.ready = True
        return self.ready

    def allowed(self, rest: bytes) -> list[int]:
        """Tokens whose text starts with `rest`, or is a proper prefix of it."""
        while not self.step(self._n_vocab):
            pass
        lo = bisect.bisect_left(self.keys, rest)
        hi = lo
        while hi < len(self.keys) and self.keys[hi].startswith(rest):
            hi += 1
        out = self.ids[lo:hi]
        for k in range(1, len(rest)):
            out += self.exact.get(rest[:k], [])
        return out


class Decoder:
    """Owns one llama.cpp context; runs jobs one at a time in the calling thread."""

    def __init__(self, model: LoadedModel, *, slots: int = 4) -> None:
        assert model.llm is not None, "the decoder needs the model's weights"
        self.model = model
        self.llm = model.llm
        self.slots = slots
        self.saved: OrderedDict[int, _Saved] = OrderedDict()
        self._next_slot = 0
        self._heal: _HealTable | None = None
        self.n_ctx = model.n_ctx
        self.prompt_chunk = PROMPT_CHUNK  # tokens per llama.cpp call (see chunk_for)
        self._native_abort = NativeAbort(self.llm)

    # --- KV states ----------------------------------------------------------------------------
    def current_tokens(self) -> tuple[int, ...]:
        return tuple(int(t) for t in self.llm.input_ids[: self.llm.n_tokens])

    def cached(self) -> list[tuple[int, ...]]:
        """The token sequences whose KV state this decoder holds (live first)."""
        return [self.current_tokens()] + [s.tokens for s in self.saved.values()]

    def _save_current(self) -> None:
        import llama_cpp

        cur = self.current_tokens()
        if len(cur) < MIN_SAVED_TOKENS or self.slots <= 1:
            return
        for sid, saved in list(self.saved.items()):  # a state the live one extends is redundant
            if common_prefix(saved.tokens, cur) >= 0.9 * len(saved.tokens):
                del self.saved[sid]
        ctx = self.llm._ctx.ctx
        size = llama_cpp.llama_state_seq_get_size(ctx, 0)
        buf = (ctypes.c_uint8 * size)()
        n = llama_cpp.llama_state_seq_get_data(ctx, buf, size, 0)
        self.saved[self._next_slot] = _Saved(cur, ctypes.string_at(buf, n))  # not buf[:n]: a list of ints
        self._next_slot += 1
        while len(self.saved) > self.slots - 1:
            self.saved.popitem(last=False)

    def _restore(self, saved: _Saved) -> None:
        import llama_cpp

        self.llm._ctx.kv_cache_seq_rm(-1, 0, -1)
        buf = (ctypes.c_uint8 * len(saved.data)).from_buffer_copy(saved.data)
        if llama_cpp.llama_state_seq_set_data(self.llm._ctx.ctx, buf, len(saved.data), 0) != len(saved.data):
            self.llm.n_tokens = 0
            log.warning("a saved KV state could not be restored; evaluating from scratch")
            return
        self.llm.input_ids[: len(saved.tokens)] = saved.tokens
        self.llm.n_tokens = len(saved.tokens)

    def _select_state(self, tokens: Sequence[int]) -> None:
        cur = self.current_tokens()
        live = common_prefix(cur, tokens)
        best_sid, best = None, live
        for sid, saved in self.saved.items():
            n = common_prefix(saved.tokens, tokens)
            if n > best:
                best_sid, best = sid, n
        if best_sid is not None and best > live + 32:
            chosen = self.saved.pop(best_sid)  # first: saving the live state may evict or drop it
            self._save_current()
            self._restore(chosen)
        elif live < len(cur) // 2:
            self._save_current()  # about to be overwritten: keep it for a switch back

    def prepare_healing(self) -> bool:
        """One step of building the token-healing table (for idle time); True when it is built."""
        if self._heal is None:
            self._heal = _HealTable(self.model)
        return self._heal.step()

    # --- the job --------------------------------------------------------------------------------
    def fit(self, tokens: list[int], max_tokens: int) -> list[int]:
        return fit_context(self.model, tokens, self.n_ctx, max_tokens)

    def run(self, job: Job, abort: Callable[[], bool] = lambda: False) -> Generation | None:
        """One job; None when the prompt is empty or the job was aborted."""
        model, llm = self.model, self.llm
        tokens = list(job.tokens) if job.tokens is not None else tokenize_pieces(model, job.pieces)
        if not tokens:  # e.g. the start of a file for a model that adds no BOS: nothing to continue
            return None
        tokens = self.fit(tokens, job.max_tokens)
        heal = b""
        if job.heal and not job.warm_only and len(tokens) > 1:
            last = tokens[-1]
            piece = model.piece(last)
            if not model.is_control(last) and 0 < len(piece) <= MAX_HEAL_BYTES:
                heal, tokens = piece, tokens[:-1]
        t0 = time.perf_counter()
        self._select_state(tokens)
        reused = common_prefix(self.current_tokens(), tokens)
        if reused == len(tokens):
            reused -= 1  # the last prompt token is evaluated again: its logits are not kept
        llm.n_tokens = reused
        todo = tokens[reused:]
        chunk = self.prompt_chunk
        for i in range(0, len(todo), chunk):
            if abort():
                return None
            # Checked between chunks, never before the first: what was evaluated stays in the KV cache
            # for the next keystroke (and a descheduled thread cannot give up having done nothing).
            if (i > 0 and job.prompt_deadline_ms is not None
                    and (time.perf_counter() - t0) * 1000 > job.prompt_deadline_ms):
                return Generation("", (), len(tokens), reused, (time.perf_counter() - t0) * 1000, 0.0,
                                  "prompt_time", model.resolved.version)
            if not job.warm_only:
                llm.eval(todo[i:i + chunk])
            elif not self._native_abort.eval(llm, todo[i:i + chunk], abort):
                return None
        t_prompt = time.perf_counter()
        if job.warm_only:
            return Generation("", (), len(tokens), reused, (t_prompt - t0) * 1000, 0.0, "warm",
                              model.resolved.version)
        return self._generate(job, tokens, heal, reused, t0, t_prompt, abort)

    def _generate(self, job: Job, prompt: list[int], heal: bytes, reused: int, t0: float, t_prompt: float,
                  abort: Callable[[], bool]) -> Generation | None:
        import llama_cpp
        import numpy as np

        model, llm, s = self.model, self.llm, job.sampling
        greedy = s.temperature <= 0
        if s.seed is not None:
            llm.set_seed(s.seed)
        sampler = llm._init_sampler(top_k=s.top_k, top_p=s.top_p, min_p=0.0, temp=s.temperature, repeat_penalty=1.0)
        rng = np.random.default_rng(s.seed)
        n_vocab = llama_cpp.llama_vocab_n_tokens(model.vocab_model.vocab)
        if heal and self._heal is None:
            self._heal = _HealTable(model)

        def logits(i: int = -1):
            return np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(llm._ctx.ctx, i), shape=(n_vocab,))

        raw = b""  # everything generated, healed text included
        out: list[int] = []
        t_first: float | None = None
        stop_reason = "max_tokens"
        drafted = accepted = 0

        def pick(i: int = -1) -> int:
            rest = heal[len(raw):] if len(raw) < len(heal) else b""
            if not rest:
                if greedy:
                    return int(np.argmax(logits(i)))
                return sampler.sample(llm._ctx, i)
            allowed = np.asarray(self._heal.allowed(rest), dtype=np.int64)
            if allowed.size == 0:
                return int(np.argmax(logits(i)))
            row = logits(i)[allowed].astype(np.float64)
            if greedy:
                return int(allowed[int(np.argmax(row))])
            order = np.argsort(-row)[: max(1, s.top_k)]
            p = np.exp((row[order] - row[order[0]]) / s.temperature)
            p /= p.sum()
            keep = max(1, int(np.searchsorted(np.cumsum(p), s.top_p) + 1))
            p = p[:keep] / p[:keep].sum()
            return int(allowed[order[rng.choice(keep, p=p)]])

        def text() -> str:
            return raw[len(heal):].decode("utf-8", "ignore") if len(raw) >= len(heal) else ""

        def emit(tok: int) -> str | None:
            """Take one token; the stop reason when generation ends with it."""
            nonlocal raw
            now = time.perf_counter()
            if tok in model.stop_ids:
                return "eog"
            out.append(tok)
            piece = model.piece(tok)
            raw += piece
            newline = b"\n" in raw[max(len(heal), len(raw) - len(piece)):]
            return stop_rule(job, text() if newline else "", newline, len(out), (now - t_first) * 1000)

        history = list(prompt)
        index: dict[tuple[int, ...], int] = {}
        speculate = job.speculative and greedy
        if speculate:
            for i in range(len(history) - NGRAM):
                index[tuple(history[i:i + NGRAM])] = i + NGRAM

        pending = pick()
        t_first = time.perf_counter()
        while True:
            if abort():
                return None
            reason = emit(pending)
            if reason:
                stop_reason = reason
                break
            history.append(pending)
            draft: list[int] = []
            if speculate and len(raw) >= len(heal):
                if len(history) > NGRAM:
                    index[tuple(history[-NGRAM - 1:-1])] = len(history) - 1
                at = index.get(tuple(history[-NGRAM:]))
                if at is not None and at < len(history):
                    draft = history[at: at + N_DRAFT]
            if not draft:
                llm.eval([pending])
                pending = pick()
                continue
            n_past = llm.n_tokens
            batch = [pending] + draft
            llm._ctx.kv_cache_seq_rm(-1, n_past, -1)
            llm._batch.set_batch(batch=batch, n_past=n_past, logits_all=True)
            llm._ctx.decode(llm._batch)
            llm.input_ids[n_past: n_past + len(batch)] = batch
            llm.n_tokens = n_past + len(batch)
            drafted += len(draft)
            ok = 0
            reason = None
            for i, d in enumerate(draft):
                want = int(np.argmax(logits(i)))
                if want != d:
                    pending = want
                    break
                ok += 1
                reason = emit(d)
                if reason:
                    break
                history.append(d)
            else:
                pending = int(np.argmax(logits(len(draft))))
            accepted += ok
            keep = n_past + 1 + ok
            llm._ctx.kv_cache_seq_rm(-1, keep, -1)
            llm.n_tokens = keep
            if reason:
                stop_reason = reason
                break
        t_end = time.perf_counter()
        return Generation(
            text=text(), tokens=tuple(out), n_prompt_tokens=len(prompt) + (1 if heal else 0), n_reused_tokens=reused,
            prompt_ms=(t_prompt - t0) * 1000, gen_ms=(t_end - t_prompt) * 1000, stop_reason=stop_reason,
            model_version=model.resolved.version, n_drafted=drafted, n_accepted=accepted,
        )


CANARY_TEXT = "def add(a, b):\n    \"\"\"Return the sum of a and b.\"\"\"\n    return a + b\n\n\n" * 8


def chunk_for(prompt_tps: float, chunk_ms: float = CHUNK_MS) -> int:
    """Tokens per prompt decode call so that one call takes about `chunk_ms` at this speed (a power of
    two, 16–512). An abort stops a call within ~1 ms (NativeAbort) but loses what the interrupted
    call had evaluated, so the size trades warm-up work lost per keystroke against batching: SmolLM2
    on 2 cores evaluates 109 tokens/s in calls of 4, 124 in 8, 159 in 32, 173 in 64, 164 in 128."""
    n = max(1.0, prompt_tps * chunk_ms / 1000)
    return int(min(512, max(16, 2 ** math.floor(math.log2(n)))))


def canary(decoder: Decoder, n_prompt: int = 96, n_gen: int = 12) -> dict:
    """A short real decode (the check that a CPU feature does not crash llama.cpp) that also measures
    prompt-evaluation and generation speed on this machine, and sizes the decoder's prompt chunks."""
    tokens = decoder.model.tokenize(CANARY_TEXT)[:n_prompt]
    llm = decoder.llm
    llm.n_tokens = 0
    llm._ctx.kv_cache_seq_rm(-1, 0, -1)
    t0 = time.perf_counter()
    llm.eval(tokens)
    t1 = time.perf_counter()
    for _ in range(n_gen):
        tok = llm.sample(temp=0.0)
        llm.eval([tok])
    t2 = time.perf_counter()
    llm.n_tokens = 0
    llm._ctx.kv_cache_seq_rm(-1, 0, -1)
    prompt_tps = len(tokens) / max(t1 - t0, 1e-6)
    decoder.prompt_chunk = chunk_for(prompt_tps)
    return {"prompt_tps": round(prompt_tps, 1), "gen_tps": round(n_gen / max(t2 - t1, 1e-6), 1),
            "prompt_chunk": decoder.prompt_chunk}


class InProcessEngine:
    """Decoding in the calling process (distillation, evaluation): the same Decoder the worker runs."""

    def __init__(self, *, n_ctx: int, n_threads: int, n_gpu_layers: int) -> None:
        self.n_ctx, self.n_threads, self.n_gpu_layers = n_ctx, n_threads, n_gpu_layers
        self.model: LoadedModel | None = None
        self.decoder: Decoder | None = None
        self._piece_cache = PieceTokenCache()

    def load(self, resolved: ResolvedModel) -> None:
        self.model = load_model(resolved, n_ctx=self.n_ctx, n_threads=self.n_threads, n_gpu_layers=self.n_gpu_layers)
        self.decoder = Decoder(self.model, slots=1)

    def count_tokens(self, text: str) -> int:
        return len(self.model.tokenize(text))

    def generate(self, model: LoadedModel, job: Job) -> Generation | None:
        tokens = tokenize_pieces(model, job.pieces, self._piece_cache)
        return self.decoder.run(replace(job, tokens=tokens))

    def close(self) -> None:
        if self.model is not None:
            self.model.close()
            self.model = None


