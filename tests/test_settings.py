"""The configuration tree: one loader, typed values, the documented precedence, and README's table
equal to what the dataclasses define."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.errors import StropError
from server.config import ServeConfig

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_documents_every_key_as_the_dataclasses_define_it():
    from strop.config_table import BEGIN, END, table

    text = README.read_text()
    assert BEGIN in text and END in text, "README has no generated configuration table"
    documented = text[text.index(BEGIN): text.index(END) + len(END)]
    assert documented == table(), "README's configuration table is stale: run `python -m strop.config_table`"


def test_file_then_environment_then_flags(tmp_path, monkeypatch):
    from distill.cycle import load_config

    monkeypatch.setenv("STROP_HOME", str(tmp_path))
    (tmp_path / "config.toml").write_text('[prompt]\nbudget_tokens = 1024\n\n[serve]\ntime_cap_ms = 900\n'
                                          'heal = false\n\n[sample]\nn_per_prompt = 3\n')
    cfg = ServeConfig().configured()
    assert (cfg.budget_tokens, cfg.time_cap_ms, cfg.heal) == (1024, 900, False)
    monkeypatch.setenv("STROP_TIME_CAP_MS", "1200")
    monkeypatch.setenv("STROP_HEAL", "on")
    cfg = ServeConfig().configured()
    assert (cfg.time_cap_ms, cfg.heal) == (1200, True)
    # The distillation reads the same file: [prompt] is shared, so it samples the served prompt shape.
    cycle = load_config(None, ["sample.temperature=1.2"])
    assert cycle.prompt.budget_tokens == 1024 and cycle.sample.n_per_prompt == 3 and cycle.sample.temperature == 1.2


def test_values_take_their_declared_types_and_bad_ones_say_where(tmp_path, monkeypatch):
    monkeypatch.setenv("STROP_HOME", str(tmp_path))
    (tmp_path / "config.toml").write_text('[serve]\nregistry_poll_s = "2.5"\n')
    assert ServeConfig().configured().registry_poll_s == 2.5
    monkeypatch.setenv("STROP_WARM_SLOTS", "many")
    with pytest.raises(StropError, match=r"warm_slots = 'many'.*expected int"):
        ServeConfig().configured()
    monkeypatch.delenv("STROP_WARM_SLOTS")
    (tmp_path / "config.toml").write_text('[serve]\ntime_cap = 1\n')
    with pytest.raises(StropError, match=r"unknown setting serve.time_cap; known: .*time_cap_ms"):
        ServeConfig().configured()
    (tmp_path / "config.toml").write_text('[serve\n')
    with pytest.raises(StropError, match="not valid TOML"):
        ServeConfig().configured()
