"""Typed settings: a frozen dataclass per config section, read from a mapping with one set of rules.

Each part of boltzflow declares its own settings as a frozen dataclass whose annotations are the types and whose
defaults are the defaults (written once, there): ``TrainSettings`` (boltzflow.train.state), ``AISSettings``
(boltzflow.ais), ``FabSettings`` (boltzflow.train.fab), the flow builders' settings (boltzflow.flows.builders, made
from the builders' signatures), ``SNFSettings`` (boltzflow.snf.builder). :func:`parse` turns a mapping from a
YAML file into one of them:

- a key the dataclass does not have is an error naming the valid keys;
- a value of the wrong type is an error (``buffer: "false"`` is a string, not a bool; ``steps: 2.5`` is not an
  int; an int is accepted where a float is expected);
- a nested dataclass is parsed from a nested mapping; a field whose metadata has ``"choices"`` (a name -> dataclass
  registry) and ``"tag"`` holds a :class:`Tagged` value, e.g. ``{type: nsf, bins: 8}`` -> ``Tagged("nsf",
  NSFSettings(bins=8, ...))``;
- a dataclass may take further keys into one dict field (metadata ``"extra": True``), checked by its own
  ``__post_init__`` (the AIS and block sections pass kernel settings through like this);
- ``__post_init__`` checks values (ranges, consistency) and raises :class:`BoltzflowError`.

:func:`to_dict` writes the settings back as plain YAML-able data, defaults included, so a run's ``config.yaml``
records every value it ran with.
"""

from __future__ import annotations

import dataclasses
import inspect
import types
import typing
from typing import Any, Literal, Union

from boltzflow.errors import BoltzflowError


@dataclasses.dataclass(frozen=True)
class Tagged:
    """A choice among several settings classes: ``name`` (e.g. the flow type or the method name) and its settings."""

    name: str
    settings: Any


def type_name(hint) -> str:
    """A type annotation in words, as errors and the settings reference (boltzflow.config_reference) write it."""
    if hint is type(None):
        return "null"
    origin = typing.get_origin(hint)
    if origin in (Union, types.UnionType):
        return " or ".join(type_name(a) for a in typing.get_args(hint))
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(hint))
    if origin in (list, tuple):
        return "a list"
    if origin is dict or hint is dict:
        return "a mapping"
    return getattr(hint, "__name__", str(hint))


def _check(value, hint, where: str, field_meta=None):
    """``value`` as the type ``hint`` (a bool is not an int; an int is a float), else a one-line error."""
    meta = field_meta or {}
    if "choices" in meta:
        if value is None and (typing.get_origin(hint) in (Union, types.UnionType)
                              and type(None) in typing.get_args(hint)):
            return None
        return parse_tagged(value, meta["choices"], meta["tag"], where, meta.get("default"))
    if hint is Any:
        return value
    origin = typing.get_origin(hint)
    if origin in (Union, types.UnionType):
        for arg in typing.get_args(hint):
            try:
                return _check(value, arg, where)
            except BoltzflowError:
                pass
        raise BoltzflowError(f"{where} must be {type_name(hint)}, got {value!r}")
    if origin is Literal:
        if value not in typing.get_args(hint):
            raise BoltzflowError(f"{where} must be {type_name(hint)}, got {value!r}")
        return value
    if hint is type(None):
        if value is not None:
            raise BoltzflowError(f"{where} must be null, got {value!r}")
        return None
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise BoltzflowError(f"{where} must be a list, got {value!r}")
        (item,) = typing.get_args(hint)[:1] or (Any,)
        return [_check(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict or hint is dict:
        if not isinstance(value, dict):
            raise BoltzflowError(f"{where} must be a mapping, got {value!r}")
        return dict(value)
    if dataclasses.is_dataclass(hint):
        return parse(hint, value, where)
    if hint is bool:
        if not isinstance(value, bool):
            raise BoltzflowError(f"{where} must be true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise BoltzflowError(f"{where} must be an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise BoltzflowError(f"{where} must be a number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise BoltzflowError(f"{where} must be a string, got {value!r}")
        return value
    raise TypeError(f"settings type {hint!r} of {where} is not supported")  # a bug in a settings class


def parse(cls, data, where: str):
    """An instance of the settings dataclass ``cls`` from the mapping ``data`` (module docstring)."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise BoltzflowError(f"{where} must be a mapping, got {data!r}")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    hints = typing.get_type_hints(cls)
    extra_field = next((f.name for f in fields.values() if f.metadata.get("extra")), None)
    known = [n for n in fields if n != extra_field]
    unknown = [k for k in data if k not in known]
    if unknown and extra_field is None:
        raise BoltzflowError(f"unknown option(s) for {where}: {', '.join(map(str, unknown))}; "
                             f"valid: {', '.join(known) or 'none'}")
    kw = {k: _check(v, hints[k], f"{where}.{k}", fields[k].metadata) for k, v in data.items() if k in known}
    if extra_field is not None:
        kw[extra_field] = {k: data[k] for k in unknown}
    try:
        return cls(**kw)
    except TypeError as e:  # a required field is missing
        raise BoltzflowError(f"{where}: {e}") from None


def parse_tagged(data, choices: dict, tag: str, where: str, default: str | None = None) -> Tagged:
    """``{tag: name, **options}`` (or just ``name``) -> ``Tagged(name, parse(choices[name], options))``."""
    if data is None and default is not None:
        data = {tag: default}
    if isinstance(data, str):
        data = {tag: data}
    if not isinstance(data, dict):
        raise BoltzflowError(f"{where} must be a mapping with a {tag!r}, got {data!r}")
    data = dict(data)
    name = data.pop(tag, default)
    if name not in choices:
        raise BoltzflowError(f"{where}: unknown {tag} {name!r}; known: {', '.join(choices)}")
    return Tagged(name, parse(choices[name], data, f"{where} ({name})"))


def to_dict(value, tag: str | None = None):
    """Settings (dataclasses, Tagged, lists) -> plain data; a Tagged is written as ``{tag: name, **settings}``."""
    if isinstance(value, Tagged):
        return {tag or "type": value.name, **to_dict(value.settings)}
    if dataclasses.is_dataclass(value):
        out = {}
        for f in dataclasses.fields(value):
            v = getattr(value, f.name)
            if f.metadata.get("extra"):
                out.update(to_dict(v))
            else:
                out[f.name] = to_dict(v, f.metadata.get("tag"))
        return out
    if isinstance(value, (list, tuple)):
        return [to_dict(v) for v in value]
    if isinstance(value, dict):
        return {k: to_dict(v) for k, v in value.items()}
    return value


def from_signature(fn, name: str, skip=("key", "dim", "dtype"), bases: tuple = ()):
    """A frozen settings dataclass from the keyword arguments of ``fn`` (their annotations and defaults), so a
    builder's defaults are written once, in its signature; ``bases``: settings dataclasses whose fields come
    first (options the caller handles, not ``fn``)."""
    hints = typing.get_type_hints(fn)
    fields = []
    for p in inspect.signature(fn).parameters.values():
        if p.name in skip:
            continue
        if p.name not in hints:
            raise TypeError(f"{fn.__name__}: parameter {p.name} needs a type annotation")
        fields.append((p.name, hints[p.name], dataclasses.field(default=p.default)))
    cls = dataclasses.make_dataclass(name, fields, bases=bases, frozen=True)
    cls.__settings_source__ = fn  # its keys' descriptions are fn's Args (boltzflow.config_reference)
    return cls
