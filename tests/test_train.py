"""distill/train.py and its helpers: the training sequence is the serving layout, labels cover the
completion only, the loss is invariant to how a step is split into micro-batches, weights count,
training learns, a kill -9 mid-run resumes to the same adapter, GGUF bases load."""

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

from distill.batches import collate, plan_steps
from distill.checkpoint import checkpoints
from distill.tokenize import IGNORE_INDEX, TrainExample, encode_example, end_of_text_id, pieces_to_ids
from distill.train import (TrainConfig, wrap_lora, accumulate_gradients, choose_device, load_base,
                           train)
from core.errors import StropError
from core.fim import KNOWN_FORMATS, Special, layout

REPO = Path(__file__).resolve().parents[1]
STARCODER = next(f for f in KNOWN_FORMATS if f.name == "starcoder")
EOT = "<|endoftext|>"


def examples_from(path: Path, n: int, *, seed: int = 0) -> list[TrainExample]:
    """FIM holes (rest of a line) and next-line points cut from a real source file."""
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    rng = random.Random(seed)
    out = []
    while len(out) < n:
        i = rng.randrange(3, len(lines) - 3)
        line = lines[i].rstrip("\n")
        if not line.strip():
            continue
        col = rng.randrange(len(line) - len(line.lstrip()), len(line))
        prefix = "".join(lines[max(0, i - 12):i]) + line[:col]
        suffix = "\n" + "".join(lines[i + 1:i + 6]) if len(out) % 3 else ""
        out.append(TrainExample(prefix, suffix, line[col:], path=path.name, language="python"))
    return out


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One torch thread: on a shared 2-core machine two spinning OpenMP threads run ~10× slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tiny(tiny_fim_model):
    """(model, tokenizer, fmt) of the tiny FIM model, loaded once (tests wrap copies of it)."""
    return load_base(tiny_fim_model.hf_dir)


@pytest.fixture(scope="module")
def tokenizer(tiny):
    return tiny[1]


# --- encoding: the serving layout, labels on the completion --------------------------------------


def test_labels_mask_exactly_the_prompt(tokenizer):
    ex = TrainExample("def add(a, b):\n    return a", "\n\nprint(add(1, 2))\n", " + b", path="m.py",
                      language="python")
    enc = encode_example(tokenizer, STARCODER, ex, max_prompt_tokens=200, max_completion_tokens=50)
    prompt = pieces_to_ids(tokenizer, layout(STARCODER, ex.prefix, ex.suffix, path="m.py", language="python"),
                           bos=False)
    assert enc["input_ids"][:len(prompt)] == prompt
    assert enc["labels"][:len(prompt)] == [IGNORE_INDEX] * len(prompt)
    target = enc["labels"][len(prompt):]
    assert IGNORE_INDEX not in target and target == enc["input_ids"][len(prompt):]
    assert tokenizer.decode(target) == " + b" + EOT
    assert target[-1] == tokenizer.convert_tokens_to_ids(EOT) == end_of_text_id(tokenizer, STARCODER)


@pytest.mark.parametrize("prefix, suffix", [
    ("import os\n\ndef main():\n    path = os.", "\n    return path\n"),  # FIM hole mid-line
    ("import os\n\ndef main():\n", ""),  # next-line point: FIM markers, empty suffix
    ("", "x = 1\n"),  # cursor at the top of the file
])
def test_training_prompt_is_the_serving_layout(tokenizer, prefix, suffix):
    ex = TrainExample(prefix, suffix, "done", path="a.py", language="python")
    enc = encode_example(tokenizer, STARCODER, ex, max_prompt_tokens=500, max_completion_tokens=10)
    pieces = layout(STARCODER, prefix, suffix, path="a.py", language="python")
    assert pieces[0] == Special("<fim_prefix>") and Special("<fim_middle>") in pieces
    expected: list[int] = []
    for piece in pieces:
        if isinstance(piece, Special):
            expected.append(tokenizer.convert_tokens_to_ids(piece.token))
        else:
            expected += tokenizer(piece, add_special_tokens=False, split_special_tokens=True)["input_ids"]
    n_prompt = enc["labels"].count(IGNORE_INDEX)
    assert enc["input_ids"][:n_prompt] == expected


