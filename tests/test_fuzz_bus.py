"""Property-based fuzzing of every bus handler the skill registers.

Thousands of malformed messages (missing keys, wrong types, empty and 1 MB utterances, odd
language tags, control characters, lone surrogates, unknown personas, broken session context)
go to the fallback ping and request, the five intents, the ``persona.*`` bus API and stop. Each
must get a correct answer, a spoken line or an ``.error`` reply with a reason, or (when the bus
client itself cannot parse it) never reach a handler at all. The test fails when any handler
raises (every handler is wrapped to record exceptions, and error records in the log count too),
when a thread dies, or when the skill no longer answers a normal question exactly.

Two ways in, because FakeBus and the real client differ:

- **wire**: the message is serialised to JSON (or given as raw JSON text, invalid escapes and
  all) and handed to the real ``MessageBusClient.on_message``, which parses it and its session
  before dispatching. What that code cannot parse is dropped there, as on a real bus.
- **direct**: the ``Message`` object goes to the handlers as FakeBus passes it, malformed
  session included. ovos-workshop's own wrappers for the fallback request and for stop parse the
  session themselves before any skill code runs (and the real client never delivers such a
  message), so direct delivery with a session ``SessionManager`` refuses skips those two and
  drives the skill's own code through the other routes (ping, the fallback handler's own route,
  intents, bus API, stop ping).
"""
from __future__ import annotations

import copy
import functools
import json
import logging
import re
import threading
import time
import traceback
from typing import Any, Dict, List, Optional

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from ovos_bus_client.client import MessageBusClient
from ovos_bus_client.message import Message
from ovos_bus_client.session import Session, SessionManager
from ovos_utils.fakebus import FakeBus

from conftest import ScriptedSolver, SolverBox, make_persona
from ovos_skill_persona_fallback import SKILL_ID, PersonaFallbackSkill
from ovos_skill_persona_fallback.engine import PersonaEngine
from ovos_skill_persona_fallback.languages import dialog_lines, ovos_lang
from ovos_skill_persona_fallback.memory import ConversationMemory
from ovos_skill_persona_fallback.solvers.base import ChatMessage, Role

pytestmark = pytest.mark.slow

REQUEST = f"ovos.skills.fallback.{SKILL_ID}.request"
#: register_fallback also puts the handler itself on the bus under this type, unwrapped
FALLBACK_ROUTE = f"ovos.skills.fallback.{SKILL_ID}"
INTENTS = {
    "switch_persona": "switched",
    "which_persona": "current_persona",
    "list_personas": "list_personas",
    "forget_conversation": "forgot",
    "release_persona": "released",
}
BUS_API = ("persona.ask", "persona.list", "persona.context.inject", "persona.context.clear",
           "persona.conversation.end", "persona.active.set")
STOPS = ("mycroft.stop", f"{SKILL_ID}.stop")
STOP_PING = f"{SKILL_ID}.stop.ping"
#: every method of the skill (and of its ovos-workshop bases) that a bus message reaches
HANDLERS = (
    "handle_fallback", "can_answer", "can_stop", "stop_session", "stop",
    "handle_switch_persona", "handle_which_persona", "handle_list_personas", "handle_forget",
    "handle_release_persona", "handle_ask", "handle_list", "handle_context_inject",
    "handle_context_clear", "handle_conversation_end", "handle_active_set",
    "_handle_fallback_ack", "_handle_fallback_request", "_handle_session_stop", "_handle_stop_ack",
)
ANSWER = "Fine."
SETTLE_S = 5.0

# ------------------------------------------------------------------ strategies

