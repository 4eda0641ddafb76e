"""Conversation memory in SQLite: turns per (session, persona), injected context per session.

One connection per store, guarded by a lock, in WAL mode with a busy timeout, so threads and
several processes can share one file. Each turn is one INSERT in its own transaction: a crash
leaves a turn either whole or absent. When the file cannot be used (read-only, locked past the
timeout, corrupt) the store reports it once and keeps working in RAM; a corrupt file is moved
aside, never deleted.
"""
from __future__ import annotations

import os
import sqlite3
import threading
import time
from pathlib import Path
from typing import Callable, List, Optional, Union

from ovos_utils.log import LOG

from .base import MAX_CONTEXT_AGE_SECONDS, MAX_CONTEXT_CHARS, MAX_CONTEXT_ENTRIES, MemoryStore, Turn

IN_MEMORY = ":memory:"
DEFAULT_DB_NAME = "conversations.db"
BUSY_TIMEOUT_MS = 5000

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
"""


def default_db_path() -> Path:
    """Return the database path under the XDG data dir."""
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "ovos-skill-persona-fallback" / DEFAULT_DB_NAME


class ConversationMemory(MemoryStore):
    """The SQLite store: a bounded, persistent, thread-safe store of conversations in one file."""

    def __init__(self, path: Union[str, Path, None] = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.path = str(path) if path is not None else str(default_db_path())
        self._clock = clock
        self._lock = threading.RLock()
        self.degraded: Optional[str] = None
        self._conn = self._open()

    # -- connection management -------------------------------------------------------------

    def _connect(self, path: str) -> sqlite3.Connection:
        conn = sqlite3.connect(path, timeout=BUSY_TIMEOUT_MS / 1000, check_same_thread=False,
                               isolation_level=None)
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        if path != IN_MEMORY:
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = NORMAL")
        conn.executescript(_SCHEMA)
        return conn

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
        memory = self._connect(IN_MEMORY)
        if source is not None:
            try:
                source.backup(memory)
            except sqlite3.Error as copy_err:
                LOG.warning(f"could not copy conversations out of {self.path}: {copy_err}")
        return memory

    def _run(self, operation: Callable[[sqlite3.Connection], object]) -> object:
        """Run one operation under the lock; on a database failure switch stores and retry once.

        A corrupt file (found by a query, past the pages read at open) is moved aside for a new
        one: copying its pages into RAM would copy the damage. Anything else degrades to RAM.
        """
        with self._lock:
            try:
                return operation(self._conn)
            except sqlite3.Error as err:
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

    # -- turns -------------------------------------------------------------------------------

    def history(self, session_id: str, persona: str, *, max_turns: int,
                max_age_minutes: float = 0) -> List[Turn]:
        """Return the remembered turns within the limits, oldest first."""
        if max_turns <= 0:
            return []
        # expired turns are filtered here and deleted by the next record()'s prune
        cutoff = self._clock() - max_age_minutes * 60 if max_age_minutes > 0 else float("-inf")

        def select(conn: sqlite3.Connection) -> List[Turn]:
            # "+created_at" keeps SQLite on turns_by_conversation: with the age index it would read
            # every turn of the persona (all sessions) and sort them, slower as memory fills
            rows = conn.execute(
                "SELECT question, answer, created_at, interrupted, user_question, user_answer, lang "
                "FROM turns WHERE session_id = ? AND persona = ? AND +created_at >= ? "
                "ORDER BY id DESC LIMIT ?",
                (session_id, persona, cutoff, max_turns)).fetchall()
            return [Turn(q, a, t, bool(i), uq, ua, lang) for q, a, t, i, uq, ua, lang in reversed(rows)]

        return self._run(select)  # type: ignore[return-value]

    def record(self, session_id: str, persona: str, question: str, answer: str, *,
               interrupted: bool = False, user_question: Optional[str] = None,
               user_answer: Optional[str] = None, lang: Optional[str] = None,
               max_turns: int, max_age_minutes: float = 0) -> bool:
        """Store one turn atomically and prune; return False when memory is off (max_turns 0)."""
        if max_turns <= 0:
            return False
        now = self._clock()
        self._run(lambda conn: conn.execute(
            "INSERT INTO turns (session_id, persona, created_at, question, answer, user_question, "
            "user_answer, lang, interrupted) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (session_id, persona, now, question, answer, user_question, user_answer, lang,
             int(interrupted))))
        self.prune(session_id, persona, max_turns=max_turns, max_age_minutes=max_age_minutes)
        return True

    def prune(self, session_id: str, persona: str, *, max_turns: int, max_age_minutes: float = 0) -> None:
        """Delete this conversation's turns beyond ``max_turns`` and this persona's expired turns."""
        def delete(conn: sqlite3.Connection) -> None:
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.execute(
                    "DELETE FROM turns WHERE session_id = ? AND persona = ? AND id NOT IN "
                    "(SELECT id FROM turns WHERE session_id = ? AND persona = ? ORDER BY id DESC LIMIT ?)",
                    (session_id, persona, session_id, persona, max(max_turns, 0)))
                if max_age_minutes > 0:
                    cutoff = self._clock() - max_age_minutes * 60
                    conn.execute("DELETE FROM turns WHERE persona = ? AND created_at < ?", (persona, cutoff))
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise

        self._run(delete)

    def forget(self, session_id: str, persona: Optional[str] = None) -> int:
        """Delete a session's turns (one persona's, or all); return how many were deleted."""
        if persona is None:
            query, args = "DELETE FROM turns WHERE session_id = ?", (session_id,)
        else:
            query, args = "DELETE FROM turns WHERE session_id = ? AND persona = ?", (session_id, persona)
        return self._run(lambda conn: conn.execute(query, args).rowcount)  # type: ignore[return-value]

    def count_turns(self, session_id: Optional[str] = None) -> int:
        """Return how many turns are stored (for one session, or in all)."""
        if session_id is None:
            return self._run(lambda conn: conn.execute("SELECT COUNT(*) FROM turns").fetchone()[0])  # type: ignore
        return self._run(lambda conn: conn.execute(  # type: ignore[return-value]
            "SELECT COUNT(*) FROM turns WHERE session_id = ?", (session_id,)).fetchone()[0])

    # -- injected context --------------------------------------------------------------------

    def inject_context(self, session_id: str, text: str) -> None:
        """Add a piece of conversational context for a session (kept bounded)."""
        def insert(conn: sqlite3.Connection) -> None:
            conn.execute("INSERT INTO contexts (session_id, created_at, text) VALUES (?, ?, ?)",
                         (session_id, self._clock(), text[:MAX_CONTEXT_CHARS]))
            conn.execute(
                "DELETE FROM contexts WHERE session_id = ? AND id NOT IN "
                "(SELECT id FROM contexts WHERE session_id = ? ORDER BY id DESC LIMIT ?)",
                (session_id, session_id, MAX_CONTEXT_ENTRIES))
            conn.execute("DELETE FROM contexts WHERE created_at < ?",
                         (self._clock() - MAX_CONTEXT_AGE_SECONDS,))

        self._run(insert)

    def context(self, session_id: str) -> str:
        """Return a session's injected context, oldest first, blank-line separated and bounded."""
        rows = self._run(lambda conn: conn.execute(
            "SELECT text FROM contexts WHERE session_id = ? ORDER BY id", (session_id,)).fetchall())
        text = "\n\n".join(row[0].strip() for row in rows if row[0].strip())  # type: ignore[union-attr]
        return text[-MAX_CONTEXT_CHARS:]

    def clear_context(self, session_id: str) -> int:
        """Delete a session's injected context; return how many pieces were removed."""
        return self._run(lambda conn: conn.execute(  # type: ignore[return-value]
            "DELETE FROM contexts WHERE session_id = ?", (session_id,)).rowcount)

    def close(self) -> None:
        """Close the database."""
        with self._lock:
            _close_quietly(self._conn)


def _is_corrupt(err: sqlite3.DatabaseError) -> bool:
    message = str(err).lower()
    return "not a database" in message or "malformed" in message or "corrupt" in message


def _close_quietly(conn: sqlite3.Connection) -> None:
    try:
        conn.close()
    except sqlite3.Error as err:
        LOG.debug(f"closing the conversation database failed: {err}")
