"""Output hygiene: named rules, each a pure function, applied in a fixed order by `clean()`.

Order matters and is written once here: scope (line/block) → suffix overlap → bracket balance →
trailing whitespace. Each rule takes the completion text and returns the text to keep.
"""

from __future__ import annotations

from dataclasses import dataclass

OPENERS = {"(": ")", "[": "]", "{": "}"}
CLOSERS = {v: k for k, v in OPENERS.items()}
BLOCK_OPENER_ENDINGS = (":", "{", "(", "[", "=>", "->", " do", " then")
MAX_BLOCK_LINES = 12
PUNCTUATION = set(")]}>;:,.'\"` ")


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" \t"))


def first_line(text: str) -> str:
    """Mid-line completions end at the end of the line."""
    nl = text.find("\n")
    return text if nl < 0 else text[:nl]


def block_scope(text: str, line_head: str) -> str:
    """Multi-line completions end where the block they started in ends.

    The block is what follows the cursor's line at deeper indentation when that line opens a block
    (`def f():`, `if x {`), else at the same or deeper indentation. Generation also stops at a
    blank line followed by a dedent, at two blank lines in a row, and after MAX_BLOCK_LINES.
    """
    lines = text.split("\n")
    first = lines[0]
    opened = (line_head + first).rstrip()
    base = _indent(line_head + first) if (line_head + first).strip() else _indent(line_head)
    # An empty cursor line: the block is whatever the model indents it to.
    if not (line_head + first).strip() and len(lines) > 1:
        nonblank = next((ln for ln in lines[1:] if ln.strip()), "")
        base = min(_indent(line_head), _indent(nonblank)) if nonblank else _indent(line_head)
        opens_block = False
    else:
        opens_block = opened.endswith(BLOCK_OPENER_ENDINGS)
    keep = [first]
    blank_run = 0
    for line in lines[1:]:
        if not line.strip():
            blank_run += 1
            if blank_run >= 2:
                break
            keep.append(line)
            continue
        ind = _indent(line)
        if (opens_block and ind <= base) or (not opens_block and ind < base):
            # A closing bracket at the block's own indentation ends the block and belongs to it.
            if opens_block and ind == base and line.strip()[0] in CLOSERS and opened.endswith(("{", "(", "[")):
                keep.append(line)
            break
        blank_run = 0
        keep.append(line)
        if len(keep) >= MAX_BLOCK_LINES:
            break
    while len(keep) > 1 and not keep[-1].strip():
        keep.pop()
    return "\n".join(keep)


def trim_suffix_overlap(text: str, suffix: str) -> str:
    """Never repeat what already follows the cursor.

    - On the cursor's line: if the completion ends with the start of the text after the cursor
      (`foo(x)` with `)` after the cursor), drop that tail. Short overlaps count only when they are
      punctuation, so `name` before `e_x` is left alone.
    - Across lines: if a completion line repeats the next non-blank line of the suffix, cut there.
    """
    tail = suffix.split("\n", 1)[0].strip()
    for k in range(min(len(text), len(tail)), 0, -1):
        piece = tail[:k]
        if text.endswith(piece) and (k == len(tail) or k >= 4 or all(c in PUNCTUATION for c in piece)):
            text = text[:-k]
            break
    next_lines = [ln.strip() for ln in suffix.split("\n")[1:] if ln.strip()]
    if next_lines and "\n" in text:
        lines = text.split("\n")
        for i, line in enumerate(lines[1:], start=1):
            if line.strip() == next_lines[0]:
                return "\n".join(lines[:i]).rstrip()
    return text


def balance_brackets(text: str, line_head: str, line_tail: str) -> str:
    """On the completion's first line, cut at a closing bracket that has nothing left to close:
    brackets opened earlier on the cursor's line can be closed, unless the text after the cursor
    already closes them. (Later lines may close brackets opened on earlier lines of the file.)"""
    open_on_line = 0
    for ch in line_head:
        if ch in OPENERS:
            open_on_line += 1
        elif ch in CLOSERS:
            open_on_line = max(0, open_on_line - 1)
    closable = max(0, open_on_line - sum(1 for ch in line_tail if ch in CLOSERS))
    line = first_line(text)
    depth = 0
    quote: str | None = None
    for i, ch in enumerate(line):
        if quote:
            if ch == quote and line[i - 1] != "\\":
                quote = None
        elif ch in "\"'`":
            quote = ch
        elif ch in OPENERS:
            depth += 1
        elif ch in CLOSERS:
            depth -= 1
            if -depth > closable:
                return text[:i].rstrip()
    return text


def strip_trailing_whitespace(text: str) -> str:
    return "\n".join(line.rstrip() for line in text.split("\n")).rstrip("\n") if "\n" in text else text.rstrip()


@dataclass(frozen=True)
class Cleaned:
    text: str
    rules: tuple[str, ...]  # which rules changed the text, for the log and for debugging


def clean(text: str, *, line_head: str, line_tail: str, suffix: str, multiline: bool) -> Cleaned:
    applied: list[str] = []

    def step(name: str, out: str) -> str:
        if out != current:
            applied.append(name)
        return out

    current = text
    current = step("first_line" if not multiline else "block_scope",
                   first_line(current) if not multiline else block_scope(current, line_head))
    current = step("suffix_overlap", trim_suffix_overlap(current, suffix))
    current = step("brackets", balance_brackets(current, line_head, line_tail))
    current = step("trailing_ws", strip_trailing_whitespace(current) if current.strip() else "")
    return Cleaned(current, tuple(applied))
