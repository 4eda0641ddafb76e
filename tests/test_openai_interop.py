"""OpenAISolver against servers that bend the OpenAI wire format: real HTTP servers on 127.0.0.1.

Each case is a defect seen with a real remote server: ovos-persona-server 0.5 rejecting a request
without ``model`` (422), text-generation-webui's legacy ``/api/v1/generate`` reply shape, and a
chat reply made only of ``tool_calls``.
"""
import json
import logging

import pytest

from ovos_skill_persona_fallback.solvers.base import (
    CancelToken,
    ChatMessage,
    Role,
    SolverContext,
    SolverError,
    SolverResponseError,
)
from ovos_skill_persona_fallback.solvers.openai_compat import PLACEHOLDER_MODEL, OpenAISolver

try:  # tests/ as a package or as a plain directory on sys.path
    from .openai_server import (Behaviour, Drop, JSONReply, SSEStream, chat_chunk, error_body,
                                openai_server, sse)
except ImportError:
    from openai_server import (Behaviour, Drop, JSONReply, SSEStream, chat_chunk,  # noqa: F401
                               error_body, openai_server, sse)

KEY = "sk-interop-SECRET-9090"
CONTEXT = SolverContext(persona_name="Bob", persona_lang="en")
MESSAGES = [ChatMessage(Role.SYSTEM, "You are Bob."), ChatMessage(Role.USER, "Weather in Paris?")]
OK_WIRE = sse(chat_chunk("Sunny"), chat_chunk(" today."))


def make(server, **config):
    block = {"api_url": server.url, "timeout": {"connect": 1, "read": 2}, "retries": 0, "backoff": 0.01,
             **config}
    return OpenAISolver(block, CONTEXT)


def collect(solver):
    got, error = [], None
    try:
        for chunk in solver.stream(MESSAGES, lang="en", cancel=CancelToken()):
            got.append(chunk)
    except SolverError as err:
        error = err
    return got, error


class RequireModel(Behaviour):
    """Like ovos-persona-server 0.5 (FastAPI + pydantic): 422 when the body has no ``model``."""

    def serve(self, handler, request):
        if isinstance(request.body, dict) and isinstance(request.body.get("model"), str):
            SSEStream(OK_WIRE).serve(handler, request)
            return
        detail = {"detail": [{"loc": ["body", "model"], "msg": "field required", "type": "value_error.missing"}]}
        JSONReply(detail, status=422).serve(handler, request)


# ------------------------------------------------------------------ the model is always sent

def test_model_is_discovered_once_from_the_models_list(openai_server):
    openai_server.route("/models", JSONReply({"object": "list", "data": [{"id": "bob-persona", "object": "model"},
                                                                         {"id": "other", "object": "model"}]}))
    openai_server.route("/chat/completions", RequireModel())
    solver = make(openai_server, key=KEY)
    assert collect(solver) == (["Sunny", " today."], None)
    assert collect(solver) == (["Sunny", " today."], None)
    assert [(r.method, r.path) for r in openai_server.requests] == [
        ("GET", "/models"), ("POST", "/chat/completions"), ("POST", "/chat/completions")]
    assert openai_server.requests[0].header("Authorization") == f"Bearer {KEY}"
    assert [r.body["model"] for r in openai_server.requests[1:]] == ["bob-persona", "bob-persona"]


def test_models_list_under_the_configured_prefix(openai_server):
    openai_server.route("/openai/v1/models", JSONReply({"data": [{"id": "m1"}]}))
    openai_server.route("/openai/v1/chat/completions", RequireModel())
    assert collect(make(openai_server, api_url=f"{openai_server.url}/openai/v1")) == (["Sunny", " today."], None)
    assert openai_server.paths == ["/openai/v1/models", "/openai/v1/chat/completions"]
    assert openai_server.requests[1].body["model"] == "m1"


@pytest.mark.parametrize("models_reply", [
    None,  # no /models route: 404, as on ovos-persona-server 0.5 at its root
    JSONReply({"data": []}),  # an empty list
    JSONReply("<html>not json</html>", content_type="text/html"),
    JSONReply(error_body("nope"), status=500),
], ids=["404", "empty-list", "not-json", "500"])
def test_placeholder_model_when_discovery_finds_nothing_and_it_is_remembered(openai_server, models_reply):
    if models_reply is not None:
        openai_server.route("/models", models_reply)
    openai_server.route("/chat/completions", RequireModel())
    solver = make(openai_server)
    assert collect(solver) == (["Sunny", " today."], None)
    assert collect(solver) == (["Sunny", " today."], None)
    # a 404 is a path that does not exist: the known prefixes are tried too; any other answer ends the search
    asked = ["/models", "/v1/models", "/openai/v1/models"] if models_reply is None else ["/models"]
    assert openai_server.paths == asked + ["/chat/completions", "/chat/completions"]
    assert [r.body["model"] for r in openai_server.requests[len(asked):]] == [PLACEHOLDER_MODEL] * 2


