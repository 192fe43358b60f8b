"""split: temporal split at a cutoff commit, file split fallback, no leaks of targets or secrets."""

import shutil
import subprocess
from pathlib import Path

import pytest

from core import git as core_git

from distill.source_files import FileFilter, decode_source, list_source_files
from distill.scrub import redact
from distill.split import Split, SplitConfig, choose_cutoff, first_parent_history, is_test_path, split_repo
from core.errors import StropError
from tests.fixtures.fixture_repo import (  # noqa: F401  (fixture_repo is a pytest fixture)
    NEVER_READ_MARKERS,
    PLANTED_SECRETS,
    SKIP_MARKERS,
    fixture_repo,
    make_fixture_repo,
    record_opens,
)

WIDE = dict(max_prefix_chars=10**9, max_suffix_chars=10**9)


def git(repo, *args):
    return subprocess.run(["git", *args], cwd=repo, capture_output=True, check=True, text=True).stdout


def split_text(split: Split) -> str:
    parts = list(split.train_files.values())
    parts += [it.prefix + "\0" + it.target + "\0" + it.suffix for it in split.eval_items]
    return "\n".join(parts)


@pytest.fixture(scope="module")
def temporal(fixture_repo) -> Split:
    return split_repo(fixture_repo, SplitConfig(**WIDE))


# --- temporal split -------------------------------------------------------------------------------


def test_history_counts_source_lines_only(fixture_repo):
    history = first_parent_history(fixture_repo, FileFilter())
    assert len(history) == 11
    assert [sha for sha, _ in history] == git(fixture_repo, "rev-list", "--reverse", "HEAD").split()
    # commit 3 adds only vendored, third-party and binary files, plus a minified script and a
    # generated module (content-level filters, so still counted by path: 1 + 5 lines)
    assert history[2][1] == 6
    assert history[10][1] == 22  # report.py


@pytest.mark.parametrize("added, frac, expected", [
    ([10, 10, 10, 10, 10, 10, 10, 10, 10, 10], 0.15, 7),  # the last 2 commits hold 20% ≥ 15%
    ([10, 10, 10, 10, 10, 10, 10, 10, 10, 10], 0.10, 8),
    ([100, 1, 1], 0.5, 0),  # clamped: the cutoff is at least the root commit
    ([5, 5], 0.9, 0),
    ([50, 0, 0, 0], 0.1, 0),  # nothing was added late: hold out all later commits
    ([1, 1, 1, 97], 0.15, 2),
])
def test_choose_cutoff(added, frac, expected):
    assert choose_cutoff([(str(i), a) for i, a in enumerate(added)], frac) == expected


def test_temporal_split_uses_the_tree_at_the_cutoff(fixture_repo, temporal):
    assert temporal.method == "temporal"
    assert temporal.cutoff_commit == git(fixture_repo, "rev-parse", "HEAD~3").strip()
    assert temporal.stats["added_lines_held_out"] / temporal.stats["added_lines_total"] >= 0.15
    at_cutoff = set(git(fixture_repo, "ls-tree", "-r", "--name-only", temporal.cutoff_commit).split())
    assert set(temporal.train_files) == {p for p in list_source_files(fixture_repo) if p in at_cutoff}
    assert "src/tally/report.py" not in temporal.train_files  # added after the cutoff
    core_then = git(fixture_repo, "show", f"{temporal.cutoff_commit}:src/tally/core.py")
    assert temporal.train_files["src/tally/core.py"] == core_then
    assert "def tagged" not in temporal.train_files["src/tally/core.py"]


