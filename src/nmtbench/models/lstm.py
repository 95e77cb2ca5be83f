"""Placeholder until the recurrent baselines land (issue 4)."""

from dataclasses import dataclass

from torch import nn


@dataclass
class LSTMConfig:
    pass


class LSTMSeq2Seq(nn.Module):
    def __init__(self, cfg: LSTMConfig, vocab_size: int, pad_id: int):
        raise NotImplementedError("model=lstm_* arrives with the recurrent-baselines issue")