ONE_MB = 1 << 20
ODD_TEXTS = [
    "", " ", "\t\n\r", "\x00", "\x00hello\x00", "\x07\x08\x1b[31mred\x1b[0m", "\u200b", "\u202eevil",
    "a\ud800b", "\udfff", "\ud83d\ude00", "\ud83d", "\ufffe\uffff", "\U0010ffff",
    "hello", "what is the meaning of life?", "Ada", "bob", "BOB", "Zorglub", "{persona}", "{name}",
    "%s %d %n", "../..", "<speak>hi</speak>", "' OR 1=1 --", "null", "[]",
    "x" * ONE_MB, "word " * (ONE_MB // 5), "\ud800" * 1000,
]
ODD_LANGS = ["", "xx-YY-ZZ-123", "../..", "en_US", 12, "auto", "AUTO ", "zh-Hant-TW", None, "en-us",
             "pt-PT", "EN", "e", "x" * 40, [], {}, "de-DE\x00", "fr\ud800", "en-US-x-twain", "i-klingon",
             "und", "qaa", True, 1.5]
# any character at all, lone surrogates and control characters included
CHARS = st.characters(min_codepoint=0, max_codepoint=0x10FFFF, exclude_categories=())
TEXTS = st.one_of(st.text(CHARS, max_size=40), st.sampled_from(ODD_TEXTS))
SCALARS = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), TEXTS)
JSON = st.recursive(SCALARS, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                     st.dictionaries(st.text(CHARS, max_size=8), inner,
                                                                     max_size=3)),
                    max_leaves=6)
LANGS = st.one_of(st.sampled_from(ODD_LANGS), JSON)
UTTERANCES = st.one_of(
    st.lists(TEXTS, max_size=3),
    st.lists(JSON, max_size=3),
    st.lists(st.lists(TEXTS, max_size=2), max_size=2),  # nested lists
    JSON,
)
VALUES = st.one_of(TEXTS, JSON)


def keyed(**keys) -> st.SearchStrategy:
    """Data holding any subset of the meaningful keys with any values, or any object at all."""
    return st.one_of(st.fixed_dictionaries({}, optional=keys), st.dictionaries(st.text(CHARS, max_size=8),
                                                                                JSON, max_size=4))


NAMES = st.one_of(st.sampled_from(["Ada", "ada", " Bob ", "bobb", "Zorglub", "", "  ", "\ud800"]), VALUES)
DATA = {
    "ping": keyed(utterances=UTTERANCES, lang=LANGS),
    "request": keyed(utterances=UTTERANCES, lang=LANGS),
    "intent": keyed(persona=NAMES, utterance=VALUES, lang=LANGS),
    "persona.ask": keyed(utterance=VALUES, persona=NAMES, lang=LANGS),
    "persona.list": keyed(lang=LANGS),
    "persona.context.inject": keyed(context=VALUES, lang=LANGS),
    "persona.context.clear": keyed(lang=LANGS),
    "persona.conversation.end": keyed(lang=LANGS),
    "persona.active.set": keyed(persona=NAMES, lang=LANGS),
    "stop": keyed(lang=LANGS, skill_id=VALUES),
}
MALFORMED_SESSIONS = ["abc", None, [], 42, {"session_id": None}, {"session_id": {"a": 1}},
                      {"session_id": ["x"]}, {"session_id": 42}, {"session_id": "fz", "lang": 42},
                      {"session_id": "fz", "lang": "../.."}, {"session_id": "fz", "lang": ""},
                      {"session_id": "fz-\ud800"}, {"session_id": ""}, {"session_id": "fz", "context": 5},
                      {"session_id": "fz", "location_preferences": "nowhere"},
                      {"session_id": "fz", "location_preferences": {"city": "Lisbon"}},
                      {"session_id": "fz", "active_skills": "garbage"}, {}]
VALID_SESSIONS = st.builds(lambda sid, lang: Session(sid, lang=lang).serialize(),
                          st.sampled_from(["fz-a", "fz-b", "default", "fz-\x00", "fz-é"]),
                          st.sampled_from(["en-us", "pt-pt", "de-de", "fr-fr", "zh-Hant-TW"]))
