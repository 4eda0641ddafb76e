"""Client tools over the server (OpenAI semantics), driven by the official ``openai`` SDK: the
client's ``tools`` reach the persona's model, its calls come back to the client unrun (whole and
streamed), and the client's ``tool`` results reach the model in the next request. The persona's
upstream is the loopback OpenAI server, scripted to ask for calls."""
from __future__ import annotations

import json

import pytest

from openai_server import JSONReply, SSEStream, chat_chunk, openai_server, sse  # noqa: F401
from server_fixtures import SYSTEM_PROMPT, echo_persona, serve  # noqa: F401
from ovos_skill_persona_fallback.persona import Persona
from ovos_skill_persona_fallback.tools import ToolSettings, ToolSpec

openai = pytest.importorskip("openai")

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "The weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
CLOCK = {"type": "function", "function": {"name": "get_time", "description": "The time now",
                                          "parameters": {"type": "object", "properties": {}}}}


def upstream_call_reply(*calls, content=None) -> JSONReply:
    """A whole upstream reply asking for ``calls`` ((id, name, arguments) triples)."""
    return JSONReply({"id": "up", "object": "chat.completion", "created": 0, "model": "fake", "choices": [
        {"index": 0, "finish_reason": "tool_calls", "message": {
            "role": "assistant", "content": content, "tool_calls": [
                {"id": cid, "type": "function", "function": {"name": name, "arguments": arguments}}
                for cid, name, arguments in calls]}}]})


