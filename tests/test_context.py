"""Prompt context: budgets, chunk-aligned windows, and the KV-cache prefix surviving keystrokes."""

from core.context import Budget, OtherDocument, build
from core.fim import KNOWN_FORMATS, Special, layout, render

STARCODER = next(f for f in KNOWN_FORMATS if f.name == "starcoder")


def count(text: str) -> int:  # a deterministic stand-in tokenizer: one token per 4 characters
    return (len(text) + 3) // 4


SOURCE = "".join(f"def f{i}(x):\n    return x + {i}\n\n" for i in range(200))


def _prefix_tokens(ctx):
    return render(ctx.pieces)


def test_fim_layout_puts_typed_line_after_middle_marker_and_its_indentation_before():
    pieces = layout(STARCODER, "import os\ndef main():\n    pri", "\n    return 0\n")
    assert pieces == [Special("<fim_prefix>"), "import os\ndef main():\n    ", Special("<fim_suffix>"),
                      "\n    return 0\n", Special("<fim_middle>"), "pri"]
    # At the indentation the editor put there, the middle starts empty: the prompt ends in the
    # middle marker (nothing for token healing to take back) and typing keeps all before it.
    at_indent = layout(STARCODER, "def main():\n\t", "\n    return 0\n")
    assert at_indent[-1] == Special("<fim_middle>") and at_indent[1] == "def main():\n\t"
    assert layout(STARCODER, "def main():\n\tx", "\n    return 0\n")[:-1] == at_indent


def test_prefix_only_layout_is_the_prefix():
    assert layout(None, "abc\ndef", "zzz") == ["abc\ndef"]


def test_keystroke_keeps_the_prompt_prefix():
    offset = SOURCE.index("def f150")
    a = build(SOURCE, offset, fmt=STARCODER, count=count, budget=Budget(total_tokens=600))
    typed = SOURCE[:offset] + "de" + SOURCE[offset:]
    b = build(typed, offset + 2, fmt=STARCODER, count=count, budget=Budget(total_tokens=600))
    # everything up to the middle marker is identical; only the typed tail differs
    assert a.pieces[:-1] == b.pieces[:-1] or a.pieces == b.pieces[:-1]
    assert render(b.pieces).endswith("<fim_middle>de")


def test_typing_a_line_does_not_move_a_small_windows_start():
    """A cold prompt's window is small and moves by 2 lines: it used to lose a line at its top on
    almost every keystroke (the typed part counted against its budget), so the KV cache held
    nothing of the next keystroke's prompt."""
    offset = SOURCE.index("def f150")
    starts = set()
    for typed in ("", "d", "de", "def", "def g", "def g(", "def g(x", "def g(x):"):
        text = SOURCE[:offset] + typed + SOURCE[offset:]
        for fmt in (STARCODER, None):
            ctx = build(text, offset + len(typed), fmt=fmt, count=count,
                        budget=Budget(total_tokens=120, extra_share=0.0, chunk_lines=2))
            assert ctx.prefix.endswith(typed)
            starts.add((fmt is None, ctx.prefix[: len(ctx.prefix) - len(typed)]))
    assert len(starts) == 2, starts  # one window per layout, whatever was typed


def test_windows_respect_budget_and_align_to_chunks():
    offset = SOURCE.index("def f150")
    budget = Budget(total_tokens=400, chunk_lines=32)
    ctx = build(SOURCE, offset, fmt=STARCODER, count=count, budget=budget)
    assert count(ctx.prefix) <= 400 * 0.6 + 1
    assert count(ctx.suffix) <= 400 * 0.4 + 1
    start_line = SOURCE[:offset].count("\n") - ctx.prefix.count("\n")
    assert start_line % 32 == 0
    assert SOURCE[:offset].endswith(ctx.prefix) and SOURCE[offset:].startswith(ctx.suffix)