def test_eval_items_are_cut_at_lines_added_after_the_cutoff(fixture_repo, temporal):
    items = temporal.eval_items
    assert {it.kind for it in items} == {"next_line", "fim_line", "fim_block"}
    assert {it.path for it in items} == {"src/tally/cache.py", "src/tally/core.py", "src/tally/report.py",
                                        "src/tally/signing.py"}  # tests/test_cache.py is a test file
    diff = git(fixture_repo, "diff", "-U0", temporal.cutoff_commit, "HEAD")
    added = {line[1:].strip() for line in diff.splitlines() if line.startswith("+") and not line.startswith("+++")}
    for it in items:
        head = decode_source(git(fixture_repo, "show", f"HEAD:{it.path}").encode(), FileFilter())[0]
        head_redacted = redact(head)[0]
        for line in it.target.split("\n"):
            assert not line.strip() or line.strip() in added, (it.path, line)
        if it.kind == "next_line":
            assert it.suffix == "" and head_redacted.startswith(it.prefix + it.target)
        else:  # HEAD's text is the context on both sides
            assert it.prefix + it.target + it.suffix == head_redacted
        assert it.prefix.rsplit("\n", 1)[-1].strip() == ""  # the cursor sits after the indentation


def test_eval_targets_never_occur_in_training_text(temporal):
    assert len(temporal.eval_items) >= 20
    assert temporal.stats["dropped_seen_in_train"] >= 1  # e.g. a lone `return default` style line
    for it in temporal.eval_items:
        for path, text in temporal.train_files.items():
            assert it.target not in text, (it.target, path)


def test_no_secret_reaches_train_or_eval(temporal):
    text = split_text(temporal)
    assert temporal.stats["train_redactions"] >= 4 and temporal.stats["eval_redactions"] >= 2
    for secret in PLANTED_SECRETS:
        assert secret not in text
    for marker in [*NEVER_READ_MARKERS.values(), *SKIP_MARKERS.values()]:
        assert marker not in text


def test_secret_files_are_never_read(fixture_repo, monkeypatch):
    calls = []
    real_run = subprocess.run

    def recording_run(args, *rest, **kwargs):
        calls.append((" ".join(map(str, args)), (kwargs.get("input") or b"").decode("utf-8", "replace")))
        return real_run(args, *rest, **kwargs)

    monkeypatch.setattr(core_git.subprocess, "run", recording_run)  # every git call goes through core.git
    with record_opens() as opened:
        split_repo(fixture_repo)
        split_repo(fixture_repo, SplitConfig(method="file"))
    assert any("cat-file" in cmd and "src/tally/core.py" in given for cmd, given in calls)  # reads go there
    opened_resolved = {str(Path(p).resolve()) for p in opened}
    for rel in NEVER_READ_MARKERS:
        assert str((fixture_repo / rel).resolve()) not in opened_resolved
        for cmd, given in calls:
            assert rel not in cmd and rel not in given


def test_holdout_fraction_moves_the_cutoff(fixture_repo):
    small = split_repo(fixture_repo, SplitConfig(holdout_frac=0.05))
    large = split_repo(fixture_repo, SplitConfig(holdout_frac=0.4))
    assert small.stats["cutoff_index"] > large.stats["cutoff_index"]
    assert large.stats["added_lines_held_out"] >= 0.4 * large.stats["added_lines_total"]
    assert len(large.eval_items) > len(small.eval_items)


def test_split_is_deterministic(fixture_repo, temporal):
    again = split_repo(fixture_repo, SplitConfig(**WIDE))
    assert again.eval_items == temporal.eval_items and again.train_files == temporal.train_files
    other_seed = split_repo(fixture_repo, SplitConfig(seed=1, **WIDE))
    assert [it.id for it in other_seed.eval_items] != [it.id for it in temporal.eval_items]


def test_caps_and_test_files(fixture_repo):
    capped = split_repo(fixture_repo, SplitConfig(max_items=7, max_items_per_file=3))
    assert len(capped.eval_items) == 7
    assert max(sum(1 for it in capped.eval_items if it.path == p) for p in {it.path for it in capped.eval_items}) <= 3
    with_tests = split_repo(fixture_repo, SplitConfig(eval_test_files=True))
    assert "tests/test_cache.py" in {it.path for it in with_tests.eval_items}


def test_validation_and_test_slices(temporal):
    val, test = temporal.validation(), temporal.test()
    assert val and test
    assert {it.id for it in val}.isdisjoint({it.id for it in test})
    assert sorted(it.id for it in val + test) == sorted(it.id for it in temporal.eval_items)
    assert temporal.validation() == val  # deterministic
    assert len(temporal.validation(0.2)) < len(val) < len(temporal.validation(0.8))
    assert set(it.id for it in temporal.validation(0.2)) <= set(it.id for it in val)  # nested by hash


