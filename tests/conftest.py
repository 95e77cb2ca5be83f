"""Shared fixtures: compose the real configs and shrink them for CPU tests."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig

from nmtbench.schema import register_configs

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

# Tests use tiny tensors: one intra-op thread avoids thread wake-up costs that dominate on a
# small (or shared) CPU. Subprocess tests inherit it through the environment.
os.environ.setdefault("OMP_NUM_THREADS", "1")
torch.set_num_threads(1)

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"


# A one-layer, 32-wide Transformer: trains a few steps in a second on CPU.
TINY_TRANSFORMER = [
    "model=transformer",
    "model.d_model=32",
    "model.num_heads=2",
    "model.d_ff=64",
    "model.num_encoder_layers=1",
    "model.num_decoder_layers=1",
]


def compose_config(overrides: list[str] | None = None, config_name: str = "train") -> DictConfig:
    """Compose configs/<config_name>.yaml exactly as the scripts do (without running Hydra)."""
    GlobalHydra.instance().clear()
    register_configs()  # the structured-config schemas configs/model and configs/data build on
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose(config_name=config_name, overrides=list(overrides or []))


def tiny_train_config(tmp_path: Path, overrides: list[str] | None = None) -> DictConfig:
    """The smoke experiment shrunk to seconds: tiny toy data, a tiny model, a few steps."""
    base = [
        "experiment=smoke",
        f"paths.root_dir={tmp_path}",
        f"paths.output_dir={tmp_path / 'run'}",
        "data.toy.num_train=600",
        "data.toy.num_valid=40",
        "data.toy.num_test=40",
        "data.vocab_size=300",
        "data.max_tokens=600",
        "trainer.max_steps=12",
        "trainer.max_time=null",
        "trainer.val_check_interval=6",
        "trainer.log_every_n_steps=2",
        "trainer.enable_progress_bar=false",
        "callbacks.progress_bar=null",
        "callbacks.throughput.cpu_benchmark_seconds=0.1",
    ]
    return compose_config(base + list(overrides or []))


@pytest.fixture
def tiny_cfg(tmp_path):
    return lambda overrides=None: tiny_train_config(tmp_path, overrides)


# Rendezvous variables a DDP run leaves behind. Lightning's spawn launcher writes MASTER_PORT
# into this process's os.environ (lightning/pytorch/strategies/launchers/multiprocessing.py),
# so without a reset every later DDP run in the session, in-process or a subprocess inheriting
# the environment, rendezvous on that one port, and a process of an earlier test still
# holding it would make the next run wait for clients that never come.
_RENDEZVOUS_ENV = ("MASTER_ADDR", "MASTER_PORT", "WORLD_SIZE", "RANK", "LOCAL_RANK", "NODE_RANK",
                   "GROUP_RANK", "LOCAL_WORLD_SIZE")


@pytest.fixture(autouse=True)
def _fresh_rendezvous():
    """Each test starts with the rendezvous variables the session started with (a free port each)."""
    before = {k: os.environ.get(k) for k in _RENDEZVOUS_ENV}
    yield
    for key, value in before.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


# The fault table (tests/faults/table.py): rows arrive in the tests' reports, from this process
# or from pytest-xdist's workers; this (root) conftest is the one the controller loads.
_FAULT_ROWS: list = []


def pytest_runtest_logreport(report):
    from tests.faults.table import rows_of

    _FAULT_ROWS.extend(rows_of(report))


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if _FAULT_ROWS:
        from tests.faults.table import render

        terminalreporter.section("fault table (tests/faults)")
        terminalreporter.write_line(render(_FAULT_ROWS))
