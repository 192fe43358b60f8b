"""Harvest: choose the places in a repository where the model will be sampled for self-distillation.

Which files: distill/source_files.py (the same choice split.py makes). Every text that leaves this
module has been through scrub.redact.

Where to cut (offsets into a file's text; prefix + reference + suffix == the text for FIM kinds):
- fim_line: a whole line after its indentation (the cursor sits where the editor auto-indents);
- fim_block: 2..max_block_lines lines, preferably the body of an indented block;
- fim_span: from a token boundary to a later token boundary, within a line or up to 3 lines on;
- next_line / next_block: as fim_line / fim_block, with everything after the cursor dropped.
Prompts are deterministic: files in sorted order, each with random.Random(seed, stable hash of path).
"""

from __future__ import annotations

import hashlib
import os
import random
import re
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import cached_property

from core.languages import language_of
from distill.records import LoggedContext, Prompt
from distill.scrub import REDACTED, redact
from distill.source_files import (
    FileFilter,
    decode_source,
    load_source_files,
    skip_reason_for_path,
    skip_reason_for_text,
)

DEFAULT_MAX_PREFIX_CHARS = 6000
DEFAULT_MAX_SUFFIX_CHARS = 2000


def stable_hash(*parts: object) -> int:
    """A 64-bit hash that is the same in every process (unlike hash())."""
    digest = hashlib.blake2b("\0".join(map(str, parts)).encode("utf-8", "surrogateescape"),
                             digest_size=8).digest()
    return int.from_bytes(digest, "big")


def record_id(*parts: object) -> str:
    return f"{stable_hash(*parts):016x}"


class Lines:
    """Offsets of a text's lines: start, end of indentation, end of content (trailing blanks cut)."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.start: list[int] = []
        self.indent_end: list[int] = []
        self.content_end: list[int] = []
        pos = 0
        for line in text.split("\n"):
            self.start.append(pos)
            self.indent_end.append(pos + len(line) - len(line.lstrip(" \t")))
            self.content_end.append(pos + len(line.rstrip()))
            pos += len(line) + 1

    def __len__(self) -> int:
        return len(self.start)

    def indent(self, i: int) -> int:
        return self.indent_end[i] - self.start[i]

    def blank(self, i: int) -> bool:
        return self.content_end[i] <= self.indent_end[i]

    def content(self, i: int) -> str:
        return self.text[self.indent_end[i]: self.content_end[i]]

    @cached_property
    def worthwhile(self) -> list[int]:
        """The lines worth completing (see meaningful), in order."""
        return [i for i in range(len(self)) if self.meaningful(i)]

    def meaningful(self, i: int) -> bool:
        """Worth completing: two or more characters, at least one of them a letter or digit."""
        content = self.content(i)
        return len(content) >= 2 and any(c.isalnum() for c in content) and REDACTED not in content

    def opens_block(self, i: int) -> bool:
        """Line i starts an indented body: the previous non-blank line is indented less."""
        j = i - 1
        while j >= 0 and self.blank(j):
            j -= 1
        return j >= 0 and not self.blank(i) and self.indent(j) < self.indent(i)

    def block_end(self, i: int, max_lines: int) -> int:
        """Last line of the block starting at line i, at most max_lines lines long: the following
        lines indented at least as much, up to a dedent, or up to a blank line after which the
        code goes on at line i's level (a paragraph break). No trailing blank lines."""
        last = i
        j = i + 1
        after_blank = False
        while j < len(self) and j - i < max_lines:
            if self.blank(j):
                after_blank = True
            else:
                if self.indent(j) < self.indent(i) or (after_blank and self.indent(j) == self.indent(i)):
                    break
                last = j
                after_blank = False
            j += 1
        return last


@dataclass(frozen=True)
class Cut:
    kind: str
    start: int  # hole [start, end) in the file's text
    end: int


_BOUNDARY = re.compile(r"\w+|[^\w\s]+|\s+")


