"""ResultsCallback + validate_results: a real (tiny, fake-model) Lightning fit and test on CPU
writes a results.json that validates, with GPU fields null and a reason; only rank zero
writes; the validator catches schema and null-reason violations; each trainer.test() is one
test evaluation recording its weights, and an averaged checkpoint's scores win.

The fakes here (a 2-layer "model" with `flops_per_batch`, dict batches, `raw_text`) are
also used by test_callbacks_throughput.py.
"""

from __future__ import annotations

import json
from types import SimpleNamespace

import lightning as L
import pytest
import torch
from lightning.pytorch.loggers import Logger
from torch import nn
from torch.utils.data import DataLoader

from nmtbench.callbacks.bleu import BleuCallback
from nmtbench.callbacks.gpu_stats import GpuStatsCallback
from nmtbench.callbacks.results import ResultsCallback, config_digest
from nmtbench.callbacks.throughput import ThroughputCallback
from nmtbench.callbacks.wallclock import WallClockCallback
from nmtbench.checkpoints import save_averaged
from nmtbench.results_schema import load_results, validate_results

VOCAB, PAD = 16, 0
REFS = ["eins zwei drei vier fünf", "sechs sieben acht neun zehn", "a b c d e f", "g h i j k l"]
FLOPS_PER_TOKEN = 1000.0


def make_batch(rows: list[tuple[int, int]], ids: list[int] | None = None) -> dict[str, torch.Tensor]:
    """A padded batch; rows = (source length, target length) per sentence."""
    S, T = max(s for s, _ in rows), max(t for _, t in rows)
    src = torch.zeros(len(rows), S, dtype=torch.long)
    tgt = torch.zeros(len(rows), T, dtype=torch.long)
    for i, (s, t) in enumerate(rows):
        src[i, :s] = torch.randint(4, VOCAB, (s,))
        tgt[i, :t] = torch.randint(4, VOCAB, (t,))
    return {"src": src, "src_lens": torch.tensor([s for s, _ in rows]), "tgt_in": tgt, "tgt_out": tgt.clone(),
            "ids": torch.tensor(ids if ids is not None else list(range(len(rows))))}


TRAIN_BATCHES = [make_batch([(5, 4), (3, 2)]), make_batch([(7, 6), (6, 6), (2, 3)]), make_batch([(4, 4)])]


def batch_tokens(batch) -> tuple[int, int]:
    """(source + target tokens, target tokens) counted independently of the callback."""
    src = int(batch["src_lens"].sum())
    tgt = int((batch["tgt_out"] != PAD).sum())
    return src + tgt, tgt


class TinyModel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(VOCAB, 8)
        self.out = nn.Linear(8, VOCAB)

    def forward(self, tokens):
        return self.out(self.emb(tokens))

    def flops_per_batch(self, src_lens, tgt_lens) -> float:
        return FLOPS_PER_TOKEN * float(src_lens.sum() + tgt_lens.sum())


class TinyModule(L.LightningModule):
    """Translates sentence i of REFS exactly when i < quality x len(REFS) (a saved buffer)."""

    pad_id = PAD

    def __init__(self, cfg: dict | None = None) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.model = TinyModel()
        self.register_buffer("quality", torch.tensor(0.5))

    @property
    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.model.parameters())

    def training_step(self, batch, batch_idx):
        logits = self.model(batch["tgt_in"])
        return nn.functional.cross_entropy(logits.flatten(0, 1), batch["tgt_out"].flatten(), ignore_index=PAD)

    def validation_step(self, batch, batch_idx):
        return None

    def test_step(self, batch, batch_idx):
        return None

    def translate(self, batch, beam_size=1, length_penalty=0.6, max_len_b=50):
        good = float(self.quality) * len(REFS)
        return [REFS[i] if i < good else "falsch " + REFS[i] for i in batch["ids"].tolist()]

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


class TinyData(L.LightningDataModule):
    tgt_lang = "de"

    def train_dataloader(self):
        return DataLoader(TRAIN_BATCHES * 4, batch_size=None)

    def val_dataloader(self):
        return DataLoader([make_batch([(3, 3), (4, 4)], ids=[0, 1]), make_batch([(5, 5), (2, 2)], ids=[2, 3])],
                          batch_size=None)

    def test_dataloader(self):
        return self.val_dataloader()

    def raw_text(self, split):
        return ["src"] * len(REFS), REFS


class CaptureLogger(Logger):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[tuple[int, dict]] = []

    @property
    def name(self):
        return "capture"

    @property
    def version(self):
        return 0

    def log_hyperparams(self, params, *args, **kwargs):
        pass

    def log_metrics(self, metrics, step=None):
        self.records.append((step, dict(metrics)))

    def keys(self) -> set[str]:
        return {k for _, m in self.records for k in m}


