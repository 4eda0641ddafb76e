"""The skill on FakeBus: fallback protocol, streaming speech, thinking, errors, stop, sessions,
voice commands, bus API and settings."""
from __future__ import annotations

import threading
import time
from typing import List

import pytest
from ovos_bus_client.message import Message
from ovos_bus_client.session import Session
from ovos_utils.fakebus import FakeBus

from conftest import make_persona
from ovos_skill_persona_fallback import SKILL_ID, PersonaFallbackSkill
from ovos_skill_persona_fallback.languages import dialog_lines
from ovos_skill_persona_fallback.persona import ThinkingSettings
from ovos_skill_persona_fallback.solvers.base import ChatMessage, Role, SolverUnavailable

REQUEST = f"ovos.skills.fallback.{SKILL_ID}.request"


def wire_id(session_id: str) -> str:
    """A session id as the skill's replies carry it: lone surrogates escaped, so the bus can send it."""
    return session_id.encode("utf-8", "backslashreplace").decode("utf-8")


class Recorder:
    """Keeps every message emitted on the bus, in order."""

    def __init__(self, bus: FakeBus) -> None:
        self.messages: List[Message] = []
        self._lock = threading.Lock()
        bus.on("message", self._on)

    def _on(self, raw) -> None:
        message = Message.deserialize(raw) if isinstance(raw, str) else raw
        with self._lock:
            self.messages.append(message)

    def types(self) -> List[str]:
        return [m.msg_type for m in self.messages]

    def spoken(self, session_id: str = None) -> List[str]:
        return [m.data["utterance"] for m in self.messages if m.msg_type == "speak"
                and (session_id is None or m.context["session"]["session_id"] == wire_id(session_id))]

    def of(self, msg_type: str) -> List[Message]:
        return [m for m in self.messages if m.msg_type == msg_type]

    def clear(self) -> None:
        self.messages.clear()

    def wait_for(self, msg_type: str, session_id: str = None, count: int = 1, timeout: float = 5.0) -> None:
        """Wait until ``count`` messages of a type (for a session) were seen."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = [m for m in list(self.messages) if m.msg_type == msg_type and
                     (session_id is None or m.context.get("session", {}).get("session_id") == wire_id(session_id))]
            if len(found) >= count:
                return
            time.sleep(0.005)
        raise AssertionError(f"no {msg_type} for {session_id} within {timeout} s: {self.types()}")


def ask(bus: FakeBus, rec: Recorder, message: Message) -> None:
    """Emit a fallback request and wait for its ovos.utterance.handled (the handler runs on a thread)."""
    session_id = message.context["session"]["session_id"]
    before = len([m for m in rec.messages if m.msg_type == "ovos.utterance.handled"
                  and m.context["session"]["session_id"] == wire_id(session_id)])
    bus.emit(message)
    rec.wait_for("ovos.utterance.handled", session_id, count=before + 1)


@pytest.fixture
def skill_env(tmp_path, monkeypatch, box, engine_with):
    """Return a function that builds the skill on FakeBus around an engine with scripted solvers."""
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    skills = []

    def build(*personas, **settings):
        bus = FakeBus()
        engine = engine_with(*(personas or (make_persona(),)))
        skill = PersonaFallbackSkill(bus=bus, skill_id=SKILL_ID, engine=engine)
        if settings:
            skill.settings.update(settings)
            skill.on_settings_changed()
        recorder = Recorder(bus)
        skills.append(skill)
        return skill, bus, recorder

    yield build
    for skill in skills:
        skill.default_shutdown()


def request(utterance: str, session_id: str = "default", lang: str = "en-us") -> Message:
    session = Session(session_id, lang=lang)
    return Message(REQUEST, {"utterances": [utterance], "lang": lang},
                   {"session": session.serialize(), "source": "audio", "destination": "skills"})


def test_fallback_protocol_order_and_one_speak_per_sentence(skill_env, box):
    box.add("scripted").enqueue("Hello there. ", "I am Ada. Nice to ", "meet you")
    skill, bus, rec = skill_env()
    ping = Message("ovos.skills.fallback.ping", {"utterances": ["who are you"], "lang": "en-us"})
    bus.emit(ping)
    ask(bus, rec, request("who are you"))
    assert rec.types() == ["ovos.skills.fallback.ping", "ovos.skills.fallback.pong", REQUEST,
                           f"ovos.skills.fallback.{SKILL_ID}.start", "speak", "speak", "speak",
                           f"ovos.skills.fallback.{SKILL_ID}.response", "ovos.utterance.handled"]
    assert rec.of("ovos.skills.fallback.pong")[0].data == {"skill_id": SKILL_ID, "can_handle": True}
    assert rec.spoken() == ["Hello there.", "I am Ada.", "Nice to meet you"]
    assert rec.of(f"ovos.skills.fallback.{SKILL_ID}.response")[0].data == {
        "result": True, "fallback_handler": "PersonaFallbackSkill.handle_fallback"}
    speak = rec.of("speak")[0]
    # forward() keeps source and destination, so the answer reaches the satellite that asked
    assert speak.context["source"] == "audio" and speak.context["destination"] == "skills"
    assert speak.data["lang"] == "en-US" and speak.data["meta"]["persona"] == "Ada"
    assert box.solvers["scripted"].calls[0].messages == [ChatMessage(Role.USER, "who are you")]


CAN_ANSWER = [
    # (utterances data, settings, expected)
    (["hello"], {}, True),
    ([""], {}, False),                 # empty utterance
    (["   "], {}, False),              # blank utterance
    ([], {}, False),                   # no utterance at all
    ("hello", {}, False),              # wrong type
    (["hello"], {"enabled": False}, False),
]


@pytest.mark.parametrize("utterances,settings,expected", CAN_ANSWER)
def test_can_answer_is_fast_and_calls_no_solver(skill_env, box, utterances, settings, expected):
    box.add("scripted")
    skill, bus, rec = skill_env(**settings)
    started = time.perf_counter()
    result = skill.can_answer(Message("ovos.skills.fallback.ping", {"utterances": utterances}))
    assert time.perf_counter() - started < 0.05
    assert result is expected
    assert box.solvers["scripted"].calls == []


def test_can_answer_false_without_personas(skill_env, box, engine_with):
    skill, bus, rec = skill_env()
    skill.engine = engine_with()
    skill.engine.default_persona = "nobody"
    assert skill.can_answer(Message("x", {"utterances": ["hello"]})) is False


def test_thinking_line_from_persona_then_answer(skill_env, box):
    box.add("scripted").enqueue("Answer.", first_delay=0.4)
    skill, bus, rec = skill_env(make_persona(thinking=ThinkingSettings(0.1, ("Hmm, let me see.",))))
    ask(bus, rec, request("hard question"))
    assert rec.spoken() == ["Hmm, let me see.", "Answer."]
    assert rec.types()[-2:] == [f"ovos.skills.fallback.{SKILL_ID}.response", "ovos.utterance.handled"]


def test_thinking_line_from_dialog_uses_setting_delay(skill_env, box):
    box.add("scripted").enqueue("Answer.", first_delay=0.4)
    skill, bus, rec = skill_env(thinking_delay=0.1)
    ask(bus, rec, request("hard question"))
    spoken = rec.spoken()
    assert spoken[0] in dialog_lines("en-us", "thinking") and spoken[1:] == ["Answer."]


def test_no_thinking_line_when_answer_is_quick(skill_env, box):
    box.add("scripted").enqueue("Quick.")
    skill, bus, rec = skill_env(thinking_delay=0.3)
    ask(bus, rec, request("q"))
    time.sleep(0.4)
    assert rec.spoken() == ["Quick."]


def test_error_line_names_the_persona_when_nothing_answers(skill_env, box):
    box.add("scripted").enqueue(error=SolverUnavailable("down"))
    skill, bus, rec = skill_env()
    ask(bus, rec, request("q"))
    [line] = rec.spoken()
    assert line in [l.replace("{persona}", "Ada") for l in dialog_lines("en-us", "error")]
    assert rec.of(f"ovos.skills.fallback.{SKILL_ID}.response")[0].data["result"] is True


def test_answer_in_session_language_with_portuguese_dialogs(skill_env, box):
    box.add("scripted").enqueue(error=SolverUnavailable("down"))
    skill, bus, rec = skill_env()
    ask(bus, rec, request("olá", session_id="pt", lang="pt-PT"))
    [speak] = rec.of("speak")
    assert speak.data["lang"] == "pt-PT"
    assert speak.data["utterance"] in [l.replace("{persona}", "Ada") for l in dialog_lines("pt-pt", "error")]


def test_malformed_lang_falls_back_to_default(skill_env, box):
    box.add("scripted").enqueue("Fine.")
    skill, bus, rec = skill_env()
    message = request("q")
    message.data["lang"] = "!!not a lang!!"
    ask(bus, rec, message)
    assert rec.of("speak")[0].data["lang"] == "en-US"


def test_stop_cuts_one_session_while_the_other_completes(skill_env, box):
    solver = box.add("scripted")
    solver.enqueue("Long story. ", endless=True, delay=0.02)
    solver.enqueue("B one. ", "B two. ", "B three.", delay=0.2)
    skill, bus, rec = skill_env()
    bus.emit(request("tell a long story", session_id="A"))
    rec.wait_for("speak", "A")
    bus.emit(request("short one", session_id="B"))
    rec.wait_for("speak", "B")
    stop = Message("mycroft.stop", {}, {"session": Session("A").serialize()})
    assert skill.can_stop(stop) is True
    stopped_at = time.monotonic()
    bus.emit(stop)
    rec.wait_for("ovos.utterance.handled", "A", timeout=1.0)
    assert time.monotonic() - stopped_at < 0.2
    rec.wait_for("ovos.utterance.handled", "B", timeout=3.0)
    assert rec.spoken("B") == ["B one.", "B two.", "B three."]
    assert set(rec.spoken("A")) == {"Long story."}
    [stop_response] = rec.of(f"{SKILL_ID}.stop.response")
    assert stop_response.data["result"] is True
    assert skill.can_stop(stop) is False


def test_two_sessions_keep_their_own_conversations(skill_env, box):
    solver = box.add("scripted")
    for text in ("A1.", "B1.", "A2."):
        solver.enqueue(text)
    skill, bus, rec = skill_env()
    ask(bus, rec, request("question A1", "A"))
    ask(bus, rec, request("question B1", "B"))
    ask(bus, rec, request("question A2", "A"))
    assert [m.content for m in solver.calls[2].messages] == ["question A1", "A1.", "question A2"]
    assert [m.content for m in solver.calls[1].messages] == ["question B1"]


def intent(name: str, session_id: str = "default", **data) -> Message:
    return Message(f"{SKILL_ID}:{name}.intent", data, {"session": Session(session_id).serialize()})


def test_voice_commands_switch_which_list_forget_release(skill_env, box):
    box.add("scripted").enqueue("From Ada.").enqueue("Ada again.")
    box.add("other").enqueue("From Bob.")
    skill, bus, rec = skill_env(make_persona(), make_persona("Bob", ("other",)))
    bus.emit(intent("switch_persona", "A", persona="bobb"))
    assert rec.spoken()[-1] in [l.replace("{persona}", "Bob") for l in dialog_lines("en-us", "switched")]
    bus.emit(intent("which_persona", "A"))
    assert rec.spoken()[-1] in [l.replace("{persona}", "Bob") for l in dialog_lines("en-us", "current_persona")]
    ask(bus, rec, request("q", "A"))
    assert rec.spoken()[-1] == "From Bob."
    ask(bus, rec, request("q", "B"))                      # another session still talks to the default
    assert rec.spoken()[-1] == "From Ada."
    bus.emit(intent("list_personas", "A"))
    assert rec.spoken()[-1] in [l.replace("{personas}", "Ada, Bob") for l in dialog_lines("en-us", "list_personas")]
    bus.emit(intent("forget_conversation", "A"))
    assert rec.spoken()[-1] in dialog_lines("en-us", "forgot")
    assert skill.engine.memory.count_turns("A") == 0 and skill.engine.memory.count_turns("B") == 1
    bus.emit(intent("release_persona", "A", persona="Bob"))
    assert rec.spoken()[-1] in [l.replace("{persona}", "Ada") for l in dialog_lines("en-us", "released")]
    ask(bus, rec, request("q", "A"))
    assert rec.spoken()[-1] == "Ada again."


def test_unknown_persona_gets_the_list_spoken(skill_env, box):
    box.add("scripted")
    skill, bus, rec = skill_env()
    bus.emit(intent("switch_persona", persona="Zorglub"))
    expected = [l.replace("{name}", "Zorglub").replace("{personas}", "Ada")
                for l in dialog_lines("en-us", "unknown_persona")]
    assert rec.spoken() == [rec.spoken()[0]] and rec.spoken()[0] in expected


def bus_call(bus, rec, msg_type, data, session_id="default"):
    rec.clear()
    bus.emit(Message(msg_type, data, {"session": Session(session_id).serialize()}))
    deadline = time.monotonic() + 5  # persona.ask answers from a thread of its own
    while time.monotonic() < deadline:
        replies = [m for m in list(rec.messages) if m.msg_type in (f"{msg_type}.response", f"{msg_type}.error")]
        if replies:
            break
        time.sleep(0.005)
    time.sleep(0.02)  # a second reply would be a bug: give it the chance to show
    replies = [m for m in list(rec.messages) if m.msg_type in (f"{msg_type}.response", f"{msg_type}.error")]
    assert len(replies) == 1, rec.types()
    return replies[0]


def test_bus_api_good_requests(skill_env, box):
    solver = box.add("scripted").enqueue("Forty two. Really.")
    box.add("other").enqueue("Bob says hi.")
    skill, bus, rec = skill_env(make_persona(description="First"), make_persona("Bob", ("other",), lang="pt-pt"))
    reply = bus_call(bus, rec, "persona.ask", {"utterance": "meaning of life?"}, "S")
    assert (reply.msg_type, reply.data) == ("persona.ask.response",
                                            {"answer": "Forty two. Really.", "persona": "Ada", "lang": "en-US"})
    assert rec.spoken() == [], "persona.ask answers on the bus, it does not speak"
    reply = bus_call(bus, rec, "persona.ask", {"utterance": "hi", "persona": "Bob"}, "S")
    assert reply.data["persona"] == "Bob" and reply.data["answer"] == "Bob says hi."
    reply = bus_call(bus, rec, "persona.list", {})
    assert reply.data == {"personas": [{"name": "Ada", "description": "First", "lang": "en-us"},
                                       {"name": "Bob", "description": "", "lang": "pt-pt"}]}
    reply = bus_call(bus, rec, "persona.context.inject", {"context": "User is called Joe."}, "S")
    assert reply.data == {"session_id": "S"}
    solver.enqueue("ok")
    bus_call(bus, rec, "persona.ask", {"utterance": "who am i"}, "S")
    assert solver.calls[-1].messages[0] == ChatMessage(Role.SYSTEM, "User is called Joe.")
    bus_call(bus, rec, "persona.context.clear", {}, "S")
    assert skill.engine.memory.context("S") == ""
    reply = bus_call(bus, rec, "persona.active.set", {"persona": "bob"}, "S")
    assert reply.data == {"persona": "Bob", "session_id": "S"}
    assert skill.engine.active_persona("S").name == "Bob"
    reply = bus_call(bus, rec, "persona.conversation.end", {}, "S")
    assert reply.data == {"session_id": "S"}
    assert skill.engine.memory.count_turns("S") == 0 and skill.engine.active_persona("S").name == "Ada"
    assert solver.forgotten[-1] == "S"


MALFORMED = [
    # (message type, data, expected error fragment)
    ("persona.ask", {}, "utterance must be non-empty text"),
    ("persona.ask", {"utterance": None}, "utterance must be non-empty text"),
    ("persona.ask", {"utterance": 42}, "utterance must be non-empty text"),
    ("persona.ask", {"utterance": "  "}, "utterance must be non-empty text"),
    ("persona.ask", {"utterance": "hi", "persona": ["x"]}, "persona must be a persona name"),
    ("persona.ask", {"utterance": "hi", "persona": "Nobody"}, "no persona called 'Nobody'; known personas: Ada"),
    ("persona.context.inject", {"context": {"a": 1}}, "context must be non-empty text"),
    ("persona.context.inject", {}, "context must be non-empty text"),
    ("persona.active.set", {"persona": 3}, "persona must be a persona name"),
    ("persona.active.set", {"persona": "zzzz"}, "no persona called 'zzzz'"),
]


@pytest.mark.parametrize("msg_type,data,fragment", MALFORMED)
def test_bus_api_malformed_requests_get_an_error_reply(skill_env, box, msg_type, data, fragment):
    box.add("scripted").enqueue("ok")
    skill, bus, rec = skill_env()
    reply = bus_call(bus, rec, msg_type, data)
    assert reply.msg_type == f"{msg_type}.error"
    assert fragment in reply.data["error"]


def test_persona_ask_error_when_nothing_answers(skill_env, box):
    box.add("scripted").enqueue(error=SolverUnavailable("down"))
    skill, bus, rec = skill_env()
    reply = bus_call(bus, rec, "persona.ask", {"utterance": "q"})
    assert (reply.msg_type, reply.data) == ("persona.ask.error", {"error": "Ada could not answer"})


def test_settings_change_applies_without_restart_and_keeps_good_values(skill_env, box):
    box.add("scripted").enqueue("from Ada")
    box.add("other").enqueue("from Bob")
    skill, bus, rec = skill_env(make_persona(), make_persona("Bob", ("other",)))
    assert skill.priority == 90
    skill.settings.update({"priority": 40, "default_persona": "Bob", "max_turns": "many"})
    skill.on_settings_changed()
    assert skill.priority == 40
    assert skill.engine.default_persona == "Bob"
    assert skill._config["max_turns"] == 12          # bad value: previous good one kept
    ask(bus, rec, request("q"))
    assert rec.spoken() == ["from Bob"]
    skill.settings.update({"enabled": False})
    skill.on_settings_changed()
    assert skill.can_answer(Message("x", {"utterances": ["q"]})) is False


def test_settings_persona_dirs_reload(skill_env, box, tmp_path):
    box.add("scripted")
    skill, bus, rec = skill_env()
    folder = tmp_path / "personas"
    folder.mkdir()
    (folder / "c.yaml").write_text("name: Carla\nsolvers: [scripted]\n")
    skill.engine._known_solvers = None
    skill.settings.update({"persona_dirs": [str(folder)]})
    skill.on_settings_changed()
    assert "Carla" in skill.engine.personas


def test_busy_line_when_every_slot_and_the_line_are_taken(skill_env, box):
    box.add("scripted").enqueue("Slow answer.", first_delay=0.5).enqueue("never")
    skill, bus, rec = skill_env(max_concurrent_answers=1, max_waiting_answers=0, thinking_delay=5)
    bus.emit(request("first", "A"))
    time.sleep(0.1)
    ask(bus, rec, request("second", "B"))
    assert rec.spoken("B") == list(dialog_lines("en-us", "busy"))
    rec.wait_for("ovos.utterance.handled", "A")
    assert rec.spoken("A") == ["Slow answer."]


# -- defects found by running the skill as a user would --------------------------------------------

def test_persona_thinking_line_fills_its_placeholders(skill_env, box):
    box.add("scripted").enqueue("Answer.", first_delay=0.4)
    skill, bus, rec = skill_env(make_persona("Ada", thinking=ThinkingSettings(0.1, ("{name} is thinking.",))))
    ask(bus, rec, request("hard question"))
    assert rec.spoken() == ["Ada is thinking.", "Answer."]


def test_persona_ask_does_not_hold_the_bus_handler(skill_env, box):
    box.add("scripted").enqueue("Slow ", "answer.", first_delay=0.5)
    skill, bus, rec = skill_env()
    started = time.monotonic()
    bus.emit(Message("persona.ask", {"utterance": "q"}, {"session": Session("S").serialize()}))
    assert time.monotonic() - started < 0.3, "FakeBus runs handlers inline: the handler must return at once"
    rec.wait_for("persona.ask.response", "S")
    assert rec.of("persona.ask.response")[0].data["answer"] == "Slow answer."


def test_release_with_another_persona_named_keeps_the_active_one(skill_env, box):
    box.add("scripted")
    box.add("other").enqueue("Bob here.")
    skill, bus, rec = skill_env(make_persona("Ada"), make_persona("Bob", ("other",)))
    skill.engine.set_active("S", "Bob")
    bus.emit(Message(f"{SKILL_ID}:release_persona.intent", {"persona": "Ada", "utterance": "stop talking as ada"},
                     {"session": Session("S").serialize()}))
    [speak] = rec.of("speak")
    assert speak.data["meta"]["dialog"] == "not_active"
    assert speak.data["utterance"] in [line.format(name="Ada", persona="Bob")
                                       for line in dialog_lines("en-us", "not_active")]
    assert skill.engine.active_persona("S").name == "Bob"
    rec.clear()
    bus.emit(Message(f"{SKILL_ID}:release_persona.intent", {"persona": "bob", "utterance": "stop talking as bob"},
                     {"session": Session("S").serialize()}))
    assert rec.of("speak")[0].data["meta"]["dialog"] == "released"
    assert skill.engine.active_persona("S").name == "Ada"


def test_session_persona_id_summons_ours_and_leaves_others(skill_env, box):
    box.add("scripted")
    bob = box.add("other").enqueue("Bob answers.")
    skill, bus, rec = skill_env(make_persona("Ada"), make_persona("Bob", ("other",)))
    summoned = Session("S", lang="en-us")
    summoned.persona_id = "Bob"
    message = Message(REQUEST, {"utterances": ["hi"], "lang": "en-us"}, {"session": summoned.serialize()})
    assert skill.can_answer(message)
    ask(bus, rec, message)
    assert rec.spoken("S") == ["Bob answers."] and len(bob.calls) == 1
    foreign = Session("T", lang="en-us")
    foreign.persona_id = "somebody-elses-persona"
    assert not skill.can_answer(Message(REQUEST, {"utterances": ["hi"]}, {"session": foreign.serialize()}))


def test_replies_to_a_context_with_lone_surrogates_can_be_sent(skill_env, box):
    box.add("scripted").enqueue("Fine.")
    skill, bus, rec = skill_env()
    context = {"session": Session("S").serialize(), "source": "sat-\ud800", "destination": ["x\udfff"]}
    bus.emit(Message("persona.list", {}, context))
    [reply] = rec.of("persona.list.response")
    reply.serialize().encode("utf-8")  # raises on a lone surrogate
    assert reply.context["destination"] == "sat-\\ud800" and reply.context["source"] == ["x\\udfff"]


def test_settings_lock_is_our_own(skill_env):
    skill, bus, rec = skill_env()
    assert skill._config_lock is not getattr(skill, "_settings_lock", None)
    skill.settings["priority"] = 42.0  # a settings UI's float
    skill.on_settings_changed()
    assert skill._config["priority"] == 42


def test_model_being_prepared_is_said_once_while_the_chain_answers(skill_env, box):
    from ovos_skill_persona_fallback.models.errors import ModelNotReady

    local = box.add("local")
    box.add("scripted").enqueue("Chit-chat answer.").enqueue("Again chit-chat.")
    local.enqueue(error=ModelNotReady("hf:owner/repo/model.gguf")).enqueue(
        error=ModelNotReady("hf:owner/repo/model.gguf"))
    skill, bus, rec = skill_env(make_persona("Ada", ("local", "scripted")))
    ask(bus, rec, request("first question"))
    ask(bus, rec, request("second question"))
    said = rec.spoken()
    [line] = dialog_lines("en-us", "model_preparing")
    assert said == ["Chit-chat answer.", line.replace("{persona}", "Ada"), "Again chit-chat."]
