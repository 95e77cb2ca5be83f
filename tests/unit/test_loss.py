import math

import pytest
import torch
import torch.nn.functional as F

from nmtbench.loss import label_smoothed_loss


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


@pytest.mark.parametrize("vocab", [11, 3000])  # 3000: several row chunks on CPU
def test_label_smoothed_loss_values_and_gradients_equal_cross_entropy_over_real_tokens(vocab):
    """Loss, NLL and both gradients equal F.cross_entropy(label_smoothing=...) over non-pad tokens."""
    torch.manual_seed(1)
    logits = torch.randn(4, 200, vocab, dtype=torch.float64, requires_grad=True)
    target = torch.randint(1, vocab, (4, 200))
    target[1, 150:] = 0
    target[3, 7:] = 0
    real = target != 0
    loss, nll, ntok = label_smoothed_loss(logits, target, pad_id=0, epsilon=0.1)
    ref = F.cross_entropy(logits[real], target[real], label_smoothing=0.1, reduction="sum")
    ref_nll = F.cross_entropy(logits[real], target[real], reduction="sum")
    torch.testing.assert_close(loss, ref)
    torch.testing.assert_close(nll, ref_nll)
    assert ntok.item() == int(real.sum())
    # d(loss + 0.5 nll) / d logits, including zero gradient at padded positions
    (grad,) = torch.autograd.grad(loss + 0.5 * nll, logits)
    (ref_grad,) = torch.autograd.grad(ref + 0.5 * ref_nll, logits)
    torch.testing.assert_close(grad, ref_grad)
    assert grad[~real].abs().max().item() == 0.0


def test_label_smoothed_loss_of_bf16_logits_is_computed_in_fp32():
    torch.manual_seed(2)
    logits = torch.randn(2, 9, 50).to(torch.bfloat16).requires_grad_()
    target = torch.randint(1, 50, (2, 9))
    loss, nll, _ = label_smoothed_loss(logits, target, pad_id=0, epsilon=0.1)
    assert loss.dtype == torch.float32
    ref = F.cross_entropy(logits.float().flatten(0, 1), target.flatten(), label_smoothing=0.1, reduction="sum")
    torch.testing.assert_close(loss, ref)
    loss.backward()
    assert logits.grad.dtype == torch.bfloat16


DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA"))]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("compiled", [False, True])
def test_the_compiled_loss_equals_the_chunked_loss(device, dtype, compiled):
    """compile=true on CUDA trains with `compiled_loss_rows` (inductor); it gives the chunked
    loss's values and gradients, for fp32 and bf16 logits and for two batch shapes (dynamic).
    On CPU the graph is checked through aot_eager (inductor's C++ build is slow there)."""
    from nmtbench.loss import compiled_loss_rows, smoothed_cross_entropy_rows

    if compiled:
        rows_fn = compiled_loss_rows(backend="inductor" if device == "cuda" else "aot_eager")
    else:
        rows_fn = smoothed_cross_entropy_rows
    for shape in [(3, 7, 1000), (5, 4, 1000)]:
        g = torch.Generator().manual_seed(shape[0])
        base = (3 * torch.randn(*shape, generator=g)).to(device=device, dtype=dtype)
        target = torch.randint(1, shape[-1], shape[:2], generator=g).to(device)
        target[0, -2:] = 0  # padding
        results = []
        for fn in (None, rows_fn):
            logits = base.clone().requires_grad_()
            loss, nll, ntok = label_smoothed_loss(logits, target, pad_id=0, epsilon=0.1, rows_fn=fn)
            (grad,) = torch.autograd.grad(loss + 0.5 * nll, logits)
            results.append((loss, nll, ntok, grad))
        (loss_a, nll_a, ntok_a, grad_a), (loss_b, nll_b, ntok_b, grad_b) = results
        assert loss_b.dtype == torch.float32 and grad_b.dtype == dtype and ntok_a == ntok_b
        torch.testing.assert_close(loss_b, loss_a, rtol=1e-5, atol=1e-4)
        torch.testing.assert_close(nll_b, nll_a, rtol=1e-5, atol=1e-4)
        tol = dict(rtol=1e-2, atol=1e-3) if dtype == torch.bfloat16 else dict(rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(grad_b, grad_a, **tol)
        assert grad_b[0, -2:].abs().max().item() == 0.0  # no gradient at padding