CFG = {"task_name": "unit", "seed": 1, "paths": {"output_dir": "/somewhere"},
       "model": {"name": "tiny", "d_model": 8},
       "data": {"source": "toy", "src_lang": "en", "tgt_lang": "de", "vocab_size": VOCAB, "toy": {"num_train": 9}}}


def tiny_trainer(tmp_path, callbacks, max_steps=8, **kwargs) -> L.Trainer:
    options = dict(accelerator="cpu", devices=1, max_steps=max_steps, val_check_interval=4, log_every_n_steps=2,
                   logger=CaptureLogger(), enable_checkpointing=False, enable_progress_bar=False,
                   enable_model_summary=False, num_sanity_val_steps=0, default_root_dir=str(tmp_path))
    options.update(kwargs)
    return L.Trainer(callbacks=callbacks, **options)


def measurement_callbacks(**throughput_kwargs):
    throughput = {"peak_flops_per_device": 1e9, **throughput_kwargs}
    return [BleuCallback(num_examples=0, test_beam_size=1), WallClockCallback(bleu_targets=[20, 99.5]),
            ThroughputCallback(**throughput), GpuStatsCallback(), ResultsCallback()]


def test_fit_and_test_write_valid_results(tmp_path, caplog):
    caplog.set_level("INFO")
    trainer = tiny_trainer(tmp_path, measurement_callbacks())
    module, data = TinyModule(CFG), TinyData()
    trainer.fit(module, datamodule=data)
    path = tmp_path / "results.json"
    after_fit = json.loads(path.read_text())
    assert validate_results(after_fit) == []
    assert after_fit["stages"] == ["fit"]
    assert after_fit["test_sacrebleu"] is None and "test" in after_fit["null_reasons"]["test_sacrebleu"]

    trainer.test(module, datamodule=data)
    r = json.loads(path.read_text())
    assert validate_results(r) == [], validate_results(r)
    assert r["stages"] == ["fit", "test"]
    assert r["schema_version"] == "1.1"
    assert r["config_digest"] == config_digest(CFG)
    assert r["model_name"] == "tiny" and r["num_parameters"] == module.num_parameters
    assert r["data_source"] == "toy" and r["src_lang"] == "en" and "toy" in r["data_description"]
    assert r["world_size"] == 1 and r["device_names"] == ["cpu"] and r["precision"] == "32-true"
    assert r["steps"] == 8
    expected_tokens = sum(batch_tokens(b)[0] for b in (TRAIN_BATCHES * 4)[:8])
    assert r["tokens_seen"] == expected_tokens
    assert r["train_flops"] == pytest.approx(FLOPS_PER_TOKEN * expected_tokens)
    assert r["peak_flops_per_device"] == 1e9 and r["peak_flops_source"] == "config"
    assert r["mfu"] == pytest.approx(r["train_flops"] / (r["train_hours_excl_val"] * 3600 * 1e9), rel=1e-6)
    assert r["tokens_per_sec"] == pytest.approx(expected_tokens / (r["train_hours_excl_val"] * 3600), rel=1e-6)
    assert 0 < r["train_hours_excl_val"] <= r["train_hours"] and r["device_hours"] == r["train_hours"]
    # one clock: rates are the totals over WallClockCallback's training time excluding validation
    assert r["tokens_per_sec"] * r["train_hours_excl_val"] * 3600 == pytest.approx(expected_tokens, rel=1e-12)
    # GPU: null with a reason on a CPU run
    for key in ("gpu_kernel_active_pct_mean", "gpu_util_mean", "gpu_mem_gb_mean", "gpu_mem_gb_max",
                "gpu_power_w_mean", "gpu_hours"):
        assert r[key] is None and r["null_reasons"][key]
    assert "no NVIDIA GPU" in r["null_reasons"]["gpu_util_mean"]
    assert r["gpu_per_device"] == []
    # BLEU: validations at steps 4 and 8; half the sentences are exact
    assert [p["step"] for p in r["val_curve"]] == [4, 8]
    assert r["best_val_bleu"] == pytest.approx(r["val_curve"][0]["bleu"])
    assert r["best_val_bleu_step"] == 4
    assert r["best_val_paper_bleu"] == pytest.approx(r["val_curve"][0]["paper_bleu"]) and r["best_val_paper_bleu"] > 0
    assert r["time_to_bleu"][0]["reached"] and r["time_to_bleu"][0]["step"] == 4
    assert r["time_to_bleu"][0]["metric"] == "val/bleu" and not r["time_to_bleu"][1]["reached"]
    # the curve is flat: 90/95/99 % of the best are all first reached at the first validation
    assert [(f["fraction"], f["step"], f["metric"]) for f in r["time_to_fraction_of_best"]] == [
        (0.9, 4, "val/bleu"), (0.95, 4, "val/bleu"), (0.99, 4, "val/bleu")]
    assert r["test_sacrebleu"] == pytest.approx(r["last_val_bleu"], abs=1e-3)
    assert r["test_beam_size"] == 1 and r["test_num_sentences"] == len(REFS)
    assert "nrefs:1" in r["test_sacrebleu_signature"]
    # no checkpoint given to trainer.test: the current weights
    (evaluation,) = r["test_evaluations"]
    assert evaluation["weights"] == r["test_weights"] == "current" and evaluation["global_step"] == 8
    assert evaluation["sacrebleu"] == r["test_sacrebleu"] and evaluation["paper_bleu"] == r["test_paper_bleu"]
    assert r["test_ckpt_path"] is None and "current" in r["null_reasons"]["test_ckpt_path"]
    assert r["test_averaged_from"] is None and "not an average" in r["null_reasons"]["test_averaged_from"]
    # logged scalars
    keys = trainer.logger.keys()
    assert {"time/train_hours", "time/to_bleu_20", "perf/tokens_per_sec", "perf/mfu"} <= keys
    assert {"val/bleu", "val/paper_bleu"} <= keys
    assert not any(k.startswith("gpu/") for k in keys)
    assert sum("GpuStatsCallback off" in m for m in caplog.messages) == 1


