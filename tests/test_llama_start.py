"""The chain's first-chunk deadline runs from when the local model starts generating.

Loading a big model, or waiting for another session's answer on the same model, is not slowness:
the real chain (worker thread, queue, deadlines) must wait for the llama solver instead of falling
through to the next solver, while the ``total`` deadline still ends a wait that never ends.
Also: ``prepare()`` loads the model ahead of the first question, and the engine's ``warm_up``.
"""
from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any, List

import pytest

from llama_fixtures import SYSTEM, CountingFactory, conversation_id, llama_cpp, make_solver, tiny_gguf  # noqa: F401

from ovos_skill_persona_fallback.chain import ChainLink, ChainResult, Deadlines, SolverChain, SolverInput
from ovos_skill_persona_fallback.engine import PersonaEngine
from ovos_skill_persona_fallback.persona import parse_persona
from ovos_skill_persona_fallback.solvers.base import CancelToken, ChatMessage, Role, SolverTimeout
from ovos_skill_persona_fallback.solvers.failure import FailureSolver
from ovos_skill_persona_fallback.solvers.base import SolverContext

FIRST_CHUNK = 1.0  # far more than the tiny model needs for its first token, far less than the waits


class SlowLoadingFactory(CountingFactory):
    """Loads the real ``Llama`` after sleeping, as a multi-GB model takes seconds to load."""

    def __init__(self, delay: float) -> None:
        super().__init__()
        self.delay = delay

    def __call__(self, **kwargs: Any) -> Any:
        time.sleep(self.delay)
        return super().__call__(**kwargs)


def run_chain(solver: Any, deadlines: Deadlines, question: str = "hello") -> ChainResult:
    """Ask through a real chain of [llama-cpp, failure]; return how it ended."""
    links = [ChainLink("llama-cpp", solver, deadlines),
             ChainLink("failure", FailureSolver({}, SolverContext()), Deadlines())]
    chain = SolverChain(links)
    result = ChainResult()
    request = SolverInput([SYSTEM, ChatMessage(Role.USER, question)], "en")
    list(chain.stream(lambda link: request, cancel=CancelToken(), conversation_id=conversation_id("start"),
                      result=result))
    return result


@pytest.mark.slow
def test_a_slow_model_load_is_not_a_missed_first_chunk(tiny_gguf: Path) -> None:
    factory = SlowLoadingFactory(delay=4 * FIRST_CHUNK)
    solver = make_solver(tiny_gguf, llama_factory=factory, n_ctx=640)  # its own load: no shared model
    started = time.monotonic()
    result = run_chain(solver, Deadlines(first_chunk=FIRST_CHUNK, total=30))
    assert result.solver_id == "llama-cpp", [f.describe() for f in result.failures]
    assert result.failures == [] and result.text
    assert time.monotonic() - started >= 4 * FIRST_CHUNK  # it really waited for the load
    assert len(factory.calls) == 1


@pytest.mark.slow
def test_waiting_for_the_model_lock_is_not_a_missed_first_chunk(tiny_gguf: Path) -> None:
    solver = make_solver(tiny_gguf)
    model = solver.loaded_model or (solver.prepare() or solver.loaded_model)
    assert model.lock.acquire()  # another session is answering on this model
    release = threading.Timer(4 * FIRST_CHUNK, model.lock.release)
    release.start()
    try:
        result = run_chain(solver, Deadlines(first_chunk=FIRST_CHUNK, total=30))
    finally:
        release.join()
    assert result.solver_id == "llama-cpp", [f.describe() for f in result.failures]
    assert result.failures == [] and result.text


@pytest.mark.slow
def test_the_total_deadline_still_ends_a_wait_for_the_model(tiny_gguf: Path) -> None:
    solver = make_solver(tiny_gguf)
    solver.prepare()
    model = solver.loaded_model
    assert model.lock.acquire()
    try:
        started = time.monotonic()
        result = run_chain(solver, Deadlines(first_chunk=FIRST_CHUNK, total=2.5))
        took = time.monotonic() - started
        deadline = time.monotonic() + 2
        while model.lock.waiting and time.monotonic() < deadline:  # the worker leaves on cancel
            time.sleep(0.01)
        assert model.lock.waiting == 0  # the abandoned waiter left the queue
    finally:
        model.lock.release()
    assert result.solver_id == "failure" and result.text  # fell through, after ``total``
    (failure,) = result.failures
    assert failure.solver_id == "llama-cpp" and isinstance(failure.error, SolverTimeout)
    assert "did not start" in str(failure.error)
    assert 2.5 <= took < 6


def test_a_slow_first_token_after_starting_still_times_out(tiny_gguf: Path) -> None:
    class SlowFirstToken(llama_cpp.Llama):
        """Evaluates the prompt slowly: the solver has started, so the first-chunk clock runs."""

        def eval(self, tokens: Any) -> None:
            time.sleep(0.4)
            super().eval(tokens)

    solver = make_solver(tiny_gguf, llama_factory=CountingFactory(SlowFirstToken), n_ctx=576)
    solver.prepare()
    result = run_chain(solver, Deadlines(first_chunk=0.3, total=30), question="tell me more")
    assert result.solver_id == "failure"
    assert "gave no first chunk" in str(result.failures[0].error)


