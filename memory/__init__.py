"""Conversation memory: the store contract, the outage queue and the SQLite store."""
from .base import (MAX_ACTIVE_SESSIONS, MAX_CONTEXT_AGE_SECONDS, MAX_CONTEXT_CHARS, MAX_CONTEXT_ENTRIES,
                   MemoryStore, Turn)
from .queued import MAX_PENDING_WRITES, RETRY_INTERVAL_S, QueuedStore, StoreUnavailable
from .sqlite import BUSY_TIMEOUT_MS, DEFAULT_DB_NAME, IN_MEMORY, ConversationMemory, default_db_path

__all__ = ["BUSY_TIMEOUT_MS", "DEFAULT_DB_NAME", "IN_MEMORY", "MAX_ACTIVE_SESSIONS", "MAX_CONTEXT_AGE_SECONDS",
           "MAX_CONTEXT_CHARS", "MAX_CONTEXT_ENTRIES", "MAX_PENDING_WRITES", "RETRY_INTERVAL_S",
           "ConversationMemory", "MemoryStore", "QueuedStore", "StoreUnavailable", "Turn", "default_db_path"]
