import math

import pytest
import torch

from nmtbench.errors import ConfigError
from nmtbench.optim import OptimConfig, build_optimizer, build_scheduler, lr_at


def test_inverse_sqrt_matches_paper_formula_at_key_steps():
    cfg = OptimConfig()  # d_model 512, warmup 4000: Vaswani et al. 2017, eq. 3
    assert lr_at(cfg, 1, model_dim=512) == pytest.approx(512**-0.5 * 4000**-1.5)
    assert lr_at(cfg, 4000, model_dim=512) == pytest.approx(512**-0.5 * 4000**-0.5)  # peak, ~6.99e-4
    assert lr_at(cfg, 4000, model_dim=512) == pytest.approx(6.9877e-4, rel=1e-4)
    assert lr_at(cfg, 16000, model_dim=512) == pytest.approx(512**-0.5 * 16000**-0.5)  # half the peak
    assert lr_at(cfg, 16000) == pytest.approx(lr_at(cfg, 4000) / 2)


def test_lr_scale_multiplies_schedule():
    assert lr_at(OptimConfig(lr=2.0), 100) == pytest.approx(2 * lr_at(OptimConfig(), 100))


def test_halving_schedule_counts_epochs_like_luong():
    cfg = OptimConfig(name="sgd", lr=1.0, schedule="halving", decay_start_epoch=9)
    lrs = [lr_at(cfg, 1, epoch=e) for e in range(12)]  # 0-based epochs 0..11 = paper epochs 1..12
    assert lrs[:8] == [1.0] * 8
    assert lrs[8:] == [0.5, 0.25, 0.125, 0.0625]


def test_scheduler_sets_lr_per_optimizer_step():
    p = torch.nn.Parameter(torch.zeros(1))
    cfg = OptimConfig(warmup_steps=10)
    opt = build_optimizer(cfg, [p])
    sched = build_scheduler(opt, cfg, model_dim=64)
    assert isinstance(sched, torch.optim.lr_scheduler.LambdaLR)
    seen = []
    for _ in range(20):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert seen[0] == pytest.approx(lr_at(cfg, 1, model_dim=64))
    assert max(seen) == pytest.approx(lr_at(cfg, 10, model_dim=64))
    assert seen.index(max(seen)) == 9
    assert not math.isclose(seen[-1], seen[9])


def test_bad_optimizer_name_is_rejected():
    with pytest.raises(ConfigError, match="model.optim.name"):
        OptimConfig(name="adamw2")


def _run(cfg, steps, steps_per_epoch, state=None, start=0):
    """(lrs used at steps start+1..steps, states) of an optimizer + scheduler; `state` resumes."""
    p = torch.nn.Parameter(torch.zeros(1))
    opt = build_optimizer(cfg, [p])
    step = {"n": start}
    sched = build_scheduler(opt, cfg, model_dim=64, epoch_fn=lambda: step["n"] // steps_per_epoch)
    if state is not None:
        opt.load_state_dict(state[0])
        sched.load_state_dict(state[1])
    lrs = []
    while step["n"] < steps:
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        step["n"] += 1
        sched.step()
    return lrs, (opt.state_dict(), sched.state_dict())


@pytest.mark.parametrize("cfg", [
    OptimConfig(warmup_steps=10),
    OptimConfig(name="sgd", lr=1.0, schedule="halving", decay_start_epoch=2),
    OptimConfig(name="adam", lr=1e-3, schedule="constant", warmup_steps=7),
])
def test_resumed_schedule_continues_exactly(cfg):
    """Stop after 13 steps, restore optimizer + scheduler state in fresh objects, go on:
    the lrs equal an uninterrupted run's, which equal lr_at at every step."""
    full, _ = _run(cfg, 30, steps_per_epoch=5)
    first, state = _run(cfg, 13, steps_per_epoch=5)
    rest, _ = _run(cfg, 30, steps_per_epoch=5, state=state, start=13)
    assert first + rest == full
    # step s (1-based) runs in epoch (s - 1) // 5
    assert full == pytest.approx([lr_at(cfg, s, (s - 1) // 5, 64) for s in range(1, 31)])


def test_lr_must_be_positive():
    with pytest.raises(ConfigError, match="model.optim.lr"):
        OptimConfig(lr=0.0)


def test_an_older_checkpoints_grad_clip_is_dropped_other_unknown_keys_fail(caplog):
    from nmtbench.schema import model_settings

    old = {"name": "lstm", "optim": {"name": "sgd", "lr": 1.0, "schedule": "halving", "grad_clip": 5.0}}
    with caplog.at_level("WARNING"):
        _, training = model_settings(old)
    assert (training.optim.name, training.optim.schedule) == ("sgd", "halving")
    assert "trainer.gradient_clip_val" in caplog.text
    with pytest.raises(ConfigError, match=r"model\.optim\.warmup"):
        model_settings({"name": "transformer", "optim": {"warmup": 10}})


@pytest.mark.parametrize("name", ["adam", "sgd"])
def test_cpu_optimizer_is_fused_and_updates_like_the_default(name):
    torch.manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(5, 3)), torch.nn.Parameter(torch.randn(3))]
    ref = [torch.nn.Parameter(p.detach().clone()) for p in params]
    cfg = OptimConfig(name=name, lr=0.1, schedule="constant", warmup_steps=0)
    opt = build_optimizer(cfg, params)
    assert opt.defaults["fused"] is True
    ref_opt = (torch.optim.Adam(ref, lr=0.1, betas=(0.9, 0.98), eps=1e-9, foreach=False) if name == "adam"
               else torch.optim.SGD(ref, lr=0.1, foreach=False))
    for _ in range(3):
        for p, r in zip(params, ref):
            p.grad = torch.full_like(p, 0.5) * p.detach()
            r.grad = torch.full_like(r, 0.5) * r.detach()
        opt.step()
        ref_opt.step()
    for p, r in zip(params, ref):
        torch.testing.assert_close(p, r)
