"""What every reader shares: the default chain, typed field access with problems named by the
foreign field, and the one warning line that names the ignored fields."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Dict, FrozenSet, Iterable, List, Mapping, Optional, Sequence, Tuple

from ..persona import DEFAULT_SOLVERS, PersonaError


def chain_entries(value: Any) -> Tuple[Tuple[str, Mapping[str, Any]], ...]:
    """Normalise a ``default_solvers`` value: ids, or one-key mappings ``{id: config}``.

    Raises ``ValueError`` naming the bad entry.
    """
    if not isinstance(value, (list, tuple)) or not value:
        raise ValueError("must be a non-empty list of solver ids or {id: config} mappings")
    entries = []
    for item in value:
        if isinstance(item, str) and item.strip():
            entries.append((item.strip(), {}))
        elif isinstance(item, Mapping) and len(item) == 1:
            (solver_id, config), = item.items()
            if not isinstance(solver_id, str) or not solver_id.strip() or not isinstance(config, Mapping):
                raise ValueError(f"entry {item!r} must map a solver id to its settings")
            entries.append((solver_id.strip(), dict(config)))
        else:
            raise ValueError(f"entry {item!r} is neither a solver id nor an {{id: config}} mapping")
    return tuple(entries)


@dataclass
class ReadContext:
    """What a reader needs besides the data: where it came from and which solvers exist."""

    source: str
    known_solvers: Optional[FrozenSet[str]] = None
    default_solvers: Sequence[Any] = DEFAULT_SOLVERS
    stem: str = ""

    def default_chain(self, document: Dict[str, Any]) -> None:
        """Put the default chain (ids and any configs) into ``document``."""
        try:
            entries = chain_entries(list(self.default_solvers))
        except ValueError:
            entries = chain_entries(list(DEFAULT_SOLVERS))
        document["solvers"] = [solver_id for solver_id, _ in entries]
        for solver_id, config in entries:
            if config:
                document[solver_id] = dict(config)


@dataclass
class Fields:
    """Typed access to a foreign mapping; wrong types become problems named by the foreign field."""

    data: Mapping[str, Any]
    ctx: ReadContext
    problems: List[str] = field(default_factory=list)
    warnings: List[str] = field(default_factory=list)

    def problem(self, where: str, what: str) -> None:
        self.problems.append(f"{self.ctx.source}: {where}: {what}")

    def warn(self, what: str) -> None:
        self.warnings.append(f"{self.ctx.source}: {what}")

    def text(self, key: str, data: Optional[Mapping[str, Any]] = None, where: str = "") -> str:
        value = (self.data if data is None else data).get(key)
        if value is None:
            return ""
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        if not isinstance(value, str):
            self.problem(where + key, f"must be text, not {type(value).__name__}")
            return ""
        return value

    def mapping(self, key: str, data: Optional[Mapping[str, Any]] = None, where: str = "") -> Mapping[str, Any]:
        value = (self.data if data is None else data).get(key)
        if value is None:
            return {}
        if not isinstance(value, Mapping):
            self.problem(where + key, f"must be a mapping, not {type(value).__name__}")
            return {}
        return value

    def strings(self, key: str, data: Optional[Mapping[str, Any]] = None, where: str = "") -> List[str]:
        value = (self.data if data is None else data).get(key)
        if value is None:
            return []
        if isinstance(value, str):
            return [value]
        if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
            self.problem(where + key, "must be a list of text")
            return []
        return list(value)

    def number(self, key: str, data: Optional[Mapping[str, Any]] = None) -> Optional[float]:
        """Return a number field, or None when absent; a non-number is left for validation to report."""
        value = (self.data if data is None else data).get(key)
        if value is None or isinstance(value, bool) or not isinstance(value, (int, float)) \
                or not math.isfinite(value):
            if value is not None:
                self.problem(key, f"must be a number, not {value!r}")
            return None
        return value

    def ignored(self, keys: Iterable[Any], where: str = "") -> None:
        """Warn once, naming every field that has no meaning here."""
        names = sorted(str(key) for key in keys)
        if names:
            self.warn(f"{where + ': ' if where else ''}ignored fields: {', '.join(names)}")

    def finish(self) -> None:
        """Raise ``PersonaError`` when any problem was found."""
        if self.problems:
            raise PersonaError(self.problems)
