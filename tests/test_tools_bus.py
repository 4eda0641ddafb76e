"""Tools end to end on the real messagebus + ovos-core: a loopback OpenAI-compatible server plays
the model and returns scripted (streamed) tool calls; a second bus client answers the bus tool and
the OVOS-TOOLS-1 toolbox; a real skill loaded in core answers the assistant tool."""
from __future__ import annotations

import json
import sys
import threading
from typing import Any, Dict, List

import pytest
from ovos_bus_client.message import Message

from conftest import PLUGIN_SITE
from openai_server import SSEStream, chat_chunk, sse, remote  # noqa: F401 - a fixture
from ovos_skill_persona_fallback.ovos_stack import SKILL_ID, OVOSStack, session_id_of

pytestmark = pytest.mark.slow

FALLBACK = f"ovos.skills.fallback.{SKILL_ID}"
TIMER_SKILL = "persona-test-timer.openpersona"
PERSONA = """\
name: Toolsmith
lang: en-us
system_prompt: You are {name}.
solvers: [openai, failure]
openai: {api_url: '%s/v1', model: tool-model, timeout: {read: 10, first_chunk: 30, total: 60}}
max_tool_rounds: 2
tools:
  - name: weather
    description: The weather now in a city
    parameters: {type: object, properties: {city: {type: string}}, required: [city]}
    message: test.weather.query
    timeout: 3
  - name: silent
    description: A tool nobody answers
    message: test.silent.query
    timeout: 1
  - name: slow
    description: A tool that answers late
    message: test.slow.query
    timeout: 30
  - kind: assistant
    timeout: 15
  - kind: toolbox
    toolbox: testbox
    timeout: 3
"""


