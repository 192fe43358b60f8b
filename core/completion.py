"""The one completion path: a document, a cursor, other documents and the repository name → the
prompt → a decode job → the suggestion after output hygiene.

The language server (`server/completer.py`), `strop complete`, sampling (`distill/sample.py`),
evaluation (`distill/evaluate.py`) and the benchmarks all go through `CompletionPath`, so a model is
sampled, trained, evaluated and served on the same token sequence for the same position
(tests/test_prompt_parity.py checks it). What differs between them is only the engine behind it
(the supervised worker process, or `core.decode.InProcessEngine`) and the sampling parameters.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from core import context as ctxmod
from core import postprocess
from core.decode import Generation, Job, Sampling
from core.fim import FimFormat, Snippet, as_snippets


@dataclass(frozen=True)
class PromptSettings:
    """How much context a prompt holds and how it is shared out (the `[prompt]` section)."""

    budget_tokens: int = 2048  # the whole prompt, at most
    prefix_share: float = 0.75  # of the current file's part, for the text before the cursor
    extra_share: float = 0.25  # of the whole, for repository context (other documents, retrieval)
    chunk_lines: int = 32  # the prefix window's start moves by this many lines (keeps the KV cache)
    max_snippets: int = 3
    retrieval_k: int = 3  # repository chunks retrieved into the snippets (BM25, core/repo_context.py; 0: off)

    def budget(self, *, total_tokens: int | None = None, cold: bool = False) -> ctxmod.Budget:
        return ctxmod.Budget(total_tokens=total_tokens or self.budget_tokens, prefix_share=self.prefix_share,
                             extra_share=0.0 if cold else self.extra_share, chunk_lines=2 if cold else self.chunk_lines,
                             max_snippets=self.max_snippets)


Retrieve = Callable[[str, str, int], Sequence[Snippet]]
"""(path, text, cursor offset) → repository snippets for the prompt (core.repo_context.Retriever)."""


class GenerationLimits(Protocol):
    max_new_tokens: int  # multi-line completions
    max_new_tokens_line: int  # single-line completions
    time_cap_ms: int  # from the first token: an unfinished suggestion is given up (0: no time cap)


@dataclass(frozen=True)
class Position:
    """A cursor in a document, with what else the prompt may show."""

    path: str  # repository-relative
    language: str
    text: str
    offset: int  # the cursor, in code points
    others: tuple[ctxmod.OtherDocument, ...] = ()
    snippets: tuple[Snippet, ...] | None = None  # repository context chosen before (a record's), as is

    @property
    def suffix(self) -> str:
        return self.text[self.offset:]


@dataclass(frozen=True)
class Outcome:
    context: ctxmod.Context
    generation: Generation | None
    cleaned: postprocess.Cleaned
    multiline: bool

    @property
    def text(self) -> str:
        return self.cleaned.text


class Generates(Protocol):
    """An engine that decodes a job in the calling thread (core.decode.InProcessEngine)."""

    model: object

    def count_tokens(self, text: str) -> int: ...

    def generate(self, model, job: Job) -> Generation | None: ...


def enclosing_of(ctx: ctxmod.Context) -> int:
    """Brackets left open before the cursor's line, read from the prompt's prefix window."""
    return postprocess.enclosing_depth(ctx.prefix[: len(ctx.prefix) - len(ctx.line_head)])


def make_job(ctx: ctxmod.Context, *, key: str, limits: GenerationLimits, sampling: Sampling,
             multiline: bool | None = None) -> Job:
    """The engine job for a context: one line when the cursor is mid-line, else a block that stops
    where `postprocess.generation_done` says. Serving's limits also carry the soft prediction
    budget, token healing and speculation."""
    multiline = ctx.multiline if multiline is None else multiline
    soft = getattr(limits, "predict_soft_ms", None)
    return Job(
        key=key, pieces=ctx.pieces, max_tokens=limits.max_new_tokens if multiline else limits.max_new_tokens_line,
        single_line=not multiline, sampling=sampling, block_head=ctx.line_head if multiline else None,
        block_enclosing=enclosing_of(ctx) if multiline else 0,
        predict_soft_ms=soft if soft and soft > 0 else None, predict_hard_ms=limits.time_cap_ms if limits.time_cap_ms > 0 else None,
        heal=bool(getattr(limits, "heal", False)), speculative=bool(getattr(limits, "speculative", False)),
    )


def clean_generation(gen: Generation, ctx: ctxmod.Context, suffix: str, multiline: bool) -> postprocess.Cleaned:
    """The model's text after output hygiene; `suffix` is all the text after the cursor. A generation
    cut by a cap keeps only whole lines/statements; a single line cut by a cap is no suggestion."""
    truncated = not gen.complete
    if truncated and not multiline:
        return postprocess.Cleaned("", ("incomplete_line",))
    enclosing = enclosing_of(ctx)
    cleaned = postprocess.clean(gen.text, line_head=ctx.line_head, line_tail=ctx.line_tail, suffix=suffix,
                                multiline=multiline, truncated=truncated, enclosing=enclosing)
    if truncated:
        whole = postprocess.whole_statements(cleaned.text, ctx.line_head, enclosing)
        if whole != cleaned.text:
            return postprocess.Cleaned(whole, cleaned.rules + ("incomplete_statement",))
    return cleaned


class CompletionPath:
    """Prompt layout, job and hygiene for one model (its FIM format and tokenizer)."""

    def __init__(self, fmt: FimFormat | None, count: ctxmod.CountTokens, prompt: PromptSettings,
                 limits: GenerationLimits, *, repo_name: str = "", retriever: Retrieve | None = None) -> None:
        self.fmt = fmt
        self.count = count
        self.prompt = prompt
        self.limits = limits
        self.repo_name = repo_name
        self.retriever = retriever

    def context(self, pos: Position, *, total_tokens: int | None = None, cold: bool = False) -> ctxmod.Context:
        """The prompt's context; `cold` is a small one for a keystroke that finds nothing warm (no
        repository context, short chunks), `total_tokens` overrides the budget."""
        others = () if cold else tuple(pos.others)
        if not cold and pos.snippets is None and self.retriever is not None:
            # Repository retrieval after the open documents, within the same snippet budget.
            others += tuple(ctxmod.OtherDocument(s.path, s.text, 0)
                            for s in self.retriever(pos.path, pos.text, pos.offset))
        return ctxmod.build(pos.text, pos.offset, fmt=self.fmt, count=self.count,
                            budget=self.prompt.budget(total_tokens=total_tokens, cold=cold), path=pos.path,
                            language=pos.language, others=others,
                            snippets=None if cold else pos.snippets, repo_name=self.repo_name)

    def job(self, ctx: ctxmod.Context, *, key: str, sampling: Sampling, multiline: bool | None = None) -> Job:
        return make_job(ctx, key=key, limits=self.limits, sampling=sampling, multiline=multiline)

    def run(self, engine: Generates, pos: Position, *, key: str, sampling: Sampling,
            multiline: bool | None = None) -> Outcome:
        """Decode `pos` in this thread on an in-process engine (sampling, evaluation, benchmarks)."""
        ctx = self.context(pos)
        multi = ctx.multiline if multiline is None else multiline
        gen = engine.generate(engine.model, self.job(ctx, key=key, sampling=sampling, multiline=multi))
        cleaned = clean_generation(gen, ctx, pos.suffix, multi) if gen is not None else postprocess.Cleaned("", ())
        return Outcome(ctx, gen, cleaned, multi)


def position_of(prefix: str, suffix: str, *, path: str, language: str,
                snippets: Sequence | None = None) -> Position:
    """A record's (prompt's, sample's, evaluation item's) position: its windows and its snippets."""
    return Position(path=path, language=language, text=prefix + suffix, offset=len(prefix),
                    snippets=as_snippets(snippets) if snippets else None)
