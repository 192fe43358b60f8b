"""harvest: which files, where to cut, determinism, secrets; and the JSONL records it writes."""

import dataclasses
import shutil
from pathlib import Path

import pytest

from core.languages import language_of
from distill.harvest import HarvestConfig, Lines, harvest
from distill.source_files import (
    FileFilter,
    decode_source,
    excluded,
    list_source_files,
    load_source_files,
    skip_reason_for_path,
)
from distill.records import EvalItem, LoggedContext, Prompt, append_jsonl, read_jsonl, write_jsonl
from distill.scrub import REDACTED
from tests.fixtures.fixture_repo import (  # noqa: F401  (fixture_repo is a pytest fixture)
    NEVER_READ_MARKERS,
    PLANTED_SECRETS,
    SKIP_MARKERS,
    fixture_repo,
    record_opens,
)
from core.errors import StropError

EXPECTED_FILES = [
    "Makefile", "bin/tally", "pyproject.toml", "scripts/release.sh", "src/tally/__init__.py",
    "src/tally/cache.py", "src/tally/cli.py", "src/tally/client.py", "src/tally/config.py",
    "src/tally/core.py", "src/tally/report.py", "src/tally/signing.py", "src/tally/utils.py",
    "tests/conftest.py", "tests/test_cache.py", "tests/test_core.py", "tests/test_utils.py",
    "web/app.js", "web/format.ts",
]
ALL_KINDS = {"fim_line", "fim_block", "fim_span", "next_line", "next_block"}
WIDE = dict(max_prefix_chars=10**9, max_suffix_chars=10**9)


def all_text(prompts):
    return "\n".join(p.prefix + "\x00" + p.reference + "\x00" + p.suffix for p in prompts)


# --- which files ----------------------------------------------------------------------------------


def test_lists_tracked_source_files_only(fixture_repo):
    assert list_source_files(fixture_repo) == EXPECTED_FILES


def test_skip_reasons(fixture_repo):
    skipped = load_source_files(fixture_repo).skipped
    assert skipped == {
        ".env": "secret_file", "deploy/id_rsa": "secret_file", "src/tally/credentials.py": "secret_file",
        "vendor/leftpad.py": "vendored", "third_party/semver/semver.py": "vendored",
        "poetry.lock": "lock_file", "static/widgets.js": "minified",
        "src/tally/schema_gen.py": "generated", "assets/logo.png": "unknown_language",
        ".gitignore": "unknown_language", "README.md": "prose_or_data",
    }


def test_secret_files_are_never_opened(fixture_repo):
    with record_opens() as opened:
        prompts = harvest(fixture_repo, None, HarvestConfig(prompts_per_file=50))
    assert prompts
    assert any(p.endswith("src/tally/core.py") for p in opened)  # the recorder does see reads
    for rel in NEVER_READ_MARKERS:
        assert str((fixture_repo / rel).resolve()) not in {str(Path(p).resolve()) for p in opened}


def test_skipped_and_secret_files_leave_no_trace(fixture_repo):
    text = all_text(harvest(fixture_repo, None, HarvestConfig(prompts_per_file=50, **WIDE)))
    for marker in [*NEVER_READ_MARKERS.values(), *SKIP_MARKERS.values()]:
        assert marker not in text


def test_planted_secrets_never_reach_a_prompt(fixture_repo):
    files = load_source_files(fixture_repo)
    assert files.redactions >= 6
    text = all_text(harvest(fixture_repo, None, HarvestConfig(prompts_per_file=50, **WIDE)))
    text += "\n".join(files.texts.values())
    assert REDACTED in text
    for secret in PLANTED_SECRETS:
        assert secret not in text


def test_walks_a_directory_without_git(fixture_repo, tmp_path):
    plain = tmp_path / "plain"
    shutil.copytree(fixture_repo, plain, ignore=shutil.ignore_patterns(".git"))
    (plain / "node_modules" / "lib").mkdir(parents=True)
    (plain / "node_modules" / "lib" / "index.js").write_text("module.exports = 1;\n")
    listed = list_source_files(plain)
    assert listed == sorted(EXPECTED_FILES + ["scratch_untracked.py"])  # untracked counts here


