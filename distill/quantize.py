"""Quantise an f16/f32 GGUF with llama.cpp's own quantiser (through llama-cpp-python's ctypes binding).

llama.cpp quantises a matrix only when its row length is a multiple of the type's block size (32
for Q8_0/Q4_0, 256 for the K-quants); other tensors get a fallback type chosen by llama.cpp (it logs
"falling back", e.g. Q4_K -> Q5_0), so the output is valid but larger. Real models' dimensions are
multiples of 256; the tiny test model's (128) are not, so only its Q8_0 file is exact to the type.
"""

from __future__ import annotations

import ctypes
import os
import shutil
from pathlib import Path

from distill.atomic import atomic_output
from core.gguf_check import check_gguf_structure
from distill.export import ExportError
from core.errors import DiskFull

# Name → llama_cpp ftype constant name; the names are llama.cpp's `llama-quantize` type names.
QTYPES: dict[str, str] = {
    "F16": "LLAMA_FTYPE_MOSTLY_F16",
    "Q8_0": "LLAMA_FTYPE_MOSTLY_Q8_0",
    "Q6_K": "LLAMA_FTYPE_MOSTLY_Q6_K",
    "Q5_K_M": "LLAMA_FTYPE_MOSTLY_Q5_K_M",
    "Q4_K_M": "LLAMA_FTYPE_MOSTLY_Q4_K_M",
    "Q4_0": "LLAMA_FTYPE_MOSTLY_Q4_0",
}


def quantize_gguf(src: str | os.PathLike[str], dst: str | os.PathLike[str], qtype: str = "Q8_0", *,
                  allow_requantize: bool = False) -> Path:
    """Write `src` quantised to `qtype` (one of QTYPES) at `dst`, atomically. Returns `dst`.
    `allow_requantize`: `src` may itself be quantised (llama.cpp refuses that by default)."""
    import llama_cpp  # serving dependency; imported here so distill imports without it

    src_path, dst_path = Path(src), Path(dst)
    if qtype.upper() not in QTYPES:
        raise ExportError(f"Unknown quantisation type {qtype!r}; choose one of {', '.join(QTYPES)}.")
    check_gguf_structure(src_path)
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, QTYPES[qtype.upper()])
    params.nthread = max(1, os.cpu_count() or 1)
    params.allow_requantize = allow_requantize
    with atomic_output(dst_path) as tmp:
        rc = llama_cpp.llama_model_quantize(str(src_path).encode(), str(tmp).encode(), ctypes.byref(params))
        if rc != 0:
            # llama.cpp reports a failed write only as a non-zero code; a full disk is the usual cause.
            if shutil.disk_usage(dst_path.parent).free < src_path.stat().st_size:
                raise DiskFull(f"Quantising {src_path} to {dst_path} failed and {dst_path.parent} is nearly "
                               "full; free some space and try again.")
            raise ExportError(f"llama.cpp failed to quantise {src_path} to {qtype} (return code {rc}); "
                              "its log above says why. Check that the source is an f16/f32 GGUF.")
    return dst_path


def file_type(path: str | os.PathLike[str]) -> int | None:
    """The GGUF's `general.file_type` (a llama_ftype), or None when it does not say."""
    from distill.export import _open_reader

    field = _open_reader(Path(path)).fields.get("general.file_type")
    return int(field.parts[field.data[0]][0]) if field is not None else None


def precision_control(base: str | os.PathLike[str], qtype: str, dst: str | os.PathLike[str]) -> Path | None:
    """The base re-quantised to the candidates' `qtype` without training, or None when the base
    already has that type. A candidate is exported at `qtype`, so against a base of another type
    part of its gain or loss is the quantisation's (SmolLM2 ships as Q4_1; candidates are Q8_0)."""
    import llama_cpp

    if file_type(base) == getattr(llama_cpp, QTYPES[qtype.upper()]):
        return None
    return quantize_gguf(base, dst, qtype, allow_requantize=True)
