"""Conversation memory in PostgreSQL, shared by every node that serves the same users.

psycopg 3 with its connection pool (the ``postgres`` extra). The schema is created on first use
and migrated forward at start-up under an advisory lock, so nodes starting together agree; its
version is kept in ``schema_version``. Every change is one transaction; turns are ordered by an
identity column, i.e. by when they were written, whichever node wrote them. An unreachable
server is an outage like a locked SQLite file: changes wait in the queue of
``queued.QueuedStore`` and are written when it answers again. The password in the URL is
replaced by ``***`` in every log line and error.
"""
from __future__ import annotations

import logging
import time
from contextlib import contextmanager
from typing import Callable, Iterator, List, Optional
from urllib.parse import unquote, urlsplit, urlunsplit

import psycopg
from ovos_utils.log import LOG
from psycopg import errors as pg_errors
from psycopg_pool import ConnectionPool, PoolTimeout

from .base import MAX_ACTIVE_SESSIONS, MAX_CONTEXT_AGE_SECONDS, MAX_CONTEXT_ENTRIES, Turn
from .queued import (ACTIVE, CLEAR_CONTEXT, CONTEXT, FORGET, MAX_PENDING_WRITES, RETRY_INTERVAL_S, TURN,
                     QueuedStore, StoreFailure, StoreUnavailable, Write)

URL_SCHEMES = ("postgresql", "postgres")
URL_FORM = "postgresql://user:password@host:port/database"
#: seconds to wait for a pooled connection: before a write (after the answer was spoken), before a
#: read (the user is waiting), and while an outage lasts (retries must not hold anything up)
WRITE_TIMEOUT_S = 2.0
READ_TIMEOUT_S = 2.0
RETRY_TIMEOUT_S = 0.25
DEFAULT_POOL_SIZE = 8
#: the pool gives up reconnecting in the background this soon; the next request starts a new try,
#: so a server that comes back is found at the next retry instead of after a long backoff
RECONNECT_TIMEOUT_S = 1.0
#: any constant shared by every node: the key of the advisory lock that serializes migrations
MIGRATION_LOCK = 7_236_001
#: deadlocks between nodes pruning the same rows are retried at once this many times
DEADLOCK_RETRIES = 3

MIGRATIONS = (
    # 1: turns, injected context and the active persona, keyed so reads are one index lookup
    """
    CREATE TABLE turns (
        id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        session_id TEXT NOT NULL,
        persona TEXT NOT NULL,
        created_at DOUBLE PRECISION NOT NULL,
        question TEXT NOT NULL,
        answer TEXT NOT NULL,
        user_question TEXT,
        user_answer TEXT,
        lang TEXT,
        interrupted BOOLEAN NOT NULL DEFAULT FALSE,
        turn_key UUID UNIQUE
    );
    CREATE INDEX turns_by_conversation ON turns (session_id, persona, id);
    CREATE INDEX turns_by_age ON turns (persona, created_at);
    CREATE TABLE contexts (
        id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        session_id TEXT NOT NULL,
        created_at DOUBLE PRECISION NOT NULL,
        text TEXT NOT NULL
    );
    CREATE INDEX contexts_by_session ON contexts (session_id, id);
    CREATE INDEX contexts_by_age ON contexts (created_at);
    CREATE TABLE active_personas (
        session_id TEXT PRIMARY KEY,
        persona TEXT NOT NULL,
        updated_at DOUBLE PRECISION NOT NULL
    );
    CREATE INDEX active_by_age ON active_personas (updated_at);
    """,
)
SCHEMA_VERSION = len(MIGRATIONS)


class StoreConfigError(ValueError):
    """The database URL cannot be used (wrong scheme, unparsable)."""


def redact_url(url: str) -> str:
    """Return the URL with its password replaced by ``***`` (for log lines and errors)."""
    try:
        parts = urlsplit(url)
        if parts.password is None:
            return url
        host = parts.netloc.rsplit("@", 1)[1]
        return urlunsplit(parts._replace(netloc=f"{parts.username or ''}:***@{host}"))
    except ValueError:
        return "<unparsable database URL>"


