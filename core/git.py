"""The one way strop runs git: no prompts, no optional locks, unquoted paths, bounded time.

Hand-written on purpose: the few read-only commands strop needs are one subprocess call each, and
a git library (GitPython, pygit2) would add a dependency to serving for no gain.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from core.errors import StropError

_ENV = {"GIT_TERMINAL_PROMPT": "0", "GIT_OPTIONAL_LOCKS": "0"}
TIMEOUT_S = 120.0


class GitError(StropError):
    pass


def run(root: Path, *args: str, input: bytes | None = None, timeout: float = TIMEOUT_S,
        why: str = "") -> bytes:
    """`git args` in `root`; its stdout, or GitError saying what failed (and `why` strop needed it)."""
    cmd = ["git", "-c", "core.quotepath=off", *args]
    try:
        proc = subprocess.run(cmd, cwd=root, input=input, capture_output=True, timeout=timeout,
                              env={**os.environ, **_ENV}, check=False)
    except FileNotFoundError:
        raise GitError(f"git is not installed{', and ' + why if why else ''}. Install git.") from None
    except NotADirectoryError:
        raise GitError(f"{root} is not a directory; `git {' '.join(args)}` needs one.") from None
    except subprocess.TimeoutExpired:
        raise GitError(f"`git {' '.join(args)}` in {root} took longer than {timeout:.0f} s; "
                       "check the repository (a network filesystem, a lock?).") from None
    if proc.returncode != 0:
        raise GitError(f"`git {' '.join(args)}` failed in {root}: "
                       f"{proc.stderr.decode(errors='replace').strip() or f'exit status {proc.returncode}'}"
                       f"{'; ' + why if why else ''}. Check that the directory is a healthy git repository.")
    return proc.stdout


def output(root: Path, *args: str, timeout: float = 30.0) -> str | None:
    """Stripped text output of `git args`, or None when git is missing, fails or says nothing."""
    try:
        out = run(root, *args, timeout=timeout).decode("utf-8", "surrogateescape").strip()
    except GitError:
        return None
    return out or None


def toplevel(start: Path) -> Path | None:
    out = output(start, "rev-parse", "--show-toplevel", timeout=5.0)
    return Path(out) if out else None


def has_history(root: Path) -> bool:
    return output(root, "rev-parse", "--verify", "-q", "HEAD") is not None


def ls_files(root: Path) -> list[str] | None:
    """Tracked files under root (relative posix paths), or None when root is not in a git work tree.

    Nothing tracked yet (a new project): the files git would track, untracked minus ignored ones.
    """
    for extra in ((), ("--others", "--exclude-standard")):
        try:
            raw = run(root, "ls-files", "-z", "--cached", *extra)
        except GitError:
            return None
        paths = [p for p in raw.decode("utf-8", "surrogateescape").split("\0") if p]
        if paths:
            return paths
    return []
