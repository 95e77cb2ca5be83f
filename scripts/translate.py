"""Translate stdin or a file with a checkpoint, batched:
`python scripts/translate.py ckpt_path=... [input=FILE] [output=FILE] beam_size=4`
(see configs/translate.yaml)."""

import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from nmtbench.errors import NmtbenchError
from nmtbench.evaluate import load_datamodule, load_module, pick_device, translate_lines


@hydra.main(version_base="1.3", config_path="../configs", config_name="translate")
def main(cfg: DictConfig) -> None:
    try:
        module = load_module(cfg.ckpt_path, pick_device(cfg.device))
        load_datamodule(module, cfg.data)  # attaches the run's tokenizer
    except NmtbenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)
    text = Path(cfg.input).read_text(encoding="utf-8") if cfg.input else sys.stdin.read()
    lines = text.splitlines()
    hyps = translate_lines(module, lines, beam_size=int(cfg.beam_size), length_penalty=float(cfg.length_penalty),
                           max_len_b=int(cfg.max_len_b), max_tokens=int(cfg.max_tokens))
    out = "".join(h + "\n" for h in hyps)
    if cfg.output:
        Path(cfg.output).write_text(out, encoding="utf-8")
    else:
        sys.stdout.write(out)


if __name__ == "__main__":
    main()
