"""One completion, end to end: context → (cache | engine) → post-processing → log.

The LSP handlers and `strop complete` both call `Completer.complete()`, so the command line, the
benchmarks and the editors exercise the same path.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
import uuid
from dataclasses import dataclass
from typing import Protocol

from . import context as ctxmod
from . import postprocess
from .cache import SUFFIX_PROBE_CHARS, CompletionCache, Shown
from .completion_log import CompletionLog, Record
from .config import ServeConfig
from .documents import is_secret_document
from .engine import Engine, Generation, Job, Sampling
from .errors import BadRequest, StropError
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


class GenerationLimits(Protocol):
    max_new_tokens: int  # multi-line completions
    max_new_tokens_line: int  # single-line completions
    time_cap_ms: int


def make_job(ctx: ctxmod.Context, *, key: str, limits: GenerationLimits, sampling: Sampling,
             multiline: bool | None = None) -> Job:
    """The engine job for a context, as serving, sampling and evaluation all run it: one line when
    the cursor is mid-line, else a block that stops where `postprocess.generation_done` says."""
    multiline = ctx.multiline if multiline is None else multiline
    return Job(
        key=key, pieces=ctx.pieces, max_tokens=limits.max_new_tokens if multiline else limits.max_new_tokens_line,
        single_line=not multiline, time_cap_ms=limits.time_cap_ms, sampling=sampling,
        should_stop=(lambda text, head=ctx.line_head: postprocess.generation_done(text, head)) if multiline else None,
    )


def clean_generation(gen: Generation, ctx: ctxmod.Context, suffix: str, multiline: bool) -> postprocess.Cleaned:
    """The model's text after output hygiene; `suffix` is all the text after the cursor."""
    return postprocess.clean(gen.text, line_head=ctx.line_head, line_tail=ctx.line_tail, suffix=suffix,
                             multiline=multiline, truncated=gen.stop_reason in ("max_tokens", "time"))


class Completer:
    def __init__(self, engine: Engine, cfg: ServeConfig, completion_log: CompletionLog | None,
                 *, repo: str = "", repo_name: str = "") -> None:
        self.engine = engine
        self.cfg = cfg
        self.log = completion_log
        self.repo = repo
        self.repo_name = repo_name
        self.cache = CompletionCache()
        self.shown: Recent = Recent(SHOWN_CAPACITY)  # id → (Request, Shown) offered, for accept/retention
        self.last_latency_ms: float | None = None
        self.sampling_override: Sampling | None = None

    @functools.lru_cache(maxsize=8192)  # noqa: B019 - one Completer per server; chunks repeat per keystroke
    def _count(self, text: str) -> int:
        return self.engine.count_tokens(text)

    def sampling(self) -> Sampling:
        if self.sampling_override is not None:
            return self.sampling_override
        model = self.engine.model
        dec = model.resolved.decoding if model else {}
        return Sampling(temperature=float(dec.get("temperature", self.cfg.temperature)),
                        top_k=int(dec.get("top_k", self.cfg.top_k)), top_p=float(dec.get("top_p", self.cfg.top_p)))

    def build_context(self, req: Request) -> ctxmod.Context:
        model = self.engine.model
        budget = ctxmod.Budget(total_tokens=self.cfg.budget_tokens, prefix_share=self.cfg.prefix_share,
                               extra_share=self.cfg.extra_share, chunk_lines=self.cfg.chunk_lines)
        return ctxmod.build(req.text, req.offset, fmt=model.fim if model else None, count=self._count,
                            budget=budget, path=req.path, language=req.language, others=req.others,
                            repo_name=self.repo_name)

    async def complete(self, req: Request) -> Result | None:
        """A suggestion for the cursor, or None (nothing useful, superseded, or no model yet)."""
        t0 = time.perf_counter()
        if not 0 <= req.offset <= len(req.text):
            raise BadRequest(f"cursor offset {req.offset} is outside the document (length {len(req.text)}).")
        why = refusal(req, self.cfg)
        if why:
            log.debug("no completion for %s: %s", req.uri, why)
            return None
        prefix, suffix = req.text[: req.offset], req.text[req.offset:]

        hit = self.cache.lookup(req.uri, prefix, suffix)
        if hit is not None:
            shown, rest = hit
            source = "typed-through" if rest != shown.text else "cache"
            return self._finish(req, shown.id, rest, shown.text, source, t0)

        if self.engine.model is None:
            return None
        ctx = self.build_context(req)
        multiline = ctx.multiline
        job = make_job(ctx, key=req.uri, limits=self.cfg, sampling=self.sampling())
        fut = self.engine.submit(job)
        try:
            gen = await asyncio.wrap_future(fut)
        except asyncio.CancelledError:
            job.abort.set()  # $/cancelRequest: stop the model at its next token
            raise
        if gen is None:
            return None
        cleaned = clean_generation(gen, ctx, suffix, multiline)
        if not cleaned.text.strip():
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

    def warm(self, req: Request) -> None:
        """Evaluate the prompt for `req` ahead of time (the engine runs it only when idle)."""
        if self.engine.model is None or refusal(req, self.cfg):
            return
        ctx = self.build_context(req)
        warm = getattr(self.engine, "warm", None)
        if warm is not None:
            warm(make_job(ctx, key=req.uri, limits=self.cfg, sampling=self.sampling()))

    def _finish(self, req: Request, cid: str, rest: str, full: str, source: str, t0: float) -> Result:
        latency = (time.perf_counter() - t0) * 1000
        self.last_latency_ms = latency
        return Result(cid, rest, full, source, latency)

    def _safe_log(self, rec: Record) -> None:
        """Logging must never cost the user a completion (a full disk is reported, not raised)."""
        try:
            self.log.add(rec)
        except StropError as err:
            log.error("%s", err)


