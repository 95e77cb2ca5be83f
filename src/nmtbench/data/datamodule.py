"""`Seq2SeqDataModule`: the prepared cache as Lightning dataloaders (docs/interfaces.md)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from nmtbench.data.batching import BatchPlan, Collator, TokenBatchSampler, distributed_rank_world
from nmtbench.data.config import DataConfig, load_data_config
from nmtbench.data.prepare import PreparedData, load_prepared, prepare
from nmtbench.data.shards import TokenShard
from nmtbench.data.tokenizer import Tokenizer
from nmtbench.errors import DataError
from nmtbench.preemption import ignore_in_worker


class ShardDataset(Dataset):
    """Examples of one split: item i -> (i, src ids, tgt ids) (ids without BOS/EOS).

    `limit` keeps only the first `limit` examples (data.max_valid_sentences).
    """

    def __init__(self, directory: str, split: str, dtype: str, limit: int | None = None):
        self.split = split
        self.src = TokenShard(directory, split, "src", dtype)
        self.tgt = TokenShard(directory, split, "tgt", dtype)
        if len(self.src) != len(self.tgt):
            raise DataError(f"{directory}: {split} shards disagree; delete the directory to rebuild it.")
        self.size = len(self.src) if limit is None else min(limit, len(self.src))

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, i: int) -> tuple[int, np.ndarray, np.ndarray]:
        return i, self.src[i], self.tgt[i]

    def padded_lengths(self) -> np.ndarray:
        """(N,) max(len(src) + 1, len(tgt) + 1): the per-example batch cost."""
        return np.maximum(self.src.lengths, self.tgt.lengths)[: self.size] + 1


class ResumableDataLoader(DataLoader):
    """A DataLoader whose position is its batch sampler's.

    Lightning treats loaders with state_dict/load_state_dict as resumable (and otherwise
    warns on a mid-epoch resume). The state is the sampler's, the same one the DataModule
    saves; restoring it twice is harmless.
    """

    def state_dict(self) -> dict[str, Any]:
        return self.batch_sampler.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.batch_sampler.load_state_dict(state)


class Seq2SeqDataModule(L.LightningDataModule):
    """Training, validation and test data for one `data:` config section.

    prepare_data() builds or reuses the cache (rank zero); setup() opens the tokenizer and
    the memory-mapped shards on every rank. Training batches come from a token-budget,
    DDP-sharded `TokenBatchSampler` (Lightning must not replace it:
    `trainer.use_distributed_sampler=False`); its position is saved in checkpoints through
    `state_dict()` so a resumed run continues mid-epoch at the next unused batch.

    `plan` (`nmtbench.train.batch_plan`) sets the training micro-batch budget and the
    micro-batches per optimizer step; without one, a micro-batch is `data.max_tokens` and a
    step one micro-batch.
    """

    def __init__(self, cfg_data: DataConfig | Mapping[str, Any], seed: int = 0, plan: BatchPlan | None = None):
        super().__init__()
        self.cfg: DataConfig = load_data_config(cfg_data)
        self.seed = int(seed)
        self.plan = plan or BatchPlan(accumulation=1, micro_batch_tokens=self.cfg.max_tokens, world_size=1)
        self.prepared: PreparedData | None = None
        self.tokenizer: Tokenizer | None = None
        self.datasets: dict[str, ShardDataset] = {}
        self._raw: dict[str, tuple[list[str], list[str]]] = {}
        self.train_sampler: TokenBatchSampler | None = None
        self._pending_state: dict[str, Any] | None = None

    # -- Lightning hooks -----------------------------------------------------------------------

    def prepare_data(self) -> None:
        prepare(self.cfg)

    def setup(self, stage: str | None = None) -> None:
        if self.prepared is not None:
            return
        prepared = load_prepared(self.cfg)
        if prepared is None:
            raise DataError(
                f"No prepared data for this data config under {self.cfg.cache_dir}. Run "
                "prepare_data() first (Lightning does it on rank zero), or "
                "`python scripts/prepare_data.py` with the same overrides."
            )
        self.prepared = prepared
        self.tokenizer = Tokenizer(prepared.tokenizer_path)
        limits = {"valid": self.cfg.max_valid_sentences}
        self.datasets = {
            split: ShardDataset(prepared.dir, split, prepared.dtype, limits.get(split))
            for split in ("train", "valid", "test")
        }

    def train_dataloader(self) -> DataLoader:
        dataset = self._dataset("train")
        self.train_sampler = TokenBatchSampler(
            dataset.padded_lengths(), self.plan.micro_batch_tokens, seed=self.seed, shuffle=True,
            accumulation=self.plan.accumulation,
        )
        if self._pending_state is not None:
            self.train_sampler.load_state_dict(self._pending_state)
            self._pending_state = None
        return self._loader(dataset, self.train_sampler, ResumableDataLoader)

    def val_dataloader(self) -> DataLoader:
        return self._eval_loader("valid")

    def test_dataloader(self) -> DataLoader:
        return self._eval_loader("test")

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Count training batches as they reach training_step (the resume position)."""
        trainer = self.trainer
        if trainer is not None and trainer.training and self.train_sampler is not None:
            self.train_sampler.advance()
        return batch

    def state_dict(self) -> dict[str, Any]:
        if self.train_sampler is not None:
            return {"train_sampler": self.train_sampler.state_dict()}
        if self._pending_state is not None:
            return {"train_sampler": self._pending_state}
        return {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        state = state_dict.get("train_sampler")
        if state is None:
            return
        if self.train_sampler is not None:
            self.train_sampler.load_state_dict(state)
        else:  # Lightning restores the datamodule before it builds the dataloaders
            self._pending_state = dict(state)

    # -- for the LightningModule and callbacks -------------------------------------------------

    @property
    def vocab_size(self) -> int:
        return self._tokenizer().vocab_size

    @property
    def src_lang(self) -> str:
        return self.cfg.src_lang

    @property
    def tgt_lang(self) -> str:
        return self.cfg.tgt_lang

    def describe(self) -> str:
        """One line for results files: source, direction, sizes, vocabulary."""
        cfg = self.cfg
        if cfg.source == "toy":
            what = f"toy (seed {cfg.toy.seed})"
        elif cfg.source == "files":
            what = f"files ({cfg.dir}: {cfg.train_prefix}/{cfg.valid_prefix}/{cfg.test_prefix})"
        else:
            what = f"wmt14 ({cfg.hf_dataset} {cfg.hf_config})"
        text = f"{what} {cfg.src_lang}->{cfg.tgt_lang}, joint BPE {cfg.vocab_size}"
        if self.prepared is not None:
            sizes = self.prepared.meta["sizes"]
            text += f", pairs train/valid/test {sizes['train']}/{sizes['valid']}/{sizes['test']}"
        return text

    def raw_text(self, split: str) -> tuple[list[str], list[str]]:
        """(sources, references) of "valid" or "test": untokenized lines, where index i
        is the example with batch["ids"] == i (BLEU is computed against these)."""
        if split not in ("valid", "test"):
            raise ValueError(f"raw_text(split) takes 'valid' or 'test', got '{split}'")
        if split not in self._raw:
            dataset = self._dataset(split)
            self._raw[split] = tuple(
                _read_lines(os.path.join(self.prepared.dir, f"{split}.{side}.txt"))[: len(dataset)]
                for side in ("src", "tgt")
            )
        return self._raw[split]

    # -- helpers -------------------------------------------------------------------------------

    def _tokenizer(self) -> Tokenizer:
        if self.tokenizer is None:
            self.setup()
        return self.tokenizer

    def _dataset(self, split: str) -> ShardDataset:
        if not self.datasets:
            self.setup()
        return self.datasets[split]

    def _eval_loader(self, split: str) -> DataLoader:
        dataset = self._dataset(split)
        rank, world_size = distributed_rank_world()
        sampler = TokenBatchSampler(
            dataset.padded_lengths(), self.cfg.eval_max_tokens, shuffle=False,
            rank=rank, world_size=world_size,
        )
        return self._loader(dataset, sampler)

    def _loader(
        self, dataset: ShardDataset, sampler: TokenBatchSampler, cls: type[DataLoader] = DataLoader
    ) -> DataLoader:
        tok = self._tokenizer()
        workers = self.cfg.num_workers
        return cls(
            dataset,
            batch_sampler=sampler,
            collate_fn=Collator(tok.pad_id, tok.bos_id, tok.eos_id),
            num_workers=workers,
            pin_memory=torch.cuda.is_available(),
            persistent_workers=workers > 0,
            # Workers ignore SIGTERM/SIGUSR1: the main process acts on them (nmtbench.preemption).
            worker_init_fn=ignore_in_worker if workers > 0 else None,
            # Its own generator: creating an iterator then leaves the global RNG (dropout) alone,
            # so a resumed run's random stream matches an uninterrupted one's.
            generator=torch.Generator().manual_seed(self.seed),
        )


def _read_lines(path: str) -> list[str]:
    with open(path, encoding="utf-8", newline="\n") as f:
        text = f.read()
    lines = text.split("\n")
    return lines[:-1] if lines and lines[-1] == "" else lines
