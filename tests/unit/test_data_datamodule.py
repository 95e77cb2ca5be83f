"""Seq2SeqDataModule end to end on a tiny generated files directory."""

from __future__ import annotations

import os

import pytest
import torch

from nmtbench.data.config import ToyConfig
from nmtbench.data.datamodule import Seq2SeqDataModule
from nmtbench.data.toy import generate
from nmtbench.errors import DataError

PAIRS = generate(ToyConfig(seed=5, num_train=300, num_valid=40, num_test=25))


@pytest.fixture
def datamodule(tmp_path):
    text = tmp_path / "text"
    text.mkdir()
    for split, prefix in (("train", "train"), ("valid", "dev"), ("test", "test")):
        for lang, side in (("en", 0), ("de", 1)):
            with open(text / f"{prefix}.{lang}", "w", encoding="utf-8") as f:
                f.writelines(p[side] + "\n" for p in PAIRS[split])
    cfg = {
        "source": "files", "dir": str(text), "valid_prefix": "dev", "cache_dir": str(tmp_path / "cache"),
        "vocab_size": 150, "max_tokens": 400, "eval_max_tokens": 500, "num_workers": 0, "num_proc": 1,
    }
    dm = Seq2SeqDataModule(cfg, seed=3)
    dm.prepare_data()
    dm.setup("fit")
    return dm


def test_batches_have_the_documented_keys_shapes_and_padding(datamodule):
    tok = datamodule.tokenizer
    assert (tok.pad_id, tok.unk_id, tok.bos_id, tok.eos_id) == (0, 1, 2, 3)
    assert tok.vocab_size == datamodule.vocab_size == 150
    seen = []
    for batch in datamodule.train_dataloader():
        assert set(batch) == {"src", "src_lens", "tgt_in", "tgt_out", "ids"}
        b, s = batch["src"].shape
        t = batch["tgt_in"].shape[1]
        assert batch["tgt_out"].shape == (b, t) and batch["ids"].shape == batch["src_lens"].shape == (b,)
        assert b * max(s, t) <= 400
        assert all(x.dtype == torch.long for x in batch.values())
        # src_lens counts the non-pad positions; EOS closes each row
        assert torch.equal(batch["src_lens"], (batch["src"] != 0).sum(1))
        rows = torch.arange(b)
        assert (batch["src"][rows, batch["src_lens"] - 1] == 3).all()
        assert (batch["tgt_in"][:, 0] == 2).all()
        # tgt_in = BOS + ids, tgt_out = ids + EOS: the same ids shifted by one
        shifted = batch["tgt_out"][:, :-1].masked_fill(batch["tgt_out"][:, :-1] == 3, 0)
        assert torch.equal(batch["tgt_in"][:, 1:], shifted)
        assert torch.equal((batch["tgt_in"] != 0).sum(1), (batch["tgt_out"] != 0).sum(1))
        seen += batch["ids"].tolist()
    assert sorted(seen) == list(range(300))


@pytest.mark.parametrize("split", ["valid", "test"])
def test_eval_batches_are_length_sorted_and_ids_restore_the_raw_text(datamodule, split):
    tok = datamodule.tokenizer
    loader = datamodule.val_dataloader() if split == "valid" else datamodule.test_dataloader()
    sources, references = datamodule.raw_text(split)
    assert (sources, references) == tuple(map(list, zip(*PAIRS[split])))
    ids, widths = [], []
    for batch in loader:
        assert batch["src"].shape[0] * max(batch["src"].shape[1], batch["tgt_in"].shape[1]) <= 500
        widths.append(max(batch["src"].shape[1], batch["tgt_in"].shape[1]))
        for row, i in enumerate(batch["ids"].tolist()):
            assert tok.decode(batch["src"][row].tolist()) == sources[i]
            assert tok.decode(batch["tgt_out"][row].tolist()) == references[i]
        ids += batch["ids"].tolist()
    assert sorted(ids) == list(range(len(sources)))
    assert widths == sorted(widths)


def test_max_valid_sentences_keeps_the_first_n(datamodule):
    dm = Seq2SeqDataModule({**_cfg(datamodule), "max_valid_sentences": 7}, seed=3)
    dm.setup("validate")
    ids = [i for batch in dm.val_dataloader() for i in batch["ids"].tolist()]
    assert sorted(ids) == list(range(7))
    assert dm.raw_text("valid")[1] == [de for _, de in PAIRS["valid"][:7]]


