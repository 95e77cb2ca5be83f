"""Data pipeline: raw parallel text -> joint BPE -> memory-mapped shards -> token batches.

    config.py      DataConfig / ToyConfig: the validated `data:` config section
    toy.py         the generated English->German-like task
    sources.py     local files, the toy text, WMT14 from the HF hub (one Corpus per split)
    tokenizer.py   SentencePiece BPE training and the Tokenizer wrapper
    shards.py      parallel encoding, cleaning, memory-mapped token shards
    prepare.py     prepare(cfg.data): build or reuse the cache (scripts/prepare_data.py)
    batching.py    token-budget, length-bucketed, DDP-sharded batch sampler; collator
    datamodule.py  Seq2SeqDataModule (docs/interfaces.md)
"""
