"""Typed views of config sections: unknown keys are errors that name the key.

Every config section that builds something (a model, the optimiser, the data) is read
into a small dataclass with `from_mapping`, so a typo such as `model.d_modle=64` fails
at startup with the key, the section and the closest valid names.
"""

from __future__ import annotations

import dataclasses
import difflib
import typing
from collections.abc import Mapping
from typing import Any, TypeVar

from omegaconf import DictConfig, ListConfig, OmegaConf

from nmtbench.errors import ConfigError

T = TypeVar("T")


def to_container(node: Any) -> Any:
    """Resolve an OmegaConf node into plain Python containers (dicts/lists)."""
    if isinstance(node, (DictConfig, ListConfig)):
        return OmegaConf.to_container(node, resolve=True)
    return node


def from_mapping(cls: type[T], mapping: Mapping[str, Any] | None, where: str, ignore: tuple[str, ...] = ()) -> T:
    """Build dataclass `cls` from `mapping`, rejecting unknown keys by name.

    `where` is the config path of the section (e.g. "model") used in error messages;
    keys listed in `ignore` are skipped (they belong to another consumer).
    Nested dataclass fields are built recursively.
    """
    data = dict(to_container(mapping) or {})
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = [k for k in data if k not in fields and k not in ignore]
    if unknown:
        key = unknown[0]
        close = difflib.get_close_matches(key, list(fields), n=3)
        hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        raise ConfigError(
            f"Unknown config key '{where}.{key}' for {cls.__name__}.{hint} "
            f"Valid keys: {', '.join(sorted(fields))}."
        )
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for name, value in data.items():
        if name in ignore:
            continue
        ftype = hints.get(name)
        if dataclasses.is_dataclass(ftype) and isinstance(value, Mapping):
            value = from_mapping(ftype, value, f"{where}.{name}")
        kwargs[name] = value
    missing = [
        n for n, f in fields.items()
        if n not in kwargs and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        raise ConfigError(f"Missing required config key '{where}.{missing[0]}' for {cls.__name__}.")
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"Invalid value in config section '{where}': {exc}") from exc
