import math

import pytest
import torch
import torch.nn.functional as F

from nmtbench.module import label_smoothed_loss


def test_label_smoothed_loss_matches_hand_computation():
    # One sentence, vocab 3, two real tokens and one pad (id 0).
    logits = torch.tensor([[[0.0, 1.0, 2.0], [1.0, 1.0, 1.0], [5.0, 0.0, 0.0]]])
    target = torch.tensor([[2, 1, 0]])
    eps = 0.1

    def logp(row, k):
        return row[k] - math.log(sum(math.exp(v) for v in row))

    rows = logits[0].tolist()
    expected = 0.0
    for row, k in [(rows[0], 2), (rows[1], 1)]:
        nll = -logp(row, k)
        uniform = -sum(logp(row, j) for j in range(3)) / 3
        expected += (1 - eps) * nll + eps * uniform
    loss, nll, ntok = label_smoothed_loss(logits, target, pad_id=0, epsilon=eps)
    assert ntok.item() == 2
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    assert nll.item() == pytest.approx(-logp(rows[0], 2) - logp(rows[1], 1), rel=1e-6)


def test_label_smoothed_loss_equals_torch_cross_entropy_and_ignores_pad():
    torch.manual_seed(0)
    logits = torch.randn(3, 5, 11)
    target = torch.randint(1, 11, (3, 5))
    target[0, 3:] = 0
    target[2, 1:] = 0
    loss, _, ntok = label_smoothed_loss(logits, target, pad_id=0, epsilon=0.1)
    ref = F.cross_entropy(logits.view(-1, 11), target.view(-1), ignore_index=0, label_smoothing=0.1,
                          reduction="sum")
    assert loss.item() == pytest.approx(ref.item(), rel=1e-5)
    assert ntok.item() == int((target != 0).sum())
    # Changing logits at padded positions changes nothing.
    logits2 = logits.clone()
    logits2[0, 3:] += 100.0
    assert label_smoothed_loss(logits2, target, 0, 0.1)[0].item() == pytest.approx(loss.item())
