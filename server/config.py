"""The serving settings ([serve] and [prompt] of the configuration tree; loaded by core.settings:
defaults < $STROP_HOME/config.toml < STROP_<KEY> environment variables < command-line flags)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from core import settings
from core.completion import PromptSettings


@dataclass(frozen=True)
class ServeConfig:
    """Serving knobs. Units are in the names."""

    model_path: Path | None = None
    n_ctx: int = 4096
    n_threads: int = field(default_factory=lambda: max(1, min(8, os.cpu_count() or 1)))
    n_gpu_layers: int = -1  # all layers on the GPU when llama.cpp was built with one; ignored on CPU
    # The prompt's shape: core.completion.PromptSettings, the one definition sampling and evaluation use too.
    budget_tokens: int = PromptSettings.budget_tokens  # whole prompt, at most (warm); see warm_budget_ms
    prefix_share: float = PromptSettings.prefix_share
    extra_share: float = PromptSettings.extra_share
    chunk_lines: int = PromptSettings.chunk_lines
    max_snippets: int = PromptSettings.max_snippets
    retrieval_k: int = PromptSettings.retrieval_k
    max_new_tokens: int = 64
    max_new_tokens_line: int = 32
    # Budgets, as llama.vim's t_max_prompt_ms / t_max_predict_ms: reading and writing apart.
    prompt_budget_ms: int = 450  # new prompt tokens evaluated on a keystroke; a colder prompt is cut to fit (0: off)
    warm_budget_ms: int = 8000  # the full context is sized so that a background warm-up takes at most this
    predict_soft_ms: int = 250  # from the first token: then stop at the next whole line/statement
    time_cap_ms: int = 1500  # from the first token: a suggestion still unfinished then is dropped, not cut
    first_request_wait_ms: int = 5000  # a request that arrives while the model loads waits this long
    warm_slots: int = 6  # KV states kept: two documents' warm-up ladders (cold, between, full)
    speculative: bool = False  # prompt-lookup drafts, verified in one batch (greedy decoding only)
    heal: bool = True  # token healing at the cursor
    temperature: float = 0.0  # greedy unless the promoted model ships a tuned T_eval
    top_k: int = 20
    top_p: float = 0.95
    max_line_chars: int = 20_000  # a longer current line gets an empty result, not a model call
    max_document_chars: int = 2_000_000
    retention_after_s: float = 120.0  # measure retention this long after an accept (or at save / N edits)
    retention_after_edits: int = 50
    registry_poll_s: float = 5.0
    max_message_bytes: int = 64 * 2**20  # a larger LSP message is skipped and answered with an error
    repo_root: Path | None = None
    # Remote inference (server/remote_engine.py): a llama-server or OpenAI-compatible base URL.
    engine_url: str | None = None
    engine_fallback: str = "local"  # local: the local model serves while the remote is down | none
    engine_connect_timeout_ms: int = 2000
    engine_first_token_ms: int = 5000  # from sending the request to its first token
    engine_lora: str | None = None  # llama-server: "ID[:SCALE],..."; OpenAI server: the adapter's model name

    def configured(self) -> "ServeConfig":
        """These settings after `$STROP_HOME/config.toml` ([prompt], then [serve]) and `STROP_<KEY>`
        environment variables (core.settings: the one loader serving and distillation share)."""
        tree = settings.read_toml()
        cfg = settings.apply(self, tree.get("prompt", {}), "prompt", skip=_FLAGS_ONLY)
        cfg = settings.apply(cfg, tree.get("serve", {}), "serve", skip=_FLAGS_ONLY)
        return settings.from_env(cfg, "serve", skip=_FLAGS_ONLY)


_FLAGS_ONLY = ("model_path", "repo_root")  # given on the command line (--model, --repo)