def test_new_line_does_not_move_window_until_budget_exceeded():
    offset = SOURCE.index("def f100")
    budget = Budget(total_tokens=2000)
    a = build(SOURCE, offset, fmt=STARCODER, count=count, budget=budget)
    text2 = SOURCE[:offset] + "x = 1\n" + SOURCE[offset:]
    b = build(text2, offset + 6, fmt=STARCODER, count=count, budget=budget)
    assert b.prefix.startswith(a.prefix[:200])


def test_other_documents_come_first_and_are_bounded():
    other = OtherDocument("lib/util.py", "def helper():\n    return 42\n" * 50, focus_line=10)
    ctx = build(SOURCE, 100, fmt=STARCODER, count=count, budget=Budget(total_tokens=800), path="main.py",
                language="python", others=[other])
    text = render(ctx.pieces)
    assert text.startswith("<fim_prefix># lib/util.py\ndef helper():")
    assert text.index("\n# main.py\n") < text.index(SOURCE[:20]) < text.index("<fim_suffix>")
    assert sum(count(s.text) for s in ctx.snippets) <= 800 * 0.25


def test_a_fim_hole_gets_the_file_level_prompt_and_a_files_end_the_repository_level_one():
    """A FIM hole with text after it gets the plain file-level prompt, other files' snippets at the
    head of its prefix under path comments (the repository header cost Qwen2.5-Coder-0.5B 9–18
    points there, and header-framed snippets 4.9 more than these); with nothing after the cursor (the
    repository-level format continues the last file) the header frames the snippets and the file."""
    budget = Budget(total_tokens=800)
    alone = render(build(SOURCE, 100, fmt=STARCODER, count=count, budget=budget, path="main.py",
                         repo_name="tally").pieces)
    assert alone.startswith("<fim_prefix>def f0") and "<repo_name>" not in alone and "<file_sep>" not in alone
    at_end = render(build(SOURCE + "\n", len(SOURCE), fmt=STARCODER, count=count, budget=budget, path="main.py",
                          repo_name="tally").pieces)
    assert at_end.startswith("<repo_name>tally\n<file_sep>main.py\n<fim_prefix>")
    other = OtherDocument("lib/util.py", "def helper():\n    return 42\n", focus_line=0)
    hole = build(SOURCE, 100, fmt=STARCODER, count=count, budget=budget, path="main.py", language="python",
                 repo_name="tally", others=[other])
    assert render(hole.pieces).startswith("<fim_prefix># lib/util.py\ndef helper():\n    return 42\n# main.py\ndef f0")
    assert "<repo_name>" not in render(hole.pieces) and "<file_sep>" not in render(hole.pieces)
    # The snippets are a piece of their own ahead of the file: typing keeps them in the KV cache.
    assert hole.pieces[:2] == [Special("<fim_prefix>"), "# lib/util.py\ndef helper():\n    return 42\n# main.py\n"]
    framed = render(build(SOURCE + "\n", len(SOURCE), fmt=STARCODER, count=count, budget=budget, path="main.py",
                          repo_name="tally", others=[other]).pieces)
    assert framed.startswith("<repo_name>tally\n<file_sep>lib/util.py\n")
    assert framed.index("<file_sep>main.py\n") < framed.index("<fim_prefix>")


def test_prefix_only_models_use_whole_budget_for_prefix_and_comment_headers():
    other = OtherDocument("b.py", "x = 1\n", 0)
    ctx = build(SOURCE, len(SOURCE) // 2, fmt=None, count=count, budget=Budget(total_tokens=500),
                path="a.py", language="python", others=[other])
    assert ctx.suffix == ""
    assert render(ctx.pieces).startswith("# b.py\nx = 1\n# a.py\n")


def test_multiline_decision():
    text = "def f():\n    return g(x)\n"
    mid = text.index("g(x)")
    assert build(text, mid, fmt=STARCODER, count=count).multiline is False
    end = text.index("\n")
    assert build(text, end, fmt=STARCODER, count=count).multiline is True  # after a block opener
    line_end = text.index("g(x)") + len("g(x)")
    assert build(text, line_end, fmt=STARCODER, count=count).multiline is False  # finishes its line
    assert build(text + "    ", len(text) + 4, fmt=STARCODER, count=count).multiline is True  # a new line
