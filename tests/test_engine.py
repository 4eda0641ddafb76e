"""The engine: prompts sent, sentences streamed, memory recorded, sessions isolated, stop."""
from __future__ import annotations

import threading
import time
from datetime import datetime

import pytest

from conftest import make_persona
from ovos_skill_persona_fallback.engine import NoPersonaError
from ovos_skill_persona_fallback.prompt import Speaker, build_messages
from ovos_skill_persona_fallback.memory import Turn
from ovos_skill_persona_fallback.persona import MemorySettings
from ovos_skill_persona_fallback.solvers.base import ChatMessage, Role, SolverUnavailable

SYSTEM = ChatMessage(Role.SYSTEM, "You are Ada.")


def test_streams_sentences_and_sends_system_then_question(box, engine_with):
    solver = box.add("scripted").enqueue("Hello there. How ", "are you? Fine")
    engine = engine_with(make_persona(system_prompt="You are {name}."))
    stream = engine.stream("hi", session_id="s1", lang="en-us")
    assert list(stream) == ["Hello there.", "How are you?", "Fine"]
    assert solver.calls[0].messages == [SYSTEM, ChatMessage(Role.USER, "hi")]
    assert solver.calls[0].conversation_id == "s1"
    assert stream.answer.persona == "Ada" and stream.answer.result.solver_id == "scripted"


def test_first_sentence_arrives_before_the_solver_finishes(box, engine_with):
    box.add("scripted").enqueue("First sentence. ", "Second", " sentence.", delay=0.4)
    engine = engine_with(make_persona())
    started = time.monotonic()
    stream = iter(engine.stream("q", session_id="s"))
    assert next(stream) == "First sentence."
    assert time.monotonic() - started < 0.35
    assert list(stream) == ["Second sentence."]


def test_history_is_remembered_and_sent_next_turn(box, engine_with, memory):
    solver = box.add("scripted").enqueue("One.").enqueue("Two.")
    engine = engine_with(make_persona(system_prompt="You are {name}."))
    engine.ask("first", session_id="s")
    engine.ask("second", session_id="s")
    assert solver.calls[1].messages == [SYSTEM, ChatMessage(Role.USER, "first"),
                                        ChatMessage(Role.ASSISTANT, "One."), ChatMessage(Role.USER, "second")]
    assert solver.calls[0].messages[0] == solver.calls[1].messages[0], "system prompt must stay byte-identical"


def test_system_message_order_and_injected_context(box, engine_with):
    solver = box.add("scripted").enqueue("ok")
    engine = engine_with(make_persona(system_prompt="Prompt.", context="Context about {location}."))
    engine.inject_context("s", "The user likes cats.")
    engine.ask("q", session_id="s", speaker=Speaker(name="Joe", location="Lisbon"))
    assert solver.calls[0].messages[0] == ChatMessage(
        Role.SYSTEM, "Prompt.\n\nContext about Lisbon.\n\nThe user likes cats.")


def test_empty_system_parts_are_skipped(box, engine_with):
    solver = box.add("scripted").enqueue("ok").enqueue("ok")
    engine = engine_with(make_persona())
    engine.ask("q", session_id="s")
    assert solver.calls[0].messages == [ChatMessage(Role.USER, "q")]
    engine.inject_context("s2", "only context")
    engine.ask("q", session_id="s2")
    assert solver.calls[1].messages[0] == ChatMessage(Role.SYSTEM, "only context")


def test_date_and_time_are_those_of_the_conversation_start():
    persona = make_persona(system_prompt="Now: {date} {time}")
    first = datetime(2026, 11, 21, 9, 5).timestamp()
    later = datetime(2026, 11, 21, 10, 40).timestamp()
    turn = Turn("q", "a", created_at=first)
    assert build_messages(persona, [], "q", now=first)[0].content == "Now: 2026-11-21 09:05"
    assert build_messages(persona, [turn], "q2", now=later)[0].content == "Now: 2026-11-21 09:05"


SESSION_ISOLATION = [
    # what session A does that session B must not see
    "history", "context", "active persona",
]