def token_starts(text: str, begin: int, end: int) -> list[int]:
    """Offsets in [begin, end) where a word, a punctuation run or a space run starts."""
    return [begin + m.start() for m in _BOUNDARY.finditer(text[begin:end])]


def trim_prefix(prefix: str, max_chars: int) -> str:
    """The last max_chars of prefix, starting at a line start when one is in reach."""
    if len(prefix) <= max_chars:
        return prefix
    cut = len(prefix) - max_chars
    nl = prefix.find("\n", cut)
    return prefix[nl + 1:] if nl >= 0 else prefix[cut:]


def trim_suffix(suffix: str, max_chars: int) -> str:
    """The first max_chars of suffix, ending after a newline when one is in reach."""
    if len(suffix) <= max_chars:
        return suffix
    nl = suffix.rfind("\n", 0, max_chars)
    return suffix[: nl + 1] if nl >= 0 else suffix[:max_chars]


@dataclass(frozen=True)
class HarvestConfig:
    seed: int = 0
    files: FileFilter = field(default_factory=FileFilter)
    prompts_per_file: int = 8  # at most
    lines_per_prompt: int = 12  # a file gets one prompt per this many worthwhile lines (≥ 1)
    kind_mix: tuple[tuple[str, float], ...] = (
        ("fim_line", 0.25), ("fim_block", 0.2), ("fim_span", 0.2), ("next_line", 0.2), ("next_block", 0.15),
    )
    max_block_lines: int = 8
    max_span_chars: int = 120
    max_prefix_chars: int = DEFAULT_MAX_PREFIX_CHARS
    max_suffix_chars: int = DEFAULT_MAX_SUFFIX_CHARS
    retained_bonus: float = 1.0  # a logged completion weighs weight × (1 + bonus × retained fraction)

    def __post_init__(self) -> None:
        kinds = {k for k, _ in self.kind_mix}
        unknown = kinds - {"fim_line", "fim_block", "fim_span", "next_line", "next_block"}
        if unknown or not any(w > 0 for _, w in self.kind_mix):
            raise ValueError(f"kind_mix needs positive weights over repository kinds; got {self.kind_mix}")


def choose_cut(kind: str, lines: Lines, rng: random.Random, cfg: HarvestConfig) -> Cut | None:
    """One cut of `kind` at a random worthwhile place, or None if the file has no such place."""
    candidates = lines.worthwhile
    if not candidates:
        return None
    if kind in ("fim_line", "next_line"):
        i = rng.choice(candidates)
        return Cut(kind, lines.indent_end[i], lines.content_end[i])
    if kind in ("fim_block", "next_block"):
        def block_of(i: int) -> Cut | None:
            last = lines.block_end(i, rng.randint(2, max(2, cfg.max_block_lines)))
            return Cut(kind, lines.indent_end[i], lines.content_end[last]) if last > i else None

        bodies = [i for i in candidates if lines.opens_block(i)]
        for pool in ([bodies] if bodies and rng.random() < 0.7 else []) + [candidates]:
            for i in rng.sample(pool, min(len(pool), 8)):
                if (cut := block_of(i)) is not None:
                    return cut
        return None
    if kind == "fim_span":
        i = rng.choice(candidates)
        starts = [p for p in token_starts(lines.text, lines.indent_end[i], lines.content_end[i])
                  if not lines.text[p].isspace()]
        start = rng.choice(starts)
        last = i
        if rng.random() < 0.35:  # across lines: end 1–3 lines further down, inside the same block
            last = lines.block_end(i, rng.randint(2, 4))
        # end where a token starts (or at the line's end), never right after a space
        ends = [p for p in token_starts(lines.text, lines.indent_end[last], lines.content_end[last])
                if p > start and not lines.text[p - 1].isspace()] + [lines.content_end[last]]
        ends = [p for p in ends if p - start <= cfg.max_span_chars] or [min(ends)]
        end = rng.choice(ends)
        hole = lines.text[start:end]
        return Cut(kind, start, end) if hole.strip() and REDACTED not in hole else None
    raise ValueError(f"unknown cut kind {kind!r}")


