"""Write a merged Hugging Face causal LM to GGUF, check it against PyTorch, and validate GGUF files.

The writer follows llama.cpp's own HF converter (convert_hf_to_gguf.py) for the two architectures
strop trains, `llama` and `qwen2`, but goes through the `gguf` package directly so it runs on a
model object in memory (no checkpoint on disk, no subprocess):

- hyper-parameters under `{arch}.*`, tensors renamed with `gguf.get_tensor_name_map`;
- llama's q/k projections are permuted into llama.cpp's rotary layout (qwen2's are not);
- tied embeddings write no `output.weight` (llama.cpp then reuses `token_embd.weight`);
- the tokenizer either comes from an HF fast byte-level BPE tokenizer, or is copied verbatim from a
  source GGUF (a model that came from a GGUF keeps its exact tokenizer);
- FIM and end-of-turn token ids are always written when the vocabulary has the tokens, because
  serving finds the FIM format through them (server/fim.py);
- `strop.*` keys carry free-form metadata (lineage, T_eval, ...).

Files are written atomically (`distill.atomic`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gguf
import numpy as np
import torch
from tqdm import tqdm

from distill.atomic import atomic_output
from distill.tokenize import adds_bos
from core.errors import ModelLoadError, ModelNotFound, StropError
from core.fim import KNOWN_FORMATS, detect

MetadataValue = str | int | float
ARCHS: dict[str, gguf.MODEL_ARCH] = {"llama": gguf.MODEL_ARCH.LLAMA, "qwen2": gguf.MODEL_ARCH.QWEN2}
_DTYPES = {"f32": (np.float32, gguf.LlamaFileType.ALL_F32), "f16": (np.float16, gguf.LlamaFileType.MOSTLY_F16)}
# End-of-text strings, most preferred first; the FIM middle a model writes ends with one of these.
_EOT_STRINGS = ("<|endoftext|>", "<|eot_id|>", "<|EOT|>", "<EOT>", "<|im_end|>")
_TOKENIZER_PREFIX = "tokenizer."


class ExportError(StropError):
    """A model or tokenizer strop cannot write to GGUF (unsupported architecture, tokenizer, ...)."""


# --- export -------------------------------------------------------------------------------------


def export_gguf(
    model: Any,
    tokenizer: Any,
    out_path: str | os.PathLike[str],
    *,
    dtype: str = "f16",
    tokenizer_source_gguf: str | os.PathLike[str] | None = None,
    metadata: Mapping[str, MetadataValue] | None = None,
) -> Path:
    """Write `model` (a merged LlamaForCausalLM or Qwen2ForCausalLM) to `out_path` as GGUF.

    `tokenizer` is an HF fast tokenizer; it is ignored for the vocabulary when
    `tokenizer_source_gguf` names a GGUF whose `tokenizer.*` keys are copied verbatim instead.
    `dtype` is "f16" or "f32" for matrices (norms and biases stay f32). `metadata` is written under
    `strop.<key>`. Returns the output path.
    """
    out = Path(out_path)
    if dtype not in _DTYPES:
        raise ExportError(f"Unknown GGUF export dtype {dtype!r}: use one of {sorted(_DTYPES)} "
                          "(quantise afterwards with distill.quantize.quantize_gguf).")
    if hasattr(model, "peft_config"):
        raise ExportError("The model still has PEFT (LoRA) wrappers; merge them first with "
                          "`model = model.merge_and_unload()` and export the merged model.")
    config = model.config
    arch = ARCHS.get(config.model_type)
    if arch is None:
        raise ExportError(f"Cannot export architecture {config.model_type!r} to GGUF: strop supports "
                          f"{sorted(ARCHS)}.")
    np_dtype, file_type = _DTYPES[dtype]
    tensors = _plan_tensors(model, arch, np_dtype)

    writer = gguf.GGUFWriter(path=None, arch=gguf.MODEL_ARCH_NAMES[arch])
    writer.add_name(Path(str(getattr(config, "name_or_path", "") or out.stem)).name)
    writer.add_file_type(int(file_type))
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    _add_hparams(writer, config, n_vocab=tensors[0].shape[0])
    if tokenizer_source_gguf is not None:
        _copy_tokenizer(writer, Path(tokenizer_source_gguf), n_vocab=tensors[0].shape[0])
    else:
        _add_hf_tokenizer(writer, tokenizer, n_vocab=tensors[0].shape[0])
    for key, value in (metadata or {}).items():
        _add_metadata(writer, f"strop.{key}", value)
    for t in tensors:
        writer.add_tensor_info(t.name, t.shape, np.dtype(t.dtype), t.nbytes)

    with atomic_output(out) as tmp:
        try:
            writer.write_header_to_file(tmp)
            writer.write_kv_data_to_file()
            writer.write_ti_data_to_file()
            assert writer.fout is not None
            fout = writer.fout[0]
            # The data section, written here rather than by writer.write_tensor_data: numpy's tofile
            # drops the errno of a failed write, and a full disk must be reported as such.
            for t in tqdm(tensors, desc=f"GGUF {out.name}", unit="tensor", leave=False):
                writer.write_padding(fout, fout.tell())
                fout.write(memoryview(t.to_numpy()).cast("B"))
                writer.write_padding(fout, t.nbytes)
            fout.flush()
        finally:
            writer.close()
    return out


@dataclass(frozen=True)
class _PlannedTensor:
    """One output tensor: its GGUF name, and how to produce its data when it is written."""

    name: str
    source: torch.Tensor
    shape: tuple[int, ...]
    dtype: type
    permute_heads: int | None  # llama q/k: number of heads of the rotary permutation

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape)) * np.dtype(self.dtype).itemsize

    def to_numpy(self) -> np.ndarray:
        data = self.source.detach().to(device="cpu", dtype=torch.float32).numpy()
        if self.permute_heads is not None:
            data = rope_permute(data, self.permute_heads)
        return np.ascontiguousarray(data.astype(self.dtype, copy=False))


def rope_permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """HF's rotate-half q/k rows → llama.cpp's interleaved rotary layout (as convert_hf_to_gguf)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _plan_tensors(model: Any, arch: gguf.MODEL_ARCH, matrix_dtype: type) -> list[_PlannedTensor]:
    config = model.config
    name_map = gguf.get_tensor_name_map(arch, config.num_hidden_layers)
    state = model.state_dict()
    # Tied when the output matrix is the embedding itself (whatever the config claims): then
    # llama.cpp reuses token_embd.weight, and writing output.weight would only double the file.
    head, embed = state.get("lm_head.weight"), state["model.embed_tokens.weight"]
    tied = head is None or head.data_ptr() == embed.data_ptr() or torch.equal(head, embed)
    planned: list[_PlannedTensor] = []
    for hf_name, tensor in state.items():
        if hf_name.endswith("rotary_emb.inv_freq") or (tied and hf_name == "lm_head.weight"):
            continue
        gguf_name = name_map.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if gguf_name is None:
            hint = " (LoRA layers must be merged first)" if "lora" in hf_name or "base_layer" in hf_name else ""
            raise ExportError(f"Cannot map tensor {hf_name!r} of the {config.model_type} model to a GGUF "
                              f"name{hint}; only plain LlamaForCausalLM/Qwen2ForCausalLM weights export.")
        permute = None
        if arch == gguf.MODEL_ARCH.LLAMA and hf_name.endswith(("q_proj.weight", "q_proj.bias")):
            permute = config.num_attention_heads
        elif arch == gguf.MODEL_ARCH.LLAMA and hf_name.endswith(("k_proj.weight", "k_proj.bias")):
            permute = config.num_key_value_heads
        out_dtype = matrix_dtype if tensor.ndim >= 2 else np.float32
        planned.append(_PlannedTensor(gguf_name, tensor, tuple(tensor.shape), out_dtype, permute))
    planned.sort(key=lambda t: t.name != "token_embd.weight")  # vocab size is read from the first
    return planned


