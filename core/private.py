"""Owner-only state. STROP_HOME holds the completion log (code you typed, what you accepted),
models and distillation data: nobody but its owner may read it.

New files get owner-only modes from the process umask (`strop` sets 077 at start) and from explicit
modes where they are created; `make_private` fixes what already exists (a home created by an older
strop, or by hand, with 755/644).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

UMASK = 0o077


def make_private(root: Path) -> None:
    """`root` and everything below it: directories 0700, files keep only their owner bits (a
    read-only model stays read-only: 0444 becomes 0400). Symbolic links are not followed; entries
    of another owner, which cannot be changed, are left as they are."""
    root = Path(root)
    _restrict(root, directory=True)
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames:
            _restrict(Path(dirpath, name), directory=True)
        for name in filenames:
            _restrict(Path(dirpath, name), directory=False)


def _restrict(path: Path, *, directory: bool) -> None:
    try:
        st = path.lstat()
    except FileNotFoundError:  # removed meanwhile (a temporary of another process)
        return
    if stat.S_ISLNK(st.st_mode):
        return
    mode = stat.S_IMODE(st.st_mode)
    wanted = 0o700 if directory else mode & 0o700
    if mode != wanted:
        try:
            os.chmod(path, wanted)
        except PermissionError:
            pass