SESSIONS = st.one_of(st.sampled_from(MALFORMED_SESSIONS), VALID_SESSIONS, JSON)
CONTEXTS = st.one_of(
    st.none(),                                         # no context: FakeBus adds the default session
    st.builds(lambda s: {"session": s}, st.sampled_from(MALFORMED_SESSIONS)),
    st.builds(lambda s: {"session": s}, VALID_SESSIONS),
    st.builds(lambda s, extra: {"session": s, **extra}, SESSIONS,
              st.fixed_dictionaries({}, optional={"speaker_name": VALUES, "user_name": VALUES,
                                                  "lang": LANGS, "source": VALUES, "destination": VALUES})),
    st.dictionaries(st.text(CHARS, max_size=8), JSON, max_size=3),   # a foreign context
)
#: raw JSON frames: broken JSON, invalid escapes, lone surrogate escapes, wrong shapes
RAW_FRAMES = st.one_of(
    st.sampled_from([
        "", "{", "null", "[]", "42", '"persona.ask"', "{}", '{"type": null}', '{"type": 42, "data": []}',
        '{"type": "persona.ask", "data": {"utterance": "\\ud800"}}',
        '{"type": "persona.ask", "data": {"utterance": "\\udc00\\ud800x"}}',
        '{"type": "persona.ask", "data": {"utterance": "\\x41"}}',
        '{"type": "persona.ask", "data": {"utterance": "\\u12"}}',
        '{"type": "persona.ask", "data": {"utterance": "\\uZZZZ"}}',
        '{"type": "persona.ask", "data": {"utterance": "a\x00b"}}',
        '{"type": "persona.ask", "data": "hello"}',
        '{"type": "persona.ask", "data": {"utterance": "hi"}, "context": "abc"}',
        '{"type": "persona.ask", "data": {"utterance": "hi"}, "context": {"session": "abc"}}',
        '{"type": "persona.ask", "data": {"utterance": "hi"}, "context": {"session": {"session_id": {}}}}',
        f'{{"type": "{REQUEST}", "data": {{"utterances": ["\\ud83d"]}}, "context": {{}}}}',
        f'{{"type": "{REQUEST}", "data": {{"utterances": "hi"}}}}',
        f'{{"type": "{SKILL_ID}:switch_persona.intent", "data": {{"persona": "\\udfff"}}}}',
        '{"type": "persona.context.inject", "data": {"context": "\\ud800\\u0000"}}',
        '{"type": "mycroft.stop", "data": {}, "context": {"session": {"session_id": "fz", "lang": 42}}}',
    ]),
    st.builds(lambda msg_type, data, ctx: json.dumps({"type": msg_type, "data": data, "context": ctx},
                                                     ensure_ascii=False),
              st.sampled_from([REQUEST, "ovos.skills.fallback.ping", *BUS_API, *STOPS]), JSON, JSON),
)


# ------------------------------------------------------------------ the skill under fuzz

class AnsweringSolver(ScriptedSolver):
    """A scripted solver that answers ``ANSWER`` whenever nothing else is queued."""

    def stream(self, messages, *, lang, cancel, conversation_id=""):
        if not self.replies:
            self.enqueue(ANSWER)
        return super().stream(messages, lang=lang, cancel=cancel, conversation_id=conversation_id)


class ClientSideBus(FakeBus):
    """FakeBus without its emit-side session parsing, which the real client does not do.

    The real ``MessageBusClient.emit`` only serialises and sends. FakeBus.emit also parses the
    session of every message emitted (``on_message``) and raises on a malformed one, inside the
    handler that emitted it; since replies forward the request's context, that would blame the
    skill for something no real bus does. Incoming parsing is done by the real client (wire).
    """

    def on_message(self, *args: Any) -> None:
        try:
            super().on_message(*args)
        except Exception:  # noqa: BLE001 - FakeBus bookkeeping only; see the class docstring
            pass


