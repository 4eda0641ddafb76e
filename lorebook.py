"""A lorebook: facts added to the system message only while the conversation mentions them.

It comes from Character Cards (``character_book``) and is written in persona files as::

    lorebook:
      scan_depth: 4        # how many recent messages (the new question included) are searched
      token_budget: 500    # the most (estimated) tokens the entries may add to one prompt
      entries:
        - keys: [castle, keep]     # any of them in the recent messages activates the entry
          content: The castle fell in the winter war.
          constant: false          # true: always added
          selective: false         # true: one of secondary_keys must match as well
          secondary_keys: []
          case_sensitive: false
          use_regex: false         # true: keys are regular expressions
          insertion_order: 0       # lower comes first in the system message
          priority: 0              # higher is kept first when the budget is short
          enabled: true
          name: ""

A plain key matches as a whole word (``cat`` does not match ``category``), case-insensitively
unless ``case_sensitive``. Tokens are estimated as one per ``CHARS_PER_TOKEN`` characters,
rounded up: the usual figure for English text with the common tokenizers, and no model needs
to be loaded to count.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Callable, List, Mapping, Optional, Pattern, Sequence, Tuple

DEFAULT_SCAN_DEPTH = 4
DEFAULT_TOKEN_BUDGET = 500
CHARS_PER_TOKEN = 4
_ENTRY_KEYS = ("keys", "content", "constant", "selective", "secondary_keys", "case_sensitive", "use_regex",
               "insertion_order", "priority", "enabled", "name")


@dataclass(frozen=True)
class LoreEntry:
    """One lorebook entry: its trigger keys and the text it adds."""

    keys: Tuple[str, ...]
    content: str
    constant: bool = False
    selective: bool = False
    secondary_keys: Tuple[str, ...] = ()
    case_sensitive: bool = False
    use_regex: bool = False
    insertion_order: int = 0
    priority: int = 0
    enabled: bool = True
    name: str = ""

    def _patterns(self, keys: Sequence[str]) -> List[Pattern[str]]:
        flags = 0 if self.case_sensitive else re.IGNORECASE
        patterns = []
        for key in keys:
            if self.use_regex:
                try:
                    patterns.append(re.compile(key, flags))
                except re.error:
                    continue  # reported when the persona was loaded
            else:
                start = r"(?<!\w)" if key[:1].isalnum() or key[:1] == "_" else ""
                end = r"(?!\w)" if key[-1:].isalnum() or key[-1:] == "_" else ""
                patterns.append(re.compile(start + re.escape(key) + end, flags))
        return patterns

    def matches(self, text: str) -> bool:
        """True when the entry is active for ``text`` (the recent messages joined)."""
        if not self.enabled:
            return False
        if self.constant:
            return True
        if not any(p.search(text) for p in self._patterns(self.keys)):
            return False
        return not self.selective or not self.secondary_keys or any(
            p.search(text) for p in self._patterns(self.secondary_keys))


@dataclass(frozen=True)
class Lorebook:
    """Entries plus how far back to look for keys and how much text they may add."""

    entries: Tuple[LoreEntry, ...] = ()
    scan_depth: int = DEFAULT_SCAN_DEPTH
    token_budget: int = DEFAULT_TOKEN_BUDGET


def estimate_tokens(text: str) -> int:
    """Return the estimated token count of ``text`` (characters / ``CHARS_PER_TOKEN``, rounded up)."""
    return math.ceil(len(text) / CHARS_PER_TOKEN)


def active_entries(lorebook: Optional[Lorebook], recent: Sequence[str]) -> List[str]:
    """Return the contents of the entries ``recent`` (oldest first) activates, within the budget.

    Constant entries are chosen first, then higher ``priority``, then lower ``insertion_order``;
    an entry that does not fit the remaining budget is skipped. The chosen ones come back in
    ``insertion_order``.
    """
    if lorebook is None or not lorebook.entries:
        return []
    window = "\n".join(recent[-lorebook.scan_depth:]) if lorebook.scan_depth > 0 else ""
    active = [(index, entry) for index, entry in enumerate(lorebook.entries)
              if entry.content.strip() and entry.matches(window)]
    active.sort(key=lambda item: (not item[1].constant, -item[1].priority, item[1].insertion_order, item[0]))
    left = lorebook.token_budget
    chosen = []
    for index, entry in active:
        cost = estimate_tokens(entry.content.strip())
        if cost <= left:
            chosen.append((entry.insertion_order, index, entry.content.strip()))
            left -= cost
    return [content for _, _, content in sorted(chosen)]


def _flag(block: Mapping[str, Any], key: str, where: str, problem: Callable[[str, str], None]) -> bool:
    value = block.get(key, False)
    if value is None:
        return False
    if not isinstance(value, bool):
        problem(f"{where}.{key}", f"must be true or false, not {value!r}")
        return False
    return value


def _whole(block: Mapping[str, Any], key: str, where: str, default: int, minimum: Optional[int],
           problem: Callable[[str, str], None]) -> int:
    value = block.get(key, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or (minimum is not None and value < minimum):
        bound = f" of at least {minimum}" if minimum is not None else ""
        problem(f"{where}.{key}", f"must be a whole number{bound}, not {value!r}")
        return default
    return value


def _keys(block: Mapping[str, Any], key: str, where: str, problem: Callable[[str, str], None]) -> Tuple[str, ...]:
    value = block.get(key) or []
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        problem(f"{where}.{key}", "must be a list of text keys")
        return ()
    return tuple(item.strip() for item in value if item.strip())


def parse_entry(block: Any, where: str, problem: Callable[[str, str], None],
                warn: Callable[[str], None]) -> Optional[LoreEntry]:
    """Validate one entry mapping; report through ``problem(where, what)``."""
    if not isinstance(block, Mapping):
        problem(where, f"must be a mapping, not {type(block).__name__}")
        return None
    content = block.get("content", "")
    if not isinstance(content, str):
        problem(f"{where}.content", f"must be text, not {type(content).__name__}")
        return None
    name = block.get("name") if isinstance(block.get("name"), str) else ""
    entry = LoreEntry(
        keys=_keys(block, "keys", where, problem), content=content,
        constant=_flag(block, "constant", where, problem), selective=_flag(block, "selective", where, problem),
        secondary_keys=_keys(block, "secondary_keys", where, problem),
        case_sensitive=_flag(block, "case_sensitive", where, problem),
        use_regex=_flag(block, "use_regex", where, problem),
        insertion_order=_whole(block, "insertion_order", where, 0, None, problem),
        priority=_whole(block, "priority", where, 0, None, problem),
        enabled=block.get("enabled", True) is not False, name=name or "")
    if entry.use_regex:
        for key in entry.keys + entry.secondary_keys:
            try:
                re.compile(key)
            except re.error as err:
                warn(f"{where}: key {key!r} is not a regular expression ({err}); it never matches")
    if not entry.keys and not entry.constant:
        warn(f"{where}: has no keys and is not constant; it never activates")
    unknown = sorted(str(key) for key in block if key not in _ENTRY_KEYS)
    if unknown:
        warn(f"{where}: unknown keys, ignored: {', '.join(unknown)}")
    return entry


def parse_lorebook(block: Mapping[str, Any], problem: Callable[[str, str], None],
                   warn: Callable[[str], None], where: str = "lorebook") -> Lorebook:
    """Validate a ``lorebook`` mapping into a ``Lorebook``."""
    entries = block.get("entries") or []
    if not isinstance(entries, list):
        problem(f"{where}.entries", f"must be a list of entries, not {type(entries).__name__}")
        entries = []
    parsed = [parse_entry(item, f"{where}.entries[{index}]", problem, warn) for index, item in enumerate(entries)]
    unknown = sorted(str(key) for key in block if key not in ("entries", "scan_depth", "token_budget"))
    if unknown:
        warn(f"{where}: unknown keys, ignored: {', '.join(unknown)}")
    return Lorebook(entries=tuple(entry for entry in parsed if entry is not None),
                    scan_depth=_whole(block, "scan_depth", where, DEFAULT_SCAN_DEPTH, 0, problem),
                    token_budget=_whole(block, "token_budget", where, DEFAULT_TOKEN_BUDGET, 0, problem))