def test_training_tokens_equal_what_llama_cpp_serves(tiny_fim_model, tokenizer):
    """The same pieces through the server's tokenizer path (llama.cpp on the GGUF) give the same ids."""
    pytest.importorskip("llama_cpp")
    from core.llama_model import load_model, tokenize_pieces
    from core.models import ResolvedModel

    served = load_model(ResolvedModel(path=tiny_fim_model.gguf_f32, name="tiny", version="t", source="flag"),
                        n_ctx=256, n_threads=1, n_gpu_layers=0)
    for ex in examples_from(REPO / "core" / "fim.py", 6, seed=3):
        enc = encode_example(tokenizer, served.fim, ex, max_prompt_tokens=4000, max_completion_tokens=64)
        pieces = layout(served.fim, ex.prefix, ex.suffix, path=ex.path, language=ex.language)
        assert enc["input_ids"][:enc["labels"].count(IGNORE_INDEX)] == tokenize_pieces(served, pieces)


def test_code_that_spells_special_tokens_stays_text(tokenizer):
    ex = TrainExample("s = '<fim_prefix>'\n", "", "t = '<|endoftext|>'", path="x.py")
    enc = encode_example(tokenizer, STARCODER, ex, max_prompt_tokens=100, max_completion_tokens=40)
    fim_prefix, eot = tokenizer.convert_tokens_to_ids(["<fim_prefix>", EOT])
    assert enc["input_ids"].count(fim_prefix) == 1  # only the layout's own marker
    assert enc["labels"].count(eot) == 1 and enc["labels"][-1] == eot


def test_prefix_only_model_prompt_is_the_prefix(tokenizer):
    ex = TrainExample("def f():\n    return ", "ignored suffix", "1")
    enc = encode_example(tokenizer, None, ex, max_prompt_tokens=100, max_completion_tokens=10)
    prompt = tokenizer(ex.prefix, add_special_tokens=False)["input_ids"]
    assert enc["input_ids"][:len(prompt)] == prompt and enc["labels"].count(IGNORE_INDEX) == len(prompt)
    assert enc["labels"][-1] == tokenizer.eos_token_id


def test_long_prompt_is_cut_from_the_left_of_the_prefix(tokenizer):
    prefix = "".join(f"value_{i} = {i}\n" for i in range(200)) + "total = value_1"
    ex = TrainExample(prefix, "\nprint(total)\n", " + value_2", path="v.py", language="python")
    enc = encode_example(tokenizer, STARCODER, ex, max_prompt_tokens=64, max_completion_tokens=16)
    n_prompt = enc["labels"].count(IGNORE_INDEX)
    assert 60 <= n_prompt <= 64  # cut as little as fits
    text = tokenizer.decode(enc["input_ids"][:n_prompt])
    assert text.endswith("<fim_suffix>\nprint(total)\n<fim_middle>total = value_1")
    kept = text[len("<fim_prefix>"):text.index("<fim_suffix>")]
    assert kept and prefix.removesuffix("total = value_1").endswith(kept)


def test_overlong_suffix_is_cut_from_its_far_end(tokenizer):
    suffix = "".join(f"after_{i} = {i}\n" for i in range(200))
    ex = TrainExample("x = ", suffix, "1", path="s.py", language="python")
    enc = encode_example(tokenizer, STARCODER, ex, max_prompt_tokens=40, max_completion_tokens=4)
    text = tokenizer.decode(enc["input_ids"][:enc["labels"].count(IGNORE_INDEX)])
    # the typed part of the cursor's line is the last thing to go
    assert text.startswith("<fim_prefix><fim_suffix>after_0 = 0\n") and text.endswith("<fim_middle>x = ")
    with pytest.raises(StropError, match="max_prompt_tokens=2"):
        encode_example(tokenizer, STARCODER, ex, max_prompt_tokens=2, max_completion_tokens=4)


