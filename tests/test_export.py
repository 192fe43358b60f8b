"""GGUF export, quantisation and validation, checked against llama.cpp itself."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import gguf
import llama_cpp
import numpy as np
import pytest
import torch
from tokenizers import Tokenizer
from transformers import (AutoModelForCausalLM, AutoTokenizer, GPT2Config, GPT2LMHeadModel, LlamaConfig,
                          LlamaForCausalLM, PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM)

from core.gguf_check import check_gguf_structure as validate_gguf
from distill.export import ExportError, export_gguf, roundtrip_check
from distill.quantize import quantize_gguf
from core.errors import DiskFull, ModelLoadError, ModelNotFound
from core.fim import detect
from tests.fixtures.tiny_model import TinyModel

CODE_PROMPTS = (
    "import os\n\ndef main(argv):\n    ",
    "class Stack:\n    def __init__(self):\n        self.items = []\n\n    def push(self, item):\n",
    "<fim_prefix>def add(a, b):\n<fim_suffix>\n\nprint(add(1, 2))\n<fim_middle>    return",
    "for i in range(10):\n    if i % 2 == 0:\n        print(",
)


@pytest.fixture(scope="module")
def tiny_hf(tiny_fim_model: TinyModel):
    model = AutoModelForCausalLM.from_pretrained(tiny_fim_model.hf_dir)
    return model.eval(), AutoTokenizer.from_pretrained(tiny_fim_model.hf_dir)


def _fields(path: Path) -> dict[str, object]:
    return {name: f.contents() for name, f in gguf.GGUFReader(path).fields.items()}


def _vocab(llm: llama_cpp.Llama) -> dict[str, int]:
    vocab = llama_cpp.llama_model_get_vocab(llm.model)
    return {llama_cpp.llama_vocab_get_text(vocab, i).decode("utf-8", "replace"): i
            for i in range(llm.n_vocab())}


@pytest.mark.parametrize("dtype,atol", [("f32", 1e-4), ("f16", 0.01)])
def test_roundtrip_matches_pytorch(tiny_hf, tmp_path: Path, dtype: str, atol: float) -> None:
    model, tokenizer = tiny_hf
    path = export_gguf(model, tokenizer, tmp_path / f"m-{dtype}.gguf", dtype=dtype)
    report = roundtrip_check(model, tokenizer, path, CODE_PROMPTS, top_k=5, atol=atol)
    assert all(report.top1_agree), report
    assert min(report.topk_overlap) >= 0.8, report
    assert report.passed, report


def test_fixture_gguf_matches_its_hf_model(tiny_fim_model: TinyModel, tiny_hf) -> None:
    model, tokenizer = tiny_hf
    report = roundtrip_check(model, tokenizer, tiny_fim_model.gguf_f32, CODE_PROMPTS, atol=1e-4)
    assert report.passed, report


def test_llama_cpp_tokenizes_like_the_hf_tokenizer(tiny_fim_model: TinyModel, tiny_hf) -> None:
    """Training tokenizes with HF, serving with llama.cpp: the exported vocabulary must agree."""
    _, tokenizer = tiny_hf
    texts = ["def f(x):\n\treturn x  +  1\n\n\n", "    # naïve café ✓ 12345 3.14e-10\r\n",
             "x = {'a': [1, 2]}  # it's they're\n", "if (a<b) and not c:\n        pass"]
    llm = llama_cpp.Llama(str(tiny_fim_model.gguf_f32), vocab_only=True, verbose=False)
    try:
        for text in texts:
            expected = tokenizer(text, add_special_tokens=False)["input_ids"]
            assert llm.tokenize(text.encode(), add_bos=False, special=False) == expected, text
        fim = llm.tokenize(b"<fim_prefix>x<fim_suffix>", add_bos=False, special=True)
        assert fim == tokenizer("<fim_prefix>x<fim_suffix>", add_special_tokens=False)["input_ids"]
    finally:
        llm.close()


# As in Qwen2.5(-Coder)'s tokenizer.json.
_QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                r"|\s*[\r\n]+|\s+(?!\S)|\s+")
_PRE_TOKENIZERS = {
    "starcoder": {"type": "Sequence", "pretokenizers": [
        {"type": "Digits", "individual_digits": True},
        {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}]},
    "qwen2": {"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": _QWEN2_SPLIT}, "behavior": "Isolated", "invert": False},
        {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False}]},
}


@pytest.mark.parametrize("pre", sorted(_PRE_TOKENIZERS))
def test_other_pre_tokenizers_split_like_llama_cpp(tiny_hf, tmp_path: Path, pre: str) -> None:
    """Each pre-tokenizer layout the exporter names must split text exactly as llama.cpp does."""
    _, tiny_tokenizer = tiny_hf
    spec = json.loads(tiny_tokenizer.backend_tokenizer.to_str())
    spec["pre_tokenizer"] = _PRE_TOKENIZERS[pre]
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(json.dumps(spec)),
                                        eos_token="<|endoftext|>")
    model = _random_model(LlamaForCausalLM, LlamaConfig, tokenizer)
    path = export_gguf(model, tokenizer, tmp_path / "m.gguf", dtype="f16")
    assert _fields(path)["tokenizer.ggml.pre"] == pre
    llm = llama_cpp.Llama(str(path), vocab_only=True, verbose=False)
    try:
        for text in ("x = 12345 + 3.14e-10\n", "it's THEY'RE we'LL\r\n\r\n  naïve café ✓\n\n\tpass",
                     "def f(a,b):\n    return a<<b   # 中文\n"):
            assert llm.tokenize(text.encode(), add_bos=False, special=False) == tokenizer(
                text, add_special_tokens=False)["input_ids"], text
    finally:
        llm.close()


def test_roundtrip_check_notices_a_different_model(tiny_fim_model: TinyModel, tiny_hf) -> None:
    model, tokenizer = tiny_hf
    changed = AutoModelForCausalLM.from_pretrained(tiny_fim_model.hf_dir).eval()
    with torch.no_grad():
        changed.model.layers[0].self_attn.k_proj.weight.mul_(1.05)
    report = roundtrip_check(changed, tokenizer, tiny_fim_model.gguf_f32, CODE_PROMPTS, atol=1e-4)
    assert not report.passed
    assert min(report.max_abs_logit_diff) > 1e-3


def test_metadata_carries_fim_ids_and_strop_keys(tiny_fim_model: TinyModel, tiny_hf, tmp_path: Path) -> None:
    model, tokenizer = tiny_hf
    path = export_gguf(model, tokenizer, tmp_path / "m.gguf", dtype="f16",
                       metadata={"lineage": "base>cycle-1", "T_eval": 0.2, "cycle": 1, "note": ""})
    fields = _fields(path)
    tokens = fields["tokenizer.ggml.tokens"]
    expected = {"fim_pre": "<fim_prefix>", "fim_suf": "<fim_suffix>", "fim_mid": "<fim_middle>",
                "fim_pad": "<fim_pad>", "fim_rep": "<repo_name>", "fim_sep": "<file_sep>",
                "eot": "<|endoftext|>"}
    for key, token in expected.items():
        assert tokens[fields[f"tokenizer.ggml.{key}_token_id"]] == token
    assert fields["tokenizer.ggml.pre"] == "gpt-2"
    assert fields["tokenizer.ggml.token_type"][tokens.index("<fim_middle>")] == gguf.TokenType.CONTROL
    assert fields["strop.lineage"] == "base>cycle-1"
    assert fields["strop.T_eval"] == pytest.approx(0.2)
    assert fields["strop.cycle"] == 1
    assert fields["strop.note"] == ""
    assert fields["llama.block_count"] == model.config.num_hidden_layers
    assert fields["llama.attention.head_count_kv"] == model.config.num_key_value_heads
    names = {t.name for t in gguf.GGUFReader(path).tensors}
    assert "output.weight" not in names  # tied: llama.cpp falls back to token_embd.weight
    assert not list(tmp_path.glob(".*.tmp"))


def test_q8_loads_and_serving_detects_starcoder_fim(tiny_fim_model: TinyModel) -> None:
    llm = llama_cpp.Llama(str(tiny_fim_model.gguf_q8), n_ctx=256, verbose=False)
    try:
        vocab = llama_cpp.llama_model_get_vocab(llm.model)
        fim_ids = {"pre": llama_cpp.llama_vocab_fim_pre(vocab), "suf": llama_cpp.llama_vocab_fim_suf(vocab),
                   "mid": llama_cpp.llama_vocab_fim_mid(vocab), "pad": llama_cpp.llama_vocab_fim_pad(vocab),
                   "rep": llama_cpp.llama_vocab_fim_rep(vocab), "sep": llama_cpp.llama_vocab_fim_sep(vocab)}
        fmt = detect(_vocab(llm), fim_ids)
        assert fmt is not None and fmt.name == "starcoder"
        assert llama_cpp.llama_vocab_is_eog(vocab, llm.token_eos())
    finally:
        llm.close()
    q8 = {t.name: t.tensor_type for t in gguf.GGUFReader(tiny_fim_model.gguf_q8).tensors}
    assert q8["blk.0.ffn_down.weight"] == gguf.GGMLQuantizationType.Q8_0


def test_tiny_model_writes_code_then_stops(tiny_fim_model: TinyModel) -> None:
    """The fixture is useful to serving tests: FIM prompts get a few tokens, then end-of-text."""
    cases = [("def area(width, height):\n", "    return ", "\n\nprint(area(2, 3))\n"),
             ("import os\n\ndef main(argv):\n", "    for arg in ", "\n    return 0\n"),
             ("class Stack:\n    def __init__(self):\n", "        self.", "\n\n    def push(self, item):\n"),
             ("def f(x):\n    if x is None:\n", "        ", "\n    return x + 1\n")]
    llm = llama_cpp.Llama(str(tiny_fim_model.gguf_q8), n_ctx=512, verbose=False)
    try:
        vocab = llama_cpp.llama_model_get_vocab(llm.model)
        pre, suf, mid = (llm.tokenize(t.encode(), add_bos=False, special=True)
                         for t in ("<fim_prefix>", "<fim_suffix>", "<fim_middle>"))
        outputs = []
        for head, typed, suffix in cases:
            text = lambda s: llm.tokenize(s.encode(), add_bos=False, special=False)  # noqa: E731
            prompt = pre + text(head) + suf + text(suffix) + mid + text(typed)
            out: list[int] = []
            for tok in llm.generate(prompt, temp=0.0):
                if llama_cpp.llama_vocab_is_eog(vocab, tok) or len(out) > 32:
                    break
                out.append(tok)
            outputs.append(out)
        texts = [llm.detokenize(o).decode("utf-8", "replace") for o in outputs]
    finally:
        llm.close()
    assert sum(len(o) <= 32 for o in outputs) >= 3, texts  # stops by itself
    assert sum(bool(t.strip()) for t in texts) >= 2, texts  # and writes something first


def _random_model(cls, config_cls, tokenizer, **overrides):
    torch.manual_seed(0)
    # initializer_range 0.2: spread-out logits, so top-1 is never a near tie.
    config = config_cls(vocab_size=len(tokenizer), hidden_size=128, intermediate_size=256,
                        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                        max_position_embeddings=256, initializer_range=0.2, **overrides)
    return cls(config).eval()


@pytest.mark.parametrize("cls,config_cls,tied", [
    (LlamaForCausalLM, LlamaConfig, False),  # untied: output.weight is written
    (Qwen2ForCausalLM, Qwen2Config, True),  # q/k/v biases, no rotary permutation
])
def test_roundtrip_other_layouts(tiny_hf, tmp_path: Path, cls, config_cls, tied: bool) -> None:
    _, tokenizer = tiny_hf
    model = _random_model(cls, config_cls, tokenizer, tie_word_embeddings=tied,
                          bos_token_id=0, eos_token_id=0, rms_norm_eps=1e-6, rope_theta=50000.0)
    path = export_gguf(model, tokenizer, tmp_path / "m.gguf", dtype="f32")
    names = {t.name for t in gguf.GGUFReader(path).tensors}
    assert ("output.weight" in names) is (not tied)
    report = roundtrip_check(model, tokenizer, path, CODE_PROMPTS, atol=1e-4)
    assert report.passed, report


def test_export_rejects_unsupported_models(tiny_hf, tmp_path: Path) -> None:
    _, tokenizer = tiny_hf
    gpt2 = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=len(tokenizer)))
    with pytest.raises(ExportError, match="gpt2"):
        export_gguf(gpt2, tokenizer, tmp_path / "g.gguf")
    llama = _random_model(LlamaForCausalLM, LlamaConfig, tokenizer)
    with pytest.raises(ExportError, match="dtype"):
        export_gguf(llama, tokenizer, tmp_path / "g.gguf", dtype="bf16")
    with pytest.raises(ExportError, match="list"):
        export_gguf(llama, tokenizer, tmp_path / "g.gguf",
                    metadata={"bad": [1, 2]})  # type: ignore[dict-item]
    assert list(tmp_path.iterdir()) == []


def test_quantize_q4_k_m_falls_back_on_narrow_rows(tiny_fim_model: TinyModel, tmp_path: Path) -> None:
    """K-quants need rows of 256; the tiny model's 128-wide rows fall back to Q5_0/Q8_0, still valid."""
    out = quantize_gguf(tiny_fim_model.gguf_f32, tmp_path / "m-q4.gguf", "Q4_K_M")
    validate_gguf(out)
    types = {t.name: t.tensor_type for t in gguf.GGUFReader(out).tensors}
    assert types["blk.0.attn_q.weight"] in (gguf.GGMLQuantizationType.Q5_0, gguf.GGMLQuantizationType.Q4_K)
    assert out.stat().st_size < tiny_fim_model.gguf_q8.stat().st_size
    llama_cpp.Llama(str(out), n_ctx=64, verbose=False).close()