def tool_call_stream(name: str, arguments: Dict[str, Any], call_id: str = "call_1") -> SSEStream:
    """A streamed reply of one tool call, its arguments cut in two deltas as real servers send them."""
    text = json.dumps(arguments)
    half = len(text) // 2
    head = {"choices": [{"index": 0, "delta": {"role": "assistant", "tool_calls": [
        {"index": 0, "id": call_id, "type": "function", "function": {"name": name, "arguments": text[:half]}}]}}]}
    tail = {"choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": text[half:]}}]},
                         "finish_reason": None}]}
    end = {"choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]}
    return SSEStream(sse(head, tail, end), interval=0.0)


def text_stream(text: str) -> SSEStream:
    return SSEStream(sse(chat_chunk(text), chat_chunk(finish_reason="stop")), interval=0.0)


@pytest.fixture(scope="module")
def stack(tmp_path_factory, remote):
    personas = tmp_path_factory.mktemp("personas")
    (personas / "toolsmith.yaml").write_text(PERSONA % remote.url)
    settings = {"persona_dirs": [str(personas)], "default_persona": "Toolsmith", "thinking_delay": 30}
    sys.path.insert(0, str(PLUGIN_SITE))  # the harness checks the test skill's entry point here too
    try:
        with OVOSStack(skill_settings=settings, skills=(SKILL_ID, TIMER_SKILL),
                       env={"PYTHONPATH": str(PLUGIN_SITE)}, timeout=90) as running:
            assert TIMER_SKILL in running.loaded_skills, running.loaded_skills
            yield running
    finally:
        sys.path.remove(str(PLUGIN_SITE))


@pytest.fixture
def answering(stack):
    """The second bus client: answers the bus tool and the toolbox like a real component would."""
    client = stack.client
    seen: List[Message] = []

    def weather(message: Message) -> None:
        seen.append(message)
        client.emit(message.response({"city": message.data.get("city"), "sky": "sunny", "celsius": 21}))

    def discover(message: Message) -> None:
        client.emit(message.response({"toolbox_id": "testbox", "tools": [{
            "name": "define_word", "description": "Define a word", "toolbox_id": "testbox",
            "argument_schema": {"type": "object", "properties": {"word": {"type": "string"}}, "required": ["word"]},
            "output_schema": {"type": "object"}}]}))
        client.emit(message.response({"toolbox_id": "otherbox", "tools": []}))

    def call(message: Message) -> None:
        seen.append(message)
        if message.data.get("toolbox_id") == "testbox":
            word = message.data.get("kwargs", {}).get("word")
            client.emit(message.response({"toolbox_id": "testbox", "result": {"definition": f"{word}: a fine word"}}))

    handlers = {"test.weather.query": weather, "ovos.persona.tools.discover": discover,
                "ovos.persona.tools.call": call}
    for msg_type, handler in handlers.items():
        client.on(msg_type, handler)
    yield seen
    for msg_type, handler in handlers.items():
        client.remove(msg_type, handler)


def ask(stack, utterance: str, session_id: str, timeout: float = 60) -> List[Message]:
    """Send an utterance; return its session's messages until our fallback's ``.response``.

    (The assistant tool's own utterance ends with an ``ovos.utterance.handled`` of the same session,
    so ``OVOSStack.ask`` would stop too early.)
    """
    mark = stack.mark()
    stack.emit(Message("recognizer_loop:utterance", {"utterances": [utterance], "lang": "en-us"},
                       {"session": {"session_id": session_id, "lang": "en-us"}, "source": "test",
                        "destination": ["skills"]}))
    done = stack.wait_for(f"{FALLBACK}.response", lambda m: session_id_of(m) == session_id, timeout=timeout,
                          since=mark)
    assert done is not None, [m.msg_type for m in stack.messages_since(mark)]
    return [m for m in stack.messages_since(mark) if session_id_of(m) == session_id]


def spoken(messages: List[Message]) -> List[str]:
    return [m.data["utterance"] for m in messages if m.msg_type == "speak"]


def test_bus_tool_is_answered_by_another_client(stack, remote, answering):
    remote.script(tool_call_stream("weather", {"city": "Lisbon"}), text_stream("It is sunny in Lisbon."))
    messages = ask(stack, "what is the weather in lisbon", "tools-bus")
    assert spoken(messages) == ["It is sunny in Lisbon."]
    [query] = [m for m in answering if m.msg_type == "test.weather.query"]
    assert query.data == {"city": "Lisbon"} and session_id_of(query) == "tools-bus"
    first, second = remote.requests[-2:]
    assert [tool["function"]["name"] for tool in first.body["tools"]] == ["weather", "silent", "slow",
                                                                          "assistant", "define_word"]
    assert first.body["tool_choice"] == "auto"
    assert second.body["messages"][-2]["tool_calls"][0]["function"] == {
        "name": "weather", "arguments": json.dumps({"city": "Lisbon"})}
    assert second.body["messages"][-1] == {"role": "tool", "tool_call_id": "call_1",
                                           "content": json.dumps({"city": "Lisbon", "sky": "sunny", "celsius": 21})}


def test_assistant_tool_reaches_a_real_skill_and_does_not_loop(stack, remote, answering):
    remote.script(tool_call_stream("assistant", {"command": "set a timer for 5 minutes"}),
                  text_stream("Done, your timer runs."))
    messages = ask(stack, "remind me in five minutes", "tools-assistant")
    assert spoken(messages) == ["Timer set for 5 minutes.", "Done, your timer runs."]
    result = json.loads(remote.requests[-1].body["messages"][-1]["content"])
    assert result == {"handled": True, "spoken": ["Timer set for 5 minutes."]}
    requests = [m for m in messages if m.msg_type == f"{FALLBACK}.request"]
    assert len(requests) == 1, "the tool's own utterance never reached our fallback's handler"


def test_toolbox_tools_are_discovered_and_called(stack, remote, answering):
    remote.script(tool_call_stream("define_word", {"word": "serendipity"}), text_stream("It means luck."))
    messages = ask(stack, "define serendipity", "tools-box")
    assert spoken(messages) == ["It means luck."]
    [called] = [m for m in answering if m.msg_type == "ovos.persona.tools.call"]
    assert called.data == {"toolbox_id": "testbox", "name": "define_word", "kwargs": {"word": "serendipity"}}
    assert json.loads(remote.requests[-1].body["messages"][-1]["content"]) == {
        "definition": "serendipity: a fine word"}


@pytest.mark.parametrize("name,arguments,told", [
    # (tool the model calls, its arguments, what the model is told)
    ("weather", {"town": "Lisbon"}, "error: invalid arguments: 'city' is a required property"),
    ("launch_rockets", {}, "error: there is no tool called 'launch_rockets'; the tools are: assistant, "
                           "define_word, silent, slow, weather"),
    ("silent", {}, "error: test.silent.query got no reply within 1 s"),
])
def test_bad_calls_and_silent_tools_end_in_a_spoken_answer(stack, remote, answering, name, arguments, told):
    before = len(answering)
    remote.script(tool_call_stream(name, arguments), text_stream("I could not do that."))
    messages = ask(stack, f"please use {name}", f"tools-bad-{name}")
    assert spoken(messages) == ["I could not do that."]
    assert remote.requests[-1].body["messages"][-1]["content"] == told
    assert len(answering) == before, "a bad call never reaches the bus"


def test_a_model_looping_past_max_rounds_still_answers(stack, remote, answering):
    remote.script(tool_call_stream("weather", {"city": "Rome"}, "call_a"),
                  tool_call_stream("weather", {"city": "Rome"}, "call_b"),
                  text_stream("Rome is sunny."))
    messages = ask(stack, "weather in rome, again and again", "tools-loop")
    assert spoken(messages) == ["Rome is sunny."]
    final = remote.requests[-1].body
    assert "tools" not in final and final["messages"][-1]["role"] == "user"
    assert "Results of the tools you used" in final["messages"][-1]["content"]


def test_stop_during_a_tool_call_ends_cleanly(stack, remote):
    remote.script(tool_call_stream("slow", {}), text_stream("never said"))
    mark = stack.mark()
    result: Dict[str, Any] = {}
    thread = threading.Thread(target=lambda: result.setdefault("messages", ask(stack, "call the slow one",
                                                                               "tools-stop")))
    thread.start()
    assert stack.wait_for("test.slow.query", timeout=20, since=mark) is not None
    asked = len(remote.requests)
    stack.emit(Message("mycroft.stop", {}, {"session": {"session_id": "tools-stop"}}))
    thread.join(30)
    assert not thread.is_alive()
    assert spoken(result["messages"]) == []
    assert len(remote.requests) == asked, "after a stop the model is not asked again"
    assert remote.pending == 1  # the scripted answer was never fetched
    remote.clear_script()  # leave nothing queued for the next test
