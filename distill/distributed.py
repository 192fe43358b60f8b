"""The `accelerate` side of training: the Accelerator for this process, and the collective steps the
training loop needs (summing a step's loss, gathering checkpoint state, the model to save).

One process, DDP or FSDP, chosen by `[train] distributed` and by how many processes the launch
started (WORLD_SIZE, set by torchrun / `accelerate launch` / distill/launch.py). Under DDP every
process holds the whole adapter and optimizer state, so the main process saves its own copy;
under FSDP they are sharded, and torch.distributed.checkpoint's full-state helpers gather them.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import torch

from core.errors import StropError
from distill.checkpoint import rng_state


def world_size() -> int:
    """Processes of the launch this process belongs to (1 outside a distributed launch)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def make_accelerator(cfg: Any, runtime: Any) -> Any:
    """The Accelerator for this process: the CPU (gloo between processes) in fp32, or CUDA with bf16
    mixed precision (fp32 master weights); FSDP when asked for and there are several processes."""
    from accelerate import Accelerator

    world = world_size()
    if world > 1 and cfg.distributed == "none":
        raise StropError(f"Training runs in {world} processes (WORLD_SIZE={world}) but [train] distributed "
                         "= \"none\"; set it to auto, ddp or fsdp, or launch one process.")
    if world > 1 and cfg.distributed == "fsdp" and runtime.device != "cuda":
        # accelerate shards with FSDP on GPUs only (on a CPU it would silently run DDP)
        raise StropError("[train] distributed = \"fsdp\" needs CUDA GPUs, and training runs on the CPU; "
                         "use distributed = \"ddp\" (or auto) on a CPU.")
    kwargs: dict[str, Any] = {}
    if world > 1 and cfg.distributed == "fsdp":
        from accelerate.utils import FullyShardedDataParallelPlugin

        kwargs["fsdp_plugin"] = FullyShardedDataParallelPlugin(
            fsdp_version=2, auto_wrap_policy="transformer_based_wrap", state_dict_type="FULL_STATE_DICT",
            reshard_after_forward=True)
    mixed = "bf16" if runtime.autocast_dtype is not None else "no"
    return Accelerator(cpu=runtime.device == "cpu", mixed_precision=mixed, **kwargs)


def _is_fsdp(accelerator: Any) -> bool:
    from accelerate.utils import DistributedType

    return accelerator.distributed_type == DistributedType.FSDP


def sum_over_processes(accelerator: Any, loss: float, tokens: int) -> tuple[float, int]:
    """A step's loss and token count summed over the processes (`accelerator.gather`); every
    process gets the totals."""
    if accelerator.num_processes == 1:
        return loss, tokens
    mine = torch.tensor([[loss, float(tokens)]], dtype=torch.float64, device=accelerator.device)
    every = accelerator.gather(mine).cpu()
    return float(every[:, 0].sum()), int(every[:, 1].sum())


def _full_state_options():
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, cpu_offload=True)


def checkpoint_state(accelerator: Any, model: Any, optimizer: Any, scheduler: Any) -> tuple[dict, dict]:
    """(LoRA state dict, {"optimizer", "scheduler", "rng": [per process]}) for a checkpoint. A
    collective: every process calls it; only the main process's answer is complete under FSDP."""
    from accelerate.utils import gather_object
    from peft import get_peft_model_state_dict

    inner = accelerator.unwrap_model(model)
    if _is_fsdp(accelerator):
        from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict

        full = get_model_state_dict(model, options=_full_state_options())
        adapter = get_peft_model_state_dict(inner, state_dict=full, save_embedding_layers=False) if full else {}
        optim = get_optimizer_state_dict(model, optimizer.optimizer, options=_full_state_options())
    else:
        adapter = get_peft_model_state_dict(inner, save_embedding_layers=False)
        optim = optimizer.state_dict()
    adapter = {k: v.detach().to("cpu") for k, v in adapter.items()}
    rngs = gather_object([rng_state()])
    return adapter, {"optimizer": optim, "scheduler": scheduler.state_dict(), "rng": rngs}


def load_optimizer_state(accelerator: Any, model: Any, optimizer: Any, saved: dict) -> None:
    if _is_fsdp(accelerator):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

        set_optimizer_state_dict(model, optimizer.optimizer, saved,
                                 options=StateDictOptions(full_state_dict=True))
    else:
        optimizer.load_state_dict(saved)


def unwrapped_for_saving(accelerator: Any, model: Any, rebuild: Callable[[], Any]) -> Any:
    """The trained peft model, whole, on the main process (a collective under FSDP: the shards are
    gathered into a freshly built copy of the model, `rebuild()`)."""
    if not _is_fsdp(accelerator):
        return accelerator.unwrap_model(model)
    from peft import get_peft_model_state_dict, set_peft_model_state_dict
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    full = get_model_state_dict(model, options=_full_state_options())
    if not accelerator.is_main_process:
        return None
    fresh = rebuild()
    adapter = get_peft_model_state_dict(accelerator.unwrap_model(model), state_dict=full,
                                        save_embedding_layers=False)
    set_peft_model_state_dict(fresh, adapter)
    return fresh
