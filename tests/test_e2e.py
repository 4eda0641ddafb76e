"""End to end on the real pipeline: ovos-messagebus + ovos-core subprocesses with the skill installed,
a real HTTP server playing the remote model, and a real translation plugin."""
from __future__ import annotations

import time

import pytest
from ovos_bus_client.message import Message

from ovos_skill_persona_fallback.ovos_stack import SKILL_ID, OVOSStack, session_id_of
from conftest import PLUGIN_SITE, PLUGINS
from openai_server import EndlessStream, SSEStream, chat_chunk, sse, remote  # noqa: F401 - a fixture

# in the full run, not the quick lane (-m "not slow"): real ovos-messagebus + ovos-core processes
pytestmark = pytest.mark.slow

FALLBACK = f"ovos.skills.fallback.{SKILL_ID}"


def ours(messages):
    """The fallback protocol messages and speech of one utterance, in bus order."""
    wanted = {"ovos.skills.fallback.ping", "ovos.skills.fallback.pong", f"{FALLBACK}.request",
              f"{FALLBACK}.start", "speak", f"{FALLBACK}.response", "ovos.utterance.handled"}
    kept = []
    for message in messages:
        if message.msg_type not in wanted:
            continue
        if message.msg_type == "ovos.skills.fallback.pong" and message.data.get("skill_id") != SKILL_ID:
            continue
        kept.append(message)
    return kept


@pytest.fixture(scope="module")
def stack(tmp_path_factory, remote):
    personas = tmp_path_factory.mktemp("personas")
    (personas / "remote.yaml").write_text(
        "name: Remote\nlang: en-us\nsystem_prompt: You are {name}.\nsolvers: [openai, failure]\n"
        f"openai: {{api_url: '{remote.url}/v1', model: remote, timeout: {{read: 10, first_chunk: 10, total: 60}}}}\n")
    config = {"language": dict(PLUGINS)}
    with OVOSStack(config=config, skill_settings={"persona_dirs": [str(personas)], "thinking_delay": 30},
                   env={"PYTHONPATH": str(PLUGIN_SITE)}, timeout=90) as running:
        yield running


def test_default_persona_answers_through_the_whole_fallback_protocol(stack):
    messages = stack.ask("how are you", session_id="e2e-hello", timeout=30)
    kept = ours(messages)
    types = [m.msg_type for m in kept]
    assert types == ["ovos.skills.fallback.ping", "ovos.skills.fallback.pong", f"{FALLBACK}.request",
                     f"{FALLBACK}.start", "speak", "speak", f"{FALLBACK}.response", "ovos.utterance.handled"]
    assert kept[1].data == {"skill_id": SKILL_ID, "can_handle": True}
    assert stack.spoken(messages) == ["I'm doing great, thanks for asking!", "How about you?"]
    assert kept[-2].data == {"result": True, "fallback_handler": "PersonaFallbackSkill.handle_fallback"}
    assert {session_id_of(m) for m in kept} == {"e2e-hello"}


def _switch(stack, session_id):
    reply = stack.wait_for("persona.active.set.response", timeout=10, since=_emit(
        stack, Message("persona.active.set", {"persona": "Remote"}, {"session": {"session_id": session_id}})))
    assert reply is not None and reply.data["persona"] == "Remote"


def _emit(stack, message):
    mark = stack.mark()
    stack.emit(message)
    return mark


def test_stop_cuts_one_session_while_the_other_completes(stack, remote):
    endless = EndlessStream(interval=0.05, token="The story goes on. ")
    finite = SSEStream(sse(*(chat_chunk(f"Part {n}. ") for n in range(1, 6))), pieces=None, interval=0.0)
    remote.script(endless, finite)
    for session_id in ("e2e-long", "e2e-short"):
        _switch(stack, session_id)
    mark = stack.mark()
    stack.emit(Message("recognizer_loop:utterance", {"utterances": ["tell me a long story"], "lang": "en-us"},
                       {"session": {"session_id": "e2e-long", "lang": "en-us"}}))
    first = stack.wait_for("speak", lambda m: session_id_of(m) == "e2e-long", timeout=20, since=mark)
    assert first is not None and first.data["utterance"] == "The story goes on."
    short = stack.ask("say something short", session_id="e2e-short", timeout=30)
    assert stack.spoken(short) == ["Part 1.", "Part 2.", "Part 3.", "Part 4.", "Part 5."]
    stop_mark = stack.mark()
    stopped_at = time.monotonic()
    stack.emit(Message("recognizer_loop:utterance", {"utterances": ["stop"], "lang": "en-us"},
                       {"session": {"session_id": "e2e-long", "lang": "en-us"}}))
    handled = stack.wait_for(f"{FALLBACK}.response", lambda m: session_id_of(m) == "e2e-long",
                             timeout=10, since=mark)
    assert handled is not None, "the long answer never ended"
    assert endless.disconnected.wait(5), "the HTTP stream to the model was not closed"
    assert endless.disconnected_at - stopped_at < 2.0
    sent = endless.tokens_sent
    time.sleep(0.3)
    assert endless.tokens_sent == sent
    after = [m for m in stack.messages_since(stop_mark) if m.msg_type == "speak"
             and session_id_of(m) == "e2e-long"]
    assert len(after) <= 2, "speech went on after stop"


def test_portuguese_session_gets_portuguese_answer_from_english_model(stack, remote):
    remote.script(SSEStream(sse(chat_chunk("The capital of France is Paris. "),
                                chat_chunk("It is a lovely city.")), interval=0.0))
    _switch(stack, "e2e-pt")
    before = len(remote.requests)
    messages = stack.ask("Qual é a capital de França?", session_id="e2e-pt", lang="pt-PT", timeout=30)
    assert stack.spoken(messages) == ["A capital de França é Paris.", "É uma cidade encantadora."]
    speaks = [m for m in messages if m.msg_type == "speak"]
    assert {m.data["lang"] for m in speaks} == {"pt-PT"}
    [request] = remote.requests[before:]
    assert request.body["messages"] == [{"role": "system", "content": "You are Remote."},
                                        {"role": "user", "content": "What is the capital of France?"}]
    assert request.body["user"] == "e2e-pt"
