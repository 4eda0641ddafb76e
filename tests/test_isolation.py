"""Sessions are isolated: what session A said, injected, chose or is generating never shows in, or
changes, what session B gets, through every entry point (fallback request, voice intents,
``persona.*`` bus API, stop, and the CLI's ``--session``).

Prompts are compared exactly: the scripted solver records every message list it received, and
for the CLI a real OpenAI-compatible HTTP server records every request body.
"""
from __future__ import annotations

import time
from typing import Callable, List, NamedTuple

import pytest
from ovos_bus_client.message import Message
from ovos_bus_client.session import Session
from ovos_utils.log import LOG

from conftest import make_persona
from ovos_skill_persona_fallback import SKILL_ID
from ovos_skill_persona_fallback.cli import main as cli_main
from ovos_skill_persona_fallback.solvers.base import ChatMessage, Role
from openai_server import SSEStream, chat_chunk, openai_server, sse  # noqa: F401 - openai_server is a fixture
from test_skill import ask, intent, request, skill_env  # noqa: F401 - skill_env is a fixture

# in the full run, not the quick lane (-m "not slow"): the isolation table over every entry point
pytestmark = pytest.mark.slow

U, A, S = Role.USER, Role.ASSISTANT, Role.SYSTEM


def chat(*pairs) -> List[ChatMessage]:
    return [ChatMessage(role, text) for role, text in pairs]


class World:
    """The skill on FakeBus with Ada (solver ``scripted``) and Bob (solver ``other``)."""

    def __init__(self, skill, bus, rec, ada, bob) -> None:
        self.skill, self.bus, self.rec, self.ada, self.bob = skill, bus, rec, ada, bob

    def fallback(self, session_id: str, utterance: str) -> List[str]:
        """Ask through the fallback protocol; return what was spoken to that session."""
        before = len(self.rec.spoken(session_id))
        ask(self.bus, self.rec, request(utterance, session_id))
        return self.rec.spoken(session_id)[before:]

    def call(self, session_id: str, msg_type: str, data: dict) -> Message:
        """Emit a bus API request (handled at once on FakeBus) and return its one reply."""
        before = len(self.rec.messages)
        self.bus.emit(Message(msg_type, data, {"session": Session(session_id).serialize()}))
        wanted = (f"{msg_type}.response", f"{msg_type}.error")
        deadline = time.monotonic() + 5  # persona.ask answers from a thread of its own
        while time.monotonic() < deadline:
            replies = [m for m in self.rec.messages[before:] if m.msg_type in wanted]
            if replies:
                break
            time.sleep(0.005)
        assert len(replies) == 1, self.rec.types()
        return replies[0]

    def bus_ask(self, session_id: str, utterance: str) -> Message:
        return self.call(session_id, "persona.ask", {"utterance": utterance})

    def api(self, session_id: str, msg_type: str, **data) -> Message:
        reply = self.call(session_id, msg_type, data)
        assert reply.msg_type == f"{msg_type}.response", reply.data
        return reply

    def intent(self, session_id: str, name: str, **data) -> None:
        self.bus.emit(intent(name, session_id, **data))


@pytest.fixture
def world(skill_env, box) -> World:
    ada, bob = box.add("scripted"), box.add("other")
    skill, bus, rec = skill_env(make_persona("Ada", ("scripted",)), make_persona("Bob", ("other",)))
    return World(skill, bus, rec, ada, bob)


# ------------------------------------------------------------------ history

def history_via_fallback(w: World) -> None:
    w.ada.enqueue("A one.").enqueue("A two.").enqueue("B one.").enqueue("A three.")
    assert w.fallback("A", "first from A") == ["A one."]
    assert w.fallback("A", "second from A") == ["A two."]
    assert w.fallback("B", "first from B") == ["B one."]
    assert w.fallback("A", "third from A") == ["A three."]
    prompts = [call.messages for call in w.ada.calls]
    assert prompts[1] == chat((U, "first from A"), (A, "A one."), (U, "second from A"))
    assert prompts[2] == chat((U, "first from B"))
    assert prompts[3] == chat((U, "first from A"), (A, "A one."), (U, "second from A"), (A, "A two."),
                              (U, "third from A"))
    assert [call.conversation_id for call in w.ada.calls] == ["A", "A", "B", "A"]