def test_save_and_load(tmp_path, temporal):
    temporal.save(tmp_path / "split")
    loaded = Split.load(tmp_path / "split")
    assert loaded == temporal
    with pytest.raises(StropError, match="split.json is missing"):
        Split.load(tmp_path / "nowhere")


def test_subdirectory_of_a_repository(fixture_repo):
    sub = split_repo(fixture_repo / "src", SplitConfig(**WIDE))
    assert sub.method == "temporal"  # history, cutoff and paths are those of src/ alone
    at_cutoff = set(git(fixture_repo, "ls-tree", "-r", "--name-only", sub.cutoff_commit).split())
    assert set(sub.train_files) == {p.removeprefix("src/") for p in list_source_files(fixture_repo)
                                    if p.startswith("src/") and p in at_cutoff}
    assert sub.eval_items and all(it.path.startswith("tally/") for it in sub.eval_items)


# --- file split -----------------------------------------------------------------------------------


def test_file_split_keeps_test_files_whole_in_training(fixture_repo):
    split = split_repo(fixture_repo, SplitConfig(method="file", file_holdout_frac=0.3))
    assert split.method == "file" and split.cutoff_commit is None
    all_files = set(list_source_files(fixture_repo))
    held = {it.path for it in split.eval_items}
    assert held and not any(is_test_path(p) for p in held)
    assert {p for p in all_files if is_test_path(p)} <= set(split.train_files)
    assert held.isdisjoint(split.train_files)
    assert split.stats["held_out_files"] + len(split.train_files) == len(all_files)
    for it in split.eval_items:
        for text in split.train_files.values():
            assert it.target not in text
    assert split == split_repo(fixture_repo, SplitConfig(method="file", file_holdout_frac=0.3))
    text = split_text(split)
    for secret in PLANTED_SECRETS:
        assert secret not in text


def test_falls_back_to_file_split_without_history(fixture_repo, tmp_path):
    plain = tmp_path / "plain"
    shutil.copytree(fixture_repo, plain, ignore=shutil.ignore_patterns(".git"))
    split = split_repo(plain)
    assert split.method == "file" and split.stats["fallback_reason"] == "history has 0 commit(s)"
    assert split.eval_items
    with pytest.raises(StropError, match="temporal split needs git history"):
        split_repo(plain, SplitConfig(method="temporal"))

    one = tmp_path / "one"
    shutil.copytree(plain, one)
    env = {"GIT_AUTHOR_NAME": "a", "GIT_AUTHOR_EMAIL": "a@b.invalid", "GIT_COMMITTER_NAME": "a",
           "GIT_COMMITTER_EMAIL": "a@b.invalid", "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    for args in (["init", "-q"], ["add", "-A"], ["-c", "commit.gpgsign=false", "commit", "-q", "-m", "all"]):
        subprocess.run(["git", *args], cwd=one, env=env, check=True, capture_output=True)
    assert split_repo(one).stats["fallback_reason"] == "history has 1 commit(s)"


@pytest.mark.parametrize("path, expected", [
    ("tests/test_core.py", True), ("src/pkg/tests/helpers.py", True), ("test_x.py", True),
    ("x_test.py", True), ("conftest.py", True), ("server/handler_test.go", True),
    ("web/app.spec.ts", True), ("web/app.test.jsx", True), ("src/FooTest.java", True),
    ("spec/models/user_spec.rb", True), ("src/__tests__/a.js", True),
    ("src/testing_utils.py", False), ("src/contest.py", False), ("src/latest.py", False),
    ("src/attestation.go", False),
])
def test_is_test_path(path, expected):
    assert is_test_path(path) is expected


def test_config_is_validated():
    with pytest.raises(ValueError, match="method"):
        SplitConfig(method="random")
    with pytest.raises(ValueError, match="holdout_frac"):
        SplitConfig(holdout_frac=1.5)


def test_fixture_is_deterministic(tmp_path, fixture_repo):
    again = make_fixture_repo(tmp_path / "again")
    assert git(again, "rev-parse", "HEAD") == git(fixture_repo, "rev-parse", "HEAD")
