"""The unigram plateau of `python -m benchmarks plateau`: the label-smoothed loss of the best
source-blind prediction."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from benchmarks.plateau import unigram_plateau


def test_uniform_targets_give_log_v():
    assert unigram_plateau(np.arange(8).repeat(5), 8, 0.1) == pytest.approx(math.log(8))


def test_plateau_is_the_smoothed_loss_of_predicting_the_unigram_distribution():
    """Equal to torch's label-smoothed cross entropy of the best constant prediction, and no
    other constant prediction does better."""
    rng = np.random.default_rng(0)
    V, eps = 6, 0.1
    ids = rng.choice(V, size=2000, p=[0.5, 0.2, 0.1, 0.1, 0.05, 0.05])
    plateau = unigram_plateau(ids, V, eps)
    p = np.bincount(ids, minlength=V) / len(ids)
    best = torch.tensor(np.log((1 - eps) * p + eps / V), dtype=torch.float64)
    targets = torch.as_tensor(ids)
    loss = torch.nn.functional.cross_entropy(best.expand(len(ids), V), targets, label_smoothing=eps)
    assert plateau == pytest.approx(loss.item(), rel=1e-9)
    worse = torch.log_softmax(best + 0.3 * torch.randn(V, dtype=torch.float64), -1)
    assert torch.nn.functional.cross_entropy(worse.expand(len(ids), V), targets, label_smoothing=eps) > loss