def history_via_bus_ask(w: World) -> None:
    w.ada.enqueue("A one.").enqueue("A two.").enqueue("B one.").enqueue("B two.")
    assert w.bus_ask("A", "first from A").data["answer"] == "A one."
    assert w.bus_ask("A", "second from A").data["answer"] == "A two."
    assert w.bus_ask("B", "first from B").data["answer"] == "B one."
    assert w.bus_ask("B", "second from B").data["answer"] == "B two."
    assert w.ada.calls[2].messages == chat((U, "first from B"))
    assert w.ada.calls[3].messages == chat((U, "first from B"), (A, "B one."), (U, "second from B"))


def history_across_entry_points(w: World) -> None:
    w.ada.enqueue("A spoken.").enqueue("B on the bus.").enqueue("A on the bus.").enqueue("B spoken.")
    w.fallback("A", "A by voice")
    w.bus_ask("B", "B by bus")
    w.bus_ask("A", "A by bus")
    w.fallback("B", "B by voice")
    assert w.ada.calls[1].messages == chat((U, "B by bus"))
    assert w.ada.calls[2].messages == chat((U, "A by voice"), (A, "A spoken."), (U, "A by bus"))
    assert w.ada.calls[3].messages == chat((U, "B by bus"), (A, "B on the bus."), (U, "B by voice"))
    assert w.rec.spoken("A") == ["A spoken."] and w.rec.spoken("B") == ["B spoken."]


def odd_session_ids_stay_distinct(w: World) -> None:
    # ids from the bus may hold lone surrogates (JSON escapes), which SQLite refuses as they are
    first, second = "user-\ud800", "user-\udfff"
    w.ada.enqueue("One.").enqueue("Two.").enqueue("Three.")
    assert w.fallback(first, "from the first") == ["One."]
    assert w.fallback(second, "from the second") == ["Two."]
    w.api(first, "persona.context.inject", context="first only")
    assert w.bus_ask(second, "again from the second").data["answer"] == "Three."
    assert w.ada.calls[1].messages == chat((U, "from the second"))
    assert w.ada.calls[2].messages == chat((U, "from the second"), (A, "Two."), (U, "again from the second"))


# ------------------------------------------------------------------ injected context

def inject_stays_in_its_session(w: World) -> None:
    w.api("A", "persona.context.inject", context="A's secret: the door code is 1234.")
    w.ada.enqueue("B answer.").enqueue("A answer.")
    w.fallback("B", "what is the door code?")
    w.bus_ask("A", "what is the door code?")
    assert w.ada.calls[0].messages == chat((U, "what is the door code?"))
    assert w.ada.calls[1].messages == chat((S, "A's secret: the door code is 1234."),
                                           (U, "what is the door code?"))


def clear_of_b_keeps_a_context(w: World) -> None:
    w.api("A", "persona.context.inject", context="A likes jazz.")
    w.api("B", "persona.context.inject", context="B likes rock.")
    w.api("B", "persona.context.clear")
    w.ada.enqueue("A answer.").enqueue("B answer.")
    w.fallback("A", "music?")
    w.fallback("B", "music?")
    assert w.ada.calls[0].messages == chat((S, "A likes jazz."), (U, "music?"))
    assert w.ada.calls[1].messages == chat((U, "music?"))


def clear_of_a_keeps_b_context(w: World) -> None:
    w.api("A", "persona.context.inject", context="A likes jazz.")
    w.api("B", "persona.context.inject", context="B likes rock.")
    w.api("A", "persona.context.clear")
    w.ada.enqueue("B answer.")
    w.bus_ask("B", "music?")
    assert w.ada.calls[0].messages == chat((S, "B likes rock."), (U, "music?"))
    assert w.skill.engine.memory.context("A") == ""


# ------------------------------------------------------------------ active persona

def active_set_stays_in_its_session(w: World) -> None:
    assert w.api("A", "persona.active.set", persona="bob").data == {"persona": "Bob", "session_id": "A"}
    w.ada.enqueue("Ada for B.")
    w.bob.enqueue("Bob for A.")
    assert w.fallback("B", "who are you?") == ["Ada for B."]
    assert w.fallback("A", "who are you?") == ["Bob for A."]
    assert len(w.bob.calls) == 1 and w.bob.calls[0].conversation_id == "A"


def switch_intent_stays_in_its_session(w: World) -> None:
    w.intent("A", "switch_persona", persona="Bob")
    w.intent("B", "which_persona")
    assert "Ada" in w.rec.spoken("B")[-1] and "Bob" not in w.rec.spoken("B")[-1]
    w.ada.enqueue("Ada for B.")
    w.bob.enqueue("Bob for A.")
    assert w.fallback("B", "hi") == ["Ada for B."]
    assert w.fallback("A", "hi") == ["Bob for A."]