def test_long_completion_is_cut_and_gets_no_end_of_text(tokenizer):
    ex = TrainExample("x = [", "", ", ".join(str(i) for i in range(100)) + "]")
    enc = encode_example(tokenizer, STARCODER, ex, max_prompt_tokens=50, max_completion_tokens=8)
    target = [t for t in enc["labels"] if t != IGNORE_INDEX]
    assert len(target) == 8 and tokenizer.convert_tokens_to_ids(EOT) not in target


def test_bad_weight_is_refused(tokenizer):
    with pytest.raises(StropError, match="weight"):
        encode_example(tokenizer, STARCODER, TrainExample("a", "", "b", weight=float("nan")),
                       max_prompt_tokens=10, max_completion_tokens=5)


# --- batching ------------------------------------------------------------------------------------


def test_plan_keeps_step_membership_across_micro_batch_splits():
    lengths = [random.Random(i).randrange(5, 90) for i in range(21)]
    one_by_eight = plan_steps(lengths, micro_batch_size=8, grad_accum_steps=1, n_steps=7, seed=4)
    eight_by_one = plan_steps(lengths, micro_batch_size=1, grad_accum_steps=8, n_steps=7, seed=4)
    for a, b in zip(one_by_eight, eight_by_one, strict=True):
        assert [i for mb in a for i in mb] == [i for mb in b for i in mb]
        flat = [lengths[i] for mb in a for i in mb]
        assert flat == sorted(flat, reverse=True)  # length-grouped inside the step
    first_epoch = sorted(i for step in one_by_eight[:3] for mb in step for i in mb)
    assert first_epoch == list(range(21))  # 8 + 8 + 5: every example once per epoch
    assert plan_steps(lengths, micro_batch_size=8, grad_accum_steps=1, n_steps=7, seed=4) == one_by_eight
    assert plan_steps(lengths, micro_batch_size=8, grad_accum_steps=1, n_steps=7, seed=5) != one_by_eight


# --- the loss ------------------------------------------------------------------------------------


@pytest.fixture()
def lora_model(tiny):
    """A fresh LoRA (dropout 0, B non-zero so every LoRA matrix gets a gradient) on a deep copy."""
    import copy

    model = wrap_lora(copy.deepcopy(tiny[0]), TrainConfig(lora_dropout=0.0))
    torch.manual_seed(1)
    for name, p in model.named_parameters():
        if "lora_B" in name:
            p.data.normal_(0, 0.02)
    model.train()
    return model


