"""Fine-tune a LoRA on the model's own samples (simple self-distillation), loss on completion tokens only.

Read top to bottom: config → device → load the base → encode examples (the serving layout, labels
built there) → plan the steps → LoRA, AdamW, cosine schedule → resume from the newest checkpoint →
the loop (gradient accumulation, checkpoints) → adapter, merged model and result, each written
atomically.

The loss of an optimizer step is Σ_examples weight · Σ_completion-tokens cross-entropy, divided by
the number of completion tokens in the whole step, so the split into micro-batches does not change
the gradient (1×8 equals 8×1).

The loop runs on `accelerate` (distill/distributed.py): one process, or one of several (DDP, or
FSDP with `distributed = "fsdp"`) started by distill/launch.py or by an external `accelerate
launch`/`torchrun`. Every process takes its share of each planned step (`shard_step`) and scales its
loss by the process count, which DDP's gradient averaging divides out again: the step's gradient
is the one-process gradient, and so are the losses and the adapter (up to float summation order).
Only the main process writes checkpoints and outputs, and prints progress.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from distill.atomic import atomic_dir, write_json_atomic
from distill.batches import collate, plan_steps, shard_step, steps_per_epoch, target_tokens
from distill.checkpoint import (
    Progress,
    checkpoints,
    load_adapter,
    load_checkpoint,
    prune,
    remove_leftovers,
    save_checkpoint,
    set_rng_state,
)
from distill.tokenize import IGNORE_INDEX, TrainExample, encode_example, end_of_text_id
from core.errors import ModelLoadError, ModelNotFound, StropError
from core.fim import FimFormat, detect

__all__ = ["TrainConfig", "TrainExample", "TrainResult", "Runtime", "choose_device", "load_base",
           "encode_examples", "completion_loss", "accumulate_gradients", "wrap_lora", "save_outputs", "train"]

LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass(frozen=True)
class TrainConfig:
    """Training knobs, defaults in one place. Saved beside the run as train_config.json."""

    # LoRA
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    target_modules: tuple[str, ...] = LORA_TARGETS
    # AdamW on the LoRA parameters, cosine decay to min_lr_ratio × learning_rate after a linear warmup
    learning_rate: float = 2e-4
    min_lr_ratio: float = 0.1
    warmup_ratio: float = 0.05  # of all optimizer steps (at least one step when > 0)
    adam_betas: tuple[float, float] = (0.9, 0.95)
    weight_decay: float = 0.0
    max_grad_norm: float | None = 1.0
    # batches: an optimizer step sees micro_batch_size × grad_accum_steps examples
    micro_batch_size: int = 4
    grad_accum_steps: int = 4
    epochs: int = 1
    max_steps: int | None = None  # when set, the run takes exactly this many steps (epochs repeat)
    max_seq_tokens: int = 2304  # prompt + completion: ≥ [prompt] budget_tokens + completion, so no served prompt is cut
    max_completion_tokens: int = 256  # including the end-of-text token
    seed: int = 0
    checkpoint_every_steps: int = 50
    device: str = "auto"  # auto (cuda when available, with bf16 autocast) | cuda | cpu
    num_threads: int | None = None  # torch CPU threads (per process); None keeps torch's default
    # processes: auto = ddp when several processes run, else none; fsdp shards the model (for bases
    # that do not fit one device); none refuses to run in several processes
    distributed: str = "auto"
    processes: int | None = None  # None: one per visible CUDA GPU (one on CPU); strop launches them

    def __post_init__(self) -> None:
        positive = ("lora_r", "lora_alpha", "micro_batch_size", "grad_accum_steps", "epochs",
                    "max_seq_tokens", "max_completion_tokens", "checkpoint_every_steps")
        bad = [name for name in positive if getattr(self, name) < 1]
        if self.max_steps is not None and self.max_steps < 1:
            bad.append("max_steps")
        if self.num_threads is not None and self.num_threads < 1:
            bad.append("num_threads")
        if self.processes is not None and self.processes < 1:
            bad.append("processes")
        if bad:
            raise StropError(f"Training config: {', '.join(bad)} must be at least 1.")
        if self.max_completion_tokens >= self.max_seq_tokens:
            raise StropError(f"Training config: max_completion_tokens ({self.max_completion_tokens}) must "
                             f"be below max_seq_tokens ({self.max_seq_tokens}) to leave room for the prompt.")
        if not 0 <= self.lora_dropout < 1 or not 0 <= self.warmup_ratio < 1 or not 0 <= self.min_lr_ratio <= 1:
            raise StropError("Training config: lora_dropout and warmup_ratio must be in [0, 1), "
                             "min_lr_ratio in [0, 1].")
        if self.distributed not in ("auto", "ddp", "fsdp", "none"):
            raise StropError(f"Training config: distributed = {self.distributed!r} is unknown; use auto, "
                             "ddp, fsdp or none.")

    @property
    def max_prompt_tokens(self) -> int:
        return self.max_seq_tokens - self.max_completion_tokens

    def fingerprint_fields(self) -> dict:
        """What decides the result; the rest (checkpoint interval, device, threads, how many
        processes share a step) may change between a run and its resumption."""
        fields = asdict(self)
        for name in ("checkpoint_every_steps", "device", "num_threads", "distributed", "processes"):
            fields.pop(name)
        return fields


@dataclass(frozen=True)
class TrainResult:
    merged_dir: Path
    adapter_dir: Path
    steps: int
    train_tokens: int  # non-padding input tokens (prompt + completion) fed through the model
    tokens_per_s: float  # train_tokens over the time spent in optimizer steps (checkpoints excluded)
    final_loss: float  # weighted completion cross-entropy of the last optimizer step
    losses: list[float] = field(default_factory=list)  # one per optimizer step

    def to_json(self) -> dict:
        return {**asdict(self), "merged_dir": str(self.merged_dir), "adapter_dir": str(self.adapter_dir)}

    @classmethod
    def from_json(cls, data: dict) -> TrainResult:
        return cls(**{**data, "merged_dir": Path(data["merged_dir"]), "adapter_dir": Path(data["adapter_dir"])})


# --- device --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Runtime:
    device: str  # torch device type: "cuda" | "cpu"
    autocast_dtype: torch.dtype | None  # None: plain fp32


def choose_device(requested: str, cuda_available: bool) -> Runtime:
    """Pure choice: cuda (bf16 autocast, fp32 master weights) when asked for or when "auto" finds a
    GPU; otherwise the CPU in fp32."""
    if requested not in ("auto", "cuda", "cpu"):
        raise StropError(f"Training device {requested!r} is unknown; use auto, cuda or cpu.")
    if requested == "cuda" and not cuda_available:
        raise StropError("Training device cuda was requested but torch sees no CUDA GPU (this torch "
                         f"build is {torch.__version__}). Install a CUDA build of torch, or use device auto/cpu.")
    if requested == "cuda" or (requested == "auto" and cuda_available):
        return Runtime("cuda", torch.bfloat16)
    return Runtime("cpu", None)


# --- base model ----------------------------------------------------------------------------------


def _gguf_fim_ids(path: Path) -> dict[str, int]:
    """The FIM token ids a GGUF's metadata names (what llama.cpp serves with), -1 when absent."""
    import gguf

    reader = gguf.GGUFReader(str(path))
    ids = {}
    for short in ("pre", "suf", "mid", "pad", "rep", "sep"):
        found = reader.fields.get(f"tokenizer.ggml.fim_{short}_token_id")
        ids[short] = int(found.contents()) if found is not None else -1
    return ids