def upstream_call_stream(call_id: str, name: str, arguments: str) -> SSEStream:
    """A streamed upstream reply with one call, its arguments cut in two deltas."""
    half = len(arguments) // 2
    head = {"choices": [{"index": 0, "delta": {"role": "assistant", "tool_calls": [
        {"index": 0, "id": call_id, "type": "function", "function": {"name": name, "arguments": arguments[:half]}}]}}]}
    tail = {"choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": arguments[half:]}}]}}]}
    end = {"choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]}
    return SSEStream(sse(head, tail, end), interval=0.0)


def text_stream(text: str) -> SSEStream:
    return SSEStream(sse(chat_chunk(text), chat_chunk(finish_reason="stop")), interval=0.0)


def test_a_whole_reply_hands_the_calls_to_the_client(serve, openai_server):
    served = serve(echo_persona(openai_server.url))
    openai_server.script(upstream_call_reply(("up_1", "get_weather", '{"city": "Oslo"}'),
                                             ("up_2", "get_time", "{}")))
    reply = served.openai().chat.completions.create(
        model="Echo", messages=[{"role": "user", "content": "Weather and time in Oslo?"}], tools=[WEATHER, CLOCK])
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    assert [(c.id, c.type, c.function.name, c.function.arguments) for c in choice.message.tool_calls] == [
        ("up_1", "function", "get_weather", '{"city": "Oslo"}'), ("up_2", "function", "get_time", "{}")]
    [sent] = openai_server.requests
    assert sent.body["tools"] == [WEATHER, CLOCK]
    assert sent.body["tool_choice"] == "auto"
    assert [(m["role"], m["content"]) for m in sent.body["messages"]] == [
        ("system", SYSTEM_PROMPT), ("user", "Weather and time in Oslo?")]


def test_a_streamed_reply_sends_call_deltas_then_the_tool_calls_finish(serve, openai_server):
    served = serve(echo_persona(openai_server.url))
    openai_server.script(upstream_call_stream("up_7", "get_weather", '{"city": "Lima"}'))
    chunks = list(served.openai().chat.completions.create(
        model="Echo", messages=[{"role": "user", "content": "Weather in Lima?"}], tools=[WEATHER], stream=True))
    deltas = [call for c in chunks if c.choices and c.choices[0].delta.tool_calls
              for call in c.choices[0].delta.tool_calls]
    assert [(d.index, d.id, d.type, d.function.name, d.function.arguments) for d in deltas] == [
        (0, "up_7", "function", "get_weather", '{"city": "Lima"}')]
    finishing = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishing == ["tool_calls"]
    assert not any(c.choices[0].delta.content for c in chunks if c.choices)


def test_the_clients_results_reach_the_model_and_it_answers(serve, openai_server):
    served = serve(echo_persona(openai_server.url))
    openai_server.script(text_stream("It is 14 degrees in Oslo."))
    messages = [
        {"role": "user", "content": "Weather in Oslo?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "up_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'}}]},
        {"role": "tool", "tool_call_id": "up_1", "content": '{"celsius": 14}'}]
    reply = served.openai().chat.completions.create(model="Echo", messages=messages, tools=[WEATHER])
    assert reply.choices[0].message.content == "It is 14 degrees in Oslo."
    assert reply.choices[0].finish_reason == "stop" and not reply.choices[0].message.tool_calls
    sent = openai_server.requests[0].body["messages"]
    assert sent[-3:] == [
        {"role": "user", "content": "Weather in Oslo?"},
        {"role": "assistant", "content": "", "tool_calls": [
            {"id": "up_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'}}]},
        {"role": "tool", "content": '{"celsius": 14}', "tool_call_id": "up_1"}]


def test_tool_choice_none_named_and_required(serve, openai_server):
    served = serve(echo_persona(openai_server.url))
    client = served.openai()
    openai_server.script(text_stream("No tools today."))
    reply = client.chat.completions.create(model="Echo", messages=[{"role": "user", "content": "hi"}],
                                           tools=[WEATHER, CLOCK], tool_choice="none")
    assert reply.choices[0].message.content == "No tools today."
    assert "tools" not in openai_server.requests[0].body
    openai_server.script(upstream_call_reply(("up_3", "get_time", "{}")))
    client.chat.completions.create(model="Echo", messages=[{"role": "user", "content": "time?"}],
                                   tools=[WEATHER, CLOCK],
                                   tool_choice={"type": "function", "function": {"name": "get_time"}})
    # a named function is offered alone, and the model is told it must call
    assert openai_server.requests[1].body["tools"] == [CLOCK]
    assert openai_server.requests[1].body["tool_choice"] == "required"
    openai_server.script(upstream_call_reply(("up_4", "get_weather", '{"city": "Oslo"}')))
    reply = client.chat.completions.create(model="Echo", messages=[{"role": "user", "content": "hm"}],
                                           tools=[WEATHER, CLOCK], tool_choice="required")
    assert reply.choices[0].message.tool_calls[0].id == "up_4"
    assert openai_server.requests[2].body["tools"] == [WEATHER, CLOCK]
    assert openai_server.requests[2].body["tool_choice"] == "required"


@pytest.mark.parametrize("messages,tools,tool_choice,fragment", [
    # (what the client sent, what the 400 says)
    ([{"role": "user", "content": "hi"}], [WEATHER], {"type": "function", "function": {"name": "nope"}},
     "tool_choice names 'nope'"),
    ([{"role": "user", "content": "hi"}, {"role": "tool", "content": "x"}], [WEATHER], None,
     "a tool message needs its tool_call_id"),
    ([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}], [WEATHER], None,
     "must be the user's, or a tool result"),
    ([{"role": "user", "content": "hi"}], [{"type": "function", "function": {"name": "bad name!"}}], None,
     "tools"),
])
def test_bad_tool_requests_are_refused_with_a_reason(serve, openai_server, messages, tools, tool_choice, fragment):
    served = serve(echo_persona(openai_server.url))
    extra = {"tool_choice": tool_choice} if tool_choice is not None else {}
    with pytest.raises(openai.BadRequestError) as caught:
        served.openai().chat.completions.create(model="Echo", messages=messages, tools=tools, **extra)
    assert fragment in str(caught.value)
    assert openai_server.requests == []


def test_a_persona_that_cannot_call_tools_answers_with_text(serve, openai_server):
    served = serve(echo_persona(openai_server.url, mode="completions"))
    openai_server.script(SSEStream(sse({"id": "c", "object": "text_completion", "created": 0, "model": "fake",
                                        "choices": [{"index": 0, "text": "Plain words.", "finish_reason": "stop"}]})))
    reply = served.openai().chat.completions.create(
        model="Echo", messages=[{"role": "user", "content": "Weather in Oslo?"},
                                {"role": "assistant", "content": None, "tool_calls": [
                                    {"id": "c1", "type": "function",
                                     "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'}}]},
                                {"role": "tool", "tool_call_id": "c1", "content": "sunny"}],
        tools=[WEATHER])
    assert reply.choices[0].message.content == "Plain words." and reply.choices[0].finish_reason == "stop"
    body = openai_server.requests[0].body
    assert "tools" not in body
    # the results were written into the question for a solver that takes no tool messages
    assert "get_weather({\"city\": \"Oslo\"}): sunny" in body["prompt"]


def test_the_personas_own_tools_never_run_from_http(serve, openai_server):
    spec = ToolSpec("lights_off", "bus", "Turn the lights off", {"type": "object", "properties": {}},
                    message="lights.off")
    base = echo_persona(openai_server.url)
    persona = Persona(name=base.name, solvers=base.solvers, system_prompt=base.system_prompt,
                      solver_configs=base.solver_configs, tools=ToolSettings((spec,), 2))
    served = serve(persona)
    ran = []
    served.engine.tool_executor = type("Recorder", (), {"run": lambda *a: ran.append(a), "confirm": lambda *a: True,
                                                        "discover": lambda *a: []})()
    openai_server.script(upstream_call_reply(("up_9", "get_weather", '{"city": "Rome"}')))
    reply = served.openai().chat.completions.create(
        model="Echo", messages=[{"role": "user", "content": "Weather in Rome?"}], tools=[WEATHER])
    assert [c.function.name for c in reply.choices[0].message.tool_calls] == ["get_weather"]
    assert openai_server.requests[0].body["tools"] == [WEATHER], "only the client's tools are offered"
    assert ran == []
    # without client tools, the persona's tools are not offered either
    openai_server.script(text_stream("Done."))
    served.openai().chat.completions.create(model="Echo", messages=[{"role": "user", "content": "lights off"}])
    assert "tools" not in openai_server.requests[1].body and ran == []
    assert json.dumps(openai_server.requests[1].body).count("lights_off") == 0