def test_state_dict_resumes_mid_epoch(datamodule):
    loader = datamodule.train_dataloader()
    full = [b["ids"].tolist() for b in loader]
    it = iter(loader)
    for _ in range(3):  # three batches reach training_step
        datamodule.on_after_batch_transfer(next(it), 0)
    state = datamodule.state_dict()
    assert state["train_sampler"]["consumed"] == 0  # not counted outside of training

    class FakeTrainer:
        training = True

    datamodule.trainer = FakeTrainer()
    it = iter(loader)
    for _ in range(3):
        datamodule.on_after_batch_transfer(next(it), 0)
    state = datamodule.state_dict()
    assert state["train_sampler"]["consumed"] == 3

    resumed = Seq2SeqDataModule(_cfg(datamodule), seed=3)
    resumed.load_state_dict(state)  # Lightning restores before building the dataloaders
    resumed.setup("fit")
    assert [b["ids"].tolist() for b in resumed.train_dataloader()] == full[3:]


def test_setup_without_prepare_says_what_to_run(tmp_path):
    dm = Seq2SeqDataModule({"source": "toy", "dir": str(tmp_path), "cache_dir": str(tmp_path / "c")})
    with pytest.raises(DataError, match="prepare_data"):
        dm.setup("fit")


def _cfg(dm: Seq2SeqDataModule) -> dict:
    return {k: getattr(dm.cfg, k) for k in ("source", "dir", "valid_prefix", "cache_dir", "vocab_size",
                                            "max_tokens", "eval_max_tokens", "num_workers", "num_proc")}


def test_worker_processes_read_the_memmaps(datamodule):
    if os.cpu_count() == 1:
        pytest.skip("one CPU")
    dm = Seq2SeqDataModule({**_cfg(datamodule), "num_workers": 1}, seed=3)
    dm.setup("fit")
    ids = [i for batch in dm.train_dataloader() for i in batch["ids"].tolist()]
    assert sorted(ids) == list(range(300))


def test_lightning_resume_continues_at_the_next_unseen_batch(datamodule, tmp_path):
    """A real Trainer: stop after 3 steps, save, resume; the resumed run sees batches 3, 4, ..."""
    import lightning as L

    class Recorder(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.weight = torch.nn.Parameter(torch.zeros(1))
            self.seen: list[list[int]] = []

        def training_step(self, batch, batch_idx):
            self.seen.append(batch["ids"].tolist())
            return (self.weight * batch["src"].float().mean()).sum()

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    def trainer(max_steps, callbacks=()):
        return L.Trainer(max_steps=max_steps, accelerator="cpu", devices=1, logger=False,
                         enable_checkpointing=bool(callbacks), callbacks=list(callbacks),
                         enable_progress_bar=False, enable_model_summary=False,
                         use_distributed_sampler=False, num_sanity_val_steps=0, limit_val_batches=0)

    cfg = _cfg(datamodule)
    expected = [b["ids"].tolist() for b in Seq2SeqDataModule(cfg, seed=3).train_dataloader()]
    assert len(expected) > 6
    first = Recorder()
    every3 = L.pytorch.callbacks.ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=3, save_top_k=-1,
                                                 filename="step{step}", auto_insert_metric_name=False)
    trainer(4, [every3]).fit(first, datamodule=Seq2SeqDataModule(cfg, seed=3))
    assert first.seen == expected[:4]

    second = Recorder()  # resume from the checkpoint written after step 3, mid-epoch
    trainer(6).fit(second, datamodule=Seq2SeqDataModule(cfg, seed=3), ckpt_path=str(tmp_path / "step3.ckpt"))
    assert second.seen == expected[3:6]

    # Lightning reaches the sampler's set_epoch: the next epoch has a new order
    sampler = Seq2SeqDataModule(cfg, seed=3).train_dataloader().batch_sampler
    sampler.set_epoch(1)
    epoch1 = [b.tolist() for b in sampler.rank_batches(1)]
    two_epochs = Recorder()
    trainer(len(expected) + 2).fit(two_epochs, datamodule=Seq2SeqDataModule(cfg, seed=3))
    assert two_epochs.seen == expected + epoch1[:2]
    assert epoch1[:2] != expected[:2]
