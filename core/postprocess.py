"""Output hygiene: named rules, each a pure function, applied in a fixed order by `clean()`.

Order matters and is written once here: partial last line (when generation was cut short) →
scope (line/block) → repetition → suffix overlap → bracket balance → trailing whitespace. Each
rule takes the completion text and returns the text to keep.
"""

from __future__ import annotations

import re
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


# A unit of 6+ characters written three or more times in a row on one line: a decoding loop.
_LOOP = re.compile(r"(.{6,}?)\1{2,}")
MIN_REPEAT_CHARS = 8  # shorter repeated lines (`}`, `pass`, `break`, `else:`) are ordinary code


def _loop_end(line: str) -> int | None:
    """Where the first occurrence of a looping unit ends, or None. A loop runs to the end of the
    line (at most a part of the unit after it): a repeated unit the line goes on past is code the
    model finished (`"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"`). A unit needs
    a letter: rulers such as `# ------------` and digit runs are not loops."""
    pos = 0
    while (m := _LOOP.search(line, pos)) is not None:
        unit = m.group(1)
        if any(c.isalpha() for c in unit) and unit.startswith(line[m.end():].rstrip()):
            return m.start() + len(unit)
        pos = m.start() + 1
    return None


def cut_repetition(text: str) -> str:
    """Small models fall into loops; keep the first occurrence of what they repeat.

    - On one line: a unit repeated three or more times in a row is kept once.
    - Across lines: cut before the first line that repeats an earlier line of the completion
      (whitespace aside, at least MIN_REPEAT_CHARS long), then drop lines left at the end that open
      a block whose body was cut.
    """
    lines = text.split("\n")
    seen: set[str] = set()
    for i, line in enumerate(lines):
        end = _loop_end(line)
        if end is not None:
            lines = lines[:i] + [line[:end].rstrip()]
            break
        key = line.strip()
        if len(key) >= MIN_REPEAT_CHARS and key in seen:
            lines = lines[:i]
            while len(lines) > 1 and lines[-1].rstrip().endswith(BLOCK_OPENER_ENDINGS):
                lines.pop()
            break
        seen.add(key)
    return "\n".join(lines)


def generation_done(text: str, line_head: str) -> bool:
    """During generation, at each newline: may generation stop here?

    True once a complete line falls outside the block the completion started in (`block_scope`) or
    repeats an earlier one (`cut_repetition`); that line is generated but cut by `clean`.
    """
    lines = text.split("\n")[:-1]  # complete lines only
    if len(lines) >= MAX_BLOCK_LINES:
        return True
    while lines and not lines[-1].strip() and len(lines) > 1:
        lines.pop()
    expected = "\n".join(lines)
    return block_scope(expected, line_head) != expected or cut_repetition(expected) != expected


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


def _unquoted(line: str):
    """(index, character) of one line's characters outside string literals (quotes excluded)."""
    quote: str | None = None
    for i, ch in enumerate(line):
        if quote:
            if ch == quote and line[i - 1] != "\\":
                quote = None
        elif ch in "\"'`":
            quote = ch
        else:
            yield i, ch


def balance_brackets(text: str, line_head: str, line_tail: str, *, enclosing: int = 0, after: str = "") -> str:
    """On the completion's first line, cut at a closing bracket that has nothing left to close.

    It may close brackets opened earlier on the cursor's line and the `enclosing` ones earlier lines
    left open (the `) -> str:` that ends a multi-line signature), except those that the text after
    the cursor already closes: `line_tail`, then `after` (the lines below the cursor's line).
    (Later lines of a completion may close brackets opened on its earlier lines.)"""
    open_on_line = 0
    for ch in line_head:
        if ch in OPENERS:
            open_on_line += 1
        elif ch in CLOSERS:
            open_on_line = max(0, open_on_line - 1)
    openers = open_on_line + max(0, enclosing)
    closable = max(0, openers - unmatched_closers(line_tail + "\n" + after, limit=openers))
    depth = 0
    for i, ch in _unquoted(first_line(text)):
        if ch in OPENERS:
            depth += 1
        elif ch in CLOSERS:
            depth -= 1
            if -depth > closable:
                return text[:i].rstrip()
    return text


SCAN_LINES_FOR_CLOSERS = 200  # an enclosing bracket closes within this many lines, or is not counted as closed


