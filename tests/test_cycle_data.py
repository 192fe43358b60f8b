"""What the cycle trains on and evaluates against: own samples, verified accepted completions, and
held-out items that training never sees verbatim."""

from distill.cycle import unseen
from distill.mix import training_examples
from distill.harvest import HarvestConfig, logged_prompt
from distill.records import EvalItem, LoggedContext
from distill.sample import Sample
from distill.split import TrainText


def _sample(pid: str, completion: str) -> Sample:
    return Sample(pid, 0, "a.py", "python", "x = ", "\n", completion, 1.0, 3, "eog")


def test_accepted_completions_train_with_their_retention_weight_and_samples_with_weight_one():
    kept_all = logged_prompt(LoggedContext("a.py", "python", "def f():\n    return ", "", "compute(1)", 10, 10), HarvestConfig())
    kept_half = logged_prompt(LoggedContext("b.py", "python", "y = ", "", "load(path)", 4, 8), HarvestConfig())
    samples = [_sample("p1", "foo(1)"), _sample(kept_all.id, "bar()")]  # a re-sample at a logged context
    examples = training_examples(samples, [kept_all, kept_half]).examples
    by_target = {e.completion: e.weight for e in examples}
    assert by_target == {"foo(1)": 1.0, "bar()": 1.0, "compute(1)": 2.0, "load(path)": 1.5}
    verified = next(e for e in examples if e.completion == "compute(1)")
    assert verified.prefix == "def f():\n    return " and verified.path == "a.py"


def test_held_out_items_that_an_accepted_completion_contains_are_dropped():
    items = [EvalItem(f"e{i}", "next_line", "a.py", "python", "p", "", target)
             for i, target in enumerate(["return compute(1)", "x = 2", "print(total)"])]
    seen = TrainText(["def g():\n    return compute(1)\n", "print(tot"])
    assert [it.target for it in unseen(items, seen)] == ["x = 2", "print(total)"]


def test_config_precedence_and_file_selection_for_split_and_prompts_alike(tmp_path):
    import pytest

    from distill.cycle import load_config
    from core.errors import StropError

    toml = tmp_path / "distill.toml"
    toml.write_text('[sample]\ntemperature = 1.2\nn_per_prompt = 2\n\n[files]\nexclude_globs = ["gen/**"]\n'
                    'languages = ["python"]\n\n[eval]\nt_eval_grid = [0.0, 0.5]\n')
    cfg = load_config(toml, ["sample.temperature=0.9"], ["vendor2/**"])
    assert cfg.sample.temperature == 0.9 and cfg.sample.n_per_prompt == 2  # --set beats the file
    assert cfg.eval.t_eval_grid == (0.0, 0.5)
    assert cfg.split.files == cfg.harvest.files
    assert cfg.split.files.exclude_globs == ("gen/**", "vendor2/**") and cfg.split.files.languages == ("python",)
    with pytest.raises(StropError, match="unknown setting sample.temprature"):
        load_config(None, ["sample.temprature=1"])
    with pytest.raises(StropError, match=r"\[files\] section"):
        load_config(None, ['harvest.files={"max_file_bytes": 1}'])
    with pytest.raises(StropError, match="unknown configuration section"):
        load_config(None, ["smaple.n_per_prompt=1"])


def test_the_prompt_cap_keeps_every_logged_prompt():
    from distill.cycle import _cap
    from distill.records import Prompt

    repo = [Prompt(f"r{i}", "next_line", "a.py", "python", f"x{i} = ", "", "1") for i in range(10)]
    logged = [Prompt(f"l{i}", "logged", "a.py", "python", f"y{i} = ", "", "2", 1.5, "log") for i in range(3)]
    kept = _cap(repo + logged, 5, seed=0)
    assert len(kept) == 5 and {p.id for p in logged} <= {p.id for p in kept}
    assert _cap(repo + logged, 5, seed=0) == kept and _cap(repo + logged, 5, seed=1) != kept
