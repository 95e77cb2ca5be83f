"""Model registry: `model.name` in the config -> (typed architecture dataclass, nn.Module class,
training defaults).

A model is one file in this package that registers its class:

    @register_model("transformer", TransformerConfig, training={"label_smoothing": 0.1, ...})
    class TransformerSeq2Seq(nn.Module): ...

plus one YAML, `configs/model/<choice>.yaml`, naming the schema `_<name>` and the values that
differ from its defaults (docs/interfaces.md, "Adding a model"). Every module of this package
is imported on the first lookup, so a new file needs no other edit. The class implements
`nmtbench.models.interface.Seq2SeqModel` (encode, decode, reorder_cache, ...), which the
LightningModule, decoding and callbacks rely on. `training` holds the defaults of the keys of
`model:` that configure training rather than the architecture (`label_smoothing`,
`loss_normalization`, `optim`: read by `nmtbench.schema.TrainingConfig`), each cited.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from nmtbench.errors import ConfigError


@dataclass(frozen=True)
class RegisteredModel:
    name: str
    config_class: type  # the architecture dataclass (its defaults: the paper's, cited)
    model_class: type[nn.Module]  # built as model_class(config, vocab_size=..., pad_id=...)
    training: Mapping[str, Any] = field(default_factory=dict)  # defaults of the training keys


_MODELS: dict[str, RegisteredModel] = {}
_discovered = False


def register_model(name: str, config_class: type, training: Mapping[str, Any] | None = None) -> Callable:
    """Class decorator: register an nn.Module under `model.name = name`."""

    def register(model_class: type[nn.Module]) -> type[nn.Module]:
        _MODELS[name] = RegisteredModel(name, config_class, model_class, dict(training or {}))
        return model_class

    return register


def registered_models() -> dict[str, RegisteredModel]:
    """Every registered model (the modules of this package imported first)."""
    global _discovered
    if not _discovered:
        _discovered = True
        for info in pkgutil.iter_modules(__path__):
            importlib.import_module(f"{__name__}.{info.name}")
    return dict(_MODELS)


def registered(name: Any) -> RegisteredModel:
    models = registered_models()
    if name not in models:
        raise ConfigError(f"Unknown model.name '{name}'. Available: {', '.join(sorted(models))}.")
    return models[name]


def build_model(name: str, config: Any, vocab_size: int, pad_id: int) -> nn.Module:
    """The model registered as `name`, built from its typed architecture `config`."""
    return registered(name).model_class(config, vocab_size=vocab_size, pad_id=pad_id)


__all__ = ["RegisteredModel", "build_model", "register_model", "registered", "registered_models"]
