"""strop's model registry: versioned GGUFs per repository, validated atomic promotion, rollback.

Layout under $STROP_HOME:

    registry/<repo_key>/versions/<version>/model.gguf      read-only once registered
                                          manifest.json
                                          report.{json,txt,png}   written by the evaluator
    registry/<repo_key>/versions/.tmp-<pid>-<host>-*/      a version being written; never listed
    registry/<repo_key>/promoted.json    {"version", "history": [earlier promoted, newest last], "promoted_at"}
    models/<name>/model.gguf + manifest.json               imported/pulled GGUFs not tied to a repository

manifest.json holds what the caller passes (`name` shown by the server, `base`, `parent`,
`source` ∈ SOURCES, `data` counts,
`hyperparameters`, `metrics`, `decoding` = serving parameters such as
{"temperature": T_eval, "top_k": .., "top_p": ..}, `notes`, anything else) plus what the registry
fills in: `version`, `created_at` (UTC, ISO 8601), `sha256` and `size_bytes` of model.gguf, and
`parent` (the promoted version at the time) when the caller gave none.

A version appears all at once: it is written into a `.tmp-*` directory and renamed into place, so a
killed process leaves no half-written entry. Promotion rewrites promoted.json atomically, after the
GGUF passed `validate_gguf`; the server notices it by polling `promoted_stamp`.

Standard library only at import time: `strop serve` reads the registry on machines without torch;
`gguf` and `llama_cpp` are used lazily (the latter only in a subprocess).
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from distill.atomic import TMP_PREFIX, fsync_dir, write_json_atomic
from distill.lock import exclusive
from core.paths import registry_dir, strop_home
from core.errors import DiskFull, ModelLoadError, ModelNotFound, StropError

SOURCES = ("distill", "import", "pull")
GGUF_NAME = "model.gguf"
MANIFEST_NAME = "manifest.json"
PROMOTED_NAME = "promoted.json"
LOAD_TIMEOUT_S = 180.0
# Filled in by the registry; a caller that sets them has a bug.
_RESERVED_KEYS = frozenset({"version", "created_at", "sha256", "size_bytes"})
_VERSION_RE = re.compile(r"^v(\d{4,})-(\d{8}T\d{4})$")
_CHUNK_BYTES = 1 << 20

Progress = Callable[[int, int], None]
"""Called with (bytes_done, bytes_total) while a GGUF is copied or hashed."""


@dataclass(frozen=True)
class Entry:
    """One registered model: a version of a repository's model, or a named model of the global store."""

    version: str
    path: Path  # the version's directory
    gguf: Path
    manifest: dict = field(compare=False)

    @property
    def sha256(self) -> str:
        return self.manifest["sha256"]

    @property
    def size_bytes(self) -> int:
        return int(self.manifest["size_bytes"])

    @property
    def created_at(self) -> str:
        return self.manifest.get("created_at", "")

    @property
    def source(self) -> str:
        return self.manifest.get("source", "")

    @property
    def parent(self) -> str | None:
        return self.manifest.get("parent")

    @property
    def base(self) -> str | None:
        return self.manifest.get("base")

    @property
    def metrics(self) -> dict:
        return self.manifest.get("metrics") or {}

    @property
    def decoding(self) -> dict:
        return self.manifest.get("decoding") or {}

    def report(self, name: str) -> Path:
        """Where the evaluator's report file `name` (report.json, report.txt, report.png) lives."""
        return self.path / _plain_file_name(name)


# --- repository identity -------------------------------------------------------------------------


def repo_key(repo_root: Path) -> str:
    """`<dirname>-<8 hex>`: the hash is of `remote.origin.url` when set, else of the absolute path."""
    root = Path(repo_root).resolve()
    url = _git(root, "config", "--get", "remote.origin.url")
    digest = hashlib.sha256((url or str(root)).encode()).hexdigest()[:8]
    return f"{safe_name(root.name) or 'repo'}-{digest}"