def test_test_only_run_updates_the_existing_file(tmp_path):
    trainer = tiny_trainer(tmp_path, measurement_callbacks())
    module, data = TinyModule(CFG), TinyData()
    trainer.fit(module, datamodule=data)
    fit_results = json.loads((tmp_path / "results.json").read_text())

    tester = tiny_trainer(tmp_path, [BleuCallback(num_examples=0, test_beam_size=1), ResultsCallback()])
    tester.test(module, datamodule=data)
    r = json.loads((tmp_path / "results.json").read_text())
    assert validate_results(r) == []
    assert r["stages"] == ["fit", "test"]
    assert r["tokens_seen"] == fit_results["tokens_seen"] and r["val_curve"] == fit_results["val_curve"]
    assert r["test_sacrebleu"] is not None and "test_sacrebleu" not in r["null_reasons"]
    assert [e["weights"] for e in r["test_evaluations"]] == ["current"]
    # a second test in the same process adds one evaluation (the file is read once, not re-merged)
    module.quality.fill_(1.0)
    tester.test(module, datamodule=data)
    r = load_results(tmp_path / "results.json")
    assert len(r["test_evaluations"]) == 2 and r["test_sacrebleu"] == pytest.approx(100.0)
    assert r["tokens_seen"] == fit_results["tokens_seen"]


def test_disabled_callbacks_give_reasons(tmp_path):
    trainer = tiny_trainer(tmp_path, [ResultsCallback(experiment="unit_exp")], limit_val_batches=0)
    trainer.fit(TinyModule(CFG), datamodule=TinyData())
    r = json.loads((tmp_path / "results.json").read_text())
    assert validate_results(r) == []
    assert r["experiment"] == "unit_exp"
    assert "callbacks.wallclock=null" in r["null_reasons"]["train_hours"]
    assert "callbacks.throughput=null" in r["null_reasons"]["tokens_per_sec"]
    assert "callbacks.gpu_stats=null" in r["null_reasons"]["gpu_kernel_active_pct_mean"]
    assert "callbacks.bleu=null" in r["null_reasons"]["best_val_bleu"]
    assert "callbacks.bleu=null" in r["null_reasons"]["test_weights"]
    assert r["time_to_bleu"] == [] and r["val_curve"] == [] and r["time_to_fraction_of_best"] == []
    assert r["test_evaluations"] == []


def test_only_rank_zero_writes(tmp_path):
    cb = ResultsCallback(output_dir=str(tmp_path))
    cb.stages = ["fit"]
    not_zero = SimpleNamespace(is_global_zero=False, world_size=1)
    cb._write(not_zero, None)  # returns before touching the trainer/module
    assert not (tmp_path / "results.json").exists()


