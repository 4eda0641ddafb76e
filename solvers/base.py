"""The solver contract: typed chat messages, cancellation, generation settings and the error tree.

A solver is one object with one method, ``stream(messages, *, lang, cancel, conversation_id)``,
a generator of text chunks. Non-streaming backends yield once. Everything a solver can go wrong
with is a ``SolverError``; the chain treats any of them as "try the next solver".

Error tree::

    SolverError                  any failure of one solver; the chain moves on
    +-- SolverUnavailable        the backend cannot answer now: down, refused, model missing
    |   +-- SolverTimeout        no first chunk, or no complete answer, within the deadline
    +-- SolverConfigError        the persona's config for this solver is wrong (bad key, bad path)
    +-- SolverResponseError      the backend answered with something unusable (HTTP error, garbage)
    +-- SolverCancelled          generation was cancelled on request (stop); not a fault
"""
from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Callable, FrozenSet, Iterator, Mapping, Optional, Sequence, Tuple


class SolverError(Exception):
    """A solver could not answer; the chain tries the next one."""


class SolverUnavailable(SolverError):
    """The backend is down, refused the connection, or its model is missing."""


class SolverTimeout(SolverUnavailable):
    """The backend missed a deadline (first chunk or whole answer)."""


class SolverConfigError(SolverError):
    """The solver's configuration is invalid."""


class SolverResponseError(SolverError):
    """The backend replied with an error status or an unusable body."""


class SolverCancelled(SolverError):
    """Generation stopped because the caller cancelled it."""


class Role(str, Enum):
    """Who said a chat message."""

    SYSTEM = "system"
    USER = "user"
    ASSISTANT = "assistant"


@dataclass(frozen=True)
class ChatMessage:
    """One immutable chat message."""

    role: Role
    content: str

    def as_dict(self) -> dict:
        """Return the OpenAI-style ``{"role", "content"}`` dict."""
        return {"role": self.role.value, "content": self.content}


def last_user_text(messages: Sequence[ChatMessage]) -> str:
    """Return the content of the last user message (what question-only solvers get)."""
    for message in reversed(messages):
        if message.role is Role.USER:
            return message.content
    return ""


class CancelToken:
    """A thread-safe cancel flag with callbacks, so blocking I/O can be interrupted at once."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self._lock = threading.Lock()
        self._callbacks: list = []
        self._started = False
        self._start_callbacks: list = []

    @property
    def cancelled(self) -> bool:
        """True once ``cancel()`` was called."""
        return self._event.is_set()

    def cancel(self) -> None:
        """Set the flag and run every registered callback once."""
        with self._lock:
            if self._event.is_set():
                return
            self._event.set()
            callbacks, self._callbacks = self._callbacks, []
        for callback in callbacks:
            callback()

    def wait(self, timeout: Optional[float] = None) -> bool:
        """Block until cancelled or ``timeout`` seconds pass; return the flag."""
        return self._event.wait(timeout)

    def on_cancel(self, callback: Callable[[], None]) -> Callable[[], None]:
        """Run ``callback`` when cancelled (now, if already); return a function that unregisters it."""
        with self._lock:
            if not self._event.is_set():
                self._callbacks.append(callback)
                return lambda: self._remove(callback)
        callback()
        return lambda: None

    def _remove(self, callback: Callable[[], None]) -> None:
        with self._lock:
            if callback in self._callbacks:
                self._callbacks.remove(callback)

    @property
    def started(self) -> bool:
        """True once the solver holding this token said it began generating."""
        return self._started

    def mark_started(self) -> None:
        """Say that generation really begins now (model loaded, its turn on the model); once only."""
        with self._lock:
            if self._started:
                return
            self._started = True
            callbacks, self._start_callbacks = self._start_callbacks, []
        for callback in callbacks:
            callback()

    def on_start(self, callback: Callable[[], None]) -> None:
        """Run ``callback`` when ``mark_started`` is called (now, if it was)."""
        with self._lock:
            if not self._started:
                self._start_callbacks.append(callback)
                return
        callback()

    def child(self) -> "CancelToken":
        """Return a token cancelled with this one that can also be cancelled alone."""
        child = CancelToken()
        unregister = self.on_cancel(child.cancel)
        child.on_cancel(unregister)
        return child

    def raise_if_cancelled(self) -> None:
        """Raise ``SolverCancelled`` if the token is set."""
        if self._event.is_set():
            raise SolverCancelled("cancelled")


DEFAULT_TEMPERATURE = 0.7
DEFAULT_TOP_K = 40
DEFAULT_TOP_P = 0.95
DEFAULT_REPEAT_PENALTY = 1.1
DEFAULT_MAX_TOKENS = 256


@dataclass(frozen=True)
class GenerationSettings:
    """Sampling settings a persona gives its generative solvers."""

    temperature: float = DEFAULT_TEMPERATURE
    top_k: int = DEFAULT_TOP_K
    top_p: float = DEFAULT_TOP_P
    repeat_penalty: float = DEFAULT_REPEAT_PENALTY
    max_tokens: int = DEFAULT_MAX_TOKENS
    seed: Optional[int] = None
    stop: Tuple[str, ...] = ()

    def merged(self, overrides: Mapping[str, Any]) -> "GenerationSettings":
        """Return a copy with any generation keys present in ``overrides`` (a solver block) applied."""
        known = {name: overrides[name] for name in self.__dataclass_fields__ if name in overrides}
        if "stop" in known:
            stop = known["stop"]
            known["stop"] = (stop,) if isinstance(stop, str) else tuple(stop or ())
        return GenerationSettings(**{**self.__dict__, **known})


@dataclass(frozen=True)
class SolverContext:
    """What a solver knows about the persona it serves, given once at construction."""

    persona_name: str = ""
    persona_lang: str = "en"
    generation: GenerationSettings = field(default_factory=GenerationSettings)


class Solver(ABC):
    """One answer source. Subclasses set the capability attributes and implement ``stream``."""

    #: the id used in persona files
    solver_id: str = ""
    #: True when the solver reads the whole chat; False when it only takes the last question
    supports_history: bool = True
    #: base language tags the solver answers in; None means whatever the persona declares
    supported_langs: Optional[FrozenSet[str]] = None
    #: True when ``stream`` calls ``cancel.mark_started()`` once it really begins generating (after
    #: loading a model, after waiting its turn); the chain's first-chunk deadline runs from then on
    reports_start: bool = False

    def __init__(self, config: Mapping[str, Any], context: SolverContext) -> None:
        self.config = dict(config)
        self.context = context

    @abstractmethod
    def stream(self, messages: Sequence[ChatMessage], *, lang: str, cancel: CancelToken,
               conversation_id: str = "") -> Iterator[str]:
        """Yield the answer as text chunks; raise a ``SolverError`` on failure.

        Must check ``cancel`` between chunks and stop generating (not only stop yielding) once
        it is set. ``conversation_id`` identifies the conversation for backends that keep state.
        """

    def prepare(self) -> None:
        """Get ready to answer (e.g. load a model) ahead of the first question; default: nothing."""

    def forget(self, conversation_id: str) -> None:
        """Drop any per-conversation state (caches) the solver keeps; default: nothing."""

    def close(self) -> None:
        """Release resources; default: nothing."""

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.solver_id} for {self.context.persona_name!r}>"