def load_base(base: Path | str) -> tuple[Any, Any, FimFormat | None]:
    """(model in fp32, tokenizer, FIM format) from a GGUF file (dequantised by transformers) or an
    HF model directory."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    base = Path(base).expanduser()
    if not base.exists():
        raise ModelNotFound(f"Base model {base} does not exist. Pass a GGUF file or an HF model directory.")
    if base.is_file():
        where, kwargs = base.parent, {"gguf_file": base.name}
    else:
        where, kwargs = base, {}
    try:
        tokenizer = AutoTokenizer.from_pretrained(where, **kwargs)
        # A GGUF is unpacked into dense fp32 weights: LoRA needs plain Linear layers, and only a
        # model without GGUF quantisation state can be saved (merged) afterwards.
        quant = {"quantization_config": GgufConfig(dequantize=True)} if base.is_file() else {}
        model = AutoModelForCausalLM.from_pretrained(where, dtype=torch.float32, **kwargs, **quant)
        fim_ids = _gguf_fim_ids(base) if base.is_file() else None
    except (OSError, ValueError, RuntimeError, KeyError) as err:
        raise ModelLoadError(
            f"transformers could not load {base} for training ({type(err).__name__}: {err}). Training "
            "needs a GGUF of an architecture transformers can dequantise (llama, qwen2, ...) or an HF "
            "model directory; re-download the file if it may be truncated.") from err
    return model, tokenizer, detect(tokenizer.get_vocab(), fim_ids)


# --- examples ------------------------------------------------------------------------------------


def encode_examples(tokenizer: Any, fmt: FimFormat | None, examples: Sequence[TrainExample],
                    cfg: TrainConfig) -> list[dict]:
    return [encode_example(tokenizer, fmt, ex, max_prompt_tokens=cfg.max_prompt_tokens,
                           max_completion_tokens=cfg.max_completion_tokens) for ex in examples]


def _fingerprint(base: Path, features: list[dict], cfg: TrainConfig) -> str:
    h = hashlib.sha256()
    stat = base.stat()
    h.update(json.dumps({"base": str(base.resolve()), "size": stat.st_size if base.is_file() else None,
                         "config": cfg.fingerprint_fields()}, sort_keys=True).encode())
    for f in features:
        h.update(json.dumps([f["input_ids"], f["labels"], f["weight"]]).encode())
    return h.hexdigest()


# --- loss ----------------------------------------------------------------------------------------


def completion_loss(model: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Σ weight · cross-entropy over the labelled (completion) tokens of a micro-batch. Logits are
    computed only where a label follows (transformers' boolean `logits_to_keep`), which spares the
    vocabulary projection on every prompt position."""
    labels = batch["labels"]
    keep = torch.zeros_like(labels, dtype=torch.bool)
    keep[:, :-1] = labels[:, 1:] != IGNORE_INDEX
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                   logits_to_keep=keep, use_cache=False).logits
    targets = labels[:, 1:][keep[:, :-1]]
    weights = batch["weight"][:, None].expand_as(labels)[keep]
    return (F.cross_entropy(logits.float(), targets, reduction="none") * weights).sum()


