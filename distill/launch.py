"""How the train stage runs: in this process, as N processes strop starts itself, or as part of an
external `accelerate launch` / `torchrun` it was started under.

- One process (the default on CPU, and with one GPU): `train()` here.
- Several (`[train] processes = N`, or one per visible CUDA GPU): the stage's inputs go to disk
  (out/launch/examples.jsonl and spec.json) and `python -m torch.distributed.run --standalone
  --nproc_per_node N -m distill.train_worker spec.json` trains; its outputs are the one-process
  run's (out/adapter, out/merged, out/train_result.json, out/checkpoints), so the cycle resumes the
  same way. torchrun dies with strop (PR_SET_PDEATHSIG), and each worker with torchrun, so a
  kill -9 of the cycle leaves no training running behind it.
- Under an external launch (WORLD_SIZE > 1): rank 0 runs the cycle; the other ranks run
  `follow()`, which waits for rank 0's train stage to send them its inputs (a broadcast over the
  process group) and trains alongside it; `release()` ends them when rank 0's cycle ends.
"""

from __future__ import annotations

import ctypes
import dataclasses
import json
import os
import signal
import subprocess
import sys
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

from core.errors import StropError
from distill.atomic import write_json_atomic
from distill.distributed import world_size
from distill.records import write_jsonl
from distill.tokenize import TrainExample

# Followers wait in a broadcast while rank 0 harvests and samples (hours on a big repository).
FOLLOW_TIMEOUT = timedelta(hours=24)
_PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """Linux: this process gets SIGKILL when its parent dies (no orphaned training after a kill -9).
    Through libc's prctl: neither the standard library nor torch exposes it."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def processes_for(cfg: Any) -> int:
    """How many training processes strop starts: [train] processes, else one per visible CUDA GPU."""
    if cfg.distributed == "none":
        return 1
    if cfg.processes is not None:
        return cfg.processes
    import torch

    return max(1, torch.cuda.device_count())


def config_to_json(cfg: Any) -> dict:
    return dataclasses.asdict(cfg)


def config_from_json(data: dict) -> Any:
    from distill.train import TrainConfig

    return TrainConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})


def run_train(base: Path | str, examples: Sequence[TrainExample], out_dir: Path | str, cfg: Any, *,
              progress: bool = True) -> Any:
    """The train stage: `distill.train.train` in whichever way the machine and the config ask for.
    Returns its TrainResult."""
    from distill.train import train

    if world_size() > 1:  # under an external launch, as rank 0 (the followers are in follow())
        _broadcast({"base": str(base), "examples": [dataclasses.asdict(e) for e in examples],
                    "out": str(out_dir), "config": config_to_json(cfg)})
        return train(base, examples, out_dir, cfg, progress=progress)
    n = processes_for(cfg)
    if n == 1:
        return train(base, examples, out_dir, cfg, progress=progress)
    return launch(base, examples, out_dir, cfg, n, progress=progress)


def launch(base: Path | str, examples: Sequence[TrainExample], out_dir: Path | str, cfg: Any, n: int, *,
           progress: bool = True) -> Any:
    """Train in `n` processes started by torchrun on this machine; returns the TrainResult."""
    from distill.train import TrainResult

    out = Path(out_dir)
    inputs = out / "launch"
    write_jsonl(inputs / "examples.jsonl", examples)
    spec = inputs / "spec.json"
    write_json_atomic(spec, {"base": str(base), "examples": str(inputs / "examples.jsonl"), "out": str(out),
                             "config": config_to_json(cfg), "progress": progress})
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={n}",
           "-m", "distill.train_worker", str(spec)]
    done = subprocess.run(cmd, preexec_fn=die_with_parent, check=False)
    if done.returncode != 0:
        raise StropError(f"Training in {n} processes failed (torchrun exit status {done.returncode}); the "
                         "workers' messages are above. Set [train] processes = 1 to train in one process.")
    return TrainResult.from_json(json.loads((out / "train_result.json").read_text(encoding="utf-8")))


# --- joining an external launch ------------------------------------------------------------------


def is_follower() -> bool:
    """A non-zero rank of an external `accelerate launch`/`torchrun` of `strop distill`."""
    return world_size() > 1 and rank() != 0


def _process_group() -> None:
    import torch
    import torch.distributed as tdist

    if not tdist.is_initialized():
        backend = "cpu:gloo,cuda:nccl" if torch.cuda.is_available() else "gloo"
        tdist.init_process_group(backend=backend, timeout=FOLLOW_TIMEOUT)


def _broadcast(message: dict | None) -> dict | None:
    import torch.distributed as tdist

    _process_group()
    box = [message]
    tdist.broadcast_object_list(box, src=0)
    return box[0]


def follow() -> int:
    """Train whatever rank 0's train stages send, until rank 0's cycle ends."""
    from distill.train import train

    while (spec := _broadcast(None)) is not None:
        examples = [TrainExample(**e) for e in spec["examples"]]
        train(spec["base"], examples, spec["out"], config_from_json(spec["config"]), progress=False)
    return 0


def release() -> None:
    """Rank 0, when its cycle ends: the followers stop waiting."""
    if world_size() > 1 and rank() == 0:
        _broadcast(None)
