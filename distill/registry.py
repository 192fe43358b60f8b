"""strop's model registry, the write side: register versions atomically, validated promotion, rollback,
and the global store of imported/pulled models. The layout and the reads are `core/registry.py`.

A version appears all at once: it is written into a `.tmp-*` directory and renamed into place, so a
killed process leaves no half-written entry. Promotion rewrites promoted.json atomically, after the
GGUF passed `core.gguf_check.validate_gguf`; servers notice it by polling `promoted_stamp`.
"""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import socket
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path

from core.errors import DiskFull, ModelNotFound, StropError
from core.gguf_check import CHUNK_BYTES, LOAD_TIMEOUT_S, Progress, sha256_file, validate_gguf
from core.paths import strop_home
from core.registry import (GGUF_NAME, MANIFEST_NAME, VERSION_RE, Entry, RegistryReader, load_manifest,
                           plain_file_name, safe_name)
from distill.atomic import TMP_PREFIX, fsync_dir, write_json_atomic
from distill.lock import exclusive

SOURCES = ("distill", "import", "pull")
# Filled in by the registry; a caller that sets them has a bug.
_RESERVED_KEYS = frozenset({"version", "created_at", "sha256", "size_bytes"})


# --- files ---------------------------------------------------------------------------------------


def _copy_hashing(src: Path, dst: Path, progress: Progress | None) -> tuple[str, int]:
    """Copy and hash in one pass (hashing a multi-GB GGUF twice would double the wait)."""
    total = src.stat().st_size
    digest = hashlib.sha256()
    done = 0
    with open(src, "rb") as fin, open(dst, "xb") as fout:
        while chunk := fin.read(CHUNK_BYTES):
            digest.update(chunk)
            fout.write(chunk)
            done += len(chunk)
            if progress:
                progress(done, total)
        fout.flush()
        os.fsync(fout.fileno())
    return digest.hexdigest(), done


def _ingest(src: Path, dst: Path, *, move: bool, hardlink: bool, progress: Progress | None) -> tuple[str, int, bool]:
    """Put `src` at `dst`; returns (sha256, size_bytes, renamed) where `renamed` means src is now dst."""
    if move:
        try:
            os.rename(src, dst)
        except OSError as err:
            if err.errno != errno.EXDEV:
                raise
        else:
            try:
                return sha256_file(dst, progress), dst.stat().st_size, True
            except BaseException:
                os.rename(dst, src)  # the caller cannot know it moved: give the file back here
                raise
    elif hardlink:
        try:
            os.link(src, dst)
        except FileNotFoundError:
            raise
        except OSError:
            pass  # another filesystem, or one without hard links: copy instead
        else:
            return sha256_file(dst, progress), dst.stat().st_size, False
    sha, size = _copy_hashing(src, dst, progress)
    return sha, size, False


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _tmp_prefix() -> str:
    # The host is part of the name: on a shared STROP_HOME, another machine's pids mean nothing here.
    return f"{TMP_PREFIX}{os.getpid()}-{safe_name(socket.gethostname())}-"


def _sweep_stale_tmp(parent: Path) -> None:
    """Remove `.tmp-<pid>-<host>-*` directories left by processes of this host that died writing them."""
    host = safe_name(socket.gethostname())
    for tmp in parent.glob(f"{TMP_PREFIX}*"):
        pid_text, _, rest = tmp.name[len(TMP_PREFIX):].partition("-")
        if pid_text.isdigit() and rest.startswith(f"{host}-") and not _pid_alive(int(pid_text)):
            shutil.rmtree(tmp, ignore_errors=True)


def _utc_now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _check_manifest(manifest: Mapping) -> None:
    reserved = _RESERVED_KEYS & set(manifest)
    if reserved:
        raise ValueError(f"the registry fills in {sorted(reserved)}; do not pass them in the manifest")
    if manifest.get("source") not in SOURCES:
        raise ValueError(f"manifest source must be one of {SOURCES}, not {manifest.get('source')!r}")


