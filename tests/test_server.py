"""The persona server driven by real clients (the official openai SDK, httpx, the ollama client and
this project's own openai solver) over a persona whose upstream is a loopback OpenAI server, so
each test sees exactly what reached the model and what the client got back."""
from __future__ import annotations

import json
import threading
import time

import httpx
import pytest

from openai_server import (EndlessStream, JSONReply, SSEStream, chat_chunk, chat_completion,  # noqa: F401
                           openai_server, sse)
from server_fixtures import KEY_A, KEY_B, SYSTEM_PROMPT, echo_persona, serve  # noqa: F401

from ovos_skill_persona_fallback.server.auth import KeyRing, session_id
from ovos_skill_persona_fallback.solvers import create_solver
from ovos_skill_persona_fallback.solvers.base import CancelToken, ChatMessage, Role, SolverContext

openai = pytest.importorskip("openai")
ollama = pytest.importorskip("ollama")

USAGE = {"prompt_tokens": 31, "completion_tokens": 3, "total_tokens": 34}


def pieces_stream(*texts: str, usage: bool = False) -> SSEStream:
    """An upstream stream of ``texts`` as separate chunks (and a usage chunk if asked)."""
    events = [chat_chunk(text) for text in texts] + [chat_chunk(finish_reason="stop")]
    if usage:
        events.append({"id": "x", "object": "chat.completion.chunk", "created": 0, "model": "fake",
                       "choices": [], "usage": USAGE})
    return SSEStream(sse(*events))


def session_of(key: str, conversation: str) -> str:
    return session_id(KeyRing([key]).namespace_for(key), conversation)


def sent_messages(request) -> list:
    return [(m["role"], m["content"]) for m in request.body["messages"]]


def test_sdk_whole_reply_carries_the_upstream_text_and_sends_persona_prompt_and_overrides(serve, openai_server):
    served = serve(echo_persona(openai_server.url))
    openai_server.script(pieces_stream("Hello ", "from upstream."))
    reply = served.openai().chat.completions.create(
        model="Echo", messages=[{"role": "system", "content": "The user is called Kim."},
                                {"role": "user", "content": "Say hello"}],
        temperature=0.3, top_p=0.5, max_tokens=7, seed=42, stop=["END"])
    assert reply.choices[0].message.content == "Hello from upstream."
    assert reply.choices[0].finish_reason == "stop" and reply.model == "Echo"
    body = openai_server.requests[0].body
    # the client's system message follows the persona's prompt; it never replaces it
    assert sent_messages(openai_server.requests[0]) == [
        ("system", f"{SYSTEM_PROMPT}\n\nThe user is called Kim."), ("user", "Say hello")]
    assert (body["temperature"], body["top_p"], body["max_tokens"], body["seed"], body["stop"]) == \
        (0.3, 0.5, 7, 42, ["END"])


def test_sdk_stream_passes_chunks_as_they_come_with_usage_from_upstream(serve, openai_server):
    served = serve(echo_persona(openai_server.url))
    openai_server.script(pieces_stream("Hel", "lo wor", "ld. And", " more.", usage=True))
    stream = served.openai().chat.completions.create(
        model="echo", messages=[{"role": "user", "content": "hi"}], stream=True,
        stream_options={"include_usage": True})
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    texts = [c.choices[0].delta.content for c in chunks[1:] if c.choices and c.choices[0].delta.content]
    assert texts == ["Hel", "lo wor", "ld. And", " more."]  # not regrouped into sentences
    finishing = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert [c.choices[0].finish_reason for c in finishing] == ["stop"]
    assert chunks[-1].choices == [] and chunks[-1].usage.prompt_tokens == USAGE["prompt_tokens"]
    assert chunks[-1].usage.completion_tokens == USAGE["completion_tokens"]
    assert all(c.usage is None for c in chunks[:-1])
    assert openai_server.requests[0].body["stream_options"] == {"include_usage": True}


