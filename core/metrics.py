"""How close a completion is to the text the user really wrote: one definition for the evaluator
(distill/evaluate.py) and the latency benchmarks, so their numbers mean the same thing."""

from __future__ import annotations

from rapidfuzz.distance import Levenshtein


def edit_similarity(pred: str, target: str) -> float:
    """1 − Levenshtein distance / the longer length, in [0, 1]; two empty strings are equal (1.0)."""
    return Levenshtein.normalized_similarity(pred, target)