def _scan_brackets(text: str, *, max_lines: int | None = None, limit: int | None = None) -> tuple[int, int]:
    """(brackets `text` leaves open, closers in it that close nothing it opened), outside string
    literals of one line and `#` comments; over at most `max_lines` lines, stopping once `limit`
    closers closed nothing (a cheap, language-agnostic reading: good enough to tell a finished
    statement from one that continues)."""
    lines = text.split("\n") if max_lines is None else text.split("\n", max_lines)[:max_lines]
    depth = unmatched = 0
    for line in lines:
        if limit is not None and unmatched >= limit:
            break
        for _, ch in _unquoted(line):
            if ch == "#" and depth == 0:
                break
            if ch in OPENERS:
                depth += 1
            elif ch in CLOSERS:
                if depth:
                    depth -= 1
                else:
                    unmatched += 1
    return depth, unmatched


def unmatched_closers(text: str, *, limit: int) -> int:
    """Closing brackets in `text` that close brackets opened before it, up to `limit`, over at most
    SCAN_LINES_FOR_CLOSERS lines (a request must not scan a whole long file)."""
    return min(_scan_brackets(text, max_lines=SCAN_LINES_FOR_CLOSERS, limit=limit)[1], limit)


def bracket_depth(text: str, *, ignore_unmatched: bool = False) -> int:
    """Open brackets left by `text`; `ignore_unmatched`: a closer with nothing open counts for
    nothing (for text that may start inside a bracket), else it counts −1."""
    depth, unmatched = _scan_brackets(text)
    return depth if ignore_unmatched else depth - unmatched


IMPORT_STAR = re.compile(r"\bimport\s+\*$")  # `from m import *` ends in `*` and is whole
CONTINUATION_ENDINGS = ("\\", ",", "+", "-", "*", "/", "=", "&&", "||", " and", " or", ".")


def enclosing_depth(before_line: str) -> int:
    """Brackets the text before the cursor's line leaves open: > 0 when the cursor is inside a list,
    dict, call or argument list that an earlier line opened. A closer with nothing open is ignored:
    a prompt's window may start inside a bracket an earlier line opened."""
    return bracket_depth(before_line, ignore_unmatched=True)


def statement_complete(text: str, line_head: str, enclosing: int = 0) -> bool:
    """Does `text` (written after `line_head`) end on a whole statement: at least one whole line, its
    brackets closed, and no line continuation at its end? Inside brackets an earlier line opened
    (`enclosing` > 0), a whole element (a line ending in `,` with its own brackets closed) counts too:
    the statement around it may run for many lines more."""
    if not text.strip():
        return False
    depth = bracket_depth(line_head + text)
    last = text.rstrip().rsplit("\n", 1)[-1].rstrip()
    if enclosing > 0 and depth == 0 and last.endswith(","):
        return True
    if depth > 0:
        return False
    return not last.endswith(CONTINUATION_ENDINGS) or bool(IMPORT_STAR.search(last))


def whole_statements(text: str, line_head: str, enclosing: int = 0) -> str:
    """The longest run of whole lines from the start of `text` that ends on a whole statement (or,
    inside brackets, a whole element), or ""."""
    lines = text.split("\n")
    for end in range(len(lines), 0, -1):
        head = "\n".join(lines[:end])
        if statement_complete(head, line_head, enclosing):
            return head
    return ""


def strip_trailing_whitespace(text: str) -> str:
    return "\n".join(line.rstrip() for line in text.split("\n")).rstrip("\n") if "\n" in text else text.rstrip()


@dataclass(frozen=True)
class Cleaned:
    text: str
    rules: tuple[str, ...]  # which rules changed the text, for the log and for debugging


def drop_partial_line(text: str) -> str:
    """A multi-line completion cut by the token or time cap ends mid-line: keep whole lines only
    (the first line always, being the one the cursor is on)."""
    nl = text.rfind("\n")
    return text if nl < 0 else text[:nl]


def clean(text: str, *, line_head: str, line_tail: str, suffix: str, multiline: bool,
          truncated: bool = False, enclosing: int = 0) -> Cleaned:
    """`suffix`: all the text after the cursor; `truncated`: generation stopped at its token or time
    cap rather than where it chose to; `enclosing`: brackets the lines before the cursor's left open."""
    applied: list[str] = []

    def step(name: str, out: str) -> str:
        if out != current:
            applied.append(name)
        return out

    current = text
    if truncated and multiline:
        current = step("partial_line", drop_partial_line(current))
    current = step("first_line" if not multiline else "block_scope",
                   first_line(current) if not multiline else block_scope(current, line_head))
    current = step("repetition", cut_repetition(current))
    current = step("suffix_overlap", trim_suffix_overlap(current, suffix))
    nl = suffix.find("\n")
    current = step("brackets", balance_brackets(current, line_head, line_tail, enclosing=enclosing,
                                                after=suffix[nl + 1:] if nl >= 0 else ""))
    current = step("trailing_ws", strip_trailing_whitespace(current) if current.strip() else "")
    return Cleaned(current, tuple(applied))
