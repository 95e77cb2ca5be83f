"""Autograd for tensors reused at every step of a recurrence (the input-feeding decoder loop).

A weight matrix (or the encoder states attention reads) used at each of T steps gets T small
gradient contributions: plain autograd computes each as its own small product (for the
attention memory an outer product per sentence, which BLAS runs at ~1 GFLOP/s) and adds it
into a full-size buffer, T times. Here the steps only record the two factors of their
contribution on a `Tape`, and the gradient is formed once, after the last step's backward,
as one large product over all steps (cuDNN's RNN backward does the same for its weights).

    tape = Tape()
    w = tape.share(weight)              # identity; its backward forms the recorded gradient
    y = step_linear(x_t, w, tape)       # x_t @ weight^T, recording (dy, x_t) for the weight
    c, a = step_attention(q_t, keys, values, bias, tape_k, tape_v)  # keys is values: one tape

What it saves is measured in docs/performance.md.
"""

from __future__ import annotations

import torch
from torch import Tensor


class Tape:
    """Factor pairs (a_t, b_t) whose sum of products a_t^T b_t is one shared tensor's gradient."""

    def __init__(self) -> None:
        self.left: list[Tensor] = []
        self.right: list[Tensor] = []

    def record(self, a: Tensor, b: Tensor) -> None:
        self.left.append(a)
        self.right.append(b)

    def gradient(self, like: Tensor) -> Tensor:
        if not self.left:
            return torch.zeros_like(like)
        # 2-D (rows, out) x (rows, in) -> (out, in); 3-D (B, 1, S) x (B, 1, H) -> (B, S, H)
        dim = 0 if self.left[0].dim() == 2 else 1
        a, b = torch.cat(self.left, dim), torch.cat(self.right, dim)
        self.left, self.right = [], []
        return (a.t() @ b if a.dim() == 2 else torch.bmm(a.transpose(1, 2), b)).to(like.dtype)

    def share(self, x: Tensor) -> Tensor:
        return _Shared.apply(x, self) if torch.is_grad_enabled() and x.requires_grad else x


class _Shared(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, tape):
        ctx.tape = tape
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):  # steps give no gradient here (it is on the tape); others do
        return ctx.tape.gradient(grad).add_(grad), None


class _StepLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, tape):
        ctx.save_for_backward(x, weight)
        ctx.tape = tape
        return x @ weight.t()

    @staticmethod
    def backward(ctx, grad):
        # Under autocast the product ran in its lower precision (grad has that dtype) while x
        # and weight may be fp32: backward computes in grad's dtype, as autocast's own matmul
        # backward does, and returns x's gradient in x's dtype.
        x, weight = ctx.saved_tensors
        if ctx.needs_input_grad[1]:
            ctx.tape.record(grad, x.to(grad.dtype))
        return (grad @ weight.to(grad.dtype)).to(x.dtype) if ctx.needs_input_grad[0] else None, None, None


def step_linear(x: Tensor, weight: Tensor, tape: Tape) -> Tensor:
    """x (B, in) @ weight (out, in)^T, the weight's gradient deferred to `tape`."""
    if not (torch.is_grad_enabled() and weight.requires_grad):
        return x @ weight.t()
    return _StepLinear.apply(x, weight, tape)


class _StepAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, query, keys, values, bias, tape_k, tape_v):
        weights = torch.baddbmm(bias, query, keys.transpose(1, 2)).softmax(dim=-1)  # (B, 1, S)
        context = torch.bmm(weights, values)  # (B, 1, H)
        ctx.save_for_backward(query, keys, values, weights)
        ctx.tapes = (tape_k, tape_v)
        return context, weights

    @staticmethod
    def backward(ctx, g_context, g_weights):
        query, keys, values, weights = ctx.saved_tensors
        # Products in g_context's dtype (autocast's lower precision, or fp32 without autocast);
        # the softmax backward in at least fp32, as autocast runs softmax.
        dt = g_context.dtype
        keys, values, q = keys.to(dt), values.to(dt), query.to(dt)
        w = weights.to(torch.promote_types(weights.dtype, torch.float32))
        g_w = torch.bmm(g_context, values.transpose(1, 2)).to(w.dtype) + g_weights  # (B, 1, S)
        g_scores = (w * (g_w - (g_w * w).sum(-1, keepdim=True))).to(dt)  # softmax backward
        ctx.tapes[0].record(g_scores, q)  # d keys = sum_t g_scores_t^T q_t
        ctx.tapes[1].record(weights.to(dt), g_context)  # d values = sum_t a_t^T g_context_t
        return torch.bmm(g_scores, keys).to(query.dtype), None, None, None, None, None


def step_attention(query: Tensor, keys: Tensor, values: Tensor, bias: Tensor, tape_k: Tape,
                   tape_v: Tape) -> tuple[Tensor, Tensor]:
    """Dot-product attention of one step: query (B, 1, H), keys/values (B, S, H) shared by all
    steps (`Tape.share`), bias (B, 1, S) -> context (B, 1, H), weights (B, 1, S)."""
    if not (torch.is_grad_enabled() and (keys.requires_grad or values.requires_grad)):
        weights = torch.baddbmm(bias, query, keys.transpose(1, 2)).softmax(dim=-1)
        return torch.bmm(weights, values), weights
    return _StepAttention.apply(query, keys, values, bias, tape_k, tape_v)


def lstm_step(gates_in: Tensor, h: Tensor, c: Tensor) -> tuple[Tensor, Tensor]:
    """LSTM cell from its pre-activation gates (B, 4H) in torch.nn.LSTM's i, f, g, o order."""
    i, f, g, o = gates_in.chunk(4, dim=1)
    c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    return torch.sigmoid(o) * torch.tanh(c), c


__all__ = ["Tape", "lstm_step", "step_attention", "step_linear"]