def test_quantize_rejects_unknown_type(tiny_fim_model: TinyModel, tmp_path: Path) -> None:
    with pytest.raises(ExportError, match="Q8_0"):
        quantize_gguf(tiny_fim_model.gguf_f32, tmp_path / "x.gguf", "Q3_XYZ")
    assert list(tmp_path.iterdir()) == []


def test_validate_gguf_rejects_damaged_files(tiny_fim_model: TinyModel, tmp_path: Path) -> None:
    validate_gguf(tiny_fim_model.gguf_f32)
    validate_gguf(tiny_fim_model.gguf_q8)
    data = tiny_fim_model.gguf_f32.read_bytes()
    cases = {"truncated.gguf": data[: len(data) // 2], "header-only.gguf": data[:64],
             "garbage.gguf": b"not a gguf file at all" * 100, "empty.gguf": b""}
    for name, content in cases.items():
        (tmp_path / name).write_bytes(content)
        with pytest.raises(ModelLoadError, match=name):
            validate_gguf(tmp_path / name)
    with pytest.raises(ModelNotFound):
        validate_gguf(tmp_path / "missing.gguf")


@pytest.fixture
def full_disk(tmp_path: Path):
    """A 64 KiB tmpfs: a real file system that runs out of space (needs root and mount rights)."""
    mount_dir = tmp_path / "tiny-fs"
    mount_dir.mkdir()
    if shutil.which("mount") is None or subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount_dir)], capture_output=True
    ).returncode != 0:
        pytest.skip("cannot mount a small tmpfs here (needs root); disk-full behaviour untested")
    try:
        yield mount_dir
    finally:
        subprocess.run(["umount", str(mount_dir)], check=True)


