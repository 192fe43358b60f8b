"""Output hygiene rules, each with a table of cases."""

import pytest

from core.postprocess import (SCAN_LINES_FOR_CLOSERS, balance_brackets, block_scope, clean, cut_repetition,
                              drop_partial_line, first_line, generation_done, trim_suffix_overlap, unmatched_closers)


@pytest.mark.parametrize("text, expected", [
    ("foo(x)\nbar()", "foo(x)"),
    ("no newline", "no newline"),
    ("\nstarts with newline", ""),
])
def test_first_line(text, expected):
    assert first_line(text) == expected


@pytest.mark.parametrize("line_head, text, expected", [
    # cursor at the end of a block opener: the block is the deeper-indented lines
    ("def f(n):", "\n    return n\n\nprint(f(1))", "\n    return n"),
    ("def f(n):", "\n    a = 1\n\n    return a\nx = 2", "\n    a = 1\n\n    return a"),
    # a statement line: continue at the same indentation, stop at a dedent
    ("    x = ", "1\n    y = 2\nz = 3", "1\n    y = 2"),
    # a brace block keeps its closing brace
    ("if (x) {", "\n  go();\n}\nother();", "\n  go();\n}"),
    # two blank lines end a block
    ("    ", "a = 1\n\n\n    b = 2", "a = 1"),
])
def test_block_scope(line_head, text, expected):
    assert block_scope(text, line_head) == expected


@pytest.mark.parametrize("text, suffix, expected", [
    ("bar)", ")", "bar"),  # the closer already follows the cursor
    ("x, y):", "):\n    pass", "x, y"),
    ("name", "e_x = 1", "name"),  # a one-letter identifier overlap is not punctuation: keep
    ("a = 1\nreturn a", "\nreturn a\n", "a = 1"),  # repeats the next line of the file
    ("value", "", "value"),
])
def test_trim_suffix_overlap(text, suffix, expected):
    assert trim_suffix_overlap(text, suffix) == expected


@pytest.mark.parametrize("text, head, tail, expected", [
    ("a, b))", "foo(", "", "a, b)"),  # one opener on the line: only one closer allowed
    ("a) + 1", "foo(", ")", "a"),  # the tail already closes it
    ("x[0])", "print(", "", "x[0])"),
    ("')' + s)", "f(", "", "')' + s)"),  # brackets inside strings do not count
    ("}", "", "", ""),  # nothing opened on the line
])
def test_balance_brackets(text, head, tail, expected):
    assert balance_brackets(text, head, tail) == expected


@pytest.mark.parametrize("text, enclosing, after, expected", [
    # the line that ends a multi-line signature (encode/starlette routing.py: it used to be emptied)
    (") -> tuple[Pattern[str], str]:", 1, "    path_regex = '^'\n    return path_regex\n", ") -> tuple[Pattern[str], str]:"),
    ("b=2)", 1, ")\nx = 1\n", "b=2"),  # an argument line: the call's `)` is already below
    ("]", 2, "}\n", "]"),  # two open, the suffix closes one
    ("])", 2, "}\n", "]"),
    ("x)", 1, "    f(a)  # (\n)\n", "x"),  # balanced brackets and comments below do not count
    ("x)", 1, "s = ')'\n", "x)"),  # nor brackets inside strings
    ("}", 0, "", ""),
])
def test_balance_brackets_closes_what_earlier_lines_opened_unless_the_suffix_does(text, enclosing, after, expected):
    assert balance_brackets(text, "", "", enclosing=enclosing, after=after) == expected


def test_unmatched_closers_scans_a_bounded_number_of_lines():
    far = "x\n" * (SCAN_LINES_FOR_CLOSERS + 5) + ")\n"
    assert unmatched_closers(")\n" + far, limit=3) == 1
    assert unmatched_closers("a)\nb]\nc}", limit=2) == 2


def test_clean_keeps_a_closing_line_inside_brackets_the_prefix_opened():
    out = clean(") -> str:\n", line_head="", line_tail="", suffix="\n    return path\n", multiline=False,
                enclosing=1)
    assert out.text == ") -> str:"
    assert clean(") -> str:\n", line_head="", line_tail="", suffix="\n    return path\n", multiline=False).text == ""


def test_clean_applies_rules_in_order_and_reports_them():
    out = clean("b)\nmore", line_head="foo(a, ", line_tail=")", suffix=")\nnext", multiline=False)
    assert out.text == "b"
    assert out.rules == ("first_line", "suffix_overlap")
    assert clean("   \n", line_head="", line_tail="", suffix="", multiline=True).text == ""


