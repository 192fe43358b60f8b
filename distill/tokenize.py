"""Training examples as token ids: the prompt laid out exactly as the server lays it out, labels on the
completion only.

The prompt comes from `core.fim.layout` (the one function serving uses), so the model is trained on
the token sequence it is served with. Labels are built here, at dataset preparation: -100 over the
prompt, then the completion's ids and one end-of-text id, which teaches the model to stop.

This module imports no torch; a tokenizer is anything with the `transformers` tokenizer call API.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from core.errors import StropError
from core.fim import FimFormat, Piece, Special, as_snippets, layout, split_current_line

IGNORE_INDEX = -100  # label value that torch's cross-entropy (and ours) skips


@dataclass(frozen=True)
class TrainExample:
    """One completion point. suffix == "" is a next-line/next-block point (FIM models still get the
    FIM markers, as the server sends them); weight multiplies this example's loss."""

    prefix: str
    suffix: str
    completion: str
    weight: float = 1.0
    path: str = ""
    language: str = ""
    snippets: tuple = ()  # repository context, as served ([{path, text}] or core.fim.Snippet)
    repo_name: str = ""


def adds_bos(tokenizer: Any) -> bool:
    """Whether the tokenizer puts a BOS in front of text by default (llama.cpp follows the same
    GGUF flag when it tokenizes the served prompt)."""
    bos = tokenizer.bos_token_id
    if bos is None:
        return False
    default = tokenizer("x")["input_ids"]
    plain = tokenizer("x", add_special_tokens=False)["input_ids"]
    return len(default) > len(plain) and default[0] == bos


def token_id_of(tokenizer: Any, token: str) -> int | None:
    """The id of a whole token string, or None when the vocabulary lacks it (without building the
    vocabulary dict, which is slow for large vocabularies)."""
    token_id = tokenizer.convert_tokens_to_ids(token)
    if token_id is None or (token_id == tokenizer.unk_token_id and token != tokenizer.unk_token):
        return None
    return int(token_id)


def text_ids(tokenizer: Any, text: str) -> list[int]:
    """Plain text → ids with no special-token parsing: "<fim_prefix>" written in code stays text, as
    llama.cpp tokenizes served text (`special=False`). `add_special_tokens=False` alone would still
    turn it into the control token."""
    return tokenizer(text, add_special_tokens=False, split_special_tokens=True)["input_ids"]


def pieces_to_ids(tokenizer: Any, pieces: list[Piece], *, bos: bool) -> list[int]:
    """Special pieces by vocabulary lookup, text pieces through `text_ids`."""
    ids = [tokenizer.bos_token_id] if bos else []
    for piece in pieces:
        if isinstance(piece, Special):
            token_id = token_id_of(tokenizer, piece.token)
            if token_id is None:
                raise StropError(
                    f"The tokenizer has no token {piece.token!r}, which the FIM layout needs. The model's "
                    "FIM format was detected wrongly; pass the format that matches its vocabulary.")
            ids.append(token_id)
        else:
            ids.extend(text_ids(tokenizer, piece))
    return ids


def end_of_text_id(tokenizer: Any, fmt: FimFormat | None) -> int:
    """The id that ends a completion: a FIM model's first stop token present in the vocabulary
    (what the server stops on), else the tokenizer's EOS."""
    if fmt is not None:
        for token in fmt.stop:
            token_id = token_id_of(tokenizer, token)
            if token_id is not None:
                return token_id
    if tokenizer.eos_token_id is None:
        raise StropError(
            "The tokenizer has no end-of-text token, so training could not teach the model where a "
            "completion ends. Use a model whose tokenizer defines an EOS token.")
    return int(tokenizer.eos_token_id)


def _smallest(n: int, ok: Callable[[int], bool]) -> int | None:
    """Smallest k in [0, n] with ok(k), for an ok that is (nearly) monotone: token counts of
    shrinking text are not strictly monotone under BPE, so the bisection result is checked and
    walked forward if needed."""
    k = bisect.bisect_left(range(n + 1), True, key=ok)
    while k <= n and not ok(k):
        k += 1
    return k if k <= n else None


