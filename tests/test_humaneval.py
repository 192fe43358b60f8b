"""The HumanEval single-line infilling guard (distill/humaneval.py): the sandboxed checker on the real
tasks, and real model runs (the tiny FIM model, SmolLM2 prefix-only)."""

from __future__ import annotations

import time

import pytest

from distill.humaneval import (GuardConfig, GuardResult, HumanEvalError, TaskResult, execute, guard_holds,
                               load_tasks, run_guard, select_tasks)


@pytest.fixture(scope="module")
def tasks():
    return load_tasks()


def test_the_data_is_the_single_line_set(tasks):
    assert len(tasks) == 1033
    assert all(t.canonical_solution.endswith("\n") and t.canonical_solution.count("\n") == 1 for t in tasks)


def test_subset_selection_is_deterministic_and_in_data_order(tasks):
    a, b = select_tasks(tasks, 50, seed=1), select_tasks(tasks, 50, seed=1)
    assert [t.task_id for t in a] == [t.task_id for t in b] and len(a) == 50
    order = {t.task_id: i for i, t in enumerate(tasks)}
    assert [order[t.task_id] for t in a] == sorted(order[t.task_id] for t in a)
    assert {t.task_id for t in select_tasks(tasks, 50, seed=2)} != {t.task_id for t in a}
    assert len(select_tasks(tasks, None)) == 1033
    # the subset depends on the ids only: dropping other tasks does not change who is in it
    kept = {t.task_id for t in a}
    pool = [t for i, t in enumerate(tasks) if t.task_id in kept or i % 2]
    assert {t.task_id for t in select_tasks(pool, 50, seed=1)} == kept


@pytest.mark.parametrize("index", [0, 100, 500, 1032])
def test_the_canonical_middle_passes_and_a_wrong_one_fails(tasks, index):
    task = tasks[index]
    assert execute(task, task.canonical_solution) == "passed"
    indent = task.canonical_solution[: len(task.canonical_solution) - len(task.canonical_solution.lstrip())]
    assert execute(task, f"{indent}raise AssertionError('wrong middle')\n") == "failed"


def test_a_plausible_but_wrong_line_fails(tasks):
    task = tasks[0]  # has_close_elements: the first line of the double loop
    assert task.canonical_solution == "    for idx, elem in enumerate(numbers):\n"
    assert execute(task, "    for idx, elem in enumerate(numbers[:1]):\n") == "failed"


def test_an_infinite_loop_times_out_cleanly(tasks):
    task = tasks[0]
    t0 = time.monotonic()
    assert execute(task, "    for idx, elem in enumerate(iter(int, 1)):\n", timeout_s=1.0) == "timeout"
    assert time.monotonic() - t0 < 5


def test_memory_is_limited(tasks):
    task = tasks[0]
    line = "    for idx, elem in enumerate(numbers if bytearray(300 << 20) else []):\n"  # 300 MiB, then right
    assert execute(task, line, memory_mb=2048) == "passed"
    assert execute(task, line, memory_mb=256) == "failed"


def test_model_output_runs_in_a_scratch_directory(tasks, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    task = tasks[0]
    line = "    for idx, elem in enumerate(numbers if open('written-by-model', 'w') else []):\n"
    assert execute(task, line) == "passed"
    assert not (tmp_path / "written-by-model").exists()


def _result(passed: list[bool], mode: str = "prefix") -> GuardResult:
    per = [TaskResult(f"t{i}", p, "x\n", "passed" if p else "failed", 0.1) for i, p in enumerate(passed)]
    return GuardResult(sum(passed) / len(passed), len(passed), per, mode)


def test_guard_holds_within_the_allowed_drop():
    base = _result([True] * 30 + [False] * 70)
    assert guard_holds(base, _result([True] * 30 + [False] * 70)).holds
    assert guard_holds(base, _result([True] * 29 + [False] * 71), max_drop_points=1.0).holds
    check = guard_holds(base, _result([True] * 27 + [False] * 73), max_drop_points=1.0)
    assert not check.holds
    assert "30.0% → 27.0%" in check.detail and "3 lost" in check.detail
    with pytest.raises(HumanEvalError, match="different tasks"):
        guard_holds(base, _result([True] * 10))
    with pytest.raises(HumanEvalError, match="not comparable"):
        guard_holds(base, _result([True] * 30 + [False] * 70, mode="fim"))


@pytest.mark.slow
def test_tiny_fim_model_run_and_cache(tasks, tiny_fim_model, tmp_path, monkeypatch):
    monkeypatch.setenv("STROP_HOME", str(tmp_path / "home"))
    few = select_tasks(tasks, 3, seed=5)
    res = run_guard(tiny_fim_model.gguf_q8, tasks=few)
    assert res.mode == "fim" and res.n == 3 and not res.cached
    assert [t.task_id for t in res.per_task] == [t.task_id for t in few]
    assert all(t.completion.endswith("\n") and t.completion.count("\n") == 1 for t in res.per_task)
    assert res.pass_at_1 == sum(t.passed for t in res.per_task) / 3
    again = run_guard(tiny_fim_model.gguf_q8, tasks=few)
    assert again.cached and again.per_task == res.per_task
    assert len(list((tmp_path / "home" / "guards" / "humaneval").glob("*.json"))) == 1
    with pytest.raises(HumanEvalError, match="unknown guard mode 'nope'"):
        run_guard(tiny_fim_model.gguf_q8, tasks=few, cfg=GuardConfig(mode="nope"), cache=False)


@pytest.mark.slow
def test_smollm2_prefix_only_run(tasks, smollm_gguf, tmp_path, monkeypatch):
    monkeypatch.setenv("STROP_HOME", str(tmp_path / "home"))
    few = [t for t in tasks if t.task_id.startswith("SingleLineInfilling/HumanEval/0/")][:3]
    res = run_guard(smollm_gguf, tasks=few, cfg=GuardConfig(n_threads=1))
    assert res.mode == "prefix" and res.n == 3
    assert all(t.outcome in ("passed", "failed", "timeout") for t in res.per_task)
    assert all(t.completion.strip() for t in res.per_task)  # the model wrote a line for each
    with pytest.raises(HumanEvalError, match="has no FIM tokens"):
        run_guard(smollm_gguf, tasks=few, cfg=GuardConfig(mode="fim"), cache=False)