def _add_hparams(writer: gguf.GGUFWriter, config: Any, *, n_vocab: int) -> None:
    rope = dict(getattr(config, "rope_parameters", None) or {})
    rope_type = rope.get("rope_type", "default")
    if rope_type != "default":
        raise ExportError(f"Rope scaling {rope_type!r} is not supported by strop's GGUF export; "
                          "use a base model with plain rotary embeddings.")
    rope_theta = rope.get("rope_theta", getattr(config, "rope_theta", None))
    if rope_theta is None:
        raise ExportError("The model config has no rope_theta; cannot write llama.cpp rotary settings.")
    n_head = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // n_head
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(n_head)
    writer.add_head_count_kv(getattr(config, "num_key_value_heads", None) or n_head)
    writer.add_rope_freq_base(float(rope_theta))
    writer.add_rope_dimension_count(head_dim)
    writer.add_layer_norm_rms_eps(float(config.rms_norm_eps))
    writer.add_vocab_size(n_vocab)
    if head_dim != config.hidden_size // n_head:
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)


def _add_metadata(writer: gguf.GGUFWriter, key: str, value: MetadataValue) -> None:
    # add_string skips empty strings; add_key_value keeps them.
    if isinstance(value, bool):
        writer.add_bool(key, value)
    elif isinstance(value, int):
        writer.add_int64(key, value)
    elif isinstance(value, float):
        writer.add_float64(key, value)
    elif isinstance(value, str):
        writer.add_key_value(key, value, gguf.GGUFValueType.STRING)
    else:
        raise ExportError(f"Metadata {key!r} has type {type(value).__name__}; only str, int, float "
                          "and bool can be written to GGUF.")


