"""Command-line overrides checked before Hydra composes: an unknown key is one line naming it
and the closest valid keys (`model.d_modle=64` -> "Did you mean 'model.d_model'?").

Used by the entry points (`nmtbench.cli`) only: the check composes the configs, so it needs the
structured-config schemas (`nmtbench.schema`), which the library below it must not import.
"""

from __future__ import annotations

import difflib
import re
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from nmtbench.errors import ConfigError

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
