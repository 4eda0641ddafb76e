"""OVOS-PERSONA-1 on FakeBus: ovos.persona.query/answer, ovos.persona.list, and the session's
persona_id set, cleared and honoured."""
from __future__ import annotations

import time
from typing import List

import pytest
from ovos_bus_client.message import Message
from ovos_bus_client.session import Session

from conftest import make_persona
from test_skill import REQUEST, ask, skill_env  # noqa: F401 - skill_env is a fixture
from ovos_skill_persona_fallback import SKILL_ID


def _answers(rec, count: int = 1, timeout: float = 5.0) -> List[Message]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = rec.of("ovos.persona.answer")
        if len(found) >= count:
            time.sleep(0.05)  # a second answer to one query would be a bug: let it show
            return rec.of("ovos.persona.answer")
        time.sleep(0.005)
    raise AssertionError(f"no ovos.persona.answer within {timeout} s: {rec.types()}")


def _query(bus, data, session_id="S", context=None):
    bus.emit(Message("ovos.persona.query", data,
                     context if context is not None else {"session": Session(session_id).serialize(),
                                                          "source": "asker", "destination": "personas"}))


def test_query_for_our_persona_is_answered_and_routed_back(skill_env, box):
    solver = box.add("scripted").enqueue("Forty ", "two.")
    skill, bus, rec = skill_env(make_persona("Ada"))
    _query(bus, {"persona_id": "Ada", "utterance": "meaning of life?"})
    [answer] = _answers(rec)
    assert answer.data == {"persona_id": "Ada", "utterance": "meaning of life?", "response": "Forty two."}
    assert (answer.context["source"], answer.context["destination"]) == ("personas", "asker")  # reply()
    assert solver.calls[0].conversation_id == "S"
    assert rec.spoken() == [], "an out-of-band query is answered on the bus, never spoken"


def test_query_does_not_enter_the_history(skill_env, box, memory):
    solver = box.add("scripted").enqueue("Lookup answer.").enqueue("Spoken answer.")
    skill, bus, rec = skill_env(make_persona("Ada"))
    _query(bus, {"persona_id": "Ada", "utterance": "a lookup"})
    _answers(rec)
    assert memory.count_turns("S") == 0
    ask(bus, rec, Message(REQUEST, {"utterances": ["a spoken question"], "lang": "en-us"},
                          {"session": Session("S").serialize()}))
    assert [m.content for m in solver.calls[-1].messages] == ["a spoken question"]


@pytest.mark.parametrize("data,error", [
    ({"persona_id": "Nobody", "utterance": "hi"}, "unsupported persona_id"),    # not ours
    ({"persona_id": "", "utterance": "hi"}, "persona_id must be non-empty text"),
    ({"persona_id": 7, "utterance": "hi"}, "persona_id must be non-empty text"),
    ({"persona_id": "Ada"}, "utterance must be non-empty text"),
    ({"persona_id": "Ada", "utterance": ["hi"]}, "utterance must be non-empty text"),
])
def test_every_other_outcome_gets_exactly_one_error(skill_env, box, data, error):
    box.add("scripted")
    skill, bus, rec = skill_env(make_persona("Ada"))
    _query(bus, data)
    [answer] = _answers(rec)
    assert answer.data["error"] == error and "response" not in answer.data
    expected_id = data.get("persona_id") if isinstance(data.get("persona_id"), str) else ""
    expected_utterance = data.get("utterance") if isinstance(data.get("utterance"), str) else ""
    assert (answer.data["persona_id"], answer.data["utterance"]) == (expected_id, expected_utterance)


def test_malformed_payload_and_failure_are_answered(skill_env, box):
    box.add("scripted")  # says nothing: the persona cannot answer
    skill, bus, rec = skill_env(make_persona("Ada"))
    malformed = Message("ovos.persona.query", {}, {"session": Session("S").serialize()})
    malformed.data = "not an object"  # as a raw frame from another client can carry it
    bus.ee.emit("ovos.persona.query", malformed)  # handlers only: such a message cannot be serialised
    _query(bus, {"persona_id": "Ada", "utterance": "anything"})
    first, second = _answers(rec, 2)
    assert first.data == {"persona_id": "", "utterance": "", "error": "message data must be an object"}
    assert second.data == {"persona_id": "Ada", "utterance": "anything", "error": "Ada could not answer"}


def test_persona_list_response_names_ids_and_tags(skill_env, box):
    box.add("scripted")
    skill, bus, rec = skill_env(make_persona("Ada", tags=("chat", "offline")), make_persona("Bob"))
    bus.emit(Message("ovos.persona.list", {}, {"session": Session("S").serialize()}))
    [reply] = rec.of("ovos.persona.list.response")
    assert reply.data == {"pipeline_id": SKILL_ID, "personas": [
        {"persona_id": "Ada", "name": "Ada", "tags": ["chat", "offline"]},
        {"persona_id": "Bob", "name": "Bob", "tags": []}]}


def test_voice_switch_sets_persona_id_and_release_clears_it(skill_env, box):
    box.add("scripted")
    skill, bus, rec = skill_env(make_persona("Ada"), make_persona("Bob"))
    context = {"session": Session("S").serialize()}
    bus.emit(Message(f"{SKILL_ID}:switch_persona.intent", {"persona": "bob", "utterance": "talk to bob"}, context))
    [activated] = rec.of("ovos.persona.activated")
    assert activated.data == {"persona_id": "Bob", "session_id": "S"}
    assert activated.context["session"]["persona_id"] == "Bob"
    assert rec.of("speak")[0].context["session"]["persona_id"] == "Bob"
    rec.clear()
    switched = Session("S")
    switched.persona_id = "Bob"
    bus.emit(Message(f"{SKILL_ID}:release_persona.intent", {"utterance": "go back to the default persona"},
                     {"session": switched.serialize()}))
    [dismissed] = rec.of("ovos.persona.dismissed")
    assert dismissed.data == {"persona_id": "Bob", "session_id": "S"}
    assert not rec.of("speak")[0].context["session"].get("persona_id")
    assert skill.engine.active_persona("S").name == "Ada"


def test_bus_api_active_set_announces_activation(skill_env, box):
    box.add("scripted")
    skill, bus, rec = skill_env(make_persona("Ada"), make_persona("Bob"))
    bus.emit(Message("persona.active.set", {"persona": "Bob"}, {"session": Session("S").serialize()}))
    [activated] = rec.of("ovos.persona.activated")
    assert activated.data == {"persona_id": "Bob", "session_id": "S"}
