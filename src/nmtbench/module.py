"""Seq2SeqModule: the one LightningModule every model trains with.

It owns what is shared by all architectures: the label-smoothed cross-entropy, the
optimiser and LR schedule, validation loss/perplexity, and `translate` (greedy or beam
search through `nmtbench.decoding`). BLEU is computed by `nmtbench.callbacks.bleu`.
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torchmetrics import SumMetric

from nmtbench.errors import ConfigError
from nmtbench.models import build_model
from nmtbench.optim import build_optimizer, build_scheduler, load_optim_config

# model.loss_normalization: what the summed loss of an optimizer step is divided by.
LOSS_NORMALIZATIONS = ("tokens", "sentences")


def label_smoothed_loss(
    logits: torch.Tensor, target: torch.Tensor, pad_id: int, epsilon: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Summed label-smoothed cross entropy, summed NLL and the number of target tokens.

    logits (B, T, V), target (B, T). Padding positions are ignored. The smoothed target is
    (1 - eps) * one_hot + eps / V (uniform over the vocabulary), as in
    `torch.nn.functional.cross_entropy(label_smoothing=eps)` and Szegedy et al. 2016.
    """
    lprobs = F.log_softmax(logits.float(), dim=-1)  # (B, T, V)
    mask = target.ne(pad_id)  # (B, T)
    nll = -lprobs.gather(-1, target.unsqueeze(-1)).squeeze(-1)  # (B, T)
    smooth = -lprobs.mean(dim=-1)  # (B, T)
    nll = nll.masked_fill(~mask, 0.0).sum()
    smooth = smooth.masked_fill(~mask, 0.0).sum()
    loss = (1.0 - epsilon) * nll + epsilon * smooth
    return loss, nll, mask.sum()