class _VersionWriter:
    """Builds a version directory in `.tmp-<pid>-<host>-*` and renames it into place in one step."""

    def __init__(self, parent: Path, src: Path, *, move: bool, hardlink: bool, progress: Progress | None):
        self.parent = parent
        self.src = src
        self.move = move
        self.hardlink = hardlink
        self.progress = progress

    def write(self, manifest: dict, extra_files: Mapping[str, Path], name_for: Callable[[], str]) -> tuple[Path, dict]:
        if not self.src.is_file():
            raise ModelNotFound(f"{self.src} does not exist or is not a file; check the path.")
        self.parent.mkdir(parents=True, exist_ok=True)
        _sweep_stale_tmp(self.parent)
        tmp = Path(tempfile.mkdtemp(prefix=_tmp_prefix(), dir=self.parent))
        gguf = tmp / GGUF_NAME
        renamed = False
        try:
            sha, size, renamed = _ingest(self.src, gguf, move=self.move, hardlink=self.hardlink, progress=self.progress)
            os.chmod(gguf, 0o400)  # read-only, owner-only (STROP_HOME is private)
            for name, src in extra_files.items():
                shutil.copyfile(src, tmp / plain_file_name(name))
            body = {**manifest, "sha256": sha, "size_bytes": size}
            with exclusive(self.parent / ".lock"):
                final = self.parent / name_for()
                body["created_at"] = _utc_now()
                body["version"] = final.name
                write_json_atomic(tmp / MANIFEST_NAME, body)
                os.chmod(tmp, 0o700)
                os.rename(tmp, final)  # fails if `final` exists (it is never empty)
                fsync_dir(self.parent)
        except OSError as err:
            self._undo(tmp, gguf, renamed)
            if err.errno == errno.ENOSPC:
                raise DiskFull(
                    f"no space left on the disk of {self.parent} while registering {self.src}; free some "
                    "space (e.g. delete old versions) or point STROP_HOME to a larger disk."
                ) from err
            raise
        except BaseException:
            self._undo(tmp, gguf, renamed)
            raise
        if self.move and not renamed:
            self.src.unlink()  # copied across filesystems: the move completes only now
        return final, body

    def _undo(self, tmp: Path, gguf: Path, renamed: bool) -> None:
        if renamed and gguf.exists():
            os.rename(gguf, self.src)  # give a moved file back rather than delete it
        shutil.rmtree(tmp, ignore_errors=True)


# --- GGUF validation -----------------------------------------------------------------------------

# --- per-repository registry ---------------------------------------------------------------------