@pytest.mark.parametrize("what", SESSION_ISOLATION)
def test_sessions_are_isolated(box, engine_with, what):
    solver = box.add("scripted")
    box.add("other")
    engine = engine_with(make_persona(), make_persona("Bob", ("other",)))
    if what == "history":
        solver.enqueue("A answer.")
        engine.ask("A secret", session_id="A")
    elif what == "context":
        engine.inject_context("A", "A's context")
    else:
        engine.set_active("A", "bob")
    solver.enqueue("B answer.")
    engine.ask("B question", session_id="B")
    assert solver.calls[-1].messages == [ChatMessage(Role.USER, "B question")]
    assert engine.active_persona("B").name == "Ada"


def test_memory_limits_come_from_the_persona(box, engine_with, memory):
    solver = box.add("scripted")
    engine = engine_with(make_persona(memory=MemorySettings(max_turns=2)))
    for index in range(4):
        solver.enqueue(f"a{index}.")
        engine.ask(f"q{index}", session_id="s")
    assert [m.content for m in solver.calls[-1].messages] == ["q1", "a1.", "q2", "a2.", "q3"]
    assert memory.count_turns("s") == 2


def test_falls_through_and_reports_failures(box, engine_with, memory):
    box.add("llm").enqueue(error=SolverUnavailable("down"))
    box.add("scripted").enqueue("Backup answer.")
    engine = engine_with(make_persona(solvers=("llm", "scripted")))
    answer = engine.ask("q", session_id="s")
    assert answer.sentences == ["Backup answer."]
    assert [f.describe() for f in answer.failures] == ["llm: SolverUnavailable: down"]


def test_nothing_answers_records_nothing(box, engine_with, memory):
    box.add("scripted").enqueue(error=SolverUnavailable("down"))
    engine = engine_with(make_persona())
    answer = engine.ask("q", session_id="s")
    assert answer.sentences == [] and not answer.result.answered
    assert memory.count_turns() == 0


def test_stop_cancels_only_that_session_and_records_what_was_delivered(box, engine_with, memory):
    solver = box.add("scripted").enqueue("Word one. ", endless=True, delay=0.02)
    engine = engine_with(make_persona())
    stream = engine.stream("long story", session_id="A")
    heard = []

    def listen():
        for sentence in stream:
            heard.append(sentence)

    listener = threading.Thread(target=listen)
    listener.start()
    time.sleep(0.3)
    assert engine.is_busy("A") and not engine.is_busy("B")
    assert engine.stop("B") is False
    stopped_at = time.monotonic()
    assert engine.stop("A") is True
    listener.join(1.0)
    assert not listener.is_alive() and time.monotonic() - stopped_at < 0.2
    assert solver.done.wait(0.2)
    assert heard and set(heard) == {"Word one."}
    assert stream.answer.result.cancelled
    [turn] = memory.history("A", "Ada", max_turns=5)
    assert turn.interrupted and turn.answer == " ".join(heard)
    assert not engine.is_busy("A")


def test_closing_the_stream_early_records_an_interrupted_turn(box, engine_with, memory):
    box.add("scripted").enqueue("One. ", "Two. ", "Three.")
    engine = engine_with(make_persona())
    stream = engine.stream("q", session_id="s")
    iterator = iter(stream)
    assert next(iterator) == "One."
    stream.close()
    [turn] = memory.history("s", "Ada", max_turns=5)
    assert (turn.answer, turn.interrupted) == ("One.", True)


def test_persona_selection(box, engine_with):
    box.add("scripted").enqueue("from Ada").enqueue("from Ada again")
    box.add("other").enqueue("from Bob")
    engine = engine_with(make_persona(), make_persona("Bob the Builder", ("other",)))
    assert engine.ask("q", session_id="s", persona="bob the builder").text == "from Bob"
    with pytest.raises(NoPersonaError):
        engine.ask("q", session_id="s", persona="Nobody")
    assert engine.set_active("s", "bob the bilder").name == "Bob the Builder"   # fuzzy
    with pytest.raises(NoPersonaError):
        engine.set_active("s", "zzz")
    engine.reset_active("s")
    assert engine.ask("q", session_id="s").text == "from Ada"