# --- tokenizer ----------------------------------------------------------------------------------


def _special_ids(tokens: Sequence[str], existing: Mapping[str, int] | None = None) -> dict[str, int]:
    """FIM and end-of-text GGUF keys → token ids, from the token strings (existing keys win)."""
    index = {tok: i for i, tok in enumerate(tokens)}
    fmt = detect(index)
    candidates: dict[str, list[str]] = {
        gguf.Keys.Tokenizer.FIM_PRE_ID: [fmt.prefix] if fmt else [],
        gguf.Keys.Tokenizer.FIM_SUF_ID: [fmt.suffix] if fmt else [],
        gguf.Keys.Tokenizer.FIM_MID_ID: [fmt.middle] if fmt else [],
        gguf.Keys.Tokenizer.FIM_PAD_ID: [s for f in KNOWN_FORMATS for s in f.stop if "fim_pad" in s],
        gguf.Keys.Tokenizer.FIM_REP_ID: [f.repo_name for f in KNOWN_FORMATS if f.repo_name],
        gguf.Keys.Tokenizer.FIM_SEP_ID: [f.file_sep for f in KNOWN_FORMATS if f.file_sep],
        gguf.Keys.Tokenizer.EOT_ID: list(_EOT_STRINGS),
    }
    ids: dict[str, int] = {}
    for key, strings in candidates.items():
        if existing and key in existing:
            ids[key] = existing[key]
            continue
        found = next((index[s] for s in strings if s in index), None)
        if found is not None:
            ids[key] = found
    return ids


def _pre_tokenizer_name(spec: Mapping[str, Any]) -> str:
    """llama.cpp's `tokenizer.ggml.pre` for an HF tokenizer.json's pre-tokenizer.

    llama.cpp hard-codes one split regex per name, so only layouts known to split the same way are
    accepted (tests/test_export.py checks each against llama.cpp); anything else must copy its
    tokenizer from a GGUF (tokenizer_source_gguf=).
    """
    pre = spec.get("pre_tokenizer") or {}
    steps = pre.get("pretokenizers", []) if pre.get("type") == "Sequence" else [pre]
    shape = tuple((s.get("type"), s.get("use_regex"), s.get("individual_digits"),
                   (s.get("pattern") or {}).get("Regex"), s.get("behavior")) for s in steps)
    name = _KNOWN_PRE_TOKENIZERS.get(shape)
    if name is None:
        raise ExportError(
            f"Cannot name the pre-tokenizer {json.dumps(pre)[:300]} for llama.cpp; export with "
            "tokenizer_source_gguf= pointing at a GGUF of the same base model to copy its tokenizer."
        )
    return name


_QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                r"|\s*[\r\n]+|\s+(?!\S)|\s+")
# (type, use_regex, individual_digits, split regex, split behaviour) per step → llama.cpp name.
_KNOWN_PRE_TOKENIZERS: dict[tuple[tuple[Any, ...], ...], str] = {
    (("ByteLevel", True, None, None, None),): "gpt-2",
    (("Digits", None, True, None, None), ("ByteLevel", True, None, None, None)): "starcoder",
    (("Split", None, None, _QWEN2_SPLIT, "Isolated"), ("ByteLevel", False, None, None, None)): "qwen2",
}


def _add_hf_tokenizer(writer: gguf.GGUFWriter, tokenizer: Any, *, n_vocab: int) -> None:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise ExportError(f"{type(tokenizer).__name__} is not an HF fast tokenizer; strop exports only "
                          "byte-level BPE fast tokenizers (or copies one with tokenizer_source_gguf=).")
    spec = json.loads(backend.to_str())
    model = spec["model"]
    if model.get("type") != "BPE" or (spec.get("decoder") or {}).get("type") != "ByteLevel":
        raise ExportError("Only byte-level BPE tokenizers export to GGUF here; use tokenizer_source_gguf=.")
    pre = _pre_tokenizer_name(spec)
    vocab = backend.get_vocab(with_added_tokens=True)
    if max(vocab.values()) >= n_vocab:
        raise ExportError(f"The tokenizer has ids up to {max(vocab.values())} but the model's embedding "
                          f"has only {n_vocab} rows; resize the embeddings before exporting.")
    tokens = [f"[PAD{i}]" for i in range(n_vocab)]
    types = [int(gguf.TokenType.UNUSED)] * n_vocab
    for tok, i in vocab.items():
        tokens[i], types[i] = tok, int(gguf.TokenType.NORMAL)
    for added in spec.get("added_tokens", []):
        types[added["id"]] = int(gguf.TokenType.CONTROL if added["special"] else gguf.TokenType.USER_DEFINED)
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]

    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    eos = tokenizer.eos_token_id
    if eos is None:
        raise ExportError("The tokenizer has no eos token; set tokenizer.eos_token before exporting.")
    bos = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else eos
    writer.add_bos_token_id(bos)
    writer.add_eos_token_id(eos)
    if tokenizer.pad_token_id is not None:
        writer.add_pad_token_id(tokenizer.pad_token_id)
    probe = tokenizer("a")["input_ids"]
    writer.add_add_bos_token(adds_bos(tokenizer))  # the rule training lays prompts out with
    writer.add_add_eos_token(bool(probe) and probe[-1] == eos and len(probe) > 1)
    for key, tid in _special_ids(tokens).items():
        writer.add_uint32(key, tid)


def _field_value(field: gguf.ReaderField) -> Any:
    """A reader field's value in the form GGUFWriter.add_key_value takes (strings kept as bytes)."""
    main = field.types[0]
    if main == gguf.GGUFValueType.ARRAY:
        if field.types[-1] == gguf.GGUFValueType.STRING:
            return [bytes(field.parts[i]) for i in field.data]
        return [v for i in field.data for v in field.parts[i].tolist()]
    if main == gguf.GGUFValueType.STRING:
        return bytes(field.parts[-1])
    return field.parts[-1].tolist()[0]


def _copy_tokenizer(writer: gguf.GGUFWriter, source: Path, *, n_vocab: int) -> None:
    reader = _open_reader(source)
    fields = {name: f for name, f in reader.fields.items() if name.startswith(_TOKENIZER_PREFIX)}
    if gguf.Keys.Tokenizer.LIST not in fields:
        raise ExportError(f"{source} has no tokenizer ({gguf.Keys.Tokenizer.LIST}); cannot copy it.")
    tokens = fields[gguf.Keys.Tokenizer.LIST].contents()
    if len(tokens) != n_vocab:
        raise ExportError(f"{source} has {len(tokens)} tokens but the model's embedding has {n_vocab} "
                          "rows; the tokenizer must come from the model's own base GGUF.")
    existing: dict[str, int] = {}
    for name, f in fields.items():
        sub_type = f.types[-1] if f.types[0] == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(name, _field_value(f), f.types[0], sub_type=sub_type)
        if f.types[0] != gguf.GGUFValueType.ARRAY and isinstance(f.contents(), int):
            existing[name] = f.contents()
    for key, tid in _special_ids(tokens, existing).items():
        if key not in existing:
            writer.add_uint32(key, tid)


