"""A guard beyond the repository: HumanEval single-line infilling, pass@1 under greedy decoding.

A candidate distilled on one repository may get better there and worse at Python in general; this
guard measures the second. Each task is a HumanEval solution with one line removed (openai's
human-eval-infilling, 1,033 single-line tasks): the model writes that line, and the task passes
when the solution with that line runs its tests (`check(entry_point)`).

- FIM models get the prompt serving builds (`core.fim.layout`: prefix, suffix, middle marker);
  models without FIM the prefix alone (the "prefix-only" variant; it cannot see the suffix, so its
  pass@1 is lower and only comparable with other prefix-only runs).
- Decoding is the served greedy single-line decode (`core.decode`, token healing on, stop at the
  newline).
- Model output is never run in this process: each program runs in `sys.executable -I` in a fresh
  temporary directory, in its own session, with a wall-clock timeout and resource limits (address
  space, CPU seconds, file size, no core dumps); a timeout kills the whole process group.
- Results are cached under `$STROP_HOME/guards/humaneval/`, keyed by the GGUF's sha256, the task
  set and the decoding settings, so the nightly cycle scores the model in service once.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from core.decode import InProcessEngine, Job, Sampling
from core.errors import StropError
from core.fim import layout
from core.gguf_check import sha256_file
from core.models import ResolvedModel
from core.paths import strop_home

from .atomic import write_json_atomic
from .gate import GuardCheck

SHIPPED_FILE = Path(__file__).resolve().parent / "data" / "HumanEval-SingleLineInfilling.jsonl.gz"  # MIT, see data/README.md
SINGLE_LINE_FILE = "human-eval-infilling/HumanEval-SingleLineInfilling.jsonl.gz"
CACHE_VERSION = 1  # bump when prompts, decoding or scoring change: old cached results are then ignored
DEFAULT_N_TASKS = 300
DEFAULT_SEED = 1234


class HumanEvalError(StropError):
    pass


@dataclass(frozen=True)
class Task:
    task_id: str
    prompt: str  # the prefix
    suffix: str
    canonical_solution: str  # the removed middle (one line, newline included)
    test: str
    entry_point: str


@dataclass(frozen=True)
class GuardConfig:
    max_tokens: int = 48
    n_ctx: int = 2048
    timeout_s: float = 5.0
    memory_mb: int = 1024
    heal: bool = True
    n_threads: int = 0  # 0: one per CPU core
    mode: str | None = None  # "fim" | "prefix"; None: FIM when the model has FIM tokens


@dataclass
class TaskResult:
    task_id: str
    passed: bool
    completion: str
    outcome: str  # passed | failed | timeout
    seconds: float  # generation + execution


@dataclass
class GuardResult:
    pass_at_1: float
    n: int
    per_task: list[TaskResult] = field(default_factory=list)
    mode: str = ""
    model_sha256: str = ""
    seconds: float = 0.0
    cached: bool = False

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> GuardResult:
        return cls(**{**data, "per_task": [TaskResult(**t) for t in data["per_task"]]})


# --- data ------------------------------------------------------------------------------------------
def load_tasks(path: Path | None = None) -> list[Task]:
    """All single-line infilling tasks, in the file's order (tasks of one problem are adjacent)."""
    if path is None:
        env = os.environ.get("STROP_EVAL_DATA")
        path = Path(env) / SINGLE_LINE_FILE if env else SHIPPED_FILE
    path = Path(path)
    try:
        with gzip.open(path, "rt", encoding="utf-8") as f:
            rows = [json.loads(line) for line in f if line.strip()]
    except OSError as err:
        raise HumanEvalError(f"cannot read HumanEval infilling data at {path} ({err}); set STROP_EVAL_DATA to the "
                             "directory holding human-eval-infilling/") from err
    return [Task(r["task_id"], r["prompt"], r["suffix"], r["canonical_solution"], r["test"], r["entry_point"])
            for r in rows]


