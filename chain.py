"""Runs a persona's ordered solver chain with deadlines, fall-through and cancellation.

Each solver runs on a worker thread that feeds a queue, so the chain can enforce a deadline for
the first chunk and for the whole answer even when a backend blocks, and can return within
100 ms of a cancel. The solver gets a child cancel token that is set when the chain gives up on
it (deadline, cancel), so it stops generating instead of running on unread.

The first-chunk clock runs from the moment the solver begins generating: at once for most
solvers, but a solver with ``reports_start`` (the local model) says when, after loading its model
and waiting its turn on it, so a big model's load or a queue of sessions on one model does not
count as slowness. The ``total`` deadline runs from the start and bounds everything.

Fall-through happens only before the first chunk: once a solver has streamed text to the
listener, its later failure ends the answer there, and nothing is said twice.
"""
from __future__ import annotations

import queue
import threading
import time
import traceback
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Iterator, List, Mapping, Optional, Sequence, Tuple

from ovos_utils.log import LOG

from .solvers.base import (CancelToken, ChatMessage, RequestOptions, Role, Solver, SolverError,
                           SolverTimeout, ToolCall, last_user_text, use_request_options)

DEFAULT_FIRST_CHUNK_TIMEOUT = 30.0
DEFAULT_TOTAL_TIMEOUT = 120.0
#: how often the chain wakes to look at the cancel token while a solver is silent
POLL_SECONDS = 0.02


@dataclass(frozen=True)
class Deadlines:
    """Seconds allowed for a solver's first chunk and for its whole answer."""

    first_chunk: float = DEFAULT_FIRST_CHUNK_TIMEOUT
    total: float = DEFAULT_TOTAL_TIMEOUT

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> "Deadlines":
        """Read a solver block's ``timeout``: a number (first chunk) or {first_chunk, total}."""
        value = config.get("timeout")
        if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0:
            return cls(first_chunk=float(value), total=max(float(value), DEFAULT_TOTAL_TIMEOUT))
        if isinstance(value, Mapping):
            first = _positive(value.get("first_chunk"), DEFAULT_FIRST_CHUNK_TIMEOUT)
            return cls(first_chunk=first, total=max(_positive(value.get("total"), DEFAULT_TOTAL_TIMEOUT), first))
        return cls()


def _positive(value: Any, default: float) -> float:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0:
        return float(value)
    return default


@dataclass
class ChainLink:
    """One solver of the chain: its id, the built solver (or the error building it), its deadlines."""

    solver_id: str
    solver: Optional[Solver]
    deadlines: Deadlines = field(default_factory=Deadlines)
    build_error: Optional[SolverError] = None


@dataclass(frozen=True)
class SolverInput:
    """What one solver is asked: its messages and the language to answer in.

    ``solver``, when set, answers instead of the link's own for this one answer (the engine
    wraps a solver with the persona's tools this way).
    """

    messages: Sequence[ChatMessage]
    lang: str
    solver: Optional[Solver] = None
    #: per-request generation overrides and usage report, made current in the solver's thread
    options: Optional[RequestOptions] = None


@dataclass(frozen=True)
class SolverFailure:
    """Why one solver did not (fully) answer; ``error`` keeps its traceback."""

    solver_id: str
    error: BaseException

    def describe(self) -> str:
        """Return a one-line reason."""
        return f"{self.solver_id}: {type(self.error).__name__}: {self.error}"

    def format_traceback(self) -> str:
        """Return the error with its traceback, for logs."""
        return "".join(traceback.format_exception(type(self.error), self.error, self.error.__traceback__))


@dataclass
class ChainResult:
    """How a chain run ended: who answered, what failed, whether it was cut short."""

    solver_id: Optional[str] = None
    lang: Optional[str] = None
    text: str = ""
    failures: List[SolverFailure] = field(default_factory=list)
    cancelled: bool = False
    interrupted: bool = False
    #: calls for an HTTP client to run (set by ``tools.ClientToolsSolver`` before its stream ends)
    tool_calls: Tuple[ToolCall, ...] = ()

    @property
    def answered(self) -> bool:
        """True when some solver produced text (or tool calls for the client)."""
        return bool(self.text or self.tool_calls)


_CHUNK, _END, _ERROR, _STARTED = "chunk", "end", "error", "started"


def _solver_worker(solver: Solver, request: SolverInput, token: CancelToken, conversation_id: str,
                   out: "queue.Queue[Tuple[str, Any]]") -> None:
    """Drain one solver's stream into the queue; the generator is always closed."""
    stream = None
    use_request_options(request.options)  # this thread is the solver's alone
    try:
        stream = solver.stream(request.messages, lang=request.lang, cancel=token,
                               conversation_id=conversation_id)
        for chunk in stream:
            if token.cancelled:
                break
            if isinstance(chunk, str) and chunk:
                out.put((_CHUNK, chunk))
        out.put((_END, None))
    except BaseException as err:  # the worker reports every failure to the chain, which decides
        out.put((_ERROR, err))
    finally:
        close = getattr(stream, "close", None)
        if close is not None:
            try:
                close()
            except Exception as err:  # a solver's cleanup must not kill the worker thread
                LOG.warning(f"closing solver {solver.solver_id} failed: {err!r}")


