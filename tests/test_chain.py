"""The solver chain: order, fall-through, deadlines, no repetition, cancellation."""
from __future__ import annotations

import threading
import time

import pytest

from conftest import ScriptedSolver
from ovos_skill_persona_fallback.chain import (ChainLink, ChainResult, Deadlines, SolverChain, SolverInput,
                                               question_only)
from ovos_skill_persona_fallback.solvers.base import (CancelToken, ChatMessage, Role, SolverResponseError,
                                                      SolverTimeout, SolverUnavailable)

CHAT = [ChatMessage(Role.SYSTEM, "be brief"), ChatMessage(Role.USER, "first"),
        ChatMessage(Role.ASSISTANT, "one"), ChatMessage(Role.USER, "second")]


def run(links, cancel=None, conversation_id="s1"):
    result = ChainResult()
    chain = SolverChain(links)
    chunks = list(chain.stream(lambda link: SolverInput(CHAT, "en-us"), cancel=cancel or CancelToken(),
                               conversation_id=conversation_id, result=result))
    return chunks, result


def link(solver: ScriptedSolver, first: float = 5.0, total: float = 10.0) -> ChainLink:
    return ChainLink(solver.solver_id, solver, Deadlines(first, total))


def test_first_solver_that_answers_wins_and_later_ones_never_run():
    a = ScriptedSolver("a").enqueue("Hello ", "there.")
    b = ScriptedSolver("b").enqueue("never")
    chunks, result = run([link(a), link(b)])
    assert chunks == ["Hello ", "there."]
    assert (result.solver_id, result.text, result.failures) == ("a", "Hello there.", [])
    assert b.calls == []
    assert a.calls[0].messages == CHAT and a.calls[0].lang == "en-us" and a.calls[0].conversation_id == "s1"


FALL_THROUGH = [
    # (how the first solver fails, expected error type, expected message fragment)
    (dict(error=SolverUnavailable("server down")), SolverUnavailable, "server down"),
    (dict(error=RuntimeError("bug in solver")), RuntimeError, "bug in solver"),    # not a SolverError
    (dict(), Exception, "gave no answer"),                                        # yields nothing
    (dict(chunks=("",)), Exception, "gave no answer"),                            # yields only empty text
    (dict(chunks=("late",), first_delay=1.0), SolverTimeout, "first chunk within 0.2 s"),
]


@pytest.mark.parametrize("reply,error_type,fragment", FALL_THROUGH)
def test_fall_through_to_next_solver(reply, error_type, fragment):
    a = ScriptedSolver("a")
    a.enqueue(*reply.pop("chunks", ()), **reply)
    b = ScriptedSolver("b").enqueue("Fine.")
    chunks, result = run([link(a, first=0.2), link(b)])
    assert chunks == ["Fine."]
    assert result.solver_id == "b"
    assert [f.solver_id for f in result.failures] == ["a"]
    assert isinstance(result.failures[0].error, error_type)
    assert fragment in str(result.failures[0].error)
    assert "Traceback" in result.failures[0].format_traceback() or error_type is not RuntimeError


def test_failure_keeps_traceback_of_the_solver():
    a = ScriptedSolver("a").enqueue(error=RuntimeError("boom"))
    _, result = run([link(a), link(ScriptedSolver("b").enqueue("ok"))])
    trace = result.failures[0].format_traceback()
    assert "RuntimeError: boom" in trace and "conftest.py" in trace


def test_timed_out_solver_is_told_to_stop():
    a = ScriptedSolver("a").enqueue("late", first_delay=5.0)
    b = ScriptedSolver("b").enqueue("ok")
    run([link(a, first=0.1), link(b)])
    assert a.done.wait(1.0), "the timed-out solver kept running"
    assert a.produced == 0


def test_total_deadline_ends_answer_without_falling_through():
    a = ScriptedSolver("a").enqueue("one ", endless=True, delay=0.05)
    b = ScriptedSolver("b").enqueue("never")
    chunks, result = run([link(a, first=1.0, total=0.3), link(b)])
    assert chunks and set(chunks) == {"one "}
    assert result.interrupted and result.solver_id == "a"
    assert isinstance(result.failures[0].error, SolverTimeout)
    assert "whole answer within 0.3 s" in str(result.failures[0].error)
    assert b.calls == []
    assert a.done.wait(1.0)


