"""Generated LSP traffic against a real `strop serve`, with a reference model of the documents.

Used by tests/test_fuzz_lsp.py (bounded, in CI) and benchmarks/fuzz_lsp.py (the long run).

Hypothesis draws, message by message, from what the documents are at that moment: open, change
(random Unicode with surrogates and the characters `str.splitlines` breaks at, random ranges
including out-of-bounds and reversed ones, several changes per notification), close, save,
cancel, inline and classic completion, status, stats, commands, strop's notifications, repeated
lifecycle messages and garbage (invalid JSON, batches, wrong types, oversized frames). Every
logical document is addressed under several spellings of its URI.

Checked as the traffic runs:
- the server never dies, and every request gets exactly one reply (a hang is a request without
  one after `REPLY_TIMEOUT_S`); a garbage message answered with id null counts as one too;
- no reply carries an internal error or a
  traceback;
- after every open, change and close the server's copy (strop/debugDocument) equals the
  reference model's text;
- the server's RSS stays bounded.

The reference model applies LSP edits to the UTF-16 code units of the text, which is what an
editor holds, independently of server/documents.py: lines end at \\n, \\r\\n or \\r; a line past the
last means the end of the document; a character past its line's end means the end of the line; a
position between the halves of a surrogate pair means after the pair; a reversed range is taken
reversed; a notification with a value outside LSP's uinteger range is rejected as a whole.
"""

from __future__ import annotations

import json
import re
import time
from array import array
from dataclasses import dataclass, field
from pathlib import Path

from hypothesis import strategies as st

from tests.raw_lsp import RawServer, frame

REPLY_TIMEOUT_S = 120.0
UINT_MAX = 2**31 - 1

LINE_BREAKS_AND_LOOKALIKES = ["\n", "\r", "\u2028", "\u2029", "\x0c", "\x85", "\x0b", "\x1c", "\x1d", "\x1e"]
CODE = ["\r\n", "def ", "return ", "    ", "x = ", "(", ")", ":", "print(", "# ", '"""', "import os", "self."]
CHARS = st.one_of(
    st.sampled_from(LINE_BREAKS_AND_LOOKALIKES + ["😀", "é", "\u200d", "\t", " ", "\x00", "\ufeff"]),
    st.characters(codec="utf-8"),  # any scalar value
    st.characters(categories=["Cs"]),  # lone surrogates (a JSON "\udXXX" escape)
    st.characters(min_codepoint=0x10000),  # astral: two UTF-16 units
)
TEXT = st.lists(st.one_of(st.text(CHARS, max_size=6), st.sampled_from(CODE)), max_size=8).map("".join)
PROGRAM = 'import os\n\n\ndef add(a, b):\n    """Return the sum of a and b."""\n    return'
DOCUMENT = st.one_of(TEXT, st.builds(lambda head: head + PROGRAM, TEXT),
                     st.builds(lambda head, tail: head + PROGRAM + tail, TEXT, TEXT))


# --- the reference model -------------------------------------------------------------------------

def to_units(text: str) -> array:
    units = array("H")
    units.frombytes(text.encode("utf-16-le", "surrogatepass"))
    return units


def from_units(units: array) -> str:
    return units.tobytes().decode("utf-16-le", "surrogatepass")


def _line_starts(units: array) -> list[int]:
    starts, i, n = [0], 0, len(units)
    while i < n:
        c = units[i]
        if c == 13 and i + 1 < n and units[i + 1] == 10:
            i += 2
            starts.append(i)
        elif c in (10, 13):
            i += 1
            starts.append(i)
        else:
            i += 1
    return starts


def _offset(units: array, starts: list[int], line: int, character: int) -> int:
    if line >= len(starts):
        return len(units)
    start = starts[line]
    end = starts[line + 1] if line + 1 < len(starts) else len(units)
    while end > start and units[end - 1] in (10, 13):
        end -= 1
    off = start + min(character, end - start)
    if start < off < end and 0xD800 <= units[off - 1] <= 0xDBFF and 0xDC00 <= units[off] <= 0xDFFF:
        off += 1
    return off


