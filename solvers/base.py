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

import contextvars
import threading
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Callable, Dict, FrozenSet, Iterator, Mapping, Optional, Sequence, Tuple


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
    TOOL = "tool"


@dataclass(frozen=True)
class ToolCall:
    """One call a model asked for: the call's id, the tool's name, the arguments as JSON text."""

    id: str
    name: str
    arguments: str = "{}"

    def as_dict(self) -> dict:
        """Return the OpenAI ``tool_calls`` entry."""
        return {"id": self.id, "type": "function", "function": {"name": self.name, "arguments": self.arguments}}


@dataclass(frozen=True)
class ChatMessage:
    """One immutable chat message; tool exchanges carry ``tool_calls`` or ``tool_call_id``."""

    role: Role
    content: str
    tool_calls: Tuple[ToolCall, ...] = ()
    tool_call_id: str = ""

    def as_dict(self) -> dict:
        """Return the OpenAI-style ``{"role", "content"}`` dict (with the tool fields when set)."""
        out: dict = {"role": self.role.value, "content": self.content}
        if self.tool_calls:
            out["tool_calls"] = [call.as_dict() for call in self.tool_calls]
        if self.tool_call_id:
            out["tool_call_id"] = self.tool_call_id
        return out


@dataclass(frozen=True)
class ToolDefinition:
    """A tool as a model sees it: name, description and a JSON-schema of its arguments."""

    name: str
    description: str
    parameters: Mapping[str, Any]

    def as_openai(self) -> dict:
        """Return the OpenAI ``tools`` entry."""
        return {"type": "function", "function": {"name": self.name, "description": self.description,
                                                 "parameters": dict(self.parameters)}}


@dataclass(frozen=True)
class ToolPlan:
    """What a model answered when offered tools: text, or the calls it wants run (or both)."""

    text: str = ""
    calls: Tuple[ToolCall, ...] = ()


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


#: generation keys a request may override (``RequestOptions.generation``)
REQUEST_GENERATION_KEYS = ("temperature", "top_p", "max_tokens", "seed", "stop")


@dataclass
class RequestOptions:
    """One request's generation overrides, and the token counts the answering solver reports back.

    The chain makes it current in the solver's worker thread (``request_options()``), so solvers
    that honour overrides or count tokens read it there and the ``stream`` signature stays as is.
    """

    generation: Mapping[str, Any] = field(default_factory=dict)
    #: ``prompt_tokens``, ``completion_tokens`` and ``source`` ("tokenizer" or "upstream")
    usage: Dict[str, Any] = field(default_factory=dict)

    def settings(self, base: GenerationSettings) -> GenerationSettings:
        """Return ``base`` with this request's overrides applied."""
        overrides = {key: value for key, value in self.generation.items()
                     if key in REQUEST_GENERATION_KEYS and value is not None}
        return base.merged(overrides) if overrides else base

    def report_usage(self, prompt_tokens: int, completion_tokens: int, source: str,
                     finish_reason: Optional[str] = None) -> None:
        """Record the answer's token counts, and why it ended if known (called by the solver)."""
        self.usage = {"prompt_tokens": int(prompt_tokens), "completion_tokens": int(completion_tokens),
                      "source": source, "finish_reason": finish_reason}


_REQUEST_OPTIONS: "contextvars.ContextVar[Optional[RequestOptions]]" = contextvars.ContextVar(
    "persona_request_options", default=None)


def request_options() -> Optional[RequestOptions]:
    """Return the options of the request the current solver thread is answering, if any."""
    return _REQUEST_OPTIONS.get()


def use_request_options(options: Optional[RequestOptions]) -> None:
    """Make ``options`` current for this thread's context (the chain's solver worker calls it)."""
    _REQUEST_OPTIONS.set(options)


def request_generation(base: GenerationSettings) -> GenerationSettings:
    """Return ``base`` with the current request's overrides, if a request has any."""
    options = _REQUEST_OPTIONS.get()
    return options.settings(base) if options is not None else base


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
    #: True when ``plan`` can offer tools to the model
    supports_tools: bool = False
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

    def plan(self, messages: Sequence[ChatMessage], tools: Sequence[ToolDefinition], *, lang: str,
             cancel: CancelToken, conversation_id: str = "", required: bool = False) -> ToolPlan:
        """Ask the model with ``tools`` offered; return its text or the tool calls it wants.

        Only solvers with ``supports_tools`` implement it; the tool loop calls nothing else.
        ``required`` (an HTTP client's ``tool_choice``) asks for a call where the backend can insist.
        """
        raise SolverConfigError(f"{self.solver_id} cannot call tools")
    def prepare(self) -> None:
        """Get ready to answer (e.g. load a model) ahead of the first question; default: nothing."""

    def forget(self, conversation_id: str) -> None:
        """Drop any per-conversation state (caches) the solver keeps; default: nothing."""

    def close(self) -> None:
        """Release resources; default: nothing."""

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.solver_id} for {self.context.persona_name!r}>"
