"""Training checkpoints that survive kill -9.

A checkpoint is a directory `checkpoints/step-00000012/` holding the adapter weights, the optimizer
and scheduler states, the RNG states (one per training process) and the run's progress. Only the
main process writes it; every process reads it on resumption (so a multi-node run keeps its output
directory on a shared file system). It is written under a temporary name
and renamed into place, so a directory with a final name is always complete; leftovers of an
interrupted write are removed the next time the run starts.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from distill.atomic import TMP_PREFIX, atomic_dir
from core.errors import StropError

_STEP_DIR = re.compile(r"^step-(\d{8})$")
KEEP_CHECKPOINTS = 2  # the newest, plus one in case the newest's files are damaged afterwards


@dataclass(frozen=True)
class Progress:
    """Where a run stands: the next optimizer step to take indexes the deterministic step plan, so
    it is also the position in the data order."""

    step: int
    train_tokens: int
    train_seconds: float
    losses: list[float]
    fingerprint: str


def save_checkpoint(ckpt_root: Path, adapter: dict[str, torch.Tensor], trainer_state: dict,
                    progress: Progress) -> Path:
    """Write one checkpoint (called on the main process only). `adapter` is the LoRA state dict and
    `trainer_state` {"optimizer", "scheduler", "rng": [one RNG state per process]}, gathered by
    the caller (under DDP every process holds the same adapter and optimizer state; the RNG states
    are per process)."""
    dest = Path(ckpt_root) / f"step-{progress.step:08d}"
    with atomic_dir(dest, what=f"checkpoint of step {progress.step}") as tmp:
        save_file({k: v.contiguous() for k, v in adapter.items()}, str(tmp / "adapter.safetensors"))
        with open(tmp / "trainer_state.pt", "wb") as f:  # a Python file object: ENOSPC stays visible
            torch.save(trainer_state, f)
        (tmp / "progress.json").write_text(json.dumps(progress.__dict__), encoding="utf-8")
    prune(ckpt_root)
    return dest


def rng_state() -> dict:
    """This process's RNG states (dropout draws from them)."""
    rng = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    return rng


def set_rng_state(rng: dict) -> None:
    torch.set_rng_state(rng["torch"])
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])


def checkpoints(ckpt_root: Path) -> list[Path]:
    """Complete checkpoints, oldest first."""
    root = Path(ckpt_root)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and _STEP_DIR.match(p.name)]
    return sorted(found, key=lambda p: p.name)


def prune(ckpt_root: Path, keep: int = KEEP_CHECKPOINTS) -> None:
    """Remove all but the newest `keep` checkpoints, and leftovers of interrupted writes."""
    root = Path(ckpt_root)
    for old in checkpoints(root)[:-keep]:
        trash = root / f"{TMP_PREFIX}{old.name}.trash"
        os.replace(old, trash)  # out of sight first: a kill during rmtree must not leave half a checkpoint
        shutil.rmtree(trash, ignore_errors=True)
    remove_leftovers(root)


def remove_leftovers(directory: Path) -> None:
    """Delete temporaries of writes that a kill interrupted (`distill.atomic`'s `.tmp-` names)."""
    directory = Path(directory)
    if directory.is_dir():
        for leftover in directory.glob(f"{TMP_PREFIX}*"):
            if leftover.is_dir():
                shutil.rmtree(leftover, ignore_errors=True)
            else:
                leftover.unlink(missing_ok=True)


def load_checkpoint(ckpt: Path, fingerprint: str) -> tuple[Progress, dict[str, torch.Tensor], dict]:
    """(progress, adapter state dict, trainer state) of a checkpoint of this run; the caller puts
    them into its (possibly wrapped) model and optimizer."""
    progress = Progress(**json.loads((ckpt / "progress.json").read_text(encoding="utf-8")))
    if progress.fingerprint != fingerprint:
        raise StropError(
            f"{ckpt.parent} holds checkpoints of a different training run (other examples, base model "
            f"or config), so training cannot resume from {ckpt.name}. Delete {ckpt.parent} to start "
            "over, or train into another output directory.")
    with open(ckpt / "trainer_state.pt", "rb") as f:
        state = torch.load(f, weights_only=True)
    if isinstance(state["rng"], dict):  # written by a one-process run before per-process RNG states
        state["rng"] = [state["rng"]]
    return progress, load_file(str(ckpt / "adapter.safetensors")), state


def load_adapter(model: Any, adapter: dict[str, torch.Tensor], ckpt: Path) -> None:
    """Put a checkpoint's LoRA weights into a peft model (unwrapped)."""
    from peft import set_peft_model_state_dict  # peft pulls in transformers: only when training

    result = set_peft_model_state_dict(model, adapter)
    mismatched = [k for k in [*result.unexpected_keys, *result.missing_keys] if "lora_" in k]
    if mismatched:
        raise StropError(f"Checkpoint {ckpt}'s adapter does not match the model's LoRA layers "
                         f"({mismatched[:3]}); delete {ckpt.parent} to start over.")
