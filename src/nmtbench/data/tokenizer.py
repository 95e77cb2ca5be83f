"""Joint SentencePiece BPE: training on a sample of both sides, and a small wrapper.

Special ids are fixed by the interface contract: pad=0, unk=1, bos=2, eos=3.
"""

from __future__ import annotations

import hashlib
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
    pad/bos/eos and returns detokenized text. The model's bytes (`model_bytes`) and their
    SHA-256 (`sha256`) identify it: they travel inside every checkpoint, and
    `Tokenizer.from_bytes` rebuilds it from there without any file.
    """

    pad_id = PAD_ID
    unk_id = UNK_ID
    bos_id = BOS_ID
    eos_id = EOS_ID

    def __init__(self, model_path: str | None = None, *, model_bytes: bytes | None = None):
        if (model_path is None) == (model_bytes is None):
            raise ValueError("Tokenizer needs exactly one of model_path or model_bytes")
        if model_bytes is None:
            with open(model_path, "rb") as f:
                model_bytes = f.read()
        self.model_path = model_path  # None when built from bytes (a checkpoint)
        self.model_bytes = model_bytes
        self.sha256 = hashlib.sha256(model_bytes).hexdigest()
        where = model_path or f"the tokenizer with sha256 {self.sha256[:12]}"
        try:
            self.sp = spm.SentencePieceProcessor(model_proto=model_bytes)
        except RuntimeError as exc:
            raise DataError(f"{where}: not a SentencePiece model ({exc}).") from exc
        ids = (self.sp.pad_id(), self.sp.unk_id(), self.sp.bos_id(), self.sp.eos_id())
        if ids != (PAD_ID, UNK_ID, BOS_ID, EOS_ID):
            raise DataError(
                f"{where}: special ids (pad, unk, bos, eos) are {ids}, expected (0, 1, 2, 3). "
                "Delete the cache directory so the tokenizer is retrained."
            )

    @classmethod
    def from_bytes(cls, model_bytes: bytes) -> Tokenizer:
        return cls(model_bytes=model_bytes)

    def describe(self) -> str:
        """Names the tokenizer in messages: its file (if any), vocabulary and hash."""
        where = f"{self.model_path}, " if self.model_path else ""
        return f"{where}vocab {self.vocab_size}, sha256 {self.sha256[:12]}"

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
        return {"model_path": self.model_path, "model_bytes": self.model_bytes}

    def __setstate__(self, state: dict) -> None:
        self.__init__(model_bytes=state["model_bytes"])
        self.model_path = state["model_path"]
