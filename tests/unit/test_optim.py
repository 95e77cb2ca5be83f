import math

import pytest
import torch

from nmtbench.errors import ConfigError
from nmtbench.optim import OptimConfig, ScheduledLR, build_optimizer, lr_at


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
    sched = ScheduledLR(opt, cfg, model_dim=64)
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
