"""The wire formats strop speaks to a remote inference server, and how it tells them apart.

Two kinds of server:
- **llama-server** (llama.cpp): `POST /completion` with the prompt as an array of token ids,
  `n_predict`, `cache_prompt`, `id_slot` (one slot per document, so documents stay warm),
  `return_tokens` (generated ids come back), per-request LoRA scales (`"lora": [{"id", "scale"}]`).
  Told apart by `GET /props`. Tokenizer check: `POST /tokenize`.
- **OpenAI-compatible** (`POST /v1/completions`): vLLM takes `prompt` as a list of token ids (a
  LoRA adapter is picked by its `model` name); llama-cpp-python's server takes text only, so the
  ids are rendered to text and sent only when re-tokenizing that text gives the same ids. Told apart
  by `GET /v1/models`; the prompt form by a one-token probe. Tokenizer check: vLLM's `POST /tokenize`
  or llama-cpp-python's `POST /extras/tokenize`.

A URL may name its kind: `llama+http://host:8080` or `openai+http://host:8000`; a plain `http(s)://`
URL is detected. Tokenization stays on the developer's machine, so the remote must serve the same
model: the probe text must tokenize identically on both sides. That checks the vocabulary, not the
weights: a distilled model must be deployed on the remote too (e.g. its LoRA, `STROP_ENGINE_LORA`).
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import httpx

from core.decode import Job
from core.errors import RemoteEngineError, RemoteModelMismatch
from core.llama_model import LoadedModel

LLAMA_SERVER = "llama-server"
OPENAI = "openai"
SCHEMES = {"llama": LLAMA_SERVER, "openai": OPENAI}
PROBE_TEXT = "def probe_ñ(values):\n    return {v: v ** 2 for v in values}  # ✓ strop\n"
MAX_STOP_STRINGS = 8


@dataclass(frozen=True)
class ServerInfo:
    url: str  # base URL, scheme prefix removed
    kind: str  # llama-server | openai
    model: str  # what the server calls its model (sent as `model` to OpenAI servers)
    prompt_form: str  # tokens | text
    latency_ms: float  # one round trip of the first probe
    n_ctx: int | None = None
    slots: int = 1
    tokenizer: str = "unverified"  # matches | unverified
    lora: list = field(default_factory=list)  # llama-server: [{"id", "scale"}] per request


def split_url(url: str) -> tuple[str, str | None]:
    """(base URL, forced kind or None) from `--engine URL`."""
    url = url.strip().rstrip("/")
    scheme, sep, rest = url.partition("://")
    if not sep:
        raise RemoteEngineError(f"--engine {url!r} is not a URL: pass e.g. http://gpu-box:8080 "
                                "(llama+http:// or openai+http:// to name the server kind).")
    kind = None
    if "+" in scheme:
        prefix, scheme = scheme.split("+", 1)
        kind = SCHEMES.get(prefix)
        if kind is None:
            raise RemoteEngineError(f"--engine {url!r}: unknown server kind {prefix!r}; use llama+http:// "
                                    "(llama-server) or openai+http:// (an OpenAI-compatible /v1/completions).")
    if scheme not in ("http", "https"):
        raise RemoteEngineError(f"--engine {url!r}: only http:// and https:// servers are supported.")
    return f"{scheme}://{rest}", kind


def describe(err: Exception) -> str:
    if isinstance(err, httpx.ConnectError):
        return "connection refused or host unreachable"
    if isinstance(err, httpx.TimeoutException):
        return f"no answer in time ({type(err).__name__})"
    return f"{type(err).__name__}: {err}" if str(err) else type(err).__name__


def unreachable(url: str, err: Exception) -> RemoteEngineError:
    return RemoteEngineError(f"the remote engine at {url} is unreachable ({describe(err)}). Start it, "
                             "check --engine / STROP_ENGINE_URL, or drop the option to complete locally.")


def _lora_scales(spec: str | None) -> list:
    """llama-server LoRA scales from "ID[:SCALE],...", e.g. "0:1.0"."""
    out = []
    for part in (spec or "").split(","):
        if part.strip():
            ident, _, scale = part.strip().partition(":")
            try:
                out.append({"id": int(ident), "scale": float(scale or 1.0)})
            except ValueError:
                raise RemoteEngineError(f"STROP_ENGINE_LORA={spec!r}: for llama-server give adapter ids and "
                                        "scales as ID[:SCALE],... (e.g. 0:1.0).") from None
    return out


async def probe(client: httpx.AsyncClient, url: str, vocab: LoadedModel, *, forced: str | None = None,
                lora: str | None = None) -> ServerInfo:
    """What the server at `url` is, and whether it serves the local vocabulary's model.
    Raises RemoteEngineError (unreachable, unknown kind) or RemoteModelMismatch."""
    t0 = time.perf_counter()
    try:
        props = await client.get(f"{url}/props") if forced != OPENAI else None
        latency = (time.perf_counter() - t0) * 1000
        data = _json(props) if props is not None and props.status_code == 200 else None
        if data is not None and "default_generation_settings" in data:
            info = await _probe_llama_server(client, url, data, latency, lora)
        elif forced == LLAMA_SERVER:
            raise RemoteEngineError(f"{url} is not a llama-server: GET /props answered "
                                    f"{props.status_code if props is not None else 'nothing'}.")
        else:
            info = await _probe_openai(client, url, vocab, latency, lora)
        remote = await _remote_tokens(client, info)
    except httpx.HTTPError as err:
        raise unreachable(url, err) from err
    local = vocab.tokenize(PROBE_TEXT)
    if remote is not None:
        if remote and vocab.add_bos and remote[0] == vocab.bos_id and local[:1] != [vocab.bos_id]:
            remote = remote[1:]
        if remote != local:
            raise RemoteModelMismatch(
                f"the remote engine at {url} serves {info.model!r}, whose tokenizer differs from the local "
                f"model {Path(vocab.resolved.path).name} ({len(remote)} vs {len(local)} tokens for a probe "
                "text). strop tokenizes locally, so both must be the same model: serve that model there, "
                "or pass the remote's GGUF with --model.")
        info = replace(info, tokenizer="matches")
    return info


def _json(resp: httpx.Response | None):
    try:
        return resp.json() if resp is not None else None
    except ValueError:
        return None


async def _probe_llama_server(client, url, props: dict, latency: float, lora: str | None) -> ServerInfo:
    settings = props.get("default_generation_settings") or {}
    n_ctx = settings.get("n_ctx") or props.get("n_ctx")
    model = Path(str(props.get("model_path") or props.get("model_alias") or "llama-server")).name
    return ServerInfo(url, LLAMA_SERVER, model, "tokens", latency, n_ctx=int(n_ctx) if n_ctx else None,
                      slots=max(1, int(props.get("total_slots") or 1)), lora=_lora_scales(lora))


async def _probe_openai(client, url, vocab: LoadedModel, latency: float, lora: str | None) -> ServerInfo:
    resp = await client.get(f"{url}/v1/models")
    data = _json(resp) if resp.status_code == 200 else None
    models = [m.get("id") for m in (data or {}).get("data", []) if isinstance(m, dict)]
    if not models:
        raise RemoteEngineError(f"{url} answers neither GET /props (llama-server) nor GET /v1/models "
                                f"(OpenAI-compatible; HTTP {resp.status_code}): point --engine at one of those.")
    model = lora or models[0]  # an OpenAI server selects a LoRA adapter by its model name
    one = vocab.tokenize("x")[:1] or [0]
    tried = await client.post(f"{url}/v1/completions", json={"model": model, "prompt": one, "max_tokens": 1,
                                                              "temperature": 0.0})
    form = "tokens" if tried.status_code == 200 else "text"
    return ServerInfo(url, OPENAI, model, form, latency, slots=1)


async def _remote_tokens(client, info: ServerInfo) -> list[int] | None:
    """The server's tokenization of PROBE_TEXT (special tokens not added), or None when it has no
    tokenize endpoint strop knows."""
    if info.kind == LLAMA_SERVER:
        calls = [("/tokenize", {"content": PROBE_TEXT, "add_special": False})]
    else:
        calls = [("/tokenize", {"model": info.model, "prompt": PROBE_TEXT, "add_special_tokens": False}),
                 ("/extras/tokenize", {"input": PROBE_TEXT, "model": info.model})]
    for path, body in calls:
        try:
            resp = await client.post(f"{info.url}{path}", json=body)
        except httpx.TransportError:  # a kept-alive connection the server closed meanwhile: once more
            resp = await client.post(f"{info.url}{path}", json=body)
        data = _json(resp) if resp.status_code == 200 else None
        if isinstance(data, dict) and isinstance(data.get("tokens"), list):
            return [t["id"] if isinstance(t, dict) else int(t) for t in data["tokens"]]
    return None


# --- prompts -------------------------------------------------------------------------------------
def prompt_text(vocab: LoadedModel, tokens: Sequence[int]) -> str | None:
    """The text of `tokens` for a server that takes text (it tokenizes with special parsing on and
    adds BOS itself), or None when that text would not tokenize back to the same ids (e.g. code that
    spells a control token): such a prompt cannot be sent exactly."""
    ids = list(tokens)
    if vocab.add_bos and ids[:1] == [vocab.bos_id]:
        ids = ids[1:]
    raw = b"".join(vocab.vocab_model.token_get_text(t).encode() if vocab.is_control(t) else vocab.piece(t)
                   for t in ids)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return None
    back = vocab.vocab_model.tokenize(text.encode("utf-8"), False, True)
    return text if back == ids else None


def request(info: ServerInfo, vocab: LoadedModel, job: Job, tokens: Sequence[int], *, slot: int,
            text: str | None = None) -> tuple[str, dict]:
    """(path, JSON body) of one generation (or, for a warm-up on llama-server, a prompt evaluation)."""
    s = job.sampling
    common = {"temperature": s.temperature, "top_k": s.top_k, "top_p": s.top_p, "min_p": 0.0,
              "repeat_penalty": 1.0, "stream": not job.warm_only}
    if s.seed is not None:
        common["seed"] = s.seed
    if info.kind == LLAMA_SERVER:
        body = {**common, "prompt": list(tokens), "n_predict": 0 if job.warm_only else job.max_tokens,
                "cache_prompt": True, "return_tokens": True, "id_slot": slot}
        if job.predict_hard_ms:  # the server's own cap (it stops at the next newline past it)
            body["t_max_predict_ms"] = int(job.predict_hard_ms)
        if info.lora:
            body["lora"] = info.lora
        return "/completion", body
    body = {**common, "model": info.model, "max_tokens": max(1, job.max_tokens)}
    if info.prompt_form == "tokens":
        body["prompt"], body["return_token_ids"] = list(tokens), True
    else:
        body["prompt"] = text
        stops = [vocab.vocab_model.token_get_text(t) for t in sorted(vocab.stop_ids) if vocab.is_control(t)]
        if stops:
            body["stop"] = stops[:MAX_STOP_STRINGS]
    return "/v1/completions", body


# --- streamed answers ----------------------------------------------------------------------------
@dataclass(frozen=True)
class Event:
    text: str
    tokens: tuple[int, ...] | None  # the ids, when the server sends them
    finish: str | None = None  # eog | max_tokens, when the server stopped
    tokens_cached: int | None = None  # prompt tokens the server reused from its cache
    timings: dict | None = None


LLAMA_FINISH = {"eos": "eog", "word": "eog", "limit": "max_tokens"}
OPENAI_FINISH = {"stop": "eog", "length": "max_tokens"}


def parse(kind: str, data: dict) -> Event:
    if kind == LLAMA_SERVER:
        stop = data.get("stop_type") if data.get("stop") else None
        timings = data.get("timings") or None
        cached = data.get("tokens_cached")
        if cached is None and timings:
            cached = timings.get("cache_n")
        return Event(data.get("content") or "", tuple(data["tokens"]) if data.get("tokens") is not None else None,
                     LLAMA_FINISH.get(stop, "eog") if stop else None, cached, timings)
    choice = (data.get("choices") or [{}])[0]
    ids = choice.get("token_ids")
    reason = choice.get("finish_reason")
    return Event(choice.get("text") or "", tuple(ids) if ids is not None else None,
                 OPENAI_FINISH.get(reason, "eog") if reason else None)


async def events(resp: httpx.Response, kind: str) -> AsyncIterator[Event]:
    """Server-sent events of a streamed completion. (Parsed here: SSE `data:` lines are all both
    servers send, not worth a dependency.)"""
    async for line in resp.aiter_lines():
        if not line.startswith("data:"):
            continue  # blank separators, `: ping` comments
        payload = line[5:].strip()
        if payload == "[DONE]":
            return
        try:
            data = json.loads(payload)
        except ValueError:
            raise RemoteEngineError(f"the remote engine sent a malformed event: {payload[:120]!r}") from None
        if isinstance(data, dict) and "error" in data:
            raise RemoteEngineError(f"the remote engine failed: {str(data['error'])[:200]}")
        yield parse(kind, data)