def test_stream_ends_with_done_and_usage_is_estimated_without_counts(serve, openai_server):
    served = serve(echo_persona(openai_server.url))
    openai_server.script(pieces_stream("Twelve chars"))
    with httpx.stream("POST", f"{served.url}/v1/chat/completions", headers={"X-Api-Key": KEY_A},
                      json={"messages": [{"role": "user", "content": "q"}], "stream": True,
                            "stream_options": {"include_usage": True}}) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        events = [line[len("data: "):] for line in response.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    usage = json.loads(events[-2])["usage"]
    assert usage["completion_tokens"] == 3  # "Twelve chars": 12 characters / 4
    assert usage["total_tokens"] == usage["prompt_tokens"] + 3


def test_models_auth_and_unknown_model(serve, openai_server):
    served = serve(echo_persona(openai_server.url), echo_persona(openai_server.url, name="Other"))
    assert sorted(m.id for m in served.openai().models.list()) == ["Echo", "Other"]
    assert served.openai().models.retrieve("other").id == "Other"
    with pytest.raises(openai.AuthenticationError) as wrong:
        served.openai(key="sk-wrong").models.list()
    assert wrong.value.status_code == 401 and wrong.value.code == "invalid_api_key"
    assert "sk-wrong" not in wrong.value.response.text
    with pytest.raises(openai.NotFoundError) as unknown:
        served.openai().chat.completions.create(model="Nobody", messages=[{"role": "user", "content": "x"}])
    assert unknown.value.code == "model_not_found"
    assert httpx.get(f"{served.url}/health").json()["status"] == "ok"  # no key needed
    assert httpx.get(f"{served.url}/v1/models", headers={"X-Api-Key": KEY_B}).status_code == 200
    assert httpx.get(f"{served.url}/v1/models").status_code == 401
    assert openai_server.requests == []


def test_legacy_completions_stream_and_whole(serve, openai_server):
    served = serve(echo_persona(openai_server.url))
    openai_server.script(pieces_stream("Go ", "north."), pieces_stream("Go south."))
    client = served.openai()
    streamed = list(client.completions.create(model="Echo", prompt="Where now?", stream=True))
    assert "".join(c.choices[0].text for c in streamed if c.choices) == "Go north."
    whole = client.completions.create(model="Echo", prompt="And then?", max_tokens=5)
    assert whole.choices[0].text == "Go south." and whole.usage.completion_tokens > 0
    assert sent_messages(openai_server.requests[1])[-1] == ("user", "And then?")
    assert openai_server.requests[1].body["max_tokens"] == 5


def test_history_rule_stateless_client_conversation_and_no_doubling(serve, openai_server):
    served = serve(echo_persona(openai_server.url))
    openai_server.route("/chat/completions", JSONReply(chat_completion("Noted.")))
    client = served.openai()
    earlier = [{"role": "user", "content": "My name is Kim."}, {"role": "assistant", "content": "Hi Kim."}]
    # stateless: the request's earlier turns are the history, and nothing is stored
    client.chat.completions.create(model="Echo", messages=earlier + [{"role": "user", "content": "Name?"}])
    assert sent_messages(openai_server.requests[-1])[1:] == [
        ("user", "My name is Kim."), ("assistant", "Hi Kim."), ("user", "Name?")]
    assert served.memory.count_turns() == 0
    # a conversation sending only the new question gets the stored turns
    conv = {"X-Conversation-Id": "c-1"}
    client.chat.completions.create(model="Echo", messages=[{"role": "user", "content": "First."}],
                                   extra_headers=conv)
    client.chat.completions.create(model="Echo", messages=[{"role": "user", "content": "Second."}],
                                   extra_headers=conv)
    assert sent_messages(openai_server.requests[-1])[1:] == [
        ("user", "First."), ("assistant", "Noted."), ("user", "Second.")]
    # a conversation whose request carries its own turns: those, not the stored ones (no doubling)
    client.chat.completions.create(model="Echo", messages=earlier + [{"role": "user", "content": "Third."}],
                                   extra_headers=conv)
    assert sent_messages(openai_server.requests[-1])[1:] == [
        ("user", "My name is Kim."), ("assistant", "Hi Kim."), ("user", "Third.")]
    turns = served.memory.history(session_of(KEY_A, "c-1"), "Echo", max_turns=10)
    assert [t.question for t in turns] == ["First.", "Second.", "Third."]


@pytest.mark.parametrize("how", ["x-conversation-id", "conversation-id", "conversation_id", "user"])
def test_conversation_is_named_by_any_accepted_header_or_the_user_field(serve, openai_server, how):
    served = serve(echo_persona(openai_server.url))
    openai_server.route("/chat/completions", JSONReply(chat_completion("Ok.")))
    headers = {"Authorization": f"Bearer {KEY_A}"}
    body = {"model": "Echo", "messages": [{"role": "user", "content": "Remember me."}]}
    if how == "user":
        body["user"] = "conv-7"
    else:
        headers[how] = "conv-7"
    assert httpx.post(f"{served.url}/v1/chat/completions", headers=headers, json=body).status_code == 200
    assert [t.question for t in served.memory.history(session_of(KEY_A, "conv-7"), "Echo", max_turns=5)] == \
        ["Remember me."]


def test_keys_isolate_conversations_context_and_ending(serve, openai_server):
    served = serve(echo_persona(openai_server.url))
    openai_server.route("/chat/completions", JSONReply(chat_completion("Ok.")))
    conv = {"X-Conversation-Id": "shared-id"}
    alpha, bravo = served.openai(KEY_A), served.openai(KEY_B)
    assert httpx.post(f"{served.url}/v1/conversations/shared-id/context", headers={"X-Api-Key": KEY_A},
                      json={"context": "Alpha's secret plan."}).status_code == 200
    alpha.chat.completions.create(model="Echo", messages=[{"role": "user", "content": "A1"}], extra_headers=conv)
    assert "Alpha's secret plan." in openai_server.requests[-1].body["messages"][0]["content"]
    bravo.chat.completions.create(model="Echo", messages=[{"role": "user", "content": "B1"}], extra_headers=conv)
    assert sent_messages(openai_server.requests[-1]) == [("system", SYSTEM_PROMPT), ("user", "B1")]
    # B ending "its" conversation of the same id leaves A's alone
    assert httpx.delete(f"{served.url}/v1/conversations/shared-id",
                        headers={"X-Api-Key": KEY_B}).status_code == 200
    alpha.chat.completions.create(model="Echo", messages=[{"role": "user", "content": "A2"}], extra_headers=conv)
    assert sent_messages(openai_server.requests[-1])[1:] == [("user", "A1"), ("assistant", "Ok."), ("user", "A2")]
    assert "Alpha's secret plan." in openai_server.requests[-1].body["messages"][0]["content"]


def test_context_inject_clear_and_end(serve, openai_server):
    served = serve(echo_persona(openai_server.url))
    openai_server.route("/chat/completions", JSONReply(chat_completion("Ok.")))
    client, conv, auth = served.openai(), {"X-Conversation-Id": "ctx"}, {"X-Api-Key": KEY_A}

    def ask(text: str) -> list:
        client.chat.completions.create(model="Echo", messages=[{"role": "user", "content": text}],
                                       extra_headers=conv)
        return sent_messages(openai_server.requests[-1])

    httpx.post(f"{served.url}/v1/conversations/ctx/context", headers=auth, json={"context": "It is raining."})
    assert ask("Weather?")[0] == ("system", f"{SYSTEM_PROMPT}\n\nIt is raining.")
    assert httpx.delete(f"{served.url}/v1/conversations/ctx/context", headers=auth).json()["cleared"] is True
    assert ask("Again?")[0] == ("system", SYSTEM_PROMPT)
    assert httpx.delete(f"{served.url}/v1/conversations/ctx", headers=auth).json()["deleted"] is True
    assert served.memory.count_turns(session_of(KEY_A, "ctx")) == 0
    assert ask("Fresh?") == [("system", SYSTEM_PROMPT), ("user", "Fresh?")]


def test_ending_a_conversation_cancels_its_answer_and_forgets_the_cut_turn(serve, openai_server):
    served = serve(echo_persona(openai_server.url))
    endless = EndlessStream(interval=0.02)
    openai_server.script(endless)
    conv = {"X-Conversation-Id": "long", "X-Api-Key": KEY_A}
    got = []

    def listen() -> None:
        with httpx.stream("POST", f"{served.url}/v1/chat/completions", headers=conv, timeout=20,
                          json={"messages": [{"role": "user", "content": "Talk."}], "stream": True}) as response:
            got.extend(response.iter_lines())

    listener = threading.Thread(target=listen)
    listener.start()
    assert openai_server.wait_for_requests(1, timeout=5)
    time.sleep(0.3)
    assert httpx.delete(f"{served.url}/v1/conversations/long", headers=conv).status_code == 200
    listener.join(10)
    assert not listener.is_alive() and "data: [DONE]" in got
    assert endless.disconnected.wait(5)  # the upstream saw the generation stop
    assert served.memory.count_turns(session_of(KEY_A, "long")) == 0


def test_client_disconnect_cancels_upstream_and_remembers_the_delivered_part(serve, openai_server):
    served = serve(echo_persona(openai_server.url))
    endless = EndlessStream(interval=0.02, token="tok ")
    openai_server.script(endless)
    with httpx.stream("POST", f"{served.url}/v1/chat/completions", timeout=20,
                      headers={"X-Api-Key": KEY_A, "X-Conversation-Id": "gone"},
                      json={"messages": [{"role": "user", "content": "Go on."}], "stream": True}) as response:
        seen = 0
        for line in response.iter_lines():
            seen += "tok" in line
            if seen >= 5:
                break
        closed_at = time.monotonic()
    assert endless.disconnected.wait(5), "the upstream never saw the connection close"
    assert endless.disconnected_at - closed_at < 2.0
    deadline = time.monotonic() + 5
    while served.memory.count_turns(session_of(KEY_A, "gone")) == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    [turn] = served.memory.history(session_of(KEY_A, "gone"), "Echo", max_turns=5)
    assert turn.interrupted and turn.question == "Go on." and turn.answer.startswith("tok tok tok tok tok")


def test_past_the_waiting_line_a_request_gets_429_with_retry_after(serve, openai_server):
    served = serve(echo_persona(openai_server.url), max_concurrent=1, max_waiting=0)
    endless = EndlessStream(interval=0.05)
    openai_server.script(endless)
    auth = {"X-Api-Key": KEY_A}
    with httpx.stream("POST", f"{served.url}/v1/chat/completions", headers=auth, timeout=20,
                      json={"messages": [{"role": "user", "content": "hold"}], "stream": True}) as holding:
        lines = holding.iter_lines()  # kept: a dropped iterator would close the connection
        next(lines)
        started = time.monotonic()
        refused = httpx.post(f"{served.url}/v1/chat/completions", headers=auth,
                             json={"messages": [{"role": "user", "content": "me too"}]})
        assert time.monotonic() - started < 2.0
    assert refused.status_code == 429 and refused.headers["retry-after"] == "1"
    assert refused.json()["error"]["code"] == "rate_limit_exceeded"
    with pytest.raises(openai.RateLimitError):
        with httpx.stream("POST", f"{served.url}/v1/chat/completions", headers=auth, timeout=20,
                          json={"messages": [{"role": "user", "content": "hold"}], "stream": True}) as again:
            openai_server.script(EndlessStream(interval=0.05))
            again_lines = again.iter_lines()
            next(again_lines)
            served.openai().chat.completions.create(
                model="Echo", messages=[{"role": "user", "content": "sdk"}])


def test_a_client_that_leaves_while_waiting_in_line_leaves_the_line(serve, openai_server):
    served = serve(echo_persona(openai_server.url), max_concurrent=1, max_waiting=4)
    openai_server.script(EndlessStream(interval=0.05))
    auth = {"X-Api-Key": KEY_A}
    with httpx.stream("POST", f"{served.url}/v1/chat/completions", headers=auth, timeout=20,
                      json={"messages": [{"role": "user", "content": "hold"}], "stream": True}) as holding:
        lines = holding.iter_lines()
        next(lines)
        with pytest.raises(httpx.ReadTimeout):  # waits in line, then gives up and closes
            httpx.post(f"{served.url}/v1/chat/completions", headers=auth, timeout=0.5,
                       json={"messages": [{"role": "user", "content": "waiting"}]})
        deadline = time.monotonic() + 3
        while served.engine.admission.waiting and time.monotonic() < deadline:
            time.sleep(0.02)
        assert served.engine.admission.waiting == 0
        assert next(line for line in lines if "tok" in line)  # the first answer goes on
    assert len(openai_server.requests) == 1  # the one that left never reached the model


def test_ollama_client_chat_streamed_and_whole_and_tags(serve, openai_server):
    served = serve(echo_persona(openai_server.url))
    openai_server.script(pieces_stream("Hi ", "there."), pieces_stream("Whole reply."))
    client = ollama.Client(host=served.url, headers={"Authorization": f"Bearer {KEY_A}"})
    assert [m.model for m in client.list().models] == ["Echo:latest"]
    parts = list(client.chat(model="Echo:latest", messages=[{"role": "user", "content": "hello"}], stream=True,
                             options={"temperature": 0.1, "num_predict": 9}))
    assert "".join(p.message.content for p in parts) == "Hi there."
    assert parts[-1].done is True and parts[-1].done_reason == "stop" and not any(p.done for p in parts[:-1])
    assert (openai_server.requests[0].body["temperature"], openai_server.requests[0].body["max_tokens"]) == (0.1, 9)
    whole = client.chat(model="Echo", messages=[{"role": "user", "content": "again"}], stream=False)
    assert whole.message.content == "Whole reply." and whole.done is True
    with pytest.raises(ollama.ResponseError) as missing:
        client.chat(model="Nobody", messages=[{"role": "user", "content": "x"}], stream=False)
    assert missing.value.status_code == 404


def test_the_projects_openai_solver_uses_the_server_as_its_backend(serve, openai_server):
    served = serve(echo_persona(openai_server.url))
    openai_server.script(pieces_stream("Relayed ", "answer."))
    solver = create_solver("openai", {"api_url": f"{served.url}/v1", "key": KEY_A, "model": "Echo", "retries": 0},
                           SolverContext("Front", "en-us"))
    try:
        chunks = list(solver.stream([ChatMessage(Role.SYSTEM, "Front desk."), ChatMessage(Role.USER, "Hi")],
                                    lang="en-us", cancel=CancelToken(), conversation_id="node-1"))
    finally:
        solver.close()
    assert "".join(chunks) == "Relayed answer."
    assert sent_messages(openai_server.requests[0]) == [("system", f"{SYSTEM_PROMPT}\n\nFront desk."),
                                                       ("user", "Hi")]
    # the solver names its conversation: the server remembered the turn under it
    assert served.memory.count_turns(session_of(KEY_A, "node-1")) == 1


def test_sixteen_concurrent_streaming_clients_each_get_their_own_answer(serve, openai_server):
    served = serve(echo_persona(openai_server.url))

    def reply(request) -> dict:
        return chat_completion(f"Answer for {request.body['messages'][-1]['content']}.")

    openai_server.route("/chat/completions", JSONReply(reply))
    results, errors = {}, []

    def client(n: int) -> None:
        try:
            stream = served.openai(timeout=60).chat.completions.create(
                model="Echo", messages=[{"role": "user", "content": f"q{n}"}], stream=True,
                extra_headers={"X-Conversation-Id": f"c{n}"})
            results[n] = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
        except Exception as err:  # collected and asserted below
            errors.append(err)

    threads = [threading.Thread(target=client, args=(n,)) for n in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert errors == []
    assert results == {n: f"Answer for q{n}." for n in range(16)}
    for n in range(16):
        [turn] = served.memory.history(session_of(KEY_A, f"c{n}"), "Echo", max_turns=5)
        assert (turn.question, turn.answer) == (f"q{n}", f"Answer for q{n}.")


def test_ovos_openai_plugin_as_a_remote_solver_against_the_server(serve, openai_server):
    engines = pytest.importorskip("ovos_solver_openai_persona.engines")
    served = serve(echo_persona(openai_server.url))
    openai_server.script(pieces_stream("Plugin ", "answer.", " Second ", "sentence."),
                         pieces_stream("Whole one."))
    solver = engines.OpenAIChatCompletionsSolver({"api_url": f"{served.url}/v1", "key": KEY_A, "model": "Echo",
                                                  "enable_memory": False, "system_prompt": "Plugin side."})
    spoken = list(solver.stream_chat_utterances([{"role": "user", "content": "hello"}], lang="en-us"))
    assert spoken == ["Plugin answer.", "Second sentence."]
    assert sent_messages(openai_server.requests[0])[-1] == ("user", "hello")
    assert solver.get_spoken_answer("again", lang="en-us") == "Whole one."
    assert sent_messages(openai_server.requests[1])[0] == ("system", f"{SYSTEM_PROMPT}\n\nPlugin side.")