def _grads(model, features, micro_batch_size, pad_id):
    model.zero_grad(set_to_none=True)
    batches = [collate(features[i:i + micro_batch_size], pad_id)
               for i in range(0, len(features), micro_batch_size)]
    loss, _ = accumulate_gradients(model, batches, choose_device("cpu", False))
    return loss, {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


def _features(tokenizer, examples):
    return [encode_example(tokenizer, STARCODER, ex, max_prompt_tokens=120, max_completion_tokens=24)
            for ex in examples]


def test_grad_accumulation_1x8_equals_8x1(tokenizer, lora_model):
    features = _features(tokenizer, examples_from(REPO / "core" / "fim.py", 8, seed=1))
    assert len({len(f["input_ids"]) for f in features}) > 1  # padding is exercised
    pad = tokenizer.pad_token_id
    loss_8, grads_8 = _grads(lora_model, features, 8, pad)
    loss_1, grads_1 = _grads(lora_model, features, 1, pad)
    assert loss_8 == pytest.approx(loss_1, rel=1e-5)
    for name in grads_8:
        assert grads_8[name].abs().max() > 0, name
        torch.testing.assert_close(grads_1[name], grads_8[name], rtol=1e-4, atol=1e-7, msg=name)


def test_example_weight_counts_like_duplication(tokenizer, lora_model):
    """weight 2 on an example gives the gradient of that example appearing twice (up to the
    token-count normalisation); weight 0 removes it."""
    e0, e1 = examples_from(REPO / "core" / "fim.py", 2, seed=2)
    heavy = _features(tokenizer, [TrainExample(e0.prefix, e0.suffix, e0.completion, weight=2.0), e1])
    twice = _features(tokenizer, [e0, e0, e1])
    zero = _features(tokenizer, [TrainExample(e0.prefix, e0.suffix, e0.completion, weight=0.0), e1])
    alone = _features(tokenizer, [e1])
    n0 = sum(t != IGNORE_INDEX for t in twice[0]["labels"])
    n1 = sum(t != IGNORE_INDEX for t in twice[2]["labels"])
    pad = tokenizer.pad_token_id
    _, g_heavy = _grads(lora_model, heavy, 2, pad)
    _, g_twice = _grads(lora_model, twice, 3, pad)
    _, g_zero = _grads(lora_model, zero, 2, pad)
    _, g_alone = _grads(lora_model, alone, 1, pad)
    for name in g_heavy:
        scale = g_twice[name].abs().max() * (2 * n0 + n1)
        torch.testing.assert_close(g_heavy[name] * (n0 + n1), g_twice[name] * (2 * n0 + n1), rtol=1e-4,
                                   atol=1e-5 * scale)
        torch.testing.assert_close(g_zero[name] * (n0 + n1), g_alone[name] * n1, rtol=1e-4, atol=1e-5 * scale)
    assert any((g_heavy[n] - g_zero[n]).abs().max() > 1e-6 for n in g_heavy)


# --- the run -------------------------------------------------------------------------------------


def test_empty_examples_is_a_clear_error(tmp_path):
    with pytest.raises(StropError, match="No training examples"):
        train(tmp_path / "missing.gguf", [], tmp_path / "out")


def test_device_choice():
    assert choose_device("auto", cuda_available=True).device == "cuda"
    assert choose_device("auto", cuda_available=True).autocast_dtype == torch.bfloat16
    assert choose_device("auto", cuda_available=False) == choose_device("cpu", cuda_available=True)
    assert choose_device("cpu", cuda_available=False).autocast_dtype is None
    with pytest.raises(StropError, match="no CUDA GPU"):
        choose_device("cuda", cuda_available=False)
    with pytest.raises(StropError, match="unknown"):
        choose_device("tpu", cuda_available=False)
    here = choose_device("auto", torch.cuda.is_available())
    assert here.device == ("cuda" if torch.cuda.is_available() else "cpu")


_DISK_FULL_RUNNER = """
import json, sys, torch
from pathlib import Path
from safetensors.torch import save_file
from distill.atomic import atomic_dir, write_json_atomic
from core.errors import DiskFull

small = Path(sys.argv[1])
dest = small / "merged"
dest.mkdir()
(dest / "model.safetensors").write_text("previous")
big = {"w": torch.zeros(1 << 16)}  # 256 KiB on a 128 KiB file system


def via_safetensors(tmp):
    save_file(big, str(tmp / "model.safetensors"))


def via_torch_save(tmp):
    with open(tmp / "state.pt", "wb") as f:
        torch.save(big, f)


seen = []
for write in (via_safetensors, via_torch_save):
    try:
        with atomic_dir(dest, what="merged model") as tmp:
            write(tmp)
        seen.append("no error")
    except DiskFull as err:
        seen.append(str(err))
try:
    write_json_atomic(small / "result.json", list(range(100_000)))
    seen.append("no error")
except DiskFull as err:
    seen.append(str(err))
print(json.dumps({"seen": seen, "previous": (dest / "model.safetensors").read_text(),
                  "left": sorted(p.name for p in small.iterdir())}))
"""


@pytest.mark.slow
def test_disk_full_while_saving_is_diskfull_and_keeps_the_old_artifact(tmp_path):
    """A real ENOSPC: a 128 KiB tmpfs mounted in a private mount namespace (unshare)."""
    small = tmp_path / "small"
    small.mkdir()
    mount = 'mount -t tmpfs -o size=128k tmpfs "$1"'
    probe = subprocess.run(["unshare", "--mount", "--map-root-user", "sh", "-c", mount, "sh", str(small)],
                           capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs in a private namespace here: {probe.stderr.strip()}")
    run = subprocess.run(
        ["unshare", "--mount", "--map-root-user", "sh", "-c", mount + ' && exec "$2" -c "$3" "$1"', "sh",
         str(small), sys.executable, _DISK_FULL_RUNNER],
        capture_output=True, text=True, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=120)
    assert run.returncode == 0, run.stderr
    report = json.loads(run.stdout.strip().splitlines()[-1])
    assert len(report["seen"]) == 3
    assert all("disk is full" in message for message in report["seen"]), report["seen"]
    assert "merged model" in report["seen"][0] and str(small / "merged") in report["seen"][0]
    assert report["previous"] == "previous"  # the old artifact survives
    assert report["left"] == ["merged"]  # no temporaries left behind


SMALL = dict(micro_batch_size=2, grad_accum_steps=2, max_seq_tokens=160, max_completion_tokens=32,
             num_threads=1, learning_rate=2e-3, warmup_ratio=0.1)


@pytest.mark.slow
def test_train_accumulation_split_gives_the_same_adapter(tiny_fim_model, tmp_path):
    examples = examples_from(REPO / "core" / "fim.py", 8, seed=5)
    results = {}
    for mb, acc in ((8, 1), (1, 8)):
        cfg = TrainConfig(**{**SMALL, "micro_batch_size": mb, "grad_accum_steps": acc}, lora_dropout=0.0,
                          max_steps=3)
        results[mb] = train(tiny_fim_model.hf_dir, examples, tmp_path / f"{mb}x{acc}", cfg, progress=False)
    assert results[8].losses == pytest.approx(results[1].losses, rel=1e-4)
    a = load_file(str(results[8].adapter_dir / "adapter_model.safetensors"))
    b = load_file(str(results[1].adapter_dir / "adapter_model.safetensors"))
    # The exact invariance is tested on gradients above. After AdamW, whose update g/√v is ±lr for
    # any gradient element, float noise in a near-zero element can move it by up to ~lr; a wrong
    # normalisation (examples weighted by micro-batch) would move most elements instead.
    lr = SMALL["learning_rate"]
    for name in a:
        diff = (a[name] - b[name]).abs()
        assert diff.max() < 2 * lr, name
        assert (diff > 1e-2 * lr).float().mean() < 0.01, name


def _completion_loss_of(model_dir: Path, tokenizer, examples) -> float:
    from transformers import AutoModelForCausalLM

    from distill.train import completion_loss

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    features = _features(tokenizer, examples)
    batch = collate(features, tokenizer.pad_token_id)
    with torch.no_grad():
        total = float(completion_loss(model, batch))
    return total / sum(t != IGNORE_INDEX for f in features for t in f["labels"][1:])


@pytest.mark.slow
def test_training_lowers_the_loss_and_writes_loadable_outputs(tiny_fim_model, tokenizer, tmp_path):
    examples = examples_from(REPO / "distill" / "batches.py", 4, seed=6)  # one step per epoch
    cfg = TrainConfig(**{**SMALL, "learning_rate": 5e-3}, max_steps=30, checkpoint_every_steps=10)
    result = train(tiny_fim_model.hf_dir, examples, tmp_path / "run", cfg, progress=False)
    assert result.steps == 30 and len(result.losses) == 30 and result.final_loss == result.losses[-1]
    assert sum(result.losses[-5:]) / 5 < 0.85 * sum(result.losses[:5]) / 5
    assert result.train_tokens > 0 and result.tokens_per_s > 0
    saved = json.loads((tmp_path / "run" / "train_result.json").read_text())
    assert saved["losses"] == result.losses and saved["merged_dir"] == str(result.merged_dir)
    assert (result.adapter_dir / "adapter_config.json").is_file()
    before = _completion_loss_of(tiny_fim_model.hf_dir, tokenizer, examples)
    after = _completion_loss_of(result.merged_dir, tokenizer, examples)  # the merged model learnt it too
    assert after < 0.85 * before
    assert [p.name for p in checkpoints(tmp_path / "run" / "checkpoints")] == ["step-00000020", "step-00000030"]


_RUNNER = """
import json, sys
from distill.train import TrainConfig, TrainExample, train
args = json.loads(sys.argv[1])
examples = [TrainExample(**e) for e in args["examples"]]
train(args["base"], examples, args["out"], TrainConfig(**args["cfg"]), progress=False)
"""


@pytest.mark.slow
def test_resume_after_kill_9_reaches_the_uninterrupted_adapter(tiny_fim_model, tmp_path):
    examples = examples_from(REPO / "distill" / "checkpoint.py", 12, seed=7)
    cfg_fields = {**SMALL, "max_steps": 14, "checkpoint_every_steps": 1}  # dropout stays on: RNG must resume
    reference = train(tiny_fim_model.hf_dir, examples, tmp_path / "reference", TrainConfig(**cfg_fields),
                      progress=False)

    out = tmp_path / "killed"
    args = json.dumps({"base": str(tiny_fim_model.hf_dir), "out": str(out), "cfg": cfg_fields,
                       "examples": [e.__dict__ for e in examples]})
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-c", _RUNNER, args], cwd=REPO, env=env)
    deadline = time.monotonic() + 120
    while len(checkpoints(out / "checkpoints")) < 1 or int(checkpoints(out / "checkpoints")[-1].name[5:]) < 4:
        assert proc.poll() is None, "the training subprocess ended before it could be killed"
        assert time.monotonic() < deadline
        time.sleep(0.02)
    time.sleep(random.Random().uniform(0, 0.1))  # any moment: mid-step or mid-checkpoint
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL
    assert not (out / "train_result.json").exists()
    killed_at = int(checkpoints(out / "checkpoints")[-1].name[5:])
    assert killed_at < 14

    with pytest.raises(StropError, match="different training run"):
        train(tiny_fim_model.hf_dir, examples[:-1], out, TrainConfig(**cfg_fields), progress=False)

    resumed = subprocess.run([sys.executable, "-c", _RUNNER, args], cwd=REPO, env=env, timeout=300)
    assert resumed.returncode == 0
    result = json.loads((out / "train_result.json").read_text())
    assert result["steps"] == 14 and result["losses"] == reference.losses
    a = load_file(str(reference.adapter_dir / "adapter_model.safetensors"))
    b = load_file(str(out / "adapter" / "adapter_model.safetensors"))
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name
    assert not [p for p in out.rglob(".tmp-*")]


@pytest.mark.slow
def test_train_from_quantised_gguf(tiny_fim_model, tmp_path):
    examples = examples_from(REPO / "core" / "fim.py", 4, seed=8)
    cfg = TrainConfig(**SMALL, max_steps=2)
    result = train(tiny_fim_model.gguf_q8, examples, tmp_path / "q8", cfg, progress=False)
    assert result.steps == 2
    config = json.loads((tmp_path / "q8" / "train_config.json").read_text())
    assert config["fim_format"] == "starcoder" and config["base"] == str(tiny_fim_model.gguf_q8)
    model, tokenizer, fmt = load_base(result.merged_dir)
    assert fmt is not None and fmt.name == "starcoder"
    assert model.config.vocab_size == len(tokenizer)