def test_exclude_globs(fixture_repo):
    files = FileFilter(exclude_globs=("web/", "*.toml", "src/**/c*.py", "tests/**"))
    listed = list_source_files(fixture_repo, files)
    assert listed == [
        "Makefile", "bin/tally", "scripts/release.sh", "src/tally/__init__.py", "src/tally/report.py",
        "src/tally/signing.py", "src/tally/utils.py",
    ]
    assert load_source_files(fixture_repo, files).skipped["web/app.js"] == "excluded"


@pytest.mark.parametrize("path, pattern, expected", [
    ("src/a/b.py", "src/**/*.py", True),
    ("src/b.py", "src/**/*.py", True),
    ("lib/src/b.py", "src/**/*.py", False),
    ("a/b/c.py", "a/*.py", False),
    ("a/c.py", "a/*.py", True),
    ("docs/guide/x.md", "*.md", True),
    ("web/app.js", "web/", True),
    ("pkg/generated/x.go", "generated", True),
    ("pkg/generated.go", "generated", False),
    ("deep/er/test_x.py", "**/test_*.py", True),
    ("test_x.py", "**/test_*.py", True),
    ("a/b.py", "a/[bc].py", True),
    ("a/d.py", "a/[!d].py", False),
    ("top.py", "/top.py", True),
    ("sub/top.py", "/top.py", False),  # a leading "/" anchors at the root
    # gitignore semantics the hand-made glob regex got wrong:
    ("src/build/x.py", "build/", True),  # a trailing "/" is a directory at any depth
    ("a/b/gen/x.py", "**/gen/*.py", True),
    ("gen/x.py", "**/gen/*.py", True),
    ("gen.py", "gen/", False),  # ... and only a directory
])
def test_exclude_glob(path, pattern, expected):
    assert excluded(path, (pattern,)) is expected


def test_exclude_globs_read_as_one_gitignore():
    globs = ("tests/**", "!tests/test_keep.py", "*.pb.go", "# a comment", "")
    assert not excluded("tests/test_keep.py", globs)  # a later "!" line re-includes
    assert excluded("tests/test_other.py", globs)
    assert excluded("api/v1/x.pb.go", globs)
    assert not excluded("# a comment", globs)
    assert not excluded("src/a.py", ())


@pytest.mark.parametrize("path, reason", [
    ("node_modules/x/index.js", "vendored"), ("web/node_modules/x/index.js", "vendored"),
    ("build/lib/pkg/a.py", "vendored"), ("dist/app.js", "vendored"), (".venv/lib/a.py", "vendored"),
    ("src/pip/operations/build/wheel.py", None), ("src/target/aim.py", None),
    ("Cargo.lock", "lock_file"), ("frontend/yarn.lock", "lock_file"), ("a/b/uv.lock", "lock_file"),
    ("keys/deploy.pem", "secret_file"), ("notes.txt", "unknown_language"), ("docs/x.md", "prose_or_data"),
    ("bin/tool", None),  # extensionless: its shebang decides once read
])
def test_skip_reason_for_path(path, reason):
    assert skip_reason_for_path(path, FileFilter()) == reason


def test_language_filter_and_size_limit(fixture_repo):
    only_js = FileFilter(languages=("typescript", "javascript"))
    assert list_source_files(fixture_repo, only_js) == ["web/app.js", "web/format.ts"]
    prompts = harvest(fixture_repo, None, HarvestConfig(files=only_js))  # harvest's own reading filters too
    assert prompts and {p.path for p in prompts} <= {"web/app.js", "web/format.ts"}
    small = load_source_files(fixture_repo, FileFilter(max_file_bytes=600))
    assert small.skipped["src/tally/core.py"] == "too_large"
    assert all(len(t.encode()) <= 600 for t in small.texts.values())