def safe_name(name: str) -> str:
    """`name` reduced to characters safe in a file name ([A-Za-z0-9._-]), no leading dot."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-").lstrip(".")


def _git(cwd: Path, *args: str) -> str | None:
    try:
        done = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=30)
    except (FileNotFoundError, NotADirectoryError, subprocess.TimeoutExpired):
        return None
    out = done.stdout.strip()
    return out if done.returncode == 0 and out else None


# --- files ---------------------------------------------------------------------------------------


def sha256_file(path: Path, progress: Progress | None = None) -> str:
    total = path.stat().st_size
    digest = hashlib.sha256()
    done = 0
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK_BYTES):
            digest.update(chunk)
            done += len(chunk)
            if progress:
                progress(done, total)
    return digest.hexdigest()


def _copy_hashing(src: Path, dst: Path, progress: Progress | None) -> tuple[str, int]:
    """Copy and hash in one pass (hashing a multi-GB GGUF twice would double the wait)."""
    total = src.stat().st_size
    digest = hashlib.sha256()
    done = 0
    with open(src, "rb") as fin, open(dst, "xb") as fout:
        while chunk := fin.read(_CHUNK_BYTES):
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


def _plain_file_name(name: str) -> str:
    if not name or name != Path(name).name or name.startswith(".") or name in (GGUF_NAME, MANIFEST_NAME):
        raise ValueError(f"{name!r} cannot be a report file name in a version directory")
    return name


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


def _load_manifest(directory: Path) -> dict:
    path = directory / MANIFEST_NAME
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as err:
        raise StropError(
            f"{path} is not valid JSON ({err}); the registry writes it atomically, so something else "
            f"changed it. Restore it or delete the directory {directory}."
        ) from err
    if not isinstance(manifest, dict) or "sha256" not in manifest:
        raise StropError(f"{path} is not a strop manifest (no sha256); restore it or delete {directory}.")
    return manifest


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
                shutil.copyfile(src, tmp / _plain_file_name(name))
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

# verbose=True: llama.cpp logs why a load fails only then (to stderr, which we keep for the message).
_LOAD_TEST = """\
import sys
from llama_cpp import Llama
llm = Llama(model_path=sys.argv[1], n_ctx=64, n_gpu_layers=0, n_threads=1, verbose=True)
tokens = llm.tokenize(b"def main():\\n    return 0\\n")
if not tokens:
    sys.exit("the tokenizer produced no tokens")