class Harness:
    """The module's skill, its bus, what it emitted, and what went wrong where."""

    def __init__(self, skill: PersonaFallbackSkill, bus: ClientSideBus, client: MessageBusClient,
                 ada: AnsweringSolver) -> None:
        self.skill, self.bus, self.client, self.ada = skill, bus, client, ada
        self.messages: List[Message] = []
        self.raised: List[str] = []          # filled by the handler wrappers
        self.thread_deaths: List[str] = []   # filled by threading.excepthook while a test runs
        self.tried = 0
        self.dropped = 0
        self.baseline_threads = threading.active_count()
        self._lock = threading.Lock()
        bus.on("message", self._record)

    def _record(self, raw: Any) -> None:
        message = Message.deserialize(raw) if isinstance(raw, str) else raw
        with self._lock:
            self.messages.append(message)

    def emitted(self) -> List[Message]:
        """What was emitted since the last ``clear``, minus the incoming message itself."""
        with self._lock:
            return list(self.messages[1:])

    def clear(self) -> None:
        with self._lock:
            self.messages.clear()

    def wait_for(self, msg_type: str, timeout: float = 10.0) -> None:
        self.wait_for_any(msg_type, timeout=timeout)

    def wait_for_any(self, *msg_types: str, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if any(m.msg_type in msg_types for m in self.messages):
                    return
            time.sleep(0.002)
        raise AssertionError(f"no {msg_types} within {timeout} s: {[m.msg_type for m in self.messages]}")

    # -- delivery

    def direct(self, message: Message) -> None:
        """FakeBus delivery: the handlers get this very object."""
        self.clear()
        self.tried += 1
        self.bus.emit(message)

    def wire(self, raw: str) -> bool:
        """Real-client delivery of a JSON frame; False when the client's own parsing dropped it."""
        self.clear()
        self.tried += 1
        try:
            self.client.on_message(raw)
        except Exception:  # noqa: BLE001 - checked below: it must come from the client, not a handler
            with self._lock:
                reached = bool(self.messages)
            assert not reached, f"a handler raised on {raw[:200]!r}: {self.raised}"
            self.dropped += 1
            return False
        return True

    # -- health

    def check_log(self, caplog: pytest.LogCaptureFixture, what: str) -> None:
        bad = [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]
        caplog.clear()
        raised, self.raised = self.raised, []
        deaths, self.thread_deaths = self.thread_deaths, []
        assert not raised, f"{what}: a handler raised:\n" + "\n".join(raised)
        assert not deaths, f"{what}: a thread died:\n" + "\n".join(deaths)
        assert not bad, f"{what}: error records: " + "\n".join(f"{r.name}: {r.getMessage()}" for r in bad)

    def settle(self) -> None:
        """Wait until every thread started for the fuzzing is gone."""
        deadline = time.monotonic() + SETTLE_S
        while threading.active_count() > self.baseline_threads and time.monotonic() < deadline:
            time.sleep(0.01)
        assert threading.active_count() <= self.baseline_threads, \
            f"threads left behind: {[t.name for t in threading.enumerate()]}"

    def finish(self, caplog: pytest.LogCaptureFixture, start: int, expected: int) -> None:
        """After a fuzz run: every example was delivered, nothing lingers or logged errors, and a
        normal question is still answered normally."""
        assert self.tried - start >= expected  # every example delivered its messages
        self.settle()
        self.check_log(caplog, "after settling")
        self.answers_normally(caplog)

    def answers_normally(self, caplog: pytest.LogCaptureFixture) -> None:
        """A plain question after the fuzzing gets exactly the scripted answer, spoken and on the bus."""
        session_id = f"after-{self.tried}"
        self.ada.enqueue("All good ", "here.")
        message = Message(REQUEST, {"utterances": ["how are you today"], "lang": "en-us"},
                          {"session": Session(session_id, lang="en-us").serialize(), "source": "audio",
                           "destination": "skills"})
        assert self.wire(message.serialize())
        self.wait_for("ovos.utterance.handled")
        spoken = [m.data["utterance"] for m in self.emitted() if m.msg_type == "speak"]
        assert spoken == ["All good here."]
        assert self.ada.calls[-1].messages == [ChatMessage(Role.USER, "how are you today")]
        self.ada.enqueue("Still ", "fine.")
        reply = Message("persona.ask", {"utterance": "and now?"}, {"session": Session(session_id).serialize()})
        self.direct(reply)
        self.wait_for_any("persona.ask.response", "persona.ask.error")
        [answer] = [m for m in self.emitted() if m.msg_type.startswith("persona.ask.")]
        assert (answer.msg_type, answer.data) == ("persona.ask.response",
                                                  {"answer": "Still fine.", "persona": "Ada", "lang": "en-US"})
        assert self.ada.calls[-1].messages == [ChatMessage(Role.USER, "how are you today"),
                                               ChatMessage(Role.ASSISTANT, "All good here."),
                                               ChatMessage(Role.USER, "and now?")]
        self.check_log(caplog, "normal question")


def _recording(harness_box: Dict[str, Harness], name: str, func):
    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except BaseException:
            harness = harness_box.get("harness")
            if harness is not None:
                harness.raised.append(f"{name}:\n{traceback.format_exc()}")
            raise
    return wrapper


@pytest.fixture(scope="module")
def harness(tmp_path_factory):
    patch = pytest.MonkeyPatch()
    home = tmp_path_factory.mktemp("fuzz")
    patch.setenv("XDG_CONFIG_HOME", str(home / "config"))
    patch.setenv("XDG_DATA_HOME", str(home / "data"))
    box: Dict[str, Harness] = {}
    for name in HANDLERS:
        patch.setattr(PersonaFallbackSkill, name, _recording(box, name, getattr(PersonaFallbackSkill, name)))
    sessions = dict(SessionManager.sessions)
    solvers = SolverBox()
    ada = solvers.solvers["scripted"] = AnsweringSolver("scripted")
    solvers.solvers["other"] = AnsweringSolver("other")
    engine = PersonaEngine(include_shipped=False, memory=ConversationMemory(str(home / "fuzz.db")),
                           solver_factory=solvers, known_solvers=None, default_persona="Ada")
    engine.add_persona(make_persona("Ada", ("scripted",)))
    engine.add_persona(make_persona("Bob", ("other",), description="The other one", lang="pt-pt"))
    bus = ClientSideBus()
    skill = PersonaFallbackSkill(bus=bus, skill_id=SKILL_ID, engine=engine)
    client = MessageBusClient()
    client.emitter = bus.ee  # the real client's parsing, dispatching to the skill's handlers
    box["harness"] = Harness(skill, bus, client, ada)
    yield box["harness"]
    skill.default_shutdown()
    engine.close()
    SessionManager.sessions.clear()
    SessionManager.sessions.update(sessions)
    patch.undo()


@pytest.fixture
def watch(harness, caplog):
    """Record thread deaths while a test runs (pytest sets its own excepthook per test)."""
    caplog.set_level(logging.DEBUG)
    previous = threading.excepthook

    def died(args):
        harness.thread_deaths.append("".join(traceback.format_exception(
            args.exc_type, args.exc_value, args.exc_traceback)))
        previous(args)

    threading.excepthook = died
    start = harness.tried
    yield harness
    threading.excepthook = previous
    print(f"\n{harness.tried - start} inputs tried, {harness.dropped} dropped by the bus client so far")


def fuzz(examples: int) -> settings:
    """Hypothesis settings for one fuzz run of ``examples`` inputs (1 MB inputs make some slow)."""
    return settings(max_examples=examples, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                           HealthCheck.data_too_large])