@pytest.mark.parametrize("data, reason", [
    (b"x = 1\0\n", "binary"),
    (b"caf\xe9 = 1\n", "binary"),
    (b"// Code generated by protoc-gen-go. DO NOT EDIT.\npackage x\n", "generated"),
    (b"# @generated\nx = 1\n", "generated"),
    (b"var a=1;" * 400 + b"\n", "minified"),
    ((b"x" * 300 + b"\n") * 5, "minified"),
    (b"y" * 300_000, "too_large"),
])
def test_decode_source_rejects(data, reason):
    assert decode_source(data, FileFilter()) == (None, reason)


def test_decode_source_normalises():
    assert decode_source(b"\xef\xbb\xbfx = 1\r\ny = 2\r\n", FileFilter()) == ("x = 1\ny = 2\n", None)
    late = b"x = 1\n" * 20 + b"# this line says do not edit, but too late to be a header\n"
    assert decode_source(late, FileFilter())[1] is None


@pytest.mark.parametrize("path, language", [
    ("a.py", "python"), ("a.ts", "typescript"), ("a.tsx", "typescriptreact"), ("a.go", "go"),
    ("a.rs", "rust"), ("A.java", "java"), ("a.c", "c"), ("a.cpp", "cpp"), ("a.lua", "lua"),
    ("run.sh", "shellscript"), ("Makefile", "makefile"), ("Dockerfile", "dockerfile"),
    ("x.PY", "python"), ("notes.txt", None), ("LICENSE", None), ("README.md", "markdown"),
])
def test_language_of(path, language):
    assert language_of(path) == language


@pytest.mark.parametrize("head, language", [
    ("#!/usr/bin/env python3\n", "python"), ("#!/bin/bash\n", "shellscript"), ("#!/bin/sh -eu\n", "shellscript"),
    ("#!/usr/bin/env -S node --no-warnings\n", "javascript"), ("#!/usr/bin/python3.11\n", "python"),
    ("MIT License\n", None), ("#!/usr/bin/env cobol\n", None),
])
def test_language_of_extensionless_files_by_shebang(head, language):
    assert language_of("bin/tool", head) == language
    assert language_of("tool.txt", head) is None  # an extension, even unknown, wins


def test_prose_and_data_only_on_request(fixture_repo):
    assert "README.md" in list_source_files(fixture_repo, FileFilter(languages=("markdown", "python")))


# --- where to cut ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def texts(fixture_repo):
    return load_source_files(fixture_repo).texts


def test_same_seed_same_prompts_other_seed_other_prompts(fixture_repo, texts):
    a = harvest(fixture_repo, texts, HarvestConfig(seed=3))
    b = harvest(fixture_repo, dict(reversed(list(texts.items()))), HarvestConfig(seed=3))
    c = harvest(fixture_repo, texts, HarvestConfig(seed=4))
    assert a == b
    assert [p.id for p in a] != [p.id for p in c]
    assert len({p.id for p in a}) == len(a)


def test_cut_kinds_are_well_formed(fixture_repo, texts):
    prompts = harvest(fixture_repo, texts, HarvestConfig(prompts_per_file=40, lines_per_prompt=1, **WIDE))
    assert {p.kind for p in prompts} == ALL_KINDS
    for p in prompts:
        text = texts[p.path]
        assert p.source == "repo" and p.weight == 1.0
        assert p.reference.strip(), p
        if p.kind.startswith("fim_"):
            assert p.prefix + p.reference + p.suffix == text
        else:
            assert p.suffix == "" and text.startswith(p.prefix + p.reference)
        if p.kind != "fim_span":  # the cursor sits after the indentation, the hole ends the line
            line_so_far = p.prefix.rsplit("\n", 1)[-1]
            assert line_so_far.strip() == ""
            assert not p.reference[0].isspace() and not p.reference[-1].isspace()
            rest = text[len(p.prefix) + len(p.reference):]
            assert rest == "" or rest[0] == "\n" or rest.split("\n", 1)[0].strip() == ""
        if p.kind in ("fim_line", "next_line"):
            assert "\n" not in p.reference
        if p.kind in ("fim_block", "next_block"):
            assert p.reference.count("\n") >= 1
        if p.kind == "fim_span":  # starts and ends at token boundaries
            assert not p.reference[0].isspace()
            before, after = p.prefix[-1:], p.suffix[:1]
            assert not (before.isalnum() and p.reference[0].isalnum())
            assert not (after.isalnum() and p.reference[-1].isalnum())
            assert not p.reference[-1].isspace()


