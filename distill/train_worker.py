"""One training process of a launch strop starts (distill/launch.py):

    python -m torch.distributed.run --standalone --nproc_per_node N -m distill.train_worker SPEC.json

SPEC.json names the base model, the examples (JSONL), the output directory and the TrainConfig.
Every process runs the same `train()`; only rank 0 writes outputs and prints progress.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from core.errors import StropError
from distill.launch import config_from_json, die_with_parent, rank
from distill.records import read_jsonl
from distill.tokenize import TrainExample


def main(argv: list[str] | None = None) -> int:
    die_with_parent()  # the torchrun agent
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m distill.train_worker SPEC.json", file=sys.stderr)
        return 2
    spec = json.loads(Path(argv[0]).read_text(encoding="utf-8"))
    from distill.train import train

    try:
        train(spec["base"], read_jsonl(spec["examples"], TrainExample), spec["out"],
              config_from_json(spec["config"]), progress=spec.get("progress", True))
    except StropError as err:
        if rank() == 0:
            print(f"strop: {err}", file=sys.stderr)
        return 1
    finally:
        import torch.distributed as tdist

        if tdist.is_initialized():
            tdist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
