"""Conversation memory in SQLite: turns per (session, persona), injected context and the active persona.

One connection per store, guarded by a lock, in WAL mode with a busy timeout, so threads and
several processes can share one file. Each change is one transaction: a crash leaves a turn
either whole or absent. A lock held past the busy timeout is temporary: changes wait in the
queue of ``queued.QueuedStore`` and are written once the lock is gone. Only a file that cannot be
used (read-only, unopenable) makes the store report it once and keep working in RAM until
restart; a corrupt file is moved aside, never deleted, and a new one started.
"""
from __future__ import annotations

import os
import sqlite3
import threading
import time
from pathlib import Path
from typing import Callable, List, Optional, Union

from ovos_utils.log import LOG

from .base import MAX_ACTIVE_SESSIONS, MAX_CONTEXT_AGE_SECONDS, MAX_CONTEXT_ENTRIES, Turn
from .queued import (ACTIVE, CLEAR_CONTEXT, CONTEXT, FORGET, MAX_PENDING_WRITES, RETRY_INTERVAL_S, TURN,
                     QueuedStore, StoreUnavailable, Write)

IN_MEMORY = ":memory:"
DEFAULT_DB_NAME = "conversations.db"
BUSY_TIMEOUT_MS = 5000
#: the busy timeout while an outage lasts, so retries do not hold up every answer
RETRY_BUSY_TIMEOUT_MS = 100

_SCHEMA = """
CREATE TABLE IF NOT EXISTS turns (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    session_id TEXT NOT NULL,
    persona TEXT NOT NULL,
    created_at REAL NOT NULL,
    question TEXT NOT NULL,
    answer TEXT NOT NULL,
    user_question TEXT,
    user_answer TEXT,
    lang TEXT,
    interrupted INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS turns_by_conversation ON turns (session_id, persona, id);
CREATE INDEX IF NOT EXISTS turns_by_age ON turns (persona, created_at);
CREATE TABLE IF NOT EXISTS contexts (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    session_id TEXT NOT NULL,
    created_at REAL NOT NULL,
    text TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS contexts_by_session ON contexts (session_id, id);
CREATE INDEX IF NOT EXISTS contexts_by_age ON contexts (created_at);
CREATE TABLE IF NOT EXISTS active_personas (
    session_id TEXT PRIMARY KEY,
    persona TEXT NOT NULL,
    updated_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS active_by_age ON active_personas (updated_at);
"""


def default_db_path() -> Path:
    """Return the database path under the XDG data dir."""
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "ovos-skill-persona-fallback" / DEFAULT_DB_NAME