def test_disk_full_raises_and_leaves_no_partial_file(
    tiny_hf, tiny_fim_model: TinyModel, full_disk: Path
) -> None:
    model, tokenizer = tiny_hf
    with pytest.raises(DiskFull, match="disk is full"):
        export_gguf(model, tokenizer, full_disk / "m.gguf", dtype="f32")
    assert list(full_disk.iterdir()) == []
    with pytest.raises(DiskFull):
        quantize_gguf(tiny_fim_model.gguf_f32, full_disk / "m-q8.gguf")
    assert list(full_disk.iterdir()) == []


@pytest.mark.slow
def test_copy_tokenizer_roundtrip_on_smollm2(smollm_gguf: Path, tmp_path: Path) -> None:
    """A model that came from a GGUF keeps its exact tokenizer through export (mode b)."""
    source = smollm_gguf
    model = AutoModelForCausalLM.from_pretrained(source.parent, gguf_file=source.name,
                                                 dtype=torch.float32).eval()
    out = export_gguf(model, None, tmp_path / "smollm2-f16.gguf", dtype="f16", tokenizer_source_gguf=source,
                      metadata={"lineage": "SmolLM2-135M-Instruct"})
    src_fields, out_fields = _fields(source), _fields(out)
    for key in ("tokenizer.ggml.tokens", "tokenizer.ggml.merges", "tokenizer.ggml.pre",
                "tokenizer.ggml.eos_token_id", "tokenizer.ggml.bos_token_id"):
        assert out_fields[key] == src_fields[key], key
    tokens = out_fields["tokenizer.ggml.tokens"]
    assert tokens[out_fields["tokenizer.ggml.fim_sep_token_id"]] == "<file_sep>"

    code = ("def fib(n: int) -> int:\n    if n < 2:\n        return n\n"
            "    return fib(n - 1) + fib(n - 2)\n# 12345\t✓")
    original = llama_cpp.Llama(str(source), n_ctx=256, logits_all=True, verbose=False)
    exported = llama_cpp.Llama(str(out), n_ctx=256, logits_all=True, verbose=False)
    try:
        ids = original.tokenize(code.encode(), add_bos=False, special=False)
        assert exported.tokenize(code.encode(), add_bos=False, special=False) == ids
        prompts = [ids[:n] for n in (8, 16, 24, len(ids))]
        for prompt in prompts:
            tops = []
            for llm in (original, exported):
                llm.reset()
                llm.eval(prompt)
                tops.append(int(llm.scores[len(prompt) - 1].argmax()))
            assert tops[0] == tops[1], prompt
    finally:
        original.close()
        exported.close()
    report = roundtrip_check(model, None, out, prompts, atol=0.05)
    assert all(report.top1_agree), report


