"""Every config composes, and mistakes in configs are errors that name the key."""

from __future__ import annotations

import pytest
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf

from nmtbench.config import from_mapping
from nmtbench.data.config import DataConfig
from nmtbench.errors import ConfigError
from nmtbench.models import model_config
from nmtbench.optim import OptimConfig

from ..conftest import CONFIG_DIR, compose_config

MODELS = sorted(p.stem for p in (CONFIG_DIR / "model").glob("*.yaml"))
EXPERIMENTS = sorted(p.stem for p in (CONFIG_DIR / "experiment").glob("*.yaml"))
DATA = sorted(p.stem for p in (CONFIG_DIR / "data").glob("*.yaml"))
TRAINERS = sorted(p.stem for p in (CONFIG_DIR / "trainer").glob("*.yaml"))


def _check(cfg) -> None:
    """Validate every typed section the way train() does."""
    model_config(cfg.model)
    from_mapping(OptimConfig, OmegaConf.to_container(cfg.model.optim), "model.optim")
    from_mapping(DataConfig, OmegaConf.to_container(cfg.data, resolve=False), "data")


def test_expected_config_groups_exist():
    assert {"transformer", "transformer_big", "lstm_attention", "lstm_seq2seq"} <= set(MODELS)
    assert {"toy", "files", "wmt14"} <= set(DATA)
    assert {"default", "cpu", "gpu"} <= set(TRAINERS)
    assert "smoke" in EXPERIMENTS


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("data", DATA)
def test_every_model_and_data_config_composes(model, data, tmp_path):
    extra = [f"data.dir={tmp_path}"] if data == "files" else []  # files has no default dir
    cfg = compose_config([f"model={model}", f"data={data}", *extra])
    _check(cfg)
    assert cfg.data.source == data


@pytest.mark.parametrize("trainer", TRAINERS)
def test_every_trainer_config_composes(trainer):
    cfg = compose_config([f"trainer={trainer}"])
    assert cfg.trainer._target_ == "lightning.pytorch.Trainer"


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_composes(experiment, tmp_path):
    cfg = compose_config([f"experiment={experiment}"])
    if cfg.data.source == "files" and not cfg.data.dir:
        cfg = compose_config([f"experiment={experiment}", f"data.dir={tmp_path}"])
    _check(cfg)


@pytest.mark.parametrize("model", MODELS)
def test_smoke_shrinks_any_model_without_pinning_it(model):
    full = compose_config([f"model={model}"])
    smoke = compose_config(["experiment=smoke", f"model={model}"])
    assert smoke.model.name == full.model.name
    assert type(model_config(smoke.model)) is type(model_config(full.model))
    assert smoke.data.source == "toy"
    widths = [k for k in ("d_model", "hidden_size") if k in full.model]
    assert widths and all(smoke.model[k] < full.model[k] for k in widths)


def test_command_line_overrides_beat_the_smoke_preset():
    cfg = compose_config(["experiment=smoke", "model=transformer", "model.d_model=48"])
    assert cfg.model.d_model == 48


def test_transformer_base_is_the_paper_configuration():
    m = compose_config(["model=transformer"]).model
    assert (m.num_encoder_layers, m.num_decoder_layers, m.d_model, m.num_heads, m.d_ff) == (6, 6, 512, 8, 2048)
    assert m.dropout == 0.1 and m.label_smoothing == 0.1 and m.pre_norm is False
    assert m.share_embeddings is True
    assert m.optim.warmup_steps == 4000 and list(m.optim.betas) == [0.9, 0.98] and m.optim.eps == 1e-9
    big = compose_config(["model=transformer_big"]).model
    assert (big.d_model, big.num_heads, big.d_ff, big.dropout) == (1024, 16, 4096, 0.3)


def test_default_data_is_wmt14_with_the_paper_vocabulary():
    cfg = compose_config([])
    assert cfg.data.source == "wmt14" and cfg.data.vocab_size == 37000


def test_typo_in_model_key_on_command_line_names_the_key():
    with pytest.raises(ConfigCompositionException, match="d_modle"):
        compose_config(["model.d_modle=64"])


def test_added_unknown_model_key_is_rejected_by_name():
    cfg = compose_config(["+model.d_modle=64"])
    with pytest.raises(ConfigError, match=r"model\.d_modle.*Did you mean 'd_model'"):
        model_config(cfg.model)


def test_unknown_optim_key_is_rejected_by_name():
    cfg = compose_config(["+model.optim.warmup=10"])
    with pytest.raises(ConfigError, match=r"model\.optim\.warmup"):
        from_mapping(OptimConfig, OmegaConf.to_container(cfg.model.optim), "model.optim")


def test_unknown_data_key_is_rejected_by_name():
    cfg = compose_config(["+data.max_token=10"])
    with pytest.raises(ConfigError, match=r"data\.max_token"):
        from_mapping(DataConfig, OmegaConf.to_container(cfg.data, resolve=False), "data")