class Seq2SeqModule(L.LightningModule):
    """Training/evaluation logic around any model implementing the nmtbench interface.

    `cfg` is the full resolved run config (a plain dict); it is saved in every checkpoint
    so evaluation can rebuild the data, tokenizer and model from the checkpoint alone.
    """

    def __init__(self, cfg: dict[str, Any], vocab_size: int, pad_id: int = 0, bos_id: int = 2, eos_id: int = 3):
        super().__init__()
        self.save_hyperparameters()
        model_cfg = cfg["model"]
        self.model = build_model(model_cfg, vocab_size=vocab_size, pad_id=pad_id)
        self.optim_cfg = load_optim_config(model_cfg.get("optim"))
        self.label_smoothing = float(model_cfg.get("label_smoothing", 0.0))
        self.loss_normalization = str(model_cfg.get("loss_normalization", "tokens"))
        if self.loss_normalization not in LOSS_NORMALIZATIONS:
            raise ConfigError(
                f"model.loss_normalization must be one of {', '.join(LOSS_NORMALIZATIONS)}, "
                f"got '{self.loss_normalization}'."
            )
        # Tokens or sentences of the micro-batches of the current optimizer step (this rank).
        self._step_count: torch.Tensor | int = 0
        self.pad_id, self.bos_id, self.eos_id = pad_id, bos_id, eos_id
        self.tokenizer = None  # attached in setup() from the datamodule (not saved)
        # Token-weighted validation loss, reduced across ranks by torchmetrics.
        self.val_loss_sum = SumMetric()
        self.val_nll_sum = SumMetric()
        self.val_tokens = SumMetric()

    # -- setup -------------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        dm = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        if dm is not None and getattr(dm, "tokenizer", None) is not None:
            self.attach_tokenizer(dm.tokenizer)

    def attach_tokenizer(self, tokenizer) -> None:
        vocab = self.hparams["vocab_size"]
        if tokenizer.vocab_size != vocab:
            raise ValueError(
                f"The tokenizer has {tokenizer.vocab_size} pieces but the model was built for {vocab}; "
                "rebuild the data cache or set data.vocab_size to match."
            )
        self.tokenizer = tokenizer

    @property
    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.model.parameters())

    # -- steps -------------------------------------------------------------------------
    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.model(batch["src"], batch["src_lens"], batch["tgt_in"])

    def _loss(self, batch):
        logits = self(batch)
        return label_smoothed_loss(logits, batch["tgt_out"], self.pad_id, self.label_smoothing)

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss, nll, ntok = self._loss(batch)
        bsz = batch["src"].size(0)
        per_token = ntok.clamp(min=1)
        self.log("train/loss", loss.detach() / per_token, prog_bar=True, batch_size=bsz)
        self.log("train/nll", nll.detach() / per_token, batch_size=bsz)
        # The summed loss is returned; the gradients are divided by the step's global count of
        # tokens or sentences in optimizer_step (see normalize_gradients).
        self._step_count = self._step_count + (ntok.detach() if self.loss_normalization == "tokens" else bsz)
        return loss

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int, dataloader_idx: int = 0) -> None:
        loss, nll, ntok = self._loss(batch)
        self.val_loss_sum.update(loss.detach())
        self.val_nll_sum.update(nll.detach())
        self.val_tokens.update(ntok.float())

    def on_validation_epoch_end(self) -> None:
        ntok = self.val_tokens.compute().clamp(min=1)
        loss = self.val_loss_sum.compute() / ntok
        nll = self.val_nll_sum.compute() / ntok
        # Already reduced across ranks by torchmetrics: every rank logs the same value.
        self.log("val/loss", loss)
        self.log("val/nll", nll)
        self.log("val/ppl", torch.exp(nll.clamp(max=50.0)))
        for metric in (self.val_loss_sum, self.val_nll_sum, self.val_tokens):
            metric.reset()

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int, dataloader_idx: int = 0) -> None:
        # Decoding and scoring of the test split happen in BleuCallback.
        return None

    # -- decoding ----------------------------------------------------------------------
    @torch.no_grad()
    def translate_ids(self, batch: dict[str, torch.Tensor], beam_size: int = 1, length_penalty: float = 0.6,
                      max_len_b: int = 50) -> list[list[int]]:
        from nmtbench.decoding import beam_search, greedy_search

        was_training = self.model.training
        self.model.eval()
        try:
            ids = dict(bos_id=self.bos_id, eos_id=self.eos_id, pad_id=self.pad_id, max_len_b=max_len_b)
            if beam_size <= 1:
                return greedy_search(self.model, batch["src"], batch["src_lens"], **ids)
            return beam_search(self.model, batch["src"], batch["src_lens"], beam_size=beam_size,
                               length_penalty=length_penalty, **ids)
        finally:
            self.model.train(was_training)

    def translate(self, batch: dict[str, torch.Tensor], beam_size: int = 1, length_penalty: float = 0.6,
                  max_len_b: int = 50) -> list[str]:
        """Detokenized translations of `batch["src"]`, in batch order."""
        if self.tokenizer is None:
            raise RuntimeError("Seq2SeqModule.translate needs a tokenizer: call attach_tokenizer() first.")
        return [self.tokenizer.decode(h) for h in self.translate_ids(batch, beam_size, length_penalty, max_len_b)]

    # -- optimisation ------------------------------------------------------------------
    def optimizer_step(self, epoch, batch_idx, optimizer, optimizer_closure=None) -> None:
        """Run the closure (the step's last micro-batch), normalise the accumulated gradients,
        then step. Normalising inside the closure puts it before the `on_before_optimizer_step`
        hooks and gradient clipping, which therefore see the normalised gradient."""

        def closure():
            out = optimizer_closure() if optimizer_closure is not None else None
            self.normalize_gradients()
            return out

        optimizer.step(closure=closure)

    def normalize_gradients(self) -> None:
        """Divide the accumulated gradients by the optimizer step's global token or sentence count.

        training_step returns the summed loss of its micro-batch. Lightning divides every
        micro-batch loss by `accumulate_grad_batches` (k) and DDP averages gradients over the W
        ranks, so the gradient here is sum(losses) / (k * W); multiplying by k * W / N, where N
        is this step's count summed over micro-batches and ranks, gives sum(losses) / N: the
        gradient of one big batch, whatever the split into ranks and micro-batches
        (`model.loss_normalization`: tokens = fairseq's and Vaswani et al.'s per-token loss;
        sentences = Luong et al. 2015 and Sutskever et al. 2014, "divided by 128" sentences).
        """
        count = torch.as_tensor(self._step_count, device=self.device, dtype=torch.float64)
        self._step_count = 0
        if self.trainer.world_size > 1:
            count = self.trainer.strategy.reduce(count, reduce_op="sum")
        # A 0-d tensor: no host-device synchronisation on GPU.
        scale = (self.trainer.accumulate_grad_batches * self.trainer.world_size) / count.clamp(min=1.0)
        for p in self.parameters():
            if p.grad is not None:
                p.grad.mul_(scale.to(p.grad.dtype))

    def configure_optimizers(self):
        optimizer = build_optimizer(self.optim_cfg, self.model.parameters())
        scheduler = build_scheduler(optimizer, self.optim_cfg, self.model.model_dim,
                                    epoch_fn=lambda: self.current_epoch)
        # "name": LearningRateMonitor (callbacks/default.yaml) logs the lr as `train/lr`.
        return {"optimizer": optimizer,
                "lr_scheduler": {"scheduler": scheduler, "interval": "step", "name": "train/lr"}}


__all__ = ["Seq2SeqModule", "label_smoothed_loss"]
