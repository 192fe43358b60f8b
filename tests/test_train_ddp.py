"""Training in two processes (DDP over gloo on the CPU, launched the way strop launches it) takes the
same optimizer steps as one process: the same losses and adapter within float tolerance, and a
kill -9 of the launching process mid-run kills the workers and resumes to the same result."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from distill.batches import shard_step
from distill.checkpoint import checkpoints
from distill.train import TrainConfig, train
from tests.test_train import examples_from

REPO = Path(__file__).resolve().parents[1]
# 9 examples, 2 × 2 per step: steps of 4, 4 and 1 example per epoch. The 1-example step leaves the
# second process without an example (it joins the all-reduce with a zero-weight micro-batch).
CFG = dict(micro_batch_size=2, grad_accum_steps=2, max_seq_tokens=160, max_completion_tokens=32,
           num_threads=1, learning_rate=2e-3, warmup_ratio=0.1, lora_dropout=0.0, max_steps=6)

_RUNNER = """
import json, sys
from distill.launch import config_from_json, run_train
from distill.tokenize import TrainExample
args = json.loads(sys.argv[1])
run_train(args["base"], [TrainExample(**e) for e in args["examples"]], args["out"],
          config_from_json(args["cfg"]), progress=False)
"""


@pytest.fixture(scope="module")
def examples():
    return examples_from(REPO / "distill" / "batches.py", 9, seed=11)


def _launch(base: Path, examples, out: Path, cfg: dict) -> subprocess.Popen:
    """The train stage in its own process, as `strop distill` runs it (run_train → torchrun)."""
    args = json.dumps({"base": str(base), "out": str(out), "cfg": cfg,
                       "examples": [e.__dict__ for e in examples]})
    return subprocess.Popen([sys.executable, "-c", _RUNNER, args], cwd=REPO,
                            env={**os.environ, "PYTHONPATH": str(REPO)})


def _adapter(out: Path) -> dict[str, torch.Tensor]:
    return load_file(str(out / "adapter" / "adapter_model.safetensors"))


def test_shard_step_deals_out_every_example_once():
    step = [[5, 1], [7, 2], [0, 3]]
    assert shard_step(step, 0, 1) == step
    assert shard_step(step, 0, 2) == [[5, 1], [0, 3]] and shard_step(step, 1, 2) == [[7, 2]]
    assert shard_step([[4, 8, 9]], 0, 2) == [[4, 9]] and shard_step([[4, 8, 9]], 1, 2) == [[8]]
    assert shard_step([[6]], 1, 2) == []
    for world in (2, 3, 4):
        dealt = sorted(i for r in range(world) for mb in shard_step(step, r, world) for i in mb)
        assert dealt == sorted(i for mb in step for i in mb)


@pytest.fixture(scope="module")
def one_process(tiny_fim_model, examples, tmp_path_factory):
    before = torch.get_num_threads()
    try:
        return train(tiny_fim_model.hf_dir, examples, tmp_path_factory.mktemp("one") / "run",
                     TrainConfig(**CFG), progress=False)
    finally:
        torch.set_num_threads(before)


def _assert_same_training(one, out: Path):
    two = json.loads((out / "train_result.json").read_text())
    assert two["steps"] == one.steps == 6
    assert two["train_tokens"] == one.train_tokens  # the same examples were trained on, none twice
    # The processes' micro-batches are the one-process run's (shard_step), so the losses differ only
    # by the summation order of the per-process partial sums (~1e-16 relative measured here; the
    # adapters came out bitwise equal). The tolerance leaves room for the order of the gradient sum
    # on other shapes and machines, and is far below what a wrong gradient scale does: without the
    # ×processes loss scaling the losses drift by 2e-5 at step 3 and 9e-4 at step 6, and adapter
    # elements by 3e-3.
    assert two["losses"] == pytest.approx(one.losses, rel=1e-5)
    a, b = _adapter(one.adapter_dir.parent), _adapter(out)
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.slow
def test_two_processes_match_one(tiny_fim_model, examples, one_process, tmp_path):
    out = tmp_path / "two"
    proc = _launch(tiny_fim_model.hf_dir, examples, out, {**CFG, "processes": 2})
    assert proc.wait(timeout=300) == 0
    config = json.loads((out / "train_config.json").read_text())
    assert config["runtime"]["processes"] == 2 and config["runtime"]["distributed"] == "DistributedType.MULTI_CPU"
    _assert_same_training(one_process, out)
    assert (out / "merged" / "config.json").is_file()
    assert len(one_process.losses) == 6 and one_process.losses[0] != one_process.losses[-1]


def _descendants(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            child = int(stat.parent.name)
            found += [child, *_descendants(child)]
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.slow
def test_kill_9_of_the_launcher_kills_the_workers_and_resumes(tiny_fim_model, examples, one_process, tmp_path):
    out = tmp_path / "killed"
    cfg = {**CFG, "processes": 2, "checkpoint_every_steps": 1}
    proc = _launch(tiny_fim_model.hf_dir, examples, out, cfg)
    deadline = time.monotonic() + 240
    workers: list[int] = []
    while not checkpoints(out / "checkpoints") or int(checkpoints(out / "checkpoints")[-1].name[5:]) < 2:
        assert proc.poll() is None, "the training ended before it could be killed"
        assert time.monotonic() < deadline
        workers = _descendants(proc.pid) or workers
        time.sleep(0.02)
    workers = _descendants(proc.pid) or workers
    assert len(workers) >= 3  # torchrun and its two workers
    for pid in workers:  # frozen where they are: the tiny model's steps take milliseconds, so on a
        os.kill(pid, signal.SIGSTOP)  # busy machine the run could otherwise finish before the kill
    time.sleep(random.Random().uniform(0, 0.2))
    proc.send_signal(signal.SIGKILL)  # the death chain kills stopped processes too
    assert proc.wait() == -signal.SIGKILL
    deadline = time.monotonic() + 30
    while any(_alive(p) for p in workers):
        assert time.monotonic() < deadline, "training processes outlived the killed launcher"
        time.sleep(0.1)
    killed_at = int(checkpoints(out / "checkpoints")[-1].name[5:])
    assert killed_at < 6 and not (out / "train_result.json").exists()

    resumed = _launch(tiny_fim_model.hf_dir, examples, out, cfg)
    assert resumed.wait(timeout=300) == 0
    _assert_same_training(one_process, out)
    assert not list(out.rglob(".tmp-*"))


_EXTERNAL = """
import json, sys
from distill import launch
from distill.tokenize import TrainExample
# what distill.cycle.main does under an external torchrun: rank 0 runs the cycle (here: only its
# train stage, twice, as `--every` would), the other ranks follow
if launch.is_follower():
    sys.exit(launch.follow())