def test_no_repetition_after_partial_stream():
    a = ScriptedSolver("a").enqueue("Half an ", "answer", error=SolverResponseError("dropped"))
    b = ScriptedSolver("b").enqueue("Something else entirely.")
    chunks, result = run([link(a), link(b)])
    assert chunks == ["Half an ", "answer"]
    assert result.interrupted and result.text == "Half an answer"
    assert b.calls == []


def test_all_fail_gives_no_text_and_every_failure():
    a = ScriptedSolver("a").enqueue(error=SolverUnavailable("a down"))
    b = ScriptedSolver("b").enqueue(error=SolverUnavailable("b down"))
    chunks, result = run([link(a), link(b)])
    assert chunks == [] and not result.answered
    assert [f.describe() for f in result.failures] == ["a: SolverUnavailable: a down",
                                                       "b: SolverUnavailable: b down"]


def test_unbuilt_solver_is_skipped_with_its_error():
    broken = ChainLink("llama-cpp", None, build_error=SolverUnavailable("model /x.gguf missing"))
    b = ScriptedSolver("b").enqueue("ok")
    chunks, result = run([broken, link(b)])
    assert chunks == ["ok"]
    assert result.failures[0].describe() == "llama-cpp: SolverUnavailable: model /x.gguf missing"


def test_question_only_solver_gets_last_user_turn():
    a = ScriptedSolver("a", supports_history=False).enqueue("ok")
    run([link(a)])
    assert a.calls[0].messages == [ChatMessage(Role.USER, "second")]
    assert question_only(CHAT) == [ChatMessage(Role.USER, "second")]


@pytest.mark.parametrize("stage", ["before first chunk", "mid stream"])
def test_cancel_stops_within_100ms_and_solver_stops_generating(stage):
    a = ScriptedSolver("a")
    if stage == "before first chunk":
        a.enqueue("x", first_delay=10.0)
    else:
        a.enqueue("word ", endless=True, delay=0.01)
    b = ScriptedSolver("b").enqueue("never")
    cancel = CancelToken()
    result = ChainResult()
    chain = SolverChain([link(a), link(b)])
    received = []
    cancelled_at = []

    def canceller():
        time.sleep(0.3)
        cancelled_at.append(time.monotonic())
        cancel.cancel()

    threading.Thread(target=canceller).start()
    for chunk in chain.stream(lambda _: SolverInput(CHAT, "en"), cancel=cancel, result=result):
        received.append(chunk)
    returned_at = time.monotonic()
    assert returned_at - cancelled_at[0] < 0.1
    assert result.cancelled and b.calls == []
    assert a.done.wait(0.1), "solver still generating 100 ms after cancel"
    assert a.stopped_at - cancelled_at[0] < 0.1
    produced = a.produced
    time.sleep(0.1)
    assert a.produced == produced
    if stage == "mid stream":
        assert received and len(received) == produced or len(received) == produced - 1


def test_cancel_before_start_runs_nothing():
    cancel = CancelToken()
    cancel.cancel()
    a = ScriptedSolver("a").enqueue("x")
    chunks, result = run([link(a)], cancel=cancel)
    assert chunks == [] and result.cancelled and a.calls == []


DEADLINE_CONFIGS = [
    # (solver block, expected deadlines)
    ({}, Deadlines(30.0, 120.0)),                                      # defaults
    ({"timeout": 5}, Deadlines(5.0, 120.0)),                           # a number is the first-chunk limit
    ({"timeout": 300}, Deadlines(300.0, 300.0)),                       # total never below first chunk
    ({"timeout": {"first_chunk": 2, "total": 9, "read": 1}}, Deadlines(2.0, 9.0)),
    ({"timeout": {"first_chunk": -1, "total": "x"}}, Deadlines(30.0, 120.0)),  # bad values -> defaults
    ({"timeout": True}, Deadlines(30.0, 120.0)),
]


@pytest.mark.parametrize("config,expected", DEADLINE_CONFIGS)
def test_deadlines_from_config(config, expected):
    assert Deadlines.from_config(config) == expected
