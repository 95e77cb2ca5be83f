"""Token-budget batching (length-bucketed, seeded, DDP-sharded) and the collator.

Budget: a batch of B examples costs B * max(padded length) tokens, where an example's
padded length is max(len(src) + 1, len(tgt) + 1) (EOS / BOS included): both the (B, S)
source and the (B, T) target tensors stay within `max_tokens`. One example over the budget
still forms a batch of its own (never dropped), with a warning.

Training (`TokenBatchSampler(shuffle=True)`), per epoch, deterministic in (seed, epoch):
  1. shuffle the examples, then stable-sort them by length (ties stay random);
  2. pack consecutive examples greedily into batches under the budget;
  3. if the number of batches is not a multiple of W x k (world size x micro-batches per
     optimizer step, `BatchPlan`), split the largest batches in two until it is (a split
     batch stays under the budget; nothing is dropped or repeated), so every rank gets the
     same number of batches (DDP never waits) and every epoch is a whole number of optimizer
     steps: no accumulation window straddles an epoch boundary or comes up short, so
     Lightning's micro-batch counters sit on an optimizer-step boundary every k batches and
     validation, checkpoints and a resume fall between steps, never inside one;
  4. shuffle the batch order; rank r takes batches r, r + W, r + 2W, ...
Every example appears exactly once per epoch across the ranks.

Evaluation (`shuffle=False`): examples sorted by length, packed with the evaluation
budget, batches dealt round-robin to ranks (balanced the same way); `ids` in each batch
restore the original order.

Epochs: Lightning calls `set_epoch` on `dataloader.batch_sampler.sampler` (not on the batch
sampler), so `self.sampler` is a small object that forwards it.

Resuming mid-epoch: `consumed` counts the batches of the current epoch that training has
really used. The sampler cannot count them itself, because the DataLoader (and Lightning's
fetcher) pull batches ahead of training; the DataModule advances it from
`on_after_batch_transfer`, i.e. when a batch reaches `training_step`.
`state_dict()` saves (epoch, consumed); after `load_state_dict()` the next iteration of
that epoch starts at the first batch not yet used. `__len__` stays the full epoch length
(Lightning's batch_idx continues from the checkpoint). A state saved with another world
size, seed, budget or dataset restarts its epoch from the beginning (with a warning).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from nmtbench.errors import DataError


@dataclass(frozen=True)
class BatchPlan:
    """How one optimizer step's batch is split: `accumulation` micro-batches of at most
    `micro_batch_tokens` padded tokens on each of `world_size` devices."""

    accumulation: int
    micro_batch_tokens: int
    world_size: int

    @property
    def tokens_per_step(self) -> int:
        return self.accumulation * self.micro_batch_tokens * self.world_size


def distributed_rank_world() -> tuple[int, int]:
    """(rank, world size) from torch.distributed when it is initialised, else (0, 1)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def pack(order: np.ndarray, lengths: np.ndarray, max_tokens: int) -> list[np.ndarray]:
    """Greedy packing of `order` (sorted by ascending `lengths`) under the padded budget.

    Since lengths ascend, the batch [i, j) costs (j - i) * lengths[order[j - 1]], which
    grows with j: each batch end is found by binary search. (num_batches * log N) steps.
    """
    sorted_lens = lengths[order]
    batches = []
    i, n = 0, len(order)
    while i < n:
        lo, hi = i + 1, n  # the largest j in [lo, hi] with (j - i) * len[j - 1] <= budget
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if (mid - i) * sorted_lens[mid - 1] <= max_tokens:
                lo = mid
            else:
                hi = mid - 1
        batches.append(order[i:lo])
        i = lo
    return batches


def balance(batches: list[np.ndarray], world_size: int) -> list[np.ndarray]:
    """Split the largest batches in two until len(batches) is a multiple of `world_size`.

    Returns the batches unchanged in count if no batch has two examples left to split
    (the caller decides whether that is an error).
    """
    batches = list(batches)
    while len(batches) % world_size:
        sizes = [len(b) for b in batches]
        largest = int(np.argmax(sizes))
        if sizes[largest] < 2:
            break
        b = batches[largest]
        half = len(b) // 2
        batches[largest : largest + 1] = [b[:half], b[half:]]
    return batches