args = json.loads(open(sys.argv[1]).read())
try:
    for out in (args["out"], args["out"] + "-again"):
        launch.run_train(args["base"], [TrainExample(**e) for e in args["examples"]], out,
                         launch.config_from_json(args["cfg"]), progress=False)
finally:
    launch.release()
"""


@pytest.mark.slow
def test_external_torchrun_joins(tiny_fim_model, examples, one_process, tmp_path):
    """Under an external torchrun the non-zero ranks train alongside rank 0's train stages and end
    when its cycle ends."""
    script, spec = tmp_path / "cycle.py", tmp_path / "spec.json"
    script.write_text(_EXTERNAL)
    spec.write_text(json.dumps({"base": str(tiny_fim_model.hf_dir), "out": str(tmp_path / "ext"), "cfg": CFG,
                                "examples": [e.__dict__ for e in examples]}))
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                          str(script), str(spec)], cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
                         timeout=300)
    assert run.returncode == 0
    for out in (tmp_path / "ext", tmp_path / "ext-again"):
        assert json.loads((out / "train_config.json").read_text())["runtime"]["processes"] == 2
        _assert_same_training(one_process, out)


def test_impossible_distribution_is_a_clear_error(monkeypatch):
    from distill.distributed import make_accelerator
    from distill.train import choose_device
    from core.errors import StropError

    monkeypatch.setenv("WORLD_SIZE", "2")  # checked before any process group is set up
    cpu = choose_device("cpu", cuda_available=False)
    with pytest.raises(StropError, match="needs CUDA GPUs"):
        make_accelerator(TrainConfig(distributed="fsdp"), cpu)
    with pytest.raises(StropError, match='distributed = "none"'):
        make_accelerator(TrainConfig(distributed="none"), cpu)
    with pytest.raises(StropError, match="distributed = 'mpi' is unknown"):
        TrainConfig(distributed="mpi")