def as_editor_text(text: str) -> str:
    """What an editor holds for `text`: adjacent halves of a surrogate pair are one character (JSON
    carries "\\ud83d\\ude00" either way)."""
    return from_units(to_units(text))


def apply_change(text: str, change: dict) -> str:
    if "range" not in change:
        return as_editor_text(change["text"])
    units = to_units(text)
    starts = _line_starts(units)
    rs, re_ = change["range"]["start"], change["range"]["end"]
    a = _offset(units, starts, rs["line"], rs["character"])
    b = _offset(units, starts, re_["line"], re_["character"])
    a, b = min(a, b), max(a, b)
    return from_units(units[:a] + to_units(change["text"]) + units[b:])


def lines_of(text: str) -> list[int]:
    """UTF-16 lengths of the LSP lines of `text` (without their breaks)."""
    units = to_units(text)
    starts = _line_starts(units) + [len(units)]
    out = []
    for s, e in zip(starts, starts[1:] or [len(units)]):
        while e > s and units[e - 1] in (10, 13):
            e -= 1
        out.append(e - s)
    return out or [0]


def _valid_position(p) -> bool:
    return (isinstance(p, dict) and all(isinstance(p.get(k), int) and not isinstance(p.get(k), bool)
                                        and 0 <= p[k] <= UINT_MAX for k in ("line", "character")))


def change_is_valid(change: dict) -> bool:
    if not isinstance(change.get("text"), str):
        return False
    if "range" not in change:
        return True
    r = change["range"]
    return isinstance(r, dict) and _valid_position(r.get("start")) and _valid_position(r.get("end"))


# --- the documents ------------------------------------------------------------------------------------

@dataclass
class Doc:
    name: str
    spellings: list[str]


def documents(root: Path) -> list[Doc]:
    spaced = (root / "fz dir" / "a b.py").as_uri()
    plain = (root / "b.py").as_uri()
    return [
        Doc("a", [spaced, spaced.replace("%20", " "), spaced.replace("file:", "FILE:", 1)]),
        Doc("b", [plain, plain.replace("/b.py", "/%62.py")]),
        Doc("win", ["file:///c%3A/fz/w.py", "file:///C:/fz/w.py", "file:///c:/fz/w.py"]),
        Doc("env", [(root / ".env").as_uri()]),
    ]


# --- the session ------------------------------------------------------------------------------

@dataclass
class Stats:
    messages: int = 0
    requests: int = 0
    notifications: int = 0
    garbage: int = 0
    edits: int = 0
    text_checks: int = 0
    completions_with_items: int = 0
    cancelled: int = 0
    error_replies: dict = field(default_factory=dict)
    crashes: int = 0
    hangs: int = 0
    lost_replies: int = 0
    duplicate_replies: int = 0
    internal_errors: int = 0
    text_mismatches: int = 0
    max_rss_bytes: int = 0
    first_rss_bytes: int = 0
    model_calls: int = 0

    def as_dict(self) -> dict:
        return dict(self.__dict__)


