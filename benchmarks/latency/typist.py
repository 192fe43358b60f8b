"""The user of the typing replay, and the plugin's account of what is on screen. Pure: no I/O, no clock.

The user types what the file really says there (`target`). Before each key they look at the ghost
text: if what remains to be typed starts with all of it, they accept it (one key, the accept
command); else if it starts with its first word(s) they take those (the plugins' word accept,
`<M-Right>`: whitespace then a run of word characters or of other characters, one key per word);
else they type the next key. A key that agrees with the suggestion types through it (the plugin
trims it and asks nothing); one that contradicts it dismisses it. A suggestion is *wrong* when it
left the screen with nothing of it accepted.

Rhythm (`delay_s`): keys `1/cps` apart, plus `pause_s` before a key that starts a word: people
type code in bursts and look at the ghost text between words. Both plugins wait for 150–200 ms
of quiet before they ask, so a typist who never paused would never be shown anything. The
benchmark's default pause, 400 ms, is the 150 ms debounce plus the 250 ms warm-keystroke goal: a
server that meets that goal is on screen before the next key.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from .positions import keystrokes, starts_word, typed_mask

WORD_SLICE = re.compile(r"\s*[A-Za-z0-9_]+|\s*[^A-Za-z0-9_\s]+")  # editors/nvim suggestion.slice("word")


def utf16_len(text: str) -> int:
    return len(text.encode("utf-16-le")) // 2


def accept_length(shown: str, remaining: str) -> tuple[int, int, bool]:
    """(characters of `shown` the user accepts, accept keys it takes, all of it?)."""
    if shown and remaining.startswith(shown):
        return len(shown), 1, True
    n = words = 0
    while n < len(shown):
        m = WORD_SLICE.match(shown, n)
        end = m.end() if m else len(shown)
        if not remaining.startswith(shown[:end]):
            break
        n, words = end, words + 1
    return n, words, False


@dataclass
class Suggestion:
    id: str
    text: str  # the item's insertText
    command: object = None
    used: int = 0  # characters of `text` now in the buffer (typed through or accepted)
    accepted: int = 0  # of which accepted

    @property
    def rest(self) -> str:
        return self.text[self.used:]


@dataclass
class Step:
    """What one action of the user does: the text inserted at the cursor, what the plugin tells
    the server about the suggestion, and whether it then asks for a new one."""
    inserted: str
    kind: str  # type | typed_through | accept | accept_words
    event: tuple | None = None  # ("dismissed", s) | ("partial", s, utf16) | ("accepted", s)
    ask: bool = False


@dataclass
class Replay:
    target: str
    before: str  # the document's character before the cursor at the start ("" at the file's start)
    cps: float
    pause_s: float
    pos: int = 0
    shown: Suggestion | None = None
    stats: dict = field(default_factory=lambda: {
        "keys_typed": 0, "accepts_whole": 0, "accepts_words": 0, "accept_keys": 0, "accepted_chars": 0,
        "shown": 0, "wrong": 0, "typed_through_keys": 0})

    def __post_init__(self) -> None:
        self.mask = typed_mask(self.target)

    @property
    def remaining(self) -> str:
        return self.target[self.pos:]

    @property
    def done(self) -> bool:
        return self.pos >= len(self.target)

    def next_key(self) -> str:
        """One character, or Enter with the new line's indentation (also the rest of an
        indentation an accept stopped inside)."""
        rest = self.remaining
        j = 1
        if rest[0] == "\n" or not self.mask[self.pos]:
            while j < len(rest) and not self.mask[self.pos + j]:
                j += 1
        return rest[:j]

    def _last_char(self) -> str:
        return self.target[self.pos - 1] if self.pos else self.before

    def delay_s(self) -> float:
        """From this action to the next."""
        if self.done:
            return 0.0
        return 1 / self.cps + (self.pause_s if starts_word(self._last_char(), self.next_key()) else 0.0)

    def show(self, s: Suggestion) -> bool:
        """An answer arrived for the current state; False when there is nothing to show."""
        if not s.text or self.done:
            return False
        self.shown = s
        self.stats["shown"] += 1
        return True

    def _retire(self) -> None:
        if self.shown is not None and self.shown.accepted == 0 and self.shown.rest:
            self.stats["wrong"] += 1
        self.shown = None

    def finish(self) -> Suggestion | None:
        """The replay is over: a suggestion still shown and never taken counts as wrong."""
        s = self.shown
        self._retire()
        return s

    def act(self) -> Step:
        s = self.shown
        if s is not None and s.rest:
            n, keys, whole = accept_length(s.rest, self.remaining)
            if n:
                taken = s.rest[:n]
                self.stats["accepted_chars"] += sum(self.mask[self.pos:self.pos + n])
                self.stats["accept_keys"] += keys
                self.pos += n
                s.used += n
                s.accepted += n
                if whole:
                    self.stats["accepts_whole"] += 1
                    self.shown = None
                    return Step(taken, "accept", ("accepted", s), ask=True)
                self.stats["accepts_words"] += 1
                return Step(taken, "accept_words", ("partial", s, utf16_len(s.text[:s.used])), ask=False)
        key = self.next_key()
        self.stats["keys_typed"] += 1
        self.pos += len(key)
        if s is None:
            return Step(key, "type", ask=True)
        if s.rest.startswith(key):
            s.used += len(key)
            self.stats["typed_through_keys"] += 1
            if s.rest:
                return Step(key, "typed_through")
            self.shown = None  # typed through to its end: forgotten, not dismissed; the plugin asks anew
            return Step(key, "typed_through", ask=True)
        self._retire()
        return Step(key, "type", ("dismissed", s), ask=True)

    def summary(self) -> dict:
        units = sum(self.mask)
        return {**self.stats, "chars": units, "keys": len(keystrokes(self.target)),
                "lines": self.target.count("\n") + 1,
                "saved_share": round(self.stats["accepted_chars"] / units, 4) if units else None}

