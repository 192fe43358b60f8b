"""The GGUF header reader (`strop models import`, promotion) bounds every length a file states: a
crafted or damaged header is a ModelLoadError with a clear message, never a MemoryError, an
OverflowError, a RecursionError or a hang. Fuzzed with hypothesis."""

import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from core.gguf_check import check_gguf_structure
from core.errors import ModelLoadError

U8, U32, STRING, ARRAY, U64 = 0, 4, 8, 9, 10


def gguf_string(raw: bytes) -> bytes:
    return struct.pack("<Q", len(raw)) + raw


def value(kind: int, v) -> bytes:
    if kind == U8:
        return struct.pack("<B", v)
    if kind == U32:
        return struct.pack("<I", v)
    if kind == U64:
        return struct.pack("<Q", v)
    if kind == STRING:
        return gguf_string(v)
    item_kind, items = v
    return struct.pack("<IQ", item_kind, len(items)) + b"".join(value(item_kind, i) for i in items)


def gguf(kvs: list[tuple[bytes, int, object]], tensors: list[tuple[bytes, tuple[int, ...], int, int]]) -> bytes:
    out = b"GGUF" + struct.pack("<IQQ", 3, len(tensors), len(kvs))
    for key, kind, v in kvs:
        out += gguf_string(key) + struct.pack("<I", kind) + value(kind, v)
    for name, dims, type_id, offset in tensors:
        out += gguf_string(name) + struct.pack("<I", len(dims)) + struct.pack(f"<{len(dims)}Q", *dims)
        out += struct.pack("<IQ", type_id, offset)
    out += b"\0" * (-len(out) % 32)
    return out + b"\0" * 64  # the data of one f32 tensor of 16 elements


VALID = gguf([(b"general.architecture", STRING, b"llama"), (b"general.alignment", U32, 32),
              (b"tokenizer.ggml.tokens", ARRAY, (STRING, [b"a", b"bc", b"<s>"])),
              (b"llama.block_count", U64, 1)],
             [(b"token_embd.weight", (4, 4), 0, 0)])


def header(n_tensors: int, n_kv: int, body: bytes) -> bytes:
    return b"GGUF" + struct.pack("<IQQ", 3, n_tensors, n_kv) + body + b"\0" * 64


CRAFTED = {
    "huge key length": header(0, 1, struct.pack("<Q", 2**63)),
    "huge string value": header(0, 1, gguf_string(b"k") + struct.pack("<IQ", STRING, 2**64 - 1)),
    "huge array length": header(0, 1, gguf_string(b"k") + struct.pack("<IIQ", ARRAY, STRING, 2**62)),
    "huge fixed array": header(0, 1, gguf_string(b"k") + struct.pack("<IIQ", ARRAY, U64, 2**61)),
    "arrays nested 5000 deep": header(0, 1, gguf_string(b"k") + struct.pack("<I", ARRAY)
                                      + struct.pack("<IQ", ARRAY, 1) * 5000),
    "huge tensor count": header(2**60, 0, b""),
    "huge metadata count": header(0, 2**62, b""),
    "huge dimension count": header(1, 0, gguf_string(b"t") + struct.pack("<I", 2**31)),
    "huge tensor name": header(1, 0, struct.pack("<Q", 2**40)),
    "alignment not a power of two": header(0, 1, gguf_string(b"general.alignment") + struct.pack("<II", U32, 48)),
    "unknown value type": header(0, 1, gguf_string(b"k") + struct.pack("<I", 77)),
}


def test_the_reference_file_is_valid(tmp_path):
    path = tmp_path / "ok.gguf"
    path.write_bytes(VALID)
    check_gguf_structure(path)


@pytest.mark.parametrize("case", sorted(CRAFTED))
def test_a_crafted_header_is_a_clear_error(tmp_path, case):
    path = tmp_path / "crafted.gguf"
    path.write_bytes(CRAFTED[case])
    with pytest.raises(ModelLoadError, match=r"not a valid GGUF file|truncated|damaged|corrupt"):
        check_gguf_structure(path)