# ------------------------------------------------------------------ oracles

def _sendable(value: Any) -> bool:
    """True when the real client could send it: JSON text that encodes as UTF-8."""
    try:
        json.dumps(value, ensure_ascii=False).encode("utf-8")
    except (TypeError, ValueError):
        return False
    return True


def _session_ok(message: Message) -> bool:
    """True when the bus machinery can parse the message's session (the real client delivers it)."""
    try:  # the session's language defaults to the data's, so both matter
        SessionManager.get(Message("probe", copy.deepcopy(message.data), copy.deepcopy(message.context)))
    except Exception:  # noqa: BLE001 - any failure means "cannot parse"
        return False
    return True


def _can_answer(data: Any) -> bool:
    utterances = data.get("utterances") if isinstance(data, dict) else None
    return (isinstance(utterances, list) and bool(utterances) and isinstance(utterances[0], str)
            and bool(utterances[0].strip()))


def _line_of(dialog: str, lang: str, utterance: str) -> bool:
    """True when ``utterance`` is one of the dialog's lines with its placeholders filled."""
    for line in dialog_lines(lang, dialog):
        pattern = re.escape(line)
        pattern = re.sub(r"\\\{\w+\\\}", ".*", pattern)
        if re.fullmatch(pattern, utterance, flags=re.DOTALL):
            return True
    return False


