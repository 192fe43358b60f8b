"""distill/cycle.py's stage table and its one loop: timing, state.json, resume, redo of a stage whose
files are gone. The real split and harvest stages on the fixture repository; a small last stage
stands for the model stages (tests/test_distill_cycle.py runs those, kill -9 included)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from distill.cycle import STAGES, Cycle, CycleConfig, Stage
from tests.fixtures.fixture_repo import fixture_repo  # noqa: F401  (a pytest fixture)

SPLIT_HARVEST = STAGES[:2]


@pytest.fixture
def cycle(tmp_path, monkeypatch, fixture_repo):  # noqa: F811
    monkeypatch.setenv("STROP_HOME", str(tmp_path / "home"))
    base = tmp_path / "base.gguf"
    base.write_bytes(b"GGUF")  # only named: the split and harvest stages never load the model
    c = Cycle(fixture_repo, CycleConfig(base_model=base, max_prompts=10, max_eval_items=8), progress=False)
    d = c.root / "cycle-test"
    d.mkdir()
    return c, d


def _state(d: Path) -> dict:
    return json.loads((d / "state.json").read_text())


def _ran(caplog) -> list[str]:
    return [r.getMessage().split(":")[0].split(" ")[0] for r in caplog.records if r.name == "strop.distill"]


def test_the_table_names_every_stage_once_in_order():
    assert [s.name for s in STAGES] == ["split", "harvest", "sample", "train", "export", "evaluate", "register"]
    assert all(s.resume_from in (None, *[t.name for t in STAGES[:i]]) for i, s in enumerate(STAGES))


def test_stages_run_in_order_and_record_state_and_seconds(cycle, caplog):
    c, d = cycle
    caplog.set_level(logging.INFO, logger="strop.distill")
    outcome = c._run_stages(d, SPLIT_HARVEST)
    state = _state(d)
    assert state["stage"] == "harvest" and set(state["seconds"]) == {"split", "harvest"}
    assert outcome.seconds_by_stage == state["seconds"]
    assert all((d / n).stat().st_size > 0 for n in ("validation.jsonl", "test.jsonl", "split.json", "prompts.jsonl"))
    assert _ran(caplog) == ["splitting", "split", "harvest"]


def test_a_finished_cycle_part_is_skipped_and_the_next_stage_runs(cycle, caplog):
    c, d = cycle
    c._run_stages(d, SPLIT_HARVEST)
    seen = []

    def probe(run):
        seen.append(len((run.d / "prompts.jsonl").read_text().splitlines()))
        (run.d / "probe.txt").write_text("ok")

    caplog.set_level(logging.INFO, logger="strop.distill")
    c._run_stages(d, (*SPLIT_HARVEST, Stage("probe", probe, ("probe.txt",))))
    assert _ran(caplog) == [] and seen and seen[0] > 0  # split and harvest were not run again
    assert _state(d)["stage"] == "probe" and set(_state(d)["seconds"]) == {"split", "harvest", "probe"}


def test_harvest_resumes_from_the_split_it_needs_in_memory(cycle, caplog):
    c, d = cycle
    c._run_stages(d, SPLIT_HARVEST[:1])  # as if killed during the harvest
    assert _state(d)["stage"] == "split"
    caplog.set_level(logging.INFO, logger="strop.distill")
    c._run_stages(d, SPLIT_HARVEST)
    assert _ran(caplog) == ["splitting", "split", "harvest"]


def test_a_finished_stage_whose_file_is_gone_is_redone(cycle, caplog):
    c, d = cycle
    c._run_stages(d, SPLIT_HARVEST)
    (d / "prompts.jsonl").unlink()
    caplog.set_level(logging.INFO, logger="strop.distill")
    c._run_stages(d, SPLIT_HARVEST)
    assert (d / "prompts.jsonl").exists()
    assert _ran(caplog) == ["prompts.jsonl", "splitting", "split", "harvest"]  # gone → from the split


def test_a_stage_that_does_not_write_its_outputs_fails_and_is_not_marked_done(cycle):
    c, d = cycle
    with pytest.raises(RuntimeError, match="the lazy stage finished without writing nothing.txt"):
        c._run_stages(d, (Stage("lazy", lambda run: None, ("nothing.txt",)),))
    assert not (d / "state.json").exists() or _state(d).get("stage") is None
