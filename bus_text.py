"""Text that arrives on the messagebus made safe to store, send and speak (no bus here)."""
from __future__ import annotations

from typing import Any

__all__ = ["clean", "clean_value", "session_key", "text_of"]


def clean(text: str) -> str:
    """Return ``text`` with lone surrogates replaced by U+FFFD.

    JSON escapes on the bus can carry them (``"\\ud800"``), and such text cannot be encoded as
    UTF-8: SQLite, the websocket and HTTP clients all refuse it.
    """
    return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")


def text_of(value: Any) -> str:
    """Return ``value`` stripped and cleaned if it is text, else ""."""
    return clean(value).strip() if isinstance(value, str) else ""


def clean_value(value: Any) -> Any:
    """Return a JSON value with lone surrogates escaped (``\\ud800``) in every string and key.

    Escaped rather than replaced, so two session ids that differ only there stay two sessions.
    """
    if isinstance(value, str):
        return session_key(value)
    if isinstance(value, dict):
        return {clean_value(key): clean_value(item) for key, item in value.items()}
    if isinstance(value, list):
        return [clean_value(item) for item in value]
    return value


def session_key(value: Any) -> str:
    """Return a session id as text SQLite and HTTP accept (the bus carries any JSON value there).

    Lone surrogates become ``\\ud800`` escapes rather than U+FFFD, so distinct ids stay distinct.
    """
    if not isinstance(value, str):
        return str(value)
    return value.encode("utf-8", "backslashreplace").decode("utf-8")
