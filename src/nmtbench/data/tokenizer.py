"""Joint SentencePiece BPE: training on a sample of both sides, and a small wrapper.

Special ids are fixed by the interface contract: pad=0, unk=1, bos=2, eos=3.
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Sequence

import sentencepiece as spm

from nmtbench.errors import ConfigError, DataError

PAD_ID, UNK_ID, BOS_ID, EOS_ID = 0, 1, 2, 3


def train_sentencepiece(
    sentences: Iterable[str],
    model_path: str,
    *,
    vocab_size: int,
    character_coverage: float = 1.0,
    num_threads: int = 1,
) -> None:
    """Train a BPE model on `sentences` (already sampled and shuffled) into `model_path`.

    Writes `model_path` (the binary model) and `model_path` with `.vocab` in place of
    `.model` (one piece and score per line, for people to read).
    """
    buffer = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(sentences),
            model_writer=buffer,
            model_type="bpe",
            vocab_size=vocab_size,
            character_coverage=character_coverage,
            pad_id=PAD_ID,
            unk_id=UNK_ID,
            bos_id=BOS_ID,
            eos_id=EOS_ID,
            input_sentence_size=0,  # the caller already sampled
            num_threads=num_threads,
            max_sentence_length=16384,  # bytes; longer lines are skipped for training only
            minloglevel=2,
        )
    except RuntimeError as exc:
        message = str(exc)
        if "Vocabulary size too high" in message:
            limit = message.rsplit("<=", 1)[-1].strip(" .")
            raise ConfigError(
                f"data.vocab_size={vocab_size} is too large for this training text: "
                f"SentencePiece can make at most {limit} pieces from it. "
                f"Set data.vocab_size={limit} or lower (or use more training data)."
            ) from exc
        raise DataError(f"SentencePiece training failed: {message}") from exc
    with open(model_path, "wb") as f:
        f.write(buffer.getvalue())
    tokenizer = Tokenizer(model_path)
    vocab_path = model_path.removesuffix(".model") + ".vocab"
    with open(vocab_path, "w", encoding="utf-8") as f:
        for i in range(tokenizer.vocab_size):
            f.write(f"{tokenizer.sp.id_to_piece(i)}\t{tokenizer.sp.get_score(i)}\n")


class Tokenizer:
    """Joint source/target subword tokenizer (SentencePiece BPE).

    `encode` returns piece ids without BOS/EOS (the collator adds them); `decode` drops
    pad/bos/eos and returns detokenized text.
    """

    pad_id = PAD_ID
    unk_id = UNK_ID
    bos_id = BOS_ID
    eos_id = EOS_ID

    def __init__(self, model_path: str):
        self.model_path = model_path
        self.sp = spm.SentencePieceProcessor(model_file=model_path)
        ids = (self.sp.pad_id(), self.sp.unk_id(), self.sp.bos_id(), self.sp.eos_id())
        if ids != (PAD_ID, UNK_ID, BOS_ID, EOS_ID):
            raise DataError(
                f"{model_path}: special ids (pad, unk, bos, eos) are {ids}, expected (0, 1, 2, 3). "
                "Delete the cache directory so the tokenizer is retrained."
            )

    @property
    def vocab_size(self) -> int:
        return self.sp.get_piece_size()

    def encode(self, text: str) -> list[int]:
        """Piece ids of one sentence (no BOS/EOS)."""
        return self.sp.encode(text)

    def encode_batch(self, texts: Sequence[str], num_threads: int = 1) -> list[list[int]]:
        """Piece ids of many sentences."""
        return self.sp.encode(list(texts), num_threads=num_threads)

    def decode(self, ids: Sequence[int]) -> str:
        """Detokenized text; pad/bos/eos ids are dropped, decoding stops at the first EOS."""
        out = []
        for i in ids:
            i = int(i)
            if i == EOS_ID:
                break
            if i not in (PAD_ID, BOS_ID):
                out.append(i)
        return self.sp.decode(out)

    def decode_batch(self, batch: Iterable[Sequence[int]]) -> list[str]:
        return [self.decode(ids) for ids in batch]

    def id_to_piece(self, i: int) -> str:
        return self.sp.id_to_piece(int(i))

    def piece_to_id(self, piece: str) -> int:
        return self.sp.piece_to_id(piece)

    def __getstate__(self) -> dict:  # picklable for DataLoader workers / spawn
        return {"model_path": self.model_path}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["model_path"])
