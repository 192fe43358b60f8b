"""Open documents as LSP defines them: one URI spelling, LSP's lines, edits that land where the
editor made them.

- `normalize_uri`: the one spelling under which a document is stored and looked up (clients send
  `file:///a%20b.py`, `file:///a b.py`, `file:///C:/x.py` or VS Code's `file:///c%3A/x.py`).
- `split_lines`: LSP ends a line at `\\n`, `\\r\\n` or `\\r` only; `str.splitlines` (which pygls's
  TextDocument uses) also breaks at `\\u2028`, `\\x0c`, `\\x85`, `\\x0b`, ..., so positions after such
  a character, and the edits made there, landed on the wrong line.
- `LspTextDocument` / `StropWorkspace`: pygls's document store with those two rules, and clamped
  positions as in vscode-languageserver-textdocument (what VS Code and most clients use): a line
  past the last one means the end of the document, a character past the end of its line the end of
  that line (before the line break), a range whose end precedes its start is taken reversed. A
  position inside a character (half of a UTF-16 surrogate pair, a byte inside a UTF-8 sequence)
  means the position after that character. Halves of a surrogate pair that an edit brings
  together become the one character they encode, as in the editor's UTF-16 text.
"""

from __future__ import annotations

import bisect
import logging
import re
from collections.abc import Sequence
from urllib.parse import quote, unquote, urlsplit, urlunsplit

from lsprotocol import types as t
from pygls.workspace import TextDocument, Workspace

from core.secrets import is_secret_file

log = logging.getLogger(__name__)

_LINE_BREAK = re.compile(r"\r\n|\r|\n")
_DRIVE = re.compile(r"^/([A-Za-z]):")
_ASTRAL = re.compile("[\U00010000-\U0010ffff]")


class InvalidUri(ValueError):
    pass


def normalize_uri(uri: str) -> str:
    """Percent-decode the path, then encode it the one way (only unreserved characters and `/` stay
    literal, as VS Code writes URIs), scheme and a Windows drive letter in lower case.

    `file:///C:/a b.py`, `file:///c:/a%20b.py` and `file:///c%3A/a%20b.py` are one document.
    Idempotent: normalize_uri(normalize_uri(u)) == normalize_uri(u). Raises InvalidUri for a string
    that does not parse as a URI (`http://[x`)."""
    try:
        parts = urlsplit(uri)
    except ValueError as err:
        raise InvalidUri(f"{uri!r} is not a URI ({err})") from None
    path = unquote(parts.path, errors="surrogateescape")
    scheme = parts.scheme.lower()
    if scheme == "file":
        path = _DRIVE.sub(lambda m: f"/{m.group(1).lower()}:", path)
    try:
        path = quote(path, safe="/", errors="surrogateescape")
    except UnicodeError:  # a lone surrogate typed into the URI itself: keep it as it came
        return uri
    return urlunsplit((scheme, parts.netloc, path, parts.query, parts.fragment))


def uri_path(uri: str) -> str | None:
    """The file-system path of a `file:` URI (decoded), else None."""
    try:
        parts = urlsplit(uri)
    except ValueError:
        return None
    if parts.scheme.lower() != "file":
        return None
    path = unquote(parts.path)
    return path[1:] if _DRIVE.match(path) else path


def is_secret_document(uri: str) -> bool:
    """A document the secret rules exclude (`.env`, keys, credentials): judged on its path."""
    path = uri_path(uri)
    if path is None:
        try:
            path = unquote(urlsplit(uri).path)
        except ValueError:
            return False
    return bool(path) and is_secret_file(path)


def split_lines(text: str) -> list[str]:
    """LSP's lines of `text`, each with its line break; the last one has none and may be empty
    ("a\\n" is two lines: "a\\n" and "")."""
    lines, start = [], 0
    for m in _LINE_BREAK.finditer(text):
        lines.append(text[start:m.end()])
        start = m.end()
    lines.append(text[start:])
    return lines


def line_starts(text: str) -> list[int]:
    return [0] + [m.end() for m in _LINE_BREAK.finditer(text)]


def _unit_width(encoding: str | None):
    if encoding == t.PositionEncodingKind.Utf8:
        return lambda ch: 1 if ch < "\x80" else 2 if ch < "\u0800" else 3 if ch < "\U00010000" else 4
    if encoding == t.PositionEncodingKind.Utf32:
        return None
    return lambda ch: 2 if ch >= "\U00010000" else 1  # UTF-16, LSP's default


def column_to_index(content: str, character: int, encoding: str | None) -> int:
    """Code points of `content` (a line without its break) before `character` code units, clamped
    to the line; inside a character means after it."""
    if character <= 0:
        return 0
    width = _unit_width(encoding)
    if width is None or content.isascii() or (encoding != t.PositionEncodingKind.Utf8
                                              and not _ASTRAL.search(content)):
        return min(character, len(content))
    units = 0
    for i, ch in enumerate(content):
        if units >= character:
            return i
        units += width(ch)
    return len(content)


def index_to_column(content: str, index: int, encoding: str | None) -> int:
    """Code units of the first `index` code points of `content`."""
    width = _unit_width(encoding)
    head = content[:index]
    return len(head) if width is None or head.isascii() else sum(width(ch) for ch in head)


