"""The generated toy task (nmtbench.data.toy): deterministic, German-like, BLEU-meaningful."""

from __future__ import annotations

import os
import random

import sacrebleu

from nmtbench.data.config import ToyConfig
from nmtbench.data.toy import (
    NOUNS,
    NP,
    VERBS,
    Clause,
    ToyGrammar,
    _de_clause,
    _en_clause,
    generate,
    write_toy,
)

SMALL = ToyConfig(seed=3, num_train=400, num_valid=60, num_test=60)


def noun(en: str):
    return next(n for n in NOUNS if n.en == en)


def verb(en: str):
    return next(v for v in VERBS if v.en == en)


def test_deterministic_per_seed_and_different_across_seeds():
    assert generate(SMALL) == generate(SMALL)
    other = generate(ToyConfig(seed=4, num_train=400, num_valid=60, num_test=60))
    assert other["train"] != generate(SMALL)["train"]


def test_sizes_lengths_and_held_out_sets_disjoint():
    splits = generate(SMALL)
    assert [len(splits[s]) for s in ("train", "valid", "test")] == [400, 60, 60]
    train_en = {en for en, _ in splits["train"]}
    assert not train_en & {en for en, _ in splits["valid"]}
    assert not train_en & {en for en, _ in splits["test"]}
    lengths = [len(en.split()) for pairs in splits.values() for en, _ in pairs]
    assert min(lengths) >= 5


def test_subordinate_clause_puts_the_verb_last():
    c = Clause(NP(noun("man")), verb("see"), obj=NP(noun("dog")))
    assert _en_clause(c) == ["the", "man", "sees", "the", "dog"]
    assert _de_clause(c, "main") == ["der", "Mann", "sieht", "den", "Hund"]
    assert _de_clause(c, "sub") == ["der", "Mann", "den", "Hund", "sieht"]
    c.tense = "perf"
    assert _de_clause(c, "sub")[-2:] == ["gesehen", "hat"]


def test_generated_subordinate_clauses_are_verb_final():
    """In every 'weil'/'dass' clause the German finite verb is the clause's last word."""
    finite = {v.de_3sg for v in VERBS} | {v.de for v in VERBS} | {"ist", "sind", "hat", "haben", "kann", "muss", "will"}
    finite |= {"können", "müssen", "wollen", "bin", "habe"} | {v.de_1sg for v in VERBS}
    checked = 0
    for en, de in generate(ToyConfig(seed=1, num_train=2000, num_valid=1, num_test=1))["train"]:
        if ", dass " in de and de.endswith("."):
            clause_end = de[:-1].split()[-1]
            assert clause_end in finite, (en, de)
            checked += 1
    assert checked > 50


def test_verb_second_after_a_fronted_time_phrase():
    c = Clause(NP(noun("woman")), verb("buy"), obj=NP(noun("car"), det="a"), time=("today", "heute"))
    assert " ".join(_en_clause(c, time_first=True)) == "today the woman buys a car"
    assert _de_clause(c, "main") == ["die", "Frau", "kauft", "heute", "ein", "Auto"]


def test_case_gender_agreement_and_plurals():
    r = random.Random(0)
    grammar = ToyGrammar(ToyConfig(), r)
    small = next(a for a in grammar.adjectives if a.en == "small")
    c = Clause(NP(noun("child"), det="the", plural=True, adj=small), verb("help"),
               obj=NP(noun("man"), det="a", adj=small))
    assert " ".join(_de_clause(c, "main")) == "die kleinen Kinder helfen einem kleinen Mann"
    c = Clause(NP(noun("man"), det="a", adj=small), verb("give"), obj=NP(noun("book"), det="my"),
               iobj=NP(noun("child"), det="two", plural=True, adj=small))
    assert " ".join(_de_clause(c, "main")) == "ein kleiner Mann gibt zwei kleinen Kindern mein Buch"
    c = Clause(NP(noun("boy")), verb("see"), obj=NP(noun("boy"), det="this"), neg=True)
    assert " ".join(_de_clause(c, "main")) == "der Junge sieht diesen Jungen nicht"
    assert " ".join(_en_clause(c)) == "the boy does not see this boy"


def test_copying_the_source_scores_low_bleu():
    pairs = generate(SMALL)["test"]
    sources = [en for en, _ in pairs]
    refs = [de for _, de in pairs]
    assert sacrebleu.corpus_bleu(sources, [refs]).score < 10
    assert sacrebleu.corpus_bleu(refs, [refs]).score > 99


def test_write_toy_writes_prefix_files_once(tmp_path):
    prefixes = {"train": "train", "valid": "dev", "test": "test"}
    directory = write_toy(SMALL, str(tmp_path), prefixes)
    assert sorted(os.listdir(directory)) == sorted(
        ["train.en", "train.de", "dev.en", "dev.de", "test.en", "test.de", "toy.json"]
    )
    with open(os.path.join(directory, "dev.de"), encoding="utf-8") as f:
        assert f.read().split("\n")[:-1] == [de for _, de in generate(SMALL)["valid"]]
    mtime = os.stat(os.path.join(directory, "train.en")).st_mtime_ns
    assert write_toy(SMALL, str(tmp_path), prefixes) == directory
    assert os.stat(os.path.join(directory, "train.en")).st_mtime_ns == mtime
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".tmp")]


# sha256 over the six text files write_toy produces for ToyConfig() (the smoke task's data),
# each as "<name>\n" + bytes, in sorted order. Measured before the word lists moved from
# toy.py to toy_lexicon.yaml and after: the move changed no byte. A change of the lexicon or
# the grammar changes it: then bump GENERATOR_VERSION (new cache key) and this digest.
TOY_TEXT_SHA256 = "37d56be071c49a23f718d4b3aa312d139317b5269edb3760119e0eece2a64dd6"


def test_default_toy_text_is_pinned(tmp_path):
    import hashlib
    from pathlib import Path

    out = Path(write_toy(ToyConfig(), str(tmp_path), {"train": "train", "valid": "valid", "test": "test"}))
    digest = hashlib.sha256()
    for path in sorted(p for p in out.iterdir() if p.suffix in (".en", ".de")):
        digest.update(path.name.encode() + b"\n" + path.read_bytes())
    assert digest.hexdigest() == TOY_TEXT_SHA256


def test_lexicon_is_package_data_with_every_list():
    from importlib import resources

    from nmtbench.data.toy import LEXICON, LEXICON_FILE

    assert resources.files("nmtbench.data").joinpath(LEXICON_FILE).is_file()
    assert (len(LEXICON.nouns), len(LEXICON.verbs), len(LEXICON.adjectives)) == (69, 40, 30)
    assert all(len(v) == 6 for v in LEXICON.clause_verbs) and len(LEXICON.modals[0]) == 4
    assert {p[2] for p in LEXICON.prepositions} == {"acc", "dat"}
