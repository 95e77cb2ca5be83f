"""Translate stdin or a file with a checkpoint, batched:
`python scripts/translate.py ckpt_path=... [input=FILE] [output=FILE] beam_size=4`
(see configs/translate.yaml). The same as the console script `nmtbench-translate`: both run
`nmtbench.cli.translate`."""

from nmtbench.cli import translate

if __name__ == "__main__":
    translate()
