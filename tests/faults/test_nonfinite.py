"""A NaN/inf loss is detected with its step: skipped (counted; stop after K in a row) or
stopped at once; non-finite weights always stop the run before they are checkpointed."""

from __future__ import annotations

import json
import math

import pytest
import torch

from nmtbench.errors import NonFiniteLossError
from nmtbench.train import train

from ..conftest import TINY_TRANSFORMER, tiny_train_config
from .probe import probe_overrides, read_records


def nan_run(tmp_path, *extra, **probe):
    overrides = [*TINY_TRANSFORMER, "test=false", "trainer.max_steps=6", "trainer.val_check_interval=2",
                 "data.toy.num_valid=8", "data.toy.num_test=8", "callbacks.bleu.max_len_b=4",
                 *probe_overrides(tmp_path / "probe", **probe), *extra]
    return tiny_train_config(tmp_path, overrides)


def saved_weights_finite(tmp_path) -> dict[str, bool]:
    out = {}
    for path in sorted((tmp_path / "run" / "checkpoints").glob("*.ckpt")):
        state = torch.load(path, map_location="cpu", weights_only=False)["state_dict"]
        out[path.name] = all(bool(torch.isfinite(v).all()) for v in state.values() if v.is_floating_point())
    return out


@pytest.mark.slow
def test_skip_drops_the_update_counts_it_and_training_goes_on(tmp_path, fault_table):
    train(nan_run(tmp_path, nan_steps=[2]))
    records = {r["step"]: r for r in read_records(tmp_path / "probe")}
    assert math.isnan(records[3]["loss"])
    assert records[3]["weights"] == records[2]["weights"] != records[4]["weights"]  # no update at all
    end = json.loads((tmp_path / "probe" / "end_rank0.json").read_text())
    assert end["nonfinite_skipped_batches"] == 1 and end["skipped_steps"] == [2]
    assert end["global_step"] == 6 and end["finite_weights"]
    assert all(saved_weights_finite(tmp_path).values())
    fault_table.add("NaN loss, action=skip", True, 0, "update of step 2 dropped and counted; run finished")


@pytest.mark.slow
def test_skip_stops_after_max_consecutive(tmp_path):
    cfg = nan_run(tmp_path, "callbacks.nonfinite.max_consecutive=2", nan_steps=[3, 4, 5])
    with pytest.raises(NonFiniteLossError, match=r"at step 5 \(lr [0-9.e-]+\): 3 non-finite steps in a row"):
        train(cfg)
    assert all(saved_weights_finite(tmp_path).values())


@pytest.mark.slow
def test_stop_names_the_step_and_the_learning_rate(tmp_path, fault_table):
    cfg = nan_run(tmp_path, "callbacks.nonfinite.action=stop", nan_steps=[3])
    with pytest.raises(NonFiniteLossError, match=r"Non-finite training loss .* at step 3 \(lr [0-9.e-]+\)") as err:
        train(cfg)
    lr = read_records(tmp_path / "probe")[-1]["lr"]
    assert f"(lr {lr:.3g})" in str(err.value) and "\n" not in str(err.value)
    assert saved_weights_finite(tmp_path) and all(saved_weights_finite(tmp_path).values())
    fault_table.add("NaN loss, action=stop", True, 0, "stopped before the update; message names step and lr")


@pytest.mark.slow
def test_non_finite_weights_stop_before_any_checkpoint_of_them(tmp_path, fault_table):
    # A NaN learning rate at step 2: finite loss and gradients, NaN weights after the update.
    cfg = nan_run(tmp_path, "callbacks.resume_checkpoint.every_n_steps=1", nan_lr_step=2)
    with pytest.raises(NonFiniteLossError, match=r"weights became non-finite in the update of step 2"):
        train(cfg)
    saved = saved_weights_finite(tmp_path)
    assert saved and all(saved.values()), saved
    last = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert last["global_step"] == 2  # the periodic save of step 3 never happened
    fault_table.add("weights turn NaN (finite gradients)", True, 0, "stopped; last.ckpt keeps step 2's finite weights")
