"""Atomic writes: readers, and a process killed mid-write, see the old file or the new one, never a mix.

A file or directory is written under a temporary name beside its target (`.tmp-<name>.<unique>`),
fsynced, and renamed into place; the directory is fsynced so the rename survives a crash. A full
disk becomes DiskFull and leaves the old file as it was. Standard library only: the registry, which
`strop serve` reads, writes through this module.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

from core.errors import DiskFull

TMP_PREFIX = ".tmp-"  # temporaries of this module (and of the registry's version directories)


def is_disk_full(exc: BaseException) -> bool:
    """ENOSPC/EDQUOT anywhere in the exception chain. torch.save reports it as a RuntimeError whose
    context is the OSError; safetensors (Rust) only in its message."""
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        if isinstance(cur, OSError) and cur.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if "No space left on device" in str(cur) or "os error 28" in str(cur):
            return True
        cur = cur.__cause__ or cur.__context__
    return False


def fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(root: Path) -> None:
    for path in sorted(root.rglob("*")):
        if path.is_file():
            with open(path, "rb") as f:
                os.fsync(f.fileno())


@contextlib.contextmanager
def atomic_output(out_path: Path) -> Iterator[Path]:
    """Yield a temp path beside `out_path` for the caller to write; on success fsync it and rename
    it onto `out_path`. On any failure the temp file is removed."""
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    # A fresh unique name, not mkstemp: the writer creates the file with the usual umask-based mode.
    tmp = out_path.parent / f"{TMP_PREFIX}{out_path.name}.{uuid.uuid4().hex}"
    try:
        yield tmp
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, out_path)
        fsync_dir(out_path.parent)
    except BaseException as exc:
        if is_disk_full(exc) and not isinstance(exc, DiskFull):
            raise DiskFull(
                f"Cannot write {out_path}: the disk is full. Free space on {out_path.parent} (or choose "
                "another output directory) and try again."
            ) from exc
        raise
    finally:
        tmp.unlink(missing_ok=True)


def write_json_atomic(path: Path, obj: object) -> None:
    """`obj` as indented JSON (key order kept; Paths and other objects as text)."""
    with atomic_output(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2, default=str)
        f.write("\n")


def write_text_atomic(path: Path, text: str) -> None:
    with atomic_output(path) as tmp:
        Path(tmp).write_text(text, encoding="utf-8")


@contextlib.contextmanager
def atomic_dir(dest: Path, *, what: str) -> Iterator[Path]:
    """Yield a temporary directory beside `dest`; on success it replaces `dest` in one rename.
    A full disk becomes DiskFull and leaves `dest` as it was. `what` names the artifact in errors."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.parent / f"{TMP_PREFIX}{dest.name}.{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
        _fsync_tree(tmp)
        if dest.exists():
            # A directory cannot be renamed over a non-empty one: move the old one aside first.
            old = dest.parent / f"{TMP_PREFIX}{dest.name}.{os.getpid()}.old"
            shutil.rmtree(old, ignore_errors=True)
            os.replace(dest, old)
            os.replace(tmp, dest)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, dest)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if is_disk_full(exc) and not isinstance(exc, DiskFull):
            free_mib = shutil.disk_usage(dest.parent).free / 2**20
            raise DiskFull(
                f"Saving the {what} to {dest} failed: the disk is full ({free_mib:.0f} MiB free). "
                f"Free some space and run training again; it resumes from its last checkpoint.") from exc
        raise
