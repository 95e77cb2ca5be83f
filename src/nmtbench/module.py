"""Seq2SeqModule: the one LightningModule every model trains with.

It owns what is shared by all architectures: the training step with the label-smoothed
cross-entropy (`nmtbench.loss`), the optimiser and LR schedule (`nmtbench.optim`),
validation loss/perplexity, and `translate` (greedy or beam search through
`nmtbench.decoding`). BLEU is computed by `nmtbench.callbacks.bleu`.
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_warn
from torchmetrics import SumMetric

from nmtbench.checkpoints import (
    RNG_KEY,
    TOKENIZER_KEY,
    check_same_model,
    checkpoint_tokenizer,
    gather_rng_states,
    set_rng_states,
    tokenizer_must_match,
)
from nmtbench.distributed import StepSync, all_reduce_sum
from nmtbench.errors import NonFiniteLossError
from nmtbench.loss import label_smoothed_loss
from nmtbench.models import build_model
from nmtbench.optim import build_optimizer, build_scheduler
from nmtbench.schema import model_settings


class Seq2SeqModule(L.LightningModule):
    """Training/evaluation logic around any model implementing the nmtbench interface.

    `cfg` is the full resolved run config (a plain dict); it is saved in every checkpoint,
    with the tokenizer (bytes + SHA-256, `on_save_checkpoint`), so the checkpoint alone
    rebuilds the model and translates.
    """

    def __init__(self, cfg: dict[str, Any], vocab_size: int, pad_id: int = 0, bos_id: int = 2, eos_id: int = 3):
        super().__init__()
        self.save_hyperparameters()
        arch, training = model_settings(cfg["model"])
        self.model = build_model(cfg["model"]["name"], arch, vocab_size=vocab_size, pad_id=pad_id)
        self.optim_cfg = training.optim
        self.label_smoothing = training.label_smoothing
        self.loss_normalization = training.loss_normalization
        # Tokens or sentences of the micro-batches of the current optimizer step (this rank).
        self._step_count: torch.Tensor | int = 0
        # The step's one agreement between ranks (nmtbench.distributed.StepSync): the count
        # above, and what callbacks register (non-finite flags, stop signals, a save due).
        self.step_sync = StepSync()
        self.step_sync.register("count", lambda: self._step_count)
        self.pad_id, self.bos_id, self.eos_id = pad_id, bos_id, eos_id
        # From the checkpoint (on_load_checkpoint) or the datamodule (setup); saved in checkpoints.
        self.tokenizer = None
        # The loss over logit rows: None = the eager chunked `_SmoothedCrossEntropy`;
        # `compile_in_place` sets `compiled_loss_rows()` on CUDA.
        self.loss_rows = None
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
        """Use `tokenizer` for decoding; it must be the one the weights were trained with."""
        vocab = self.hparams["vocab_size"]
        if tokenizer.vocab_size != vocab:
            raise ValueError(
                f"The tokenizer has {tokenizer.vocab_size} pieces but the model was built for {vocab}; "
                "rebuild the data cache or set data.vocab_size to match."
            )
        if self.tokenizer is not None:
            tokenizer_must_match(self.tokenizer, tokenizer, fix=(
                "Use the data settings (and cache) the run was trained with, or drop data.* overrides: "
                "the checkpoint carries its own tokenizer."))
        self.tokenizer = tokenizer

    # -- checkpoints: self-contained (tokenizer inside) and checked on load -------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self._trainer is not None and self.trainer.state.fn == "fit":
            # Never write non-finite weights (one pass per save; the per-step check is queued
            # on the device and read with the next step's agreement: callbacks/nonfinite.py).
            weights = [v for v in checkpoint.get("state_dict", {}).values() if v.is_floating_point()]
            bad = torch.zeros((), dtype=torch.float64, device=self.device)
            if weights:
                bad = (~torch.isfinite(torch.nn.utils.get_total_norm(weights, norm_type=float("inf")))).to(bad)
            # Every rank decides together (a sharded strategy gives each rank part of the weights).
            if all_reduce_sum(self.trainer, bad.reshape(1)).item() > 0:
                from nmtbench.callbacks.nonfinite import weights_message

                lr = self.trainer.optimizers[0].param_groups[0]["lr"] if self.trainer.optimizers else float("nan")
                raise NonFiniteLossError(weights_message(self.trainer.global_step - 1, lr))
        if self.tokenizer is not None:
            checkpoint[TOKENIZER_KEY] = {
                "type": "sentencepiece", "model": self.tokenizer.model_bytes,
                "sha256": self.tokenizer.sha256, "vocab_size": self.tokenizer.vocab_size,
            }
        if self._trainer is not None:  # every rank's RNG (dropout), so a resume continues it exactly
            checkpoint[RNG_KEY] = gather_rng_states(self.trainer.world_size)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Refuse a checkpoint of another model or vocabulary with one line naming both, and
        take the checkpoint's tokenizer (or check it against the data's, when resuming)."""
        trainer = self._trainer
        states = checkpoint.get(RNG_KEY)
        if trainer is not None and trainer.state.fn == "fit" and states:
            if len(states) == trainer.world_size:
                set_rng_states(states[trainer.global_rank])
            else:
                rank_zero_warn(f"The checkpoint holds the random state of {len(states)} process(es), this run "
                               f"has {trainer.world_size}: dropout does not continue exactly.")
        tokenizer = checkpoint_tokenizer(checkpoint)
        if tokenizer is not None and self.tokenizer is None:
            self.attach_tokenizer(tokenizer)
        elif tokenizer is not None:
            tokenizer_must_match(tokenizer, self.tokenizer)
        check_same_model(self.state_dict(), checkpoint, self.hparams)

    @property
    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.model.parameters())

    # -- steps -------------------------------------------------------------------------
    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.model(batch["src"], batch["src_lens"], batch["tgt_in"])

    def _loss(self, batch):
        logits = self(batch)
        return label_smoothed_loss(logits, batch["tgt_out"], self.pad_id, self.label_smoothing, self.loss_rows)

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
        """Run the closure (the step's last micro-batch), agree with the other ranks once
        (`step_sync`: the step's count, and the callbacks' flags), normalise the accumulated
        gradients, then step. Inside the closure, all of it comes before the
        `on_before_optimizer_step` hooks and gradient clipping, which therefore see the
        agreed flags and the normalised gradient."""

        def closure():
            out = optimizer_closure() if optimizer_closure is not None else None
            self.step_sync.run(self.trainer, self.device, step=self.trainer.global_step + 1)
            self.normalize_gradients(self.step_sync.values["count"])
            return out

        optimizer.step(closure=closure)

    def normalize_gradients(self, count: float) -> None:
        """Divide the accumulated gradients by the optimizer step's global token or sentence
        count (`count`: summed over micro-batches and ranks by `step_sync`).

        training_step returns the summed loss of its micro-batch. Lightning divides every
        micro-batch loss by `accumulate_grad_batches` (k) and DDP averages gradients over the W
        ranks, so the gradient here is sum(losses) / (k * W); multiplying by k * W / N, where N
        is this step's count summed over micro-batches and ranks, gives sum(losses) / N: the
        gradient of one big batch, whatever the split into ranks and micro-batches
        (`model.loss_normalization`: tokens = fairseq's and Vaswani et al.'s per-token loss;
        sentences = Luong et al. 2015 and Sutskever et al. 2014, "divided by 128" sentences).
        """
        self._step_count = 0
        scale = (self.trainer.accumulate_grad_batches * self.trainer.world_size) / max(float(count), 1.0)
        for p in self.parameters():
            if p.grad is not None:
                p.grad.mul_(scale)

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None) -> None:
        """`trainer.gradient_clip_val`: Lightning's clipping, except clipping by norm without a
        loss scaler (fp32, bf16), which is done here: Lightning's mixed-precision plugin refuses
        any clipping with a fused optimizer (the CPU default), although without a scaler there
        is nothing to unscale, and its FSDP plugin refuses clipping by norm (a sharded model
        clips with its own `clip_grad_norm_`, the norm over every shard)."""
        if not gradient_clip_val:
            return
        if (gradient_clip_algorithm or "norm") == "norm" and getattr(self.trainer.precision_plugin, "scaler", None) is None:
            sharded = getattr(self.trainer.strategy, "model", None)
            if hasattr(sharded, "clip_grad_norm_"):  # FSDP
                sharded.clip_grad_norm_(float(gradient_clip_val))
            else:
                torch.nn.utils.clip_grad_norm_(self.parameters(), float(gradient_clip_val))
            return
        self.clip_gradients(optimizer, gradient_clip_val=gradient_clip_val,
                            gradient_clip_algorithm=gradient_clip_algorithm)

    def configure_optimizers(self):
        optimizer = build_optimizer(self.optim_cfg, self.model.parameters())
        scheduler = build_scheduler(optimizer, self.optim_cfg, self.model.model_dim,
                                    epoch_fn=lambda: self.current_epoch)
        # "name": LearningRateMonitor (callbacks/default.yaml) logs the lr as `train/lr`.
        return {"optimizer": optimizer,
                "lr_scheduler": {"scheduler": scheduler, "interval": "step", "name": "train/lr"}}


__all__ = ["Seq2SeqModule"]
