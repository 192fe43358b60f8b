"""Scores: what the user gets (whole suggestions, exact match, edit similarity) and time percentiles."""

from __future__ import annotations

import io
import math
import statistics
import tokenize

from core.metrics import edit_similarity

WHOLE_STOPS = ("eog", "newline", "block")  # generation ended where the model or the scope said
CUT_STOPS = ("time", "max_tokens")
_CONTINUES = ("(", "[", "{", ",", ":", "\\")  # a line may end here and go on on the next one
_DANGLING = ("=", "+", "-", "*", "/", "%", "|", "&", "^", "<", ">", ".", "@", "~", "!")
_DANGLING_WORDS = {"and", "or", "not", "in", "is", "if", "else", "for", "lambda", "import", "from", "as", "with",
                   "await", "def", "class", "while", "elif", "assert", "del"}


def first_line(text: str) -> str:
    return text.split("\n", 1)[0]


def exact(pred: str, truth: str) -> float:
    return float(pred.rstrip() == truth.rstrip())


def similarity(pred: str, truth: str) -> float:
    """Edit similarity (core.metrics, as distill/evaluate.py) of the two without trailing whitespace."""
    return edit_similarity(pred.rstrip(), truth.rstrip())


def whole_by_stop(stop_reason: str | None, rules: str | None, multiline: bool | None) -> bool | None:
    """From the completion log: did the suggestion end where a line or statement ends? None when
    the log does not say. A multi-line suggestion cut by a cap is whole when strop dropped its
    partial last line (rule `partial_line`), i.e. what is left ends at a newline the model wrote."""
    if stop_reason in WHOLE_STOPS:
        return True
    if stop_reason in CUT_STOPS:
        return bool(multiline) and "partial_line" in (rules or "").split(",")
    return None


def completes_line(line_head: str, text: str) -> bool:
    """Python only, from the text alone: does the suggestion's first line end the line? The
    cursor's line plus that first line must tokenize to the end with balanced brackets, or end
    where Python lets a statement go on (an opening bracket, a comma, a colon); not on an operator,
    a dot or a keyword that needs more."""
    line = (line_head + first_line(text)).strip()
    if not line:
        return False
    if line.endswith(_CONTINUES):
        return True
    if line.endswith(_DANGLING) or line.rsplit(None, 1)[-1] in _DANGLING_WORDS:
        return False
    try:
        toks = list(tokenize.generate_tokens(io.StringIO(line + "\n").readline))
    except (tokenize.TokenError, SyntaxError, IndentationError):
        return False  # an unclosed bracket (or, on Python ≥ 3.12, string)
    return not any(tok.type == tokenize.ERRORTOKEN and tok.string.strip() for tok in toks)  # e.g. an open quote


def pct(values: list[float], q: float) -> float | None:
    """The q-th percentile (linear between closest ranks); `inf` stands for 'never', and a
    percentile that lands on or next to one is `inf`. None for no values."""
    if not values:
        return None
    xs = sorted(values)
    k = (len(xs) - 1) * q / 100
    lo, hi = math.floor(k), math.ceil(k)
    if math.isinf(xs[lo]) or math.isinf(xs[hi]):
        return math.inf
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def times(values: list[float]) -> dict:
    """p50/p90/mean of milliseconds, `inf` (never) counted in the percentiles and reported as null."""
    finite = [v for v in values if not math.isinf(v)]

    def ms(v: float | None):
        return None if v is None or math.isinf(v) else round(v, 1)

    return {"n": len(values), "never": len(values) - len(finite), "p50_ms": ms(pct(values, 50)),
            "p90_ms": ms(pct(values, 90)), "mean_finite_ms": ms(statistics.fmean(finite)) if finite else None}


def quality(items: list[dict], key: str = "") -> dict:
    """What the user got over `items`, each {text, truth, whole?, whole_syntax?} (prefixed by key):
    share shown, whole among shown, and EM/ES of the first line over all (an empty answer scores as
    an empty line) and over the shown ones."""
    def get(item, name):
        return item.get(key + name)

    n = len(items)
    shown = [i for i in items if get(i, "text")]
    whole = [get(i, "whole") for i in shown if get(i, "whole") is not None]
    syntax = [get(i, "whole_syntax") for i in shown if get(i, "whole_syntax") is not None]

    def mean(xs):
        return round(statistics.fmean(xs), 4) if xs else None

    def scores(group):
        return (mean([exact(first_line(get(i, "text") or ""), i["truth"]) for i in group]),
                mean([similarity(first_line(get(i, "text") or ""), i["truth"]) for i in group]))

    em_all, es_all = scores(items)
    em_shown, es_shown = scores(shown)
    return {"n": n, "shown": len(shown), "shown_share": round(len(shown) / n, 4) if n else None,
            "whole_share_of_shown": mean([float(w) for w in whole]), "whole_known": len(whole),
            "whole_syntax_share_of_shown": mean([float(w) for w in syntax]),
            "exact_match": em_all, "edit_similarity": es_all,
            "exact_match_shown": em_shown, "edit_similarity_shown": es_shown}