def check_speak(message: Message) -> None:
    utterance, lang = message.data.get("utterance"), message.data.get("lang")
    assert isinstance(utterance, str) and utterance.strip(), message.data
    assert isinstance(lang, str) and ovos_lang(lang) == lang, lang
    assert message.data["meta"]["skill"] == SKILL_ID
    assert _sendable(message.data), f"a speak the real bus could not send: {utterance[:80]!r}"


def check_common(harness: Harness, sent: Message) -> List[Message]:
    """Checks every emitted message must pass; returns them."""
    emitted = harness.emitted()
    for message in emitted:
        assert "exception" not in message.data, message.data
        if message.msg_type == "speak":
            check_speak(message)
        if message.msg_type.endswith(".error"):
            assert message.msg_type in {f"{t}.error" for t in BUS_API}, message.msg_type
            reason = message.data.get("error")
            assert isinstance(reason, str) and reason.strip(), message.data
        if _sendable(sent.context):
            assert _sendable(message.data), f"{message.msg_type} data the real bus could not send"
        if message.msg_type == "speak" or message.msg_type.startswith(("persona.", FALLBACK_ROUTE)):
            # what the skill itself builds (the framework's own handler and pong messages aside)
            assert _sendable(message.context), f"{message.msg_type}: a context the real bus could not send"
    return emitted


def only(emitted: List[Message], *msg_types: str) -> List[Message]:
    return [m for m in emitted if m.msg_type in msg_types]


def check_ping(harness: Harness, sent: Message) -> None:
    [pong] = only(check_common(harness, sent), "ovos.skills.fallback.pong")
    assert pong.data == {"skill_id": SKILL_ID, "can_handle": _can_answer(sent.data)}


def check_request(harness: Harness, sent: Message) -> None:
    harness.wait_for("ovos.utterance.handled")
    emitted = check_common(harness, sent)
    types = [m.msg_type for m in emitted]
    assert types[0] == f"{REQUEST[:-len('.request')]}.start", types
    assert types[-2:] == [f"{FALLBACK_ROUTE}.response", "ovos.utterance.handled"], types
    expected = _can_answer(sent.data)
    assert emitted[-2].data["result"] is expected
    assert [m.data["utterance"] for m in only(emitted, "speak")] == ([ANSWER] if expected else [])


def check_fallback_route(harness: Harness, sent: Message) -> None:
    emitted = check_common(harness, sent)
    assert [m.data["utterance"] for m in only(emitted, "speak")] == ([ANSWER] if _can_answer(sent.data) else [])


