"""deploy/: every key of the example config is one strop reads (through its real loaders), and the
systemd units are what `systemd-analyze verify` accepts, with the commands the README promises."""

from __future__ import annotations

import configparser
import dataclasses
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from distill.cycle import load_config
from core.paths import log_retention_days
from server.config import ServeConfig

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"
EXAMPLE = DEPLOY / "config.example.toml"
DISTILL_SECTIONS = ("cycle", "files", "prompt", "split", "harvest", "sample", "mix", "train", "eval")
COMMENTED_KEY = re.compile(r"^# (\w+ = .*)$")


def example(uncomment: bool) -> dict:
    """The example parsed; with `uncomment`, the '# key = value' lines (unset settings) count too."""
    text = EXAMPLE.read_text(encoding="utf-8")
    if uncomment:
        text = "\n".join(COMMENTED_KEY.sub(r"\1", line) for line in text.splitlines())
    return tomllib.loads(text)


def test_every_distill_key_of_the_example_is_read_by_load_config(tmp_path):
    values = example(uncomment=True)
    assert set(values) == {"serve", "log", "registry", *DISTILL_SECTIONS}
    # load_config refuses unknown sections and keys; the whole file (uncommented) is what it reads.
    distill_only = tmp_path / "config.toml"
    body = []
    for section in values:
        body.append(f"[{section}]")
        for key, value in values[section].items():
            body.append(f"{key} = {_toml(value)}")
    distill_only.write_text("\n".join(body) + "\n", encoding="utf-8")
    cfg = load_config(distill_only, [])
    where = {"cycle": cfg, "files": cfg.split.files, **{s: getattr(cfg, s) for s in DISTILL_SECTIONS[2:]}}
    for section in DISTILL_SECTIONS:
        for key, value in values[section].items():
            got = getattr(where[section], key)
            want = tuple(value) if isinstance(value, list) else value
            assert (str(got) if isinstance(got, Path) else got) == want, f"{section}.{key}"


def test_the_example_states_the_real_defaults():
    """Set keys are defaults (a copied example changes nothing until edited)."""
    values = example(uncomment=False)
    cfg = load_config(None, [])
    where = {"cycle": cfg, "files": cfg.split.files, **{s: getattr(cfg, s) for s in DISTILL_SECTIONS[2:]}}
    for section in DISTILL_SECTIONS:
        for key, value in values[section].items():
            got = getattr(where[section], key)
            assert got == (tuple(value) if isinstance(value, list) else value), f"{section}.{key}"
    for key, value in values["serve"].items():
        assert getattr(ServeConfig(), key) == value, f"serve.{key}"
    assert values["log"]["retention_days"] == log_retention_days()


def test_every_serve_and_log_key_is_a_real_environment_setting(monkeypatch):
    values = example(uncomment=True)
    fields = {f.name for f in dataclasses.fields(ServeConfig)}
    assert set(values["serve"]) <= fields, set(values["serve"]) - fields
    for key, value in values["serve"].items():  # STROP_<KEY> really changes the setting
        changed = (not value) if isinstance(value, bool) else value + 1
        monkeypatch.setenv(f"STROP_{key.upper()}", str(int(changed) if isinstance(changed, bool) else changed))
        assert getattr(ServeConfig().configured(), key) == changed, f"STROP_{key.upper()} is not read"
        monkeypatch.delenv(f"STROP_{key.upper()}")
    assert set(values["log"]) == {"retention_days"}
    monkeypatch.setenv("STROP_LOG_RETENTION_DAYS", "7")
    assert log_retention_days() == 7.0


def test_the_example_as_the_config_file_is_read_by_serving_and_distillation(tmp_path, monkeypatch):
    """Copied to $STROP_HOME/config.toml with one value changed per side, the example is read as is."""
    monkeypatch.setenv("STROP_HOME", str(tmp_path))
    text = EXAMPLE.read_text(encoding="utf-8")
    text = re.sub(r"(?m)^time_cap_ms = \d+", "time_cap_ms = 1777", text)
    text = re.sub(r"(?m)^retention_days = \d+", "retention_days = 9", text)
    text = re.sub(r"(?m)^poll_s = [\d.]+", "poll_s = 7.5", text)
    (tmp_path / "config.toml").write_text(text, encoding="utf-8")
    assert ServeConfig().configured().time_cap_ms == 1777
    assert log_retention_days() == 9.0
    from core.team_registry import RegistrySettings
    assert RegistrySettings.configured() == RegistrySettings(url=None, poll_s=7.5, publish=False)
    monkeypatch.setenv("STROP_REGISTRY_URL", "file:///shared/r")
    assert RegistrySettings.configured().url == "file:///shared/r"
    assert load_config(None, []).prompt.budget_tokens == ServeConfig().configured().budget_tokens


def _toml(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return repr(value)


def unit(name: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(interpolation=None, strict=False, comment_prefixes=("#", ";"))
    parser.optionxform = str  # systemd keys are case-sensitive
    parser.read_string((DEPLOY / "systemd" / name).read_text(encoding="utf-8"))
    return parser


def test_units_run_the_commands_strop_has():
    from strop.cli import build_parser

    parser = build_parser()
    long_running = unit("strop-distill.service")["Service"]
    assert long_running["Restart"] == "on-failure"
    once = unit("strop-distill-once.service")["Service"]
    assert once["Type"] == "oneshot"
    timer = unit("strop-distill.timer")
    assert timer["Timer"]["Unit"] == "strop-distill-once.service" and timer["Install"]["WantedBy"] == "timers.target"
    for service, flag in ((long_running, "--every"), (once, "--once")):
        argv = service["ExecStart"].split()
        assert argv[0].endswith("/bin/strop") and flag in argv
        args = parser.parse_args(argv[1:])  # the real command line accepts it
        assert args.command == "distill" and (args.every == 86400 if flag == "--every" else args.once)


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_systemd_analyze_verify_accepts_the_units(tmp_path):
    home, runtime, units = tmp_path / "home", tmp_path / "run", tmp_path / "units"
    for d in (home / ".local" / "strop-venv" / "bin", runtime, units):
        d.mkdir(parents=True, mode=0o700)
    strop = shutil.which("strop") or str(Path(sys.executable).parent / "strop")
    (home / ".local" / "strop-venv" / "bin" / "strop").symlink_to(strop)  # the path the units name (%h)
    for f in (DEPLOY / "systemd").iterdir():
        shutil.copy(f, units / f.name)
    env = {**os.environ, "HOME": str(home), "XDG_RUNTIME_DIR": str(runtime)}
    for f in sorted(units.iterdir()):
        out = subprocess.run(["systemd-analyze", "--user", "verify", str(f)], capture_output=True, text=True,
                             env=env, timeout=60)
        assert out.returncode == 0 and not (out.stdout + out.stderr).strip(), f"{f.name}: {out.stdout}{out.stderr}"
    # and it does catch a mistake
    (units / "strop-distill.service").write_text((DEPLOY / "systemd" / "strop-distill.service").read_text()
                                                 .replace("Restart=", "Restartt="))
    out = subprocess.run(["systemd-analyze", "--user", "verify", str(units / "strop-distill.service")],
                         capture_output=True, text=True, env=env, timeout=60)
    assert "Unknown key" in out.stderr
