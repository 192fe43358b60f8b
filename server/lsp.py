"""The LSP server: handlers register, then delegate to the Completer, the log and the retention tracker.

Speaks `textDocument/inlineCompletion` (LSP 3.18) and `textDocument/completion`, plus strop's own
notifications and commands (server/protocol.py). Positions arrive in the negotiated encoding (UTF-16
by default) and are converted by pygls's position codec.
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from urllib.parse import unquote, urlparse

from lsprotocol import types as t
from pygls.exceptions import FeatureRequestError, JsonRpcInvalidParams
from pygls.lsp.server import LanguageServer

from . import __version__, debug, protocol
from . import stats as statsmod
from .completer import Completer, Request
from core.completion_log import CompletionLog, open_log
from .config import ServeConfig
from core.context import OtherDocument
from .documents import index_to_column, is_secret_document, uri_path
from .engine import Engine
from .engine_factory import make_engine
from .hot_swap import watch_registry
from .team_follow import start_team_follow
from .index_service import IndexService
from core.errors import BadRequest, StropError
from core.git import toplevel as git_root
from core.languages import language_of
from core.models import ResolvedModel, resolve
from core.repo_context import RetrievalSettings, Retriever
from core.retrieval import store_dir_for
from .params import command_arg, completion_id, uinteger
from .retention import RetentionTracker
from .rpc import StropProtocol

log = logging.getLogger(__name__)

MAX_OTHER_DOCS = 3
WARM_DEFER_S = 0.03  # a cursor report's warm-up waits this long for a request right behind it


def _arg(params, key: str, default=None):
    """Custom-method params arrive as plain dicts (or attribute objects from some pygls paths)."""
    if params is None:
        return default
    if isinstance(params, dict):
        return params.get(key, default)
    return getattr(params, key, default)


def cursor_after(doc, changes) -> t.Position | None:
    """Where the cursor is after one edit applied to `doc`: the end of the inserted text (typing,
    deleting, pasting). None for a whole-text change or several at once (a format, a multi-cursor edit)."""
    if len(changes) != 1 or getattr(changes[0], "range", None) is None:
        return None
    return doc.position_at(doc.last_edit_end)


def _common_prefix_len(a: str, b: str) -> int:
    lo, hi = 0, min(len(a), len(b))
    while lo < hi:  # binary search over slice equality: memcmp speed, no per-character Python loop
        mid = (lo + hi + 1) // 2
        if a[:mid] == b[:mid]:
            lo = mid
        else:
            hi = mid - 1
    return lo


def _common_suffix_len(a: str, b: str, limit: int) -> int:
    lo, hi = 0, min(len(a), len(b)) - limit
    hi = max(hi, 0)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if a[len(a) - mid:] == b[len(b) - mid:]:
            lo = mid
        else:
            hi = mid - 1
    return lo


class StropServer(LanguageServer):
    def __init__(self, cfg: ServeConfig) -> None:
        super().__init__("strop", __version__, protocol_cls=StropProtocol)
        self.cfg = cfg
        self.engine: Engine = make_engine(cfg, slots=cfg.warm_slots, on_state=self._engine_state)
        self._told_crash = False
        self.completion_log: CompletionLog | None = None
        self.completer: Completer | None = None
        self.retention = RetentionTracker(after_s=cfg.retention_after_s, after_changes=cfg.retention_after_edits)
        self.repo_root: Path | None = cfg.repo_root
        self.resolved: ResolvedModel | None = None
        self.enabled = True
        self.state = "starting"
        self.message: str | None = None
        self.shadow: dict[str, str] = {}  # uri → last text (for change spans, retention and close)
        self.focus: dict[str, tuple[float, int]] = {}  # uri → (time, line) of the last edit
        self.loop: asyncio.AbstractEventLoop | None = None
        self.cursor: dict | None = None  # the last strop/didMoveCursor: {"uri", "line", "character"}
        self.deferred_warm: tuple[str, t.Position] | None = None
        self.warm_timers: dict[str, tuple[asyncio.TimerHandle, t.Position]] = {}  # warm-ups waiting WARM_DEFER_S
        self._watch_task: asyncio.Task | None = None
        self.index_service: IndexService | None = None  # the repository's BM25 index, kept fresh

    # --- status -------------------------------------------------------------------------------
    def status(self) -> dict:
        model = self.engine.model
        return {
            "state": "disabled" if not self.enabled else self.state,
            "model": model.resolved.name if model else (self.resolved.name if self.resolved else None),
            "modelVersion": model.resolved.version if model else None,
            "modelPath": str(model.resolved.path) if model else None,
            "fim": model.fim.name if model and model.fim else None,
            "lastLatencyMs": round(self.completer.last_latency_ms, 1)
            if self.completer and self.completer.last_latency_ms is not None else None,
            "enabled": self.enabled,
            "message": self.message,
            "modelCalls": self.engine.model_calls,
            "warmups": self.engine.warmups,
            "warming": self.engine.warming,  # warm-up prompts queued or running
            "droppedIncomplete": self.completer.unanswered["cut_by_cap"] if self.completer else 0,
            "unanswered": dict(self.completer.unanswered) if self.completer else {},
            "cursor": self.cursor,
            "workerPid": self.engine.worker_pid,
            "crashes": len(self.engine.crashes),
            "llamaSettings": self.engine.settings,
            "promptTokensPerS": self.engine.speeds.get("prompt_tps"),
            "genTokensPerS": self.engine.speeds.get("gen_tps"),
            "index": self.index_service.stats() if self.index_service else None,
        }

    def _engine_state(self, state: str, message: str | None) -> None:
        """Called from the engine thread."""
        if state == "restarting":  # the model process crashed: say so once, keep serving
            self.message = message
            if not self._told_crash and self.loop is not None and not self.loop.is_closed():
                self._told_crash = True
                self.loop.call_soon_threadsafe(self._show, t.MessageType.Warning, f"strop: {message}")
            state = "loading"
        elif state == "idle" and self.message and self.engine.model is not None and self.state == "loading":
            self.message = None
        if state == "idle" and self.deferred_warm is not None and self.loop is not None and not self.loop.is_closed():
            self.loop.call_soon_threadsafe(self._warm_deferred)
        if state == "error":
            self.message = message
        elif state == "idle" and self.state == "error" and self.engine.model is not None:
            self.message = None
        if self.engine.model is None and state != "error":
            return
        self.state = state
        if self.loop is not None and not self.loop.is_closed():
            self.loop.call_soon_threadsafe(self._publish_status)

    def _publish_status(self) -> None:
        try:
            self.protocol.notify(protocol.STATUS_CHANGED, self.status())
        except Exception:  # no client attached yet / transport closed
            log.debug("status not sent", exc_info=True)

    def _warm_deferred(self) -> None:
        pending, self.deferred_warm = self.deferred_warm, None
        if pending is not None:
            self.warm_up(*pending)

    def _show(self, kind: t.MessageType, text: str) -> None:
        try:
            self.window_show_message(t.ShowMessageParams(kind, text))
        except Exception:
            log.debug("showMessage not sent", exc_info=True)
        self._publish_status()

    def report_server_error(self, error: Exception, source) -> None:
        """pygls shows an error of a notification handler as a popup. Handlers drop a client's bad
        notification themselves (debug level); what still fails here (a full disk, a bug) is logged,
        one line. A request's error is in its answer."""
        if source is not FeatureRequestError:
            log.error("%s", str(error).splitlines()[0] if str(error) else type(error).__name__)

    def error_to_user(self, err: Exception) -> None:
        self.state, self.message = "error", str(err)
        log.error("%s", err)
        try:
            self.window_show_message(t.ShowMessageParams(t.MessageType.Error, f"strop: {err}"))
        except Exception:
            log.debug("showMessage not sent", exc_info=True)
        self._publish_status()

    # --- model --------------------------------------------------------------------------------
    def start_model(self, explicit: Path | None) -> None:
        try:
            self.resolved = resolve(explicit, self.repo_root)
        except StropError as err:
            self.error_to_user(err)
            return
        self.state = "loading"

        def done(ok: bool, error: str | None) -> None:
            if not ok and self.loop:
                self.loop.call_soon_threadsafe(self.error_to_user, StropError(error))

        self.engine.load_async(self.resolved, done)

    def set_resolved(self, resolved: ResolvedModel) -> None:
        self.resolved = resolved

    def warm_up(self, uri: str, position: t.Position) -> None:
        """Evaluate the prompts of a position ahead of the next keystroke (no generation), after
        WARM_DEFER_S: the editors report the cursor and ask for a completion on the same debounce, and
        the request, which warms its own position's ladder, should not wait behind the warm-up."""
        if self.loop is None or self.loop.is_closed():
            self._warm_now(uri, position)
            return
        old = self.warm_timers.pop(uri, None)
        if old is not None:
            old[0].cancel()
        self.warm_timers[uri] = (self.loop.call_later(WARM_DEFER_S, self._warm_now, uri, position), position)

    def hold_warm_up(self, uri: str) -> tuple[str, t.Position] | None:
        """A request for `uri` came: its deferred warm-up waits until the request is answered."""
        held = self.warm_timers.pop(uri, None)
        if held is None:
            return None
        held[0].cancel()
        return uri, held[1]

    def _warm_now(self, uri: str, position: t.Position) -> None:
        self.warm_timers.pop(uri, None)
        if not self.enabled or self.completer is None or uri not in self.workspace.text_documents:
            return
        if self.engine.model is None:  # still loading: warm it once the model is there
            self.deferred_warm = (uri, position)
            return
        try:
            req, _ = _request_from(self, uri, position, "warmup")
        except BadRequest as err:
            log.debug("no warm-up: %s", err)
            return
        self.completer.warm(req)

    # --- documents ----------------------------------------------------------------------------
    def relpath(self, uri: str) -> str:
        parsed = urlparse(uri)
        if parsed.scheme != "file":
            return uri
        path = Path(unquote(parsed.path))
        if self.repo_root:
            try:
                return str(path.relative_to(self.repo_root))
            except ValueError:
                pass
        return path.name

    def language(self, uri: str, given: str | None, text: str | None = None) -> str:
        """The client's language id, else the one harvest gives the file (name, suffix, shebang)."""
        return given or language_of(unquote(urlparse(uri).path), text) or "plaintext"

    def note_change(self, uri: str, new: str) -> None:
        old = self.shadow.get(uri)
        self.shadow[uri] = new
        if old is None or old is new:
            return
        start = _common_prefix_len(old, new)
        tail = _common_suffix_len(old, new, start)
        self.focus[uri] = (time.monotonic(), new.count("\n", 0, start))
        self.retention.on_change(uri, start, len(old) - tail, len(new) - tail - start)

    def others(self, uri: str) -> tuple[OtherDocument, ...]:
        docs = []
        for other_uri, doc in list(self.workspace.text_documents.items()):
            if other_uri == uri or is_secret_document(other_uri):  # a .env is never context elsewhere
                continue
            when, line = self.focus.get(other_uri, (0.0, 0))
            docs.append((when, other_uri, OtherDocument(self.relpath(other_uri), doc.source, line)))
        docs.sort(key=lambda d: (-d[0], d[1]))
        return tuple(d[2] for d in docs[:MAX_OTHER_DOCS])

    def measure_retention(self, uri: str | None = None, *, saved: bool = False, closing: bool = False) -> None:
        if self.completion_log is None:
            return
        for tracked in self.retention.due(uri, saved=saved, closing=closing):
            text = self.shadow.get(tracked.uri)
            if text is None:
                continue
            kept = self.retention.measure(tracked, text)
            try:
                self.completion_log.mark_retention(tracked.id, kept)
            except StropError as err:
                log.error("%s", err)