def test_validator_catches_problems(tmp_path):
    trainer = tiny_trainer(tmp_path, measurement_callbacks())
    trainer.fit(TinyModule(CFG), datamodule=TinyData())
    good = json.loads((tmp_path / "results.json").read_text())
    assert validate_results(good) == []

    bad = dict(good, steps=None)  # null without a reason
    assert any("steps" in p and "null_reasons" in p for p in validate_results(bad))
    bad = dict(good, null_reasons={**good["null_reasons"], "steps": "why"})  # reason for a value
    assert any("null_reasons.steps" in p for p in validate_results(bad))
    bad = dict(good, num_parameters="12")
    assert any("num_parameters" in p for p in validate_results(bad))
    bad = {k: v for k, v in good.items() if k != "mfu"}
    assert "$.mfu: missing" in validate_results(bad)
    bad = dict(good, time_to_fraction_of_best=[{"fraction": 0.9, "metric": "val/loss"}])
    assert any("time_to_fraction_of_best[0]" in p for p in validate_results(bad))
    bad = dict(good, schema_version="2.0")
    assert any("schema_version" in p for p in validate_results(bad))
    bad = dict(good, val_curve=[{"step": 1, "hours": 0.1, "bleu": 3.0}])
    assert any("hours_excl_val" in p for p in validate_results(bad))
    assert validate_results(dict(good, new_key_from_1_1=3)) == []  # readers ignore unknown keys


def test_config_digest_ignores_paths():
    other_paths = dict(CFG, paths={"output_dir": "/elsewhere"})
    assert config_digest(CFG) == config_digest(other_paths)
    assert config_digest(CFG) != config_digest(dict(CFG, seed=2))
    assert config_digest(CFG).startswith("sha256:") and len(config_digest(CFG)) == 7 + 64


def test_resumed_fit_continues_totals_and_curve(tmp_path):
    from lightning.pytorch.callbacks import ModelCheckpoint

    def run(max_steps, ckpt_path=None):
        ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True, save_top_k=0)
        trainer = tiny_trainer(tmp_path, measurement_callbacks() + [ckpt], max_steps=max_steps,
                               enable_checkpointing=True)
        trainer.fit(TinyModule(CFG), datamodule=TinyData(), ckpt_path=ckpt_path)
        return json.loads((tmp_path / "results.json").read_text())

    first = run(4)
    resumed = run(8, ckpt_path=str(tmp_path / "ckpt" / "last.ckpt"))
    assert validate_results(resumed) == []
    assert [p["step"] for p in resumed["val_curve"]] == [4, 8]
    assert resumed["steps"] == 8
    # a plain DataLoader restarts its epoch on resume: the second segment sees batches 0-3 again
    assert first["tokens_seen"] == sum(batch_tokens(b)[0] for b in (TRAIN_BATCHES * 4)[:4])
    assert resumed["tokens_seen"] == 2 * first["tokens_seen"]
    assert resumed["train_hours"] > first["train_hours"]
    assert resumed["time_to_bleu"][0]["step"] == 4  # reached before the resume


def test_best_then_averaged_checkpoint(tmp_path):
    """Two trainer.test() calls (the best checkpoint, then an averaged file) give two
    test evaluations, and the averaged one fills the top-level test fields."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", monitor="val/bleu", mode="max", save_top_k=1)
    trainer = tiny_trainer(tmp_path, measurement_callbacks() + [ckpt], enable_checkpointing=True)
    module, data = TinyModule(CFG), TinyData()
    trainer.fit(module, datamodule=data)
    trainer.test(module, datamodule=data, ckpt_path="best")

    # two checkpoints whose weights differ; their average translates 3 of 4 sentences exactly
    parts = [tmp_path / "a.ckpt", tmp_path / "b.ckpt"]
    for quality, path in zip((1.0, 0.5), parts):
        module.quality.fill_(quality)
        trainer.save_checkpoint(path)
    averaged = save_averaged(parts, tmp_path / "ckpt" / "averaged.ckpt")
    trainer.test(module, datamodule=data, ckpt_path=str(averaged))

    r = load_results(tmp_path / "results.json")
    best, avg = r["test_evaluations"]
    assert (best["weights"], avg["weights"]) == ("best", "averaged")
    assert best["ckpt_path"] == ckpt.best_model_path and best["global_step"] == 4  # both validations tie
    assert best["averaged_from"] is None
    assert avg["ckpt_path"] == str(averaged) and avg["averaged_from"] == [str(p) for p in parts]
    assert avg["global_step"] == 8
    assert avg["sacrebleu"] > best["sacrebleu"]
    assert r["test_weights"] == "averaged" and r["test_ckpt_path"] == str(averaged)
    assert r["test_averaged_from"] == [str(p) for p in parts]
    assert r["test_sacrebleu"] == avg["sacrebleu"] and r["test_paper_bleu"] == avg["paper_bleu"]
    assert "test_ckpt_path" not in r["null_reasons"] and "test_averaged_from" not in r["null_reasons"]

    # a later test of other weights does not displace the averaged evaluation
    trainer.test(module, datamodule=data, ckpt_path=str(parts[0]))
    r = load_results(tmp_path / "results.json")
    assert [e["weights"] for e in r["test_evaluations"]] == ["best", "averaged", "checkpoint"]
    assert r["test_weights"] == "averaged" and r["test_sacrebleu"] == avg["sacrebleu"]