@pytest.mark.parametrize("text, expected", [
    # a line repeating an earlier one of the completion ends it
    ("x = 1\n    text = text.strip()\n    text = text.strip()\n    text = text.strip()",
     "x = 1\n    text = text.strip()"),
    # a block opener whose body was the repeat goes too
    ("a\nif cid == 1:\n    return items(x)\nif cid == 2:\n    return items(x)",
     "a\nif cid == 1:\n    return items(x)"),
    # short lines repeat in ordinary code
    ("if a:\n    pass\nelse:\n    pass", "if a:\n    pass\nelse:\n    pass"),
    ("f(a)\n}\n}", "f(a)\n}\n}"),
    # a loop on one line keeps one unit
    (" n_gpu_layers=100, n_gpu_layers=100, n_gpu_layers=100, n_gpu_", " n_gpu_layers=100,"),
    (" n_gpu_layers=100, n_gpu_layers=100, n_gpu_layers=100,", " n_gpu_layers=100,"),
    # a repeated unit the line goes on past is finished code, not a loop (encode/starlette, Qwen2.5-Coder)
    ('regex = "^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$"',
     'regex = "^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$"'),
    ("x = foo.bar(), foo.bar(), foo.bar(), baz", "x = foo.bar(), foo.bar(), foo.bar(), baz"),
    # rulers and digit runs are not loops
    ("# ----------------------------", "# ----------------------------"),
    ("x = 0x00000000000000000000", "x = 0x00000000000000000000"),
    ("return a + b", "return a + b"),
])
def test_cut_repetition(text, expected):
    assert cut_repetition(text) == expected


@pytest.mark.parametrize("text, head, done", [
    ("\n    return n\n", "def f(n):", False),  # still inside the block
    ("\n    return n\nprint(1)\n", "def f(n):", True),  # a line outside it
    ("1\n    y = compute(1)\n    y = compute(1)\n", "    x = ", True),  # a repeated line
    ("1\n    y = compute(1)", "    x = ", False),  # no complete line to judge yet
])
def test_generation_done(text, head, done):
    assert generation_done(text, head) is done


def test_a_truncated_block_keeps_whole_lines_only():
    text = "\n    a = compute(1)\n    b = comp"
    assert drop_partial_line(text) == "\n    a = compute(1)"
    assert drop_partial_line("x = comp") == "x = comp"  # the cursor's own line always stays
    out = clean(text, line_head="def f():", line_tail="", suffix="", multiline=True, truncated=True)
    assert out.text == "\n    a = compute(1)" and out.rules[0] == "partial_line"
    assert clean(text, line_head="def f():", line_tail="", suffix="", multiline=True).text == text


def test_star_imports_are_whole_statements():
    # `import *` ends in `*`, which elsewhere continues an expression: a block of star imports cut by
    # the token cap (httpx/__init__.py, Qwen2.5-Coder) used to be shown as nothing.
    from core.postprocess import whole_statements

    assert whole_statements("from ._a import *\nfrom ._b import *", "") == "from ._a import *\nfrom ._b import *"
    assert whole_statements("total = a *\n    b *", "") == ""


def test_enclosing_depth_ignores_closers_of_brackets_opened_before_the_window():
    # The prompt's window starts inside the previous call; the cursor is inside `def head(`.
    from core.postprocess import enclosing_depth, whole_statements

    before = "        trust_env=trust_env,\n    )\n\n\ndef head(\n"
    assert enclosing_depth(before) == 1
    assert enclosing_depth("x = f(a)\n") == 0 and enclosing_depth("x = {\n    'a': (1,\n") == 2
    cut = "url: URL | str,\n    *,\n    params: QueryParamTypes | None = None,"
    assert whole_statements(cut, "    ", enclosing_depth(before)) == cut


def test_the_completion_path_reads_the_open_brackets_from_the_prompt():
    """The one completion path passes what the prefix left open: a FIM hole on the line that closes a
    multi-line signature keeps its `)` (encode/starlette routing.py, served empty before)."""
    from core.completion import clean_generation
    from core.context import build
    from core.decode import Generation

    text = "def compile_path(\n    path: str,\n\n    path_regex = '^'\n    return path_regex\n"
    offset = text.index("\n\n") + 1
    ctx = build(text, offset, fmt=None, count=len)
    gen = Generation(") -> str:\n", (1,), 1, 0, 0, 0, "newline", "v")
    assert clean_generation(gen, ctx, text[offset:], multiline=False).text == ") -> str:"
    closed = text[:offset] + ")\n" + text[offset:]  # the signature is already closed below the cursor
    assert clean_generation(gen, build(closed, offset, fmt=None, count=len), closed[offset:], multiline=False).text == ""
