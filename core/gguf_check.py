"""Is this file a model llama.cpp can serve? Its sha256, a bounded walk of the GGUF header and tensor
table, and a load test in a subprocess. The registry checks every version with it before promotion,
and the exporter checks what it wrote.

Standard library only at import time (`gguf` is used when installed, `llama_cpp` only in a subprocess).
"""

from __future__ import annotations

import hashlib
import os
import signal
import struct
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from core.errors import ModelLoadError, ModelNotFound

LOAD_TIMEOUT_S = 180.0
CHUNK_BYTES = 1 << 20

Progress = Callable[[int, int], None]
"""Called with (bytes_done, bytes_total) while a GGUF is copied or hashed."""


def sha256_file(path: Path, progress: Progress | None = None) -> str:
    total = path.stat().st_size
    digest = hashlib.sha256()
    done = 0
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK_BYTES):
            digest.update(chunk)
            done += len(chunk)
            if progress:
                progress(done, total)
    return digest.hexdigest()


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
    if not path.is_file():
        raise ModelNotFound(f"No GGUF file at {path}; check the path (or the registry entry pointing to it).")
    size = path.stat().st_size
    keys: set[bytes] = set()
    try:
        data_start, tensors = _read_tensor_table(path, keys)
    except _Truncated as err:
        raise ModelLoadError(
            f"{path} is damaged: its GGUF header ends early ({err}); the file is probably truncated. "
            "Copy or download it again."
        ) from err
    if b"general.architecture" not in keys:
        raise ModelLoadError(f"{path} has no general.architecture key; it is not a model GGUF.")
    if not tensors:
        raise ModelLoadError(f"{path} contains no tensors; it is not a model GGUF (or it was cut short).")
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


def _read_tensor_table(path: Path, keys: set[bytes] | None = None) -> tuple[int, list[tuple[str, tuple[int, ...], int, int]]]:
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
            if keys is not None:
                keys.add(key)
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
