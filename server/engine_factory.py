"""Which engine serves: the supervised local worker (server/engine.py), or, with `--engine URL` /
STROP_ENGINE_URL, a remote inference server with the local model as fallback
(server/remote_engine.py, server/fallback_engine.py)."""

from __future__ import annotations

from collections.abc import Callable

from .config import ServeConfig
from .engine import Engine
from core.errors import StropError

FALLBACKS = ("local", "none")


def make_engine(cfg: ServeConfig, *, slots: int, on_state: Callable[[str, str | None], None] | None = None):
    def local() -> Engine:
        return Engine(n_ctx=cfg.n_ctx, n_threads=cfg.n_threads, n_gpu_layers=cfg.n_gpu_layers, slots=slots,
                      heal=cfg.heal, on_state=on_state)

    if not cfg.engine_url:
        return local()
    if cfg.engine_fallback not in FALLBACKS:
        raise StropError(f"STROP_ENGINE_FALLBACK={cfg.engine_fallback!r}: use `local` (the local model answers "
                         "while the remote engine is down) or `none`.")
    from .fallback_engine import FallbackEngine
    from .remote_engine import RemoteEngine

    remote = RemoteEngine(cfg.engine_url, n_ctx=cfg.n_ctx, slots=slots,
                          connect_timeout_ms=cfg.engine_connect_timeout_ms, first_token_ms=cfg.engine_first_token_ms,
                          lora=cfg.engine_lora)
    return FallbackEngine(remote, local if cfg.engine_fallback == "local" else None, on_state=on_state)
