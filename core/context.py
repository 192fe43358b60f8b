"""Assemble the prompt context for one cursor position, within a token budget.

Pure: the caller passes the document texts and a token counter. The window starts are chosen so that
consecutive keystrokes keep the token prefix (and so llama.cpp's KV cache) intact:
- the prefix window starts on a line that is a multiple of `chunk_lines`, and only moves (by a whole
  chunk) when the text before the cursor outgrows its budget;
- other documents contribute chunks aligned the same way, placed first;
- the typed part of the current line is laid out last (see core/fim.py).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from .fim import FimFormat, Piece, Snippet, layout
from .postprocess import BLOCK_OPENER_ENDINGS, bracket_depth

CountTokens = Callable[[str], int]


@dataclass(frozen=True)
class OtherDocument:
    path: str  # workspace-relative
    text: str
    focus_line: int  # where the user last edited or looked


@dataclass(frozen=True)
class Budget:
    total_tokens: int = 1536
    prefix_share: float = 0.6  # of the local part
    extra_share: float = 0.25  # of the total, for other documents
    chunk_lines: int = 32
    max_snippets: int = 3


@dataclass(frozen=True)
class Context:
    """Everything needed to build, log and later rebuild one prompt."""

    prefix: str  # the prefix window: text from an aligned line start up to the cursor
    suffix: str  # the suffix window: text after the cursor up to whole lines within budget
    snippets: tuple[Snippet, ...]
    path: str
    language: str
    repo_name: str
    line_head: str  # typed part of the cursor's line
    line_tail: str  # text after the cursor on its line
    multiline: bool  # may the completion span several lines?
    pieces: list[Piece] = field(compare=False)


TYPING_RESERVE_TOKENS = 16


def typing_reserve(line_head_tokens: int) -> int:
    """Prefix tokens left for the cursor's line: its count rounded up to TYPING_RESERVE_TOKENS, so
    that typing on the line does not move the window's start (each move makes the KV cache hold
    nothing of the prompt: a small cold window moved on every keystroke)."""
    return TYPING_RESERVE_TOKENS * (line_head_tokens // TYPING_RESERVE_TOKENS + 1)


def _aligned_window_start(lines: Sequence[str], end: int, budget: int, chunk: int, count: CountTokens) -> int:
    """Smallest chunk-aligned start s such that lines[s:end] fits the budget (approximately: counted
    chunk by chunk so each chunk's count can be reused; the engine trims the exact prompt)."""
    start = (end // chunk) * chunk
    used = count("".join(lines[start:end]))
    while start > 0:
        cand = max(0, start - chunk)
        cost = count("".join(lines[cand:start]))
        if used + cost > budget:
            break
        used += cost
        start = cand
    return start


def _suffix_window(text: str, budget: int, count: CountTokens) -> str:
    """Whole lines of `text` from its start within the budget (the first line always)."""
    lines = text.splitlines(keepends=True)
    if not lines:
        return ""
    out, used = [lines[0]], count(lines[0])
    for line in lines[1:]:
        cost = count(line)
        if used + cost > budget:
            break
        out.append(line)
        used += cost
    return "".join(out)


def _snippet(doc: OtherDocument, budget: int, chunk: int, count: CountTokens) -> Snippet | None:
    lines = doc.text.splitlines(keepends=True)
    if not lines or budget <= 0:
        return None
    first = (min(max(doc.focus_line, 0), len(lines) - 1) // chunk) * chunk
    picked: list[str] = []
    used = 0
    for line in lines[first:]:
        cost = count(line)
        if used + cost > budget:
            break
        picked.append(line)
        used += cost
    text = "".join(balanced_lines(picked)).rstrip("\n")
    return Snippet(doc.path, text) if text.strip() else None


def balanced_lines(lines: Sequence[str]) -> Sequence[str]:
    """The lines up to the last one after which no bracket they opened is still open (all of them
    when there is none). A snippet cut inside a call or a literal reads to the model as if the file
    after it were still in there: with a chunk of encode/httpx ending mid-call, Qwen2.5-Coder
    answered a hole in another file with `)`."""
    depth = 0
    last = 0
    for i, line in enumerate(lines, start=1):
        depth = max(0, depth + bracket_depth(line))
        if depth == 0:
            last = i
    return lines[:last] if last else lines


def wants_multiline(line_head: str, line_tail: str) -> bool:
    """A block may follow only on a new line (nothing typed yet but indentation) or after a line
    that opens a block (`def f():`, `if x {`); elsewhere the suggestion finishes the current line.
    Mid-line (code after the cursor) is always one line."""
    if line_tail.strip():
        return False
    head = line_head.rstrip()
    return not head or head.endswith(BLOCK_OPENER_ENDINGS)


def build(
    text: str,
    offset: int,
    *,
    fmt: FimFormat | None,
    count: CountTokens,
    budget: Budget = Budget(),
    path: str = "",
    language: str = "",
    others: Sequence[OtherDocument] = (),
    snippets: Sequence[Snippet] | None = None,
    repo_name: str = "",
) -> Context:
    """The context for a cursor at `offset` (code points) in `text`.

    `snippets`, when given, are the repository context as chosen before (a logged prompt's, a
    record's), laid out as they are; otherwise they are cut from `others` within the budget."""
    fixed = tuple(snippets) if snippets is not None else None
    before, after = text[:offset], text[offset:]
    cut = before.rfind("\n") + 1
    line_head = before[cut:]
    nl = after.find("\n")
    line_tail = after if nl < 0 else after[:nl]

    extra_budget = int(budget.total_tokens * budget.extra_share) if others and fixed is None else 0
    if fixed:
        extra_budget = min(sum(count(f"{s.path}\n{s.text}\n") for s in fixed), budget.total_tokens // 2)
    local = budget.total_tokens - extra_budget
    # Without FIM the suffix is unused, so the prefix takes the whole local budget.
    prefix_budget = int(local * budget.prefix_share) if fmt else local
    suffix_budget = local - prefix_budget if fmt else 0

    head_lines = before[:cut].splitlines(keepends=True)
    head_budget = max(prefix_budget - typing_reserve(count(line_head)), 0)
    start = _aligned_window_start(head_lines, len(head_lines), head_budget, budget.chunk_lines, count)
    prefix = "".join(head_lines[start:]) + line_head
    suffix = _suffix_window(after, suffix_budget, count) if fmt else ""

    chosen: list[Snippet] = list(fixed or ())
    if fixed is None and others and extra_budget > 0:
        each = extra_budget // min(len(others), budget.max_snippets)
        for doc in others[: budget.max_snippets]:
            snip = _snippet(doc, each, budget.chunk_lines, count)
            if snip:
                chosen.append(snip)

    pieces = layout(fmt, prefix, suffix, snippets=chosen, path=path, language=language, repo_name=repo_name)
    return Context(
        prefix=prefix, suffix=suffix, snippets=tuple(chosen), path=path, language=language, repo_name=repo_name,
        line_head=line_head, line_tail=line_tail, multiline=wants_multiline(line_head, line_tail),
        pieces=pieces,
    )
