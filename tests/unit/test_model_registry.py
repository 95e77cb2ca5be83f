"""The model interface and registry: a new model is one model file and one YAML.

`BagOfWords` below is such a file (a model class, its typed config, its registration), and
the test writes its YAML (`configs/model/bag_of_words.yaml`) into a directory on Hydra's
search path: composing `model=bag_of_words`, training, validating (greedy BLEU), averaging
and testing (beam search) then work with no other change.
"""

from __future__ import annotations

import inspect
import json
from dataclasses import dataclass

import pytest
import torch
from torch import Tensor, nn

from nmtbench.models import register_model, registered_models
from nmtbench.models.interface import Seq2SeqModel
from nmtbench.schema import build_model_from_config
from tests.conftest import compose_config


@dataclass
class BagOfWordsConfig:
    dim: int = 32  # embedding and state width


@register_model("bag_of_words", BagOfWordsConfig, training={"label_smoothing": 0.0, "loss_normalization": "tokens",
                                                           "optim": {"lr": 3e-3, "schedule": "constant", "warmup_steps": 0}})
class BagOfWords(nn.Module):
    """Decoder state = the mean source embedding + the previous target embedding; no recurrence."""

    shares_memory_across_beams = False

    def __init__(self, cfg: BagOfWordsConfig, vocab_size: int, pad_id: int):
        super().__init__()
        self.cfg, self.vocab_size = cfg, vocab_size
        self.embed = nn.Embedding(vocab_size, cfg.dim, padding_idx=pad_id)
        self.out = nn.Linear(2 * cfg.dim, vocab_size)

    @property
    def model_dim(self) -> int:
        return self.cfg.dim

    def encode(self, src: Tensor, src_lens: Tensor) -> dict[str, Tensor]:
        mask = (torch.arange(src.size(1))[None] < src_lens[:, None]).float()  # (B, S)
        summary = (self.embed(src) * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)  # (B, D)
        return {"summary": summary}

    def decode(self, prev_tokens: Tensor, memory: dict[str, Tensor], cache: dict | None = None):
        tokens = prev_tokens if cache is None else prev_tokens[:, -1:]
        summary = memory["summary"][:, None].expand(-1, tokens.size(1), -1)
        return self.out(torch.cat([self.embed(tokens), summary], -1)), cache

    def forward(self, src: Tensor, src_lens: Tensor, tgt_in: Tensor) -> Tensor:
        return self.decode(tgt_in, self.encode(src, src_lens))[0]

    @staticmethod
    def reorder_cache(cache: dict, index: Tensor) -> dict:
        return cache

    def flops_per_batch(self, src_lens: Tensor, tgt_lens: Tensor) -> float:
        return float(3 * 2 * tgt_lens.sum() * 2 * self.cfg.dim * self.vocab_size)


MODEL_YAML = """# A bag-of-words baseline (tests/unit/test_model_registry.py): the registered schema, one change.
defaults:
  - _bag_of_words

dim: 48  # wider than the default
"""


def test_both_families_and_a_new_model_satisfy_the_interface():
    for name, extra in (("transformer", {"d_model": 16, "num_heads": 2, "d_ff": 32, "num_encoder_layers": 1,
                                         "num_decoder_layers": 1}),
                        ("lstm", {"num_layers": 1, "hidden_size": 16, "embed_dim": 8}),
                        ("bag_of_words", {})):
        model = build_model_from_config({"name": name, **extra}, vocab_size=20, pad_id=0)
        assert isinstance(model, Seq2SeqModel), name
        for member in ("forward", "encode", "decode", "reorder_cache", "flops_per_batch"):
            want = list(inspect.signature(getattr(Seq2SeqModel, member)).parameters)[1:]
            got = list(inspect.signature(getattr(model, member)).parameters)
            assert got == want, (name, member, got)
    assert {"transformer", "lstm", "bag_of_words"} <= set(registered_models())


@pytest.mark.slow
def test_a_model_is_one_file_and_one_yaml(tmp_path):
    from nmtbench.train import train

    configs = tmp_path / "configs"
    (configs / "model").mkdir(parents=True)
    (configs / "model" / "bag_of_words.yaml").write_text(MODEL_YAML)
    cfg = compose_config([
        f"hydra.searchpath=[file://{configs}]", "experiment=smoke", "model=bag_of_words",
        f"paths.root_dir={tmp_path}", f"paths.output_dir={tmp_path / 'run'}", "data.toy.num_train=400",
        "data.toy.num_valid=16", "data.toy.num_test=16", "data.vocab_size=200", "data.max_tokens=600",
        "trainer.max_steps=8", "trainer.max_time=null", "trainer.val_check_interval=4",
        "trainer.enable_progress_bar=false", "callbacks.progress_bar=null",
        "callbacks.throughput.cpu_benchmark_seconds=0", "average.last_n=2", "callbacks.bleu.max_len_b=5",
    ])
    assert cfg.model.name == "bag_of_words" and cfg.model.dim == 48 and cfg.model.optim.lr == 3e-3
    metrics = train(cfg)
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["steps"] == 8 and results["model_config"]["dim"] == 48
    assert [e["weights"] for e in results["test_evaluations"]] == ["best", "averaged"]
    assert "val/bleu" in metrics and "test/bleu" in metrics