def test_models_list_found_under_v1_when_the_root_has_none(openai_server):
    # llama-cpp-python's server: api_url at the root, the API under /v1
    openai_server.route("/v1/models", JSONReply({"object": "list", "data": [{"id": "/models/tiny.gguf"}]}))
    openai_server.route("/v1/chat/completions", RequireModel())
    assert collect(make(openai_server)) == (["Sunny", " today."], None)
    assert openai_server.paths == ["/models", "/v1/models", "/chat/completions", "/v1/chat/completions"]
    assert openai_server.requests[-1].body["model"] == "/models/tiny.gguf"


def test_discovery_is_tried_again_after_a_dropped_connection(openai_server):
    openai_server.script(Drop(), path="/models")
    openai_server.route("/models", JSONReply({"data": [{"id": "late-model"}]}))
    openai_server.route("/chat/completions", RequireModel())
    solver = make(openai_server)
    assert collect(solver) == (["Sunny", " today."], None)
    assert collect(solver) == (["Sunny", " today."], None)
    assert openai_server.paths == ["/models", "/chat/completions", "/models", "/chat/completions"]
    assert [r.body["model"] for r in openai_server.requests if r.method == "POST"] == [PLACEHOLDER_MODEL,
                                                                                       "late-model"]


def test_configured_model_is_sent_without_discovery(openai_server):
    openai_server.route("/chat/completions", RequireModel())
    assert collect(make(openai_server, model="llama3")) == (["Sunny", " today."], None)
    assert openai_server.paths == ["/chat/completions"]
    assert openai_server.requests[0].body["model"] == "llama3"


# ------------------------------------------------------------------ text-generation-webui legacy API

@pytest.mark.parametrize("stream", [True, False], ids=["stream-asked", "stream-off"])
def test_text_generation_webui_legacy_generate_reply_is_read(openai_server, stream):
    openai_server.route("/api/v1/generate", JSONReply({"results": [{"text": " It is sunny."}]}))
    solver = make(openai_server, mode="completions", completions_path="/api/v1/generate", model="tgw",
                  stream=stream)
    assert collect(solver) == ([" It is sunny."], None)
    (request,) = openai_server.requests
    assert request.path == "/api/v1/generate"
    assert request.body["prompt"] == "You are Bob.\n\nUser: Weather in Paris?\nAssistant:"


# ------------------------------------------------------------------ replies that are only tool calls

TOOL_CALL = {"id": "call_1", "type": "function",
             "function": {"name": "get_weather", "arguments": json.dumps({"city": "Paris", "token": KEY})}}


def _tool_stream():
    first = {"choices": [{"index": 0, "delta": {"role": "assistant", "content": None, "tool_calls": [
        {"index": 0, "id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": ""}}]},
        "finish_reason": None}]}
    rest = {"choices": [{"index": 0, "delta": {"tool_calls": [
        {"index": 0, "function": {"arguments": json.dumps({"city": "Paris", "token": KEY})}}]},
        "finish_reason": None}]}
    second_tool = {"choices": [{"index": 0, "delta": {"tool_calls": [
        {"index": 1, "id": "call_2", "type": "function", "function": {"name": "get_time", "arguments": "{}"}}]},
        "finish_reason": "tool_calls"}]}
    return SSEStream(sse(first, rest, second_tool))


def _tool_reply():
    return JSONReply({"id": "x", "object": "chat.completion", "choices": [{"index": 0, "finish_reason": "tool_calls",
                      "message": {"role": "assistant", "content": None, "tool_calls": [TOOL_CALL]}}]})


@pytest.mark.parametrize("behaviour, names", [
    (_tool_stream, "get_weather, get_time"),
    (_tool_reply, "get_weather"),
], ids=["streamed", "whole-reply"])
def test_tool_calls_only_fail_the_solver_and_warn_once(openai_server, caplog, behaviour, names):
    caplog.set_level(logging.WARNING)
    openai_server.script(behaviour(), behaviour())
    solver = make(openai_server, model="m", key=KEY)
    for _ in range(2):
        got, err = collect(solver)
        assert got == [] and isinstance(err, SolverResponseError)
        assert f"only tool calls ({names})" in str(err)
    warnings = [r for r in caplog.records if "tool calls" in r.getMessage()]
    assert len(warnings) == 1 and warnings[0].levelno == logging.WARNING
    assert names in warnings[0].getMessage()
    for text in (caplog.text, str(err)):
        assert KEY not in text and "Paris" not in text  # neither the key nor the call's arguments


def test_text_with_tool_calls_keeps_the_text(openai_server):
    mixed = {"choices": [{"index": 0, "delta": {"content": "Let me check.", "tool_calls": [
        {"index": 0, "id": "c", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}]}}]}
    openai_server.script(SSEStream(sse(mixed)))
    assert collect(make(openai_server, model="m")) == (["Let me check."], None)
