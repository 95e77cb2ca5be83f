"""The training loss: label-smoothed cross entropy summed over target tokens (Szegedy et al.
2016; Vaswani et al. 2017, section 5.4), and what an optimizer step's sum is divided by.

`label_smoothed_loss` is one autograd function over row chunks (`_SmoothedCrossEntropy`),
tuned for CPU caches: it never allocates an (N, V) tensor (docs/performance.md, "Loss").
`compiled_loss_rows` is the same sums for `torch.compile` (used on CUDA with compile=true).
"""

from __future__ import annotations

from typing import Any

import torch

# model.loss_normalization: what the summed loss of an optimizer step is divided by (its
# target tokens, or its sentences), counted over every micro-batch and rank of the step.
LOSS_NORMALIZATIONS = ("tokens", "sentences")


class _SmoothedCrossEntropy(torch.autograd.Function):
    """Summed label-smoothed cross entropy and NLL of rows of logits, in cache-sized row chunks.

    Forward reads the logits chunk by chunk through one reused scratch buffer and keeps only
    the per-row log-sum-exp. Backward overwrites the saved logits with their gradient
    w * (softmax(x) * (g_loss + g_nll) - onehot * ((1 - eps) g_loss + g_nll) - eps g_loss / V),
    chunk by chunk: the logits are consumed (read them before calling backward) and no
    (N, V) tensor is allocated. Autograd through log_softmax + gather + mean allocates four
    (N, V) tensors (log-probabilities, two gradients, their sum; plus a float copy of
    bf16/fp16 logits); a fresh tensor of that size costs page faults on every step
    (docs/performance.md).
    """

    @staticmethod
    def forward(ctx, logits, target, weight, epsilon: float):
        # logits (N, V) any float dtype; target (N,) long; weight (N,) float (1 token, 0 pad)
        rows = _rows_per_chunk(logits)
        lse, x_t, x_mean = [], [], []
        scratch = None
        for x, t in zip(logits.split(rows), target.split(rows)):
            if scratch is None:
                scratch = torch.empty(x.shape, dtype=_upcast(x[:0]).dtype, device=x.device)
            x = _upcast(x)  # fp32 view for fp32/fp64; one chunk's fp32 copy for bf16/fp16
            buf = scratch[: x.size(0)]
            m = x.amax(dim=-1)  # (n,)
            torch.sub(x, m[:, None], out=buf).exp_()
            lse.append(buf.sum(dim=-1).log_().add_(m))
            x_t.append(x.gather(1, t[:, None]).squeeze(1))
            x_mean.append(x.mean(dim=-1))
        lse, x_t, x_mean = torch.cat(lse), torch.cat(x_t), torch.cat(x_mean)  # (N,) each
        nll = ((lse - x_t) * weight).sum()
        smooth = ((lse - x_mean) * weight).sum()
        ctx.save_for_backward(logits, target, weight, lse)
        ctx.epsilon = epsilon
        return (1.0 - epsilon) * nll + epsilon * smooth, nll

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g_loss, g_nll):
        logits, target, weight, lse = ctx.saved_tensors
        eps, V = ctx.epsilon, logits.size(-1)
        scale = weight * (g_loss + g_nll)  # (N,) on softmax
        hit = weight * ((1.0 - eps) * g_loss + g_nll)  # (N,) on the target's one-hot
        uniform = weight * (eps / V * g_loss)  # (N,) on every entry
        rows = _rows_per_chunk(logits)
        for start in range(0, logits.size(0), rows):
            sl = slice(start, start + rows)
            x = logits[sl]
            g = _upcast(x)  # in place for fp32/fp64; bf16/fp16 through an fp32 chunk
            g.sub_(lse[sl, None]).exp_().mul_(scale[sl, None]).sub_(uniform[sl, None])
            g.scatter_add_(1, target[sl, None], -hit[sl, None])
            if g is not x:
                x.copy_(g)
        return logits, None, None, None


def _upcast(x: torch.Tensor) -> torch.Tensor:
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


def _rows_per_chunk(logits: torch.Tensor) -> int:
    # CPU: ~1 MB of fp32 per chunk (stays in cache); GPU: ~256 MB (a chunk is a few launches)
    budget = 1 << 18 if logits.device.type == "cpu" else 1 << 26
    return max(1, budget // max(1, logits.size(-1)))


def smoothed_cross_entropy_rows(
    logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor, epsilon: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """The sums `_SmoothedCrossEntropy` computes, written as plain fp32 log-softmax ops.

    logits (N, V), target (N,), weight (N,) (1 token, 0 pad). Eager, this materialises fp32
    (N, V) tensors; it exists for `torch.compile`, which fuses it into a few passes over the
    logits (`compiled_loss_rows`, used with compile=true on CUDA).
    """
    logp = torch.log_softmax(logits.float(), dim=-1)
    nll = -(logp.gather(1, target[:, None]).squeeze(1) * weight).sum()
    smooth = -(logp.mean(dim=-1) * weight).sum()
    return (1.0 - epsilon) * nll + epsilon * smooth, nll


def compiled_loss_rows(**compile_kwargs: Any):
    """`smoothed_cross_entropy_rows` through torch.compile (dynamic: the token count changes
    every batch): it reads the logits a few times instead of the eager loss's dozen (why it is
    used on CUDA: docs/performance.md, "Loss")."""
    return torch.compile(smoothed_cross_entropy_rows, dynamic=True, **compile_kwargs)


def label_smoothed_loss(
    logits: torch.Tensor, target: torch.Tensor, pad_id: int, epsilon: float, rows_fn=None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Summed label-smoothed cross entropy, summed NLL and the number of target tokens.

    logits (B, T, V), target (B, T). Padding positions are ignored. The smoothed target is
    (1 - eps) * one_hot + eps / V (uniform over the vocabulary), as in
    `torch.nn.functional.cross_entropy(label_smoothing=eps)` and Szegedy et al. 2016.
    Both sums are differentiable; the loss is computed in fp32 whatever the logits' dtype.
    Backward writes the gradient into the logits' memory (see `_SmoothedCrossEntropy`): read
    or copy the logits before calling backward if you need them afterwards.
    `rows_fn`: another implementation of the same sums over (N, V) rows, e.g.
    `compiled_loss_rows()` (then the logits are left as they are).
    """
    mask = target.ne(pad_id)  # (B, T)
    V = logits.size(-1)
    weight = mask.reshape(-1).to(_upcast(logits[:0]).dtype)
    fn = rows_fn if rows_fn is not None else _SmoothedCrossEntropy.apply
    loss, nll = fn(logits.reshape(-1, V), target.reshape(-1), weight, float(epsilon))
    return loss, nll, mask.sum()


__all__ = ["LOSS_NORMALIZATIONS", "compiled_loss_rows", "label_smoothed_loss", "smoothed_cross_entropy_rows"]
