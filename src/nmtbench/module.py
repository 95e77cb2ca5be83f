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

from nmtbench.models import build_model
from nmtbench.optim import build_optimizer, build_scheduler, load_optim_config


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
        ntok = ntok.clamp(min=1)
        bsz = batch["src"].size(0)
        self.log("train/loss", loss / ntok, prog_bar=True, batch_size=bsz)
        self.log("train/nll", nll / ntok, batch_size=bsz)
        return loss / ntok

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
    def configure_optimizers(self):
        optimizer = build_optimizer(self.optim_cfg, self.model.parameters())
        scheduler = build_scheduler(optimizer, self.optim_cfg, self.model.model_dim,
                                    epoch_fn=lambda: self.current_epoch)
        # "name": LearningRateMonitor (callbacks/default.yaml) logs the lr as `train/lr`.
        return {"optimizer": optimizer,
                "lr_scheduler": {"scheduler": scheduler, "interval": "step", "name": "train/lr"}}


__all__ = ["Seq2SeqModule", "label_smoothed_loss"]
