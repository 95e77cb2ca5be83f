"""Build (or reuse) the data cache: text -> joint BPE tokenizer -> token shards.

Takes the same overrides as scripts/train.py, e.g.

    python scripts/prepare_data.py data=toy
    python scripts/prepare_data.py data=files data.dir=../shared/data/wmt14_sample \
        data.valid_prefix=newstest2013 data.test_prefix=newstest2014
    python scripts/prepare_data.py                      # WMT14 from the HF hub (default)

Training runs the same code (Seq2SeqDataModule.prepare_data), so this is optional: it
lets the slow part run once, on a CPU machine, before training. The same as the console
script `nmtbench-prepare-data`: both run `nmtbench.cli.prepare_data`.
"""

from nmtbench.cli import prepare_data

if __name__ == "__main__":
    prepare_data()