def test_models_import_of_crafted_files_prints_one_message_and_no_traceback(tmp_path):
    env = dict(os.environ, STROP_HOME=str(tmp_path / "home"))
    for case in ("huge key length", "arrays nested 5000 deep", "huge dimension count", "huge string value"):
        path = tmp_path / (case.replace(" ", "-") + ".gguf")
        path.write_bytes(CRAFTED[case])
        out = subprocess.run([sys.executable, "-m", "strop", "models", "import", str(path)], env=env,
                             capture_output=True, text=True, timeout=120)
        assert out.returncode == 1, (case, out.stderr)
        assert "strop: error:" in out.stderr and str(path) in out.stderr, (case, out.stderr)
        assert "Traceback" not in out.stderr and "MemoryError" not in out.stderr, (case, out.stderr)


_BIG = st.sampled_from([0, 1, 7, 255, 2**16, 2**31 - 1, 2**32, 2**32 + 1, 2**62, 2**63, 2**64 - 1])


@st.composite
def mutated(draw) -> bytes:
    """The valid file with lengths overwritten by hostile values, bytes flipped, or cut short."""
    data = bytearray(VALID)
    for _ in range(draw(st.integers(1, 4))):
        if not data:
            break
        how = draw(st.sampled_from(["u64", "u32", "byte", "cut"]))
        at = draw(st.integers(0, len(data) - 1))
        if how == "u64" and at + 8 <= len(data):
            data[at:at + 8] = struct.pack("<Q", draw(_BIG))
        elif how == "u32" and at + 4 <= len(data):
            data[at:at + 4] = struct.pack("<I", draw(_BIG) & 0xFFFFFFFF)
        elif how == "byte":
            data[at] = draw(st.integers(0, 255))
        else:
            del data[at:]
    return bytes(data)


@st.composite
def synthetic(draw) -> bytes:
    """Headers built from random entries: types, nesting and counts as a crafted file may state them."""
    def entry_value(depth: int):
        kind = draw(st.sampled_from([U8, U32, U64, STRING] + ([ARRAY] if depth < 6 else [])))
        if kind == STRING:
            return kind, draw(st.binary(max_size=20))
        if kind == ARRAY:
            item = draw(st.sampled_from([U32, STRING] + ([ARRAY] if depth < 6 else [])))
            return kind, (item, [entry_value_of(item, depth + 1) for _ in range(draw(st.integers(0, 3)))])
        return kind, draw(st.integers(0, 255))

    def entry_value_of(kind: int, depth: int):
        if kind == STRING:
            return draw(st.binary(max_size=8))
        if kind == ARRAY:
            return (U32, [1] * draw(st.integers(0, 2)))
        return draw(st.integers(0, 255))

    kvs = [(draw(st.binary(max_size=12)), *entry_value(0)) for _ in range(draw(st.integers(0, 5)))]
    tensors = [(draw(st.binary(max_size=10)), tuple(draw(st.lists(st.integers(0, 64), max_size=4))),
                draw(st.integers(0, 40)), draw(st.integers(0, 2**20))) for _ in range(draw(st.integers(0, 3)))]
    data = bytearray(gguf(kvs, tensors))
    if draw(st.booleans()):  # then let one stated count lie
        at = draw(st.sampled_from([8, 16]))
        data[at:at + 8] = struct.pack("<Q", draw(_BIG))
    return bytes(data)


@settings(max_examples=400, deadline=2000, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.one_of(mutated(), synthetic()))
def test_fuzzed_headers_parse_or_raise_model_load_error(tmp_path: Path, data: bytes):
    path = tmp_path / "fuzz.gguf"
    path.write_bytes(data)
    try:
        check_gguf_structure(path)
    except ModelLoadError as err:
        assert str(path) in str(err) and "\n" not in str(err)
