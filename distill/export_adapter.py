"""Write a trained LoRA adapter (peft's adapter directory) to GGUF, for llama.cpp's `lora_path`.

A few MiB instead of a whole model: llama.cpp applies it on top of the exact base GGUF it was
trained from (the manifest's `parent`). The layout follows llama.cpp's own convert_lora_to_gguf.py,
written with the `gguf` package as distill/export.py writes whole models:

- `general.type = adapter`, `adapter.type = lora`, `adapter.lora.alpha` (llama.cpp scales by
  alpha / rank, the rank read from the tensors, as peft does without rsLoRA);
- for each adapted matrix `W` (GGUF name `blk.N.attn_q.weight`, ...), `<name>.lora_a` = lora_A
  ([rank, in]) and `<name>.lora_b` = lora_B ([out, rank]), in f32;
- llama's q/k rows are permuted into llama.cpp's rotary layout, as in the model export: the
  permutation acts on the output rows, so it applies to lora_B.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import gguf
import numpy as np
from safetensors.numpy import load_file

from distill.atomic import atomic_output
from distill.export import ARCHS, ExportError, rope_permute

_PEFT_PREFIX = "base_model.model."


def export_adapter_gguf(adapter_dir: str | os.PathLike[str], base_config: Any,
                        out_path: str | os.PathLike[str]) -> Path:
    """`adapter_dir`: what peft's `save_pretrained` wrote (adapter_config.json and
    adapter_model.safetensors); `base_config`: the base model's transformers config."""
    adapter_dir, out = Path(adapter_dir), Path(out_path)
    try:
        adapter_cfg = json.loads((adapter_dir / "adapter_config.json").read_text())
        weights = load_file(str(adapter_dir / "adapter_model.safetensors"))
    except (OSError, ValueError) as err:
        raise ExportError(f"{adapter_dir} is not a readable peft LoRA adapter ({err}); train again to rewrite it.") from err
    if adapter_cfg.get("peft_type") != "LORA" or adapter_cfg.get("use_rslora") or adapter_cfg.get("use_dora"):
        raise ExportError(f"{adapter_dir} holds a {adapter_cfg.get('peft_type')} adapter (rsLoRA/DoRA: "
                          f"{adapter_cfg.get('use_rslora')}/{adapter_cfg.get('use_dora')}); llama.cpp loads plain LoRA only.")
    arch = ARCHS.get(base_config.model_type)
    if arch is None:
        raise ExportError(f"Cannot export an adapter of architecture {base_config.model_type!r}; strop supports "
                          f"{sorted(ARCHS)}.")
    name_map = gguf.get_tensor_name_map(arch, base_config.num_hidden_layers)
    tensors: dict[str, np.ndarray] = {}
    for key, value in sorted(weights.items()):
        if not key.startswith(_PEFT_PREFIX) or not key.endswith((".lora_A.weight", ".lora_B.weight")):
            raise ExportError(f"Unexpected tensor {key!r} in {adapter_dir}: only LoRA A/B matrices export "
                              "(train without modules_to_save or embedding adapters).")
        module, part = key[len(_PEFT_PREFIX):].rsplit(".lora_", 1)
        base_name = name_map.get_name(module + ".weight", try_suffixes=(".weight",))
        if base_name is None:
            raise ExportError(f"Cannot map the adapted layer {module!r} to a GGUF tensor name.")
        data = value.astype(np.float32)
        if part.startswith("B") and arch == gguf.MODEL_ARCH.LLAMA and module.endswith("q_proj"):
            data = rope_permute(data, base_config.num_attention_heads)
        elif part.startswith("B") and arch == gguf.MODEL_ARCH.LLAMA and module.endswith("k_proj"):
            data = rope_permute(data, base_config.num_key_value_heads)
        tensors[f"{base_name}.lora_{part[0].lower()}"] = np.ascontiguousarray(data)
    if not tensors:
        raise ExportError(f"{adapter_dir} holds no LoRA matrices.")

    writer = gguf.GGUFWriter(path=None, arch=gguf.MODEL_ARCH_NAMES[arch])
    writer.add_type(gguf.GGUFType.ADAPTER)
    writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
    writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, float(adapter_cfg["lora_alpha"]))
    for name, data in tensors.items():
        writer.add_tensor(name, data)
    with atomic_output(out) as tmp:
        try:
            writer.write_header_to_file(tmp)
            writer.write_kv_data_to_file()
            writer.write_tensors_to_file()
        finally:
            writer.close()
    return out
