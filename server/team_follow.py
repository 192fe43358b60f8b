"""Follow a team's shared registry ([registry] url): poll its promoted.json and fetch a newly promoted
version into the local registry; the local hot swap (server/hot_swap.py) then swaps it in."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from pathlib import Path

from core.errors import StropError
from core.registry import RegistryReader, repo_key
from core.team_registry import RegistrySettings, TeamRegistry

log = logging.getLogger(__name__)

RETRY_FAILED_S = 600.0  # a version that failed to fetch is tried again after this long, not every poll


async def follow_team_registry(cfg: RegistrySettings, repo_root: Path,
                               on_error: Callable[[str | None], None] = lambda message: None) -> None:
    """Runs until cancelled. `on_error(message)` reports a failed fetch (the old model keeps serving),
    `on_error(None)` a fetch that succeeded after one failed."""
    key = repo_key(repo_root)
    team, local = TeamRegistry(cfg.url, key), RegistryReader()
    failed: dict[tuple[str, str], float] = {}  # (version, sha256) → when it failed
    told: str | None = None
    while True:
        try:
            remote = await asyncio.to_thread(team.promoted)
            if remote is not None and remote.version != local.promoted_version(key):
                attempt = (remote.version, remote.sha256)
                if time.monotonic() - failed.get(attempt, -RETRY_FAILED_S) >= RETRY_FAILED_S:
                    log.info("team registry: fetching %s from %s", remote.version, cfg.url)
                    try:
                        await asyncio.to_thread(team.fetch, remote.version)
                    except StropError:
                        failed[attempt] = time.monotonic()
                        raise
                    log.info("team registry: %s fetched; the hot swap follows", remote.version)
                    if told is not None:
                        told = None
                        on_error(None)
        except StropError as err:
            if str(err) != told:
                told = str(err)
                log.error("team registry: %s", err)
                on_error(told)
        except Exception:  # a broken share must not stop serving
            log.exception("team registry follow failed")
        await asyncio.sleep(cfg.poll_s)


def start_team_follow(ls) -> asyncio.Task | None:
    """Start following `[registry] url` for a StropServer `ls` (server/lsp.py) when one is set; a
    failed fetch shows in strop/status's message while the old model keeps serving."""
    try:
        cfg = RegistrySettings.configured()
    except StropError as err:
        ls.error_to_user(err)
        return None
    if not cfg.url or ls.repo_root is None:
        return None

    def report(message: str | None) -> None:
        ls.message = message
        ls._publish_status()

    return asyncio.ensure_future(follow_team_registry(cfg, ls.repo_root, report))