class TokenBatchSampler:
    """Yields lists of example indices; see the module docstring for the algorithm.

    lengths: (N,) padded length of each example, max(len(src) + 1, len(tgt) + 1).
    rank / world_size default to torch.distributed (or 0 / 1). accumulation: micro-batches
    per optimizer step (k); training epochs hold a multiple of W x k batches.
    """

    def __init__(
        self,
        lengths: Sequence[int] | np.ndarray,
        max_tokens: int,
        *,
        seed: int = 0,
        shuffle: bool = True,
        rank: int | None = None,
        world_size: int | None = None,
        accumulation: int = 1,
    ):
        if rank is None or world_size is None:
            rank, world_size = distributed_rank_world()
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in [0, {world_size})")
        if accumulation < 1:
            raise ValueError(f"accumulation must be >= 1, got {accumulation}")
        self.lengths = np.asarray(lengths, dtype=np.int64)
        self.max_tokens = int(max_tokens)
        self.seed = int(seed)
        self.shuffle = shuffle
        self.rank, self.world_size = rank, world_size
        self.accumulation = int(accumulation) if shuffle else 1
        self.epoch = 0
        self.consumed = 0  # batches of the current epoch used by training (see module doc)
        self._resume: dict[str, int] | None = None
        self._cache: tuple[int, list[np.ndarray]] | None = None
        self._warned = False
        # Lightning calls set_epoch on `dataloader.sampler` and `dataloader.batch_sampler.sampler`,
        # never on the batch sampler itself: this attribute forwards the call.
        self.sampler = _EpochForwarder(self)

    # -- the batches of an epoch ---------------------------------------------------------

    def global_batches(self, epoch: int) -> list[np.ndarray]:
        """All ranks' batches of `epoch` in order (rank r takes every W-th from r)."""
        n = len(self.lengths)
        if self.shuffle:
            rng = np.random.default_rng([self.seed, epoch])
            order = rng.permutation(n)
            order = order[np.argsort(self.lengths[order], kind="stable")]
        else:
            order = np.argsort(self.lengths, kind="stable")
        batches = pack(order, self.lengths, self.max_tokens)
        too_long = int((self.lengths > self.max_tokens).sum())
        if too_long and not self._warned:
            self._warned = True
            warnings.warn(
                f"{too_long} example(s) are longer than the batch budget of {self.max_tokens} "
                f"tokens (longest: {int(self.lengths.max())}); each forms a batch of its own.",
                stacklevel=2,
            )
        multiple = self.world_size * self.accumulation
        batches = balance(batches, multiple)
        if len(batches) % multiple and self.shuffle:
            raise DataError(
                f"Cannot make the training epoch a whole number of optimizer steps of {self.world_size} "
                f"rank(s) x {self.accumulation} micro-batch(es): {n} examples make {len(batches)} "
                "single-example batches. Use fewer ranks or more data (or a larger data.max_tokens)."
            )
        if self.shuffle:
            batches = [batches[i] for i in rng.permutation(len(batches))]
        return batches

    def rank_batches(self, epoch: int) -> list[np.ndarray]:
        if self._cache is None or self._cache[0] != epoch:
            self._cache = (epoch, self.global_batches(epoch)[self.rank :: self.world_size])
        return self._cache[1]

    # -- the Sampler protocol ----------------------------------------------------------------

    def set_epoch(self, epoch: int) -> None:
        """Called by Lightning at the start of every epoch (through `self.sampler`)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        """Batches of this rank in the current epoch (the full epoch, also when resuming)."""
        return len(self.rank_batches(self.epoch))

    def __iter__(self) -> Iterator[list[int]]:
        batches = self.rank_batches(self.epoch)
        start = 0
        if self._resume is not None:
            if self._resume["epoch"] == self.epoch:
                start = min(self._resume["consumed"], len(batches))
            self._resume = None
        self.consumed = start
        for batch in batches[start:]:
            yield batch.tolist()

    # -- resuming ----------------------------------------------------------------------------

    def advance(self, num_batches: int = 1) -> None:
        """Record that training used `num_batches` more batches of the current epoch."""
        self.consumed += num_batches

    def state_dict(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch, "consumed": self.consumed, "seed": self.seed,
            "world_size": self.world_size, "max_tokens": self.max_tokens,
            "accumulation": self.accumulation, "num_examples": len(self.lengths),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue epoch `state["epoch"]` after its first `state["consumed"]` batches.

        If the batches would differ (other seed, world size, budget, accumulation or data), the
        saved position is meaningless: warn and start that epoch from its beginning. (States
        saved before `accumulation` was recorded count as 1.)
        """
        keys = ("seed", "world_size", "max_tokens", "accumulation", "num_examples")
        saved = {**state, "accumulation": state.get("accumulation", 1)}
        mine = {"seed": self.seed, "world_size": self.world_size, "max_tokens": self.max_tokens,
                "accumulation": self.accumulation, "num_examples": len(self.lengths)}
        if any(saved.get(k) != mine[k] for k in keys):
            warnings.warn(
                "The saved batch sampler state was made with other settings "
                f"({ {k: saved.get(k) for k in keys} }, now { mine }); "
                "the resumed epoch starts from its first batch.",
                stacklevel=2,
            )
            self.epoch = int(state.get("epoch", 0))
            self._resume = None
            return
        self.epoch = int(state["epoch"])
        self.consumed = int(state["consumed"])
        self._resume = {"epoch": self.epoch, "consumed": self.consumed}


