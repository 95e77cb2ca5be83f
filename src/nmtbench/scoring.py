"""Corpus-level translation metrics: detokenized sacreBLEU / chrF and the paper's tokenized BLEU.

Two BLEU numbers are reported side by side and must not be confused:

- `sacrebleu_score`: detokenized, cased sacreBLEU with its default 13a tokenization
  (Post 2018). Comparable across papers; its signature is returned with the score.
- `paper_bleu`: the "tokenized BLEU with compound splitting" of Vaswani et al. 2017, i.e.
  tensor2tensor's `utils/get_ende_bleu.sh`: hypotheses and references are
  1. tokenized with the Moses tokenizer for the target language (sacremoses, default
     rules, no aggressive dash splitting; `escape=False` - escaping does not move token
     boundaries, so BLEU is unchanged),
  2. compound-split with the script's perl substitution `s{(\\S)-(\\S)}{$1 ##AT##-##AT## $2}g`,
     reproduced by `compound_split` (including its quirk: matches do not overlap, so
     "a-b-c" becomes "a ##AT##-##AT## b-c"),
  3. scored with multi-bleu.perl, i.e. cased corpus BLEU on whitespace tokens, here
     `sacrebleu.metrics.BLEU(tokenize="none", force=True)`.
  The Moses tokenizer's aggressive mode ("a @-@ b") splits every hyphen between
  alphanumerics instead; it differs from the paper's script only on chained or
  non-alphanumeric hyphens.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from functools import lru_cache

from sacrebleu.metrics import BLEU, CHRF
from sacremoses import MosesTokenizer

_COMPOUND = re.compile(r"(\S)-(\S)")


def sacrebleu_score(hyps: Sequence[str], refs: Sequence[str]) -> dict:
    """Detokenized corpus sacreBLEU (cased, 13a): {"score": float, "signature": str}."""
    _check(hyps, refs)
    bleu = BLEU()
    score = bleu.corpus_score(list(hyps), [list(refs)])
    return {"score": score.score, "signature": str(bleu.get_signature())}


def chrf_score(hyps: Sequence[str], refs: Sequence[str]) -> dict:
    """Corpus chrF (Popovic 2015; sacreBLEU defaults, chrF2): {"score", "signature"}."""
    _check(hyps, refs)
    chrf = CHRF()
    score = chrf.corpus_score(list(hyps), [list(refs)])
    return {"score": score.score, "signature": str(chrf.get_signature())}


@lru_cache(maxsize=4)
def _moses(lang: str) -> MosesTokenizer:
    return MosesTokenizer(lang=lang)


def compound_split(tokenized: str) -> str:
    """tensor2tensor's compound splitting: "Test-Fall" -> "Test ##AT##-##AT## Fall"."""
    return _COMPOUND.sub(r"\1 ##AT##-##AT## \2", tokenized)


def paper_tokenize(line: str, lang: str) -> str:
    """Moses tokenization + compound splitting, as applied before the paper's BLEU."""
    return compound_split(_moses(lang).tokenize(line, escape=False, return_str=True))


def paper_bleu(hyps: Sequence[str], refs: Sequence[str], lang: str = "de") -> dict:
    """Tokenized, compound-split corpus BLEU of Vaswani et al. 2017 (see module docstring):
    {"score": float, "signature": str} where the signature names the tokenization."""
    _check(hyps, refs)
    tok_hyps = [paper_tokenize(h, lang) for h in hyps]
    tok_refs = [paper_tokenize(r, lang) for r in refs]
    bleu = BLEU(tokenize="none", force=True)
    score = bleu.corpus_score(tok_hyps, [tok_refs])
    signature = f"{bleu.get_signature()}|pretok:moses-{lang}+compound-split(t2t get_ende_bleu.sh)"
    return {"score": score.score, "signature": signature}


def paper_bleu_statistics(tok_hyps: Sequence[str], tok_refs: Sequence[str]) -> list[float]:
    """BLEU's sufficient statistics of already `paper_tokenize`d lines: [hypothesis length,
    reference length, matches of 1..4-grams, hypothesis 1..4-grams]. Statistics of disjoint
    parts of a corpus add up to the corpus' (so DDP ranks can sum them)."""
    _check(tok_hyps, tok_refs)
    if not tok_hyps:
        return [0.0] * 10
    score = BLEU(tokenize="none", force=True).corpus_score(list(tok_hyps), [list(tok_refs)])
    return [float(score.sys_len), float(score.ref_len), *map(float, score.counts), *map(float, score.totals)]


def paper_bleu_from_statistics(stats: Sequence[float]) -> float:
    """`paper_bleu`'s score from (summed) `paper_bleu_statistics`."""
    bleu = BLEU(tokenize="none", force=True)
    counts = [int(round(x)) for x in stats]
    return bleu.compute_bleu(correct=counts[2:6], total=counts[6:10], sys_len=counts[0], ref_len=counts[1],
                             smooth_method=bleu.smooth_method, smooth_value=bleu.smooth_value,
                             effective_order=bleu.effective_order).score


def corpus_scores(hyps: Sequence[str], refs: Sequence[str], lang: str = "de") -> dict:
    """All test metrics at once (flat, JSON-ready): `sacrebleu` + `signature` (detokenized,
    13a), `chrf` + `chrf_signature`, `paper_bleu` + `paper_bleu_signature` (tokenized,
    compound-split) and `num_sentences`."""
    bleu, chrf, paper = sacrebleu_score(hyps, refs), chrf_score(hyps, refs), paper_bleu(hyps, refs, lang)
    return {
        "sacrebleu": bleu["score"], "signature": bleu["signature"],
        "chrf": chrf["score"], "chrf_signature": chrf["signature"],
        "paper_bleu": paper["score"], "paper_bleu_signature": paper["signature"],
        "num_sentences": len(hyps),
    }


def _check(hyps: Sequence[str], refs: Sequence[str]) -> None:
    if len(hyps) != len(refs):
        raise ValueError(f"{len(hyps)} hypotheses but {len(refs)} references: they must be aligned")