def release_intent_of_b_keeps_a_choice(w: World) -> None:
    w.intent("A", "switch_persona", persona="Bob")
    w.intent("B", "switch_persona", persona="Bob")
    w.intent("B", "release_persona")
    assert w.skill.engine.active_persona("A").name == "Bob"
    assert w.skill.engine.active_persona("B").name == "Ada"
    w.bob.enqueue("Bob for A.")
    w.ada.enqueue("Ada for B.")
    assert w.fallback("A", "hi") == ["Bob for A."]
    assert w.fallback("B", "hi") == ["Ada for B."]


def active_set_then_history_per_persona(w: World) -> None:
    # A talks to Ada, then to Bob; B talks to Ada: B's Ada prompt holds nothing of A's Ada turn
    w.ada.enqueue("Ada to A.").enqueue("Ada to B.")
    w.bob.enqueue("Bob to A.")
    w.fallback("A", "hello Ada")
    w.api("A", "persona.active.set", persona="Bob")
    w.fallback("A", "hello Bob")
    w.fallback("B", "hello Ada")
    assert w.bob.calls[0].messages == chat((U, "hello Bob"))
    assert w.ada.calls[1].messages == chat((U, "hello Ada"))


# ------------------------------------------------------------------ forgetting

def _both_with_history(w: World) -> None:
    w.ada.enqueue("A one.").enqueue("B one.")
    w.fallback("A", "A question")
    w.fallback("B", "B question")


def forget_intent_of_a_keeps_b(w: World) -> None:
    _both_with_history(w)
    w.intent("A", "forget_conversation")
    w.ada.enqueue("A again.").enqueue("B again.")
    w.fallback("A", "A next")
    w.fallback("B", "B next")
    assert w.ada.calls[2].messages == chat((U, "A next"))
    assert w.ada.calls[3].messages == chat((U, "B question"), (A, "B one."), (U, "B next"))
    assert w.ada.forgotten == ["A"]


def forget_intent_of_b_keeps_a(w: World) -> None:
    _both_with_history(w)
    w.intent("B", "forget_conversation")
    w.ada.enqueue("A again.")
    w.bus_ask("A", "A next")
    assert w.ada.calls[2].messages == chat((U, "A question"), (A, "A one."), (U, "A next"))
    assert w.skill.engine.memory.count_turns("B") == 0 and w.skill.engine.memory.count_turns("A") == 2


def conversation_end_of_b_keeps_everything_of_a(w: World) -> None:
    w.api("A", "persona.active.set", persona="Bob")
    w.api("A", "persona.context.inject", context="A is in the kitchen.")
    w.bob.enqueue("Bob one.").enqueue("Bob two.")
    w.fallback("A", "where am I?")
    w.api("B", "persona.active.set", persona="Bob")
    w.api("B", "persona.context.inject", context="B is outside.")
    w.api("B", "persona.conversation.end")
    w.fallback("A", "and now?")
    assert w.bob.calls[1].messages == chat((S, "A is in the kitchen."), (U, "where am I?"), (A, "Bob one."),
                                           (U, "and now?"))
    assert w.skill.engine.active_persona("B").name == "Ada"
    assert w.skill.engine.memory.context("B") == ""
    assert w.bob.forgotten == ["B"]  # Ada's solver was never built, so it has nothing to forget


# ------------------------------------------------------------------ in-flight generation

def _two_streams(w: World, a_reply: dict, b_reply: dict) -> None:
    """Start A's then B's answer, each speaking its first sentence before the next starts."""
    w.ada.enqueue(*a_reply.pop("chunks"), **a_reply)
    w.ada.enqueue(*b_reply.pop("chunks"), **b_reply)
    w.bus.emit(request("long story for A", "A"))
    w.rec.wait_for("speak", "A")
    w.bus.emit(request("long story for B", "B"))
    w.rec.wait_for("speak", "B")


def _stop(w: World, session_id: str) -> Message:
    w.bus.emit(Message("mycroft.stop", {}, {"session": Session(session_id).serialize()}))
    [reply] = [m for m in w.rec.of(f"{SKILL_ID}.stop.response")
               if m.context["session"]["session_id"] == session_id][-1:]
    return reply


def stop_of_b_does_not_stop_a(w: World) -> None:
    _two_streams(w, {"chunks": ("A one. ", "A two. ", "A three."), "delay": 0.15},
                 {"chunks": ("B forever. ",), "endless": True, "delay": 0.02})
    assert _stop(w, "B").data["result"] is True
    w.rec.wait_for("ovos.utterance.handled", "B", timeout=1.0)
    w.rec.wait_for("ovos.utterance.handled", "A", timeout=5.0)
    assert w.rec.spoken("A") == ["A one.", "A two.", "A three."]
    assert set(w.rec.spoken("B")) == {"B forever."}