def test_lora_adapter_gguf_on_the_base_equals_the_merged_model(tiny_hf, tmp_path: Path) -> None:
    """llama.cpp with base GGUF + exported adapter gives the logits of the merged model's GGUF."""
    import copy

    from peft import LoraConfig, get_peft_model

    from distill.export_adapter import export_adapter_gguf

    model, tokenizer = tiny_hf
    base_gguf = export_gguf(model, tokenizer, tmp_path / "base.gguf", dtype="f32")
    peft_model = get_peft_model(copy.deepcopy(model), LoraConfig(
        r=8, lora_alpha=16, target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "down_proj"],
        lora_dropout=0.0, task_type="CAUSAL_LM"))
    torch.manual_seed(0)
    with torch.no_grad():  # a trained-looking adapter: lora_B starts at zero, which would prove nothing
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.05)
    peft_model.save_pretrained(tmp_path / "adapter")
    adapter = export_adapter_gguf(tmp_path / "adapter", model.config, tmp_path / "adapter.gguf")
    fields = _fields(adapter)
    assert fields["general.type"] == "adapter" and fields["adapter.type"] == "lora"
    assert fields["adapter.lora.alpha"] == 16.0
    merged = peft_model.merge_and_unload().eval()
    merged_gguf = export_gguf(merged, tokenizer, tmp_path / "merged.gguf", dtype="f32")

    ids = tokenizer(CODE_PROMPTS[1], add_special_tokens=False)["input_ids"]

    def last_logits(path: Path, **kw) -> np.ndarray:
        llm = llama_cpp.Llama(str(path), n_ctx=256, logits_all=True, verbose=False, **kw)
        try:
            llm.eval(ids)
            return np.asarray(llm.scores[len(ids) - 1])
        finally:
            llm.close()

    base, with_adapter, merged_logits = (last_logits(base_gguf), last_logits(base_gguf, lora_path=str(adapter)),
                                         last_logits(merged_gguf))
    assert np.abs(base - merged_logits).max() > 0.05, "the adapter changes the model"
    assert np.abs(with_adapter - merged_logits).max() < 1e-3 * (1 + np.abs(merged_logits).max())
    with torch.no_grad():
        torch_logits = merged(torch.tensor([ids])).logits[0, -1].numpy()
    assert np.abs(with_adapter - torch_logits).max() < 1e-3 * (1 + np.abs(torch_logits).max())