def encode_prompt(tokenizer: Any, fmt: FimFormat | None, ex: TrainExample, *,
                  max_prompt_tokens: int) -> list[int]:
    """The prompt's ids, at most max_prompt_tokens. Text goes in this order: the prefix from its
    left (the far past) up to the cursor's line; then the suffix from its far end; then the
    typed part of the cursor's line from its left. Every cut is re-laid-out and re-tokenized, so a
    truncated prompt is exactly what the server would send for the shorter text."""
    bos = adds_bos(tokenizer)
    snippets = as_snippets(ex.snippets)
    if snippets and len(_laid_out(tokenizer, fmt, ex, ex.prefix, ex.suffix, snippets, bos)) > max_prompt_tokens:
        # Too long with its repository context (a training length below the serving budget): the
        # current file's own text teaches more, so the snippets go first, before any of the file.
        snippets = ()

    def ids(prefix: str, suffix: str) -> list[int]:
        # The serving layout (core.fim.layout), with the repository context the sample was made with.
        return _laid_out(tokenizer, fmt, ex, prefix, suffix, snippets, bos)

    def fits(prefix: str, suffix: str) -> bool:
        return len(ids(prefix, suffix)) <= max_prompt_tokens

    prefix, suffix = ex.prefix, ex.suffix
    if fits(prefix, suffix):
        return ids(prefix, suffix)
    head, line = split_current_line(prefix)
    cut = _smallest(len(head), lambda c: fits(prefix[c:], suffix))
    if cut is not None:
        return ids(prefix[cut:], suffix)
    drop = _smallest(len(suffix), lambda d: fits(line, suffix[:len(suffix) - d]))
    if drop is not None:
        return ids(line, suffix[:len(suffix) - drop])
    cut = _smallest(len(line), lambda c: fits(line[c:], ""))
    if cut is None:
        raise StropError(
            f"max_prompt_tokens={max_prompt_tokens} cannot hold even the FIM markers of an example "
            f"from {ex.path or 'an unnamed file'}. Raise max_seq_tokens or lower max_completion_tokens "
            "in the training config.")
    return ids(line[cut:], "")


def _laid_out(tokenizer: Any, fmt: FimFormat | None, ex: TrainExample, prefix: str, suffix: str, snippets,
              bos: bool) -> list[int]:
    return pieces_to_ids(tokenizer, layout(fmt, prefix, suffix, snippets=snippets, path=ex.path,
                                           language=ex.language, repo_name=ex.repo_name), bos=bos)


def encode_example(tokenizer: Any, fmt: FimFormat | None, ex: TrainExample, *,
                   max_prompt_tokens: int, max_completion_tokens: int) -> dict:
    """dict(input_ids, labels, weight): labels are -100 over the prompt, then the completion's ids
    and the end-of-text id. A completion longer than max_completion_tokens is cut and gets no
    end-of-text id (stopping there would be a lesson the sample never taught)."""
    if not (math.isfinite(ex.weight) and ex.weight >= 0):
        raise StropError(f"Example weight {ex.weight!r} from {ex.path or 'an unnamed file'} is not a "
                         "finite number ≥ 0; weights scale the loss of accepted or kept samples.")
    if max_completion_tokens < 1:
        raise StropError(f"max_completion_tokens={max_completion_tokens} leaves no room for a target.")
    prompt = encode_prompt(tokenizer, fmt, ex, max_prompt_tokens=max_prompt_tokens)
    completion = text_ids(tokenizer, ex.completion)
    if len(completion) + 1 <= max_completion_tokens:
        target = completion + [end_of_text_id(tokenizer, fmt)]
    else:
        target = completion[:max_completion_tokens]
    return {
        "input_ids": prompt + target,
        "labels": [IGNORE_INDEX] * len(prompt) + target,
        "weight": float(ex.weight),
    }
