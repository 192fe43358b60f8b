"""One completion, end to end: context → (cache | engine) → post-processing → log.

The LSP handlers and `strop complete` both call `Completer.complete()`, so the command line, the
benchmarks and the editors exercise the same path.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import time
import uuid
from collections import Counter
from dataclasses import dataclass, replace

from core import context as ctxmod
from core.completion import CompletionPath, Position, PromptSettings, clean_generation, make_job
from .cache import SUFFIX_PROBE_CHARS, CompletionCache, Shown
from core.completion_log import CompletionLog, Record
from .config import ServeConfig
from .documents import is_secret_document
from .engine import Engine, Job, Sampling
from core.errors import BadRequest, StropError
from .recent import SHOWN_CAPACITY, Recent

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Request:
    uri: str
    path: str  # repository-relative, for the prompt and the log
    language: str
    text: str
    offset: int  # cursor, in code points
    others: tuple[ctxmod.OtherDocument, ...] = ()
    trigger: str = "automatic"  # automatic | invoked | cli

    def position(self) -> Position:
        return Position(path=self.path, language=self.language, text=self.text, offset=self.offset,
                        others=self.others)


@dataclass(frozen=True)
class Result:
    id: str
    insert_text: str  # what to insert at the cursor now
    full_text: str  # the whole suggestion (typed-through results are its tail)
    source: str  # model | typed-through | cache
    latency_ms: float


def check_request(text: str, offset: int, cfg: ServeConfig) -> str | None:
    """Why this position gets no completion (an empty result, not an error), or None."""
    if "\x00" in text:
        return "the document holds binary content (NUL bytes)"
    if len(text) > cfg.max_document_chars:
        return f"the document is larger than {cfg.max_document_chars} characters"
    line_start = text.rfind("\n", 0, offset) + 1
    line_end = text.find("\n", offset)
    line_len = (len(text) if line_end < 0 else line_end) - line_start
    if line_len > cfg.max_line_chars:
        return f"the current line is longer than {cfg.max_line_chars} characters"
    return None


def refusal(req: Request, cfg: ServeConfig) -> str | None:
    """Why `req` gets no completion (an empty result, not an error), or None."""
    if is_secret_document(req.uri):
        return "it is a secret file (.env, keys, credentials), where strop never completes"
    return check_request(req.text, req.offset, cfg)


class Completer:
    def __init__(self, engine: Engine, cfg: ServeConfig, completion_log: CompletionLog | None,
                 *, repo: str = "", repo_name: str = "", retriever=None) -> None:
        self.engine = engine
        self.cfg = cfg
        self.log = completion_log
        self.repo = repo
        self.repo_name = repo_name
        self.retriever = retriever  # core.completion.Retrieve: repository snippets, or None
        self.prompt = PromptSettings(budget_tokens=cfg.budget_tokens, prefix_share=cfg.prefix_share,
                                     extra_share=cfg.extra_share, chunk_lines=cfg.chunk_lines,
                                     max_snippets=cfg.max_snippets, retrieval_k=cfg.retrieval_k)
        self.cache = CompletionCache()
        self.shown: Recent = Recent(SHOWN_CAPACITY)  # id → (Request, Shown) offered, for accept/retention
        self.last_latency_ms: float | None = None
        # Why requests got no suggestion: refused | no_model | superseded | emptied (by hygiene) |
        # cut_by_cap (a cap stopped generation before a whole line/statement)
        self.unanswered: Counter[str] = Counter()
        # The rungs of the last state planned or warmed (index → tokenized context and job): the
        # editor's cursor report that follows a keystroke's request is for the same state, and
        # building and tokenizing it again costs CPU the model's threads need (2 cores).
        self._rungs: tuple[Request, object, dict[int, tuple[ctxmod.Context, Job]]] | None = None

    @functools.lru_cache(maxsize=8192)  # noqa: B019 - one Completer per server; chunks repeat per keystroke
    def _count(self, text: str) -> int:
        return self.engine.count_tokens(text)

    def sampling(self) -> Sampling:
        model = self.engine.model
        dec = model.resolved.decoding if model else {}
        return Sampling(temperature=float(dec.get("temperature", self.cfg.temperature)),
                        top_k=int(dec.get("top_k", self.cfg.top_k)), top_p=float(dec.get("top_p", self.cfg.top_p)))

    def full_budget_tokens(self) -> int:
        """The whole context: the configured budget, or less when a warm-up of it would take longer
        than `warm_budget_ms` at the prompt speed measured at load."""
        tps = self.engine.speeds.get("prompt_tps") if self.cfg.warm_budget_ms > 0 else None
        if not tps:
            return self.cfg.budget_tokens
        return max(256, min(self.cfg.budget_tokens, int(tps * self.cfg.warm_budget_ms / 1000)))

    def cold_budget_tokens(self) -> int | None:
        """Tokens a cold prompt may have so that evaluating it fits `prompt_budget_ms`, or None."""
        tps = self.engine.speeds.get("prompt_tps")
        if self.cfg.prompt_budget_ms <= 0 or not tps:
            return None
        return max(48, int(tps * self.cfg.prompt_budget_ms / 1000))

    def completion_path(self) -> CompletionPath:
        model = self.engine.model
        return CompletionPath(model.fim if model else None, self._count, self.prompt, self.cfg,
                              repo_name=self.repo_name, retriever=self.retriever)

    def build_context(self, req: Request, total_tokens: int | None = None, cold: bool = False) -> ctxmod.Context:
        return self.completion_path().context(req.position(), total_tokens=total_tokens or self.full_budget_tokens(),
                                              cold=cold)

    def ladder_budgets(self) -> list[int | None]:
        """Token budgets of the prompts a position is warmed with, smallest first (None: the full
        context). Each is usable as soon as it is warm, so on a slow CPU a keystroke soon after a
        cold one gets more than the cold prompt while the full one is still being evaluated: the
        cold prompt (fits `prompt_budget_ms`), their geometric mean when the full one is over 4×
        the cold one, the full context."""
        cold = self.cold_budget_tokens()
        if cold is None:
            return [None]
        full = self.full_budget_tokens()
        return [cold] + ([int(math.sqrt(cold * full))] if full >= 4 * cold else []) + [None]

    def ladder(self, req: Request) -> list[tuple[ctxmod.Context, Job]]:
        """The position's prompts, smallest first, not tokenized; the smaller ones hold no repository context."""
        return [self._build_rung(req, budget) for budget in self.ladder_budgets()]

    def _build_rung(self, req: Request, budget: int | None) -> tuple[ctxmod.Context, Job]:
        ctx = self.build_context(req) if budget is None else self.build_context(req, total_tokens=budget, cold=True)
        return ctx, make_job(ctx, key=req.uri, limits=self.cfg, sampling=self.sampling())

    def _rungs_for(self, req: Request) -> dict[int, tuple[ctxmod.Context, Job]]:
        """The rungs built so far for `req`'s state (kept for the next call with the same state)."""
        planned, model, rungs = self._rungs or (None, None, None)
        if not (planned is not None and model is self.engine.model and planned.uri == req.uri
                and planned.offset == req.offset and planned.text == req.text and planned.others == req.others):
            rungs = {}
            self._rungs = (req, self.engine.model, rungs)
        return rungs

    def _climb_down(self, req: Request, cold: int) -> list[tuple[ctxmod.Context, Job]]:
        """The rungs from the largest one whose new tokens fit the cold budget given what the engine
        holds warm (else the smallest) up, tokenized. They are built from the largest
        down: while typing, the full context is warm and it is the only one built (each rung costs a
        context and a tokenization, ~3 ms of CPU the model's threads need)."""
        budgets = self.ladder_budgets()
        rungs = self._rungs_for(req)
        for i in range(len(budgets) - 1, -1, -1):
            if i not in rungs:
                ctx, job = self._build_rung(req, budgets[i])
                rungs[i] = (ctx, replace(job, tokens=self.engine.tokenize(ctx.pieces)))
            tokens = rungs[i][1].tokens
            if len(tokens) - self.engine.cached_prefix(tokens) <= cold:
                break
        return [rungs[j] for j in range(i, len(budgets))]

    def plan(self, req: Request) -> tuple[ctxmod.Context, Job, list[Job]]:
        """The job for a request: the largest prompt of the position's ladder whose new tokens fit the
        cold budget given what the engine holds warm, else the cold prompt with a deadline; and the
        larger prompts (already tokenized) to warm up afterwards."""
        cold = self.cold_budget_tokens()
        if cold is None:
            return (*self._build_rung(req, None), [])
        rungs = self._climb_down(req, cold)
        ctx, job = rungs[0]
        after = [j for _, j in rungs[1:]]
        tokens = job.tokens
        if len(tokens) - self.engine.cached_prefix(tokens) > cold:
            job = replace(job, prompt_deadline_ms=3.0 * self.cfg.prompt_budget_ms)
        return ctx, job, after

    def warm(self, req: Request) -> None:
        """Evaluate the prompts for `req` ahead of time (the engine runs them only when idle): the
        largest rung that fits the cold budget and the larger ones, smallest first."""
        if self.engine.model is None or refusal(req, self.cfg):
            return
        cold = self.cold_budget_tokens()
        if cold is None:
            self.engine.warm(self._build_rung(req, None)[1])
            return
        self.engine.warm(*(j for _, j in self._climb_down(req, cold)))

    async def complete(self, req: Request) -> Result | None:
        """A suggestion for the cursor, or None (nothing useful, superseded, or no model yet)."""
        t0 = time.perf_counter()
        if not 0 <= req.offset <= len(req.text):
            raise BadRequest(f"cursor offset {req.offset} is outside the document (length {len(req.text)}).")
        why = refusal(req, self.cfg)
        if why:
            log.debug("no completion for %s: %s", req.uri, why)
            self.unanswered["refused"] += 1
            return None
        prefix, suffix = req.text[: req.offset], req.text[req.offset:]

        hit = self.cache.lookup(req.uri, prefix, suffix)
        if hit is not None:
            shown, rest = hit
            source = "typed-through" if rest != shown.text else "cache"
            return self._finish(req, shown.id, rest, shown.text, source, t0)

        if self.engine.model is None and not await self._wait_for_model():
            self.unanswered["no_model"] += 1
            return None
        # Building the prompt takes a few ms of CPU that a running warm-up's threads would share:
        # the warm-up stops now rather than when the job is submitted.
        self.engine.pause_warm_ups()
        try:
            ctx, job, warm_after = self.plan(req)
            fut = self.engine.submit(job)
        finally:
            self.engine.resume_warm_ups()
        multiline = ctx.multiline
        try:
            # The engine owns its Future: shield it, so a cancelled request cannot cancel it.
            gen = await asyncio.shield(asyncio.wrap_future(fut))
        except asyncio.CancelledError:
            self.engine.abort(req.uri)  # $/cancelRequest: stop the model at its next token
            raise
        if warm_after:  # answered from a smaller prompt: grow the context in the background
            self.engine.warm(*warm_after)
        if gen is None:
            log.debug("no generation for %s (superseded, aborted or no model)", req.path)
            self.unanswered["superseded"] += 1
            return None
        cleaned = clean_generation(gen, ctx, suffix, multiline)
        log.debug("generation for %s: %r (%s) -> %r %s", req.path, gen.text, gen.stop_reason, cleaned.text, cleaned.rules)
        if not cleaned.text.strip():
            self.unanswered["emptied" if gen.complete else "cut_by_cap"] += 1
            if gen.complete:
                log.debug("no suggestion for %s: hygiene left nothing of %r (%s)", req.path, gen.text, cleaned.rules)
            else:
                log.debug("no suggestion for %s:%d: generation stopped at its cap (%s) before a whole %s "
                         "(%d tokens in %.0f ms)", req.path, req.text.count("\n", 0, req.offset) + 1, gen.stop_reason,
                         "statement" if multiline else "line", len(gen.tokens), gen.gen_ms)
            return None
        cid = uuid.uuid4().hex
        latency = (time.perf_counter() - t0) * 1000
        if self.log is not None:
            model = self.engine.model
            self._safe_log(Record(
                id=cid, repo=self.repo, path=req.path, language=req.language,
                model=model.resolved.name if model else "", model_version=gen.model_version,
                prefix=ctx.prefix, suffix=ctx.suffix,
                snippets=[{"path": s.path, "text": s.text} for s in ctx.snippets],
                completion=cleaned.text, multiline=multiline, rules=cleaned.rules, trigger=req.trigger,
                latency_ms=latency, prompt_ms=gen.prompt_ms, gen_ms=gen.gen_ms,
                n_prompt_tokens=gen.n_prompt_tokens, n_reused_tokens=gen.n_reused_tokens,
                n_gen_tokens=len(gen.tokens), source="model", stop_reason=gen.stop_reason))
        shown = Shown(cid, prefix, suffix[:SUFFIX_PROBE_CHARS], cleaned.text, multiline)
        self.cache.remember(req.uri, shown)
        self.shown[cid] = (req, shown)
        self.last_latency_ms = latency
        return Result(cid, cleaned.text, cleaned.text, "model", latency)

    async def _wait_for_model(self) -> bool:
        """The first request may come before the model is loaded: wait for it, bounded."""
        wait_s = self.cfg.first_request_wait_ms / 1000
        if wait_s <= 0 or self.engine.load_error:
            return False
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(None, self.engine.wait_ready, wait_s) and self.engine.model is not None

    def _finish(self, req: Request, cid: str, rest: str, full: str, source: str, t0: float) -> Result:
        """An answer without the model (typed-through or cached): logged as its own row, so the stats
        count it (`without_model`, latency over all answers). The row holds no context (the shown
        completion's row has it) and the answer keeps the shown completion's id for accept/dismiss."""
        latency = (time.perf_counter() - t0) * 1000
        self.last_latency_ms = latency
        if self.log is not None:
            model = self.engine.model
            self._safe_log(Record(
                id=uuid.uuid4().hex, repo=self.repo, path=req.path, language=req.language,
                model=model.resolved.name if model else "", model_version=model.resolved.version if model else "",
                prefix="", suffix="", snippets=[], completion=rest, multiline="\n" in full, trigger=req.trigger,
                latency_ms=latency, source=source))
        return Result(cid, rest, full, source, latency)

    def _safe_log(self, rec: Record) -> None:
        """Logging must never cost the user a completion (a full disk is reported, not raised)."""
        try:
            self.log.add(rec)
        except StropError as err:
            log.error("%s", err)