def _request_from(ls: StropServer, uri: str, position: t.Position, trigger: str) -> tuple[Request, object]:
    doc = ls.workspace.document(uri)
    if doc is None:
        raise BadRequest(f"document {uri} is not open: send textDocument/didOpen first.")
    text = doc.source
    n_lines = doc.line_count()  # LSP's lines (server/documents.py)
    if position.line < 0 or position.character < 0:
        raise BadRequest(f"position {position.line}:{position.character} is negative.")
    if position.line >= n_lines:
        raise BadRequest(f"line {position.line} is outside the document ({n_lines} lines).")
    position = doc.clamp(position)  # LSP: a character past the end of the line means the end of the line
    offset = doc.offset_at_position(position)
    others = ls.others(uri)
    return Request(uri=uri, path=ls.relpath(uri), language=ls.language(uri, doc.language_id, text), text=text,
                   offset=offset, others=others, trigger=trigger), position


def _documentation(ls: StropServer, language: str, text: str) -> t.MarkupContent | str:
    """The whole suggestion: a Markdown code block when the client renders Markdown, else plain."""
    caps = ls.client_capabilities.text_document
    item_caps = caps.completion.completion_item if caps and caps.completion else None
    formats = (item_caps.documentation_format if item_caps else None) or []
    if t.MarkupKind.Markdown in formats:
        return t.MarkupContent(kind=t.MarkupKind.Markdown, value=f"```{language}\n{text}\n```")
    return text


