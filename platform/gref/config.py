"""Dataclass configs loaded from YAML, with ``key=value`` command-line overrides.

Every job has one config dataclass (possibly nested). ``load_config(Cls, path, ["a.b=3"])``
starts from the dataclass defaults, applies the YAML file, then the overrides, and rejects
unknown keys with a message naming the key, so a typo never silently does nothing.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    """A config file or override names an unknown key or holds a value of the wrong type."""


def _field_types(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _coerce(value: Any, typ: Any, key: str) -> Any:
    """Convert a YAML/CLI value to the field's declared type, or raise ConfigError."""
    origin = typing.get_origin(typ)
    if origin is typing.Literal:
        choices = typing.get_args(typ)
        if isinstance(value, bool) and "off" in choices:
            value = "on" if value else "off"  # YAML 1.1 reads a bare off/on as a boolean
        if value not in choices:
            raise ConfigError(f"config key '{key}' must be one of {' | '.join(map(str, choices))}, got {value!r}")
        return value
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(typ) if a is not type(None)]
        if value is None:
            return None
        return _coerce(value, args[0], key)
    if dataclasses.is_dataclass(typ):
        if isinstance(typ, type) and isinstance(value, typ):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"config key '{key}' must be a mapping, got {value!r}")
        return _merge(typ(), value, prefix=f"{key}.")
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"config key '{key}' must be a list, got {value!r}")
        (item_t, *_rest) = typing.get_args(typ) or (Any,)
        return [_coerce(v, item_t, key) for v in value]
    if origin is dict or typ is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"config key '{key}' must be a mapping, got {value!r}")
        return dict(value)
    if typ is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        raise ConfigError(f"config key '{key}' must be true/false, got {value!r}")
    if typ in (int, float):
        if isinstance(value, bool):
            raise ConfigError(f"config key '{key}' must be a number, got {value!r}")
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"config key '{key}' must be a number, got {value!r}") from None
        if typ is int:
            if number != int(number):
                raise ConfigError(f"config key '{key}' must be an integer, got {value!r}")
            return int(number)
        return number
    if typ is str:
        return str(value)
    return value


def _merge(obj: T, updates: dict[str, Any], prefix: str = "") -> T:
    fields = _field_types(type(obj))
    for key, value in updates.items():
        if key not in fields:
            raise ConfigError(
                f"unknown config key '{prefix}{key}' (known: {', '.join(sorted(fields))})"
            )
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current) and isinstance(value, dict):
            value = _merge(current, value, prefix=f"{prefix}{key}.")
        else:
            value = _coerce(value, fields[key], f"{prefix}{key}")
        obj = dataclasses.replace(obj, **{key: value})
    return obj


def nest(dotted: dict[str, Any]) -> dict[str, Any]:
    """``{"model.d": 64, "lr": 1e-3}`` -> ``{"model": {"d": 64}, "lr": 1e-3}``."""
    nested: dict[str, Any] = {}
    for key, value in dotted.items():
        node = nested
        *parents, leaf = key.strip().split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return nested


def parse_overrides(overrides: list[str]) -> dict[str, Any]:
    """Turn ``["model.d=64", "lr=1e-3"]`` into a nested dict with YAML-parsed values."""
    values: dict[str, Any] = {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override '{item}' is not of the form key=value")
        dotted, raw = item.split("=", 1)
        values[dotted] = yaml.safe_load(raw) if raw != "" else ""
    return nest(values)


def override(cfg: T, values: dict[str, Any]) -> T:
    """``cfg`` with dotted-key values applied (``{"optim.lr": 1e-4}``), checked like YAML keys."""
    return _merge(cfg, nest(values))


def from_dict(cls: type[T], data: dict[str, Any]) -> T:
    """Defaults of ``cls`` updated with a nested mapping, checked like a YAML file."""
    return _merge(cls(), data)


def load_config(cls: type[T], path: str | Path | None = None, overrides: list[str] | None = None) -> T:
    """Defaults of ``cls``, then the YAML file at ``path``, then ``key=value`` overrides."""
    cfg = cls()
    if path is not None:
        data = yaml.safe_load(Path(path).read_text()) or {}
        if not isinstance(data, dict):
            raise ConfigError(f"config file {path} must hold a mapping at top level")
        cfg = _merge(cfg, data)
    if overrides:
        cfg = _merge(cfg, parse_overrides(overrides))
    return cfg


def to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}`` (for MLflow params)."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def save_yaml(cfg: Any, path: str | Path) -> None:
    data = to_dict(cfg) if dataclasses.is_dataclass(cfg) else cfg
    Path(path).write_text(yaml.safe_dump(data, sort_keys=False))