def check_intent(harness: Harness, sent: Message, name: str) -> None:
    emitted = check_common(harness, sent)
    [speak] = only(emitted, "speak")
    dialog = INTENTS[name]
    if name == "switch_persona":
        persona = sent.data.get("persona")
        known = isinstance(persona, str) and harness.skill.engine.find_persona(persona.strip(), fuzzy=True)
        dialog = "switched" if known else "unknown_persona"
    if name == "release_persona" and isinstance(sent.data.get("persona"), str) and sent.data["persona"].strip():
        # "stop talking as X": released when X is the active persona, else told who is active
        dialog = speak.data["meta"]["dialog"]
        assert dialog in ("released", "not_active")
    assert speak.data["meta"]["dialog"] == dialog
    assert _line_of(dialog, speak.data["lang"], speak.data["utterance"]), speak.data
    assert "ovos.utterance.handled" in [m.msg_type for m in emitted]


def check_bus_api(harness: Harness, sent: Message) -> None:
    if sent.msg_type == "persona.ask":  # answered on a thread of the skill's own
        harness.wait_for_any("persona.ask.response", "persona.ask.error")
    emitted = check_common(harness, sent)
    msg_type, data = sent.msg_type, sent.data
    [reply] = only(emitted, f"{msg_type}.response", f"{msg_type}.error")
    assert not only(emitted, "speak"), "the bus API answers on the bus, it never speaks"
    engine = harness.skill.engine
    if msg_type == "persona.ask":
        utterance, name = data.get("utterance"), data.get("persona")
        good = (isinstance(utterance, str) and bool(utterance.strip())
                and (name is None or name == ""
                     or (isinstance(name, str) and engine.find_persona(name) is not None)))
        if good:
            assert reply.msg_type == "persona.ask.response", reply.data
            assert reply.data["answer"] == ANSWER and reply.data["persona"] in ("Ada", "Bob")
            assert ovos_lang(reply.data["lang"]) == reply.data["lang"]
        else:
            assert reply.msg_type == "persona.ask.error", reply.data
    elif msg_type == "persona.list":
        assert reply.data == {"personas": [
            {"name": "Ada", "description": "", "lang": "en-us"},
            {"name": "Bob", "description": "The other one", "lang": "pt-pt"}]}
    elif msg_type == "persona.context.inject":
        context = data.get("context")
        good = isinstance(context, str) and bool(context.strip())
        assert reply.msg_type == f"{msg_type}.{'response' if good else 'error'}", reply.data
    elif msg_type == "persona.active.set":
        name = data.get("persona")
        good = isinstance(name, str) and bool(name.strip()) and engine.find_persona(name, fuzzy=True) is not None
        assert reply.msg_type == f"{msg_type}.{'response' if good else 'error'}", reply.data
        if good:
            assert reply.data["persona"] in ("Ada", "Bob")
    else:
        assert reply.msg_type == f"{msg_type}.response" and set(reply.data) == {"session_id"}


def check_stop(harness: Harness, sent: Message) -> None:
    [reply] = only(check_common(harness, sent), f"{SKILL_ID}.stop.response")
    assert reply.data == {"skill_id": SKILL_ID, "result": False}


def check_stop_ping(harness: Harness, sent: Message) -> None:
    [pong] = only(check_common(harness, sent), "skill.stop.pong")
    assert pong.data == {"skill_id": SKILL_ID, "can_handle": False}


def build(msg_type: str, data: Any, context: Any) -> Message:
    return Message(msg_type, data if isinstance(data, dict) else {},
                   context if isinstance(context, dict) else None)


def send(harness: Harness, message: Message, how: str) -> Optional[Message]:
    """Deliver one message; return what the handlers saw (None if the bus client dropped it)."""
    if how == "direct":
        harness.direct(message)
        return message
    raw = message.serialize()
    if not harness.wire(raw):
        assert not _session_ok(Message.deserialize(raw)), "a parsable message was dropped"
        return None
    return Message.deserialize(raw)


# ------------------------------------------------------------------ the tests

