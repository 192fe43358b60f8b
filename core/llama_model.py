"""A GGUF model as strop sees it: its vocabulary, FIM convention, stop tokens, and (in the process
that decodes) the llama.cpp context.

The LSP process loads only the vocabulary (`vocab_only`: no weights, no compute kernels) to count
and tokenize; the worker process (server/worker.py) and in-process users (distillation) load the
whole model. Both read the FIM convention and stop tokens the same way, here.
"""

from __future__ import annotations

import ctypes
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .errors import ModelLoadError
from .fim import FimFormat, Piece, Special, detect
from .models import ResolvedModel


# llama_token_attr bits: UNKNOWN 1, UNUSED 2, CONTROL 8, USER_DEFINED 16.
NOT_TEXT_ATTRS = 1 | 2 | 8 | 16


@dataclass
class LoadedModel:
    llm: object | None  # llama_cpp.Llama when weights are loaded, else None (vocabulary only)
    vocab_model: object  # llama_cpp._internals.LlamaModel (owns the vocabulary)
    resolved: ResolvedModel
    fim: FimFormat | None
    stop_ids: frozenset[int]
    special_ids: dict[str, int]
    add_bos: bool
    bos_id: int
    n_ctx: int
    pieces: dict[int, bytes] = field(default_factory=dict)

    def tokenize(self, text: str) -> list[int]:
        return self.vocab_model.tokenize(text.encode("utf-8", "surrogatepass"), False, False)

    def piece(self, token: int) -> bytes:
        """The bytes of one token (memoised; llama-cpp-python's wrapper returns a NUL-padded buffer)."""
        got = self.pieces.get(token)
        if got is None:
            import llama_cpp

            size = 64
            while True:
                buf = ctypes.create_string_buffer(size)
                n = llama_cpp.llama_token_to_piece(self.vocab_model.vocab, token, buf, size, 0, False)
                if n >= 0:
                    break
                size = -n
            got = self.pieces[token] = buf.raw[:n]
        return got

    def is_control(self, token: int) -> bool:
        """Control, user-defined, unused or unknown: not text the model writes as code."""
        import llama_cpp

        return bool(llama_cpp.llama_vocab_get_attr(self.vocab_model.vocab, token) & NOT_TEXT_ATTRS)

    def close(self) -> None:
        if self.llm is not None:
            self.llm.close()
        elif self.vocab_model is not None:
            self.vocab_model.close()


def _read_vocab(vocab_model, resolved: ResolvedModel, llm, n_ctx: int) -> LoadedModel:
    import llama_cpp

    vocab = vocab_model.vocab
    n_vocab = llama_cpp.llama_vocab_n_tokens(vocab)
    table = {}
    for tok in range(n_vocab):
        if llama_cpp.llama_vocab_get_attr(vocab, tok) & ~1:  # not a plain normal token: control/user-defined
            table[vocab_model.token_get_text(tok)] = tok
    fim_ids = {k: getattr(llama_cpp, f"llama_vocab_fim_{k}")(vocab) for k in ("pre", "suf", "mid", "pad", "rep", "sep")}
    fmt = detect(table, fim_ids)
    stops = {t for t in range(n_vocab) if llama_cpp.llama_vocab_is_eog(vocab, t)}
    if fmt is not None:
        stops |= {table[s] for s in fmt.stop if s in table}
        stops |= {table[s] for s in (fmt.prefix, fmt.suffix, fmt.middle) if s in table}
    return LoadedModel(
        llm=llm, vocab_model=vocab_model, resolved=resolved, fim=fmt, stop_ids=frozenset(stops),
        special_ids=table, add_bos=bool(llama_cpp.llama_vocab_get_add_bos(vocab)),
        bos_id=llama_cpp.llama_vocab_bos(vocab), n_ctx=n_ctx,
    )


def _checked_path(resolved: ResolvedModel) -> Path:
    path = Path(resolved.path)
    if not path.is_file():
        raise ModelLoadError(f"model file {path} does not exist.")
    return path


def _load_error(path: Path, err: Exception) -> ModelLoadError:
    return ModelLoadError(
        f"llama.cpp could not load {path} ({err}). The file may be truncated or corrupt, or not a GGUF "
        "model: re-download or re-import it, or pass another --model.")


def load_vocab(resolved: ResolvedModel, *, n_ctx: int) -> LoadedModel:
    """The vocabulary only: tokenizing and counting in a process that never runs the model."""
    import llama_cpp
    from llama_cpp import _internals

    path = _checked_path(resolved)
    params = llama_cpp.llama_model_default_params()
    params.vocab_only = True
    try:
        vocab_model = _internals.LlamaModel(path_model=str(path), params=params, verbose=False)
    except (ValueError, RuntimeError, OSError) as err:
        raise _load_error(path, err) from err
    return _read_vocab(vocab_model, resolved, None, n_ctx)


def load_model(resolved: ResolvedModel, *, n_ctx: int, n_threads: int, n_gpu_layers: int,
               use_extra_bufts: bool = True) -> LoadedModel:
    """Load a GGUF into llama.cpp (weights and a context).

    `use_extra_bufts=False` turns off llama.cpp's extra weight buffer types (repacked CPU kernels such
    as AMX), the fallback for CPUs where one of them crashes (see server/canary.py).
    """
    import llama_cpp
    import llama_cpp.llama_cpp as low

    path = _checked_path(resolved)
    default_params = low.llama_model_default_params
    if not use_extra_bufts:
        # llama-cpp-python's Llama() exposes no such argument; it reads the defaults from this
        # function, so the flag is set there for the duration of the constructor.
        def patched():
            params = default_params()
            params.use_extra_bufts = False
            return params

        low.llama_model_default_params = patched
    try:
        llm = llama_cpp.Llama(model_path=str(path), n_ctx=n_ctx, n_threads=n_threads, n_threads_batch=n_threads,
                              n_gpu_layers=n_gpu_layers, n_batch=512, verbose=False)
    except (ValueError, RuntimeError, OSError) as err:
        raise _load_error(path, err) from err
    finally:
        low.llama_model_default_params = default_params
    return _read_vocab(llm._model, resolved, llm, llm.n_ctx())


def tokenize_pieces(model: LoadedModel, pieces: Sequence[Piece], cache: dict | None = None) -> list[int]:
    """The exact token sequence strop sends to the model for a prompt layout: specials by id, text
    tokenized with special parsing off (code containing "<fim_prefix>" cannot inject control tokens)."""
    ids: list[int] = [model.bos_id] if model.add_bos and model.bos_id >= 0 else []
    for piece in pieces:
        if isinstance(piece, Special):
            ids.append(model.special_ids[piece.token])
            continue
        got = cache.get(piece) if cache is not None else None
        if got is None:
            got = model.tokenize(piece)
            if cache is not None:
                cache[piece] = got
        ids.extend(got)
    return ids


class PieceTokenCache(OrderedDict):
    """Piece text → token ids. Most pieces repeat from one keystroke to the next."""

    def __init__(self, capacity: int = 128) -> None:
        super().__init__()
        self.capacity = capacity

    def get(self, key, default=None):  # type: ignore[override]
        if key in self:
            self.move_to_end(key)
            return self[key]
        return default

    def __setitem__(self, key, value) -> None:
        super().__setitem__(key, value)
        while len(self) > self.capacity:
            self.popitem(last=False)