def accumulate_gradients(model: Any, micro_batches: Sequence[dict[str, torch.Tensor]], runtime: Runtime,
                         *, accelerator: Any = None, n_target: int | None = None) -> tuple[float, int]:
    """Forward and backward over this process's micro-batches of one optimizer step, normalised by
    the step's completion-token count `n_target` (all processes' micro-batches; default: these).
    Returns (this process's Σ weighted loss / n_target, non-padding input tokens).

    With an `accelerator` the gradient all-reduce runs once, on the last micro-batch (`no_sync`
    before it), and the loss is scaled by the process count, which DDP's averaging divides out.
    `accelerator.accumulate` is not used: it syncs every fixed number of micro-batches, while the
    number per step varies here (an epoch's short last step, uneven shares)."""
    import contextlib

    n_target = max(1, n_target if n_target is not None else sum(target_tokens(b) for b in micro_batches))
    world = accelerator.num_processes if accelerator is not None else 1
    loss_sum, n_input = 0.0, 0
    for k, batch in enumerate(micro_batches):
        batch = {key: v.to(runtime.device) for key, v in batch.items()}
        if accelerator is None:
            autocast = torch.autocast(device_type=runtime.device, dtype=runtime.autocast_dtype or torch.bfloat16,
                                      enabled=runtime.autocast_dtype is not None)
            sync = contextlib.nullcontext()
        else:  # accelerate's prepared model autocasts under mixed_precision="bf16"
            autocast = contextlib.nullcontext()
            sync = accelerator.no_sync(model) if k < len(micro_batches) - 1 else contextlib.nullcontext()
        with sync:
            with autocast:
                weighted = completion_loss(model, batch)
            scaled = weighted * world / n_target
            if accelerator is None:
                scaled.backward()
            else:
                accelerator.backward(scaled)
        loss_sum += weighted.item()
        n_input += int(batch["attention_mask"].sum())
    return loss_sum / n_target, n_input


