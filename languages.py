"""Language tags and the shipped locale files: base-tag comparison, locale lookup, dialog lines."""
from __future__ import annotations

import random
import re
from functools import lru_cache
from pathlib import Path
from typing import List, Optional

import langcodes

LOCALE_DIR = Path(__file__).resolve().parent / "locale"
FALLBACK_LANG = "en-us"
_TAG_RE = re.compile(r"^[A-Za-z]{2,3}([-_][A-Za-z0-9]{2,8})*$")


def normalize_lang(tag: object, default: str = FALLBACK_LANG) -> str:
    """Return a clean lower-case BCP-47 tag (``pt-pt``), or ``default`` for anything malformed."""
    if not isinstance(tag, str) or len(tag) > 35 or not _TAG_RE.match(tag.strip()):
        return default
    return _parse_tag(tag.strip().replace("_", "-")) or default


@lru_cache(maxsize=256)
def _parse_tag(tag: str) -> str:
    try:
        parsed = langcodes.Language.get(tag)
    except (ValueError, LookupError):
        return ""
    if not parsed.language or not parsed.is_valid():
        return ""
    return parsed.to_tag().lower()


@lru_cache(maxsize=256)
def ovos_lang(tag: str) -> str:
    """Return a tag as OVOS writes it on the bus: ``pt-PT``, ``en-US``, ``zh-Hant-TW``."""
    try:
        return langcodes.Language.get(normalize_lang(tag)).to_tag()
    except (ValueError, LookupError):
        return normalize_lang(tag)


@lru_cache(maxsize=256)
def base_lang(tag: str) -> str:
    """Return the base language of a tag: ``pt-BR`` and ``pt-PT`` both give ``pt``."""
    return normalize_lang(tag).split("-")[0]


@lru_cache(maxsize=256)
def lang_name(tag: str) -> str:
    """Return the English name of a tag's base language ("Portuguese" for pt-PT); the tag if unknown."""
    try:
        name = langcodes.Language.get(base_lang(tag)).display_name()
    except (ValueError, LookupError, ImportError):
        return tag
    return name if name and not name.lower().startswith("unknown") else tag


def same_lang(first: str, second: str) -> bool:
    """True when two tags name the same base language."""
    return base_lang(first) == base_lang(second)


@lru_cache(maxsize=64)
def shipped_langs() -> tuple:
    """Return the locale folder names shipped with the skill, sorted."""
    if not LOCALE_DIR.is_dir():
        return ()
    return tuple(sorted(path.name for path in LOCALE_DIR.iterdir() if path.is_dir()))


@lru_cache(maxsize=256)
def locale_dir(lang: str, fallback: bool = True) -> Optional[Path]:
    """Return the shipped locale folder for ``lang`` by exact then base tag; English if ``fallback``."""
    wanted = normalize_lang(lang)
    folders = shipped_langs()
    if wanted in folders:
        return LOCALE_DIR / wanted
    for folder in folders:
        if base_lang(folder) == base_lang(wanted):
            return LOCALE_DIR / folder
    if fallback and FALLBACK_LANG in folders:
        return LOCALE_DIR / FALLBACK_LANG
    return None


@lru_cache(maxsize=512)
def dialog_lines(lang: str, name: str) -> tuple:
    """Return the non-comment lines of ``<name>.dialog`` for ``lang``, falling back to English."""
    for folder in (locale_dir(lang, fallback=False), locale_dir(FALLBACK_LANG, fallback=False)):
        if folder is None:
            continue
        path = folder / f"{name}.dialog"
        if path.is_file():
            lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
            found = tuple(line for line in lines if line and not line.startswith("#"))
            if found:
                return found
    return ()


def random_dialog(lang: str, dialog: str, rng: Optional[random.Random] = None, **values: str) -> str:
    """Return one random line of a dialog with ``{key}`` placeholders filled; "" if none exists."""
    lines: List[str] = list(dialog_lines(lang, dialog))
    if not lines:
        return ""
    line = (rng or random).choice(lines)
    for key, value in values.items():
        line = line.replace("{" + key + "}", str(value))
    return line