class ConversationMemory(QueuedStore):
    """The SQLite store: a bounded, persistent, thread-safe store of conversations in one file."""

    def __init__(self, path: Union[str, Path, None] = None, clock: Callable[[], float] = time.time, *,
                 busy_timeout_ms: int = BUSY_TIMEOUT_MS, max_pending: int = MAX_PENDING_WRITES,
                 retry_interval_s: float = RETRY_INTERVAL_S) -> None:
        super().__init__(clock, max_pending=max_pending, retry_interval_s=retry_interval_s)
        self.path = str(path) if path is not None else str(default_db_path())
        self.label = self.path
        self.busy_timeout_ms = busy_timeout_ms
        self._busy_ms = busy_timeout_ms
        self._lock = threading.RLock()
        self.degraded: Optional[str] = None
        self._needs_schema = False
        self._conn = self._open()

    # -- connection management -------------------------------------------------------------

    def _connect(self, path: str) -> sqlite3.Connection:
        conn = sqlite3.connect(path, timeout=self.busy_timeout_ms / 1000, check_same_thread=False,
                               isolation_level=None)
        conn.execute(f"PRAGMA busy_timeout = {self.busy_timeout_ms}")
        self._busy_ms = self.busy_timeout_ms
        try:
            self._set_up(conn)
        except sqlite3.OperationalError as err:
            if path == IN_MEMORY or not _is_temporary(err):
                _close_quietly(conn)
                raise
            # locked at start-up: the schema is made by the first operation after the lock is gone
            self._needs_schema = True
            self._note_outage(StoreUnavailable(str(err)))
        return conn

    def _set_up(self, conn: sqlite3.Connection) -> None:
        if self.path != IN_MEMORY and conn.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
            conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = NORMAL")
        conn.executescript(_SCHEMA)
        self._needs_schema = False

    def _open(self) -> sqlite3.Connection:
        if self.path == IN_MEMORY:
            return self._connect(IN_MEMORY)
        try:
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            return self._connect(self.path)
        except sqlite3.DatabaseError as err:
            if _is_corrupt(err):
                return self._replace_corrupt(err)
            return self._degrade(err)
        except OSError as err:
            return self._degrade(err)

    def _replace_corrupt(self, err: sqlite3.DatabaseError) -> sqlite3.Connection:
        """Move a corrupt file aside and start a new one there; RAM if that fails too."""
        if Path(self.path).is_file() and self._move_aside():
            try:
                return self._connect(self.path)
            except sqlite3.Error as retry_err:
                return self._degrade(retry_err)
        return self._degrade(err)

    def _move_aside(self) -> Optional[Path]:
        stamp = f"{self.path}.corrupt-{int(self._clock())}"
        target, count = Path(stamp), 1
        while target.exists():  # never replace (delete) a file moved aside earlier
            target, count = Path(f"{stamp}.{count}"), count + 1
        try:
            os.replace(self.path, target)
            for suffix in ("-wal", "-shm"):
                if Path(self.path + suffix).exists():
                    os.replace(self.path + suffix, str(target) + suffix)
        except OSError as err:
            LOG.error(f"conversation database {self.path} is corrupt and could not be moved aside: {err}")
            return None
        LOG.error(f"conversation database {self.path} was corrupt; moved it to {target} and started a new one")
        return target

    def _degrade(self, err: BaseException, source: Optional[sqlite3.Connection] = None) -> sqlite3.Connection:
        """Switch to a RAM database (copying what can still be read) and report it once."""
        if self.degraded is None:
            LOG.error(f"conversation database {self.path} is unusable ({err}); "
                      f"keeping conversations in memory until restart")
        self.degraded = str(err)
        self._needs_schema = False
        memory = self._connect(IN_MEMORY)
        if source is not None:
            try:
                source.backup(memory)
            except sqlite3.Error as copy_err:
                LOG.warning(f"could not copy conversations out of {self.path}: {copy_err}")
        return memory

    def _run(self, operation: Callable[[sqlite3.Connection], object], quick: bool = False) -> object:
        """Run one operation under the lock; a lock past the timeout raises ``StoreUnavailable``.

        ``quick`` (an outage is in progress) waits only briefly for the lock. On any other failure
        the store switches and retries once: a corrupt file (found by a query, past the pages read
        at open) is moved aside for a new one, since copying its pages into RAM would copy the
        damage; anything else (read-only) degrades to RAM.
        """
        with self._lock:
            busy = RETRY_BUSY_TIMEOUT_MS if quick else self.busy_timeout_ms
            try:
                if busy != self._busy_ms:
                    self._conn.execute(f"PRAGMA busy_timeout = {busy}")
                    self._busy_ms = busy
                if self._needs_schema:
                    self._set_up(self._conn)
                return operation(self._conn)
            except sqlite3.Error as err:
                if _is_temporary(err) and self.degraded is None and self.path != IN_MEMORY:
                    raise StoreUnavailable(str(err)) from err
                if self.path == IN_MEMORY or self.degraded is not None:
                    raise
                broken = self._conn
                if isinstance(err, sqlite3.DatabaseError) and _is_corrupt(err):
                    _close_quietly(broken)
                    self._conn = self._replace_corrupt(err)
                else:
                    self._conn = self._degrade(err, source=broken)
                    _close_quietly(broken)
                return operation(self._conn)

    # -- primitives --------------------------------------------------------------------------

    def _apply(self, write: Write, *, quick: bool) -> int:
        return self._run(lambda conn: _in_transaction(conn, lambda: self._change(conn, write)),  # type: ignore
                         quick=quick)

    def _change(self, conn: sqlite3.Connection, write: Write) -> int:
        now = self._clock()
        if write.kind == TURN and write.turn is not None:
            turn = write.turn
            conn.execute(
                "INSERT INTO turns (session_id, persona, created_at, question, answer, user_question, "
                "user_answer, lang, interrupted) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (write.session_id, write.persona, turn.created_at, turn.question, turn.answer,
                 turn.user_question, turn.user_answer, turn.lang, int(turn.interrupted)))
            self._prune(conn, write.session_id, write.persona or "", write.max_turns, write.max_age_minutes, now)
            return 1
        if write.kind == FORGET:
            if write.persona is None:
                return conn.execute("DELETE FROM turns WHERE session_id = ?", (write.session_id,)).rowcount
            return conn.execute("DELETE FROM turns WHERE session_id = ? AND persona = ?",
                                (write.session_id, write.persona)).rowcount
        if write.kind == CONTEXT:
            conn.execute("INSERT INTO contexts (session_id, created_at, text) VALUES (?, ?, ?)",
                         (write.session_id, write.at, write.text))
            conn.execute(
                "DELETE FROM contexts WHERE session_id = ? AND id NOT IN "
                "(SELECT id FROM contexts WHERE session_id = ? ORDER BY id DESC LIMIT ?)",
                (write.session_id, write.session_id, MAX_CONTEXT_ENTRIES))
            conn.execute("DELETE FROM contexts WHERE created_at < ?", (now - MAX_CONTEXT_AGE_SECONDS,))
            return 1
        if write.kind == CLEAR_CONTEXT:
            return conn.execute("DELETE FROM contexts WHERE session_id = ?", (write.session_id,)).rowcount
        if write.kind == ACTIVE and write.persona is None:
            return conn.execute("DELETE FROM active_personas WHERE session_id = ?", (write.session_id,)).rowcount
        if write.kind == ACTIVE:
            conn.execute("INSERT INTO active_personas (session_id, persona, updated_at) VALUES (?, ?, ?) "
                         "ON CONFLICT (session_id) DO UPDATE SET persona = excluded.persona, "
                         "updated_at = excluded.updated_at", (write.session_id, write.persona, write.at))
            conn.execute("DELETE FROM active_personas WHERE updated_at < ?", (now - MAX_CONTEXT_AGE_SECONDS,))
            conn.execute("DELETE FROM active_personas WHERE session_id IN (SELECT session_id FROM active_personas "
                         "ORDER BY updated_at DESC LIMIT -1 OFFSET ?)", (MAX_ACTIVE_SESSIONS,))
            return 1
        raise ValueError(f"unknown change {write.kind!r}")

    def _prune(self, conn: sqlite3.Connection, session_id: str, persona: str, max_turns: int,
               max_age_minutes: float, now: float) -> None:
        conn.execute(
            "DELETE FROM turns WHERE session_id = ? AND persona = ? AND id NOT IN "
            "(SELECT id FROM turns WHERE session_id = ? AND persona = ? ORDER BY id DESC LIMIT ?)",
            (session_id, persona, session_id, persona, max(max_turns, 0)))
        if max_age_minutes > 0:
            conn.execute("DELETE FROM turns WHERE persona = ? AND created_at < ?",
                         (persona, now - max_age_minutes * 60))

    def _probe(self) -> None:
        self._run(lambda conn: _in_transaction(conn, lambda: 0), quick=True)

    def _select_turns(self, session_id: str, persona: str, max_turns: int, cutoff: float,
                      *, quick: bool) -> List[Turn]:
        def select(conn: sqlite3.Connection) -> List[Turn]:
            # "+created_at" keeps SQLite on turns_by_conversation: with the age index it would read
            # every turn of the persona (all sessions) and sort them, slower as memory fills
            rows = conn.execute(
                "SELECT question, answer, created_at, interrupted, user_question, user_answer, lang "
                "FROM turns WHERE session_id = ? AND persona = ? AND +created_at >= ? "
                "ORDER BY id DESC LIMIT ?",
                (session_id, persona, cutoff, max_turns)).fetchall()
            return [Turn(q, a, t, bool(i), uq, ua, lang) for q, a, t, i, uq, ua, lang in reversed(rows)]

        return self._run(select, quick=quick)  # type: ignore[return-value]

    def _select_context(self, session_id: str, *, quick: bool) -> List[str]:
        rows = self._run(lambda conn: conn.execute(
            "SELECT text FROM contexts WHERE session_id = ? ORDER BY id", (session_id,)).fetchall(), quick=quick)
        return [row[0] for row in rows]  # type: ignore[union-attr]

    def _select_active(self, session_id: str, *, quick: bool) -> Optional[str]:
        cutoff = self._clock() - MAX_CONTEXT_AGE_SECONDS
        row = self._run(lambda conn: conn.execute(
            "SELECT persona FROM active_personas WHERE session_id = ? AND updated_at >= ?",
            (session_id, cutoff)).fetchone(), quick=quick)
        return row[0] if row else None  # type: ignore[index]

    def _count(self, session_id: Optional[str], *, quick: bool) -> int:
        if session_id is None:
            return self._run(lambda conn: conn.execute("SELECT COUNT(*) FROM turns").fetchone()[0],  # type: ignore
                             quick=quick)
        return self._run(lambda conn: conn.execute(  # type: ignore[return-value]
            "SELECT COUNT(*) FROM turns WHERE session_id = ?", (session_id,)).fetchone()[0], quick=quick)

    def prune(self, session_id: str, persona: str, *, max_turns: int, max_age_minutes: float = 0) -> None:
        """Delete this conversation's turns beyond ``max_turns`` and this persona's expired turns."""
        self._run(lambda conn: _in_transaction(conn, lambda: self._prune(
            conn, session_id, persona, max_turns, max_age_minutes, self._clock())))

    def _close(self) -> None:
        with self._lock:
            _close_quietly(self._conn)


def _in_transaction(conn: sqlite3.Connection, change: Callable[[], int]) -> int:
    """Run ``change`` in one write transaction (taken at once, so it waits for the lock up front)."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        result = change()
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    return result


def _is_temporary(err: sqlite3.Error) -> bool:
    """A lock (or a full disk) passes; everything else means the file cannot be used."""
    message = str(err).lower()
    return "locked" in message or "busy" in message or "disk is full" in message


def _is_corrupt(err: sqlite3.DatabaseError) -> bool:
    message = str(err).lower()
    return "not a database" in message or "malformed" in message or "corrupt" in message


def _close_quietly(conn: sqlite3.Connection) -> None:
    try:
        conn.close()
    except sqlite3.Error as err:
        LOG.debug(f"closing the conversation database failed: {err}")
