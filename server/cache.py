"""Answer keystrokes without the model when possible.

Two small mechanisms (llama.vim's idea, written for LSP):
- typed-through: the user types the first characters of the suggestion just shown; the rest of the
  same suggestion is returned, keeping its id;
- a bounded LRU of recent results keyed by the exact text around the cursor, so going back to a
  position already seen (backspace, undo) costs nothing.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from dataclasses import dataclass


@dataclass(frozen=True)
class Shown:
    id: str
    prefix: str  # document text before the cursor when the suggestion was made
    suffix_head: str  # the first characters after the cursor then (they must not have changed)
    text: str  # the whole suggestion
    multiline: bool


SUFFIX_PROBE_CHARS = 2048


def context_key(uri: str, prefix: str, suffix: str) -> str:
    h = hashlib.blake2b(digest_size=16)
    for part in (uri, prefix[-8192:], suffix[:SUFFIX_PROBE_CHARS]):
        h.update(part.encode("utf-8", "surrogatepass"))
        h.update(b"\0")
    return h.hexdigest()


class CompletionCache:
    def __init__(self, capacity: int = 256) -> None:
        self._last: dict[str, Shown] = {}  # per document
        self._lru: OrderedDict[str, Shown] = OrderedDict()
        self._capacity = capacity

    def remember(self, uri: str, shown: Shown) -> None:
        self._last[uri] = shown
        key = context_key(uri, shown.prefix, shown.suffix_head)
        self._lru[key] = shown
        self._lru.move_to_end(key)
        while len(self._lru) > self._capacity:
            self._lru.popitem(last=False)

    def forget(self, uri: str) -> None:
        self._last.pop(uri, None)

    def lookup(self, uri: str, prefix: str, suffix: str) -> tuple[Shown, str] | None:
        """(the suggestion, what remains of it) if this position can be answered without the model."""
        last = self._last.get(uri)
        if last is not None and prefix.startswith(last.prefix) and suffix[:SUFFIX_PROBE_CHARS] == last.suffix_head:
            typed = prefix[len(last.prefix):]
            if typed and len(typed) < len(last.text) and last.text.startswith(typed):
                return last, last.text[len(typed):]
        hit = self._lru.get(context_key(uri, prefix, suffix[:SUFFIX_PROBE_CHARS]))
        if hit is not None and hit.prefix == prefix:
            return hit, hit.text
        return None
