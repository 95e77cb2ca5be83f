"""Evaluate a checkpoint on the test split: `python scripts/evaluate.py ckpt_path=...`
(see configs/evaluate.yaml). Writes hypotheses.txt, references.txt, scores.json.
The same as the console script `nmtbench-evaluate`: both run `nmtbench.cli.evaluate`."""

from nmtbench.cli import evaluate

if __name__ == "__main__":
    evaluate()