print(len(tokens))
"""


def validate_gguf(
    path: Path,
    *,
    expected_sha256: str | None = None,
    load_timeout_s: float = LOAD_TIMEOUT_S,
    progress: Progress | None = None,
) -> None:
    """Raise ModelLoadError unless `path` matches its hash, parses as GGUF, and llama.cpp loads it."""
    if not path.is_file():
        raise ModelNotFound(f"{path} does not exist; the registry entry is damaged or the path is wrong.")
    if expected_sha256 is not None:
        actual = sha256_file(path, progress)
        if actual != expected_sha256:
            raise ModelLoadError(
                f"{path} is corrupt: its sha256 is {actual} but the manifest records {expected_sha256} "
                "(the file changed after it was registered). Register it again (strop models import/pull) "
                "or promote another version."
            )
    check_gguf_structure(path)
    load_test(path, timeout_s=load_timeout_s)


def check_gguf_structure(path: Path) -> None:
    """GGUF magic and version, a readable metadata and tensor table, and every tensor's data inside
    the file (tensor sizes come from the `gguf` package when it is installed)."""
    size = path.stat().st_size
    try:
        data_start, tensors = _read_tensor_table(path)
    except _Truncated as err:
        raise ModelLoadError(
            f"{path} is damaged: its GGUF header ends early ({err}); the file is probably truncated. "
            "Copy or download it again."
        ) from err
    try:
        from gguf import GGML_QUANT_SIZES, GGMLQuantizationType
    except ImportError:
        return  # the llama.cpp load test still checks the tensor data
    for name, dims, type_id, offset in tensors:
        try:
            block_size, type_bytes = GGML_QUANT_SIZES[GGMLQuantizationType(type_id)]
        except (ValueError, KeyError):
            raise ModelLoadError(f"{path}: tensor {name} has unknown type {type_id}; the file is corrupt.") from None
        n_elements = 1
        for d in dims:
            n_elements *= d
        end = data_start + offset + n_elements * type_bytes // block_size
        if end > size:
            raise ModelLoadError(
                f"{path} is truncated: tensor {name} ends at byte {end} but the file has {size} bytes. "
                "Copy or download it again."
            )


class _Truncated(Exception):
    pass


# GGUF metadata value types (gguf spec): fixed sizes in bytes, and the two variable-length ones.
_GGUF_FIXED_BYTES = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
_GGUF_STRING, _GGUF_ARRAY, _GGUF_UINT32 = 8, 9, 4
# Bounds beyond "fits in the file": a crafted header must not cost memory, time or the stack.
_GGUF_MAX_KEY_BYTES = 65535  # the spec's limit for a key
_GGUF_MAX_NAME_BYTES = 65535  # tensor names (llama.cpp's own limit is 64)
_GGUF_MAX_DIMS = 4  # GGML_MAX_DIMS
_GGUF_MAX_ARRAY_DEPTH = 4  # llama.cpp reads no nested arrays at all
_GGUF_MAX_COUNT = 1 << 24  # metadata entries, tensors
# The least bytes one item of a count takes: a key/value (key length, type, 1-byte value), a tensor
# (name length, dims count, type, offset), a string (its length), an array (type, count).
_GGUF_MIN_KV, _GGUF_MIN_TENSOR, _GGUF_MIN_STRING, _GGUF_MIN_ARRAY = 13, 24, 8, 12


def _read_tensor_table(path: Path) -> tuple[int, list[tuple[str, tuple[int, ...], int, int]]]:
    """Walk a GGUF header: returns (offset of the tensor data, [(name, dims, type id, offset)]).

    Every length the file states is checked against a sane limit (else ModelLoadError) and the bytes
    left in the file (else _Truncated) before anything is read or skipped, so a crafted header costs
    no huge allocation, overflow or deep recursion.

    Hand-rolled on purpose: gguf.GGUFReader materialises every vocabulary string as a numpy view,
    which takes 5-20 s for a 49k-token vocabulary; skipping over them takes a fraction of a second.
    """
    size = path.stat().st_size

    def corrupt(what: str) -> ModelLoadError:
        return ModelLoadError(f"{path} is not a valid GGUF file: {what}. The file is corrupt or was crafted; "
                              "copy or download the model again.")

    with open(path, "rb", buffering=1 << 20) as f:

        def left() -> int:
            return size - f.tell()

        def read(n: int) -> bytes:
            if n > left():
                raise _Truncated(f"wanted {n} bytes at offset {f.tell()} of {size}")
            return f.read(n)

        def u32() -> int:
            return struct.unpack("<I", read(4))[0]

        def u64() -> int:
            return struct.unpack("<Q", read(8))[0]

        def count(what: str, n: int, item_bytes: int, limit: int = _GGUF_MAX_COUNT) -> int:
            if n > limit:
                raise corrupt(f"{what} is {n} (at most {limit})")
            if n * item_bytes > left():
                raise _Truncated(f"{what} is {n}, more than the {left()} bytes left in the file can hold")
            return n

        def string(what: str, limit: int) -> bytes:
            n = u64()
            if n > limit:
                raise corrupt(f"{what} is {n} bytes long (at most {limit})")
            return read(n)

        def skip(n: int) -> None:
            if n > left():
                raise _Truncated(f"a value of {n} bytes at offset {f.tell()} runs past the end ({size})")
            f.seek(n, os.SEEK_CUR)

        def skip_value(value_type: int, depth: int = 0) -> None:
            if value_type in _GGUF_FIXED_BYTES:
                skip(_GGUF_FIXED_BYTES[value_type])
            elif value_type == _GGUF_STRING:
                skip(u64())
            elif value_type == _GGUF_ARRAY:
                if depth >= _GGUF_MAX_ARRAY_DEPTH:
                    raise corrupt(f"arrays nest deeper than {_GGUF_MAX_ARRAY_DEPTH} levels")
                item_type, n = u32(), u64()
                if item_type in _GGUF_FIXED_BYTES:
                    skip(count("an array's length", n, _GGUF_FIXED_BYTES[item_type], limit=size)
                         * _GGUF_FIXED_BYTES[item_type])
                else:
                    least = _GGUF_MIN_STRING if item_type == _GGUF_STRING else _GGUF_MIN_ARRAY
                    for _ in range(count("an array's length", n, least, limit=size)):
                        skip_value(item_type, depth + 1)
            else:
                raise ModelLoadError(f"{path}: unknown GGUF metadata type {value_type}; the file is corrupt.")

        head = f.read(8)
        if len(head) < 8 or head[:4] != b"GGUF":
            raise ModelLoadError(f"{path} is not a GGUF file (it does not start with the GGUF magic); check the file.")
        version = int.from_bytes(head[4:8], "little")
        if version not in (2, 3):
            raise ModelLoadError(f"{path} has GGUF version {version}; llama.cpp reads versions 2 and 3.")
        n_tensors, n_kv = u64(), u64()
        count("the number of tensors", n_tensors, _GGUF_MIN_TENSOR)
        count("the number of metadata entries", n_kv, _GGUF_MIN_KV)
        alignment = 32  # GGUF's default unless general.alignment says otherwise
        for _ in range(n_kv):
            key = string("a metadata key", _GGUF_MAX_KEY_BYTES)
            value_type = u32()
            if key == b"general.alignment" and value_type == _GGUF_UINT32:
                alignment = u32() or alignment
                if alignment & (alignment - 1):
                    raise corrupt(f"general.alignment is {alignment}, not a power of two")
            else:
                skip_value(value_type)
        count("the number of tensors", n_tensors, _GGUF_MIN_TENSOR)
        tensors = []
        for _ in range(n_tensors):
            name = string("a tensor name", _GGUF_MAX_NAME_BYTES).decode("utf-8", "replace")
            n_dims = u32()
            if n_dims > _GGUF_MAX_DIMS:
                raise corrupt(f"tensor {name[:80]!r} has {n_dims} dimensions (at most {_GGUF_MAX_DIMS})")
            dims = struct.unpack(f"<{n_dims}Q", read(8 * n_dims))
            tensors.append((name, dims, u32(), u64()))
        data_start = -(-f.tell() // alignment) * alignment
    return data_start, tensors


def load_test(path: Path, *, timeout_s: float = LOAD_TIMEOUT_S) -> None:
    """Load `path` with llama.cpp and tokenize a line, in a subprocess: a corrupt file can crash llama.cpp."""
    try:
        done = subprocess.run(
            [sys.executable, "-c", _LOAD_TEST, str(path)], capture_output=True, text=True, timeout=timeout_s
        )
    except subprocess.TimeoutExpired as err:
        raise ModelLoadError(
            f"llama.cpp did not finish loading {path} within {timeout_s:.0f} s; the file may be damaged or far "
            "too large for this machine."
        ) from err
    if done.returncode == 0:
        return
    if done.returncode < 0:
        try:
            why = f"llama.cpp crashed ({signal.Signals(-done.returncode).name})"
        except ValueError:
            why = f"llama.cpp was killed by signal {-done.returncode}"
    else:
        why = _load_failure_reason(done.stderr) or f"exit status {done.returncode}"
    raise ModelLoadError(f"llama.cpp cannot load {path}: {why}. The file is corrupt or not a model llama.cpp supports.")


def _load_failure_reason(stderr: str) -> str:
    """llama.cpp's own reason ("error loading model: ..."), else the last line (a Python exception)."""
    lines = [" ".join(line.split()) for line in stderr.splitlines() if line.strip()]
    for line in lines:
        if "error loading model:" in line:
            return line.split("error loading model:", 1)[1].strip()
    return lines[-1] if lines else ""