# --- validation ---------------------------------------------------------------------------------


def _open_reader(path: Path) -> gguf.GGUFReader:
    if not path.is_file():
        raise ModelNotFound(f"No GGUF file at {path}; check the path (or the registry entry pointing to it).")
    try:
        return gguf.GGUFReader(path)
    # GGUFReader parses untrusted bytes and fails with many exception types (ValueError, KeyError,
    # IndexError, struct errors, numpy errors); each means the same thing here.
    except Exception as exc:  # noqa: BLE001
        raise ModelLoadError(
            f"{path} is not a readable GGUF file ({type(exc).__name__}: {exc}); it is corrupt, truncated "
            "or not a GGUF. Re-export or re-download it."
        ) from exc


# --- round trip ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class RoundTripReport:
    """PyTorch vs llama.cpp on the same token ids, last position's logits, one entry per prompt."""

    top1_agree: tuple[bool, ...]
    topk_overlap: tuple[float, ...]  # |top-k(torch) ∩ top-k(gguf)| / k
    max_abs_logit_diff: tuple[float, ...]
    atol: float
    passed: bool


def roundtrip_check(
    model: Any,
    tokenizer: Any,
    gguf_path: str | os.PathLike[str],
    prompts: Sequence[str | Sequence[int]],
    *,
    top_k: int = 5,
    atol: float = 0.05,
) -> RoundTripReport:
    """Run each prompt's token ids through `model` and through llama.cpp on `gguf_path`.

    A prompt is a string (encoded with `tokenizer`, specials parsed) or a list of token ids. Passes
    when every prompt's top-1 token agrees and no logit differs by more than `atol` times the
    PyTorch logits' standard deviation, a scale-free bound. Measured: the tiny test model's f32 file
    within 2e-6 and its f16 file within 1e-3; SmolLM2-135M (30 layers) in f16 within ~1.5e-2. A
    wrong tensor layout is off by order 1.
    """
    import llama_cpp  # serving dependency; imported here so export works without it

    id_lists = [list(p) if not isinstance(p, str) else tokenizer(p, add_special_tokens=False)["input_ids"]
                for p in prompts]
    n_ctx = max(len(ids) for ids in id_lists) + 8
    # An f32 KV cache (llama.cpp's default is f16) so that only the file's own precision shows.
    llm = llama_cpp.Llama(str(gguf_path), n_ctx=n_ctx, n_batch=n_ctx, logits_all=True, verbose=False,
                          type_k=llama_cpp.GGML_TYPE_F32, type_v=llama_cpp.GGML_TYPE_F32,
                          n_threads=max(1, min(4, os.cpu_count() or 1)))
    agree: list[bool] = []
    overlap: list[float] = []
    diffs: list[float] = []
    ok = True
    try:
        for ids in id_lists:
            with torch.no_grad():
                ref = model(torch.tensor([ids])).logits[0, -1].float().numpy()
            llm.reset()
            llm.eval(ids)
            got = np.asarray(llm.scores[len(ids) - 1], dtype=np.float32)
            ref_top = np.argsort(-ref)[:top_k]
            got_top = np.argsort(-got)[:top_k]
            diff = float(np.max(np.abs(ref - got)))
            agree.append(bool(ref_top[0] == got_top[0]))
            overlap.append(len(set(ref_top.tolist()) & set(got_top.tolist())) / top_k)
            diffs.append(diff)
            ok = ok and agree[-1] and diff <= atol * float(np.std(ref))
    finally:
        llm.close()
    return RoundTripReport(tuple(agree), tuple(overlap), tuple(diffs), atol, ok)
