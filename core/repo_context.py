"""Repository retrieval as prompt context: the chunks of other files that the lines before the
cursor point to (BM25 over the repository, core/retrieval.py), as snippets for the one completion path.

Serving, sampling and evaluation use the same `Retriever`, so a model is trained and judged with the
repository context it is served with. The query is the `query_lines` lines above the cursor's
`block_lines`-aligned block, so it stays the same while the user types inside that block: the
snippets are the head of the prompt, and a head that changed on every keystroke would leave nothing
of the prompt in llama.cpp's KV cache.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import PurePosixPath

from core.fim import Snippet
from core.languages import language_of
from core.retrieval import RepoIndex


@dataclass(frozen=True)
class RetrievalSettings:
    k: int = 3  # chunks in a prompt (0: no retrieval)
    query_lines: int = 24  # lines above the block that form the query
    block_lines: int = 16  # the query changes only when the cursor crosses into another block
    same_language: bool = True  # only chunks of files in the cursor file's language (or with its suffix)


class Retriever:
    """`retriever(path, text, offset) -> snippets`, from whatever index `index()` returns now (None
    while it is being built: no repository context yet, never a wait)."""

    def __init__(self, index: Callable[[], RepoIndex | None], settings: RetrievalSettings = RetrievalSettings(),
                 cache_size: int = 256) -> None:
        self.index = index
        self.settings = settings
        self._cache: OrderedDict[tuple, tuple[Snippet, ...]] = OrderedDict()
        self._cache_size = cache_size

    def __call__(self, path: str, text: str, offset: int) -> tuple[Snippet, ...]:
        s = self.settings
        index = self.index()
        if index is None or s.k <= 0:
            return ()
        line = text.count("\n", 0, offset)
        anchor = (line // s.block_lines) * s.block_lines
        if anchor == 0:  # the first block: the lines so far (a new file's head names what it uses)
            start, end = 0, _line_end(text, offset)
        else:
            start, end = _line_start(text, max(0, anchor - s.query_lines)), _line_start(text, anchor)
        query = text[start:end]
        key = (id(index), index.version, path, query)
        hit = self._cache.get(key)
        if hit is not None:
            self._cache.move_to_end(key)
            return hit
        # The file itself is the prompt's local part. Another language's chunks were noise: Python
        # code retrieved for a hole in pyproject.toml turned `httpx = "httpx"` into a TOML section
        # header (encode/httpx, Qwen2.5-Coder-0.5B).
        chunks = index.query(query, s.k, exclude_path=path,
                             keep_path=_same_kind_as(path) if s.same_language else None)
        snippets = tuple(Snippet(c.path, c.text.rstrip("\n"))
                         for c in sorted(chunks, key=lambda c: (c.path, c.start_line)))  # by place: a stable head
        self._cache[key] = snippets
        if len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return snippets


@lru_cache(maxsize=4096)
def _kind(path: str) -> str:
    """A file's language id, or its suffix (its name without one) when strop does not know it."""
    pure = PurePosixPath(path)
    return language_of(path) or pure.suffix.lower() or pure.name


def _same_kind_as(path: str) -> Callable[[str], bool]:
    kind = _kind(path)
    return lambda other: _kind(other) == kind


def _line_start(text: str, line: int) -> int:
    pos = 0
    for _ in range(line):
        nl = text.find("\n", pos)
        if nl < 0:
            return len(text)
        pos = nl + 1
    return pos


def _line_end(text: str, offset: int) -> int:
    nl = text.find("\n", offset)
    return len(text) if nl < 0 else nl


def offline_index(repo_root, files: dict[str, str], excludes=()) -> RepoIndex:
    """An index of exactly `files` (path → text), e.g. the training side of a held-out split, so that
    no held-out line can reach a prompt as repository context."""
    from core.repo_files import FileRules

    index = RepoIndex(repo_root, FileRules(excludes=tuple(excludes)), None)
    index.apply(files)
    return index
