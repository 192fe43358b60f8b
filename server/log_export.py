"""`strop log export OUT.bundle [--repo DIR]`: a repository's accepted-and-retained completions as a
team-signal bundle (core/log_bundle.py) for the nightly `strop distill --log`."""

from __future__ import annotations

from pathlib import Path

from core.completion_log import CompletionLog
from core.errors import StropError
from core.git import toplevel as git_root
from core.log_bundle import write_bundle
from core.registry import repo_key


def export(clog: CompletionLog, out: Path | None, repo: Path | None) -> int:
    if out is None:
        raise StropError("strop log export needs the bundle to write: strop log export OUT.bundle [--repo DIR]")
    root = (repo or git_root(Path.cwd()) or Path.cwd()).resolve()
    if not root.is_dir():
        raise StropError(f"--repo {repo}: not a directory")
    header = write_bundle(out, repo_key(root), clog.accepted_contexts(str(root)))
    print(f"exported {header['count']} accepted-and-retained completions of {root} (secrets scrubbed) to {out}; "
          f"bundle {header['bundle_id'][:12]}")
    return 0
