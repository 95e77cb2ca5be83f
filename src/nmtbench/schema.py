"""Hydra structured configs: the typed dataclasses are the schema and the defaults.

Each setting of the `model:` and `data:` sections has one home: its dataclass field, with the
value's paper citation beside it. The YAML files of configs/model/ and configs/data/ name their
schema first in their defaults list and set only what differs from it (each override with its
own citation), so `python scripts/train.py ... --cfg job` prints every value and OmegaConf
type-checks command-line overrides while composing.

    schema (ConfigStore)   dataclass                                  used by
    model/_transformer     TransformerModelConfig: TransformerConfig  configs/model/transformer*.yaml
    model/_lstm            LSTMModelConfig: LSTMConfig                configs/model/lstm_*.yaml
    data/_schema           nmtbench.data.config.DataConfig            configs/data/*.yaml

Every program that composes configs/train.yaml calls `register_configs()` first
(nmtbench.cli.train and .prepare_data, tests/conftest.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from omegaconf import DictConfig, OmegaConf

from nmtbench.data.config import DataConfig
from nmtbench.models import TrainingConfig
from nmtbench.models.lstm import LSTMConfig
from nmtbench.models.transformer import TransformerConfig
from nmtbench.optim import OptimConfig


@dataclass
class TransformerModelConfig(TransformerConfig, TrainingConfig):
    """`model:` of the Transformer rows: Vaswani et al. 2017 (architecture defaults: base, Table 3)."""

    name: str = "transformer"
    label_smoothing: float = 0.1  # epsilon_ls = 0.1 (section 5.4)
    loss_normalization: str = "tokens"  # summed loss / target tokens of the step (fairseq, tensor2tensor)
    # Adam(0.9, 0.98, 1e-9), inverse-sqrt schedule, warmup 4000: the OptimConfig defaults (5.3).
    optim: OptimConfig = field(default_factory=OptimConfig)


def luong2015_sgd() -> OptimConfig:
    """The LSTM rows' optimiser: Luong et al. 2015, section 4.1 (Sutskever et al. 2014, 3.4)."""
    return OptimConfig(
        name="sgd",  # "we train ... using plain SGD"; adam selectable
        lr=1.0,  # "we start with a learning rate of 1"
        betas=[0.9, 0.999],  # Adam only (not in the papers): Kingma & Ba 2015 defaults
        eps=1e-8,  # Adam only (not in the papers): Kingma & Ba 2015 default
        weight_decay=0.0,  # none in the papers
        schedule="halving",  # "we begin to halve the learning rate every epoch"
        warmup_steps=0,  # no warmup in the papers
        # with dropout: 12 epochs, "start halving the learning rate after 8 epochs";
        # without dropout: 10 epochs, halving after 5 (decay_start_epoch 6)
        decay_start_epoch=9,
        decay_factor=0.5,  # halve
    )


@dataclass
class LSTMModelConfig(LSTMConfig, TrainingConfig):
    """`model:` of the LSTM rows: Luong et al. 2015 (architecture defaults: global attention)."""

    name: str = "lstm"
    label_smoothing: float = 0.0  # plain cross entropy (Sutskever et al. 2014, Luong et al. 2015)
    # summed loss / sentences of the step: "the gradient divided by 128" (Luong 4.1; Sutskever 3.4)
    loss_normalization: str = "sentences"
    optim: OptimConfig = field(default_factory=luong2015_sgd)


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
    """Store the schemas in Hydra's ConfigStore (idempotent)."""
    from hydra.core.config_store import ConfigStore

    store = ConfigStore.instance()
    store.store(group="model", name="_transformer", node=structured(TransformerModelConfig))
    store.store(group="model", name="_lstm", node=structured(LSTMModelConfig))
    store.store(group="data", name="_schema", node=structured(DataConfig))


__all__ = ["LSTMModelConfig", "TransformerModelConfig", "luong2015_sgd", "register_configs", "structured"]