def cut_prompts(path: str, text: str, cfg: HarvestConfig) -> list[Prompt]:
    """The prompts of one (already redacted) file."""
    language = language_of(path, text) or "plaintext"
    lines = Lines(text)
    if not lines.worthwhile:
        return []
    n = min(cfg.prompts_per_file, max(1, len(lines.worthwhile) // cfg.lines_per_prompt))
    rng = random.Random(cfg.seed * (1 << 64) + stable_hash(path))
    kinds = [k for k, _ in cfg.kind_mix]
    weights = [w for _, w in cfg.kind_mix]
    prompts: list[Prompt] = []
    seen: set[tuple[str, int, int]] = set()
    for _ in range(n * 3):  # a few spare draws for duplicates and kinds the file cannot offer
        if len(prompts) == n:
            break
        kind = rng.choices(kinds, weights)[0]
        cut = choose_cut(kind, lines, rng, cfg)
        if cut is None or (cut.kind, cut.start, cut.end) in seen:
            continue
        seen.add((cut.kind, cut.start, cut.end))
        fim = cut.kind.startswith("fim_")
        prompts.append(Prompt(
            id=record_id(path, cut.kind, cut.start, cut.end),
            kind=cut.kind,
            path=path,
            language=language,
            prefix=trim_prefix(text[: cut.start], cfg.max_prefix_chars),
            suffix=trim_suffix(text[cut.end:], cfg.max_suffix_chars) if fim else "",
            reference=text[cut.start: cut.end],
        ))
    return prompts


def logged_prompt(ctx: LoggedContext, cfg: HarvestConfig) -> Prompt | None:
    """A completion-log context as a prompt, weighted up by how much of it the user kept."""
    if skip_reason_for_path(ctx.path, cfg.files) in ("secret_file", "excluded", "vendored", "lock_file"):
        return None
    retained = min(1.0, max(0.0, ctx.retained_chars / ctx.accepted_chars)) if ctx.accepted_chars > 0 else 0.0
    weight = ctx.weight * (1.0 + cfg.retained_bonus * retained)
    if not weight > 0:
        return None
    prefix, _ = redact(ctx.prefix)
    suffix, _ = redact(ctx.suffix)
    completion, _ = redact(ctx.completion)
    return Prompt(
        id=record_id("log", ctx.path, ctx.prefix, ctx.suffix, ctx.completion),
        kind="logged",
        path=ctx.path,
        language=ctx.language,
        prefix=prefix,  # the served windows, as they were: trimming them would change the prompt
        suffix=suffix,
        reference=completion,
        weight=weight,
        source="log",
        snippets=tuple((path, redact(text)[0]) for path, text in ctx.snippets),
        bundle=ctx.bundle,
    )


def harvest(
    repo_root: str | os.PathLike,
    files: Mapping[str, str] | None,
    cfg: HarvestConfig = HarvestConfig(),
    logged: Iterable[LoggedContext] = (),
) -> list[Prompt]:
    """Prompts for self-distillation.

    `files` maps relative paths to text — normally `split_repo(...).train_files`, so held-out code
    never becomes a prompt; None reads `repo_root` (load_source_files). Either way the file filter
    applies and every text is redacted. Logged contexts follow the repository's prompts.
    """
    if files is None:
        texts = load_source_files(repo_root, cfg.files).texts
    else:
        texts = {}
        for path, text in files.items():
            if skip_reason_for_path(path, cfg.files) is not None:
                continue
            decoded, reason = decode_source(text.encode("utf-8", "surrogateescape"), cfg.files)
            if reason is None and skip_reason_for_text(path, decoded, cfg.files) is None:
                texts[path] = redact(decoded)[0]
    prompts: list[Prompt] = []
    for path in sorted(texts):
        prompts.extend(cut_prompts(path, texts[path], cfg))
    for ctx in logged:
        if (prompt := logged_prompt(ctx, cfg)) is not None:
            prompts.append(prompt)
    return prompts


def count_by_kind(prompts: Iterable[Prompt]) -> dict[str, int]:
    return dict(Counter(p.kind for p in prompts))
