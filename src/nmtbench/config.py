"""Typed views of config sections: unknown keys are errors that name the key.

Every config section that builds something (a model, the optimiser, the data) is read
into a small dataclass with `from_mapping`, so a typo such as `model.d_modle=64` fails
at startup with the key, the section and the closest valid names.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import typing
from collections.abc import Mapping
from pathlib import Path
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


# -- command-line overrides ------------------------------------------------------------------
_COULD_NOT_OVERRIDE = re.compile(r"Could not override '([^']+)'")


def check_overrides(config_dir: str | Path, config_name: str, overrides: list[str]) -> None:
    """Raise a `ConfigError` naming an unknown key among command-line `overrides`, with the
    closest valid keys, before Hydra's own (struct) error; anything else is left to Hydra.

    `model.d_modle=64` -> "Unknown config key 'model.d_modle'. Did you mean 'model.d_model'?".
    Overrides of Hydra's own config (`hydra.*`, `hydra/...`) and flags are not checked.
    """
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import ConfigCompositionException

    from nmtbench.schema import register_configs

    ours = [o for o in overrides if not o.startswith(("-", "hydra.", "hydra/"))]
    if not ours:
        return
    register_configs()  # the structured-config schemas the YAML files build on
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(Path(config_dir).resolve()), version_base="1.3"):
            try:
                compose(config_name=config_name, overrides=ours)
                return
            except ConfigCompositionException as exc:
                match = _COULD_NOT_OVERRIDE.search(str(exc))
            except Exception:  # noqa: BLE001 - a bad value, group or syntax: Hydra reports it
                return
            if not match:
                return  # not an unknown key: Hydra reports it
            key = match.group(1)
            rest = [o for o in ours if _override_key(o) != key]
            try:
                cfg = compose(config_name=config_name, overrides=rest)
            except Exception:  # noqa: BLE001 - another bad override: Hydra reports it
                cfg = None
    finally:
        GlobalHydra.instance().clear()
    raise ConfigError(unknown_key_message(key, cfg))


def _override_key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def unknown_key_message(key: str, cfg: DictConfig | None) -> str:
    """"Unknown config key 'a.b'. Did you mean 'a.c'? ..." from the keys that exist."""
    parts = key.split(".")
    node: Any = cfg
    known: list[str] = []
    prefix: list[str] = []
    for part in parts:
        if not isinstance(node, DictConfig) or part not in node:
            known = [str(k) for k in node.keys()] if isinstance(node, DictConfig) else []
            break
        node = node[part]
        prefix.append(part)
    missing = parts[len(prefix)]
    where = ".".join(prefix)
    close = difflib.get_close_matches(missing, known, n=3, cutoff=0.6)
    hint = f" Did you mean {', '.join(repr('.'.join([*prefix, c])) for c in close)}?" if close else ""
    section = f" under '{where}'" if where else ""
    listed = f" Keys{section}: {', '.join(sorted(known))}." if known and not close else ""
    # A plain YAML section takes new keys with '+'; a typed (structured-config) one never does.
    plain = isinstance(node, DictConfig) and OmegaConf.get_type(node) is dict
    add = f" To add a new key on purpose, write '+{key}=...'." if plain else ""
    return f"Unknown config key '{key}'.{hint}{listed}{add}"


def exit_on_unknown_overrides(config_dir: str | Path, config_name: str, argv: list[str] | None = None) -> None:
    """For entry points, before `@hydra.main`: print the unknown-key error in one line and exit 1."""
    import sys

    args = sys.argv[1:] if argv is None else argv
    if any(a.startswith("-") for a in args):
        return  # Hydra flags (-m sweeps, --cfg, -cn, --help, ...): Hydra checks everything itself
    try:
        check_overrides(config_dir, config_name, args)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)
