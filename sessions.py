"""Per-session state the engine keeps in RAM: answers in flight, and the active persona cache.

``Flights`` knows each session's answers in progress, so "stop" cancels only that session's and
"forget" can mark them unrememberable. ``ActivePersonas`` caches each session's chosen persona
(bounded LRU) in front of the memory store, which keeps the choice across restarts.
"""
from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Dict, List, Optional

from ovos_utils.log import LOG

from .memory import MemoryStore
from .solvers.base import CancelToken


class Flight:
    """One answer in progress: its cancel token and whether a forget made it unrememberable."""

    __slots__ = ("token", "persona", "forgotten")

    def __init__(self, token: CancelToken, persona: str) -> None:
        self.token = token
        self.persona = persona
        self.forgotten = False


class Flights:
    """Answers in progress by session."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_session: Dict[str, List[Flight]] = {}

    def start(self, session_id: str, token: CancelToken, persona: str) -> Flight:
        """Register an answer in progress."""
        flight = Flight(token, persona)
        with self._lock:
            self._by_session.setdefault(session_id, []).append(flight)
        return flight

    def end(self, session_id: str, flight: Flight) -> None:
        """The answer is over."""
        with self._lock:
            flights = self._by_session.get(session_id, [])
            if flight in flights:
                flights.remove(flight)
            if not flights:
                self._by_session.pop(session_id, None)

    def busy(self, session_id: str) -> bool:
        """True while the session has an answer in progress."""
        with self._lock:
            return bool(self._by_session.get(session_id))

    def stop(self, session_id: str) -> bool:
        """Cancel the session's answers in progress; return True if there were any."""
        with self._lock:
            tokens = [flight.token for flight in self._by_session.get(session_id, [])]
        for token in tokens:
            token.cancel()
        return bool(tokens)

    def mark_forgotten(self, session_id: str, persona: Optional[str] = None) -> None:
        """Make the session's answers in progress (one persona's, or all) unrememberable."""
        with self._lock:
            for flight in self._by_session.get(session_id, []):
                if persona in (None, flight.persona):
                    flight.forgotten = True

    def sessions(self) -> List[str]:
        """Sessions with an answer in progress."""
        with self._lock:
            return list(self._by_session)


class ActivePersonas:
    """Each session's chosen persona: a bounded LRU in front of the memory store."""

    def __init__(self, memory: MemoryStore, max_sessions: int) -> None:
        self.memory = memory
        self._max_sessions = max_sessions
        self._lock = threading.Lock()
        self._cache: "OrderedDict[str, str]" = OrderedDict()

    def get(self, session_id: str) -> Optional[str]:
        """The session's chosen persona name, from the cache or the store (cached once found)."""
        with self._lock:
            name = self._cache.get(session_id)
        if name is not None:
            return name
        try:
            name = self.memory.active(session_id)
        except Exception as err:  # memory trouble must never cost the user the answer
            LOG.warning(f"could not read the active persona of session {session_id}: {err!r}")
            return None
        if name is not None:
            self._remember(session_id, name)
        return name

    def set(self, session_id: str, name: str) -> None:
        """Choose ``name`` for the session (kept across restarts by the store)."""
        self._remember(session_id, name)
        self._store(session_id, name)

    def clear(self, session_id: str) -> None:
        """Back to the default persona."""
        with self._lock:
            self._cache.pop(session_id, None)
        self._store(session_id, None)

    def _remember(self, session_id: str, name: str) -> None:
        with self._lock:
            self._cache[session_id] = name
            self._cache.move_to_end(session_id)
            while len(self._cache) > self._max_sessions:
                self._cache.popitem(last=False)

    def _store(self, session_id: str, name: Optional[str]) -> None:
        try:
            if name is None:
                self.memory.clear_active(session_id)
            else:
                self.memory.set_active(session_id, name)
        except Exception as err:  # the in-RAM choice still holds until restart
            LOG.warning(f"could not store the active persona of session {session_id}: {err!r}")