def test_prepare_loads_the_model_once(tiny_gguf: Path) -> None:
    factory = CountingFactory()
    solver = make_solver(tiny_gguf, llama_factory=factory, n_ctx=608)
    assert solver.loaded_model is None
    solver.prepare()
    assert solver.loaded_model is not None and len(factory.calls) == 1
    result = run_chain(solver, Deadlines(first_chunk=5, total=30))
    assert result.solver_id == "llama-cpp" and len(factory.calls) == 1


def test_engine_warm_up_prepares_every_solver_in_one_background_thread(tiny_gguf: Path, tmp_path: Path) -> None:
    factory = SlowLoadingFactory(delay=0.3)
    built: List[Any] = []

    def solver_factory(solver_id: str, config: Any, context: Any) -> Any:
        if solver_id == "llama-cpp":
            solver = make_solver(tiny_gguf, llama_factory=factory, n_ctx=704)
        else:
            solver = FailureSolver(config, context)
        built.append(solver)
        return solver

    from ovos_skill_persona_fallback.memory import ConversationMemory
    engine = PersonaEngine(include_shipped=False, solver_factory=solver_factory,
                           memory=ConversationMemory(str(tmp_path / "memory.db")))
    for name in ("first", "second"):
        engine.add_persona(parse_persona({"name": name, "solvers": ["llama-cpp", "failure"]}))
    caller = threading.current_thread()
    thread = engine.warm_up()
    assert thread.daemon and thread is not caller
    thread.join(30)
    assert not thread.is_alive()
    llamas = [solver for solver in built if not isinstance(solver, FailureSolver)]
    assert len(llamas) == 2 and all(solver.loaded_model is not None for solver in llamas)
    assert len(factory.calls) == 1  # one file, one load, shared
    engine.close()


def test_warm_up_logs_a_failing_solver_and_goes_on(tiny_gguf: Path, tmp_path: Path) -> None:
    good = make_solver(tiny_gguf, llama_factory=CountingFactory(), n_ctx=736)
    bad = make_solver(tmp_path / "missing.gguf")
    solvers = iter([bad, good])

    from ovos_skill_persona_fallback.memory import ConversationMemory
    engine = PersonaEngine(include_shipped=False, solver_factory=lambda *args: next(solvers),
                           memory=ConversationMemory(str(tmp_path / "memory.db")))
    engine.add_persona(parse_persona({"name": "a", "solvers": ["llama-cpp"]}))
    engine.add_persona(parse_persona({"name": "b", "solvers": ["llama-cpp"]}))
    thread = engine.warm_up()
    thread.join(30)
    assert bad.loaded_model is None and good.loaded_model is not None
    engine.close()


def test_cancel_token_start_signal_runs_callbacks_once() -> None:
    token = CancelToken()
    calls: List[str] = []
    token.on_start(lambda: calls.append("early"))
    assert not token.started and calls == []
    token.mark_started()
    token.mark_started()  # once only
    token.on_start(lambda: calls.append("late"))  # registered after: runs at once
    assert token.started and calls == ["early", "late"]
    assert not CancelToken().child().started  # a child has its own signal


@pytest.mark.slow
def test_four_simultaneous_sessions_on_one_model_are_all_answered_by_it(tiny_gguf: Path, tmp_path: Path) -> None:
    """The reported defect: sessions 2-4 waited for the model past first_chunk and heard the failure line."""
    class SlowLlama(llama_cpp.Llama):
        """About 0.05 s per llama.cpp call: each answer holds the model for well over a second."""

        def eval(self, tokens: Any) -> None:
            time.sleep(0.05)
            super().eval(tokens)

    from ovos_skill_persona_fallback.memory import ConversationMemory
    factory = CountingFactory(SlowLlama)
    solvers = {"llama-cpp": lambda: make_solver(tiny_gguf, llama_factory=factory, n_ctx=672, max_tokens=24),
               "failure": lambda: FailureSolver({}, SolverContext())}
    engine = PersonaEngine(include_shipped=False, max_concurrent=4,
                           solver_factory=lambda solver_id, config, context: solvers[solver_id](),
                           memory=ConversationMemory(str(tmp_path / "memory.db")))
    engine.add_persona(parse_persona({"name": "busy", "solvers": ["llama-cpp", "failure"],
                                      "llama-cpp": {"timeout": {"first_chunk": FIRST_CHUNK, "total": 60}}}))
    engine.warm_up().join(30)
    answers: dict = {}

    def session(number: int) -> None:
        answers[number] = engine.ask(f"question number {number}", session_id=f"session-{number}", persona="busy")

    started = time.monotonic()
    threads = [threading.Thread(target=session, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    took = time.monotonic() - started
    assert took > 3 * FIRST_CHUNK  # the last session really waited longer than first_chunk
    assert {n: a.result.solver_id for n, a in answers.items()} == {n: "llama-cpp" for n in range(4)}
    assert all(a.text and not a.failures for a in answers.values())
    assert len(factory.calls) == 1
    engine.close()
