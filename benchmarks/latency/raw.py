"""Raw llama-cpp-python beside strop: the same GGUF and llama.cpp settings, no strop code on the
generation path.

- `first_line()`: greedy on the full prompt, no time limit, to the end of the line (quality ceiling);
- `suggest_until()`: greedy until the text leaves what remains to be typed (typing-replay ceiling;
  greedy decoding is deterministic, so stopping at the first disagreement accepts the same text as
  generating the whole suggestion would);
- `replay_logged()`: a prompt strop ran, rebuilt from the completion log, timed on identical work.

Prompts of its own (`prompt()`): prefix-only for a model without FIM tokens, up to
`prefix_tokens + suffix_tokens` of prefix; for a FIM model `<fim_prefix> prefix <fim_suffix> suffix
<fim_middle>` by the model's own FIM ids (llama_vocab_fim_pre/suf/mid: llama-cpp-python's `suffix=`
path uses wrong ones), up to `prefix_tokens` + `suffix_tokens`. Whole lines of each; a position's
windows stay put while the user types there, so the KV cache carries over as it would for any client.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

TYPING_ROOM_TOKENS = 64  # the prefix window leaves this much for what is typed at the position


@dataclass(frozen=True)
class Window:
    start: int  # offset of the first character of the prefix window in the document
    suffix: tuple[int, ...]  # the suffix window's tokens (FIM only)


class RawModel:
    def __init__(self, path: Path, *, n_ctx: int, n_threads: int, n_gpu_layers: int,
                 prefix_tokens: int, suffix_tokens: int) -> None:
        import llama_cpp

        self.lib = llama_cpp
        self.llm = llama_cpp.Llama(model_path=str(path), n_ctx=n_ctx, n_threads=n_threads,
                                   n_threads_batch=n_threads, n_gpu_layers=n_gpu_layers, n_batch=512, verbose=False)
        vocab = self.llm._model.vocab
        self.fim_ids = {k: getattr(llama_cpp, f"llama_vocab_fim_{k}")(vocab) for k in ("pre", "suf", "mid", "pad",
                                                                                          "rep", "sep")}
        self.fim = all(self.fim_ids[k] >= 0 for k in ("pre", "suf", "mid"))
        n_vocab = llama_cpp.llama_vocab_n_tokens(vocab)
        self.stop_ids = {tok for tok in range(n_vocab) if llama_cpp.llama_vocab_is_eog(vocab, tok)}
        self.stop_ids |= {v for v in self.fim_ids.values() if v >= 0}
        self.bos = [llama_cpp.llama_vocab_bos(vocab)] if llama_cpp.llama_vocab_get_add_bos(vocab) else []
        self.prefix_budget = prefix_tokens if self.fim else prefix_tokens + suffix_tokens
        self.suffix_budget = suffix_tokens if self.fim else 0
        self._pieces: dict[int, bytes] = {}

    def close(self) -> None:
        self.llm.close()

    def tokens(self, text: str) -> list[int]:
        return self.llm.tokenize(text.encode("utf-8", "surrogatepass"), add_bos=False, special=False) if text else []

    def special(self, token: str) -> int:
        """The id of a control token by its text."""
        ids = self.llm.tokenize(token.encode("utf-8"), add_bos=False, special=True)
        if len(ids) != 1:
            raise KeyError(token)
        return ids[0]

    def fim_format(self):
        """strop's name for this model's FIM convention (core.fim.detect on its control tokens)."""
        from core.fim import detect

        lib, vocab = self.lib, self.llm._model.vocab
        table = {self.llm._model.token_get_text(tok): tok for tok in range(lib.llama_vocab_n_tokens(vocab))
                 if lib.llama_vocab_get_attr(vocab, tok) & ~1}  # control / user-defined tokens
        return detect(table, self.fim_ids)

    def _piece(self, tok: int) -> bytes:
        got = self._pieces.get(tok)
        if got is None:
            got = self._pieces[tok] = self.llm.detokenize([tok])
        return got

    # --- prompts ------------------------------------------------------------------------------
    def window(self, text: str, cursor: int) -> Window:
        """Whole lines before the cursor's line within the prefix budget (less room for typing),
        whole lines after the cursor within the suffix budget."""
        line_start = text.rfind("\n", 0, cursor) + 1
        used = len(self.tokens(text[line_start:cursor]))
        start = line_start
        budget = self.prefix_budget - TYPING_ROOM_TOKENS
        while start > 0:
            prev = text.rfind("\n", 0, start - 1) + 1
            cost = len(self.tokens(text[prev:start]))
            if used + cost > budget:
                break
            used, start = used + cost, prev
        suffix: list[int] = []
        if self.fim:
            for line in text[cursor:].splitlines(keepends=True):
                toks = self.tokens(line)
                if suffix and len(suffix) + len(toks) > self.suffix_budget:
                    break
                suffix += toks[: self.suffix_budget]
        return Window(start, tuple(suffix))

    def prompt(self, text: str, cursor: int, win: Window) -> list[int]:
        prefix = self.tokens(text[win.start:cursor])
        if not self.fim:
            return self.bos + prefix
        ids = self.fim_ids
        return self.bos + [ids["pre"], *prefix, ids["suf"], *win.suffix, ids["mid"]]

    # --- generation ---------------------------------------------------------------------------
    def _greedy(self, tokens: list[int], keep_going: Callable[[str], bool], max_tokens: int) -> dict:
        out = b""
        n, stop = 0, "max_tokens"
        t0 = time.perf_counter()
        t_first = None
        gen = self.llm.generate(tokens, temp=0.0, top_k=1, top_p=1.0, min_p=0.0, repeat_penalty=1.0, reset=True)
        try:
            for tok in gen:
                t_first = t_first or time.perf_counter()
                if tok in self.stop_ids:
                    stop = "eog"
                    break
                out += self._piece(tok)
                n += 1
                if not keep_going(out.decode("utf-8", "ignore")):
                    stop = "stopped"
                    break
                if n >= max_tokens:
                    break
        finally:
            gen.close()
        t_end = time.perf_counter()
        return {"text": out.decode("utf-8", "ignore"), "n_gen": n, "stop": stop, "n_prompt": len(tokens),
                "prompt_ms": round(((t_first or t_end) - t0) * 1000, 1), "ms": round((t_end - t0) * 1000, 1)}

    def first_line(self, text: str, cursor: int, win: Window, max_tokens: int = 64) -> dict:
        """The model's own continuation of the cursor's line, greedy, no time limit."""
        got = self._greedy(self.prompt(text, cursor, win), lambda s: "\n" not in s, max_tokens)
        got["whole"] = got["stop"] != "max_tokens"  # it reached the end of the line (or of generation)
        got["text"] = got["text"].split("\n", 1)[0]
        return got

    def suggest_until(self, text: str, cursor: int, win: Window, remaining: str, max_tokens: int = 64) -> dict:
        """Greedy until the suggestion leaves `remaining` (or covers it)."""
        return self._greedy(self.prompt(text, cursor, win),
                            lambda s: remaining.startswith(s) and len(s) < len(remaining), max_tokens)

    # --- identical work -----------------------------------------------------------------------
    def reuse_exactly(self, tokens: list[int], n_reused: int) -> None:
        """Leave the KV cache holding exactly the first `n_reused` tokens of `tokens` (untimed), so
        that the next generate() evaluates what strop evaluated: no more, no less."""
        match = 0
        for a, b in zip(self.llm._input_ids, tokens):
            if a != b:
                break
            match += 1
        if match >= n_reused:
            self.llm.n_tokens = n_reused  # generate() drops the KV cells past it
        else:
            self.llm.n_tokens = match
            self.llm.eval(tokens[match:n_reused])

    def replay_logged(self, tokens: list[int], n_reused: int, n_samples: int) -> dict:
        """Time `n_samples` greedy samples on `tokens` with `n_reused` tokens already in the cache."""
        self.reuse_exactly(tokens, n_reused)
        samples = {"n": 0}

        def count(_text: str) -> bool:
            samples["n"] += 1
            return samples["n"] < n_samples

        self.stop_ids, stops = set(), self.stop_ids  # identical work: sample past an end token too
        try:
            got = self._greedy(tokens, count, max(1, n_samples))
        finally:
            self.stop_ids = stops
        return got