def _accept_command(cid: str) -> t.Command:
    return t.Command(title="strop: accepted", command=protocol.CMD_ACCEPT, arguments=[{"id": cid}])


def build_server(cfg: ServeConfig, *, explicit_model: Path | None = None) -> StropServer:
    server = StropServer(cfg)

    @server.feature(t.INITIALIZE)
    def initialize(ls: StropServer, params: t.InitializeParams) -> None:
        root = None
        if params.workspace_folders:
            root = params.workspace_folders[0].uri
        elif params.root_uri:
            root = params.root_uri
        if ls.repo_root is None and root and uri_path(root):
            folder = Path(uri_path(root))
            ls.repo_root = git_root(folder) or folder

    @server.feature(t.INITIALIZED)
    async def initialized(ls: StropServer, params: t.InitializedParams) -> None:
        ls.loop = asyncio.get_running_loop()
        try:
            ls.completion_log = open_log()
        except StropError as err:
            ls.error_to_user(err)  # serve without a log rather than not at all
        repo = str(ls.repo_root) if ls.repo_root else ""
        retriever = None
        if ls.repo_root is not None and cfg.retrieval_k > 0:
            # Built in a background thread: until it is ready, prompts have no repository chunks.
            ls.index_service = IndexService(ls.repo_root, store_dir=store_dir_for(ls.repo_root))
            ls.index_service.start()
            service = ls.index_service
            retriever = Retriever(lambda: service.index, RetrievalSettings(k=cfg.retrieval_k))
        ls.completer = Completer(ls.engine, cfg, ls.completion_log, repo=repo,
                                 repo_name=ls.repo_root.name if ls.repo_root else "", retriever=retriever)
        ls.start_model(explicit_model)
        if explicit_model is None and ls.repo_root is not None:
            ls._watch_task = asyncio.ensure_future(watch_registry(ls.engine, ls.repo_root, cfg.registry_poll_s,
                                                                  ls.set_resolved))
            ls._team_task = start_team_follow(ls)  # [registry] url: fetch what the team promotes
        asyncio.ensure_future(_retention_timer(ls))

    @server.feature(t.TEXT_DOCUMENT_DID_OPEN)
    def did_open(ls: StropServer, params: t.DidOpenTextDocumentParams) -> None:
        uri = params.text_document.uri
        ls.shadow[uri] = params.text_document.text
        ls.focus[uri] = (time.monotonic(), 0)
        # Until the editor reports the cursor (strop/didMoveCursor), warm the end of the document,
        # where code is most often added.
        doc = ls.workspace.text_documents.get(uri)
        if doc is not None:
            last = doc.line_count() - 1
            content = doc.line_text(last)
            ls.warm_up(uri, t.Position(last, index_to_column(content, len(content), doc.encoding)))

    @server.feature(t.TEXT_DOCUMENT_DID_CHANGE)
    def did_change(ls: StropServer, params: t.DidChangeTextDocumentParams) -> None:
        uri = params.text_document.uri
        doc = ls.workspace.text_documents.get(uri)
        if doc is not None:
            ls.note_change(uri, doc.source)
            ls.measure_retention(uri)
            cursor = cursor_after(doc, params.content_changes)
            if cursor is not None:  # typing: warm the next request's prompt during the editor's debounce
                ls.warm_up(uri, cursor)

    @server.feature(t.TEXT_DOCUMENT_DID_SAVE)
    def did_save(ls: StropServer, params: t.DidSaveTextDocumentParams) -> None:
        uri = params.text_document.uri
        ls.measure_retention(uri, saved=True)
        doc = ls.workspace.text_documents.get(uri)
        if ls.index_service is not None and doc is not None and uri_path(uri):
            ls.index_service.on_saved(uri_path(uri), doc.source)  # the index follows saved text

    @server.feature(t.TEXT_DOCUMENT_DID_CLOSE)
    def did_close(ls: StropServer, params: t.DidCloseTextDocumentParams) -> None:
        uri = params.text_document.uri
        ls.measure_retention(uri, closing=True)
        ls.shadow.pop(uri, None)
        ls.focus.pop(uri, None)
        ls.hold_warm_up(uri)  # dropped
        if ls.completer:
            ls.completer.cache.forget(uri)

    @server.feature(t.TEXT_DOCUMENT_INLINE_COMPLETION, t.InlineCompletionOptions())
    async def inline_completion(ls: StropServer, params: t.InlineCompletionParams):
        if not ls.enabled or ls.completer is None:
            return None
        trigger = "invoked" if params.context.trigger_kind == t.InlineCompletionTriggerKind.Invoked else "automatic"
        held = ls.hold_warm_up(params.text_document.uri)
        try:
            req, pos = _request_from(ls, params.text_document.uri, params.position, trigger)
            result = await ls.completer.complete(req)
        except BadRequest as err:
            raise JsonRpcInvalidParams(str(err)) from err
        finally:
            if held is not None:
                ls.warm_up(*held)
        if result is None:
            return t.InlineCompletionList(items=[])
        item = t.InlineCompletionItem(insert_text=result.insert_text, range=t.Range(pos, pos),
                                      command=_accept_command(result.id))
        return t.InlineCompletionList(items=[item])

    @server.feature(t.TEXT_DOCUMENT_COMPLETION, t.CompletionOptions(trigger_characters=[".", "(", " "]))
    async def completion(ls: StropServer, params: t.CompletionParams):
        if not ls.enabled or ls.completer is None:
            return t.CompletionList(is_incomplete=True, items=[])
        held = ls.hold_warm_up(params.text_document.uri)
        try:
            req, pos = _request_from(ls, params.text_document.uri, params.position, "invoked")
            result = await ls.completer.complete(req)
        except BadRequest as err:
            raise JsonRpcInvalidParams(str(err)) from err
        finally:
            if held is not None:
                ls.warm_up(*held)
        if result is None:
            return t.CompletionList(is_incomplete=True, items=[])
        first = result.insert_text.split("\n", 1)[0]
        label = (first.strip() or result.insert_text.strip().split("\n", 1)[0])[:60]
        item = t.CompletionItem(
            label=label or "…", kind=t.CompletionItemKind.Text, detail="strop",
            documentation=_documentation(ls, req.language, result.insert_text),
            text_edit=t.TextEdit(range=t.Range(pos, pos), new_text=result.insert_text),
            filter_text=req.text[req.text.rfind("\n", 0, req.offset) + 1: req.offset].lstrip() + result.insert_text,
            sort_text="0", command=_accept_command(result.id),
        )
        return t.CompletionList(is_incomplete=True, items=[item])

    @server.command(protocol.CMD_ACCEPT)
    def accept(ls: StropServer, *args):
        cid = command_arg(protocol.CMD_ACCEPT, args, "id", str, '{"id": <completion id>}')
        if not cid:
            raise JsonRpcInvalidParams("strop.accept needs one argument {\"id\": <completion id>}.")
        offered = ls.completer.shown.get(cid) if ls.completer else None
        full = offered[1].text if offered else None
        logged = False
        if ls.completion_log is not None:
            try:
                logged = ls.completion_log.mark_outcome(cid, "accepted", len(full) if full is not None else None)
            except StropError as err:
                log.error("%s", err)
        if not offered and not logged:
            raise JsonRpcInvalidParams(f"strop.accept: no completion has the id {cid!r:.80}; pass the id from "
                                       "the item's command.")
        if offered:
            req, shown = offered
            text = ls.shadow.get(req.uri, "")
            ls.retention.track(cid, req.uri, text, shown.text, len(shown.prefix))
            ls.completer.cache.forget(req.uri)
        return {"id": cid, "accepted": True}

    @server.command(protocol.CMD_TOGGLE)
    def toggle(ls: StropServer, *args):
        wanted = command_arg(protocol.CMD_TOGGLE, args, "enabled", bool, '{"enabled": true|false}')
        ls.enabled = (not ls.enabled) if wanted is None else bool(wanted)
        ls._publish_status()
        return {"enabled": ls.enabled}

    @server.feature(protocol.DID_SHOW)
    def did_show(ls: StropServer, params) -> None:
        cid = completion_id(protocol.DID_SHOW, params)
        if cid and ls.completion_log is not None:
            ls.completion_log.mark_shown(cid)

    @server.feature(protocol.DID_DISMISS)
    def did_dismiss(ls: StropServer, params) -> None:
        cid = completion_id(protocol.DID_DISMISS, params)
        if cid and ls.completion_log is not None:
            ls.completion_log.mark_outcome(cid, "dismissed")

    @server.feature(protocol.DID_PARTIALLY_ACCEPT)
    def did_partially_accept(ls: StropServer, params) -> None:
        cid, length = completion_id(protocol.DID_PARTIALLY_ACCEPT, params), _arg(params, "acceptedLength")
        if not cid or not uinteger(length):
            log.debug("ignored %s without a non-negative acceptedLength: %.200r", protocol.DID_PARTIALLY_ACCEPT, params)
            return
        offered = ls.completer.shown.get(cid) if ls.completer else None
        chars = length
        if offered:  # acceptedLength is in UTF-16 code units; the log counts characters
            text = offered[1].text
            chars = len(text.encode("utf-16-le", "surrogatepass")[: 2 * length].decode("utf-16-le", "ignore"))
            req = offered[0]
            ls.retention.track(cid, req.uri, ls.shadow.get(req.uri, ""), text[:chars], len(offered[1].prefix))
        if ls.completion_log is not None:
            ls.completion_log.mark_outcome(cid, "partial", chars)

    @server.feature(protocol.DID_MOVE_CURSOR)
    def did_move_cursor(ls: StropServer, params) -> None:
        doc, pos = _arg(params, "textDocument"), _arg(params, "position")
        uri = _arg(doc, "uri")
        line, char = _arg(pos, "line"), _arg(pos, "character")
        if not isinstance(uri, str) or not uinteger(line) or not uinteger(char):
            log.debug("ignoring malformed %s: %r", protocol.DID_MOVE_CURSOR, params)
            return
        ls.cursor = {"uri": uri, "line": line, "character": char}
        ls.warm_up(uri, t.Position(line, char))

    @server.feature(protocol.STATUS)
    def status(ls: StropServer, params) -> dict:
        return ls.status()

    @server.feature(protocol.STATS)
    def stats(ls: StropServer, params) -> dict:
        if ls.completion_log is None:
            return {}
        return statsmod.compute(ls.completion_log.rows())

    @server.feature(t.SHUTDOWN)
    def shutdown(ls: StropServer, params) -> None:
        for tracked in ls.retention.pending():  # measure what we have rather than lose it
            ls.measure_retention(tracked.uri, closing=True)
        ls.engine.close()
        if ls.index_service is not None:
            ls.index_service.stop()  # persisted, so the next start re-reads only what changed

    debug.register(server)  # strop/debugDocument, only with STROP_DEBUG_REQUESTS=1
    return server


async def _retention_timer(ls: StropServer) -> None:
    while True:
        await asyncio.sleep(min(5.0, ls.cfg.retention_after_s))
        try:
            ls.measure_retention()
        except Exception:
            log.exception("retention check failed")
