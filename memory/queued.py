"""Changes that wait out a database outage: a bounded in-memory queue in front of any store.

A locked SQLite file or an unreachable PostgreSQL server is temporary. While it lasts every change
(turn, forget, context, active persona) waits here, in order, and is written when the database
works again: tried before the next write or read, and every ``retry_interval_s`` by a timer.
Reads merge the waiting changes over what the database returns, so a conversation goes on
seamlessly. The outage is logged once when it starts and once when it ends; the queue holds at
most ``max_pending`` changes (the oldest is dropped, with one warning per outage). Changes still
waiting when the process ends are lost, which ``close`` reports.
"""
from __future__ import annotations

import threading
import time
import uuid
from abc import abstractmethod
from collections import deque
from dataclasses import dataclass
from typing import Callable, Deque, List, Optional

from ovos_utils.log import LOG

from .base import MAX_CONTEXT_CHARS, MAX_CONTEXT_ENTRIES, MemoryStore, Turn

#: changes kept while the database cannot be written; beyond this the oldest is dropped
MAX_PENDING_WRITES = 1000
#: how often waiting changes are retried when nothing else touches the store
RETRY_INTERVAL_S = 5.0
#: while an outage lasts, reads and writes try the database at most this often (else they use the queue)
RETRY_GAP_S = 1.0

TURN, FORGET, CONTEXT, CLEAR_CONTEXT, ACTIVE = "turn", "forget", "context", "clear_context", "active"


class StoreUnavailable(Exception):
    """The database is locked or unreachable for now; the same change may succeed later."""


class StoreFailure(RuntimeError):
    """The database refused a change for good (not an outage): retrying it would not help."""


@dataclass(frozen=True)
class Write:
    """One change for the database; ``persona`` None means "all personas" (forget) or "none" (active)."""

    kind: str
    session_id: str
    persona: Optional[str] = None
    turn: Optional[Turn] = None
    text: str = ""
    max_turns: int = 0
    max_age_minutes: float = 0
    at: float = 0.0
    #: the turn's identity, so a write retried after a lost commit reply is not stored twice
    key: str = ""


