"""One engine answer run on its own thread, its chunks handed to the event loop.

The engine is synchronous (solvers block); each HTTP request gets a thread that iterates the
engine's stream and posts events to an asyncio queue. Cancelling the run's token (client gone,
conversation ended, server stopping) stops the generation; the engine remembers the part that
was delivered as an interrupted turn.
"""
from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass
from typing import Any, AsyncIterator, Dict, Optional, Set

from ovos_utils.log import LOG

from ..engine import Answer, EngineBusy, NoPersonaError, PersonaEngine
from ..solvers.base import CancelToken
from .openai_wire import EngineInput

ADMITTED, CHUNK, END, BUSY, MISSING, FAILED = "admitted", "chunk", "end", "busy", "missing", "failed"


@dataclass(frozen=True)
class Event:
    """Something the answering thread reports: a kind and its value."""

    kind: str
    value: Any = None


class RunRegistry:
    """The runs in progress, so the server can cancel them all when it stops."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._runs: Set["EngineRun"] = set()

    def add(self, run: "EngineRun") -> None:
        """Track ``run``."""
        with self._lock:
            self._runs.add(run)

    def discard(self, run: "EngineRun") -> None:
        """Stop tracking ``run``."""
        with self._lock:
            self._runs.discard(run)

    def stop_session(self, session_id: str, timeout: float) -> None:
        """Cancel the session's runs and wait (up to ``timeout`` s) until each has stored its turn."""
        with self._lock:
            runs = [run for run in self._runs if run.session_id == session_id]
        for run in runs:
            run.cancel()
        for run in runs:
            run.join(timeout)

    def cancel_all(self) -> int:
        """Cancel every run in progress; return how many there were."""
        with self._lock:
            runs = list(self._runs)
        for run in runs:
            run.cancel()
        return len(runs)

    def __len__(self) -> int:
        with self._lock:
            return len(self._runs)


class EngineRun:
    """Answers one request on a worker thread; ``start`` waits for admission, ``events`` streams."""

    def __init__(self, engine: PersonaEngine, registry: RunRegistry, *, request: EngineInput, session_id: str,
                 persona: str, remember: bool, stateless: bool) -> None:
        self.engine = engine
        self.registry = registry
        self.session_id = session_id
        self.token = CancelToken()
        self.answer: Optional[Answer] = None
        self._request = request
        self._session_id = session_id
        self._persona = persona
        self._remember = remember
        self._stateless = stateless
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._queue: "asyncio.Queue[Event]" = asyncio.Queue()
        self._thread = threading.Thread(target=self._work, name="persona-http-answer", daemon=True)

    def cancel(self) -> None:
        """Stop the generation (idempotent)."""
        self.token.cancel()

    def join(self, timeout: Optional[float] = None) -> None:
        """Wait for the answering thread to end (its turn is stored by then)."""
        if self._thread.is_alive():
            self._thread.join(timeout)

    async def start(self) -> Event:
        """Start the thread; return its first event: ADMITTED, or why it could not start."""
        self._loop = asyncio.get_running_loop()
        self.registry.add(self)
        self._thread.start()
        event = await self._queue.get()
        if event.kind == END:  # cancelled before its turn: ``events`` reports the end again
            self._queue.put_nowait(event)
        elif event.kind != ADMITTED:
            self.registry.discard(self)
        return event

    async def events(self) -> AsyncIterator[Event]:
        """Yield CHUNK events, then END (or FAILED); cancels the run if the consumer stops early."""
        finished = False
        try:
            while True:
                event = await self._queue.get()
                yield event
                if event.kind in (END, FAILED):
                    finished = True
                    return
        finally:
            if not finished:
                self.cancel()  # the client went away (or the server stops): stop the model now
            self.registry.discard(self)

    async def collect(self) -> str:
        """Drain the run and return its whole text (raises on failure)."""
        parts = []
        async for event in self.events():
            if event.kind == CHUNK:
                parts.append(event.value)
            elif event.kind == FAILED:
                raise event.value
        return "".join(parts)

    def _post(self, event: Event) -> None:
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        try:
            loop.call_soon_threadsafe(self._queue.put_nowait, event)
        except RuntimeError:  # the loop closed meanwhile: the server is gone, nobody listens
            self.token.cancel()

    def _work(self) -> None:
        request = self._request
        try:
            stream = self.engine.stream(
                request.question, session_id=self._session_id, persona=self._persona, cancel=self.token,
                history=request.history if (request.history or self._stateless) else None,
                client_context=request.client_context, generation=request.generation, raw_chunks=True,
                remember=self._remember, on_admitted=lambda: self._post(Event(ADMITTED)),
                client_tools=request.tools, tool_exchange=request.tool_exchange,
                tools_required=request.tools_required)
        except NoPersonaError as err:
            self._post(Event(MISSING, err))
            return
        try:
            # the engine reports ADMITTED before any chunk; a run cancelled while waiting just ends
            for chunk in stream:
                self._post(Event(CHUNK, chunk))
            self.answer = stream.answer
            self._post(Event(END, stream.answer))
        except EngineBusy as err:
            self._post(Event(BUSY, err))
        except Exception as err:  # the request fails; the server and its other requests go on
            LOG.exception(f"answering over HTTP failed: {err}")
            self._post(Event(FAILED, err))


def usage_source(answer: Optional[Answer]) -> str:
    """Return where an answer's token counts came from (for the ``X-Usage-Source`` header)."""
    usage: Dict[str, Any] = answer.usage if answer is not None else {}
    return str(usage.get("source", "estimate"))
