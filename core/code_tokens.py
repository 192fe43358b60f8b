"""Code-aware tokens for lexical retrieval: identifiers, whole and split into their words.

`parseHTTPHeader_v2` gives `parsehttpheader_v2`, `parse`, `http`, `header`, `v2`: a query that
names the identifier matches it exactly (rare tokens, high IDF), and one that names only a word of
it (`header`) still matches. Lowercased; tokens shorter than MIN_TOKEN_CHARS (`i`, `x`) and the
keywords of common languages (KEYWORDS: in nearly every chunk, so they only cost time) are dropped.

Hand-written rather than bm25s's tokenizer: bm25s lowercases before it calls a custom splitter, which
erases the camelCase boundaries, and its default pattern keeps snake_case whole; the splitting is
the part that has to be ours. Lines are tokenised one at a time so overlapping windows reuse them.
"""

from __future__ import annotations

import re
from functools import lru_cache

TOKENIZER_VERSION = 1  # bump when the tokens change: persisted indexes are then re-tokenised
MIN_TOKEN_CHARS = 2

KEYWORDS = frozenset("""
self cls def return import from class if else elif for while in is not and or none true false try
except finally with as pass raise yield lambda async await del global nonlocal assert break continue
const let var function this new null undefined typeof instanceof void switch case default export
extends implements interface public private protected static final func package go type struct fn
impl pub mut use mod match enum trait where the of to
""".split())

_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_WORDS = re.compile(r"[A-Z]+(?=[A-Z][a-z])|[A-Z]?[a-z]+[0-9]*|[A-Z]+[0-9]*|[0-9]+")


@lru_cache(maxsize=65536)
def identifier_tokens(identifier: str) -> tuple[str, ...]:
    """The tokens of one identifier: itself, then its words when it has more than one."""
    whole = identifier.lower()
    words = [w.lower() for w in _WORDS.findall(identifier)]
    out = [whole] if len(whole) >= MIN_TOKEN_CHARS and whole not in KEYWORDS else []
    if len(words) > 1:
        out += [w for w in words if len(w) >= MIN_TOKEN_CHARS and w not in KEYWORDS and w != whole]
    return tuple(out)


def code_tokens(text: str) -> list[str]:
    out: list[str] = []
    for identifier in _IDENTIFIER.findall(text):
        out.extend(identifier_tokens(identifier))
    return out