class _EpochForwarder:
    """`batch_sampler.sampler` for Lightning: only forwards `set_epoch`."""

    def __init__(self, owner: TokenBatchSampler):
        self._owner = owner

    def set_epoch(self, epoch: int) -> None:
        self._owner.set_epoch(epoch)


class Collator:
    """(index, src ids, tgt ids) examples -> the batch dict of docs/interfaces.md.

    src (B, S) = ids + EOS; tgt_in (B, T) = BOS + ids; tgt_out (B, T) = ids + EOS;
    src_lens (B,); ids (B,). Right-padded with `pad_id`.
    """

    def __init__(self, pad_id: int, bos_id: int, eos_id: int):
        self.pad_id, self.bos_id, self.eos_id = pad_id, bos_id, eos_id

    def __call__(self, examples: list[tuple[int, np.ndarray, np.ndarray]]) -> dict[str, torch.Tensor]:
        b = len(examples)
        src_lens = np.fromiter((len(e[1]) + 1 for e in examples), dtype=np.int64, count=b)
        tgt_lens = np.fromiter((len(e[2]) + 1 for e in examples), dtype=np.int64, count=b)
        src = np.full((b, int(src_lens.max())), self.pad_id, dtype=np.int64)  # (B, S)
        tgt_in = np.full((b, int(tgt_lens.max())), self.pad_id, dtype=np.int64)  # (B, T)
        tgt_out = np.full_like(tgt_in, self.pad_id)  # (B, T)
        for row, (_, s, t) in enumerate(examples):
            src[row, : len(s)] = s
            src[row, len(s)] = self.eos_id
            tgt_in[row, 0] = self.bos_id
            tgt_in[row, 1 : len(t) + 1] = t
            tgt_out[row, : len(t)] = t
            tgt_out[row, len(t)] = self.eos_id
        return {
            "src": torch.from_numpy(src),
            "src_lens": torch.from_numpy(src_lens),
            "tgt_in": torch.from_numpy(tgt_in),
            "tgt_out": torch.from_numpy(tgt_out),
            "ids": torch.tensor([e[0] for e in examples], dtype=torch.long),
        }
