"""Hot swap: a running server follows the model promoted for its repository, between requests."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from pathlib import Path

from core.models import ResolvedModel, resolve
from core.registry import RegistryReader, repo_key

from .engine import Engine

log = logging.getLogger(__name__)


async def watch_registry(engine: Engine, repo_root: Path, poll_s: float,
                         on_swap: Callable[[ResolvedModel], None] = lambda resolved: None) -> None:
    """Poll the promotion's stamp (one stat() call) and load a newly promoted model into `engine`;
    the engine swaps it in between requests, so no request in flight fails. Runs until cancelled."""
    registry, key = RegistryReader(), repo_key(repo_root)
    stamp = registry.promoted_stamp(key)
    while True:
        await asyncio.sleep(poll_s)
        try:
            now = registry.promoted_stamp(key)
            if now == stamp:
                continue
            stamp = now
            resolved = resolve(None, repo_root)
            current = engine.model
            if current is not None and current.resolved.version == resolved.version:
                continue
            log.info("registry: swapping to %s", resolved.version)
            on_swap(resolved)

            def done(ok: bool, error: str | None, v=resolved.version) -> None:
                if not ok:
                    log.error("registry: %s not swapped in: %s", v, error)

            engine.load_async(resolved, done)
        except Exception:  # a broken registry must not stop serving
            log.exception("registry watch failed")
