"""The conversation store contract: what the engine calls, whichever database is behind it."""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import List, Optional

#: injected context kept per session, so a misbehaving app cannot grow it without bound
MAX_CONTEXT_ENTRIES = 20
MAX_CONTEXT_CHARS = 8000
#: injected context (and the active persona) of sessions that never came back is deleted after this long
MAX_CONTEXT_AGE_SECONDS = 7 * 24 * 3600
#: sessions whose active persona is stored; the least recently set is forgotten first
MAX_ACTIVE_SESSIONS = 100_000


@dataclass(frozen=True)
class Turn:
    """One remembered exchange.

    ``question``/``answer`` are in the persona's language (what the solvers saw and said);
    ``user_question``/``user_answer`` are what the user said and heard when translation was used.
    """

    question: str
    answer: str
    created_at: float
    interrupted: bool = False
    user_question: Optional[str] = None
    user_answer: Optional[str] = None
    lang: Optional[str] = None


class MemoryStore(ABC):
    """A bounded, persistent, thread-safe store of conversations (the engine's only view of memory)."""

    #: why the store fell back to RAM until restart (an unusable database), or None
    degraded: Optional[str] = None

    @abstractmethod
    def history(self, session_id: str, persona: str, *, max_turns: int,
                max_age_minutes: float = 0) -> List[Turn]:
        """Return the remembered turns within the limits, oldest first."""

    @abstractmethod
    def record(self, session_id: str, persona: str, question: str, answer: str, *,
               interrupted: bool = False, user_question: Optional[str] = None,
               user_answer: Optional[str] = None, lang: Optional[str] = None,
               max_turns: int, max_age_minutes: float = 0) -> bool:
        """Store one turn atomically and prune; return False when memory is off (max_turns 0)."""

    @abstractmethod
    def forget(self, session_id: str, persona: Optional[str] = None) -> int:
        """Delete a session's turns (one persona's, or all); return how many were deleted."""

    @abstractmethod
    def count_turns(self, session_id: Optional[str] = None) -> int:
        """Return how many turns are stored (for one session, or in all)."""

    @abstractmethod
    def inject_context(self, session_id: str, text: str) -> None:
        """Add a piece of conversational context for a session (kept bounded)."""

    @abstractmethod
    def context(self, session_id: str) -> str:
        """Return a session's injected context, oldest first, blank-line separated and bounded."""

    @abstractmethod
    def clear_context(self, session_id: str) -> int:
        """Delete a session's injected context; return how many pieces were removed."""

    @abstractmethod
    def set_active(self, session_id: str, persona: str) -> None:
        """Remember the session's chosen persona (bounded and aged like injected context)."""

    @abstractmethod
    def clear_active(self, session_id: str) -> None:
        """Forget the session's chosen persona."""

    @abstractmethod
    def active(self, session_id: str) -> Optional[str]:
        """Return the session's chosen persona, or None."""

    @abstractmethod
    def close(self) -> None:
        """Close the database."""
