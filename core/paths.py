"""Where strop keeps its state: STROP_HOME (owner-only), the completion log, the registry."""

from __future__ import annotations

import functools
import os
from pathlib import Path

from core.errors import StropError
from core.private import make_private


def strop_home() -> Path:
    """STROP_HOME, else $XDG_DATA_HOME/strop, else ~/.local/share/strop: created owner-only, and
    made owner-only (0700 directories, 0600 files) if it already exists, once per process."""
    env = os.environ.get("STROP_HOME")
    if env:
        home = Path(env).expanduser()
    else:
        xdg = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
        home = Path(xdg) / "strop"
    home.mkdir(parents=True, exist_ok=True, mode=0o700)
    _made_private(str(home))
    return home


@functools.cache
def _made_private(home: str) -> None:
    make_private(Path(home))


def log_db_path() -> Path:
    return strop_home() / "completions.sqlite3"


def registry_dir() -> Path:
    return strop_home() / "registry"


DEFAULT_LOG_RETENTION_DAYS = 30.0


def log_retention_days() -> float | None:
    """Days the completion log keeps a row (STROP_LOG_RETENTION_DAYS, default 30; `never` keeps all)."""
    raw = os.environ.get("STROP_LOG_RETENTION_DAYS", "").strip()
    if not raw:
        from core.settings import read_toml  # [log] retention_days of the configuration file

        raw = str(read_toml().get("log", {}).get("retention_days", "")).strip()
    if not raw:
        return DEFAULT_LOG_RETENTION_DAYS
    if raw.lower() == "never":
        return None
    try:
        days = float(raw)
    except ValueError:
        days = -1.0
    if not days > 0:  # also NaN
        raise StropError(f"STROP_LOG_RETENTION_DAYS={raw!r} is not a number of days: set a positive number "
                         "(e.g. 30), or `never` to keep every completion.")
    return days