def join_surrogates(text: str, at: int) -> str:
    """`text` with a high surrogate just before `at` and a low one at `at` joined into one character."""
    if 0 < at < len(text) and "\ud800" <= text[at - 1] <= "\udbff" and "\udc00" <= text[at] <= "\udfff":
        pair = text[at - 1: at + 1].encode("utf-16-le", "surrogatepass").decode("utf-16-le")
        return text[: at - 1] + pair + text[at + 1:]
    return text


def offset_at(text: str, line: int, character: int, encoding: str | None, starts: Sequence[int] | None = None) -> int:
    """The code-point offset in `text` of an LSP position, clamped as the module doc says
    (`starts`: `line_starts(text)`, when known)."""
    if line < 0:
        return 0
    starts = line_starts(text) if starts is None else starts
    if line >= len(starts):
        return len(text)
    start = starts[line]
    end = starts[line + 1] if line + 1 < len(starts) else len(text)
    content = text[start:end].rstrip("\r\n")
    return start + column_to_index(content, character, encoding)


class LspTextDocument(TextDocument):
    """pygls's TextDocument with LSP's lines and clamped positions (the module doc)."""

    last_edit_end = 0  # code-point offset where the last incremental change's inserted text ends

    @property
    def lines(self) -> Sequence[str]:
        return tuple(split_lines(self.source))

    def line_starts(self) -> list[int]:
        """`line_starts` of the current text, kept until the text changes: a request reads it
        several times, and scanning a large document each time cost milliseconds per keystroke."""
        text = self.source
        cached = getattr(self, "_starts", None)
        if cached is None or cached[0] is not text:
            cached = self._starts = (text, line_starts(text))
        return cached[1]

    def line_count(self) -> int:
        return len(self.line_starts())

    def line_text(self, line: int) -> str:
        """Line `line` (0-based, existing) without its break."""
        starts, text = self.line_starts(), self.source
        end = starts[line + 1] if line + 1 < len(starts) else len(text)
        return text[starts[line]:end].rstrip("\r\n")

    def position_at(self, offset: int) -> t.Position:
        """The LSP position of a code-point offset (clamped to the text)."""
        starts, text = self.line_starts(), self.source
        offset = max(0, min(offset, len(text)))
        line = bisect.bisect_right(starts, offset) - 1
        return t.Position(line, index_to_column(text[starts[line]:offset], offset - starts[line], self.encoding))

    @property
    def encoding(self) -> str | None:
        return self.position_codec.encoding

    def offset_at_position(self, client_position: t.Position) -> int:
        return offset_at(self.source, client_position.line, client_position.character, self.encoding,
                         self.line_starts())

    def _apply_incremental_change(self, change: t.TextDocumentContentChangePartial) -> None:
        text, starts = self.source, self.line_starts()
        start = offset_at(text, change.range.start.line, change.range.start.character, self.encoding, starts)
        end = offset_at(text, change.range.end.line, change.range.end.character, self.encoding, starts)
        if end < start:
            start, end = end, start
        new = join_surrogates(text[:start] + change.text + text[end:], start + len(change.text))
        self._source = join_surrogates(new, start)
        self.last_edit_end = min(start + len(change.text), len(self._source))  # where the cursor is after it

    def clamp(self, position: t.Position) -> t.Position:
        """`position` (on an existing line) with its character inside the line: past the end of the
        line it becomes the end, inside a character the position after it."""
        content = self.line_text(position.line)
        index = column_to_index(content, position.character, self.encoding)
        return t.Position(position.line, index_to_column(content, index, self.encoding))


class StropWorkspace(Workspace):
    """pygls's Workspace keyed by `normalize_uri`, holding LspTextDocuments; a change to a document
    that is not open is ignored (logged at debug level) rather than raised."""

    def _create_text_document(self, doc_uri: str, source: str | None = None, version: int | None = None,
                              language_id: str | None = None) -> TextDocument:
        return LspTextDocument(doc_uri, source=source, version=version, language_id=language_id,
                               sync_kind=self._sync_kind, position_codec=self._position_codec)

    def document(self, uri: str) -> LspTextDocument | None:
        """The open document `uri`, or None."""
        try:
            return self._text_documents.get(normalize_uri(uri))
        except InvalidUri:
            return None

    def get_text_document(self, doc_uri: str) -> TextDocument:
        return self.document(doc_uri) or self._create_text_document(doc_uri)

    def put_text_document(self, text_document: t.TextDocumentItem, notebook_uri: str | None = None) -> None:
        uri = normalize_uri(text_document.uri)
        self._text_documents[uri] = self._create_text_document(
            uri, source=text_document.text, version=text_document.version, language_id=text_document.language_id)

    def remove_text_document(self, doc_uri: str) -> None:
        self._text_documents.pop(normalize_uri(doc_uri), None)

    def update_text_document(self, text_doc: t.VersionedTextDocumentIdentifier,
                             change: t.TextDocumentContentChangeEvent) -> None:
        doc = self.document(text_doc.uri)
        if doc is None:
            log.debug("didChange for %s, which is not open: ignored", text_doc.uri)
            return
        doc.apply_change(change)
        doc.version = text_doc.version
