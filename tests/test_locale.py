"""Shipped locale files: every English intent and dialog exists in each language, with matching slots."""
from __future__ import annotations

import re
from pathlib import Path
from typing import FrozenSet, List

import pytest

LOCALE_DIR = Path(__file__).resolve().parent.parent / "locale"
ENGLISH = "en-us"
LANGS = ("en-us", "pt-pt", "es-es", "de-de", "fr-fr")
SLOT_RE = re.compile(r"\{([^{}\s]+)\}")


def _english_files(suffix: str) -> List[str]:
    return sorted(path.name for path in (LOCALE_DIR / ENGLISH).glob(f"*{suffix}"))


INTENTS = _english_files(".intent")
DIALOGS = _english_files(".dialog")


def _lines(path: Path) -> List[str]:
    """Non-empty, non-comment lines of a locale file."""
    stripped = (line.strip() for line in path.read_text(encoding="utf-8").splitlines())
    return [line for line in stripped if line and not line.startswith("#")]


def _slots(path: Path) -> FrozenSet[str]:
    """Every ``{slot}`` name used anywhere in a locale file."""
    return frozenset(name for line in _lines(path) for name in SLOT_RE.findall(line))


def test_english_has_intents_and_dialogs() -> None:
    assert INTENTS, "no .intent files in locale/en-us"
    assert DIALOGS, "no .dialog files in locale/en-us"


@pytest.mark.parametrize("lang", LANGS)
def test_language_folder_is_shipped(lang: str) -> None:
    assert (LOCALE_DIR / lang).is_dir(), f"locale/{lang} missing"


@pytest.mark.parametrize("lang", LANGS)
@pytest.mark.parametrize("name", INTENTS + DIALOGS)
def test_file_exists_and_is_not_empty(lang: str, name: str) -> None:
    path = LOCALE_DIR / lang / name
    assert path.is_file(), f"locale/{lang}/{name} missing"
    assert _lines(path), f"locale/{lang}/{name} has no non-comment line"


@pytest.mark.parametrize("lang", LANGS)
@pytest.mark.parametrize("name", INTENTS)
def test_intent_slots_match_english(lang: str, name: str) -> None:
    path = LOCALE_DIR / lang / name
    if not path.is_file():
        pytest.fail(f"locale/{lang}/{name} missing")
    assert _slots(path) == _slots(LOCALE_DIR / ENGLISH / name), f"locale/{lang}/{name}: slot names differ"


@pytest.mark.parametrize("lang", LANGS)
@pytest.mark.parametrize("name", DIALOGS)
def test_dialog_placeholders_subset_of_english(lang: str, name: str) -> None:
    path = LOCALE_DIR / lang / name
    if not path.is_file():
        pytest.fail(f"locale/{lang}/{name} missing")
    extra = _slots(path) - _slots(LOCALE_DIR / ENGLISH / name)
    assert not extra, f"locale/{lang}/{name}: placeholders not in English: {sorted(extra)}"


@pytest.mark.parametrize("lang", LANGS)
@pytest.mark.parametrize("name", INTENTS)
def test_intent_brackets_balanced(lang: str, name: str) -> None:
    path = LOCALE_DIR / lang / name
    if not path.is_file():
        pytest.fail(f"locale/{lang}/{name} missing")
    for line in _lines(path):
        depth = 0
        for char in line:
            depth += {"(": 1, ")": -1}.get(char, 0)
            assert depth >= 0, f"locale/{lang}/{name}: unbalanced parentheses in {line!r}"
        assert depth == 0, f"locale/{lang}/{name}: unbalanced parentheses in {line!r}"
        assert line.count("{") == line.count("}"), f"locale/{lang}/{name}: unbalanced braces in {line!r}"


def test_every_file_the_code_references_exists_in_every_language():
    """Intent and dialog names used in the code exist in every shipped language."""
    root = Path(__file__).resolve().parent.parent
    sources = "".join(path.read_text(encoding="utf-8") for path in root.glob("*.py"))
    sources += "".join(path.read_text(encoding="utf-8") for path in (root / "solvers").glob("*.py"))
    intents = set(re.findall(r'intent_handler\("([\w.]+\.intent)"\)', sources))
    dialogs = set(re.findall(r'_say_dialog\([^)]*?"(\w+)"', sources))
    dialogs |= set(re.findall(r'random_dialog\([^,]+, "(\w+)"', sources))
    dialogs |= set(re.findall(r'^DIALOG = "(\w+)"', sources, re.MULTILINE))
    assert {"switch_persona.intent", "release_persona.intent"} <= intents
    assert {"thinking", "error", "failure", "unknown_persona"} <= dialogs
    for folder in sorted(p for p in (root / "locale").iterdir() if p.is_dir()):
        for name in sorted(intents) + [f"{d}.dialog" for d in sorted(dialogs)]:
            assert (folder / name).is_file(), f"{folder.name}/{name} is missing"