def test_fallback_ping_and_request(watch, caplog):
    harness = watch
    start = harness.tried

    @fuzz(600)
    @given(data=DATA["request"], context=CONTEXTS, how=st.sampled_from(["wire", "direct"]))
    def run(data, context, how):
        ping = build("ovos.skills.fallback.ping", copy.deepcopy(data), copy.deepcopy(context))
        seen = send(harness, ping, how)
        if seen is not None:
            check_ping(harness, seen)
        harness.check_log(caplog, f"ping {seen.data if seen else ''!r:.200}")
        request = build(REQUEST, copy.deepcopy(data), copy.deepcopy(context))
        if how == "wire":
            seen = send(harness, request, "wire")
            if seen is not None:
                check_request(harness, seen)
        else:
            # the framework's request wrapper parses the session first; the handler's own route does not
            seen = send(harness, build(FALLBACK_ROUTE, request.data, request.context), "direct")
            check_fallback_route(harness, seen)
        harness.check_log(caplog, f"request {request.data!r:.200}")

    run()
    harness.finish(caplog, start, 2 * 600)


def test_intents(watch, caplog):
    harness = watch
    start = harness.tried

    @fuzz(1000)
    @given(name=st.sampled_from(sorted(INTENTS)), data=DATA["intent"], context=CONTEXTS,
           how=st.sampled_from(["wire", "direct"]))
    def run(name, data, context, how):
        seen = send(harness, build(f"{SKILL_ID}:{name}.intent", data, context), how)
        if seen is not None:
            check_intent(harness, seen, name)
        harness.check_log(caplog, f"{name} {data!r:.200}")

    run()
    harness.finish(caplog, start, 1000)


def test_bus_api(watch, caplog):
    harness = watch
    start = harness.tried

    @fuzz(1600)
    @given(choice=st.sampled_from(BUS_API).flatmap(lambda t: st.tuples(st.just(t), DATA[t])),
           context=CONTEXTS, how=st.sampled_from(["wire", "direct"]))
    def run(choice, context, how):
        msg_type, data = choice
        seen = send(harness, build(msg_type, data, context), how)
        if seen is not None:
            check_bus_api(harness, seen)
        harness.check_log(caplog, f"{msg_type} {data!r:.200}")

    run()
    harness.finish(caplog, start, 1600)


def test_stop_and_stop_ping(watch, caplog):
    harness = watch
    start = harness.tried

    @fuzz(700)
    @given(msg_type=st.sampled_from([*STOPS, STOP_PING]), data=DATA["stop"], context=CONTEXTS,
           how=st.sampled_from(["wire", "direct"]))
    def run(msg_type, data, context, how):
        message = build(msg_type, data, context)
        if how == "direct" and msg_type in STOPS and not _session_ok(message):
            how = "wire"  # ovos-workshop's stop wrapper parses the session itself (module docstring)
        seen = send(harness, message, how)
        if seen is not None:
            (check_stop_ping if msg_type == STOP_PING else check_stop)(harness, seen)
        harness.check_log(caplog, f"{msg_type} {data!r:.200}")

    run()
    harness.finish(caplog, start, 700)


def test_raw_json_frames(watch, caplog):
    harness = watch
    start = harness.tried

    @fuzz(900)
    @given(raw=RAW_FRAMES)
    def run(raw):
        if not harness.wire(raw):
            harness.check_log(caplog, f"dropped frame {raw!r:.200}")
            return
        seen = Message.deserialize(raw)
        if seen.msg_type == REQUEST:
            check_request(harness, seen)
        elif seen.msg_type == "ovos.skills.fallback.ping":
            check_ping(harness, seen)
        elif seen.msg_type in BUS_API:
            check_bus_api(harness, seen)
        elif seen.msg_type in STOPS:
            check_stop(harness, seen)
        elif isinstance(seen.msg_type, str) and seen.msg_type.endswith(".intent"):
            check_intent(harness, seen, seen.msg_type.split(":")[1][:-len(".intent")])
        harness.check_log(caplog, f"frame {raw!r:.200}")

    run()
    harness.finish(caplog, start, 900)
