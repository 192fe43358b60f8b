"""Fill-in-the-middle formats: detect a model's convention from its vocabulary, and lay out a prompt.

The layout is shared by serving (server/engine), sampling and training (distill/), so the model is
trained on exactly the token sequence it is served with. A layout is a list of pieces: special tokens
(looked up by id, never parsed from user text) and plain text (tokenized without special parsing, so
code that contains "<fim_prefix>" cannot inject control tokens).

Stable parts go first so llama.cpp's KV cache (longest common token prefix) survives keystrokes:
other files' snippets, then the current file before the cursor's line (and that line's
indentation), the suffix, and only then the typed part of the current line (after the middle
marker, as llama.vim does).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from core.languages import line_comment


@dataclass(frozen=True)
class FimFormat:
    name: str
    prefix: str  # token strings
    suffix: str
    middle: str
    suffix_first: bool = False  # Codestral: [SUFFIX] suffix [PREFIX] prefix
    file_sep: str | None = None  # separates repository files in the context, when the model has one
    repo_name: str | None = None
    stop: tuple[str, ...] = ()  # tokens that end a middle besides end-of-generation


# Each entry: (name, prefix, suffix, middle, suffix_first, file_sep, repo_name, stop tokens).
# Token strings as they appear in each family's vocabulary (GGUF tokenizer.ggml.tokens).
KNOWN_FORMATS: tuple[FimFormat, ...] = (
    FimFormat("qwen", "<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>",
              file_sep="<|file_sep|>", repo_name="<|repo_name|>",
              stop=("<|endoftext|>", "<|fim_pad|>", "<|file_sep|>", "<|fim_prefix|>", "<|im_end|>")),
    FimFormat("starcoder", "<fim_prefix>", "<fim_suffix>", "<fim_middle>",
              file_sep="<file_sep>", repo_name="<repo_name>",
              stop=("<|endoftext|>", "<fim_pad>", "<file_sep>", "<fim_prefix>", "<|im_end|>")),
    FimFormat("deepseek", "<｜fim▁begin｜>", "<｜fim▁hole｜>", "<｜fim▁end｜>",
              stop=("<|EOT|>", "<｜end▁of▁sentence｜>")),
    FimFormat("codellama", "▁<PRE>", "▁<SUF>", "▁<MID>", stop=("▁<EOT>", "<EOT>")),
    FimFormat("codellama-plain", "<PRE>", "<SUF>", "<MID>", stop=("<EOT>",)),
    FimFormat("codestral", "[PREFIX]", "[SUFFIX]", "[MIDDLE]", suffix_first=True, stop=("</s>",)),
)


def detect(vocab: Mapping[str, int], fim_ids: Mapping[str, int] | None = None) -> FimFormat | None:
    """The FIM format of a vocabulary (token string → id), or None for a prefix-only model.

    `fim_ids` are the ids the GGUF metadata names (tokenizer.ggml.fim_{pre,suf,mid}_token_id, as
    llama.cpp exposes them; -1 or missing when absent). They win over string matching, because a
    model may carry stray FIM-looking strings that it was never trained on.
    """
    id_to_tok = None
    if fim_ids and all(fim_ids.get(k, -1) >= 0 for k in ("pre", "suf", "mid")):
        id_to_tok = {v: k for k, v in vocab.items()}
        pre, suf, mid = (id_to_tok.get(fim_ids[k]) for k in ("pre", "suf", "mid"))
        if pre and suf and mid:
            for fmt in KNOWN_FORMATS:
                if (fmt.prefix, fmt.suffix, fmt.middle) == (pre, suf, mid):
                    return fmt
            file_sep = id_to_tok.get(fim_ids.get("sep", -1))
            repo = id_to_tok.get(fim_ids.get("rep", -1))
            return FimFormat("gguf-metadata", pre, suf, mid, file_sep=file_sep, repo_name=repo,
                             stop=tuple(t for t in (id_to_tok.get(fim_ids.get("pad", -1)), file_sep) if t))
    for fmt in KNOWN_FORMATS:
        if fmt.prefix in vocab and fmt.suffix in vocab and fmt.middle in vocab:
            return fmt
    return None


@dataclass(frozen=True)
class Special:
    token: str


Piece = Special | str


@dataclass(frozen=True)
class Snippet:
    """A chunk of another file of the workspace, shown to the model as repository context."""

    path: str
    text: str


def snippet_pairs(raw: Sequence) -> tuple[tuple[str, str], ...]:
    """Snippets as records store them: ((path, text), ...), hashable, and the same after a JSON round trip."""
    return tuple((s.path, s.text) for s in as_snippets(raw))


def as_snippets(raw: Sequence) -> tuple[Snippet, ...]:
    """Snippets from a record read back from JSON (dicts or [path, text] pairs) or already made."""
    return tuple(s if isinstance(s, Snippet) else Snippet(**s) if isinstance(s, Mapping) else Snippet(*s)
                 for s in raw)


def split_current_line(prefix: str) -> tuple[str, str]:
    """(text before the cursor's line, typed part of the cursor's line)."""
    cut = prefix.rfind("\n") + 1
    return prefix[:cut], prefix[cut:]


def layout(
    fmt: FimFormat | None,
    prefix: str,
    suffix: str,
    *,
    snippets: Sequence[Snippet] = (),
    path: str = "",
    language: str = "",
    repo_name: str = "",
) -> list[Piece]:
    """The prompt as pieces. The completion the model writes continues the last piece.

    With a FIM format, the typed part of the current line after its indentation comes after the
    middle marker (the model writes the rest of the middle from there); without one, the prompt is
    the prefix alone.
    """
    pieces: list[Piece] = []
    # Repository context: stable across keystrokes, so it goes first. With nothing after the cursor,
    # a model with file separators gets the repository-level format (Qwen2.5-Coder's continues the
    # last file): the repository header (its name, file separators, paths) frames other files'
    # snippets and the file. Anywhere else the prompt is the plain file-level one, the snippets at
    # the head of the text before the cursor, each under a comment naming its path. In a FIM hole
    # with text after it, the header cost Qwen2.5-Coder-0.5B 9 (encode/httpx) and 18
    # (encode/starlette) points of first-line edit similarity without snippets, and with retrieved
    # snippets it scored 4.9 below these comment-framed ones (starlette, 50 holes, paired 95 %
    # interval [+2.0, +10.7]); at the end of a file it gained 6 on both (served-layout-diagnosis-*.json).
    repository_level = fmt is not None and fmt.file_sep is not None and not suffix.strip()
    context = ""
    if repository_level:
        if fmt.repo_name and repo_name:
            pieces += [Special(fmt.repo_name), repo_name + "\n"]
        for snip in snippets:
            pieces += [Special(fmt.file_sep), f"{snip.path}\n{snip.text}\n"]
        if snippets or (fmt.repo_name and repo_name):
            pieces += [Special(fmt.file_sep), f"{path}\n"]
    elif snippets:
        mark = line_comment(language)
        context = "".join(f"{mark} {snip.path}\n{snip.text}\n" for snip in snippets) + f"{mark} {path}\n"

    if fmt is None:
        pieces += [context, prefix]
        return [p for p in pieces if p != ""]

    head, line = split_current_line(prefix)
    # The cursor line's indentation stays in the prefix: only typed text goes after the middle
    # marker. After an indentation-only middle, token healing took the indentation back and
    # Qwen2.5-Coder wrote more of it until the cap (encode/httpx: 0.64 raw, 0.0 served, on one hole).
    indent = len(line) - len(line.lstrip(" \t"))
    head, line = head + line[:indent], line[indent:]
    if fmt.suffix_first:
        pieces += [Special(fmt.suffix), suffix, Special(fmt.prefix), context, prefix]
    else:
        pieces += [Special(fmt.prefix), context, head, Special(fmt.suffix), suffix, Special(fmt.middle), line]
    return [p for p in pieces if p != ""]


def render(pieces: Sequence[Piece]) -> str:
    """Pieces as one string (for logs and debugging; never tokenize this: specials would be parsed)."""
    return "".join(p.token if isinstance(p, Special) else p for p in pieces)
