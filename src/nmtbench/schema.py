"""The typed `model:` section, and the Hydra structured configs (the schemas of the YAML files).

`model:` holds a model's architecture keys (its registered dataclass, e.g.
`nmtbench.models.transformer.TransformerConfig`) and the training keys of `TrainingConfig`.
Each setting has one default, cited next to the code that reads it: the architecture's in its
dataclass, the training keys' in the model's registration (`register_model(..., training=)`),
the optimiser's in `nmtbench.optim.OptimConfig`, the data's in
`nmtbench.data.config.DataConfig`. The YAML files of configs/model/ and configs/data/ name
their schema first in their defaults list and set only what differs from it (each override
with its own citation), so `python scripts/train.py ... --cfg job` prints every value and
OmegaConf type-checks command-line overrides while composing.

    schema (ConfigStore)   dataclass                                         used by
    model/_<name>          model_schema(name): architecture + training keys  configs/model/*.yaml
    data/_schema           nmtbench.data.config.DataConfig                   configs/data/*.yaml

`model_settings(cfg.model)` validates the section once (unknown keys are errors naming the
key) and returns it typed. Every program that composes configs/train.yaml calls
`register_configs()` first (nmtbench.cli, tests/conftest.py).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from omegaconf import DictConfig, OmegaConf

from nmtbench.config import from_mapping, to_container
from nmtbench.data.config import DataConfig
from nmtbench.errors import ConfigError
from nmtbench.loss import LOSS_NORMALIZATIONS
from nmtbench.models import registered, registered_models
from nmtbench.optim import OptimConfig

log = logging.getLogger(__name__)


@dataclass
class TrainingConfig:
    """The keys of `model:` that configure training rather than the architecture (read by
    Seq2SeqModule). No defaults here: each model registers its own (cited there)."""

    label_smoothing: float  # epsilon of the label-smoothed cross entropy
    # What an optimizer step's summed loss is divided by: its target tokens (Vaswani et al.
    # 2017; fairseq) or its sentences (Luong et al. 2015, Sutskever et al. 2014: "divided by
    # 128"), counted over all micro-batches and ranks of the step (Seq2SeqModule).
    loss_normalization: str
    optim: OptimConfig  # optimiser + LR schedule

    def __post_init__(self) -> None:
        if self.loss_normalization not in LOSS_NORMALIZATIONS:
            raise ConfigError(f"model.loss_normalization must be one of {', '.join(LOSS_NORMALIZATIONS)}, "
                              f"got '{self.loss_normalization}'.")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ConfigError(f"model.label_smoothing must be in [0, 1), got {self.label_smoothing}.")


TRAINING_KEYS = ("name", *(f.name for f in dataclasses.fields(TrainingConfig)))


@functools.cache
def model_schema(name: str) -> type:
    """The dataclass of `model:` for the registered model `name`: its architecture dataclass
    plus `name` and the training keys, with the defaults it registered."""
    info = registered(name)
    defaults = dict(info.training)
    optim = dict(defaults.get("optim") or {})
    fields = [
        ("name", str, field(default=name)),
        ("label_smoothing", float, field(default=float(defaults.get("label_smoothing", 0.0)))),
        ("loss_normalization", str, field(default=str(defaults.get("loss_normalization", "tokens")))),
        ("optim", OptimConfig, field(default_factory=functools.partial(OptimConfig, **optim))),
    ]
    title = "".join(part.capitalize() for part in name.split("_"))
    return dataclasses.make_dataclass(f"{title}ModelConfig", fields, bases=(info.config_class,))


def model_settings(cfg: Mapping[str, Any]) -> tuple[Any, TrainingConfig]:
    """`model:` validated once: (the architecture dataclass, TrainingConfig). Unknown keys and
    bad values are ConfigErrors naming the key. The config saved in a checkpoint written before
    gradient clipping became `trainer.gradient_clip_val` holds `optim.grad_clip`: it is dropped
    with a warning, so such checkpoints load."""
    data = dict(to_container(cfg) or {})
    schema = model_schema(registered(data.get("name")).name)
    optim = dict(data.get("optim") or {})
    if "grad_clip" in optim:
        log.warning("model.optim.grad_clip=%s (a config from an older nmtbench) is ignored: gradient "
                    "clipping is trainer.gradient_clip_val now.", optim.pop("grad_clip"))
        data["optim"] = optim
    full = from_mapping(schema, data, "model")
    arch_class = registered(full.name).config_class
    arch = arch_class(**{f.name: getattr(full, f.name) for f in dataclasses.fields(arch_class)})
    return arch, TrainingConfig(full.label_smoothing, full.loss_normalization, full.optim)


def build_model_from_config(cfg: Mapping[str, Any], vocab_size: int, pad_id: int):
    """The nn.Module that `model:` describes (validated by `model_settings`)."""
    from nmtbench.models import build_model

    arch, _ = model_settings(cfg)
    return build_model(str(to_container(cfg)["name"]), arch, vocab_size=vocab_size, pad_id=pad_id)


def structured(cls: type) -> DictConfig:
    """`OmegaConf.structured(cls)`, writable: frozen dataclasses (DataConfig, ToyConfig) give
    read-only nodes, which configs and command-line overrides could not change."""
    node = OmegaConf.structured(cls)

    def writable(n: DictConfig) -> None:
        OmegaConf.set_readonly(n, False)
        for key in n:
            if not OmegaConf.is_missing(n, key) and isinstance(n[key], DictConfig):
                writable(n[key])

    writable(node)
    return node


def register_configs() -> None:
    """Store the schemas in Hydra's ConfigStore (idempotent): `model/_<name>` for every
    registered model, `data/_schema`."""
    from hydra.core.config_store import ConfigStore

    store = ConfigStore.instance()
    for name in registered_models():
        store.store(group="model", name=f"_{name}", node=structured(model_schema(name)))
    store.store(group="data", name="_schema", node=structured(DataConfig))


__all__ = ["TRAINING_KEYS", "TrainingConfig", "build_model_from_config", "model_schema", "model_settings",
           "register_configs", "structured"]
