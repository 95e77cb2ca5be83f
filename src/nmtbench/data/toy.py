"""A generated English->German-like translation task with real structure.

A small grammar and lexicon produce sentence pairs in which German differs from English
the way it does in real data, so BLEU means something (copying the source scores ~0):

- articles and adjective endings agree with the noun's gender, number and case
  ("the small dog sleeps" -> "der kleine Hund schläft", "sees the small dog" ->
  "sieht den kleinen Hund", "with a small dog" -> "mit einem kleinen Hund");
  accusative/dative verbs and prepositions; weak masculine nouns ("den Jungen");
  plurals with umlaut and dative -n ("mit zwei Kindern");
- verb-second main clauses: a fronted time phrase or subordinate clause moves the
  subject after the finite verb ("today the man sees ..." -> "heute sieht der Mann ...");
- verb-final subordinate and relative clauses ("..., weil der Mann den Hund sieht");
- sentence brackets: participles and infinitives go last ("hat den Hund gesehen");
- questions with verb-first order, negation with "nicht"/"kein" in German and
  do-support in English; time phrases sit after the finite verb in German.

German is a deterministic function of English, so a good model can get close to 100 BLEU.
`generate(cfg)` returns the splits; `write_toy(cfg, root, ...)` writes them as
`{prefix}.en` / `{prefix}.de` (atomically) and returns the directory. The output is a pure
function of `ToyConfig`: same config, same bytes.

The word lists (nouns, verbs, adjectives, conjunctions, time phrases, ...) are data:
`toy_lexicon.yaml` beside this module (package data); the grammar and the inflection
tables are the code below.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import tempfile
from dataclasses import asdict, dataclass
from importlib import resources

from nmtbench.data.config import ToyConfig

GENERATOR_VERSION = 1  # bump when the grammar changes: new data, new cache key

# ----------------------------------------------------------------------- inflection

# Case endings of der-words ("der", "dies-") and ein-words ("ein", "mein", "kein").
_DER = {"nom": {"m": "der", "f": "die", "n": "das", "pl": "die"},
        "acc": {"m": "den", "f": "die", "n": "das", "pl": "die"},
        "dat": {"m": "dem", "f": "der", "n": "dem", "pl": "den"}}
_DIES = {"nom": {"m": "er", "f": "e", "n": "es", "pl": "e"},
         "acc": {"m": "en", "f": "e", "n": "es", "pl": "e"},
         "dat": {"m": "em", "f": "er", "n": "em", "pl": "en"}}
_EIN = {"nom": {"m": "", "f": "e", "n": "", "pl": "e"},
        "acc": {"m": "en", "f": "e", "n": "", "pl": "e"},
        "dat": {"m": "em", "f": "er", "n": "em", "pl": "en"}}
# Adjective endings: weak (after der-words), mixed (after ein-words), strong (no article).
_WEAK = {"nom": {"m": "e", "f": "e", "n": "e", "pl": "en"},
         "acc": {"m": "en", "f": "e", "n": "e", "pl": "en"},
         "dat": {"m": "en", "f": "en", "n": "en", "pl": "en"}}
_MIXED = {"nom": {"m": "er", "f": "e", "n": "es", "pl": "en"},
          "acc": {"m": "en", "f": "e", "n": "es", "pl": "en"},
          "dat": {"m": "en", "f": "en", "n": "en", "pl": "en"}}
_STRONG_PL = {"nom": "e", "acc": "e", "dat": "en"}

# Determiners: English word -> (German stem, declension), by number.
_SG_DETS = {"the": ("", "der"), "a": ("ein", "ein"), "this": ("dies", "dies"),
            "my": ("mein", "ein")}
_PL_DETS = {"the": ("", "der"), "these": ("dies", "dies"), "my": ("mein", "ein"),
            "two": ("zwei", "none"), "three": ("drei", "none"), "many": ("viel", "strong"),
            "some": ("einig", "strong"), "": ("", "none")}


@dataclass(frozen=True)
class Noun:
    en: str
    en_pl: str
    de: str
    de_pl: str
    gender: str  # m | f | n
    kind: str  # a (animate) | p (place) | t (thing)
    weak: bool = False  # weak masculine: -n/-en outside the nominative singular


@dataclass(frozen=True)
class Verb:
    en: str
    en_3sg: str
    en_part: str
    de: str
    de_3sg: str
    de_part: str
    aux: str  # haben | sein
    kind: str  # t | d | i | g

    @property
    def de_1sg(self) -> str:
        return self.de[:-1]  # sehen -> sehe, arbeiten -> arbeite


@dataclass(frozen=True)
class Adjective:
    en: str
    de: str
    stem: str  # inflection stem: teuer -> teur-


LEXICON_FILE = "toy_lexicon.yaml"  # package data beside this module: the word lists


def _fields(entry: str) -> list[list[str]]:
    """'man men | Mann Männer | m a' -> [['man', 'men'], ['Mann', 'Männer'], ['m', 'a']]."""
    return [part.split() for part in entry.split("|")]


def _phrases(entry: str) -> tuple[str, ...]:
    """'in the morning | am Morgen' -> ('in the morning', 'am Morgen')."""
    return tuple(part.strip() for part in entry.split("|"))


@dataclass(frozen=True)
class Lexicon:
    """The word lists of `toy_lexicon.yaml`, parsed (order matters: the RNG indexes them)."""

    nouns: list[Noun]
    verbs: list[Verb]
    adjectives: list[Adjective]
    clause_verbs: list[tuple[str, ...]]  # en_base en_3sg de_1sg de_3sg de_pl complementizer
    complementizers: dict[str, str]
    conjunctions: list[tuple[str, ...]]  # (en, de)
    times: list[tuple[str, ...]]  # (en, de)
    modals: list[tuple[str, ...]]  # (en_3sg, en_pl, de_sg, de_pl)
    prepositions: list[tuple[str, ...]]  # (en, de, case)


def load_lexicon() -> Lexicon:
    """Parse the packaged `toy_lexicon.yaml`."""
    import yaml

    text = resources.files("nmtbench.data").joinpath(LEXICON_FILE).read_text(encoding="utf-8")
    raw = yaml.safe_load(text)
    nouns = []
    for en, de, info in map(_fields, raw["nouns"]):
        nouns.append(Noun(en[0], en[1], de[0], de[1], info[0], info[1], weak="weak" in info))
    verbs = []
    for en, de, info in map(_fields, raw["verbs"]):
        aux = {"h": "haben", "s": "sein"}[info[0]]
        verbs.append(Verb(en[0], en[1], en[2], de[0], de[1], de[2], aux, info[1]))
    adjectives = []
    for en, de in map(_fields, raw["adjectives"]):
        adjectives.append(Adjective(en[0], de[0], de[1] if len(de) > 1 else de[0]))
    clause_verbs = [tuple(w for part in _fields(e) for w in part) for e in raw["clause_verbs"]]
    return Lexicon(
        nouns=nouns, verbs=verbs, adjectives=adjectives, clause_verbs=clause_verbs,
        complementizers=dict(map(_phrases, raw["complementizers"])),
        conjunctions=[_phrases(e) for e in raw["conjunctions"]],
        times=[_phrases(e) for e in raw["times"]],
        modals=[_phrases(e) for e in raw["modals"]],
        prepositions=[_phrases(e) for e in raw["prepositions"]],
    )


LEXICON = load_lexicon()
NOUNS, VERBS, ADJECTIVES = LEXICON.nouns, LEXICON.verbs, LEXICON.adjectives


def _round_robin(items: list, key) -> list:
    """Interleave the categories of `items` so that any prefix holds all of them."""
    groups: dict[str, list] = {}
    for item in items:
        groups.setdefault(key(item), []).append(item)
    out, lists = [], list(groups.values())
    for i in range(max(len(g) for g in lists)):
        out.extend(g[i] for g in lists if i < len(g))
    return out


# ------------------------------------------------------------------------ structures


@dataclass
class NP:
    """A noun phrase (or the pronoun "I"/"we" when `noun` is None)."""

    noun: Noun | None
    det: str = "the"  # English determiner ("" = bare plural)
    plural: bool = False
    adj: Adjective | None = None
    pronoun: str = ""  # "I" | "we"
    relative: Clause | None = None  # subject relative clause ("who sees the dog")

    @property
    def person(self) -> str:
        """1sg | 3sg | pl (German and English agree on these three forms)."""
        if self.pronoun == "I":
            return "1sg"
        return "pl" if self.plural or self.pronoun == "we" else "3sg"


@dataclass
class Clause:
    subj: NP
    verb: Verb | None  # None: copula "be" + `pred`
    pred: Adjective | None = None
    obj: NP | None = None  # accusative object (or the dative one of a dative verb)
    iobj: NP | None = None  # dative person of a ditransitive verb
    pp: tuple[str, str, str, NP] | None = None  # (en prep, de prep, case, NP)
    time: tuple[str, str] | None = None
    tense: str = "pres"  # pres | perf | modal
    modal: tuple[str, str, str, str] | None = None
    neg: bool = False


# --------------------------------------------------------------------------- English


def _en_np(np_: NP) -> list[str]:
    if np_.noun is None:
        return [np_.pronoun]
    words = []
    noun = np_.noun.en_pl if np_.plural else np_.noun.en
    first = np_.adj.en if np_.adj else noun
    if np_.det == "a":
        words.append("an" if first[0] in "aeiou" else "a")
    elif np_.det:
        words.append(np_.det)
    if np_.adj:
        words.append(np_.adj.en)
    words.append(noun)
    if np_.relative is not None:
        words.append("who" if np_.noun.kind == "a" else "that")
        words.extend(_en_clause(np_.relative, relative=True))
    return words


def _en_verb_group(c: Clause, question: bool = False) -> tuple[list[str], list[str]]:
    """English (auxiliary that inverts in questions, rest of the verb group)."""
    third = c.subj.person == "3sg"
    neg = ["not"] if c.neg else []
    if c.verb is None:
        return [{"1sg": "am", "3sg": "is", "pl": "are"}[c.subj.person]], neg
    if c.tense == "perf":
        return ["has" if third else "have"], neg + [c.verb.en_part]
    if c.tense == "modal" and not c.modal[0].endswith(" to"):  # can, must
        return [c.modal[0]], neg + [c.verb.en]
    # a full verb (simple present, or "want to" + verb): do-support for not and questions
    base = ["want", "to", c.verb.en] if c.tense == "modal" else [c.verb.en]
    if c.neg or question:
        return ["does" if third else "do"], neg + base
    if not third:
        return [], base
    return [], (["wants", "to", c.verb.en] if c.tense == "modal" else [c.verb.en_3sg])


def _en_rest(c: Clause) -> list[str]:
    words = []
    if c.pred is not None:
        words.append(c.pred.en)
    if c.iobj is not None:
        words += _en_np(c.iobj)
    if c.obj is not None:
        words += _en_np(c.obj)
    if c.pp is not None:
        words += [c.pp[0]] + _en_np(c.pp[3])
    return words


def _en_clause(c: Clause, *, relative: bool = False, question: bool = False,
               time_first: bool = False) -> list[str]:
    aux, rest = _en_verb_group(c, question=question)
    if question:
        words = aux + _en_np(c.subj) + rest + _en_rest(c)
    elif relative:
        words = aux + rest + _en_rest(c)
    else:
        words = _en_np(c.subj) + aux + rest + _en_rest(c)
    if c.time is not None:
        words = ([c.time[0]] + words) if time_first else (words + [c.time[0]])
    return words


# ---------------------------------------------------------------------------- German


def _de_np(np_: NP, case: str, negate: bool = False) -> list[str]:
    """German noun phrase in `case`; `negate` turns "a"/bare into "kein"."""
    if np_.noun is None:
        return [{"I": "ich", "we": "wir"}[np_.pronoun]]
    noun, gkey = np_.noun, ("pl" if np_.plural else np_.noun.gender)
    det_en = np_.det
    if negate and det_en in ("a", ""):
        stem, kind = "kein", "ein"
    else:
        stem, kind = (_PL_DETS if np_.plural else _SG_DETS)[det_en]
    words = []
    if kind == "der":
        words.append(_DER[case][gkey])
    elif kind == "dies":
        words.append(stem + _DIES[case][gkey])
    elif kind == "ein":
        words.append(stem + _EIN[case][gkey])
    elif kind == "strong":
        words.append(stem + _STRONG_PL[case])
    elif stem:
        words.append(stem)
    if np_.adj is not None:
        if kind in ("der", "dies"):
            ending = _WEAK[case][gkey]
        elif kind == "ein":
            ending = _MIXED[case][gkey]
        else:
            ending = _STRONG_PL[case]
        words.append(np_.adj.stem + ending)
    if np_.plural:
        form = noun.de_pl
        if case == "dat" and not form.endswith(("n", "s")):
            form += "n"
    elif noun.weak and case != "nom":
        form = noun.de_pl
    else:
        form = noun.de
    words.append(form)
    if np_.relative is not None:
        words[-1] += ","
        words += [_DER["nom"][gkey]] + _de_clause(np_.relative, "rel")
        words[-1] += ","
    return words


def _de_verbs(c: Clause) -> tuple[str, list[str]]:
    """German (finite verb, non-finite verbs for the end of the clause)."""
    p = c.subj.person
    if c.verb is None:
        return {"1sg": "bin", "3sg": "ist", "pl": "sind"}[p], []
    if c.tense == "perf":
        if c.verb.aux == "haben":
            fin = {"1sg": "habe", "3sg": "hat", "pl": "haben"}[p]
        else:
            fin = {"1sg": "bin", "3sg": "ist", "pl": "sind"}[p]
        return fin, [c.verb.de_part]
    if c.tense == "modal":
        return (c.modal[3] if p == "pl" else c.modal[2]), [c.verb.de]
    return {"1sg": c.verb.de_1sg, "3sg": c.verb.de_3sg, "pl": c.verb.de}[p], []


def _de_middle(c: Clause, *, with_time: bool) -> list[str]:
    """The middle field: [time] [dative] [accusative] [nicht] [PP] [predicate]."""
    words = []
    if with_time and c.time is not None:
        words.append(c.time[1])
    # negation folds into an indefinite object ("keinen Hund") when there is one
    neg_obj = c.obj is not None and c.neg and c.obj.det in ("a", "")
    if c.iobj is not None:
        words += _de_np(c.iobj, "dat")
    if c.obj is not None:
        case = "dat" if c.verb is not None and c.verb.kind == "d" else "acc"
        words += _de_np(c.obj, case, negate=neg_obj)
    if c.neg and not neg_obj:
        words.append("nicht")
    if c.pp is not None:
        _, prep, case, pp_np = c.pp
        np_words = _de_np(pp_np, case)
        if prep in ("in", "von") and np_words[0] == "dem":  # in dem -> im, von dem -> vom
            words += [prep[0] + "m"] + np_words[1:]
        else:
            words += [prep] + np_words
    if c.pred is not None:
        words.append(c.pred.de)
    return words


def _de_clause(c: Clause, order: str) -> list[str]:
    """order: "main" (V2, subject first), "inv" (V2 after a fronted element: the finite
    verb first), "question" (V1), "sub" (verb-final, without the conjunction) or "rel"
    (verb-final subject relative clause: the subject is the relative pronoun)."""
    fin, rest = _de_verbs(c)
    if order == "rel":
        return _de_middle(c, with_time=True) + rest + [fin]
    subj = _de_np(c.subj, "nom")
    if order == "sub":
        return subj + _de_middle(c, with_time=True) + rest + [fin]
    if order == "main":
        return subj + [fin] + _de_middle(c, with_time=True) + rest
    return [fin] + subj + _de_middle(c, with_time=True) + rest


# ------------------------------------------------------------------------- generator


class ToyGrammar:
    """Samples clauses from the (possibly truncated) lexicon with a seeded RNG."""

    def __init__(self, cfg: ToyConfig, rng: random.Random):
        self.rng = rng
        nouns = _round_robin(NOUNS, lambda n: n.kind)[: cfg.num_nouns]
        self.animate = [n for n in nouns if n.kind == "a"] or nouns
        self.places = [n for n in nouns if n.kind == "p"]
        self.nouns = nouns
        verbs = _round_robin(VERBS, lambda v: v.kind)[: cfg.num_verbs]
        self.verbs = verbs
        self.adjectives = ADJECTIVES[: cfg.num_adjectives]

    def np(self, *, animate: bool, allow_pronoun: bool = False, place: bool = False) -> NP:
        r = self.rng
        if allow_pronoun and r.random() < 0.12:
            return NP(None, pronoun=r.choice(["I", "we"]))
        noun = r.choice(self.places if place else (self.animate if animate else self.nouns))
        adj = r.choice(self.adjectives) if r.random() < 0.4 else None
        if place:
            return NP(noun, "the", False, adj)
        plural = r.random() < 0.3
        det = r.choice(list(_PL_DETS) if plural else list(_SG_DETS))
        return NP(noun, det, plural, adj)

    def clause(self, *, allow_relative: bool = False) -> Clause:
        r = self.rng
        subj = self.np(animate=True, allow_pronoun=True)
        if allow_relative and subj.noun is not None and r.random() < 0.5:
            subj.relative = self.clause_core(NP(subj.noun, plural=subj.plural), simple=True)
        return self.clause_core(subj)

    def clause_core(self, subj: NP, simple: bool = False) -> Clause:
        r = self.rng
        if r.random() < 0.1:
            c = Clause(subj, None, pred=r.choice(self.adjectives))
        else:
            verb = r.choice(self.verbs)
            c = Clause(subj, verb)
            if verb.kind in ("t", "g"):
                c.obj = self.np(animate=False)
            elif verb.kind == "d":
                c.obj = self.np(animate=True)
            if verb.kind == "g":
                c.iobj = self.np(animate=True)
            c.tense = r.choices(["pres", "perf", "modal"], [0.5, 0.25, 0.25])[0]
            if c.tense == "modal":
                c.modal = r.choice(LEXICON.modals)
            if not simple and r.random() < 0.3:
                if self.places and r.random() < 0.4:
                    c.pp = ("in", "in", "dat", self.np(animate=False, place=True))
                else:
                    en, de, case = r.choice(LEXICON.prepositions)
                    c.pp = (en, de, case, self.np(animate=r.random() < 0.5))
        if not simple and r.random() < 0.2:
            c.time = r.choice(LEXICON.times)
        c.neg = c.tense != "modal" and r.random() < 0.12
        return c

    def sentence(self) -> tuple[str, str]:
        """One (English, German) pair."""
        r = self.rng
        kind = r.choices(
            ["simple", "time_first", "question", "complement", "adverbial", "fronted", "relative"],
            [0.26, 0.1, 0.1, 0.14, 0.14, 0.13, 0.13],
        )[0]
        if kind == "simple":
            c = self.clause()
            return _finish(_en_clause(c), _de_clause(c, "main"), ".")
        if kind == "time_first":
            c = self.clause()
            c.time = c.time or r.choice(LEXICON.times)
            de = [c.time[1]] + _de_clause(_without_time(c), "inv")
            return _finish(_en_clause(c, time_first=True), de, ".")
        if kind == "question":
            c = self.clause()
            return _finish(_en_clause(c, question=True), _de_clause(c, "question"), "?")
        if kind == "relative":
            c = self.clause(allow_relative=True)
            return _finish(_en_clause(c), _de_clause(c, "main"), ".")
        if kind == "complement":
            subj = self.np(animate=True, allow_pronoun=True)
            en_base, en_3sg, de_1sg, de_3sg, de_pl, comp = r.choice(LEXICON.clause_verbs)
            p = subj.person
            en_verb = en_3sg if p == "3sg" else en_base
            de_verb = {"1sg": de_1sg, "3sg": de_3sg, "pl": de_pl}[p]
            inner = self.clause()
            en = _en_np(subj) + [en_verb, comp] + _en_clause(inner)
            de = _de_np(subj, "nom") + [de_verb + ",", LEXICON.complementizers[comp]]
            return _finish(en, de + _de_clause(inner, "sub"), ".")
        conj_en, conj_de = r.choice(LEXICON.conjunctions)
        main, sub = self.clause(), self.clause()
        if kind == "adverbial":
            en = _en_clause(main) + [conj_en] + _en_clause(sub)
            de = _de_clause(main, "main")
            de[-1] += ","
            return _finish(en, de + [conj_de] + _de_clause(sub, "sub"), ".")
        # fronted subordinate clause: it fills the first position, the verb comes next
        en = [conj_en] + _en_clause(sub)
        en[-1] += ","
        de = [conj_de] + _de_clause(sub, "sub")
        de[-1] += ","
        return _finish(en + _en_clause(main), de + _de_clause(main, "inv"), ".")


def _without_time(c: Clause) -> Clause:
    return Clause(c.subj, c.verb, c.pred, c.obj, c.iobj, c.pp, None, c.tense, c.modal, c.neg)


def _finish(en: list[str], de: list[str], punct: str) -> tuple[str, str]:
    en_s, de_s = " ".join(en) + punct, " ".join(de) + punct
    return en_s[0].upper() + en_s[1:], de_s[0].upper() + de_s[1:]


# ----------------------------------------------------------------------------- output


def generate(cfg: ToyConfig) -> dict[str, list[tuple[str, str]]]:
    """Generate the splits: {"train"|"valid"|"test": [(en, de), ...]}.

    Test, then valid are drawn first as distinct sentences; training pairs never repeat
    an English sentence of valid or test. Sentences of fewer than 5 English words are
    redrawn (sentence BLEU of very short lines is degenerate).
    """
    rng = random.Random(cfg.seed)
    grammar = ToyGrammar(cfg, rng)

    def draw() -> tuple[str, str]:
        while True:
            en, de = grammar.sentence()
            if len(en.split()) >= 5:
                return en, de

    held_out: set[str] = set()
    splits: dict[str, list[tuple[str, str]]] = {}
    for split, size in (("test", cfg.num_test), ("valid", cfg.num_valid)):
        pairs: list[tuple[str, str]] = []
        for _ in range(100 * size):
            if len(pairs) == size:
                break
            en, de = draw()
            if en not in held_out:
                held_out.add(en)
                pairs.append((en, de))
        splits[split] = pairs
    train: list[tuple[str, str]] = []
    while len(train) < cfg.num_train:
        en, de = draw()
        if en not in held_out:
            train.append((en, de))
    splits["train"] = train
    return {"train": splits["train"], "valid": splits["valid"], "test": splits["test"]}


def toy_identity(cfg: ToyConfig) -> dict:
    """What determines the generated text (goes into cache keys)."""
    return {"generator_version": GENERATOR_VERSION, **asdict(cfg)}


def toy_hash(cfg: ToyConfig) -> str:
    blob = json.dumps(toy_identity(cfg), sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:12]


def write_toy(cfg: ToyConfig, root: str, prefixes: dict[str, str]) -> str:
    """Write the toy splits under `root`/toy-<hash>/ as `{prefix}.en` / `{prefix}.de`.

    `prefixes` maps split -> file prefix. Reuses the directory when it already exists;
    builds in a temporary directory and renames it into place, so a crash never leaves
    half-written files behind. Returns the directory.
    """
    out = os.path.join(root, f"toy-{toy_hash(cfg)}")
    names = [f"{prefixes[s]}.{lang}" for s in ("train", "valid", "test") for lang in ("en", "de")]
    if all(os.path.exists(os.path.join(out, n)) for n in names):
        return out
    os.makedirs(root, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".tmp-toy-", dir=root)
    try:
        for split, pairs in generate(cfg).items():
            for lang, side in (("en", 0), ("de", 1)):
                path = os.path.join(tmp, f"{prefixes[split]}.{lang}")
                with open(path, "w", encoding="utf-8", newline="\n") as f:
                    f.writelines(pair[side] + "\n" for pair in pairs)
        with open(os.path.join(tmp, "toy.json"), "w") as f:
            json.dump(toy_identity(cfg), f, indent=2)
        if os.path.isdir(out):  # an incomplete directory from another writer: replace it
            shutil.rmtree(out, ignore_errors=True)
        try:
            os.replace(tmp, out)
        except OSError:
            if not os.path.isdir(out):  # someone else finished first: theirs is identical
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out
