"""What the cycle trains on and evaluates against: own samples, verified accepted completions, and
held-out items that training never sees verbatim."""

from distill.cycle import training_examples, unseen
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
    examples = training_examples(samples, [kept_all, kept_half])
    by_target = {e.completion: e.weight for e in examples}
    assert by_target == {"foo(1)": 1.0, "bar()": 1.0, "compute(1)": 2.0, "load(path)": 1.5}
    verified = next(e for e in examples if e.completion == "compute(1)")
    assert verified.prefix == "def f():\n    return " and verified.path == "a.py"


def test_held_out_items_that_an_accepted_completion_contains_are_dropped():
    items = [EvalItem(f"e{i}", "next_line", "a.py", "python", "p", "", target)
             for i, target in enumerate(["return compute(1)", "x = 2", "print(total)"])]
    seen = TrainText(["def g():\n    return compute(1)\n", "print(tot"])
    assert [it.target for it in unseen(items, seen)] == ["x = 2", "print(total)"]