# --- the run -------------------------------------------------------------------------------------


def wrap_lora(model: Any, cfg: TrainConfig) -> Any:
    """The base model with LoRA adapters on those of cfg.target_modules it has (only they train)."""
    from peft import LoraConfig, get_peft_model

    present = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    targets = [t for t in cfg.target_modules if t in present]
    if not targets:
        raise StropError(f"The base model has none of the LoRA target modules {list(cfg.target_modules)}; "
                         "set target_modules in the training config to its projection layer names.")
    lora = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                      target_modules=targets, bias="none", task_type="CAUSAL_LM")
    with warnings.catch_warnings():  # peft reads transformers' deprecated alias; nothing for a user to act on
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        return get_peft_model(model, lora)


def _total_steps(n_examples: int, cfg: TrainConfig) -> int:
    if cfg.max_steps is not None:
        return cfg.max_steps
    return cfg.epochs * steps_per_epoch(n_examples, cfg.micro_batch_size * cfg.grad_accum_steps)


def save_outputs(model: Any, tokenizer: Any, out: Path) -> tuple[Path, Path]:
    """out/adapter/ (the LoRA alone, small) and out/merged/ (adapter folded into the base weights,
    with the tokenizer: what export turns into a GGUF), each replaced atomically."""
    adapter_dir, merged_dir = out / "adapter", out / "merged"
    with atomic_dir(adapter_dir, what="LoRA adapter") as tmp:
        model.save_pretrained(tmp, save_embedding_layers=False)
    merged = model.merge_and_unload()
    with atomic_dir(merged_dir, what="merged model") as tmp:
        merged.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    return adapter_dir, merged_dir


