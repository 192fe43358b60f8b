"""Training checkpoints that survive kill -9, and atomic directories for training's outputs.

A checkpoint is a directory `checkpoints/step-00000012/` holding the adapter weights, the optimizer
and scheduler states, the RNG states and the run's progress. It is written under a temporary name
and renamed into place, so a directory with a final name is always complete; leftovers of an
interrupted write are removed the next time the run starts.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from server.errors import DiskFull, StropError

_STEP_DIR = re.compile(r"^step-(\d{8})$")
_TMP_PREFIX = ".tmp-"
KEEP_CHECKPOINTS = 2  # the newest, plus one in case the newest's files are damaged afterwards


def _is_disk_full(exc: BaseException) -> bool:
    """ENOSPC/EDQUOT anywhere in the exception chain. torch.save reports it as a RuntimeError whose
    context is the OSError; safetensors (Rust) only in its message."""
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        if isinstance(cur, OSError) and cur.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if "No space left on device" in str(cur) or "os error 28" in str(cur):
            return True
        cur = cur.__cause__ or cur.__context__
    return False


def _fsync_tree(root: Path) -> None:
    for path in sorted(root.rglob("*")):
        if path.is_file():
            with open(path, "rb") as f:
                os.fsync(f.fileno())


@contextmanager
def atomic_dir(dest: Path, *, what: str) -> Iterator[Path]:
    """Yield a temporary directory beside `dest`; on success it replaces `dest` in one rename.
    A full disk becomes DiskFull and leaves `dest` as it was. `what` names the artifact in errors."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.parent / f"{_TMP_PREFIX}{dest.name}.{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
        _fsync_tree(tmp)
        if dest.exists():
            # A directory cannot be renamed over a non-empty one: move the old one aside first.
            old = dest.parent / f"{_TMP_PREFIX}{dest.name}.{os.getpid()}.old"
            shutil.rmtree(old, ignore_errors=True)
            os.replace(dest, old)
            os.replace(tmp, dest)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, dest)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if _is_disk_full(exc):
            free_mib = shutil.disk_usage(dest.parent).free / 2**20
            raise DiskFull(
                f"Saving the {what} to {dest} failed: the disk is full ({free_mib:.0f} MiB free). "
                f"Free some space and run training again; it resumes from its last checkpoint.") from exc
        raise


def write_json_atomic(path: Path, data: Any) -> None:
    path = Path(path)
    tmp = path.parent / f"{_TMP_PREFIX}{path.name}.{os.getpid()}"
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        if _is_disk_full(exc):
            raise DiskFull(f"Writing {path} failed: the disk is full. Free some space and run "
                           "training again; it resumes from its last checkpoint.") from exc
        raise


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
    from peft import get_peft_model_state_dict  # peft pulls in transformers: only when training

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
        trash = root / f"{_TMP_PREFIX}{old.name}.trash"
        os.replace(old, trash)  # out of sight first: a kill during rmtree must not leave half a checkpoint
        shutil.rmtree(trash, ignore_errors=True)
    remove_leftovers(root)


def remove_leftovers(directory: Path) -> None:
    """Delete temporaries of writes that a kill interrupted (only this module's `.tmp-` names)."""
    directory = Path(directory)
    if directory.is_dir():
        for leftover in directory.glob(f"{_TMP_PREFIX}*"):
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
