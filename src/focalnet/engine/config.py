"""Typed run configs: nested dataclasses filled from YAML plus ``key.sub=value`` overrides.

Unknown keys, wrong types and impossible values are errors that name the dotted key. A dataclass may
define ``validate(self) -> None`` raising ``ValueError`` for value checks (it is called after building),
and ``BOUNDS`` (a class attribute ``{field: Bound}``; a nested table bounds a mapping field such as
``model.overrides``, whose other keys are then bounded by their name): every count and size a config reads
is range-checked against it (:mod:`focalnet.bounds`) right after its type, before ``validate`` and
before anything is built, so a value such as ``depths=[1000000, 1, 1, 1]`` or ``warmup_epochs=1e308`` is one
line naming the key and its range.
"""

from __future__ import annotations

import dataclasses
import math
import os
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import yaml

from ..bounds import Bound, BoundsError, check_bounds

__all__ = [
    "Bound",
    "ConfigError",
    "apply_overrides",
    "build_config",
    "config_text",
    "config_to_dict",
    "load_config",
    "packaged_config",
    "packaged_configs",
    "read_yaml",
    "save_config",
    "set_value",
]

T = TypeVar("T")


class ConfigError(ValueError):
    """A config value is unknown, of the wrong type, or impossible; the message names the key."""


