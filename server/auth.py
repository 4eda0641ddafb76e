"""API keys and conversation namespaces.

A key is checked in constant time against every configured key. Each key owns a namespace: the
session ids the engine sees are built from a digest of the key (never the key itself, since
session ids are stored in the memory database) and the client's conversation id, so two keys
naming the same conversation id reach two different conversations.
"""
from __future__ import annotations

import hashlib
import hmac
import os
from pathlib import Path
from typing import Iterable, List, Mapping, Optional, Sequence

KEYS_ENV = "PERSONA_API_KEYS"
#: request headers that name a conversation, in the order they are looked at
CONVERSATION_HEADERS = ("x-conversation-id", "conversation-id", "conversation_id")
MAX_CONVERSATION_ID_CHARS = 256
#: the namespace of a server that runs with no keys (``--no-auth``, or loopback without keys)
OPEN_NAMESPACE = "open"
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "::1", "localhost"})


class KeyFileError(ValueError):
    """The API keys file cannot be read."""


class BadConversationId(ValueError):
    """The conversation id of a request is empty, too long or not printable."""


def read_keys(keys: Sequence[str] = (), keys_file: Optional[Path] = None,
              env: Optional[Mapping[str, str]] = None) -> List[str]:
    """Collect keys from ``--api-key`` values, a file (one a line, ``#`` comments) and ``$PERSONA_API_KEYS``."""
    found: List[str] = [key.strip() for key in keys]
    if keys_file is not None:
        try:
            lines = Path(keys_file).read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as err:
            raise KeyFileError(f"cannot read the API keys file {keys_file}: {type(err).__name__}") from err
        found += [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
    source = os.environ if env is None else env
    found += [part.strip() for part in source.get(KEYS_ENV, "").split(",")]
    return list(dict.fromkeys(key for key in found if key))


def is_loopback(host: str) -> bool:
    """True when ``host`` only accepts connections from this machine."""
    return host in LOOPBACK_HOSTS or host.startswith("127.")


class KeyRing:
    """The configured keys; ``namespace_for`` says whose a presented key is (None: refused)."""

    def __init__(self, keys: Iterable[str] = ()) -> None:
        self._keys = [key.encode("utf-8") for key in keys]

    @property
    def enabled(self) -> bool:
        """True when requests must carry a key."""
        return bool(self._keys)

    def namespace_for(self, presented: Optional[str]) -> Optional[str]:
        """Return the namespace of ``presented``, or None when it matches no key."""
        if not self._keys:
            return OPEN_NAMESPACE
        if not presented:
            return None
        candidate = presented.encode("utf-8", "surrogateescape")
        match: Optional[bytes] = None
        for key in self._keys:  # every key is compared, so timing does not tell which one matched
            if hmac.compare_digest(candidate, key):
                match = key
        if match is None:
            return None
        return hashlib.sha256(b"persona-fallback key namespace\0" + match).hexdigest()[:24]


def presented_key(headers: Mapping[str, str]) -> Optional[str]:
    """Return the key a request carries: ``Authorization: Bearer KEY`` or ``X-Api-Key: KEY``."""
    auth = headers.get("authorization", "")
    scheme, _, value = auth.strip().partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    key = headers.get("x-api-key", "").strip()
    return key or None


def conversation_id(headers: Mapping[str, str], user: Optional[str]) -> Optional[str]:
    """Return the request's conversation id: the first conversation header, else the body's ``user``."""
    for name in CONVERSATION_HEADERS:
        value = headers.get(name)
        if value is not None:
            return check_conversation_id(value)
    if user is not None and user != "":
        return check_conversation_id(user)
    return None


def check_conversation_id(value: str) -> str:
    """Return ``value`` stripped; raise ``BadConversationId`` when it cannot name a conversation."""
    cleaned = value.strip()
    if not cleaned:
        raise BadConversationId("the conversation id is empty")
    if len(cleaned) > MAX_CONVERSATION_ID_CHARS:
        raise BadConversationId(f"the conversation id is longer than {MAX_CONVERSATION_ID_CHARS} characters")
    if not cleaned.isprintable() or any(0xD800 <= ord(ch) <= 0xDFFF for ch in cleaned):
        raise BadConversationId("the conversation id has characters that cannot be printed")
    return cleaned


def session_id(namespace: str, conversation: Optional[str]) -> str:
    """Return the engine session of a conversation in a key's namespace (a stateless one if None)."""
    if conversation is None:
        # no colon after the namespace: no conversation id can produce this session
        return f"http-stateless.{namespace}"
    return f"http.{namespace}:{conversation}"