def check_url(url: str) -> str:
    """Return ``url`` if it is a PostgreSQL URL, else raise ``StoreConfigError`` (never with the password)."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - a bad port raises here
    except ValueError:
        raise StoreConfigError(f"the database URL cannot be parsed (expected {URL_FORM})") from None
    if parts.scheme not in URL_SCHEMES:
        raise StoreConfigError(f"database URL {redact_url(url)} is not of the form {URL_FORM}")
    return url


def _password(url: str) -> Optional[str]:
    try:
        return urlsplit(url).password
    except ValueError:
        return None


class _PoolNoise(logging.Filter):
    """psycopg_pool warns at every failed reconnection; our store reports an outage once instead."""

    def __init__(self, name: str) -> None:
        super().__init__()
        self.pool_name = name
        #: why the pool's last connection attempt failed (a pool timeout alone does not say)
        self.last_error = ""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args if isinstance(record.args, tuple) else ()
        if self.pool_name not in map(str, args):
            return True
        if str(record.msg).startswith("error connecting") and len(args) > 1:
            self.last_error = str(args[1]).strip().splitlines()[0] if str(args[1]).strip() else ""
        return record.levelno > logging.WARNING


class PostgresMemory(QueuedStore):
    """The PostgreSQL store: conversations shared by every node connected to the same database."""

    _pools = 0

    def __init__(self, url: str, clock: Callable[[], float] = time.time, *, pool_size: int = DEFAULT_POOL_SIZE,
                 max_pending: int = MAX_PENDING_WRITES, retry_interval_s: float = RETRY_INTERVAL_S,
                 write_timeout_s: float = WRITE_TIMEOUT_S, read_timeout_s: float = READ_TIMEOUT_S) -> None:
        super().__init__(clock, max_pending=max_pending, retry_interval_s=retry_interval_s)
        self.url = check_url(url)
        self.label = redact_url(url)
        self._secret = _password(url)
        self.write_timeout_s = write_timeout_s
        self.read_timeout_s = read_timeout_s
        self._schema_ready = False
        PostgresMemory._pools += 1
        name = f"persona-memory-{PostgresMemory._pools}"
        self._noise = _PoolNoise(name)
        logging.getLogger("psycopg.pool").addFilter(self._noise)
        self._pool = ConnectionPool(
            url, name=name, min_size=1, max_size=max(pool_size, 1), open=False,
            kwargs={"autocommit": True, "connect_timeout": max(int(write_timeout_s), 2)},
            check=ConnectionPool.check_connection, reconnect_timeout=RECONNECT_TIMEOUT_S)
        self._pool.open(wait=False)
        try:  # at start-up: the database may be down, which is an outage like any other
            with self._connection(quick=False, reading=True):
                pass
        except StoreUnavailable as err:
            self._note_outage(err, reading=True)
        except StoreFailure:  # it answers but refuses the schema (permissions): not usable at all
            self._close()
            raise

    # -- connections -------------------------------------------------------------------------

    def _scrub(self, text: str) -> str:
        if self._secret:
            text = text.replace(self._secret, "***").replace(unquote(self._secret), "***")
        return text.replace(self.url, self.label)

    def _unavailable(self, err: BaseException) -> StoreUnavailable:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else repr(err)
        if isinstance(err, PoolTimeout) and self._noise.last_error:
            reason = f"{reason}: {self._noise.last_error}"
        return StoreUnavailable(self._scrub(reason))

    @contextmanager
    def _connection(self, quick: bool, reading: bool = False) -> Iterator[psycopg.Connection]:
        """A pooled connection with the schema in place; failures to reach the server become outages."""
        timeout = RETRY_TIMEOUT_S if quick else (self.read_timeout_s if reading else self.write_timeout_s)
        try:
            with self._pool.connection(timeout=timeout) as conn:
                if not self._schema_ready:
                    self._migrate(conn)
                yield conn
        except pg_errors.TransactionRollback:
            raise  # a deadlock between nodes: the caller tries again
        except (psycopg.OperationalError, psycopg.InterfaceError) as err:
            failure = self._unavailable(err)
            raise failure from (err if str(failure) == str(err) else None)  # the cause only if it is clean
        except psycopg.Error as err:
            # a bug or a database refusing us (permissions): not an outage, never with the password
            failure = StoreFailure(f"conversation database {self.label}: {self._scrub(str(err))}")
            raise failure from (err if self._scrub(str(err)) == str(err) else None)

    def _migrate(self, conn: psycopg.Connection) -> None:
        """Create or migrate the schema forward, one node at a time."""
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
            conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
            row = conn.execute("SELECT max(version) FROM schema_version").fetchone()
            current = row[0] if row and row[0] is not None else 0
            for version in range(current + 1, SCHEMA_VERSION + 1):
                conn.execute(MIGRATIONS[version - 1])
                conn.execute("INSERT INTO schema_version (version) VALUES (%s)", (version,))
                LOG.info(f"conversation database {self.label}: schema migrated to version {version}")
        if current > SCHEMA_VERSION:
            LOG.warning(f"conversation database {self.label} has schema version {current}, newer than this "
                        f"node's {SCHEMA_VERSION}; using it as it is")
        self._schema_ready = True

    @property
    def schema_version(self) -> int:
        """The schema version the database holds."""
        with self._connection(quick=False, reading=True) as conn:
            row = conn.execute("SELECT max(version) FROM schema_version").fetchone()
        return int(row[0]) if row and row[0] is not None else 0

    # -- primitives --------------------------------------------------------------------------

    def _apply(self, write: Write, *, quick: bool) -> int:
        for attempt in range(DEADLOCK_RETRIES):
            try:
                with self._connection(quick) as conn, conn.transaction():
                    return self._change(conn, write)
            except pg_errors.TransactionRollback as err:
                if attempt == DEADLOCK_RETRIES - 1:
                    raise self._unavailable(err) from err
        return 0

    def _change(self, conn: psycopg.Connection, write: Write) -> int:
        now = self._clock()
        if write.kind == TURN and write.turn is not None:
            turn, session, persona = write.turn, write.session_id, write.persona
            # the key makes a retry idempotent: the connection may drop after the server committed
            conn.execute(
                "INSERT INTO turns (session_id, persona, created_at, question, answer, user_question, "
                "user_answer, lang, interrupted, turn_key) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s) "
                "ON CONFLICT (turn_key) DO NOTHING",
                (session, persona, turn.created_at, turn.question, turn.answer, turn.user_question,
                 turn.user_answer, turn.lang, turn.interrupted, write.key or None))
            conn.execute(
                "DELETE FROM turns WHERE session_id = %s AND persona = %s AND id <= (SELECT id FROM turns "
                "WHERE session_id = %s AND persona = %s ORDER BY id DESC OFFSET %s LIMIT 1)",
                (session, persona, session, persona, max(write.max_turns, 0)))
            if write.max_age_minutes > 0:
                conn.execute("DELETE FROM turns WHERE persona = %s AND created_at < %s",
                             (persona, now - write.max_age_minutes * 60))
            return 1
        if write.kind == FORGET and write.persona is None:
            return conn.execute("DELETE FROM turns WHERE session_id = %s", (write.session_id,)).rowcount
        if write.kind == FORGET:
            return conn.execute("DELETE FROM turns WHERE session_id = %s AND persona = %s",
                                (write.session_id, write.persona)).rowcount
        if write.kind == CONTEXT:
            conn.execute("INSERT INTO contexts (session_id, created_at, text) VALUES (%s, %s, %s)",
                         (write.session_id, write.at, write.text))
            conn.execute("DELETE FROM contexts WHERE session_id = %s AND id <= (SELECT id FROM contexts "
                         "WHERE session_id = %s ORDER BY id DESC OFFSET %s LIMIT 1)",
                         (write.session_id, write.session_id, MAX_CONTEXT_ENTRIES))
            conn.execute("DELETE FROM contexts WHERE created_at < %s", (now - MAX_CONTEXT_AGE_SECONDS,))
            return 1
        if write.kind == CLEAR_CONTEXT:
            return conn.execute("DELETE FROM contexts WHERE session_id = %s", (write.session_id,)).rowcount
        if write.kind == ACTIVE and write.persona is None:
            return conn.execute("DELETE FROM active_personas WHERE session_id = %s", (write.session_id,)).rowcount
        if write.kind == ACTIVE:
            conn.execute("INSERT INTO active_personas (session_id, persona, updated_at) VALUES (%s, %s, %s) "
                         "ON CONFLICT (session_id) DO UPDATE SET persona = EXCLUDED.persona, "
                         "updated_at = EXCLUDED.updated_at", (write.session_id, write.persona, write.at))
            conn.execute("DELETE FROM active_personas WHERE updated_at < %s", (now - MAX_CONTEXT_AGE_SECONDS,))
            conn.execute("DELETE FROM active_personas WHERE session_id IN (SELECT session_id FROM active_personas "
                         "ORDER BY updated_at DESC OFFSET %s)", (MAX_ACTIVE_SESSIONS,))
            return 1
        raise ValueError(f"unknown change {write.kind!r}")

    def _probe(self) -> None:
        with self._connection(quick=True):
            pass

    def _select_turns(self, session_id: str, persona: str, max_turns: int, cutoff: float,
                      *, quick: bool) -> List[Turn]:
        with self._connection(quick, reading=True) as conn:
            rows = conn.execute(
                "SELECT question, answer, created_at, interrupted, user_question, user_answer, lang "
                "FROM turns WHERE session_id = %s AND persona = %s AND created_at >= %s "
                "ORDER BY id DESC LIMIT %s", (session_id, persona, cutoff, max_turns)).fetchall()
        return [Turn(q, a, t, bool(i), uq, ua, lang) for q, a, t, i, uq, ua, lang in reversed(rows)]

    def _select_context(self, session_id: str, *, quick: bool) -> List[str]:
        with self._connection(quick, reading=True) as conn:
            rows = conn.execute("SELECT text FROM contexts WHERE session_id = %s ORDER BY id",
                                (session_id,)).fetchall()
        return [row[0] for row in rows]

    def _select_active(self, session_id: str, *, quick: bool) -> Optional[str]:
        with self._connection(quick, reading=True) as conn:
            row = conn.execute("SELECT persona FROM active_personas WHERE session_id = %s AND updated_at >= %s",
                               (session_id, self._clock() - MAX_CONTEXT_AGE_SECONDS)).fetchone()
        return row[0] if row else None

    def _count(self, session_id: Optional[str], *, quick: bool) -> int:
        with self._connection(quick, reading=True) as conn:
            if session_id is None:
                row = conn.execute("SELECT COUNT(*) FROM turns").fetchone()
            else:
                row = conn.execute("SELECT COUNT(*) FROM turns WHERE session_id = %s", (session_id,)).fetchone()
        return int(row[0]) if row else 0

    def _close(self) -> None:
        self._pool.close(timeout=2.0)
        logging.getLogger("psycopg.pool").removeFilter(self._noise)
