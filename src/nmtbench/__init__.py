"""nmtbench: recurrent seq2seq vs the Transformer on WMT14 En-De, re-run and measured."""

__version__ = "0.1.0"
