"""The skill's settings: defaults in one place, and validation that keeps the last good value."""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

from .formats.common import chain_entries
from .persona import DEFAULT_SOLVERS

DEFAULT_SETTINGS: Dict[str, Any] = {
    "enabled": True,
    "default_persona": "Ava",
    "persona_dirs": [],
    # the chain of personas whose file names no backend (Character Cards, LoLLMs)
    "default_solvers": list(DEFAULT_SOLVERS),
    "priority": 90,
    "thinking_delay": 2.0,
    "max_turns": 12,
    "max_age_minutes": 1440,
    "max_utterance_chars": 2000,
    "db_path": "",
    "db_url": "",
    "default_lang": "en-us",
    "translation_module": "",
    "detection_module": "",
    "max_concurrent_answers": 4,
    "max_waiting_answers": 16,
}


@dataclass(frozen=True)
class _Rule:
    check: Callable[[Any], bool]
    expected: str
    #: turns what a settings UI or a JSON file may hold into the value's own type, before the check
    convert: Optional[Callable[[Any], Any]] = None
    #: how a rejected value is shown in the problem line (a secret is masked)
    shown: Callable[[Any], str] = repr


def _whole(value: Any) -> Any:
    """90.0 -> 90: settings UIs and some JSON writers store every number as a float."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def _json_list(value: Any) -> Any:
    """A settings UI's text field holding a JSON list: the list it holds."""
    if isinstance(value, str) and value.strip().startswith("["):
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


def _folder_list(value: Any) -> Any:
    """A settings UI has no list field: accept text, one folder per line or comma separated."""
    value = _json_list(value)
    if not isinstance(value, str) or value.strip().startswith("["):
        return value
    return [part.strip() for line in value.splitlines() for part in line.split(",") if part.strip()]


def _masked_url(value: Any) -> str:
    """repr() of a database URL with any password replaced by ***."""
    return repr(re.sub(r"(//[^/@:]*:)[^@/]*@", r"\1***@", value)) if isinstance(value, str) else repr(value)


def _number(low: float, high: float, integer: bool = False) -> _Rule:
    kind = int if integer else (int, float)
    word = "a whole number" if integer else "a number"
    return _Rule(lambda v: isinstance(v, kind) and not isinstance(v, bool) and low <= v <= high,
                 f"{word} from {low:g} to {high:g}", _whole if integer else None)


def _solver_chain(value: Any) -> bool:
    try:
        chain_entries(value)
    except ValueError:
        return False
    return isinstance(value, list)


_RULES: Dict[str, _Rule] = {
    "enabled": _Rule(lambda v: isinstance(v, bool), "true or false"),
    "default_persona": _Rule(lambda v: isinstance(v, str) and bool(v.strip()), "a persona name"),
    "persona_dirs": _Rule(lambda v: isinstance(v, list) and all(isinstance(i, str) for i in v),
                          "a list of folder paths (or text: one per line, or comma separated)",
                          _folder_list),
    "default_solvers": _Rule(_solver_chain, "a non-empty list of solver ids or {id: config} mappings",
                             _json_list),
    "priority": _number(0, 100, integer=True),
    "thinking_delay": _number(0, 60),
    "max_turns": _number(0, 1000, integer=True),
    "max_age_minutes": _number(0, 10 ** 7),
    "max_utterance_chars": _number(10, 100_000, integer=True),
    "db_path": _Rule(lambda v: isinstance(v, str), "a file path, or empty for the default"),
    "db_url": _Rule(lambda v: isinstance(v, str) and (not v.strip() or v.strip().startswith(
        ("postgresql://", "postgres://"))), "a postgresql://user:password@host:port/database URL, or empty "
        "for SQLite", shown=_masked_url),
    "default_lang": _Rule(lambda v: isinstance(v, str) and 2 <= len(v) <= 35, "a language tag"),
    "translation_module": _Rule(lambda v: isinstance(v, str), "a plugin name, or empty for mycroft.conf's"),
    "detection_module": _Rule(lambda v: isinstance(v, str), "a plugin name, or empty for mycroft.conf's"),
    "max_concurrent_answers": _number(1, 64, integer=True),
    "max_waiting_answers": _number(0, 1000, integer=True),
}


def validate_settings(raw: Mapping[str, Any], previous: Mapping[str, Any]) -> Tuple[Dict[str, Any], List[str]]:
    """Return the effective settings and one problem line per rejected value.

    A missing key takes the default; a bad value keeps ``previous`` (the last good value).
    Unknown keys are ignored.
    """
    effective: Dict[str, Any] = {}
    problems: List[str] = []
    for key, default in DEFAULT_SETTINGS.items():
        value = raw.get(key, default) if isinstance(raw, Mapping) else default
        rule = _RULES[key]
        if rule.convert is not None:
            value = rule.convert(value)
        if rule.check(value):
            effective[key] = value
        else:
            kept = previous.get(key, default)
            effective[key] = kept
            problems.append(f"setting {key}: expected {rule.expected}, got {rule.shown(value)}; "
                            f"keeping {rule.shown(kept)}")
    return effective, problems
