"""Strict YAML -> dataclass loading: unknown keys, wrong types and bad combinations, all at once."""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from pathlib import Path
from typing import Any, Literal

import yaml

from zoft.config.methods import METHOD_CONFIGS, MethodConfig
from zoft.config.recipes import resolve_recipe
from zoft.config.schema import Recipe
from zoft.errors import ZoftError
from zoft.registry import closest

_KEY = re.compile(r"^~?[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")


def load_recipe(source: str | Path, overrides: list[str] = ()) -> Recipe:
    """Read a recipe file (or packaged recipe name), apply `a.b=value` overrides, validate."""
    path = resolve_recipe(source)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ZoftError(f"{path}: not valid YAML: {' '.join(str(err).split())}") from None
    if not isinstance(data, dict):
        raise ZoftError(f"{path}: a recipe is a mapping of sections, got {type(data).__name__}")
    return recipe_from_dict(apply_overrides(data, overrides))


def recipe_from_dict(data: dict) -> Recipe:
    """Type-check `data`, then run the cross-key checks on what is well typed; raise all problems."""
    from zoft.config.checks import check_recipe

    problems: list[str] = []
    recipe = _build(Recipe, data, "", problems)
    if recipe is not None:
        reported = {p.split(":", 1)[0] for p in problems}
        problems += [p for p in check_recipe(recipe) if p.split(":", 1)[0] not in reported]
    if problems:
        raise ZoftError(problems)
    return recipe


def apply_overrides(data: dict, overrides: typing.Iterable[str]) -> dict:
    """Apply `a.b=value` (value read as YAML) and `~a.b` (back to the default), left to right."""
    problems = []
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not _KEY.match(key) or (key.startswith("~") == bool(sep)):
            problems.append(f"override {item!r}: expected key.path=value or ~key.path")
            continue
        parts = key.lstrip("~").split(".")
        node = data
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                problems.append(f"override {item!r}: {part} is not a section")
                break
        else:
            if not sep:
                node.pop(parts[-1], None)
                continue
            try:
                node[parts[-1]] = yaml.safe_load(raw) if raw else ""
            except yaml.YAMLError:
                node[parts[-1]] = raw  # not YAML: keep the text, the type check decides
    if problems:
        raise ZoftError(problems, title="bad override")
    return data


def recipe_to_dict(recipe: Recipe) -> dict:
    return dataclasses.asdict(recipe)


def dump_recipe(recipe: Recipe) -> str:
    return yaml.safe_dump(recipe_to_dict(recipe), sort_keys=False)


def dotted_keys(cls: type, prefix: str = "") -> list[str]:
    """Every valid dotted key below a dataclass (methods: the base keys)."""
    keys = []
    for f in dataclasses.fields(cls):
        tp = typing.get_type_hints(cls)[f.name]
        key = f"{prefix}{f.name}"
        keys += dotted_keys(tp, key + ".") if dataclasses.is_dataclass(tp) else [key]
    return keys


def _build(cls: type, data: Any, path: str, problems: list[str]) -> Any:
    """Instantiate dataclass `cls` from `data`, appending each problem (dotted key first)."""
    where = path.rstrip(".") or "recipe"
    if not isinstance(data, dict):
        problems.append(f"{where}: expected a mapping of keys, got {_show(data)}")
        return None
    if cls is MethodConfig:
        name = data.get("name", "mezo")
        if not isinstance(name, str):
            problems.append(f"{path}name: expected a string, got {_show(name)}")
            return None
        if name not in METHOD_CONFIGS:
            problems.append(METHOD_CONFIGS.unknown(str(name), f"{path}name"))
            return None
        cls = METHOD_CONFIGS.get(name, f"{path}name")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in data:
        if key not in fields:
            problems.append(f"{path}{key}: unknown key{_hint(str(key), path, list(fields))}")
    values = {}  # well-typed values only: a bad one falls back to its default for the later checks
    for name, f in fields.items():
        key = f"{path}{name}"
        if name not in data:
            if f.metadata.get("required") or (
                f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
            ):
                problems.append(f"{key}: required key is missing ({f.metadata.get('help', 'a section')})")
            continue
        tp = hints[name]
        if dataclasses.is_dataclass(tp):
            section = _build(tp, data[name], key + ".", problems)
            if section is not None:
                values[name] = section
        else:
            ok, value = _coerce(data[name], tp)
            if ok:
                values[name] = value
            else:
                problems.append(f"{key}: expected {_describe(tp)}, got {_show(data[name])}")
    return cls(**values)


def _hint(key: str, path: str, siblings: list[str]) -> str:
    """Suggest the sibling a typo meant, or the section where a misplaced key belongs."""
    guess = closest(key, siblings)
    if guess:
        return f" (did you mean {path}{guess}?)"
    elsewhere = [k for k in dotted_keys(Recipe) if k.rsplit(".", 1)[-1] == key]
    return f" (did you mean {elsewhere[0]}?)" if elsewhere else ""


def _coerce(value: Any, tp: Any) -> tuple[bool, Any]:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None:
            return type(None) in typing.get_args(tp), None
        for arg in typing.get_args(tp):
            if arg is not type(None):
                ok, out = _coerce(value, arg)
                if ok:
                    return True, out
        return False, None
    if origin is Literal:
        return value in typing.get_args(tp), value
    if origin is list:
        (item_tp,) = typing.get_args(tp)
        if not isinstance(value, list):
            return False, None
        items = [_coerce(v, item_tp) for v in value]
        return all(ok for ok, _ in items), [v for _, v in items]
    if tp is bool:
        return isinstance(value, bool), value
    if tp is int:
        if isinstance(value, float) and value.is_integer():
            return True, int(value)
        return isinstance(value, int) and not isinstance(value, bool), value
    if tp is float:  # a finite number; YAML 1.1 reads 1e-6 as a string
        try:
            number = float(value) if isinstance(value, (int, float, str)) and not isinstance(value, bool) else None
        except ValueError:
            number = None
        return number is not None and math.isfinite(number), number
    if tp is str:
        return isinstance(value, str), value
    return True, value


def _describe(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in typing.get_args(tp))
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin is list:
        return f"a list of {_describe(typing.get_args(tp)[0])}"
    names = {bool: "true/false", int: "an integer", float: "a finite number", str: "a string", type(None): "null"}
    return names.get(tp, getattr(tp, "__name__", str(tp)))


def _show(value: Any) -> str:
    text = repr(value)
    return f"{text[:60]}..." if len(text) > 60 else text
