"""The engine, remote: the token sequence goes to an inference server (`strop serve --engine URL`);
the LSP, context assembly, output hygiene and the completion log stay on this machine.

Same interface as server/engine.py's Engine (what the Completer uses), with these differences:
- The vocabulary is loaded here (vocab-only, as for the local engine) and the server is checked at
  connect to serve the same model (server/remote_protocol.py says how).
- Generations stream. The stop rules are the local decoder's (`core.decode.stop_rule`: one line,
  end of block, soft/hard prediction budgets); when one fires, or the request is superseded or
  cancelled, the stream is closed and the server stops generating.
- Token healing is local only (a server cannot constrain the first tokens to a text); remote jobs
  are sent whole, without it.
- A transport failure (server down, no first token within `first_token_ms`, an HTTP error) fails
  the job's Future with RemoteEngineError; server/fallback_engine.py turns that into a local answer.
- Requests run on one asyncio loop in a background thread (httpx.AsyncClient): cancelling a task
  closes its connection at once, even while the server is still evaluating the prompt.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import replace

import httpx

from . import remote_protocol as proto
from core.decode import Generation, Job, common_prefix, fit_context, stop_rule
from core.errors import RemoteEngineError
from core.fim import Piece
from core.llama_model import LoadedModel, PieceTokenCache, load_vocab, tokenize_pieces
from core.models import ResolvedModel

log = logging.getLogger(__name__)
logging.getLogger("httpx").setLevel(logging.WARNING)  # it logs every request at INFO

CONNECT_PROBE_TIMEOUT_S = 30.0


class PromptNotExact(RemoteEngineError):
    """This one prompt cannot be sent exactly to a text-only server (the server itself is fine)."""


class RemoteEngine:
    def __init__(self, url: str, *, n_ctx: int, slots: int = 4, connect_timeout_ms: int = 2000,
                 first_token_ms: int = 5000, lora: str | None = None) -> None:
        self.url, self.kind_forced = proto.split_url(url)
        self.n_ctx, self.slots, self.lora = n_ctx, slots, lora
        self.connect_timeout_s, self.first_token_s = connect_timeout_ms / 1000, first_token_ms / 1000
        self.model: LoadedModel | None = None
        self.info: proto.ServerInfo | None = None
        self.load_error: str | None = None
        self.model_calls = 0
        self.warmups = 0
        self.crashes: list = []
        self.speeds: dict = {}
        self.worker_pid = None
        self.text_prompt_misses = 0  # prompts a text-only server could not be sent exactly
        self._piece_cache = PieceTokenCache()
        self._tasks: dict[str, tuple[asyncio.Task, Future | None]] = {}  # key → running; loop thread only
        self._sent: OrderedDict[int, tuple[int, ...]] = OrderedDict()  # slot → tokens the server holds
        self._slot_of: OrderedDict[str, int] = OrderedDict()
        self._stopped = False
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="strop-remote", daemon=True)
        self._thread.start()
        self._client: httpx.AsyncClient = self._call(self._make_client()).result()

    async def _make_client(self) -> httpx.AsyncClient:
        timeout = httpx.Timeout(connect=self.connect_timeout_s, read=self.first_token_s, write=self.first_token_s,
                                pool=self.first_token_s)
        return httpx.AsyncClient(timeout=timeout, limits=httpx.Limits(max_keepalive_connections=self.slots))

    def _call(self, coro):
        return asyncio.run_coroutine_threadsafe(coro, self._loop)

    @property
    def settings(self) -> dict:
        info = self.info
        return {"engine": self.url, "kind": info.kind if info else None, "remoteModel": info.model if info else None}

    # --- model lifecycle ----------------------------------------------------------------------
    def load_vocab(self, resolved: ResolvedModel) -> None:
        """The local vocabulary (ModelLoadError when the file is bad)."""
        old, self.model = self.model, load_vocab(resolved, n_ctx=self.n_ctx)
        self._piece_cache.clear()
        if old is not None:
            old.close()

    def connect(self) -> proto.ServerInfo:
        """Probe the server: its kind, model and tokenizer. Raises RemoteEngineError."""
        pending = self._call(proto.probe(self._client, self.url, self.model, forced=self.kind_forced, lora=self.lora))
        try:
            info = pending.result(CONNECT_PROBE_TIMEOUT_S)
        except FutureTimeout:
            pending.cancel()
            raise RemoteEngineError(f"the remote engine at {self.url} did not finish answering strop's probe in "
                                    f"{CONNECT_PROBE_TIMEOUT_S:.0f} s: it is overloaded or not an inference server.") from None
        if info.tokenizer != "matches":
            log.warning("the remote engine at %s has no tokenize endpoint: strop cannot check that it serves "
                        "%s (it says %r)", self.url, self.model.resolved.path, info.model)
        with_ctx = info.n_ctx or self.n_ctx
        self.info = replace(info, n_ctx=with_ctx, slots=min(info.slots, max(1, self.slots)))
        self._sent.clear()
        self._slot_of.clear()
        log.info("remote engine %s: %s, model %s, prompt as %s, %d slot(s), %.0f ms round trip, tokenizer %s",
                 self.url, info.kind, info.model, info.prompt_form, self.info.slots, info.latency_ms, info.tokenizer)
        return self.info

    def load(self, resolved: ResolvedModel) -> None:
        self.load_vocab(resolved)
        self.connect()

    def wait_ready(self, timeout: float) -> bool:
        return self.model is not None

    def close(self) -> None:
        if self._stopped:
            return
        self._stopped = True

        async def shutdown() -> None:
            for task, _ in list(self._tasks.values()):
                task.cancel()
            await asyncio.sleep(0)  # let cancelled streams close their connections
            await self._client.aclose()
            await self._loop.shutdown_asyncgens()

        try:
            self._call(shutdown()).result(5)
        except Exception:
            log.debug("remote engine shutdown", exc_info=True)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)
        if self.model is not None:
            self.model.close()

    # --- requests -----------------------------------------------------------------------------
    def count_tokens(self, text: str) -> int:
        return len(self.model.tokenize(text)) if self.model else max(1, len(text) // 3)

    def tokenize(self, pieces: Sequence[Piece]) -> list[int]:
        return tokenize_pieces(self.model, pieces, self._piece_cache)

    def cached_prefix(self, tokens: Sequence[int]) -> int:
        return max((common_prefix(c, tokens) for c in list(self._sent.values())), default=0)

    def _tokens(self, job: Job) -> list[int]:
        tokens = list(job.tokens) if job.tokens is not None else self.tokenize(job.pieces)
        return fit_context(self.model, tokens, self.info.n_ctx, 0 if job.warm_only else job.max_tokens) if tokens else []

    def submit(self, job: Job) -> Future:
        """Resolves to a Generation, or None when superseded, cancelled or empty; fails with
        RemoteEngineError when the server cannot answer."""
        fut: Future = Future()
        if self._stopped or self.model is None or self.info is None:
            fut.set_exception(RemoteEngineError(f"the remote engine at {self.url} is not connected."))
            return fut
        tokens = self._tokens(job)
        if not tokens:
            fut.set_result(None)
            return fut
        self._loop.call_soon_threadsafe(self._start, replace(job, tokens=tokens, pieces=()), fut)
        return fut

    def warm(self, *jobs: Job) -> None:
        """llama-server only (`n_predict: 0` evaluates the prompt into the document's slot), and only
        when no request is in flight; an OpenAI server has no prompt-only request. Of a ladder, the
        largest prompt (the last): the server keeps one slot per document."""
        if (self._stopped or self.model is None or self.info is None or self.info.kind != proto.LLAMA_SERVER
                or not jobs):
            return
        job = jobs[-1]
        tokens = self._tokens(job)
        if tokens and self.cached_prefix(tokens) < len(tokens) - 1:
            self._loop.call_soon_threadsafe(self._start, replace(job, tokens=tokens, pieces=(), warm_only=True,
                                                                 heal=False), None)

    def pause_warm_ups(self) -> None:
        """Nothing to pause: the remote server's warm-ups do not share this machine's cores."""

    def resume_warm_ups(self) -> None:
        """See pause_warm_ups."""

    @property
    def warming(self) -> int:
        """Warm-up requests in flight."""
        return sum(fut is None for _, fut in list(self._tasks.values()))

    def abort(self, job_key: str) -> None:
        self._loop.call_soon_threadsafe(self._cancel, job_key)

    # --- on the loop thread ---------------------------------------------------------------------
    def _cancel(self, key: str) -> None:
        running = self._tasks.get(key)
        if running is not None:
            running[0].cancel()

    def _start(self, job: Job, fut: Future | None) -> None:
        if fut is None and self._tasks:  # warm-ups only when idle
            return
        self._cancel(job.key)  # superseded: its connection closes, the server stops
        for key, (task, other) in list(self._tasks.items()):
            if other is None:  # a warm-up gives way to any request
                task.cancel()
        task = self._loop.create_task(self._run(job, fut))
        self._tasks[job.key] = (task, fut)

    async def _run(self, job: Job, fut: Future | None) -> None:
        me = asyncio.current_task()
        try:
            if fut is not None:
                self.model_calls += 1
            gen = await self._generate(job)
            if fut is None:
                self.warmups += 1
            _resolve(fut, gen)
        except asyncio.CancelledError:
            _resolve(fut, None)
        except RemoteEngineError as err:
            _fail(fut, err)
        except httpx.HTTPError as err:
            _fail(fut, proto.unreachable(self.url, err))
        except Exception as err:  # one bad answer must never take the engine down
            log.exception("remote generation failed")
            _fail(fut, RemoteEngineError(f"the remote engine at {self.url} gave an unusable answer ({err})."))
        finally:
            if self._tasks.get(job.key, (None,))[0] is me:
                del self._tasks[job.key]

    def _slot(self, key: str) -> int:
        """The server slot of a document: the least recently used slot goes to a new document."""
        if key in self._slot_of:
            self._slot_of.move_to_end(key)
            return self._slot_of[key]
        n = self.info.slots
        used = set(self._slot_of.values())
        slot = next((s for s in range(n) if s not in used), None)
        if slot is None:
            _, slot = self._slot_of.popitem(last=False)
        self._slot_of[key] = slot
        return slot

    async def _generate(self, job: Job) -> Generation | None:
        info, vocab, tokens = self.info, self.model, list(job.tokens)
        slot = self._slot(job.key) if info.kind == proto.LLAMA_SERVER else 0
        text_prompt = None
        if info.prompt_form == "text":
            text_prompt = proto.prompt_text(vocab, tokens)
            if text_prompt is None:
                self.text_prompt_misses += 1
                raise PromptNotExact(f"the remote engine at {self.url} takes text prompts, and this prompt "
                                        "does not survive a round trip through text (it spells a control token).")
        path, body = proto.request(info, vocab, job, tokens, slot=slot, text=text_prompt)
        reused_guess = common_prefix(self._sent.get(slot, ()), tokens)
        t0 = time.perf_counter()
        if job.warm_only:
            resp = await self._client.post(f"{info.url}{path}", json=body)
            if resp.status_code != 200:
                raise RemoteEngineError(f"the remote engine at {self.url} answered HTTP {resp.status_code} to a "
                                        f"warm-up: {resp.text[:200]}")
            self._remember(slot, tokens)
            return Generation("", (), len(tokens), reused_guess, (time.perf_counter() - t0) * 1000, 0.0, "warm",
                              vocab.resolved.version)
        try:
            return await self._stream(job, info, vocab, tokens, slot, path, body, reused_guess, t0)
        except TimeoutError:
            raise RemoteEngineError(f"the remote engine at {self.url} sent no token within "
                                    f"{self.first_token_s:.1f} s (STROP_ENGINE_FIRST_TOKEN_MS): it is overloaded "
                                    "or the prompt is too long for it.") from None

    async def _stream(self, job, info, vocab, tokens, slot, path, body, reused_guess, t0) -> Generation:
        text, out, reason, n_out, ids_known = "", [], None, 0, True
        t_first: float | None = None
        cached = timings = None
        deadline = asyncio.timeout(self.first_token_s)
        async with deadline:
            async with self._client.stream("POST", f"{info.url}{path}", json=body) as resp:
                if resp.status_code != 200:
                    detail = (await resp.aread())[:200].decode("utf-8", "replace")
                    raise RemoteEngineError(f"the remote engine at {self.url} answered HTTP {resp.status_code}: "
                                            f"{detail}")
                async for ev in proto.events(resp, info.kind):
                    cached = ev.tokens_cached if ev.tokens_cached is not None else cached
                    timings = ev.timings or timings
                    if ev.text or ev.tokens:
                        if t_first is None:
                            t_first = time.perf_counter()
                            hard = job.predict_hard_ms / 1000 + self.first_token_s if job.predict_hard_ms else None
                            deadline.reschedule(asyncio.get_running_loop().time() + hard if hard else None)
                        if ev.tokens and any(t in vocab.stop_ids for t in ev.tokens):
                            reason = "eog"  # a FIM stop token the server does not count as end of generation
                            break
                        text += ev.text
                        if ev.tokens is None:
                            ids_known = False  # this server sends text only: one event per token
                        out.extend(ev.tokens or ())
                        n_out += len(ev.tokens) if ev.tokens is not None else 1
                        reason = stop_rule(job, text, "\n" in ev.text, n_out, (time.perf_counter() - t_first) * 1000)
                        if reason:
                            break  # leaving the block closes the stream: the server stops generating
                    if ev.finish:
                        reason = reason or ev.finish
                        break
        t_end = time.perf_counter()
        if not ids_known:  # the ids are then the local tokenization of the text
            out = vocab.tokenize(text)
        self._remember(slot, tokens + out)
        if timings:
            self.speeds = {"prompt_tps": timings.get("prompt_per_second"), "gen_tps": timings.get("predicted_per_second")}
        t_first = t_first or t_end
        return Generation(text=text, tokens=tuple(out), n_prompt_tokens=len(tokens),
                          n_reused_tokens=int(cached) if cached is not None else reused_guess,
                          prompt_ms=(t_first - t0) * 1000, gen_ms=(t_end - t_first) * 1000,
                          stop_reason=reason or "eog", model_version=vocab.resolved.version)

    def _remember(self, slot: int, tokens: Sequence[int]) -> None:
        self._sent[slot] = tuple(tokens)
        self._sent.move_to_end(slot)


def _resolve(fut: Future | None, value) -> None:
    if fut is not None and not fut.done():
        fut.set_result(value)


def _fail(fut: Future | None, err: Exception) -> None:
    if fut is None:
        log.debug("remote warm-up failed: %s", err)
    elif not fut.done():
        fut.set_exception(err)
