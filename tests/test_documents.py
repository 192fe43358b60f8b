"""server/documents.py: one URI spelling, LSP's lines, edits applied where LSP says they are."""

import pytest
from hypothesis import given
from hypothesis import strategies as st
from lsprotocol import types as t

from server.documents import (StropWorkspace, is_secret_document, normalize_uri, offset_at, split_lines,
                              uri_path)


@pytest.mark.parametrize("spellings", [
    ["file:///home/me/my%20file.py", "file:///home/me/my file.py", "FILE:///home/me/my%20file.py"],
    ["file:///c%3A/Users/me/a.py", "file:///C:/Users/me/a.py", "file:///c:/Users/me/a.py", "file:///C%3a/Users/me/a.py"],
    ["file:///tmp/%C3%A9t%C3%A9.py", "file:///tmp/été.py"],
])
def test_every_spelling_of_a_uri_is_one_document(spellings):
    assert len({normalize_uri(u) for u in spellings}) == 1


def test_a_literal_percent_in_a_name_stays_distinct_from_its_decoded_form():
    assert normalize_uri("file:///a%2520b.py") != normalize_uri("file:///a%20b.py")
    assert uri_path(normalize_uri("file:///a%2520b.py")) == "/a%20b.py"
    assert uri_path("file:///c%3A/x/y.py") == "c:/x/y.py"


@given(st.text())
def test_normalisation_is_idempotent(tail):
    for uri in (tail, "file:///" + tail, "untitled:" + tail):
        try:
            once = normalize_uri(uri)
        except ValueError:
            continue
        assert normalize_uri(once) == once


@pytest.mark.parametrize(("text", "lines"), [
    ("", [""]),
    ("a\n", ["a\n", ""]),
    ("a\r\nb\rc\n", ["a\r\n", "b\r", "c\n", ""]),
    ("a\u2028b\x0cc\x85d\x0be\x1cf", ["a\u2028b\x0cc\x85d\x0be\x1cf"]),  # none of these ends an LSP line
])
def test_lines_break_only_at_lsp_line_ends(text, lines):
    assert split_lines(text) == lines


def test_positions_clamp_like_vscode_languageserver_textdocument():
    text = "ab\r\ncd\n😀x"
    assert offset_at(text, 0, 99, "utf-16") == 2  # past the end of the line: before its break
    assert offset_at(text, 1, 1, "utf-16") == 5
    assert offset_at(text, 2, 1, "utf-16") == 8  # inside the surrogate pair: after the emoji
    assert offset_at(text, 2, 2, "utf-16") == 8
    assert offset_at(text, 2, 3, "utf-8") == 8 and offset_at(text, 2, 4, "utf-8") == 8
    assert offset_at(text, 2, 1, "utf-32") == 8
    assert offset_at(text, 9, 0, "utf-16") == len(text)  # past the last line: the end of the document


def _workspace(text: str, uri: str = "file:///w/a.py") -> StropWorkspace:
    ws = StropWorkspace(None, t.TextDocumentSyncKind.Incremental)
    ws.put_text_document(t.TextDocumentItem(uri=uri, language_id="python", version=1, text=text))
    return ws


def _edit(ws: StropWorkspace, uri: str, start: tuple, end: tuple, text: str) -> None:
    change = t.TextDocumentContentChangePartial(
        range=t.Range(t.Position(*start), t.Position(*end)), text=text)
    ws.update_text_document(t.VersionedTextDocumentIdentifier(uri=uri, version=2), change)


def test_an_edit_after_a_line_separator_lands_where_the_editor_made_it():
    ws = _workspace("s = '\u2028'\nx = 1\n")
    _edit(ws, "file:///w/a.py", (1, 4), (1, 5), "2")  # line 1 is "x = 1" for LSP
    assert ws.document("file:///w/a.py").source == "s = '\u2028'\nx = 2\n"


def test_edits_reach_the_document_under_any_spelling_of_its_uri():
    ws = _workspace("x = 1\n", "file:///c%3A/w/my%20a.py")
    _edit(ws, "file:///C:/w/my a.py", (0, 4), (0, 5), "2")
    assert ws.document("file:///c:/w/my%20a.py").source == "x = 2\n"


def test_a_reversed_range_is_taken_reversed_and_a_change_to_a_closed_document_is_ignored():
    ws = _workspace("abcdef")
    _edit(ws, "file:///w/a.py", (0, 4), (0, 1), "X")
    assert ws.document("file:///w/a.py").source == "aXef"
    _edit(ws, "file:///w/closed.py", (0, 0), (0, 0), "X")  # no KeyError
    assert ws.document("file:///w/closed.py") is None


def test_halves_of_a_surrogate_pair_brought_together_become_one_character():
    ws = _workspace("a\ud83d")
    _edit(ws, "file:///w/a.py", (0, 2), (0, 2), "\ude00b")
    assert ws.document("file:///w/a.py").source == "a😀b"


@pytest.mark.parametrize(("uri", "secret"), [
    ("file:///repo/.env", True), ("file:///repo/config/.env.local", True), ("file:///home/u/.ssh/config", True),
    ("file:///repo/deploy/prod%2Eenv", True), ("file:///repo/app.py", False), ("untitled:Untitled-1", False),
])
def test_secret_documents_are_recognised_by_their_path(uri, secret):
    assert is_secret_document(uri) is secret