def select_tasks(tasks: Sequence[Task], n: int | None = DEFAULT_N_TASKS, seed: int = DEFAULT_SEED) -> list[Task]:
    """A deterministic subset of `n` tasks (all when n is None or ≥ the count), in the data's order.

    Each task's rank is sha256(seed:task_id), so the subset depends only on the seed and the ids: it is
    the same on every machine and run, and does not shift when other tasks are added."""
    if n is None or n >= len(tasks):
        return list(tasks)
    rank = sorted(tasks, key=lambda t: hashlib.sha256(f"{seed}:{t.task_id}".encode()).hexdigest())
    keep = {t.task_id for t in rank[:n]}
    return [t for t in tasks if t.task_id in keep]


# --- execution -------------------------------------------------------------------------------------
def program(task: Task, middle: str) -> str:
    return f"{task.prompt}{middle}{task.suffix}\n\n{task.test}\n\ncheck({task.entry_point})\n"


# The child sets its own limits before it runs the program (rather than a preexec_fn, which is unsafe
# in a process with threads): address space, CPU seconds, file size, no core dumps.
_LAUNCHER = (
    "import resource, runpy, sys\n"
    "cpu, mem = int(sys.argv[2]), int(sys.argv[3])\n"
    "for lim, v in ((resource.RLIMIT_AS, mem), (resource.RLIMIT_CPU, cpu), (resource.RLIMIT_FSIZE, 16 << 20),"
    " (resource.RLIMIT_CORE, 0)):\n"
    "    resource.setrlimit(lim, (v, v))\n"
    "runpy.run_path(sys.argv[1], run_name='__main__')\n"
)


def execute(task: Task, middle: str, *, timeout_s: float = 5.0, memory_mb: int = 1024) -> str:
    """Run the task's tests on the solution with `middle` in a sandboxed subprocess: passed | failed | timeout."""
    with tempfile.TemporaryDirectory(prefix="strop-he-") as tmp:
        script = Path(tmp) / "solution.py"
        script.write_text(program(task, middle), encoding="utf-8")
        proc = subprocess.Popen(
            [sys.executable, "-I", "-B", "-c", _LAUNCHER, str(script), str(int(timeout_s) + 1),
             str(memory_mb * 1024 * 1024)],
            cwd=tmp, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            env={"PATH": os.defpath}, start_new_session=True)
        try:
            rc = proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(proc.pid, signal.SIGKILL)  # its own session: the program and anything it started
            except ProcessLookupError:
                pass
            proc.wait()
            return "timeout"
        if rc == -signal.SIGXCPU:
            return "timeout"
        return "passed" if rc == 0 else "failed"


# --- generation ------------------------------------------------------------------------------------
def first_line(text: str) -> str:
    """The single line the model wrote, with its newline (the middles are whole lines)."""
    return text.split("\n", 1)[0] + "\n"


class _Generator:
    def __init__(self, model_path: Path, cfg: GuardConfig) -> None:
        if cfg.mode not in (None, "fim", "prefix"):
            raise HumanEvalError(f"unknown guard mode {cfg.mode!r}: use 'fim', 'prefix' or None (FIM when the "
                                 "model has FIM tokens)")
        self.engine = InProcessEngine(n_ctx=cfg.n_ctx, n_threads=cfg.n_threads or os.cpu_count() or 1, n_gpu_layers=-1)
        self.engine.load(ResolvedModel(model_path, model_path.stem, model_path.stem, "flag"))
        self.model = self.engine.model
        self.cfg = cfg
        mode = cfg.mode or ("fim" if self.model.fim is not None else "prefix")
        if mode == "fim" and self.model.fim is None:
            self.engine.close()
            raise HumanEvalError(f"{model_path.name} has no FIM tokens: run the guard with mode='prefix'")
        self.mode = mode

    def middle(self, task: Task) -> str:
        fmt = self.model.fim if self.mode == "fim" else None
        job = Job(key="humaneval", pieces=layout(fmt, task.prompt, task.suffix, language="python"),
                  max_tokens=self.cfg.max_tokens, single_line=True, sampling=Sampling(0.0), heal=self.cfg.heal)
        gen = self.engine.generate(self.model, job)
        return first_line(gen.text) if gen is not None else "\n"

    def close(self) -> None:
        self.engine.close()


