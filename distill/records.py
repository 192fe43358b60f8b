"""The records the distillation stages hand each other, and their JSONL files.

One JSON object per line. Writers are crash-safe: `write_jsonl` replaces a file atomically, and
`append_jsonl` flushes and fsyncs each batch, so a killed process loses at most the line it was
writing; the reader skips such a torn last line, and the next append cuts it off first.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from core.errors import StropError
from core.fim import snippet_pairs

from .atomic import atomic_output

PROMPT_KINDS = frozenset({"fim_line", "fim_block", "fim_span", "next_line", "next_block", "logged"})
EVAL_KINDS = frozenset({"next_line", "fim_line", "fim_block"})
PROMPT_SOURCES = frozenset({"repo", "log"})


def store_snippets(record) -> None:
    """Snippets in the one stored shape, whether made here or read back from JSON."""
    object.__setattr__(record, "snippets", snippet_pairs(record.snippets))


@dataclass(frozen=True)
class Prompt:
    """A place where the model will be sampled for self-distillation.

    `reference` is the text the cut removed (the hole, or the next line/block). It is kept for
    analysis only: SSD trains on the model's own samples, never on `reference`.
    `suffix` is "" for next-line/next-block points (and for logged contexts without one).
    """

    id: str
    kind: str
    path: str
    language: str
    prefix: str
    suffix: str
    reference: str
    weight: float = 1.0
    source: str = "repo"
    snippets: tuple = ()  # repository context the prompt showed (a logged one's): ((path, text), ...)
    bundle: str = ""  # a logged prompt from a team bundle (`strop distill --log`): its bundle id

    def __post_init__(self) -> None:
        store_snippets(self)
        if self.kind not in PROMPT_KINDS:
            raise ValueError(f"Prompt kind {self.kind!r} is not one of {sorted(PROMPT_KINDS)}")
        if self.source not in PROMPT_SOURCES:
            raise ValueError(f"Prompt source {self.source!r} is not one of {sorted(PROMPT_SOURCES)}")
        if not self.weight > 0:
            raise ValueError(f"Prompt weight must be positive, got {self.weight!r}")


@dataclass(frozen=True)
class EvalItem:
    """A held-out completion: the model sees prefix (and suffix for FIM kinds) and should write target."""

    id: str
    kind: str
    path: str
    language: str
    prefix: str
    suffix: str
    target: str
    snippets: tuple = ()  # repository context for the prompt: ((path, text), ...)

    def __post_init__(self) -> None:
        store_snippets(self)
        if self.kind not in EVAL_KINDS:
            raise ValueError(f"EvalItem kind {self.kind!r} is not one of {sorted(EVAL_KINDS)}")


@dataclass(frozen=True)
class LoggedContext:
    """A completion a user was shown, as the completion log hands it to the harvester.

    `accepted_chars` of `completion` were accepted, of which `retained_chars` were still in the
    document when retention was measured; `weight` is the log's own weight for this event.
    """

    path: str
    language: str
    prefix: str
    suffix: str
    completion: str
    retained_chars: int
    accepted_chars: int
    weight: float = 1.0
    snippets: tuple = ()  # the repository context the served prompt showed: ((path, text), ...)
    bundle: str = ""  # the id of the team bundle it came from; "" for the local completion log

    def __post_init__(self) -> None:
        store_snippets(self)


R = TypeVar("R")


def _line(record: object) -> bytes:
    if not dataclasses.is_dataclass(record) or isinstance(record, type):
        raise TypeError(f"expected a dataclass record, got {type(record).__name__}")
    return (json.dumps(dataclasses.asdict(record), ensure_ascii=False) + "\n").encode("utf-8")


def write_jsonl(path: str | os.PathLike, records: Iterable[object]) -> int:
    """Replace `path` with `records`, one JSON object per line (atomically: distill/atomic.py).
    Returns the count."""
    count = 0
    with atomic_output(Path(path)) as tmp, open(tmp, "wb") as f:
        for record in records:
            f.write(_line(record))
            count += 1
    return count


def _cut_torn_tail(f) -> None:
    """If the file does not end in a newline, drop (or close) its last line before appending."""
    size = f.seek(0, os.SEEK_END)
    if size == 0:
        return
    f.seek(size - 1)
    if f.read(1) == b"\n":
        return
    # Walk back to the previous newline; the bytes after it are the unfinished line.
    step = 4096
    pos = size
    start = 0
    while pos > 0:
        lo = max(0, pos - step)
        f.seek(lo)
        chunk = f.read(pos - lo)
        nl = chunk.rfind(b"\n")
        if nl >= 0:
            start = lo + nl + 1
            break
        pos = lo
    f.seek(start)
    tail = f.read()
    try:
        json.loads(tail)
    except ValueError:
        f.truncate(start)
        return
    f.seek(0, os.SEEK_END)
    f.write(b"\n")  # a complete record that only lacked its newline (e.g. written by hand)


def append_jsonl(path: str | os.PathLike, records: Iterable[object]) -> int:
    """Append `records` as one batch, then flush and fsync. Returns the count appended."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = b"".join(_line(r) for r in records)
    with open(path, "a+b") as f:
        _cut_torn_tail(f)
        f.seek(0, os.SEEK_END)
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    return data.count(b"\n")


def read_jsonl(path: str | os.PathLike, cls: type[R]) -> list[R]:
    """Read every record of `path` as `cls`. A torn last line (a killed writer) is skipped."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise StropError(
            f"{path} does not exist: the stage that writes it has not run yet (or wrote elsewhere). "
            "Run the earlier stage of the cycle first, or check the path."
        ) from None
    lines = raw.split(b"\n")
    torn_allowed = not raw.endswith(b"\n")  # only an unterminated last line may be a torn write
    out: list[R] = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        is_last = number == len(lines)
        try:
            obj = json.loads(line)
        except ValueError as err:
            if is_last and torn_allowed:
                break
            raise StropError(
                f"{path}:{number} is not valid JSON ({err}); the file is corrupt in the middle, "
                "which a killed writer cannot cause. Delete the file and rerun the stage that writes it."
            ) from None
        try:
            out.append(cls(**obj))
        except (TypeError, ValueError) as err:
            raise StropError(
                f"{path}:{number} is not a {cls.__name__} record ({err}); the file was written by a "
                "different version of strop or another tool. Rerun the stage that writes it."
            ) from None
    return out
