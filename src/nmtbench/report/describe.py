"""Words for one run's results.json: its model family, architecture, hardware, test set."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from nmtbench.report.rows import Row


def model_family(results: dict[str, Any], published: Sequence[Row], families: dict[str, str]) -> str:
    """Which family's rows a run sits with: the published row naming its experiment, else the
    Hydra model choice, else the model config (lstm + attention none = seq2seq)."""
    experiment = results.get("experiment")
    for row in published:
        if experiment and experiment in row.experiments:
            return row.family
    variant = results.get("model_variant")
    if variant in families:
        return variant
    cfg = results.get("model_config") or {}
    if results.get("model_name") == "lstm":
        return "lstm_seq2seq" if cfg.get("attention") == "none" else "lstm_attention"
    if results.get("model_name") == "transformer":
        return "transformer_big" if (cfg.get("d_model") or 0) >= 1024 else "transformer"
    return "other"


def describe_model(results: dict[str, Any]) -> str:
    """Short architecture summary from model_config, e.g. 'transformer 3+3 layers, d_model 256'."""
    cfg = results.get("model_config") or {}
    name = results.get("model_name", "?")
    if name == "transformer" and "d_model" in cfg:
        return (f"transformer {cfg.get('num_encoder_layers')}+{cfg.get('num_decoder_layers')} layers, "
                f"d_model {cfg['d_model']}")
    if name == "lstm" and "hidden_size" in cfg:
        attention = cfg.get("attention", "?")
        what = "no attention" if attention == "none" else f"{attention}/{cfg.get('attention_score', '?')} attention"
        return f"LSTM {cfg.get('num_layers')} x {cfg['hidden_size']}, {what}"
    return str(name)


def describe_hardware(results: dict[str, Any]) -> str:
    """'8 x NVIDIA H100 80GB HBM3, bf16-mixed' or '1 x CPU, 32-true'."""
    names = results.get("device_names") or [results.get("accelerator", "?")]
    counts = Counter("CPU" if n == "cpu" else n for n in names)
    devices = " + ".join(f"{c} x {n}" for n, c in counts.items())
    nodes = results.get("num_nodes") or 1
    where = f" on {nodes} nodes" if nodes > 1 else ""
    return f"{devices}{where}, {results.get('precision', '?')}"


def describe_test_set(results: dict[str, Any], config: dict[str, Any]) -> str | None:
    """newstest2014 for WMT14 runs, <data dir name>/<test prefix> for files, toy for toy."""
    source = results.get("data_source")
    data = config.get("data") or {}
    if source == "wmt14":
        name = "newstest2014"
    elif source == "files":
        directory = data.get("dir")
        prefix = data.get("test_prefix", "test")
        name = f"{Path(directory).name}/{prefix}" if directory else prefix
    elif source == "toy":
        name = "toy test split"
    else:
        name = source
    n = results.get("test_num_sentences")
    return f"{name} ({n} sent.)" if (name and n) else name