def _cache_path(sha: str, mode: str | None, tasks: Sequence[Task], cfg: GuardConfig) -> Path:
    settings = {k: v for k, v in asdict(cfg).items() if k != "n_threads"}  # threads do not change the answer
    h = hashlib.sha256(json.dumps({"v": CACHE_VERSION, "tasks": [t.task_id for t in tasks], "mode": mode,
                                   "cfg": settings}, sort_keys=True).encode()).hexdigest()[:16]
    return strop_home() / "guards" / "humaneval" / f"{sha[:32]}-{h}.json"


def run_guard(model_path: Path, *, tasks: Sequence[Task] | None = None, cfg: GuardConfig = GuardConfig(),
              cache: bool = True, progress: bool = False) -> GuardResult:
    """pass@1 of `model_path` on `tasks` (default: the seeded 300-task subset), cached by GGUF sha256."""
    model_path = Path(model_path)
    if not model_path.is_file():
        raise HumanEvalError(f"{model_path}: no such model file; pass the path of a .gguf")
    tasks = list(tasks) if tasks is not None else select_tasks(load_tasks())
    if not tasks:
        raise HumanEvalError("no HumanEval tasks selected: pass at least one task")
    sha = sha256_file(model_path)
    where = _cache_path(sha, cfg.mode, tasks, cfg)
    if cache and where.is_file():
        try:
            result = GuardResult.from_json(json.loads(where.read_text()))
            result.cached = True
            return result
        except (json.JSONDecodeError, TypeError, KeyError):
            pass  # a damaged cache entry is recomputed
    from tqdm import tqdm

    t0 = time.perf_counter()
    gen = _Generator(model_path, cfg)
    per_task: list[TaskResult] = []
    try:
        for task in tqdm(tasks, desc=f"humaneval {model_path.name} ({gen.mode})", disable=not progress,
                         dynamic_ncols=True):
            t1 = time.perf_counter()
            middle = gen.middle(task)
            outcome = execute(task, middle, timeout_s=cfg.timeout_s, memory_mb=cfg.memory_mb)
            per_task.append(TaskResult(task.task_id, outcome == "passed", middle, outcome,
                                       round(time.perf_counter() - t1, 4)))
    finally:
        gen.close()
    passed = sum(r.passed for r in per_task)
    result = GuardResult(passed / len(per_task), len(per_task), per_task, gen.mode, sha,
                         round(time.perf_counter() - t0, 2))
    if cache:
        write_json_atomic(where, result.to_json())
    return result


def guard_holds(base: GuardResult, cand: GuardResult, max_drop_points: float = 1.0) -> GuardCheck:
    """The candidate's pass@1 may fall at most `max_drop_points` percentage points below the base's."""
    b_ids = [t.task_id for t in base.per_task]
    c_ids = [t.task_id for t in cand.per_task]
    if sorted(b_ids) != sorted(c_ids):
        raise HumanEvalError(f"the HumanEval guard ran on different tasks for the two models ({len(b_ids)} vs "
                             f"{len(c_ids)} tasks, not the same ids); run both on one task selection")
    if base.mode != cand.mode:
        raise HumanEvalError(f"the HumanEval guard ran in {base.mode!r} mode for the model in service and in "
                             f"{cand.mode!r} for the candidate; they are not comparable")
    c = {t.task_id: t.passed for t in cand.per_task}
    drop = 100 * (sum(t.passed for t in base.per_task) - sum(c.values())) / max(1, base.n)
    lost = sum(1 for t in base.per_task if t.passed and not c[t.task_id])
    won = sum(1 for t in base.per_task if not t.passed and c[t.task_id])
    holds = drop <= max_drop_points + 1e-9  # counts, so 1 task in 100 is exactly 1 point
    detail = (f"HumanEval single-line infilling ({base.mode}) pass@1 {base.pass_at_1:.1%} → {cand.pass_at_1:.1%} "
              f"on {base.n} tasks ({won} gained, {lost} lost); at most {max_drop_points} points drop allowed")
    return GuardCheck("humaneval-infilling", holds, detail, base.pass_at_1, cand.pass_at_1)
