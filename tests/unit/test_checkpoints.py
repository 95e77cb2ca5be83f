"""Checkpoint averaging (nmtbench.checkpoints, scripts/average_checkpoints.py)."""

from __future__ import annotations

import pytest
import torch

from nmtbench.checkpoints import average_checkpoints, last_checkpoints, save_averaged


def fake_ckpt(path, step: int, scale: float, extra: dict | None = None):
    torch.manual_seed(0)
    state = {
        "model.w": torch.randn(3, 4) * scale,
        "model.b": torch.full((4,), scale),
        "model.counter": torch.tensor(7),  # a non-floating buffer: must be equal, copied
    }
    ckpt = {"state_dict": state, "global_step": step, "hyper_parameters": {"cfg": {"step": step}},
            "optimizer_states": [{"x": 1}], "pytorch-lightning_version": "2.6.0", **(extra or {})}
    torch.save(ckpt, path)
    return ckpt


def test_average_of_identical_checkpoints_reproduces_the_weights(tmp_path):
    paths = [tmp_path / f"step{i}.ckpt" for i in range(5)]
    ref = [fake_ckpt(p, step=i, scale=1.0) for i, p in enumerate(paths)][-1]
    avg = average_checkpoints(paths)
    for k, v in ref["state_dict"].items():
        assert torch.equal(avg["state_dict"][k], v), k
        assert avg["state_dict"][k].dtype == v.dtype
    assert avg["global_step"] == 4 and avg["hyper_parameters"] == {"cfg": {"step": 4}}
    assert "optimizer_states" not in avg
    assert avg["averaged_from"] == [str(p) for p in paths]


def test_average_is_the_mean(tmp_path):
    paths = [tmp_path / f"step{i}.ckpt" for i in range(3)]
    for i, p in enumerate(paths):
        fake_ckpt(p, step=i, scale=float(i + 1))  # scales 1, 2, 3 -> mean 2
    avg = average_checkpoints(paths)["state_dict"]
    torch.testing.assert_close(avg["model.b"], torch.full((4,), 2.0))
    torch.manual_seed(0)
    torch.testing.assert_close(avg["model.w"], torch.randn(3, 4) * 2.0)


def test_mismatched_checkpoints_are_rejected(tmp_path):
    fake_ckpt(tmp_path / "a.ckpt", 1, 1.0)
    torch.save({"state_dict": {"model.w": torch.zeros(3, 4)}, "global_step": 2}, tmp_path / "b.ckpt")
    with pytest.raises(ValueError, match="different parameters"):
        average_checkpoints([tmp_path / "a.ckpt", tmp_path / "b.ckpt"])


def test_last_checkpoints_by_step_dedups_last_and_skips_averages(tmp_path):
    ckpts = tmp_path / "run" / "checkpoints"
    ckpts.mkdir(parents=True)
    for step in (100, 200, 300, 400):
        fake_ckpt(ckpts / f"step{step:07d}-bleu1.00.ckpt", step, 1.0)
    fake_ckpt(ckpts / "last.ckpt", 400, 1.0)
    save_averaged([ckpts / "last.ckpt"], ckpts / "averaged.ckpt")
    picked = last_checkpoints(tmp_path / "run", n=3)
    assert [p.name for p in picked] == [f"step{s:07d}-bleu1.00.ckpt" for s in (200, 300, 400)]


def test_average_checkpoints_script(tmp_path):
    from importlib import util
    from pathlib import Path

    script = Path(__file__).resolve().parents[2] / "scripts" / "average_checkpoints.py"
    spec = util.spec_from_file_location("average_checkpoints", script)
    mod = util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    for step in (1, 2, 3):
        fake_ckpt(tmp_path / f"step{step}.ckpt", step, float(step))
    assert mod.main([str(tmp_path), "-n", "2"]) == 0
    avg = torch.load(tmp_path / "averaged.ckpt", weights_only=False)
    torch.testing.assert_close(avg["state_dict"]["model.b"], torch.full((4,), 2.5))
