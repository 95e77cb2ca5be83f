"""`model.loss_normalization`: the gradient of an optimizer step is the summed loss of all its
micro-batches divided by their total count of target tokens or sentences (one big batch),
not an average of per-micro-batch means. (Across DDP ranks: tests/integration/test_ddp.py.)"""

from __future__ import annotations

import copy

import lightning as L
import numpy as np
import pytest
import torch

from nmtbench.config import to_container
from nmtbench.data.batching import Collator
from nmtbench.loss import label_smoothed_loss
from nmtbench.module import Seq2SeqModule
from tests.conftest import TINY_TRANSFORMER, compose_config

VOCAB = 40


def tiny_module(normalization: str) -> Seq2SeqModule:
    cfg = compose_config([
        *TINY_TRANSFORMER, "model.dropout=0.0", "model.label_smoothing=0.1",
        f"model.loss_normalization={normalization}", "model.optim.name=sgd", "model.optim.lr=1.0",
        "model.optim.schedule=constant", "model.optim.warmup_steps=0",
    ])
    torch.manual_seed(0)
    return Seq2SeqModule({"model": to_container(cfg.model)}, vocab_size=VOCAB)


def micro_batches() -> list[dict[str, torch.Tensor]]:
    """Two micro-batches with different sentence and token counts (2 long vs 5 short pairs),
    so a mean of per-micro-batch means differs from the mean over the whole step."""
    rng = np.random.default_rng(0)
    collate = Collator(pad_id=0, bos_id=2, eos_id=3)

    def batch(n, length):
        return collate([(i, rng.integers(4, VOCAB, length), rng.integers(4, VOCAB, length + i % 3))
                        for i in range(n)])

    return [batch(2, 9), batch(5, 3)]


class GradProbe(L.Callback):
    """The gradient the optimizer is about to apply (after normalisation, before clipping)."""

    def __init__(self) -> None:
        self.grads: dict[str, torch.Tensor] | None = None

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        self.grads = {n: p.grad.detach().clone() for n, p in pl_module.model.named_parameters()}


def step_gradient(module: Seq2SeqModule, batches, accumulation: int) -> dict[str, torch.Tensor]:
    probe = GradProbe()
    trainer = L.Trainer(accelerator="cpu", devices=1, max_steps=1, accumulate_grad_batches=accumulation,
                        logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, callbacks=[probe], num_sanity_val_steps=0)
    trainer.fit(module, train_dataloaders=torch.utils.data.DataLoader(batches, batch_size=None))
    assert probe.grads is not None
    return probe.grads


def reference_gradient(module: Seq2SeqModule, batches, normalization: str) -> dict[str, torch.Tensor]:
    """sum over the step's micro-batches of the summed loss, divided by the step's total count."""
    model = copy.deepcopy(module.model)
    model.zero_grad()
    total, count = 0.0, 0
    for batch in batches:
        logits = model(batch["src"], batch["src_lens"], batch["tgt_in"])
        loss, _, ntok = label_smoothed_loss(logits, batch["tgt_out"], 0, 0.1)
        total = total + loss
        count += int(ntok) if normalization == "tokens" else batch["src"].size(0)
    (total / count).backward()
    return {n: p.grad.detach().clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("normalization", ["tokens", "sentences"])
def test_accumulated_step_has_the_gradient_of_one_big_batch(normalization):
    batches = micro_batches()
    module = tiny_module(normalization)
    expected = reference_gradient(module, batches, normalization)
    got = step_gradient(module, batches, accumulation=2)
    for name, grad in expected.items():
        torch.testing.assert_close(got[name], grad, rtol=1e-4, atol=1e-6, msg=name)


def test_sentence_normalisation_divides_by_sentences_not_tokens():
    batches = micro_batches()[:1]
    by_tokens = step_gradient(tiny_module("tokens"), batches, accumulation=1)
    by_sentences = step_gradient(tiny_module("sentences"), batches, accumulation=1)
    ntok = int(batches[0]["tgt_out"].ne(0).sum())
    nsent = batches[0]["src"].size(0)
    for name, grad in by_tokens.items():
        torch.testing.assert_close(by_sentences[name], grad * ntok / nsent, rtol=1e-4, atol=1e-6, msg=name)


def test_unknown_loss_normalization_is_a_config_error():
    from nmtbench.errors import ConfigError

    with pytest.raises(ConfigError, match="model.loss_normalization"):
        tiny_module("words")
