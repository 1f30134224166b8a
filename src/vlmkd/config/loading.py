"""Generic typed loading: dicts -> dataclasses with one-line errors, YAML `base:` chains, dotted overrides."""

from __future__ import annotations

import copy
import dataclasses
import difflib
import types
import typing
from pathlib import Path
from typing import Any, Union

import yaml

from vlmkd.errors import ConfigError
from vlmkd.registry import suggest


def to_dict(cfg: Any) -> Any:
    return dataclasses.asdict(cfg) if dataclasses.is_dataclass(cfg) else copy.deepcopy(cfg)


def deep_merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


# Sections a config layer states whole: a YAML file's (or its `base:` recipe's) `losses:` replaces the terms it
# would inherit, so `losses: {vl: {name: vl_cls}}` trains vl_cls alone, not the default `cls: ce` beside it.
REPLACED_SECTIONS = ("losses",)


def merge_layer(inherited: dict, layer: dict, where: str = "") -> dict:
    """`deep_merge`, except that a section in REPLACED_SECTIONS comes whole from `layer` when it has one."""
    out = deep_merge(inherited, {k: v for k, v in layer.items() if k not in REPLACED_SECTIONS})
    for key in REPLACED_SECTIONS:
        if key in layer:
            _require_names(layer[key], inherited.get(key), f"{where}: " if where else "", key)
            out[key] = copy.deepcopy(layer[key])
    return out


def _require_names(section: Any, inherited: Any, prefix: str, key: str) -> None:
    """Every entry of a replacing `losses:` section names its kind (it no longer completes an inherited one)."""
    if not isinstance(section, dict):
        return  # the typed conversion reports a non-mapping
    known = sorted(set(section) | set(inherited or {}))
    for term, entry in section.items():
        if isinstance(entry, dict) and "name" not in entry:
            hint = suggest(str(term), [k for k in known if k != term]).replace('"', f'"{key}.', 1)
            raise ConfigError(
                f"{prefix}{key}.{term} has no name{hint}; a {key}: section replaces the terms it would inherit "
                f"(the default cls: ce included), so each term names its kind: {key}.{term}.name=..."
            )


def _is_optional(tp: Any) -> tuple[bool, Any]:
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) < len(typing.get_args(tp)):
            return True, args[0] if len(args) == 1 else Union[tuple(args)]  # noqa: UP007
    return False, tp


def _convert(value: Any, tp: Any, where: str) -> Any:
    optional, inner = _is_optional(tp)
    if value is None:
        if optional or tp is Any:
            return None
        raise ConfigError(f"{where} may not be null; give a value")
    tp = inner
    if tp is Any:
        return value
    if typing.get_origin(tp) in (Union, types.UnionType):  # e.g. list[int | str]: the first type that fits
        for arg in typing.get_args(tp):
            try:
                return _convert(value, arg, where)
            except ConfigError:
                continue
        kinds = " or ".join(_kind_word(a) for a in typing.get_args(tp))
        raise ConfigError(f"{where} must be {kinds}, got {value!r}{_bool_hint(value)}")
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{where} must be a mapping, got {type(value).__name__}")
        return from_dict(tp, value, where)
    origin = typing.get_origin(tp)
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where} must be a list, got {value!r}")
        (item_tp,) = typing.get_args(tp) or (Any,)
        return [_convert(v, item_tp, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where} must be a mapping, got {value!r}")
        _, val_tp = typing.get_args(tp) or (str, Any)
        _check_named_entries(value, val_tp, where)
        return {str(k): _convert(v, val_tp, f"{where}.{k}") for k, v in value.items()}
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where} must be true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"{where} must be an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(f"{where} must be a number, got {value!r}")
    if tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{where} must be a string, got {value!r}{_bool_hint(value)}")
    return value


def _kind_word(tp: Any) -> str:
    words = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}
    origin = typing.get_origin(tp)
    return (
        words.get(tp) or {list: "a list", dict: "a mapping"}.get(origin) or getattr(tp, "__name__", str(tp))
    )


def _bool_hint(value: Any) -> str:
    """YAML 1.1 reads yes/no/on/off as booleans: a class called `no` arrives as False."""
    if isinstance(value, bool):
        return " (YAML reads yes/no/on/off/true/false as booleans; quote it, e.g. 'no')"
    return ""


def _check_named_entries(value: dict, val_tp: Any, where: str) -> None:
    """Entries of a dict section whose items have a `name` (e.g. `losses`) must name it when they are new.

    Existing entries always carry their name (the defaults and the recipe are merged first), so an entry without
    one can only be a new key that touched `.weight`/`.args`: a typo (`losses.txt.weight=0`) that would otherwise
    silently add a default-named term and leave the intended one on.
    """
    if not (dataclasses.is_dataclass(val_tp) and "name" in {f.name for f in dataclasses.fields(val_tp)}):
        return
    named = [str(k) for k, v in value.items() if isinstance(v, dict) and "name" in v]
    for key, entry in value.items():
        if isinstance(entry, dict) and "name" not in entry:
            hint = suggest(str(key), named).replace('"', f'"{where}.', 1)  # '' when nothing is close
            given = ", ".join(f"{where}.{key}.{k}" for k in entry) or f"{where}.{key}"
            raise ConfigError(
                f"{given}: there is no {where} entry {str(key)!r}{hint}; existing: {', '.join(named) or 'none'}; "
                f"a new entry must name its kind: {where}.{key}.name=..."
            )


def from_dict(cls: type, data: dict, where: str = "") -> Any:
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        path = f"{where}.{key}" if where else key
        if key not in names:
            raise ConfigError(f"unknown config key {path!r}{suggest(key, names) or _nested_hint(cls, key)}")
        kwargs[key] = _convert(value, hints[key], path)
    return cls(**kwargs)


def _nested_hint(cls: type, key: str) -> str:
    """Suggest a key one level down, e.g. data.imbalance -> data.longtail.imbalance_factor."""
    hints = typing.get_type_hints(cls)
    nested = [
        f"{f.name}.{g.name}"
        for f in dataclasses.fields(cls)
        if dataclasses.is_dataclass(_is_optional(hints[f.name])[1])
        for g in dataclasses.fields(_is_optional(hints[f.name])[1])
    ]
    by_leaf = {n.split(".")[-1]: n for n in nested}
    close = difflib.get_close_matches(key, list(by_leaf), n=1, cutoff=0.5)
    if not close:
        close = [n.split(".")[-1] for n in nested if n.split(".")[-1].startswith(key)][:1]
    return f' (did you mean "{by_leaf[close[0]]}"?)' if close else ""


def parse_override(text: str) -> tuple[list[str], Any]:
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like section.key=value")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError as e:
        raise ConfigError(f"override {text!r}: cannot parse value ({e.problem})") from None
    return key.strip().split("."), value


def set_dotted(d: dict, keys: list[str], value: Any) -> None:
    cur = d
    for k in keys[:-1]:
        nxt = cur.get(k)
        if not isinstance(nxt, dict):
            nxt = {}
            cur[k] = nxt
        cur = nxt
    cur[keys[-1]] = value


def read_yaml(path: str | Path, _seen: tuple = ()) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} not found; pass an existing YAML file")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: invalid YAML ({e})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections")
    base = data.pop("base", None)
    if base:
        base_path = (path.parent / base).resolve()
        if base_path in _seen:
            raise ConfigError(f"{path}: base config cycle through {base_path}")
        data = merge_layer(read_yaml(base_path, (*_seen, base_path)), data, str(path))
    return data
