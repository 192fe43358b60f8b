"""How much of an accepted completion survives later edits.

After an accept, the inserted text's place in the document is followed through every change (a
change before it shifts it; a change inside it widens or narrows it). Retention is measured when the
file is saved, after N further changes, or after T seconds, whichever comes first: the characters of
the accepted text that still stand, in order, in that place (difflib's matching blocks: an
insertion-tolerant, order-preserving count, the same idea as an edit-distance survival rate).
"""

from __future__ import annotations

import difflib
import time
from dataclasses import dataclass, field

MARGIN_CHARS = 64  # text around the region that may hold moved-but-kept pieces


@dataclass
class Tracked:
    id: str
    uri: str
    text: str  # the accepted text
    start: int  # offset (code points) of the region in the current document
    end: int
    accepted_at: float = field(default_factory=time.monotonic)
    changes: int = 0


def locate(document: str, text: str, expected: int) -> int:
    """Where the accepted text stands in the document: the occurrence nearest the expected offset."""
    best, pos = -1, document.find(text)
    while pos >= 0:
        if best < 0 or abs(pos - expected) < abs(best - expected):
            best = pos
        pos = document.find(text, pos + 1)
    return best if best >= 0 else max(0, min(expected, len(document)))


def retained_chars(accepted: str, region: str) -> int:
    matcher = difflib.SequenceMatcher(None, accepted, region, autojunk=False)
    return sum(block.size for block in matcher.get_matching_blocks())


class RetentionTracker:
    def __init__(self, *, after_s: float, after_changes: int) -> None:
        self.after_s = after_s
        self.after_changes = after_changes
        self._tracked: dict[str, Tracked] = {}

    def track(self, cid: str, uri: str, document: str, text: str, expected_offset: int) -> None:
        start = locate(document, text, expected_offset)
        self._tracked[cid] = Tracked(cid, uri, text, start, start + len(text))

    def on_change(self, uri: str, start: int, end: int, new_len: int) -> None:
        """A change replaced document[start:end] with new_len characters."""
        delta = new_len - (end - start)
        for t in self._tracked.values():
            if t.uri != uri:
                continue
            t.changes += 1
            if end <= t.start:  # entirely before
                t.start += delta
                t.end += delta
            elif start >= t.end:  # entirely after
                continue
            else:  # overlaps: the region keeps its outer bounds, stretched by the change
                t.start = min(t.start, start)
                t.end = max(t.end + delta, start + new_len)

    def due(self, uri: str | None = None, *, saved: bool = False, closing: bool = False) -> list[Tracked]:
        now = time.monotonic()
        out = []
        for t in list(self._tracked.values()):
            if uri is not None and t.uri != uri:
                continue
            if saved or closing or t.changes >= self.after_changes or now - t.accepted_at >= self.after_s:
                out.append(t)
        return out

    def measure(self, t: Tracked, document: str) -> int:
        """Retained characters of `t` in `document`; stops tracking it."""
        self._tracked.pop(t.id, None)
        lo = max(0, t.start - MARGIN_CHARS)
        hi = min(len(document), max(t.end, t.start) + MARGIN_CHARS)
        return retained_chars(t.text, document[lo:hi])

    def pending(self) -> list[Tracked]:
        return list(self._tracked.values())