def question_only(messages: Sequence[ChatMessage]) -> List[ChatMessage]:
    """Reduce a chat to its last user message, for solvers that take no history."""
    return [ChatMessage(Role.USER, last_user_text(messages))]


class SolverChain:
    """Tries each link in order; the first that streams non-empty text answers."""

    def __init__(self, links: Sequence[ChainLink], clock: Callable[[], float] = time.monotonic) -> None:
        self.links = list(links)
        self._clock = clock

    def stream(self, prepare: Callable[[ChainLink], SolverInput], *, cancel: CancelToken,
               conversation_id: str = "", result: Optional[ChainResult] = None) -> Iterator[str]:
        """Yield the answering solver's chunks; fill ``result`` as it goes.

        ``prepare`` builds each solver's input (messages, language) just before it runs, so the
        caller can translate or trim per solver.
        """
        result = result if result is not None else ChainResult()
        for link in self.links:
            if cancel.cancelled:
                result.cancelled = True
                return
            if link.solver is None:
                result.failures.append(SolverFailure(link.solver_id, link.build_error
                                                     or SolverError("solver was not built")))
                continue
            try:
                request = prepare(link)
            except SolverError as err:
                result.failures.append(SolverFailure(link.solver_id, err))
                continue
            if not link.solver.supports_history:
                request = replace(request, messages=question_only(request.messages))
            yield from self._run_link(link, request, cancel, conversation_id, result)
            if result.answered or result.cancelled:
                return

    def _run_link(self, link: ChainLink, request: SolverInput, cancel: CancelToken,
                  conversation_id: str, result: ChainResult) -> Iterator[str]:
        token = cancel.child()
        out: "queue.Queue[Tuple[str, Any]]" = queue.Queue()
        solver = request.solver or link.solver
        worker = threading.Thread(target=_solver_worker, name=f"solver-{link.solver_id}",
                                  args=(solver, request, token, conversation_id, out), daemon=True)
        deadlines = link.deadlines
        begun = self._clock()
        # the first-chunk clock starts when the solver begins generating: at once, unless the solver
        # says when (loading a model or waiting for it is not slowness); ``total`` bounds it all
        generating: Optional[float] = None if solver.reports_start else begun
        if generating is None:
            token.on_start(lambda: out.put((_STARTED, None)))
        worker.start()
        got_text = False
        try:
            while True:
                now = self._clock()
                if got_text or generating is None:
                    limit_at, limit = begun + deadlines.total, deadlines.total
                else:
                    limit_at = min(generating + deadlines.first_chunk, begun + deadlines.total)
                    limit = deadlines.first_chunk
                if now >= limit_at:
                    what = ("did not finish the whole answer" if got_text
                            else "did not start (loading or waiting for its model)" if generating is None
                            else "gave no first chunk")
                    raise SolverTimeout(f"{link.solver_id} {what} within {limit:g} s")
                if cancel.cancelled:
                    result.cancelled = True
                    return
                try:
                    kind, value = out.get(timeout=min(POLL_SECONDS, limit_at - now))
                except queue.Empty:
                    continue
                if cancel.cancelled:
                    result.cancelled = True
                    return
                if kind == _STARTED:
                    if generating is None:
                        generating = self._clock()
                    continue
                if kind == _CHUNK:
                    if not got_text:
                        got_text = True
                        result.solver_id, result.lang = link.solver_id, request.lang
                    result.text += value
                    yield value
                elif kind == _END:
                    if not got_text and result.tool_calls:  # calls and no text: an answer all the same
                        result.solver_id, result.lang = link.solver_id, request.lang
                    elif not got_text:
                        result.failures.append(SolverFailure(
                            link.solver_id, SolverError(f"{link.solver_id} gave no answer")))
                    return
                else:
                    if not isinstance(value, Exception):
                        value = SolverError(f"{link.solver_id} worker died: {value!r}")
                    raise value
        except SolverError as err:
            self._fail(link, err, got_text, result)
        except Exception as err:  # a buggy solver is a failed solver, not a dead skill
            self._fail(link, err, got_text, result)
        finally:
            token.cancel()

    @staticmethod
    def _fail(link: ChainLink, err: BaseException, got_text: bool, result: ChainResult) -> None:
        result.failures.append(SolverFailure(link.solver_id, err))
        if got_text:
            result.interrupted = True
            LOG.warning(f"solver {link.solver_id} failed mid-answer, ending the answer there: {err}")
        else:
            LOG.info(f"solver {link.solver_id} failed, trying the next one: {err}")