# --- per-repository registry ---------------------------------------------------------------------


class Registry:
    """Versions of each repository's model and the promoted pointer (see the module docstring)."""

    def __init__(self, root: Path | None = None):
        self.root = Path(root) if root is not None else registry_dir()

    def repo_dir(self, repo_key: str) -> Path:
        return self.root / repo_key

    def _versions_dir(self, repo_key: str) -> Path:
        return self.repo_dir(repo_key) / "versions"

    def _promoted_path(self, repo_key: str) -> Path:
        return self.repo_dir(repo_key) / PROMOTED_NAME

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
            current = self._read_promoted(repo_key)
            body["parent"] = current["version"] if current else None
        writer = _VersionWriter(
            self._versions_dir(repo_key), Path(gguf_path), move=move, hardlink=hardlink, progress=progress
        )
        final, body = writer.write(body, extra_files or {}, lambda: self._next_version(repo_key))
        return Entry(final.name, final, final / GGUF_NAME, body)

    def _next_version(self, repo_key: str) -> str:
        numbers = [int(m.group(1)) for m in map(_VERSION_RE.match, self._version_names(repo_key)) if m]
        return f"v{max(numbers, default=0) + 1:04d}-{time.strftime('%Y%m%dT%H%M', time.gmtime())}"

    def _version_names(self, repo_key: str) -> list[str]:
        try:
            return [p.name for p in self._versions_dir(repo_key).iterdir() if _VERSION_RE.match(p.name)]
        except FileNotFoundError:
            return []

    def versions(self, repo_key: str) -> list[Entry]:
        """All versions, oldest first."""
        names = sorted(self._version_names(repo_key), key=lambda n: (int(_VERSION_RE.match(n).group(1)), n))
        entries = []
        for name in names:
            directory = self._versions_dir(repo_key) / name
            if (directory / MANIFEST_NAME).is_file():
                entries.append(Entry(name, directory, directory / GGUF_NAME, _load_manifest(directory)))
        return entries

    def get(self, repo_key: str, version: str) -> Entry:
        directory = self._versions_dir(repo_key) / version
        if not _VERSION_RE.match(version) or not (directory / MANIFEST_NAME).is_file():
            known = ", ".join(e.version for e in self.versions(repo_key)) or "none"
            raise ModelNotFound(
                f"repository {repo_key} has no model version {version!r} (versions: {known}); "
                "`strop models list` shows them."
            )
        return Entry(version, directory, directory / GGUF_NAME, _load_manifest(directory))

    def update_manifest(self, repo_key: str, version: str, changes: Mapping) -> Entry:
        """Merge `changes` (e.g. metrics from the evaluator) into a version's manifest, atomically."""
        reserved = _RESERVED_KEYS & set(changes)
        if reserved:
            raise ValueError(f"{sorted(reserved)} describe the registered file and cannot change")
        entry = self.get(repo_key, version)
        with exclusive(self._versions_dir(repo_key) / ".lock"):
            body = {**_load_manifest(entry.path), **changes}
            write_json_atomic(entry.path / MANIFEST_NAME, body)
        return Entry(entry.version, entry.path, entry.gguf, body)

    def _read_promoted(self, repo_key: str) -> dict | None:
        path = self._promoted_path(repo_key)
        try:
            state = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except ValueError as err:
            raise StropError(
                f"{path} is not valid JSON ({err}); strop writes it atomically, so something else changed it. "
                "Fix it by promoting a version again: `strop models promote VERSION`."
            ) from err
        state.setdefault("history", [])
        return state

    def promoted_version(self, repo_key: str) -> str | None:
        """The promoted version's id, read from promoted.json alone (its directory may be gone)."""
        state = self._read_promoted(repo_key)
        return state["version"] if state else None

    def promoted(self, repo_key: str) -> Entry | None:
        state = self._read_promoted(repo_key)
        return self.get(repo_key, state["version"]) if state else None

    def promoted_stamp(self, repo_key: str) -> tuple[int, int, int] | None:
        """Changes whenever the promotion changes; one stat() call, cheap enough to poll."""
        try:
            st = os.stat(self._promoted_path(repo_key))
        except FileNotFoundError:
            return None
        return (st.st_ino, st.st_mtime_ns, st.st_size)  # os.replace gives a new inode every time

    def verify(self, entry: Entry, progress: Progress | None = None) -> None:
        """Raise ModelLoadError unless model.gguf still has the sha256 its manifest records."""
        actual = sha256_file(entry.gguf, progress)
        if actual != entry.sha256:
            raise ModelLoadError(
                f"{entry.gguf} is corrupt: its sha256 is {actual} but the manifest records {entry.sha256}. "
                "Register the model again or promote another version."
            )

    def promote(
        self, repo_key: str, version: str, *, validate: bool = True, load_timeout_s: float = LOAD_TIMEOUT_S
    ) -> Entry:
        """Make `version` the served model; a file that fails `validate_gguf` is never promoted."""
        entry = self.get(repo_key, version)
        current = self._read_promoted(repo_key)
        if current and current["version"] == version:
            return entry
        if validate:
            validate_gguf(entry.gguf, expected_sha256=entry.sha256, load_timeout_s=load_timeout_s)
        with exclusive(self.repo_dir(repo_key) / ".promote.lock"):
            state = self._read_promoted(repo_key)
            if state and state["version"] == version:
                return entry
            history = [*state["history"], state["version"]] if state else []
            write_json_atomic(
                self._promoted_path(repo_key), {"version": version, "history": history, "promoted_at": _utc_now()}
            )
        return entry

    def rollback(
        self, repo_key: str, *, validate: bool = True, load_timeout_s: float = LOAD_TIMEOUT_S
    ) -> Entry:
        """Promote again the version that was promoted before the current one."""
        with exclusive(self.repo_dir(repo_key) / ".promote.lock"):
            state = self._read_promoted(repo_key)
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
                self._promoted_path(repo_key),
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
        return Entry(directory.name, directory, directory / GGUF_NAME, _load_manifest(directory))

    def list(self) -> list[Entry]:
        try:
            dirs = sorted(
                p for p in self.root.iterdir() if not p.name.startswith(".") and (p / MANIFEST_NAME).is_file()
            )
        except FileNotFoundError:
            return []
        return [Entry(p.name, p, p / GGUF_NAME, _load_manifest(p)) for p in dirs]
