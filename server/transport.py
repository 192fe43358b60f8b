"""LSP's base protocol on stdio: `Content-Length` framing with limits, and the exit code.

pygls 2 reads the stream itself (`pygls.io_.run_async`): it allocates whatever `Content-Length`
says (a huge one killed the server with MemoryError), reads header lines without a bound, answers
invalid JSON with nothing, hands every nested object with a "jsonrpc" key to the message decoder,
and swallows the exit code of `exit`. `serve_stdio` replaces that loop and keeps the rest of
pygls (the protocol, its writer, the handlers):

- a message larger than `max_message_bytes` is skipped (read in chunks and dropped) and answered
  with InvalidRequest and id null; a header line is read up to `MAX_HEADER_LINE` bytes;
- a body that is not JSON gets ParseError (-32700), one that is not a JSON-RPC 2.0 object (or a
  request whose id is neither a string nor an integer) InvalidRequest (-32600), both with the id
  when one can be read, else null;
- the process exit code is 0 after `shutdown` + `exit`, 1 after `exit` alone (LSP), and when
  the client closes the stream: 0 if it had sent `shutdown`, else 1.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import BinaryIO

from lsprotocol import types as t
from pygls.io_ import StdoutWriter

from .rpc import Rejected, message_id

log = logging.getLogger(__name__)

MAX_MESSAGE_BYTES = 64 * 2**20  # ServeConfig.max_message_bytes: a 2M-character document with every character escaped fits
MAX_HEADER_LINE = 8192
_DRAIN_CHUNK = 1 << 20


class _Reader:
    """Blocking reads of stdin on one thread of its own: a whole message per hop to the event loop
    (a hop per header line and body cost ~1 ms each on a 2-core machine with the model running)."""

    def __init__(self, stream: BinaryIO, max_message_bytes: int = MAX_MESSAGE_BYTES) -> None:
        self.stream = stream
        self.max_message_bytes = max_message_bytes
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="strop-stdin")

    async def message(self) -> bytes | str | None:
        """The next message's body; a str says why a message was skipped (to be answered with
        InvalidRequest); None at the end of the stream."""
        return await asyncio.get_running_loop().run_in_executor(self.pool, self._message)

    def _message(self) -> bytes | str | None:
        headers = self._headers()
        if headers is None:
            return None
        raw = headers.get("content-length", "")
        length = int(raw) if raw.isdigit() else -1
        if length < 0:
            return f"Invalid request: the header has no valid Content-Length ({raw!r})."
        if length > self.max_message_bytes:
            if not self._skip(length):
                return None
            return (f"Invalid request: a message of {length} bytes is larger than the limit of "
                    f"{self.max_message_bytes} bytes; it was skipped.")
        body = self._read(length)
        return body if len(body) == length else None  # short: the stream ended inside a message

    def _headers(self) -> dict[str, str] | None:
        """The header block of the next message (lower-case names), or None at the end of the stream."""
        headers: dict[str, str] = {}
        while True:
            line = self.stream.readline(MAX_HEADER_LINE)
            if not line:
                return None
            if len(line) >= MAX_HEADER_LINE and not line.endswith(b"\n"):
                while not line.endswith(b"\n"):  # an over-long line: drop all of it
                    line = self.stream.readline(MAX_HEADER_LINE)
                    if not line:
                        return None
                log.debug("ignored a header line longer than %d bytes", MAX_HEADER_LINE)
                continue
            text = line.decode("ascii", "replace").strip()
            if not text:
                if headers:
                    return headers
                continue  # blank lines between messages
            name, sep, value = text.partition(":")
            if sep:
                headers[name.strip().lower()] = value.strip()
            else:
                log.debug("ignored a header line that is not `Name: value`: %r", text[:80])

    def _read(self, n: int) -> bytes:
        parts, left = [], n
        while left > 0:
            chunk = self.stream.read(left)
            if not chunk:
                break
            parts.append(chunk)
            left -= len(chunk)
        return b"".join(parts)

    def _skip(self, n: int) -> bool:
        """Read and drop `n` bytes; False at the end of the stream."""
        while n > 0:
            got = self.stream.read(min(n, _DRAIN_CHUNK))
            if not got:
                return False
            n -= len(got)
        return True


def send_error(protocol, msg_id, code: int, message: str) -> None:
    protocol._send_response(msg_id, None, t.ResponseError(code=code, message=message))


def dispatch(protocol, body: bytes) -> None:
    """Decode one message body and hand it to the protocol; malformed ones are answered here."""
    try:
        data = json.loads(body)
    except RecursionError:
        send_error(protocol, None, t.ErrorCodes.ParseError, "Parse error: the message nests too deeply.")
        return
    except ValueError as err:  # JSONDecodeError, and UnicodeDecodeError for bytes that are not UTF-8
        send_error(protocol, None, t.ErrorCodes.ParseError, f"Parse error: the message is not JSON ({err}).")
        return
    if not isinstance(data, dict) or data.get("jsonrpc") != "2.0" or not isinstance(data.get("method", ""), str):
        send_error(protocol, message_id(data), t.ErrorCodes.InvalidRequest,
                   'Invalid request: a message is a JSON object with "jsonrpc": "2.0" and a string "method" '
                   "(LSP sends no batches).")
        return
    if "id" in data and "method" in data and message_id(data) is None:
        send_error(protocol, None, t.ErrorCodes.InvalidRequest,
                   f'Invalid request: {data["method"]}: "id" must be a string or an integer, not {data["id"]!r:.40}.')
        return
    try:
        message = protocol.structure_message(data)
    except Rejected:
        return
    protocol.handle_message(message)


async def _serve(reader: _Reader, protocol, stop: threading.Event) -> None:
    while not stop.is_set():
        got = await reader.message()
        if got is None:
            return
        if isinstance(got, str):
            send_error(protocol, None, t.ErrorCodes.InvalidRequest, got)
            continue
        try:
            dispatch(protocol, got)
        except Exception:  # a bug in strop: log it, keep serving
            log.exception("a message could not be handled")


def serve_stdio(server, stdin: BinaryIO, stdout: BinaryIO, *,
                max_message_bytes: int = MAX_MESSAGE_BYTES) -> int:
    """Run `server` (a pygls LanguageServer) on the streams until `exit` or the end of stdin;
    returns the process exit code."""
    server._stop_event = stop = threading.Event()  # pygls's shutdown() sets it
    server.protocol.set_writer(StdoutWriter(stdout))
    reader = _Reader(stdin, max_message_bytes)
    code = 0
    try:
        asyncio.run(_serve(reader, server.protocol, stop))
        code = 0 if server.protocol._shutdown else 1
    except SystemExit as done:  # `exit`: pygls chose 0 after shutdown, else 1
        code = done.code if isinstance(done.code, int) else 1
    except BrokenPipeError:
        log.error("the client closed the connection; stopping.")
        code = 0 if server.protocol._shutdown else 1
    finally:
        reader.pool.shutdown(wait=False)
        server.shutdown()
    return code