class QueuedStore(MemoryStore):
    """The contract's public methods on top of a few database primitives, with the outage queue."""

    def __init__(self, clock: Callable[[], float] = time.time, *, max_pending: int = MAX_PENDING_WRITES,
                 retry_interval_s: float = RETRY_INTERVAL_S) -> None:
        self._clock = clock
        self.max_pending = max_pending
        self.retry_interval_s = retry_interval_s
        #: why the database cannot be used right now (an outage in progress), or None
        self.outage: Optional[str] = None
        #: changes dropped because the queue was full, since the store was opened
        self.dropped = 0
        self._pending: Deque[Write] = deque()
        self._queue_lock = threading.RLock()
        self._state_lock = threading.Lock()
        self._full_reported = False
        self._write_failed_at = 0.0
        self._read_failed_at = 0.0
        self._closed = threading.Event()
        self._retrier: Optional[threading.Thread] = None

    # -- what a database provides (each raises StoreUnavailable for a temporary failure) -----

    #: the store's name in log lines (never with credentials)
    label: str = "?"

    @abstractmethod
    def _apply(self, write: Write, *, quick: bool) -> int:
        """Write one change in one transaction; return the rows it deleted or changed."""

    @abstractmethod
    def _select_turns(self, session_id: str, persona: str, max_turns: int, cutoff: float,
                      *, quick: bool) -> List[Turn]:
        """Return the newest ``max_turns`` turns created at or after ``cutoff``, oldest first."""

    @abstractmethod
    def _select_context(self, session_id: str, *, quick: bool) -> List[str]:
        """Return the session's injected context pieces, oldest first."""

    @abstractmethod
    def _select_active(self, session_id: str, *, quick: bool) -> Optional[str]:
        """Return the session's stored active persona, or None."""

    @abstractmethod
    def _count(self, session_id: Optional[str], *, quick: bool) -> int:
        """Return how many turns the database holds (for one session, or in all)."""

    @abstractmethod
    def _close(self) -> None:
        """Release the database."""

    def _probe(self) -> None:
        """Raise ``StoreUnavailable`` if a write would fail now (cheaply, holding no queue lock)."""

    # -- the queue ---------------------------------------------------------------------------

    @property
    def pending(self) -> int:
        """How many changes wait for the database."""
        return len(self._pending)

    def _note_outage(self, err: StoreUnavailable, reading: bool = False) -> None:
        with self._state_lock:  # threads failing together report the outage once
            if self.outage is None:
                LOG.error(f"conversation database {self.label} cannot be used for now ({err}); changes wait in "
                          f"memory (up to {self.max_pending}) and are written when it works again")
            self.outage = str(err)
        if reading:
            self._read_failed_at = time.monotonic()
        else:
            self._write_failed_at = time.monotonic()

    def _may_try(self, reading: bool = False) -> bool:
        """False while a failure is fresh: the call uses the queue instead of waiting on the database.

        Reads and writes are told apart: a locked SQLite file still serves reads.
        """
        failed_at = self._read_failed_at if reading else self._write_failed_at
        return self.outage is None or time.monotonic() - failed_at >= RETRY_GAP_S

    def _note_working(self, written: int = 0) -> None:
        if self.outage is None:
            return
        with self._state_lock:
            if self.outage is not None and not self._pending:
                LOG.info(f"conversation database {self.label} works again; wrote {written} waiting changes")
                self.outage = None
                self._full_reported = False

    def _enqueue(self, write: Write) -> None:
        with self._queue_lock:
            if len(self._pending) >= self.max_pending:
                self._pending.popleft()
                self.dropped += 1
                if not self._full_reported:
                    LOG.warning(f"conversation database {self.label}: {self.max_pending} changes wait already; "
                                f"dropping the oldest ones until it works again")
                    self._full_reported = True
            self._pending.append(write)
            if self._retrier is None and not self._closed.is_set():
                self._retrier = threading.Thread(target=self._retry_loop, name="memory-retry", daemon=True)
                self._retrier.start()

    def flush(self) -> bool:
        """Write the waiting changes in order; return True when none is left waiting."""
        if self._pending and self.outage is not None:
            try:  # outside the lock, so reads and new changes are not held up by a dead database
                self._probe()
            except StoreUnavailable as err:
                self._note_outage(err)
                return False
        with self._queue_lock:
            written = 0
            while self._pending:
                try:
                    self._apply(self._pending[0], quick=True)
                except StoreUnavailable as err:
                    self._note_outage(err)
                    return False
                except StoreFailure as err:  # dropped: retrying it would block every later change forever
                    LOG.error(f"dropping a waiting {self._pending[0].kind} change: {err}")
                self._pending.popleft()
                written += 1
            self._note_working(written)
            return True

    def _retry_loop(self) -> None:
        while not self._closed.wait(self.retry_interval_s):
            self.flush()  # not under the queue lock: its probe may wait on a dead database
            with self._queue_lock:
                if not self._pending:
                    self._retrier = None
                    return

    def _submit(self, write: Write) -> Optional[int]:
        """Write now, or queue behind earlier waiting changes; return the rows changed, None if queued."""
        if not self._may_try() or (self._pending and not self.flush()):
            with self._queue_lock:
                self._enqueue(write)
            return None
        try:
            changed = self._apply(write, quick=self.outage is not None)
        except StoreUnavailable as err:
            with self._queue_lock:
                self._note_outage(err)
                self._enqueue(write)
            return None
        self._note_working()
        return changed

    def _read(self, select: Callable[[bool], object], empty: object) -> "tuple[object, List[Write]]":
        """Run a select and take the waiting changes to merge over it (``empty`` if it fails)."""
        if self._pending and self._may_try():
            self.flush()
        if not self._may_try(reading=True):
            with self._queue_lock:
                return empty, list(self._pending)
        if not self._pending:
            try:
                result = select(self.outage is not None)
            except (StoreUnavailable, StoreFailure) as err:  # a read never costs the user the answer
                self._note_outage(StoreUnavailable(str(err)), reading=True)
                return empty, []
            self._note_working()
            return result, []
        with self._queue_lock:  # the select and the snapshot agree: no change is seen twice or missed
            waiting = list(self._pending)
            try:
                return select(True), waiting
            except (StoreUnavailable, StoreFailure) as err:
                self._note_outage(StoreUnavailable(str(err)), reading=True)
                return empty, waiting

    # -- turns -------------------------------------------------------------------------------

    def history(self, session_id: str, persona: str, *, max_turns: int,
                max_age_minutes: float = 0) -> List[Turn]:
        """Return the remembered turns within the limits, oldest first."""
        if max_turns <= 0:
            return []
        # expired turns are filtered here and deleted by the next record()'s prune
        cutoff = self._clock() - max_age_minutes * 60 if max_age_minutes > 0 else float("-inf")
        rows, waiting = self._read(
            lambda quick: self._select_turns(session_id, persona, max_turns, cutoff, quick=quick), [])
        turns: List[Turn] = list(rows)  # type: ignore[call-overload]
        for write in waiting:
            if write.session_id != session_id:
                continue
            if write.kind == FORGET and write.persona in (None, persona):
                turns = []
            elif write.kind == TURN and write.persona == persona and write.turn is not None:
                turns.append(write.turn)
        return [turn for turn in turns if turn.created_at >= cutoff][-max_turns:]

    def record(self, session_id: str, persona: str, question: str, answer: str, *,
               interrupted: bool = False, user_question: Optional[str] = None,
               user_answer: Optional[str] = None, lang: Optional[str] = None,
               max_turns: int, max_age_minutes: float = 0) -> bool:
        """Store one turn atomically and prune; return False when memory is off (max_turns 0)."""
        if max_turns <= 0:
            return False
        now = self._clock()
        turn = Turn(question, answer, now, interrupted, user_question, user_answer, lang)
        self._submit(Write(TURN, session_id, persona, turn=turn, max_turns=max_turns,
                           max_age_minutes=max_age_minutes, at=now, key=uuid.uuid4().hex))
        return True

    def forget(self, session_id: str, persona: Optional[str] = None) -> int:
        """Delete a session's turns (one persona's, or all); return how many were deleted.

        While the database cannot be used, the count covers only the turns that were waiting.
        """
        with self._queue_lock:
            waiting = sum(1 for w in self._pending if w.kind == TURN and w.session_id == session_id
                          and persona in (None, w.persona))
        deleted = self._submit(Write(FORGET, session_id, persona, at=self._clock()))
        return waiting if deleted is None else deleted

    def count_turns(self, session_id: Optional[str] = None) -> int:
        """Return how many turns are stored (for one session, or in all), waiting ones included."""
        stored, waiting = self._read(lambda quick: self._count(session_id, quick=quick), 0)
        return stored + sum(1 for w in waiting if w.kind == TURN  # type: ignore[operator]
                            and session_id in (None, w.session_id))

    # -- injected context --------------------------------------------------------------------

    def inject_context(self, session_id: str, text: str) -> None:
        """Add a piece of conversational context for a session (kept bounded)."""
        self._submit(Write(CONTEXT, session_id, text=text[:MAX_CONTEXT_CHARS], at=self._clock()))

    def context(self, session_id: str) -> str:
        """Return a session's injected context, oldest first, blank-line separated and bounded."""
        rows, waiting = self._read(lambda quick: self._select_context(session_id, quick=quick), [])
        pieces: List[str] = list(rows)  # type: ignore[call-overload]
        for write in waiting:
            if write.session_id == session_id and write.kind == CONTEXT:
                pieces.append(write.text)
            elif write.session_id == session_id and write.kind == CLEAR_CONTEXT:
                pieces = []
        text = "\n\n".join(piece.strip() for piece in pieces[-MAX_CONTEXT_ENTRIES:] if piece.strip())
        return text[-MAX_CONTEXT_CHARS:]

    def clear_context(self, session_id: str) -> int:
        """Delete a session's injected context; return how many pieces were removed."""
        with self._queue_lock:
            waiting = sum(1 for w in self._pending if w.kind == CONTEXT and w.session_id == session_id)
        removed = self._submit(Write(CLEAR_CONTEXT, session_id, at=self._clock()))
        return waiting if removed is None else removed

    # -- active persona ----------------------------------------------------------------------

    def set_active(self, session_id: str, persona: str) -> None:
        """Remember the session's chosen persona (bounded and aged like injected context)."""
        self._submit(Write(ACTIVE, session_id, persona, at=self._clock()))

    def clear_active(self, session_id: str) -> None:
        """Forget the session's chosen persona."""
        self._submit(Write(ACTIVE, session_id, None, at=self._clock()))

    def active(self, session_id: str) -> Optional[str]:
        """Return the session's chosen persona, or None."""
        name, waiting = self._read(lambda quick: self._select_active(session_id, quick=quick), None)
        for write in waiting:
            if write.session_id == session_id and write.kind == ACTIVE:
                name = write.persona
        return name  # type: ignore[return-value]

    def close(self) -> None:
        """Write what still waits if the database allows, then close it (reporting what is lost)."""
        self._closed.set()
        retrier = self._retrier
        if retrier is not None and retrier is not threading.current_thread():
            retrier.join(timeout=10)
        if self._pending and not self.flush():
            LOG.error(f"conversation database {self.label} still cannot be used; "
                      f"{len(self._pending)} waiting changes are lost")
        self._close()
