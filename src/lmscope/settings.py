"""Typed TOML settings: read a file, merge layers, check values against dataclass fields, write back.

lmscope's run configs (config.py), study files (study/spec.py) and prompt files
(data/prompts.py) are TOML tables that fill dataclasses. This module is the one engine they share:

    load_toml(path, what)        a TOML file as nested dicts; a missing or invalid file is one error
    merge(base, update)          nested dicts, `update` wins, tables merge key by key
    build(cls, values, table)    a dataclass from a table: every key checked (an unknown one
                                 suggests the nearest), every value coerced to its field's type
    coerce(value, hint, key)     one value checked against a type hint (int, float, bool, str,
                                 list[...], X | None), converted where that is unambiguous
    parse_override("a.b=1")      a `--set section.key=value` as {"a": {"b": 1}}
    dumps_toml(d)                tables of scalars and lists written back as TOML
    suggest(key, options)        " (did you mean ...?)" for a mistyped name, else ""
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import json
import math
import sys
import types
import typing
from collections.abc import Iterable
from pathlib import Path

from lmscope.errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


def load_toml(path: str | Path, what: str = "config file") -> dict:
    """Read a TOML file; a missing, unreadable or invalid one is a ConfigError naming `what`."""
    path = Path(path)
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{what} {path} does not exist") from None
    except (UnicodeDecodeError, IsADirectoryError) as e:
        raise ConfigError(f"{what} {path} is not a text file ({e})") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{what} {path} is not valid TOML: {e}") from None


def loads_toml(text: str) -> dict:
    """Parse TOML text (a packaged preset, say); errors are tomllib's."""
    return tomllib.loads(text)


def merge(base: dict, update: dict) -> dict:
    """Merge nested dicts: values of `update` win, tables merge key by key."""
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def suggest(key: str, options: Iterable[str], prefix: str = "") -> str:
    """' (did you mean <prefix><nearest>?)' when an option is close to `key`, else ''."""
    close = difflib.get_close_matches(key, list(options), n=1, cutoff=0.5)
    return f" (did you mean {prefix}{close[0]}?)" if close else ""


def build(cls, values: dict, table: str, *, kind: str = "config key", skip: Iterable[str] = ()):
    """An instance of the dataclass `cls` from the TOML table `values` (named `table` in errors).

    Every key must be a field of `cls` (not one of `skip`); an unknown key is a ConfigError
    "unknown <kind> <table>.<key>" with the nearest field suggested. Every value is coerced to
    its field's type. Fields not given keep their defaults.
    """
    skip = set(skip)
    names = [f.name for f in dataclasses.fields(cls) if f.name not in skip]
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for key, value in values.items():
        if key not in names:
            raise ConfigError(f"unknown {kind} {table}.{key}{suggest(key, names, table + '.')}")
        kwargs[key] = coerce(value, hints[key], f"{table}.{key}")
    return cls(**kwargs)


def coerce(value, hint, key: str):
    """Check `value` against the type hint of a field; convert where it is unambiguous."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = [a for a in typing.get_args(hint) if a is not type(None)]
        if value is None or value == "none":
            return None
        return coerce(value, options[0], key)
    if origin is list:
        (item,) = typing.get_args(hint)
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        elif not isinstance(value, list):
            value = [value]
        return [coerce(v, item, key) for v in value]
    if hint is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                pass
    elif hint is float:
        number = None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            number = float(value)
        elif isinstance(value, str):
            with contextlib.suppress(ValueError):
                number = float(value)
        if number is not None and math.isfinite(number):
            return number
    elif hint is str and isinstance(value, (str, int, float)) and not isinstance(value, bool):
        return str(value)
    raise ConfigError(f"{key} must be {_type_name(hint)}, got {value!r}")


def _type_name(hint) -> str:
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string"}.get(
        hint, str(hint))


def parse_override(item: str, known_keys: Iterable[str] = ()) -> dict:
    """'train.max_iters=300' -> {'train': {'max_iters': 300}}. Values are read as TOML literals,
    falling back to the plain string (so `data.corpus=math` needs no quotes). A key that is not
    section.name is an error suggesting the nearest of `known_keys`."""
    key, sep, text = item.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"--set expects key=value, got {item!r}")
    parts = key.split(".")
    if len(parts) != 2 or not all(parts):
        raise ConfigError(f"--set key must look like section.name (e.g. train.max_iters), got {key!r}"
                          f"{suggest(key, known_keys)}")
    try:
        value = tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        value = text
    return {parts[0]: {parts[1]: value}}


def dumps_toml(d: dict) -> str:
    """Write a dict of tables (of scalars and lists) as TOML."""
    lines = []
    for section, table in d.items():
        lines.append(f"[{section}]")
        for key, value in table.items():
            if value is not None:
                lines.append(f"{key} = {toml_value(value)}")
        lines.append("")
    return "\n".join(lines)


def toml_value(v) -> str:
    """One scalar or list as a TOML literal."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        # JSON string escapes are valid TOML basic-string escapes
        return json.dumps(v, ensure_ascii=False)
    if isinstance(v, list):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    raise TypeError(f"cannot write {v!r} as TOML")
