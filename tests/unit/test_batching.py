"""Token-budget batch sampler and collator (nmtbench.data.batching)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from nmtbench.data.batching import Collator, TokenBatchSampler, balance, pack


def random_lengths(n: int = 500, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(2, 60, size=n)


def epoch_batches(lengths, world_size: int, epoch: int = 0, seed: int = 7, max_tokens: int = 300, shuffle=True,
                  accumulation: int = 1):
    """{rank: list of batches} for one epoch."""
    out = {}
    for rank in range(world_size):
        s = TokenBatchSampler(lengths, max_tokens, seed=seed, shuffle=shuffle, rank=rank, world_size=world_size,
                              accumulation=accumulation)
        s.set_epoch(epoch)
        out[rank] = list(s)
    return out


@pytest.mark.parametrize("shuffle", [True, False])
def test_batches_never_exceed_the_padded_budget(shuffle):
    lengths = random_lengths()
    for batch in epoch_batches(lengths, 1, shuffle=shuffle)[0]:
        assert len(batch) * lengths[batch].max() <= 300


@pytest.mark.parametrize("world_size", [1, 2, 3])
@pytest.mark.parametrize("shuffle", [True, False])
def test_every_example_exactly_once_and_equal_batch_counts(world_size, shuffle):
    lengths = random_lengths(501)
    per_rank = epoch_batches(lengths, world_size, shuffle=shuffle)
    seen = [i for batches in per_rank.values() for batch in batches for i in batch]
    assert sorted(seen) == list(range(len(lengths)))  # none lost, none repeated
    counts = {len(b) for b in per_rank.values()}
    assert len(counts) == 1, f"ranks got different numbers of batches: {counts}"
    if world_size > 1:  # similar token totals: round-robin over shuffled batches
        totals = [sum(int(lengths[b].sum()) for b in batches) for batches in per_rank.values()]
        assert max(totals) < 1.5 * min(totals)


@pytest.mark.parametrize("world_size,accumulation", [(1, 3), (2, 2), (3, 7), (4, 4)])
def test_training_epochs_are_whole_optimizer_steps(world_size, accumulation):
    """Every rank's epoch holds a multiple of k micro-batches (k = accumulation), so no
    optimizer step straddles an epoch or comes up short; still every example exactly once."""
    lengths = random_lengths(499, seed=3)  # 55 batches: no multiple of any W x k here
    plain = len(pack(np.argsort(lengths, kind="stable"), lengths, 300))
    assert plain % (world_size * accumulation), "the test needs data whose plain packing is not whole steps"
    per_rank = epoch_batches(lengths, world_size, accumulation=accumulation)
    assert {len(b) % accumulation for b in per_rank.values()} == {0}
    assert len({len(b) for b in per_rank.values()}) == 1
    seen = sorted(i for batches in per_rank.values() for batch in batches for i in batch)
    assert seen == list(range(len(lengths)))
    for batch in (b for batches in per_rank.values() for b in batches):
        assert len(batch) * lengths[batch].max() <= 300


def test_a_saved_position_with_another_accumulation_restarts_the_epoch():
    lengths = random_lengths()
    first = TokenBatchSampler(lengths, 300, seed=5, rank=0, world_size=1, accumulation=2)
    first.consumed = 4
    state = first.state_dict()
    assert state["accumulation"] == 2
    other = TokenBatchSampler(lengths, 300, seed=5, rank=0, world_size=1, accumulation=3)
    with pytest.warns(UserWarning, match="other settings"):
        other.load_state_dict(state)
    assert list(other)[0] == other.rank_batches(0)[0].tolist()
    same = TokenBatchSampler(lengths, 300, seed=5, rank=0, world_size=1, accumulation=2)
    same.load_state_dict(state)
    assert list(same)[0] == same.rank_batches(0)[4].tolist()
    old = {k: v for k, v in state.items() if k != "accumulation"}  # saved before the key existed
    legacy = TokenBatchSampler(lengths, 300, seed=5, rank=0, world_size=1)
    legacy.load_state_dict(old)
    assert list(legacy)[0] == legacy.rank_batches(0)[4].tolist()


def test_ranks_are_disjoint():
    per_rank = epoch_batches(random_lengths(), 3)
    sets = [{i for b in batches for i in b} for batches in per_rank.values()]
    assert not (sets[0] & sets[1]) and not (sets[1] & sets[2]) and not (sets[0] & sets[2])


def test_deterministic_per_seed_and_epoch_and_different_across_epochs():
    lengths = random_lengths()
    assert epoch_batches(lengths, 2, epoch=3) == epoch_batches(lengths, 2, epoch=3)
    assert epoch_batches(lengths, 2, epoch=3) != epoch_batches(lengths, 2, epoch=4)
    assert epoch_batches(lengths, 1, seed=1) != epoch_batches(lengths, 1, seed=2)


def test_batches_are_length_bucketed():
    lengths = random_lengths(2000)
    batches = epoch_batches(lengths, 1)[0]
    padding = sum(len(b) * lengths[b].max() - lengths[b].sum() for b in batches)
    assert padding / lengths.sum() < 0.1


def test_resume_yields_exactly_the_remaining_batches():
    lengths = random_lengths()
    sampler = TokenBatchSampler(lengths, 300, seed=5, rank=1, world_size=2)
    sampler.set_epoch(2)
    full = list(sampler)
    it = iter(sampler)
    for _ in range(4):  # training used 4 batches (the DataModule calls advance())
        next(it)
        sampler.advance()
    state = sampler.state_dict()
    assert state["epoch"] == 2 and state["consumed"] == 4

    resumed = TokenBatchSampler(lengths, 300, seed=5, rank=1, world_size=2)
    resumed.load_state_dict(state)
    resumed.set_epoch(2)  # Lightning calls this on restart with the same epoch
    assert list(resumed) == full[4:]
    assert len(resumed) == len(full)  # Lightning's batch_idx continues from the checkpoint
    resumed.set_epoch(3)  # the next epoch starts from its beginning again
    assert len(list(resumed)) == len(resumed)


def test_resume_with_other_world_size_restarts_the_epoch():
    lengths = random_lengths()
    sampler = TokenBatchSampler(lengths, 300, seed=5, rank=0, world_size=2)
    sampler.advance(3)
    resumed = TokenBatchSampler(lengths, 300, seed=5, rank=0, world_size=1)
    with pytest.warns(UserWarning, match="starts from its first batch"):
        resumed.load_state_dict(sampler.state_dict())
    assert sum(len(b) for b in resumed) == len(lengths)


def test_example_longer_than_budget_gets_its_own_batch_with_one_warning():
    lengths = np.array([5, 500, 6, 7, 400])
    sampler = TokenBatchSampler(lengths, 100, seed=0, rank=0, world_size=1)
    with pytest.warns(UserWarning, match="2 example"):
        batches = list(sampler)
    assert [1] in batches and [4] in batches
    assert sorted(i for b in batches for i in b) == [0, 1, 2, 3, 4]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sampler.set_epoch(1)
        list(sampler)  # warned once only


def test_pack_and_balance():
    lengths = np.array([2, 2, 3, 3, 10])
    assert [b.tolist() for b in pack(np.arange(5), lengths, 9)] == [[0, 1, 2], [3], [4]]
    batches = balance([np.arange(4), np.arange(4, 5)], 3)
    assert len(batches) == 3 and sorted(np.concatenate(batches).tolist()) == list(range(5))


def test_collator_builds_the_documented_batch():
    collate = Collator(pad_id=0, bos_id=2, eos_id=3)
    batch = collate([(7, np.array([10, 11, 12]), np.array([20])), (4, np.array([13]), np.array([21, 22]))])
    assert batch["src"].tolist() == [[10, 11, 12, 3], [13, 3, 0, 0]]
    assert batch["src_lens"].tolist() == [4, 2]
    assert batch["tgt_in"].tolist() == [[2, 20, 0], [2, 21, 22]]
    assert batch["tgt_out"].tolist() == [[20, 3, 0], [21, 22, 3]]
    assert batch["ids"].tolist() == [7, 4]
    assert all(t.dtype == torch.long for t in batch.values())