def test_block_holes_follow_indentation():
    text = "def f(x):\n    if x:\n        return 1\n\n    return 2\n\n\ndef g():\n    pass\n"
    lines = Lines(text)
    assert lines.opens_block(1) and lines.opens_block(2) and not lines.opens_block(4)
    assert lines.block_end(0, 20) == 4  # def f and its body, up to the paragraph break before g
    assert lines.block_end(1, 20) == 2  # `if x` and its body; blank + same level = paragraph break
    assert lines.block_end(4, 20) == 4  # `return 2`, then the dedent
    assert lines.block_end(2, 20) == 2  # the body of `if x`
    assert lines.block_end(0, 3) == 2  # at most 3 lines


def test_windows_are_trimmed_at_line_starts(fixture_repo, texts):
    cfg = HarvestConfig(prompts_per_file=30, lines_per_prompt=1, max_prefix_chars=120, max_suffix_chars=50)
    prompts = harvest(fixture_repo, texts, cfg)
    assert any(len(texts[p.path]) > 400 for p in prompts)
    for p in prompts:
        text = texts[p.path]
        assert len(p.prefix) <= 120 and len(p.suffix) <= 50
        start = text.find(p.prefix + p.reference + p.suffix)
        assert start >= 0
        # the window starts at the file start or a line start (unless the cursor line alone is too long)
        assert start == 0 or text[start - 1] == "\n" or "\n" not in p.prefix
        end = start + len(p.prefix + p.reference + p.suffix)
        if p.kind.startswith("fim_") and end < len(text):
            assert p.suffix.endswith("\n") or "\n" not in p.suffix


def test_prompts_per_file_scales_with_file_length(fixture_repo, texts):
    prompts = harvest(fixture_repo, texts, HarvestConfig(prompts_per_file=5, lines_per_prompt=10))
    per_file = {path: sum(1 for p in prompts if p.path == path) for path in texts}
    assert max(per_file.values()) <= 5
    assert per_file["bin/tally"] == 1 and per_file["src/tally/core.py"] >= 3


def test_files_passed_in_are_filtered_and_redacted(fixture_repo):
    files = {
        "src/a.py": "x = 1\npassword = 'hunter22'\ny = 2\n" * 3,
        ".env": "TOKEN=abc\n" * 20,
        "vendor/b.py": "z = 3\n" * 20,
        "gen.py": "# DO NOT EDIT\n" + "w = 4\n" * 20,
    }
    prompts = harvest(fixture_repo, files, HarvestConfig(prompts_per_file=10, lines_per_prompt=1))
    assert {p.path for p in prompts} == {"src/a.py"}
    assert "hunter22" not in all_text(prompts)


# --- logged contexts ------------------------------------------------------------------------------


