"""Conversation memory: the store contract, the outage queue, the SQLite and PostgreSQL stores."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Optional, Union

from .base import (MAX_ACTIVE_SESSIONS, MAX_CONTEXT_AGE_SECONDS, MAX_CONTEXT_CHARS, MAX_CONTEXT_ENTRIES,
                   MemoryStore, Turn)
from .queued import MAX_PENDING_WRITES, RETRY_INTERVAL_S, QueuedStore, StoreFailure, StoreUnavailable
from .sqlite import BUSY_TIMEOUT_MS, DEFAULT_DB_NAME, IN_MEMORY, ConversationMemory, default_db_path

#: the environment variable read when neither a database file nor a URL is given
DB_URL_ENV = "PERSONA_DB_URL"

__all__ = ["BUSY_TIMEOUT_MS", "DB_URL_ENV", "DEFAULT_DB_NAME", "IN_MEMORY", "MAX_ACTIVE_SESSIONS",
           "MAX_CONTEXT_AGE_SECONDS", "MAX_CONTEXT_CHARS", "MAX_CONTEXT_ENTRIES", "MAX_PENDING_WRITES",
           "RETRY_INTERVAL_S", "ConversationMemory", "MemoryConfigError", "MemoryStore", "QueuedStore",
           "StoreFailure", "StoreUnavailable", "Turn", "default_db_path", "open_memory"]


class MemoryConfigError(ValueError):
    """The memory settings cannot be used (a bad URL, or PostgreSQL asked for without its extra)."""


def open_memory(db_path: Union[str, Path, None] = None, db_url: Optional[str] = None, **options: Any) -> MemoryStore:
    """Open the store the settings choose: PostgreSQL for ``db_url``, else SQLite at ``db_path``.

    With neither given, ``$PERSONA_DB_URL`` (if set) chooses PostgreSQL; explicit settings win over it.
    Raises ``MemoryConfigError`` (never showing a password) when the URL cannot be used.
    """
    if not db_url and not db_path:
        db_url = os.environ.get(DB_URL_ENV, "").strip() or None
    if not db_url:
        return ConversationMemory(db_path or None, **options)
    try:
        from .postgres import PostgresMemory, StoreConfigError
    except ImportError as err:
        raise MemoryConfigError("db_url needs PostgreSQL support: "
                                "pip install 'ovos-skill-persona-fallback[postgres]'") from err
    try:
        return PostgresMemory(db_url, **options)
    except (StoreConfigError, StoreFailure) as err:  # a bad URL, or a database refusing our schema
        raise MemoryConfigError(str(err)) from None
