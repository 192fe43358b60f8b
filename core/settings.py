"""One configuration tree for serving and distillation, and one loader.

Precedence, written once: a dataclass's defaults < `$STROP_HOME/config.toml` (or the file
`STROP_CONFIG` names) < a file given with `--config` < `STROP_<KEY>` environment variables (serving's
`[serve]` and `[prompt]` keys) < command-line flags (`--set SECTION.KEY=VALUE`). A value is converted
to the type the dataclass field declares (bool, int, float, str, Path, tuples), never guessed from
its name; an unknown section or key is an error naming the known ones.

Sections: [serve] (server.config.ServeConfig), [prompt] (core.completion.PromptSettings, shared by
serving, sampling and evaluation), and the distillation's [cycle], [files], [split], [harvest],
[sample], [train], [eval] (distill.cycle.CycleConfig). README's configuration table lists every key;
tests/test_settings.py checks it against the dataclasses.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tomllib
import types
import typing
from pathlib import Path

from core.errors import StropError
from core.paths import strop_home

CONFIG_NAME = "config.toml"


def config_path() -> Path:
    env = os.environ.get("STROP_CONFIG")
    return Path(env).expanduser() if env else strop_home() / CONFIG_NAME


def read_toml(path: Path | None = None, *, required: bool = False) -> dict[str, dict]:
    """The sections of a TOML file (the default file when `path` is None); {} when it is absent."""
    path = path or config_path()
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        if required:
            raise StropError(f"the configuration file {path} does not exist; check the path.") from None
        return {}
    except OSError as err:
        raise StropError(f"cannot read the configuration file {path}: {err}.") from err
    try:
        values = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise StropError(f"{path} is not valid TOML: {err}. Fix the file (see deploy/config.example.toml).") from err
    for section, kv in values.items():
        if not isinstance(kv, dict):
            raise StropError(f"{path}: `{section}` must be a [section] of keys, not a single value.")
    return values


def parse_overrides(items: list[str]) -> dict[str, dict]:
    """`SECTION.KEY=VALUE` flags (VALUE as JSON, else a string) as sections."""
    values: dict[str, dict] = {}
    for item in items:
        if "=" not in item or "." not in item.split("=", 1)[0]:
            raise StropError(f"--set {item!r}: expected SECTION.KEY=VALUE, e.g. sample.n_per_prompt=2")
        key, raw = item.split("=", 1)
        section, name = key.split(".", 1)
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        values.setdefault(section, {})[name] = value
    return values


def merge(*layers: dict[str, dict]) -> dict[str, dict]:
    out: dict[str, dict] = {}
    for layer in layers:
        for section, kv in layer.items():
            out.setdefault(section, {}).update(kv)
    return out


def _flag(text: str) -> bool:
    low = text.strip().lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(f"{text!r} is not a boolean (use true/false)")


def convert(value: object, kind: object, where: str) -> object:
    """`value` (from TOML, JSON or an environment string) as the declared type `kind`."""
    origin = typing.get_origin(kind)
    if origin in (typing.Union, types.UnionType):
        options = [a for a in typing.get_args(kind) if a is not type(None)]
        if value is None or value == "":
            return None
        return convert(value, options[0], where) if len(options) == 1 else value
    try:
        if kind is bool:
            return _flag(value) if isinstance(value, str) else bool(value)
        if kind in (int, float):
            if isinstance(value, bool):
                raise ValueError("a boolean is not a number")
            return kind(value)
        if kind is str:
            return str(value)
        if kind is Path:
            return Path(str(value)).expanduser()
        if origin is tuple or kind is tuple:
            items = json.loads(value) if isinstance(value, str) and value.startswith("[") else value
            if isinstance(items, str):
                items = [x for x in items.split(",") if x]
            return tuple(tuple(x) if isinstance(x, list) else x for x in items)
    except (TypeError, ValueError) as err:
        raise StropError(f"{where} = {value!r}: {err}; expected {getattr(kind, '__name__', kind)}.") from None
    return value


def apply(obj, kv: dict, section: str, *, skip: tuple[str, ...] = ()):
    """`obj` (a frozen dataclass) with the keys of one section set, each converted to its field's type."""
    hints = typing.get_type_hints(type(obj))
    names = {f.name for f in dataclasses.fields(obj) if f.name not in skip}
    changes = {}
    for key, value in kv.items():
        if key not in names:
            raise StropError(f"unknown setting {section}.{key}; known: {', '.join(sorted(names))}")
        changes[key] = convert(value, hints[key], f"{section}.{key}")
    try:
        return dataclasses.replace(obj, **changes)
    except (TypeError, ValueError) as err:  # a config dataclass refusing a value
        raise StropError(f"[{section}]: {err}") from err


def from_env(obj, section: str, *, prefix: str = "STROP_", skip: tuple[str, ...] = ()):
    """Keys of `obj` set from `STROP_<KEY>` environment variables."""
    kv = {f.name: os.environ[prefix + f.name.upper()] for f in dataclasses.fields(obj)
          if f.name not in skip and prefix + f.name.upper() in os.environ}
    return apply(obj, kv, f"{section} (environment {prefix}<KEY>)", skip=skip) if kv else obj


def keys(obj) -> dict[str, str]:
    """key → declared type name, for documentation and its check."""
    hints = typing.get_type_hints(type(obj))
    return {f.name: getattr(hints[f.name], "__name__", str(hints[f.name])) for f in dataclasses.fields(obj)}
