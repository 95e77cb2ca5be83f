"""Every config composes, and mistakes in configs are errors that name the key."""

from __future__ import annotations

import pytest
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf

from nmtbench.config import from_mapping
from nmtbench.data.config import DataConfig
from nmtbench.errors import ConfigError
from nmtbench.optim import OptimConfig
from nmtbench.schema import model_settings

from ..conftest import CONFIG_DIR, compose_config

MODELS = sorted(p.stem for p in (CONFIG_DIR / "model").glob("*.yaml"))
EXPERIMENTS = sorted(p.stem for p in (CONFIG_DIR / "experiment").glob("*.yaml"))
DATA = sorted(p.stem for p in (CONFIG_DIR / "data").glob("*.yaml"))
TRAINERS = sorted(p.stem for p in (CONFIG_DIR / "trainer").glob("*.yaml"))


def _check(cfg) -> None:
    """Validate every typed section the way train() does."""
    model_settings(cfg.model)
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
    assert cfg.trainer._target_ == "nmtbench.trainer.Trainer"  # a lightning.pytorch.Trainer (tests/unit/test_trainer.py)


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
    assert type(model_settings(smoke.model)[0]) is type(model_settings(full.model)[0])
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
        model_settings(cfg.model)


def test_unknown_optim_key_is_rejected_by_name():
    cfg = compose_config(["+model.optim.warmup=10"])
    with pytest.raises(ConfigError, match=r"model\.optim\.warmup"):
        from_mapping(OptimConfig, OmegaConf.to_container(cfg.model.optim), "model.optim")


def test_unknown_data_key_is_rejected_by_name():
    cfg = compose_config(["+data.max_token=10"])
    with pytest.raises(ConfigError, match=r"data\.max_token"):
        from_mapping(DataConfig, OmegaConf.to_container(cfg.data, resolve=False), "data")


def _schema_defaults() -> dict[str, dict]:
    from nmtbench.schema import model_schema, structured

    return {"_transformer": OmegaConf.to_container(structured(model_schema("transformer"))),
            "_lstm": OmegaConf.to_container(structured(model_schema("lstm"))),
            "_schema": OmegaConf.to_container(structured(DataConfig))}


def _repeats(values: dict, defaults: dict, path: str) -> list[str]:
    out = []
    for key, value in values.items():
        if isinstance(value, dict) and isinstance(defaults.get(key), dict):
            out += _repeats(value, defaults[key], f"{path}.{key}")
        elif key in defaults and defaults[key] == value:
            out.append(f"{path}.{key}")
    return out


@pytest.mark.parametrize("group", ["model", "data"])
def test_model_and_data_yaml_only_override_their_schema(group):
    """One source of truth: a value in configs/model/*.yaml or configs/data/*.yaml differs from
    its schema's default (the dataclass field, cited there), and every file names a schema."""
    schemas = _schema_defaults()
    for path in sorted((CONFIG_DIR / group).glob("*.yaml")):
        raw = OmegaConf.to_container(OmegaConf.load(path))
        schema = next(d.split("@")[0] for d in raw.pop("defaults") if str(d).startswith("_"))
        values = raw.get("model", {}) if "trainer" in raw else raw  # lstm_*: @package _global_
        assert _repeats(values, schemas[schema], group) == [], path.name


@pytest.mark.parametrize("model", MODELS)
def test_cfg_job_shows_every_model_value(model):
    """The composed `model:` holds every schema field (what `--cfg job` prints)."""
    from dataclasses import fields

    from nmtbench.models.lstm import LSTMConfig
    from nmtbench.models.transformer import TransformerConfig
    from nmtbench.schema import TRAINING_KEYS

    m = compose_config([f"model={model}"]).model
    arch = TransformerConfig if m.name == "transformer" else LSTMConfig
    assert set(m) == set(TRAINING_KEYS) | {f.name for f in fields(arch)}
    assert set(m.optim) == {f.name for f in fields(OptimConfig)}


def test_mistyped_override_values_fail_while_composing():
    with pytest.raises(ConfigCompositionException, match="d_model"):
        compose_config(["model.d_model=abc"])
    with pytest.raises(ConfigCompositionException, match="max_tokens"):
        compose_config(["data.max_tokens=lots"])


def test_callbacks_default_lists_every_bleu_argument():
    """Every BleuCallback argument (e.g. the experiments' test_beam_size, length_penalty,
    max_len_b) is in callbacks/default.yaml, so it can be overridden without `+`."""
    import inspect

    from nmtbench.callbacks.bleu import BleuCallback

    params = set(inspect.signature(BleuCallback.__init__).parameters) - {"self"}
    listed = set(compose_config([]).callbacks.bleu) - {"_target_"}
    assert listed == params
    for experiment in EXPERIMENTS:
        raw = OmegaConf.load(CONFIG_DIR / "experiment" / f"{experiment}.yaml")
        assert set(OmegaConf.select(raw, "callbacks.bleu") or {}) <= listed, experiment