def stop_of_a_does_not_stop_b(w: World) -> None:
    _two_streams(w, {"chunks": ("A forever. ",), "endless": True, "delay": 0.02},
                 {"chunks": ("B one. ", "B two. ", "B three."), "delay": 0.15})
    assert _stop(w, "A").data["result"] is True
    w.rec.wait_for("ovos.utterance.handled", "A", timeout=1.0)
    w.rec.wait_for("ovos.utterance.handled", "B", timeout=5.0)
    assert w.rec.spoken("B") == ["B one.", "B two.", "B three."]
    assert set(w.rec.spoken("A")) == {"A forever."}


def stop_of_idle_b_while_a_generates(w: World) -> None:
    w.ada.enqueue("A one. ", "A two.", delay=0.2)
    w.bus.emit(request("story for A", "A"))
    w.rec.wait_for("speak", "A")
    assert w.skill.can_stop(Message("x", {}, {"session": Session("B").serialize()})) is False
    assert _stop(w, "B").data["result"] is False
    w.rec.wait_for("ovos.utterance.handled", "A", timeout=5.0)
    assert w.rec.spoken("A") == ["A one.", "A two."]


def conversation_end_of_b_does_not_stop_a(w: World) -> None:
    w.ada.enqueue("A one. ", "A two.", delay=0.2)
    w.bus.emit(request("story for A", "A"))
    w.rec.wait_for("speak", "A")
    w.api("B", "persona.conversation.end")
    w.rec.wait_for("ovos.utterance.handled", "A", timeout=5.0)
    assert w.rec.spoken("A") == ["A one.", "A two."]


def stopped_answer_of_a_not_in_b_prompt(w: World) -> None:
    # A's interrupted answer is remembered for A only
    _two_streams(w, {"chunks": ("A forever. ",), "endless": True, "delay": 0.02},
                 {"chunks": ("B done.",), "delay": 0.0})
    _stop(w, "A")
    w.rec.wait_for("ovos.utterance.handled", "A", timeout=1.0)
    w.rec.wait_for("ovos.utterance.handled", "B", timeout=5.0)
    w.ada.enqueue("B next.")
    w.fallback("B", "next for B")
    assert w.ada.calls[-1].messages == chat((U, "long story for B"), (A, "B done."), (U, "next for B"))


class Row(NamedTuple):
    entry: str
    scenario: Callable[[World], None]


ISOLATION = [
    # history
    Row("fallback request: A's turns never in B's prompt", history_via_fallback),
    Row("persona.ask: A's turns never in B's prompt", history_via_bus_ask),
    Row("fallback + persona.ask mixed: each session keeps its own", history_across_entry_points),
    Row("session ids with lone surrogates: still two sessions", odd_session_ids_stay_distinct),
    # injected context
    Row("persona.context.inject: A's context never in B's prompt", inject_stays_in_its_session),
    Row("persona.context.clear by B: A's context stays", clear_of_b_keeps_a_context),
    Row("persona.context.clear by A: B's context stays", clear_of_a_keeps_b_context),
    # active persona
    Row("persona.active.set by A: B keeps the default", active_set_stays_in_its_session),
    Row("switch_persona intent by A: B keeps the default", switch_intent_stays_in_its_session),
    Row("release_persona intent by B: A keeps its choice", release_intent_of_b_keeps_a_choice),
    Row("persona switch: A's turns with Ada never in B's Ada prompt", active_set_then_history_per_persona),
    # forgetting
    Row("forget_conversation intent by A: B's history stays", forget_intent_of_a_keeps_b),
    Row("forget_conversation intent by B: A's history stays", forget_intent_of_b_keeps_a),
    Row("persona.conversation.end by B: A keeps history, context, persona",
        conversation_end_of_b_keeps_everything_of_a),
    # in-flight generation
    Row("mycroft.stop for B: A's answer completes", stop_of_b_does_not_stop_a),
    Row("mycroft.stop for A: B's answer completes", stop_of_a_does_not_stop_b),
    Row("mycroft.stop for idle B: nothing stopped, A completes", stop_of_idle_b_while_a_generates),
    Row("persona.conversation.end by B: A's answer completes", conversation_end_of_b_does_not_stop_a),
    Row("A's interrupted answer never in B's prompt", stopped_answer_of_a_not_in_b_prompt),
]


@pytest.mark.parametrize("row", ISOLATION, ids=[row.entry for row in ISOLATION])
def test_sessions_are_isolated(world, row):
    row.scenario(world)