def test_logged_contexts_become_weighted_prompts(fixture_repo):
    logged = [
        LoggedContext("src/a.py", "python", "def f():\n    ", "\n", "return 1", 8, 8, 1.0),
        LoggedContext("src/b.py", "python", "x = ", "", "compute()", 0, 9, 1.0),
        LoggedContext("src/c.py", "python", "y = ", "", "2", 0, 0, 0.5),
        LoggedContext(".env", "plaintext", "A=", "", "b", 1, 1, 1.0),
        LoggedContext("src/d.py", "python", f"t = '{PLANTED_SECRETS[2]}'\n", "", "z = 1", 5, 5, 1.0),
    ]
    prompts = harvest(fixture_repo, {}, HarvestConfig(retained_bonus=1.0), logged)
    assert [p.path for p in prompts] == ["src/a.py", "src/b.py", "src/c.py", "src/d.py"]
    assert all(p.kind == "logged" and p.source == "log" for p in prompts)
    assert [p.weight for p in prompts] == [2.0, 1.0, 0.5, 2.0]
    assert prompts[0].prefix == "def f():\n    " and prompts[0].reference == "return 1"
    assert PLANTED_SECRETS[2] not in all_text(prompts)


# --- records --------------------------------------------------------------------------------------


def _prompt(i):
    return Prompt(f"id{i}", "fim_line", "a.py", "python", "pre\n", "\nsuf", f"ref{i} ünïcode")


def test_jsonl_round_trip(tmp_path):
    path = tmp_path / "out" / "prompts.jsonl"
    assert write_jsonl(path, [_prompt(0), _prompt(1)]) == 2
    assert append_jsonl(path, [_prompt(2)]) == 1
    assert read_jsonl(path, Prompt) == [_prompt(0), _prompt(1), _prompt(2)]
    assert write_jsonl(path, [_prompt(3)]) == 1  # write replaces
    assert read_jsonl(path, Prompt) == [_prompt(3)]
    items = [EvalItem("e", "next_line", "a.py", "python", "x = ", "", "1")]
    write_jsonl(tmp_path / "e.jsonl", items)
    assert read_jsonl(tmp_path / "e.jsonl", EvalItem) == items
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]


def test_torn_last_line_is_skipped_then_cut_by_the_next_append(tmp_path):
    path = tmp_path / "prompts.jsonl"
    write_jsonl(path, [_prompt(0), _prompt(1)])
    whole = path.read_bytes()
    path.write_bytes(whole + whole.splitlines(keepends=True)[0][:25])  # a killed writer's half line
    assert read_jsonl(path, Prompt) == [_prompt(0), _prompt(1)]
    append_jsonl(path, [_prompt(2)])
    assert read_jsonl(path, Prompt) == [_prompt(0), _prompt(1), _prompt(2)]


def test_unterminated_complete_last_line_is_kept(tmp_path):
    path = tmp_path / "prompts.jsonl"
    write_jsonl(path, [_prompt(0)])
    path.write_bytes(path.read_bytes().rstrip(b"\n"))
    assert read_jsonl(path, Prompt) == [_prompt(0)]
    append_jsonl(path, [_prompt(1)])
    assert read_jsonl(path, Prompt) == [_prompt(0), _prompt(1)]


def test_corruption_in_the_middle_is_an_error(tmp_path):
    path = tmp_path / "prompts.jsonl"
    write_jsonl(path, [_prompt(0)])
    path.write_bytes(b"{not json\n" + path.read_bytes())
    with pytest.raises(StropError, match=r"prompts.jsonl:1 is not valid JSON"):
        read_jsonl(path, Prompt)
    with pytest.raises(StropError, match="does not exist"):
        read_jsonl(tmp_path / "missing.jsonl", Prompt)
    write_jsonl(path, [_prompt(0)])
    with pytest.raises(StropError, match="is not a EvalItem record"):
        read_jsonl(path, EvalItem)


def test_records_validate_their_kind():
    with pytest.raises(ValueError, match="kind"):
        Prompt("i", "whole_file", "a.py", "python", "", "", "")
    with pytest.raises(ValueError, match="kind"):
        EvalItem("i", "fim_span", "a.py", "python", "", "", "")
    with pytest.raises(ValueError, match="weight"):
        Prompt("i", "logged", "a.py", "python", "", "", "", weight=0.0, source="log")
    with pytest.raises(dataclasses.FrozenInstanceError):
        _prompt(0).kind = "next_line"