def test_forget_clears_memory_and_solver_state(box, engine_with, memory):
    solver = box.add("scripted").enqueue("a.").enqueue("b.")
    engine = engine_with(make_persona())
    engine.ask("q", session_id="s")
    assert engine.forget("s") == 1
    assert solver.forgotten == ["s"]
    engine.ask("q2", session_id="s")
    assert solver.calls[-1].messages == [ChatMessage(Role.USER, "q2")]


def test_long_utterance_is_cut(box, engine_with):
    solver = box.add("scripted").enqueue("ok")
    engine = engine_with(make_persona(), max_utterance_chars=10)
    engine.ask("x" * 50, session_id="s")
    assert solver.calls[0].messages[-1].content == "x" * 10


def test_two_sessions_at_once_get_their_own_answers(box, engine_with):
    solver = box.add("scripted")
    engine = engine_with(make_persona())
    solver.enqueue("Answer one.", first_delay=0.2).enqueue("Answer two.", first_delay=0.2)
    results = {}

    def ask(session):
        results[session] = engine.ask(f"question {session}", session_id=session)

    threads = [threading.Thread(target=ask, args=(s,)) for s in ("A", "B")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    asked = {call.conversation_id: call.messages[-1].content for call in solver.calls}
    assert asked == {"A": "question A", "B": "question B"}
    assert sorted(r.text for r in results.values()) == ["Answer one.", "Answer two."]


def test_admission_queues_in_order_and_refuses_when_the_line_is_full(box, engine_with):
    from ovos_skill_persona_fallback.engine import EngineBusy

    solver = box.add("scripted")
    for name in ("first", "second", "third"):
        solver.enqueue(f"{name}.", first_delay=0.2)
    engine = engine_with(make_persona(), max_concurrent=1, max_waiting=1)
    results = {}

    def ask(session):
        try:
            results[session] = engine.ask("q", session_id=session).text
        except EngineBusy as err:
            results[session] = f"busy: {err}"

    threads = []
    for session in ("A", "B", "C"):
        thread = threading.Thread(target=ask, args=(session,))
        thread.start()
        threads.append(thread)
        time.sleep(0.05)
    for thread in threads:
        thread.join(3)
    assert results["A"] == "first." and results["B"] == "second."
    assert results["C"].startswith("busy: too many answers at once")
    assert [call.conversation_id for call in solver.calls] == ["A", "B"]
    assert engine.admission.held == 0 and not engine.is_busy("C")


def test_stop_while_waiting_for_admission_leaves_the_line(box, engine_with):
    solver = box.add("scripted").enqueue("slow.", first_delay=0.5)
    engine = engine_with(make_persona(), max_concurrent=1, max_waiting=4)
    first = threading.Thread(target=engine.ask, args=("q",), kwargs={"session_id": "A"})
    first.start()
    time.sleep(0.05)
    waiting = {}
    second = threading.Thread(target=lambda: waiting.setdefault("answer", engine.ask("q", session_id="B")))
    second.start()
    time.sleep(0.05)
    assert engine.admission.waiting == 1
    engine.stop("B")
    second.join(0.2)
    assert not second.is_alive() and waiting["answer"].result.cancelled
    first.join(2)
    assert len(solver.calls) == 1


def test_complete_answers_are_remembered_as_the_solver_wrote_them(box, engine_with, memory):
    # the next prompt repeats the model's own text (markdown, spacing), so a local model's cache holds
    solver = box.add("scripted").enqueue(" **Bold**  answer.\n- item").enqueue("ok")
    engine = engine_with(make_persona())
    assert engine.ask("q1", session_id="s").sentences == ["Bold answer.", "item"]
    engine.ask("q2", session_id="s")
    assert solver.calls[1].messages[1] == ChatMessage(Role.ASSISTANT, " **Bold**  answer.\n- item")
    [turn, _] = memory.history("s", "Ada", max_turns=5)
    assert (turn.answer, turn.interrupted) == (" **Bold**  answer.\n- item", False)