def _convert(value: Any, tp: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _convert(value, a, key)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if errors else f"{key}: invalid value {value!r}")
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(f"{key}: {value!r} is not one of {list(args)}")
        return value
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, Mapping):
            raise ConfigError(f"{key}: expected a mapping, got {type(value).__name__} {value!r}")
        return build_config(tp, value, prefix=key + ".")
    if origin in (list, tuple, Sequence) or tp in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {type(value).__name__} {value!r}")
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(args) != len(value):
                raise ConfigError(f"{key}: expected {len(args)} values, got {len(value)}")
            return tuple(_convert(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
        inner = args[0] if args else Any
        out = [_convert(v, inner, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(out) if origin is tuple or tp is tuple else out
    if origin in (dict, Mapping) or tp is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{key}: expected a mapping, got {type(value).__name__}")
        return dict(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise ConfigError(f"{key}: expected an integer, got {type(value).__name__} {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            converted = None
            if isinstance(value, str):
                try:
                    converted = float(value)  # YAML reads 1e-4 as a string
                except ValueError:
                    pass
            if converted is None:
                raise ConfigError(f"{key}: expected a number, got {type(value).__name__} {value!r}")
            value = converted
        if not math.isfinite(value):
            raise ConfigError(f"{key}: expected a finite number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {type(value).__name__} {value!r}")
        return value
    return value


def build_config(cls: type[T], data: Mapping[str, Any] | None = None, prefix: str = "") -> T:
    """Build dataclass ``cls`` from a nested mapping, checking keys, types and ``validate()``."""
    data = dict(data or {})
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(
            f"unknown config key(s) {', '.join(prefix + u for u in unknown)}; valid keys here: "
            f"{', '.join(prefix + f for f in fields)}"
        )
    kwargs = {name: _convert(value, hints[name], prefix + name) for name, value in data.items()}
    bounds = getattr(cls, "BOUNDS", None)
    if bounds:
        try:
            check_bounds(kwargs, bounds, prefix)
        except BoundsError as e:
            raise ConfigError(str(e)) from None
    try:
        obj = cls(**kwargs)
    except TypeError as e:
        raise ConfigError(f"{prefix or 'config'}: {e}") from e
    validate = getattr(obj, "validate", None)
    if callable(validate):
        try:
            validate()
        except ConfigError:
            raise
        except ValueError as e:
            msg = str(e)
            raise ConfigError(f"{prefix}{msg}" if prefix and not msg.startswith(prefix) else msg) from e
    return obj


MAX_YAML_VALUES = 100_000  # values of a config once its aliases are expanded (a "billion laughs" file is refused)


def _check_size(value: Any, where: str) -> Any:
    """``value``, or a :class:`ConfigError` where it holds more than ``MAX_YAML_VALUES`` values counting
    every alias expansion (recursive aliases never end: they are refused too)."""
    stack, n = [value], 0
    while stack:
        v = stack.pop()
        n += 1
        if n > MAX_YAML_VALUES:
            raise ConfigError(f"{where}: more than {MAX_YAML_VALUES} values (aliases that expand without end?)")
        if isinstance(v, Mapping):
            stack.extend(v.values())
        elif isinstance(v, (list, tuple)):
            stack.extend(v)
    return value


def read_yaml(path: str | os.PathLike) -> dict[str, Any]:
    """The mapping at the top of a YAML config file, read with ``yaml.safe_load`` (tags that would build
    Python objects, such as ``!!python/object``, are refused: no code runs). Syntax errors, refused tags,
    recursive or exploding aliases and a top level that is no mapping are a :class:`ConfigError` of one
    line naming the file and, where the parser tells, the line and column."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"config file not found: {p}")
    try:
        loaded = yaml.safe_load(p.read_text())
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = f", line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        what = " ".join(str(e.problem or e.context or "invalid YAML").split())
        if isinstance(e, yaml.constructor.ConstructorError) and "tag" in what:
            what += " (config files hold plain values; tags that build Python objects are refused)"
        raise ConfigError(f"{p}{where}: {what}") from None
    except (yaml.YAMLError, UnicodeDecodeError, RecursionError) as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ConfigError(f"{p} is not a valid YAML file: {first}") from None
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise ConfigError(f"{p} must hold a mapping (key: value lines) at the top level, not a {type(loaded).__name__}")
    return _check_size(loaded, str(p))


def _parse_value(text: str) -> Any:
    try:
        value = yaml.safe_load(text)
    except (yaml.YAMLError, RecursionError):
        return text
    return _check_size(value, f"value {text[:40]!r}")


def set_value(data: dict[str, Any], key: str, value: Any) -> dict[str, Any]:
    """Set dotted ``key`` (``"optim.lr"``) of a nested dict to ``value`` in place, creating sections."""
    parts = key.strip().split(".")
    node = data
    for p in parts[:-1]:
        nxt = node.setdefault(p, {})
        if not isinstance(nxt, dict):
            raise ConfigError(f"override {key}: {p} is not a section")
        node = nxt
    node[parts[-1]] = value
    return data


def apply_overrides(data: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Apply ``a.b.c=value`` strings (values parsed as YAML) to a nested dict, in place."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like key.subkey=value")
        key, text = item.split("=", 1)
        set_value(data, key, _parse_value(text))
    return data


def load_config(
    cls: type[T],
    path: str | os.PathLike | None = None,
    overrides: Sequence[str] = (),
    base: Mapping[str, Any] | None = None,
    values: Mapping[str, Any] | None = None,
) -> T:
    """``base`` dict, then the YAML file at ``path``, then ``values`` (``{dotted key: value}``, e.g. from
    command-line flags), then ``overrides`` (``key=value`` strings), merged and validated."""
    data: dict[str, Any] = _deep_copy(base or {})
    if path is not None:
        _deep_merge(data, read_yaml(path))
    for key, value in (values or {}).items():
        set_value(data, key, value)
    apply_overrides(data, overrides)
    return build_config(cls, data)


def _deep_copy(d: Mapping[str, Any]) -> dict[str, Any]:
    return {k: _deep_copy(v) if isinstance(v, Mapping) else v for k, v in d.items()}


def _deep_merge(dst: dict[str, Any], src: Mapping[str, Any]) -> None:
    for k, v in src.items():
        if isinstance(v, Mapping) and isinstance(dst.get(k), dict):
            _deep_merge(dst[k], v)
        else:
            dst[k] = _deep_copy(v) if isinstance(v, Mapping) else v


def config_to_dict(cfg: Any) -> dict[str, Any]:
    """Plain nested dict (tuples as lists) of a config dataclass."""

    def conv(v: Any) -> Any:
        if dataclasses.is_dataclass(v):
            return {f.name: conv(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, (list, tuple)):
            return [conv(x) for x in v]
        if isinstance(v, dict):
            return {k: conv(x) for k, x in v.items()}
        return v

    return conv(cfg)


def config_text(cfg: Any, notes: Sequence[str] = ()) -> str:
    """The resolved config as YAML, ``notes`` (what the run derives from it: the effective schedule) as
    trailing comments, so that the text still loads as the same config."""
    text = yaml.safe_dump(config_to_dict(cfg), sort_keys=False)
    return text + "".join(f"# {line}\n" for note in notes for line in str(note).splitlines())


def save_config(cfg: Any, path: str | os.PathLike, run_id: str | None = None, notes: Sequence[str] = ()) -> None:
    """Write the resolved config as YAML next to a run (atomically; ``run_id`` as a leading comment and
    ``notes`` as trailing ones, so that the file still loads as a config)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = config_text(cfg, notes)
    if run_id:
        text = f"# run_id: {run_id}\n{text}"
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _packaged_dir(task: str) -> Path:
    from importlib import resources

    return Path(str(resources.files("focalnet") / "configs" / task))


def packaged_configs(task: str) -> list[str]:
    """Names of the configs shipped in ``focalnet/configs/<task>/``."""
    base = _packaged_dir(task)
    return sorted(p.stem for p in base.glob("*.yaml")) if base.exists() else []


def packaged_config(name: str | os.PathLike, task: str) -> Path:
    """``name`` as an existing YAML file, else a config shipped for ``task`` (with or without ``.yaml``)."""
    p = Path(name).expanduser()
    if p.exists():
        return p
    name = str(name)
    cand = _packaged_dir(task) / (name if name.endswith((".yaml", ".yml")) else f"{name}.yaml")
    if cand.exists():
        return cand
    raise FileNotFoundError(
        f"config {name!r} not found: neither a file nor one of the packaged {task} configs "
        f"({', '.join(packaged_configs(task))})"
    )
