"""Per-language abbreviation rules for the sentence splitter.

The word lists come from pysbd (a maintained sentence-boundary library with tables per language);
what pysbd does not have (Portuguese, and titles written before a name in languages where its
"prepositive" list is empty or holds word prefixes) is listed here. The splitter asks one
question per period: given the word before it and what follows, does the sentence end?

Three kinds of abbreviation:

- ``never``: titles before a name and words always followed by more ("Sr. Silva",
  "Mme. Dupont", "e.g."): never end a sentence.
- ``words``: end a sentence unless the next word starts lowercase or with a digit ("etc. and").
- ``before_number``: end a sentence unless a number follows ("No. 5", "S. 12").

Two language habits besides: German writes ordinals with a period ("Der 3. Oktober"), so a
one- or two-digit number before a period and a space does not end a sentence there; German and
Portuguese/Spanish/French abbreviations written with spaces ("z. B.", "d. h.") start with a
single lowercase letter and a period, which never ends a sentence in those languages.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from functools import lru_cache
from typing import FrozenSet, Iterable, Tuple

__all__ = ["AbbreviationRules", "rules_for"]

#: pysbd module and class per base language tag
_PYSBD = {
    "en": ("pysbd.lang.english", "English"),
    "es": ("pysbd.lang.spanish", "Spanish"),
    "fr": ("pysbd.lang.french", "French"),
    "de": ("pysbd.lang.deutsch", "Deutsch"),
    "it": ("pysbd.lang.italian", "Italian"),
    "nl": ("pysbd.lang.dutch", "Dutch"),
    "da": ("pysbd.lang.danish", "Danish"),
    "pl": ("pysbd.lang.polish", "Polish"),
    "ru": ("pysbd.lang.russian", "Russian"),
}

# Titles and forms of address written before a name, per language.
_TITLES = {
    "en": ("mr", "mrs", "ms", "mx", "dr", "prof", "rev", "st", "mt", "capt", "sgt", "gen", "gov",
           "lt", "col", "maj", "sen", "rep", "messrs", "msgr", "hon", "fr"),
    "pt": ("sr", "sra", "srta", "srs", "sras", "dr", "dra", "drs", "dras", "prof", "profa", "profª",
           "eng", "engª", "arq", "d", "dª", "exmo", "exma", "ilmo", "ilma", "sto", "sta", "v.exa",
           "v.sa", "pe", "fr"),
    "es": ("sr", "sra", "srta", "sres", "sras", "dr", "dra", "dres", "d", "dña", "dª", "ud", "uds",
           "vd", "vds", "lic", "ldo", "lda", "prof", "profa", "ing", "arq", "sto", "sta", "excmo",
           "excma", "ilmo", "ilma", "mons", "pbro", "fr"),
    "fr": ("m", "mm", "mme", "mmes", "mlle", "mlles", "me", "mgr", "dr", "drs", "pr", "prof",
           "st", "ste", "sts", "stes", "vve", "cie"),
    "de": ("hr", "hrn", "fr", "frl", "dr", "prof", "dipl", "ing", "mag", "st"),
    "it": ("sig", "sigg", "sig.ra", "sig.na", "dott", "dott.ssa", "prof", "prof.ssa", "ing",
           "avv", "arch", "on", "mons"),
}

# Abbreviations that end a sentence only before an uppercase word, where pysbd has no table.
_WORDS = {
    "pt": ("etc", "pág", "págs", "p", "pp", "cap", "caps", "vol", "vols", "ex", "obs", "aprox",
           "av", "r", "tel", "cf", "séc", "a.c", "d.c", "a.m", "p.m", "v.g", "i.e", "e.g", "jan",
           "fev", "mar", "abr", "mai", "jun", "jul", "ago", "set", "out", "nov", "dez", "min",
           "seg", "núm", "n.º", "nº", "lda", "ltda", "cia", "dept", "depto", "ref"),
    "es": ("etc", "pág", "págs", "aprox", "núm", "n.º", "nº", "tel", "a.c", "d.c", "a.m", "p.m"),
    "fr": ("etc", "env", "p", "pp", "n°", "no", "av", "bd", "apr", "av. j.-c"),
    "de": ("etc", "usw", "bzw", "ca", "evtl", "ggf", "inkl", "exkl", "vgl", "sog", "z.b", "d.h",
           "u.a", "s.o", "s.u", "o.ä", "u.ä", "z.t", "i.d.r", "m.e", "tel", "str"),
}

_BEFORE_NUMBER = {
    "pt": ("n", "nº", "n.º", "p", "pp", "pág", "págs", "art", "cap", "vol", "fig", "tel", "séc", "núm"),
    "es": ("n", "nº", "n.º", "núm", "p", "pp", "pág", "págs", "art", "cap", "vol", "fig", "tel"),
    "fr": ("n", "n°", "no", "p", "pp", "art", "chap", "vol", "fig", "tél"),
    "de": ("nr", "s", "art", "abs", "bd", "kap", "abb", "tel", "ca"),
    "en": ("no", "nos", "nr", "fig", "figs", "vol", "pp", "p", "ch", "ca", "art", "ext"),
}

# English words the splitter always knew, kept for every language (the speech is often mixed).
_ALWAYS_NEVER = ("mr", "mrs", "ms", "dr", "prof", "e.g", "i.e", "vs", "cf", "viz", "z.b", "d.h")
_ALWAYS_WORDS = ("etc", "approx", "a.m", "p.m", "inc", "ltd")

#: languages whose single lowercase letter + period ("z. B.", "d. h.") never ends a sentence
_SPACED_LETTER_LANGS = frozenset({"de", "pt", "es", "fr", "it"})
#: languages that write ordinal numbers with a period ("3. Oktober")
_ORDINAL_PERIOD_LANGS = frozenset({"de", "da", "nb", "no"})


@dataclass(frozen=True)
class AbbreviationRules:
    """What a period after a word means in one language (all words lowercase, no final period)."""

    never: FrozenSet[str]
    words: FrozenSet[str]
    before_number: FrozenSet[str]
    spaced_letters: bool = False
    ordinal_period: bool = False


def _clean(words: Iterable[str]) -> FrozenSet[str]:
    return frozenset(word.strip().lower().rstrip(".") for word in words if word.strip())


def _pysbd_tables(base: str) -> Tuple[FrozenSet[str], FrozenSet[str], FrozenSet[str]]:
    """Return pysbd's (abbreviations, prepositive, number) lists for ``base``, empty if none."""
    where = _PYSBD.get(base)
    if where is None:
        return frozenset(), frozenset(), frozenset()
    try:
        table = getattr(importlib.import_module(where[0]), where[1]).Abbreviation
    except (ImportError, AttributeError):  # pysbd missing or reorganised: our own lists still work
        return frozenset(), frozenset(), frozenset()
    prepositive = table.PREPOSITIVE_ABBREVIATIONS if base == "en" else ()  # es lists prefixes there
    return (_clean(table.ABBREVIATIONS), _clean(prepositive), _clean(table.NUMBER_ABBREVIATIONS))


@lru_cache(maxsize=64)
def rules_for(lang: str) -> AbbreviationRules:
    """Return the rules for a language tag ("pt-PT", "de", ...); unknown languages get English's."""
    base = (lang or "en").replace("_", "-").split("-")[0].lower() or "en"
    words, prepositive, numbers = _pysbd_tables(base)
    if base not in _PYSBD and base not in _TITLES:
        words, prepositive, numbers = _pysbd_tables("en")
        base_titles: Iterable[str] = _TITLES["en"]
    else:
        base_titles = _TITLES.get(base, ())
    never = _clean((*base_titles, *_ALWAYS_NEVER)) | prepositive
    return AbbreviationRules(
        never=never,
        words=(words | _clean(_WORDS.get(base, ())) | _clean(_ALWAYS_WORDS)) - never,
        before_number=numbers | _clean(_BEFORE_NUMBER.get(base, _BEFORE_NUMBER["en"])),
        spaced_letters=base in _SPACED_LETTER_LANGS,
        ordinal_period=base in _ORDINAL_PERIOD_LANGS)
