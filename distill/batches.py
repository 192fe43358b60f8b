"""The order training sees its examples in, and micro-batches as padded tensors.

The plan is a pure function of (lengths, batch shape, steps, seed): a resumed run recomputes it and
continues at its saved step. Each optimizer step takes the next `micro_batch_size *
grad_accum_steps` examples of a seeded per-epoch shuffle; inside a step they are sorted by length
and cut into micro-batches (length grouping wastes less on padding). Which examples make up a step
depends only on that product, so 1 micro-batch of 8 and 8 micro-batches of 1 take the same steps.

With several training processes, each step of the same plan is shared out (`shard_step`): the
global batch of a step is the configured one whatever the process count, so 1 and N processes take
the same optimizer steps on the same examples.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from distill.tokenize import IGNORE_INDEX

Plan = list[list[list[int]]]  # steps → micro-batches → example indices


def steps_per_epoch(n_examples: int, examples_per_step: int) -> int:
    return math.ceil(n_examples / examples_per_step)


def plan_steps(lengths: Sequence[int], *, micro_batch_size: int, grad_accum_steps: int,
               n_steps: int, seed: int) -> Plan:
    """`n_steps` optimizer steps over examples of the given lengths, as many epochs as needed (the
    last step of an epoch may be short; it is never padded with the next epoch's examples)."""
    n = len(lengths)
    per_step = micro_batch_size * grad_accum_steps
    plan: Plan = []
    epoch = 0
    while len(plan) < n_steps:
        order = torch.randperm(n, generator=torch.Generator().manual_seed(seed + epoch)).tolist()
        for start in range(0, n, per_step):
            chunk = sorted(order[start:start + per_step], key=lambda i: (-lengths[i], i))
            plan.append([chunk[k:k + micro_batch_size] for k in range(0, len(chunk), micro_batch_size)])
        epoch += 1
    return plan[:n_steps]


def shard_step(step: list[list[int]], rank: int, world: int) -> list[list[int]]:
    """This process's part of one planned step. The step's micro-batches are dealt round-robin
    (rank r takes r, r+world, ...), so each keeps the composition — and padding — it has in a
    one-process run, and long and short micro-batches mix on every rank. A step with fewer
    micro-batches than processes (grad_accum_steps < world, or an epoch's short last step) is
    instead cut example by example; a rank left without any gets [] (it still joins the step's
    gradient all-reduce, with a zero-weight micro-batch)."""
    if world == 1:
        return step
    if len(step) >= world:
        return step[rank::world]
    size = max(len(mb) for mb in step)
    mine = [i for mb in step for i in mb][rank::world]
    return [mine[k:k + size] for k in range(0, len(mine), size)]


def collate(features: Sequence[dict], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded input_ids/attention_mask/labels and the per-example weights."""
    width = max(len(f["input_ids"]) for f in features)
    input_ids = torch.full((len(features), width), pad_id, dtype=torch.long)
    labels = torch.full((len(features), width), IGNORE_INDEX, dtype=torch.long)
    attention_mask = torch.zeros((len(features), width), dtype=torch.long)
    for row, f in enumerate(features):
        n = len(f["input_ids"])
        input_ids[row, :n] = torch.tensor(f["input_ids"])
        labels[row, :n] = torch.tensor(f["labels"])
        attention_mask[row, :n] = 1
    weights = torch.tensor([f["weight"] for f in features], dtype=torch.float32)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels, "weight": weights}


def target_tokens(batch: dict[str, torch.Tensor]) -> int:
    """Labelled positions the model predicts (a label at position 0 has no preceding token)."""
    return int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())
