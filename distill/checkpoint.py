"""Training checkpoints that survive kill -9.

A checkpoint is a directory `checkpoints/step-00000012/` holding the adapter weights, the optimizer
and scheduler states, the RNG states and the run's progress. It is written under a temporary name
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


def save_checkpoint(ckpt_root: Path, model: Any, optimizer: torch.optim.Optimizer,
                    scheduler: Any, progress: Progress) -> Path:
    from peft import (
        get_peft_model_state_dict,  # peft pulls in transformers: only when training
    )

    dest = Path(ckpt_root) / f"step-{progress.step:08d}"
    with atomic_dir(dest, what=f"checkpoint of step {progress.step}") as tmp:
        adapter = get_peft_model_state_dict(model, save_embedding_layers=False)
        save_file(adapter, str(tmp / "adapter.safetensors"))
        rng = {"torch": torch.get_rng_state()}
        if torch.cuda.is_available():
            rng["cuda"] = torch.cuda.get_rng_state_all()
        with open(tmp / "trainer_state.pt", "wb") as f:  # a Python file object: ENOSPC stays visible
            torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                        "rng": rng}, f)
        (tmp / "progress.json").write_text(json.dumps(progress.__dict__), encoding="utf-8")
    prune(ckpt_root)
    return dest


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


def load_checkpoint(ckpt: Path, model: Any, optimizer: torch.optim.Optimizer, scheduler: Any,
                    fingerprint: str) -> Progress:
    """Restore everything a checkpoint holds into the given objects; returns the progress."""
    from peft import set_peft_model_state_dict

    progress = Progress(**json.loads((ckpt / "progress.json").read_text(encoding="utf-8")))
    if progress.fingerprint != fingerprint:
        raise StropError(
            f"{ckpt.parent} holds checkpoints of a different training run (other examples, base model "
            f"or config), so training cannot resume from {ckpt.name}. Delete {ckpt.parent} to start "
            "over, or train into another output directory.")
    result = set_peft_model_state_dict(model, load_file(str(ckpt / "adapter.safetensors")))
    mismatched = [k for k in [*result.unexpected_keys, *result.missing_keys] if "lora_" in k]
    if mismatched:
        raise StropError(f"Checkpoint {ckpt}'s adapter does not match the model's LoRA layers "
                         f"({mismatched[:3]}); delete {ckpt.parent} to start over.")
    with open(ckpt / "trainer_state.pt", "rb") as f:
        state = torch.load(f, weights_only=True)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["rng"]["torch"])
    if "cuda" in state["rng"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["rng"]["cuda"])
    return progress