def test_skill_stop_for_b_while_both_generate_via_skill_id_stop(world):
    """``<skill_id>.stop`` (core's targeted stop) is per session too."""
    _two_streams(world, {"chunks": ("A one. ", "A two. ", "A three."), "delay": 0.15},
                 {"chunks": ("B forever. ",), "endless": True, "delay": 0.02})
    world.bus.emit(Message(f"{SKILL_ID}.stop", {}, {"session": Session("B").serialize()}))
    world.rec.wait_for("ovos.utterance.handled", "B", timeout=1.0)
    world.rec.wait_for("ovos.utterance.handled", "A", timeout=5.0)
    assert world.rec.spoken("A") == ["A one.", "A two.", "A three."]


# ------------------------------------------------------------------ the CLI

PERSONA_FILE = """\
name: Remote Ada
system_prompt: You are {name}.
solvers: [openai]
openai:
  api_url: %s
  model: remote
  retries: 0
  timeout: {connect: 2, read: 5}
"""


def answer(text: str) -> SSEStream:
    return SSEStream(sse(chat_chunk(role="assistant"), chat_chunk(text, finish_reason="stop")))


@pytest.fixture
def keep_log_level():
    """``cli.main`` sets the process's OVOS log level, as a console script does; undo that."""
    level = LOG.level
    yield
    LOG.set_level(level)


def test_cli_sessions_share_a_database_but_not_prompts(tmp_path, monkeypatch, capsys, openai_server,
                                                       keep_log_level):
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    persona = tmp_path / "remote-ada.yaml"
    persona.write_text(PERSONA_FILE % openai_server.url)
    db = str(tmp_path / "shared.db")
    openai_server.script(answer("First answer for A."), answer("Second answer for A."),
                         answer("First answer for B."), answer("Third answer for A."))

    def run(session_id: str, question: str) -> str:
        code = cli_main(["ask", "--session", session_id, "--db", db, "--persona", str(persona), question])
        out = capsys.readouterr().out
        assert code == 0, out
        return out

    assert run("A", "A asks one") == "First answer for A.\n"
    assert run("A", "A asks two") == "Second answer for A.\n"
    assert run("B", "B asks one") == "First answer for B.\n"
    assert run("A", "A asks three") == "Third answer for A.\n"
    bodies = [request.body for request in openai_server.requests]
    system = {"role": "system", "content": "You are Remote Ada."}
    assert bodies[1]["messages"] == [system, {"role": "user", "content": "A asks one"},
                                     {"role": "assistant", "content": "First answer for A."},
                                     {"role": "user", "content": "A asks two"}]
    assert bodies[2]["messages"] == [system, {"role": "user", "content": "B asks one"}]
    assert bodies[3]["messages"] == [system, {"role": "user", "content": "A asks one"},
                                     {"role": "assistant", "content": "First answer for A."},
                                     {"role": "user", "content": "A asks two"},
                                     {"role": "assistant", "content": "Second answer for A."},
                                     {"role": "user", "content": "A asks three"}]
    assert [body["user"] for body in bodies] == ["A", "A", "B", "A"]
    assert [r.header("X-Conversation-Id") for r in openai_server.requests] == ["A", "A", "B", "A"]


def test_cli_session_ids_that_are_not_utf8_stay_distinct(tmp_path, monkeypatch, capsys, openai_server,
                                                         keep_log_level):
    """``--session`` given as bytes that are not UTF-8 (Python passes them on as lone surrogates)."""
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    persona = tmp_path / "remote-ada.yaml"
    persona.write_text(PERSONA_FILE % openai_server.url)
    db = str(tmp_path / "shared.db")
    openai_server.script(answer("One."), answer("Two."), answer("Three."))
    for session_id, question in (("s\udcff", "first \udcff"), ("s\udcfe", "second"), ("s\udcff", "third")):
        assert cli_main(["ask", "--session", session_id, "--db", db, "--persona", str(persona), question]) == 0
    assert capsys.readouterr().out == "One.\nTwo.\nThree.\n"
    bodies = [request.body for request in openai_server.requests]
    system = {"role": "system", "content": "You are Remote Ada."}
    assert bodies[1]["messages"] == [system, {"role": "user", "content": "second"}]
    assert bodies[2]["messages"] == [system, {"role": "user", "content": "first \ufffd"},
                                     {"role": "assistant", "content": "One."},
                                     {"role": "user", "content": "third"}]
    assert [body["user"] for body in bodies] == ["s\\xff", "s\\xfe", "s\\xff"]