def train(base: Path | str, examples: Sequence[TrainExample], out_dir: Path | str,
          cfg: TrainConfig = TrainConfig(), *, progress: bool = True) -> TrainResult:
    """Train a LoRA on `examples`, resuming from out_dir/checkpoints/ when a checkpoint of the same
    run is there; write out_dir/{adapter,merged}/ and out_dir/train_result.json. In a process of a
    distributed launch (WORLD_SIZE set), every process calls this with the same arguments."""
    from tqdm.auto import tqdm
    from transformers.optimization import get_cosine_with_min_lr_schedule_with_warmup

    from distill import distributed as dist

    if not examples:
        raise StropError("No training examples: the sampling stage produced none (or all were dropped as "
                         "degenerate). Check the sample stage's report before training.")
    out = Path(out_dir)
    ckpt_root = out / "checkpoints"
    runtime = choose_device(cfg.device, torch.cuda.is_available())
    accelerator = dist.make_accelerator(cfg, runtime)
    rank, world, main = accelerator.process_index, accelerator.num_processes, accelerator.is_main_process
    if main:
        out.mkdir(parents=True, exist_ok=True)
        remove_leftovers(out)  # temporaries of writes that a kill interrupted
        prune(ckpt_root)
    accelerator.wait_for_everyone()
    threads_before = torch.get_num_threads()
    if cfg.num_threads is not None:
        torch.set_num_threads(cfg.num_threads)
    try:
        model, tokenizer, fmt = load_base(base)
        features = encode_examples(tokenizer, fmt, examples, cfg)
        fingerprint = _fingerprint(Path(base).expanduser(), features, cfg)
        total = _total_steps(len(features), cfg)
        plan = plan_steps([len(f["input_ids"]) for f in features], micro_batch_size=cfg.micro_batch_size,
                          grad_accum_steps=cfg.grad_accum_steps, n_steps=total, seed=cfg.seed)
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else end_of_text_id(tokenizer, fmt)
        targets = [sum(t != IGNORE_INDEX for t in f["labels"][1:]) for f in features]  # = target_tokens()

        torch.manual_seed(cfg.seed)  # LoRA init (the same on every process)
        model = wrap_lora(model, cfg)
        if rank:
            torch.manual_seed(cfg.seed + rank)  # dropout: a stream of its own per process (rank 0's = one process's)
        done = checkpoints(ckpt_root)
        state = (load_checkpoint(done[-1], fingerprint) if done else None)
        if state is not None:
            load_adapter(model, state[1], done[-1])  # before wrapping: DDP/FSDP start from these weights
        model = accelerator.prepare(model)  # to the device; DDP or FSDP across processes
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=cfg.learning_rate, betas=cfg.adam_betas,
                                      weight_decay=cfg.weight_decay)
        warmup = max(1, round(cfg.warmup_ratio * total)) if cfg.warmup_ratio > 0 else 0
        # The scheduler stays unprepared: accelerate's wrapper steps it once per process per step.
        scheduler = get_cosine_with_min_lr_schedule_with_warmup(
            optimizer, num_warmup_steps=warmup, num_training_steps=total, min_lr_rate=cfg.min_lr_ratio)
        optimizer = accelerator.prepare(optimizer)
        if state is None:
            progress_state = Progress(step=0, train_tokens=0, train_seconds=0.0, losses=[], fingerprint=fingerprint)
        else:
            progress_state, _, trainer_state = state
            dist.load_optimizer_state(accelerator, model, optimizer, trainer_state["optimizer"])
            scheduler.load_state_dict(trainer_state["scheduler"])
            if rank < len(trainer_state["rng"]):  # resumed with more processes: the new ones keep their seed
                set_rng_state(trainer_state["rng"][rank])
        losses = list(progress_state.losses)
        train_tokens, train_seconds = progress_state.train_tokens, progress_state.train_seconds
        if main:
            write_json_atomic(out / "train_config.json", {
                "base": str(base), "fim_format": fmt.name if fmt else None, "examples": len(features),
                "runtime": {"device": runtime.device, "autocast": str(runtime.autocast_dtype),
                            "processes": world, "distributed": str(accelerator.distributed_type)},
                "config": asdict(cfg)})

        model.train()
        bar = tqdm(total=total, initial=progress_state.step, unit="step", desc="train",
                   disable=not (progress and main))
        for step in range(progress_state.step, total):
            started = time.perf_counter()
            mine = shard_step(plan[step], rank, world)
            micro_batches = [collate([features[i] for i in mb], pad_id) for mb in mine]
            if not micro_batches:  # fewer examples than processes: join the all-reduce with a zero gradient
                idle = collate([features[plan[step][0][0]]], pad_id)
                micro_batches = [{**idle, "weight": torch.zeros_like(idle["weight"])}]
            n_target = sum(targets[i] for mb in plan[step] for i in mb)  # the whole step's, on every rank
            part, n_input = accumulate_gradients(model, micro_batches, runtime, accelerator=accelerator,
                                                 n_target=n_target)
            if not mine:
                n_input = 0
            loss, n_input = dist.sum_over_processes(accelerator, part, n_input)
            if not math.isfinite(loss):
                raise StropError(f"Training diverged: the loss of step {step + 1} is {loss}. Lower "
                                 f"learning_rate (now {cfg.learning_rate}) and delete {ckpt_root} to restart.")
            if cfg.max_grad_norm is not None:
                accelerator.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(loss)
            train_tokens += n_input
            train_seconds += time.perf_counter() - started
            if (step + 1) % cfg.checkpoint_every_steps == 0 or step + 1 == total:
                adapter, trainer_state = dist.checkpoint_state(accelerator, model, optimizer, scheduler)
                if main:
                    save_checkpoint(ckpt_root, adapter, trainer_state, Progress(
                        step=step + 1, train_tokens=train_tokens, train_seconds=train_seconds,
                        losses=losses, fingerprint=fingerprint))
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.4f}", tok_s=f"{train_tokens / max(train_seconds, 1e-9):.0f}")
        bar.close()

        result = TrainResult(
            merged_dir=out / "merged", adapter_dir=out / "adapter", steps=len(losses), train_tokens=train_tokens,
            tokens_per_s=train_tokens / max(train_seconds, 1e-9), final_loss=losses[-1], losses=losses)
        final = dist.unwrapped_for_saving(accelerator, model, lambda: wrap_lora(load_base(base)[0], cfg))
        if main:
            save_outputs(final, tokenizer, out)
            write_json_atomic(out / "train_result.json", result.to_json())
        accelerator.wait_for_everyone()
        return result
    finally:
        torch.set_num_threads(threads_before)