class FuzzSession:
    """One server for many generated examples; the reference model lives as long as the server."""

    def __init__(self, model: Path, home: Path, root: Path, *, max_message_bytes: int = 256 * 1024) -> None:
        self.root = root
        self.max_message_bytes = max_message_bytes
        self.server = RawServer(model, home, root, env={
            # small prompts, short generations, one thread: many model calls, on busy cores too
            "STROP_DEBUG_REQUESTS": "1", "STROP_TIME_CAP_MS": "250", "STROP_MAX_NEW_TOKENS": "8",
            "STROP_BUDGET_TOKENS": "256", "STROP_N_THREADS": "1",
            "STROP_MAX_MESSAGE_BYTES": str(max_message_bytes), "STROP_REGISTRY_POLL_S": "3600"})
        self.docs = documents(root)
        self.open: dict[str, str] = {}  # logical name → reference text
        self.stats = Stats()
        self.pending: dict[str, tuple[str, float]] = {}  # reply key → (what, sent at)
        self.expected_text: dict[str, tuple[str | None, str]] = {}  # reply key → (text, doc name)
        self.null_replies_expected = 0
        self.failures: list[str] = []
        self.served: list[str] = []  # ids of completions served, for accept/show/dismiss/partial
        self._n = 0
        self.server.initialize(root)
        self.server.wait_ready()
        self.server.replies.clear()
        self.stats.first_rss_bytes = self.stats.max_rss_bytes = self.server.rss_bytes()

    # --- sending ------------------------------------------------------------------------------
    def _id(self) -> str:
        self._n += 1
        return f"f{self._n}"

    def request(self, method: str, params, what: str | None = None, msg_id=None) -> str:
        msg_id = self._id() if msg_id is None else msg_id
        self.server.request(method, params, msg_id=msg_id)
        self.pending[json.dumps(msg_id)] = (what or method, time.monotonic())
        self.stats.messages += 1
        self.stats.requests += 1
        return msg_id

    def notify(self, method: str, params) -> None:
        self.server.notify(method, params)
        self.stats.messages += 1
        self.stats.notifications += 1

    def raw(self, data: bytes, *, null_reply: bool = False, reply_id=None) -> None:
        self.server.write(data)
        self.stats.messages += 1
        self.stats.garbage += 1
        if null_reply:
            self.null_replies_expected += 1
        if reply_id is not None:
            self.pending[json.dumps(reply_id)] = ("garbage", time.monotonic())

    def check_text(self, doc: Doc, spelling: str) -> None:
        msg_id = self.request("strop/debugDocument", {"textDocument": {"uri": spelling}})
        self.expected_text[json.dumps(msg_id)] = (self.open.get(doc.name), doc.name)

    # --- one drawn step -----------------------------------------------------------------------
    def step(self, draw) -> None:
        doc = draw(st.sampled_from(self.docs))
        uri = draw(st.sampled_from(doc.spellings))
        kind = draw(st.sampled_from(
            ["open", "open", "change", "change", "change", "change", "close", "save", "inline", "inline", "completion",
             "cancel", "status", "notify", "command", "garbage", "lifecycle", "cursor"]))
        getattr(self, f"_{kind}")(draw, doc, uri)

    def _open(self, draw, doc: Doc, uri: str) -> None:
        text = draw(DOCUMENT)
        self.notify("textDocument/didOpen", {"textDocument": {"uri": uri, "languageId": "python", "version": 1,
                                                              "text": text}})
        self.open[doc.name] = as_editor_text(text)
        self.check_text(doc, draw(st.sampled_from(doc.spellings)))

    def _position(self, draw, doc: Doc) -> dict:
        lines = lines_of(self.open.get(doc.name, ""))
        if draw(st.integers(0, 3)) == 0:  # the end of a line, where completions are asked for
            line = draw(st.integers(0, len(lines) - 1))
            return {"line": line, "character": lines[line]}
        line = draw(st.one_of(st.integers(0, len(lines) + 1), st.sampled_from([UINT_MAX, 10**6])))
        width = lines[line] if line < len(lines) else 0
        character = draw(st.one_of(st.integers(0, width + 2), st.sampled_from([UINT_MAX, 10**6])))
        if draw(st.integers(0, 60)) == 0:  # outside LSP's uinteger: the notification is refused whole
            line = draw(st.sampled_from([-1, UINT_MAX + 1, 2**64]))
        return {"line": line, "character": character}

    def _change(self, draw, doc: Doc, uri: str) -> None:
        changes = []
        for _ in range(draw(st.integers(1, 3))):
            if draw(st.integers(0, 12)) == 0:
                changes.append({"text": draw(TEXT)})
            else:
                changes.append({"range": {"start": self._position(draw, doc), "end": self._position(draw, doc)},
                                "text": draw(TEXT)})
        if draw(st.integers(0, 40)) == 0:
            changes.append({"range": {"start": {"line": 0, "character": 0}, "end": {"line": 0, "character": 1}}})
        self.notify("textDocument/didChange", {"textDocument": {"uri": uri, "version": 2}, "contentChanges": changes})
        self.stats.edits += 1
        if doc.name in self.open and all(change_is_valid(c) for c in changes):  # else refused whole
            text = self.open[doc.name]
            for change in changes:
                text = apply_change(text, change)
            self.open[doc.name] = text
        self.check_text(doc, draw(st.sampled_from(doc.spellings)))

    def _close(self, draw, doc: Doc, uri: str) -> None:
        self.notify("textDocument/didClose", {"textDocument": {"uri": uri}})
        self.open.pop(doc.name, None)
        self.check_text(doc, draw(st.sampled_from(doc.spellings)))

    def _save(self, draw, doc: Doc, uri: str) -> None:
        self.notify("textDocument/didSave", {"textDocument": {"uri": uri}})

    def _inline(self, draw, doc: Doc, uri: str) -> None:
        self.request("textDocument/inlineCompletion", {
            "textDocument": {"uri": uri}, "position": self._position(draw, doc),
            "context": {"triggerKind": draw(st.sampled_from([1, 2]))}}, what="inline")

    def _completion(self, draw, doc: Doc, uri: str) -> None:
        self.request("textDocument/completion", {"textDocument": {"uri": uri}, "position": self._position(draw, doc)},
                     what="completion")

    def _cancel(self, draw, doc: Doc, uri: str) -> None:
        recent = [json.loads(k) for k, (what, _) in self.pending.items() if what in ("inline", "completion")]
        target = draw(st.sampled_from(recent)) if recent and draw(st.booleans()) else draw(
            st.one_of(st.integers(), st.text(max_size=4)))
        self.notify("$/cancelRequest", {"id": target})

    def _status(self, draw, doc: Doc, uri: str) -> None:
        self.request(draw(st.sampled_from(["strop/status", "strop/stats"])), draw(st.sampled_from([{}, None, [1]])))

    def _notify(self, draw, doc: Doc, uri: str) -> None:
        method = draw(st.sampled_from(["strop/didShowCompletion", "strop/didDismissCompletion",
                                       "strop/didPartiallyAcceptCompletion", "no/such/notification", "$/setTrace"]))
        params = draw(st.one_of(
            st.fixed_dictionaries({"id": st.one_of(st.text(max_size=8), st.integers(), st.none()),
                                   "acceptedLength": st.one_of(st.integers(), st.text(max_size=3))}),
            st.none(), st.lists(st.integers(), max_size=2), st.text(max_size=5)))
        real, length = self._served_id(draw), draw(st.integers(0, 12))
        if real is not None and method.startswith("strop/"):  # the id of a completion served before
            params = {"id": real, "acceptedLength": length}
        if params is None:
            self.server.notify(method)
            self.stats.messages += 1
            self.stats.notifications += 1
        else:
            self.notify(method, params)

    def _command(self, draw, doc: Doc, uri: str) -> None:
        command = draw(st.sampled_from(["strop.toggle", "strop.accept", "no.such.command"]))
        arguments = draw(st.one_of(
            st.just([{"enabled": True}]), st.just([]),
            st.lists(st.one_of(st.integers(), st.text(max_size=4), st.fixed_dictionaries(
                {"id": st.text(max_size=6), "enabled": st.one_of(st.booleans(), st.text(max_size=3))})), max_size=2)))
        real = self._served_id(draw)
        if real is not None and command == "strop.accept":
            arguments = [{"id": real}]
        self.request("workspace/executeCommand", {"command": command, "arguments": arguments})
        if command == "strop.toggle":  # on again: the traffic that follows should be served
            self.request("workspace/executeCommand", {"command": command, "arguments": [{"enabled": True}]})

    def _served_id(self, draw) -> str | None:
        """Now and then the id of a completion the server served. What is drawn never depends on
        that state (which outlives an example), or hypothesis sees two data generations."""
        use, pick = draw(st.booleans()), draw(st.integers(0, 10**6))
        return self.served[pick % len(self.served)] if use and self.served else None

    def _cursor(self, draw, doc: Doc, uri: str) -> None:
        self.notify("strop/didMoveCursor", {"textDocument": {"uri": uri}, "position": self._position(draw, doc)})

    def _lifecycle(self, draw, doc: Doc, uri: str) -> None:
        if draw(st.booleans()):
            self.notify("initialized", {})
        else:
            self.request("initialize", {"processId": None, "rootUri": None, "capabilities": {}}, what="initialize")

    def _garbage(self, draw, doc: Doc, uri: str) -> None:
        how = draw(st.sampled_from(["not json", "not utf-8", "deep", "batch", "scalar", "no jsonrpc", "bad method",
                                    "header only", "oversized", "unknown request", "bad params", "bad id"]))
        if how == "not json":
            self.raw(frame(draw(st.sampled_from([b"{", b"{'a': 1}", b"nul", b'{"jsonrpc": "2.0",}']))), null_reply=True)
        elif how == "not utf-8":
            self.raw(frame(b'{"jsonrpc": "2.0", "method": "\xff\xfe"}'), null_reply=True)
        elif how == "deep":
            self.raw(frame(b"[" * 100_000 + b"]" * 100_000), null_reply=True)
        elif how == "batch":
            self.raw(frame(json.dumps([{"jsonrpc": "2.0", "id": self._id(), "method": "strop/status"}]).encode()),
                     null_reply=True)
        elif how == "scalar":
            self.raw(frame(draw(st.sampled_from([b"1", b'"x"', b"null", b"true"]))), null_reply=True)
        elif how == "no jsonrpc":
            msg_id = self._id()
            self.raw(frame({"id": msg_id, "method": "strop/status"}), reply_id=msg_id)
        elif how == "bad method":
            msg_id = self._id()
            self.raw(frame({"jsonrpc": "2.0", "id": msg_id, "method": 5}), reply_id=msg_id)
        elif how == "header only":
            self.raw(b"X-Junk: 1\r\n\r\n", null_reply=True)
        elif how == "oversized":
            self.raw(frame(json.dumps({"jsonrpc": "2.0", "method": "textDocument/didOpen",
                                       "params": {"pad": "x" * (self.max_message_bytes + 10)}}).encode()),
                     null_reply=True)
        elif how == "unknown request":
            self.request(draw(st.sampled_from(["no/such/request", "textDocument/hover", "$/unknown"])), {})
        elif how == "bad params":
            method = draw(st.sampled_from(["textDocument/inlineCompletion", "textDocument/completion",
                                           "workspace/executeCommand", "strop/debugDocument"]))
            self.request(method, draw(st.one_of(st.none(), st.lists(st.integers(), max_size=2), st.just({}),
                                                st.fixed_dictionaries({"textDocument": st.integers()}))))
        else:  # an id that is not a JSON-RPC id: answered with whatever the server can read, or null
            self.raw(frame({"jsonrpc": "2.0", "id": [1], "method": "strop/status"}), null_reply=True)

    # --- checking -----------------------------------------------------------------------------
    def settle(self) -> None:
        """Wait for every reply; check counts, errors and texts; then sample the RSS."""
        deadline = time.monotonic() + REPLY_TIMEOUT_S
        server = self.server
        while time.monotonic() < deadline:
            with server._cv:
                missing = [k for k in self.pending if not server.replies.get(k)]
                nulls = len(server.replies.get(json.dumps(None), []))
            if not missing and nulls >= self.null_replies_expected:
                break
            if not server.alive():
                self.stats.crashes += 1
                self.failures.append(f"the server died (exit {server.proc.returncode}): "
                                     + " | ".join(server.stderr[-5:]))
                return
            time.sleep(0.05)
        else:
            self.stats.hangs += len(missing)
            self.stats.lost_replies += len(missing)
            self.failures.append(f"{len(missing)} requests got no reply in {REPLY_TIMEOUT_S:.0f} s: "
                                 + ", ".join(f"{k} ({self.pending[k][0]})" for k in missing[:5]))
        time.sleep(0.05)  # a duplicate reply would follow its first one at once
        with server._cv:
            for key in list(self.pending):
                replies = server.replies.pop(key, [])
                self._check(key, replies)
            unasked = [k for k in server.replies if k != json.dumps(None)]
            nulls = server.replies.pop(json.dumps(None), [])
        for key in unasked:
            self.failures.append(f"a reply to {key}, which was never sent")
        if len(nulls) != self.null_replies_expected:
            self.failures.append(f"{len(nulls)} replies with id null for {self.null_replies_expected} garbage messages")
        for reply in nulls:
            self._check_error(reply)
        self.pending.clear()
        self.null_replies_expected = 0
        rss = server.rss_bytes()
        self.stats.max_rss_bytes = max(self.stats.max_rss_bytes, rss)
        probe = server.request("strop/status", {}, msg_id=self._id())
        status = server.wait(probe, REPLY_TIMEOUT_S).get("result") or {}
        with server._cv:
            server.replies.pop(json.dumps(probe), None)
        self.stats.model_calls = status.get("modelCalls", self.stats.model_calls)

    def _check(self, key: str, replies: list[dict]) -> None:
        what = self.pending[key][0]
        if not replies:
            return  # counted as lost above
        if len(replies) > 1:
            self.stats.duplicate_replies += len(replies) - 1
            self.failures.append(f"{len(replies)} replies to {key} ({what})")
        reply = replies[0]
        if "error" in reply:
            self._check_error(reply)
            return
        if key in self.expected_text:
            self.stats.text_checks += 1
            text, name = self.expected_text.pop(key)
            got = reply["result"]["text"] if reply["result"] else None
            if got != text:
                self.stats.text_mismatches += 1
                self.failures.append(f"document {name}: the server has {got!r:.200} where the editor has {text!r:.200}")
        elif what in ("inline", "completion") and reply.get("result"):
            found = reply["result"].get("items") or []
            self.stats.completions_with_items += bool(found)
            self.served = (self.served + [i["command"]["arguments"][0]["id"] for i in found])[-50:]

    def _check_error(self, reply: dict) -> None:
        error = reply["error"]
        code = error.get("code")
        self.stats.error_replies[str(code)] = self.stats.error_replies.get(str(code), 0) + 1
        if code == -32800:
            self.stats.cancelled += 1
        message = error.get("message", "")
        if error.get("data") or "Traceback" in message or "\n" in message:
            self.failures.append(f"a reply with a traceback or a multi-line message: {error!r:.300}")
        if code == -32603:
            self.stats.internal_errors += 1
            self.failures.append(f"an internal error: {message:.300}")

    def begin(self) -> None:
        """Start an example: what an aborted one left is drained and forgotten, every document is
        closed (an example starts from none)."""
        if self.pending or self.null_replies_expected:
            self.settle()
        self.failures.clear()
        self.request("workspace/executeCommand", {"command": "strop.toggle", "arguments": [{"enabled": True}]})
        for doc in self.docs:
            self.notify("textDocument/didClose", {"textDocument": {"uri": doc.spellings[0]}})
        self.open.clear()

    def finish(self) -> int:
        """shutdown + exit; the exit code."""
        return self.server.stop()


def log_records(lines: list[str]) -> list[list[str]]:
    """stderr lines grouped into log records (a record starts with a timestamp; a traceback
    continues the record above it)."""
    records: list[list[str]] = []
    for line in lines:
        if re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", line) or not records:
            records.append([line])
        else:
            records[-1].append(line)
    return records


def noise(lines: list[str]) -> list[list[str]]:
    """Records above INFO level, and anything not a log record."""
    return [r for r in log_records(lines) if " INFO " not in r[0]]