class Registry(RegistryReader):
    """Registers versions, promotes and rolls back (the read side is `core.registry.RegistryReader`)."""

    def add_version(
        self,
        repo_key: str,
        gguf_path: Path,
        manifest: Mapping,
        *,
        move: bool = False,
        hardlink: bool = False,
        progress: Progress | None = None,
        extra_files: Mapping[str, Path] | None = None,
    ) -> Entry:
        """Register a GGUF as the next version (`v0001-20261123T1905`: counter, then UTC minute).

        `move` renames the file in (copying across filesystems); `hardlink` links it when it can,
        else copies. `extra_files` maps report names (report.json, ...) to files to copy beside it.
        """
        _check_manifest(manifest)
        body = dict(manifest)
        if "parent" not in body:
            current = self.read_promoted(repo_key)
            body["parent"] = current["version"] if current else None
        writer = _VersionWriter(
            self.versions_dir(repo_key), Path(gguf_path), move=move, hardlink=hardlink, progress=progress
        )
        final, body = writer.write(body, extra_files or {}, lambda: self._next_version(repo_key))
        return Entry(final.name, final, final / GGUF_NAME, body)

    def _next_version(self, repo_key: str) -> str:
        numbers = [int(m.group(1)) for m in map(VERSION_RE.match, self.version_names(repo_key)) if m]
        return f"v{max(numbers, default=0) + 1:04d}-{time.strftime('%Y%m%dT%H%M', time.gmtime())}"

    def update_manifest(self, repo_key: str, version: str, changes: Mapping) -> Entry:
        """Merge `changes` (e.g. metrics from the evaluator) into a version's manifest, atomically."""
        reserved = _RESERVED_KEYS & set(changes)
        if reserved:
            raise ValueError(f"{sorted(reserved)} describe the registered file and cannot change")
        entry = self.get(repo_key, version)
        with exclusive(self.versions_dir(repo_key) / ".lock"):
            body = {**load_manifest(entry.path), **changes}
            write_json_atomic(entry.path / MANIFEST_NAME, body)
        return Entry(entry.version, entry.path, entry.gguf, body)

    def promote(
        self, repo_key: str, version: str, *, validate: bool = True, load_timeout_s: float = LOAD_TIMEOUT_S
    ) -> Entry:
        """Make `version` the served model; a file that fails `validate_gguf` is never promoted."""
        entry = self.get(repo_key, version)
        current = self.read_promoted(repo_key)
        if current and current["version"] == version:
            return entry
        if validate:
            validate_gguf(entry.gguf, expected_sha256=entry.sha256, load_timeout_s=load_timeout_s)
        with exclusive(self.repo_dir(repo_key) / ".promote.lock"):
            state = self.read_promoted(repo_key)
            if state and state["version"] == version:
                return entry
            history = [*state["history"], state["version"]] if state else []
            write_json_atomic(
                self.promoted_path(repo_key), {"version": version, "history": history, "promoted_at": _utc_now()}
            )
        return entry

    def rollback(
        self, repo_key: str, *, validate: bool = True, load_timeout_s: float = LOAD_TIMEOUT_S
    ) -> Entry:
        """Promote again the version that was promoted before the current one."""
        with exclusive(self.repo_dir(repo_key) / ".promote.lock"):
            state = self.read_promoted(repo_key)
            if not state:
                raise StropError(
                    f"nothing to roll back: no model was ever promoted for repository {repo_key}; "
                    "`strop models promote VERSION` promotes one."
                )
            if not state["history"]:
                raise StropError(
                    f"nothing to roll back to: {state['version']} is the only model ever promoted for "
                    f"repository {repo_key}; `strop models promote VERSION` promotes another version."
                )
            previous = state["history"][-1]
            entry = self.get(repo_key, previous)
            if validate:
                validate_gguf(entry.gguf, expected_sha256=entry.sha256, load_timeout_s=load_timeout_s)
            write_json_atomic(
                self.promoted_path(repo_key),
                {"version": previous, "history": state["history"][:-1], "promoted_at": _utc_now()},
            )
        return entry


# --- global store of imported / pulled models ----------------------------------------------------


class ModelStore:
    """`$STROP_HOME/models/<name>/`: GGUFs brought in by `strop models import/pull`, not tied to a repo.

    An Entry of the store carries the model's name in `version`.
    """

    def __init__(self, root: Path | None = None):
        self.root = Path(root) if root is not None else strop_home() / "models"

    def add(
        self, name: str, gguf_path: Path, manifest: Mapping, *, hardlink: bool = False, progress: Progress | None = None
    ) -> Entry:
        """Store a GGUF under `name`; the same file again under the same name is a no-op."""
        _check_manifest(manifest)
        clean = safe_name(name)
        if not clean:
            raise StropError(f"{name!r} cannot name a model; use letters, digits, '.', '_' or '-'.")
        try:
            existing = self.get(clean)
        except ModelNotFound:
            existing = None
        if existing is not None:
            if sha256_file(Path(gguf_path), progress) == existing.sha256:
                return existing
            raise StropError(
                f"a different model is already stored as {clean!r} ({existing.gguf}); choose another --name."
            )
        writer = _VersionWriter(self.root, Path(gguf_path), move=False, hardlink=hardlink, progress=progress)

        def name_for() -> str:
            if (self.root / clean).exists():
                raise StropError(f"another process stored a model as {clean!r} meanwhile; choose another --name.")
            return clean

        final, body = writer.write(dict(manifest), {}, name_for)
        return Entry(clean, final, final / GGUF_NAME, body)

    def get(self, name: str) -> Entry:
        directory = self.root / safe_name(name)
        if not safe_name(name) or not (directory / MANIFEST_NAME).is_file():
            raise ModelNotFound(f"no imported model named {name!r}; `strop models list` shows them.")
        return Entry(directory.name, directory, directory / GGUF_NAME, load_manifest(directory))

    def list(self) -> list[Entry]:
        try:
            dirs = sorted(
                p for p in self.root.iterdir() if not p.name.startswith(".") and (p / MANIFEST_NAME).is_file()
            )
        except FileNotFoundError:
            return []
        return [Entry(p.name, p, p / GGUF_NAME, load_manifest(p)) for p in dirs]
