"""Malformed requests get specific 4xx OpenAI-shaped errors (never a 500, never a dead worker), the
wire converters alone, and the ``serve`` command's refusals."""
from __future__ import annotations

import io
import socket

import httpx
import pytest

from openai_server import JSONReply, chat_completion, openai_server  # noqa: F401
from server_fixtures import KEY_A, echo_persona, serve  # noqa: F401

from ovos_skill_persona_fallback import cli
from ovos_skill_persona_fallback.server import ollama_wire, openai_wire
from ovos_skill_persona_fallback.server.auth import KeyRing, conversation_id, presented_key, read_keys
from ovos_skill_persona_fallback.solvers.base import ChatMessage, Role

USER = {"role": "user", "content": "hi"}
# (why, raw body or JSON, headers, status, words the message must hold)
BAD_REQUESTS = [
    ("not JSON", b"{bad", {}, 400, "not valid JSON"),
    ("a JSON list", b"[1, 2]", {}, 400, "body"),
    ("no messages", {"model": "Echo"}, {}, 400, "messages"),
    ("empty messages", {"messages": []}, {}, 400, "messages"),
    ("messages of the wrong type", {"messages": "hi"}, {}, 400, "messages"),
    ("unknown role", {"messages": [{"role": "wizard", "content": "hi"}]}, {}, 400, "role"),
    # tool results are accepted (client tools), but only with the call they answer, after a question
    ("tool message without its call", {"messages": [{"role": "tool", "content": "hi"}]}, {}, 400, "tool_call_id"),
    ("tool message without a question", {"messages": [{"role": "tool", "content": "hi", "tool_call_id": "c"}]},
     {}, 400, "user"),
    ("content of the wrong type", {"messages": [{"role": "user", "content": 5}]}, {}, 400, "content"),
    ("image content", {"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}, {}, 400, "text"),
    ("last message not the user's", {"messages": [USER, {"role": "assistant", "content": "x"}]}, {}, 400, "user"),
    ("blank question", {"messages": [{"role": "user", "content": "   "}]}, {}, 400, "empty"),
    ("lone surrogate", b'{"messages": [{"role": "user", "content": "a\\ud800b"}]}', {}, 400, "surrogate"),
    ("temperature out of range", {"messages": [USER], "temperature": 9}, {}, 400, "temperature"),
    ("max_tokens zero", {"messages": [USER], "max_tokens": 0}, {}, 400, "max_tokens"),
    ("empty stop", {"messages": [USER], "stop": [""]}, {}, 400, "stop"),
    ("stream not a bool", {"messages": [USER], "stream": "yes please"}, {}, 400, "stream"),
    ("body over 1 MB", {"messages": [{"role": "user", "content": "x" * (1 << 20)}]}, {}, 413, "over"),
    ("conversation id too long", {"messages": [USER]}, {"X-Conversation-Id": "c" * 300}, 400, "longer"),
    ("conversation id blank", {"messages": [USER], "user": "   "}, {}, 400, "empty"),
    ("conversation id with control characters", {"messages": [USER], "user": "a\x07b"}, {}, 400, "printed"),
]


@pytest.mark.parametrize("why,body,headers,status,words", BAD_REQUESTS, ids=[row[0] for row in BAD_REQUESTS])
def test_bad_requests_get_specific_openai_errors(serve, openai_server, why, body, headers, status, words):
    served = serve(echo_persona(openai_server.url))
    openai_server.route("/chat/completions", JSONReply(chat_completion("Fine.")))
    sent = {"content": body, "headers": {"Content-Type": "application/json"}} if isinstance(body, bytes) \
        else {"json": body}
    sent["headers"] = {**sent.get("headers", {}), "X-Api-Key": KEY_A, **headers}
    response = httpx.post(f"{served.url}/v1/chat/completions", timeout=10, **sent)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert words in error["message"] and error["type"] == "invalid_request_error"
    assert openai_server.requests == []  # nothing bad reached the model
    # and the worker is alive: a good request still works
    good = httpx.post(f"{served.url}/v1/chat/completions", headers={"X-Api-Key": KEY_A}, timeout=10,
                      json={"messages": [USER]})
    assert good.json()["choices"][0]["message"]["content"] == "Fine."


def test_odd_auth_headers_and_routes(serve, openai_server):
    served = serve(echo_persona(openai_server.url))
    for headers in ({"Authorization": "Bearer"}, {"Authorization": "Basic abc"}, {"Authorization": f"Token {KEY_A}"},
                    {"X-Api-Key": ""}, {"Authorization": f"Bearer {KEY_A}x"}):
        response = httpx.get(f"{served.url}/v1/models", headers=headers)
        assert response.status_code == 401 and response.json()["error"]["code"] == "invalid_api_key"
    missing = httpx.get(f"{served.url}/v1/nothing", headers={"X-Api-Key": KEY_A})
    assert missing.status_code == 404 and missing.json()["error"]["message"] == "no route GET /v1/nothing"
    wrong_method = httpx.put(f"{served.url}/v1/chat/completions", headers={"X-Api-Key": KEY_A})
    assert wrong_method.status_code == 405 and "error" in wrong_method.json()
    ollama_bad = httpx.post(f"{served.url}/api/chat", headers={"X-Api-Key": KEY_A}, content=b"{bad",
                            timeout=10)
    assert ollama_bad.status_code == 400 and ollama_bad.json() == {"error": "the body is not valid JSON"}


def test_chat_input_splits_question_history_and_client_context():
    request = openai_wire.ChatRequest.model_validate({
        "messages": [{"role": "system", "content": "Ctx one."}, {"role": "user", "content": "Q1"},
                     {"role": "assistant", "content": "A1"}, {"role": "developer", "content": "Ctx two."},
                     {"role": "user", "content": [{"type": "text", "text": "Q2"}]}],
        "max_completion_tokens": 9, "seed": -1, "stop": "END", "top_p": 0.2})
    data = openai_wire.chat_input(request)
    assert data.question == "Q2" and data.client_context == "Ctx one.\n\nCtx two."
    assert data.history == [ChatMessage(Role.USER, "Q1"), ChatMessage(Role.ASSISTANT, "A1")]
    assert data.generation == {"max_tokens": 9, "seed": (1 << 32) - 1, "stop": ("END",), "top_p": 0.2}


def test_ollama_input_and_model_names():
    request = ollama_wire.OllamaChatRequest.model_validate({
        "model": "Ava:latest", "messages": [{"role": "user", "content": "hi"}],
        "options": {"num_predict": -1, "temperature": 0.4, "stop": ["x"]}})
    data = ollama_wire.chat_input(request)
    assert (data.question, data.generation) == ("hi", {"temperature": 0.4, "stop": ("x",)})
    assert ollama_wire.persona_name("Ava:latest") == "Ava" and ollama_wire.persona_name("Ava:7b") == "Ava:7b"


def test_keys_are_read_from_flags_file_and_environment(tmp_path):
    keys_file = tmp_path / "keys"
    keys_file.write_text("# comment\nsk-file-1\n\n  sk-file-2  \n")
    assert read_keys(["sk-flag"], keys_file, {"PERSONA_API_KEYS": "sk-env-1, sk-env-2,,sk-flag"}) == \
        ["sk-flag", "sk-file-1", "sk-file-2", "sk-env-1", "sk-env-2"]
    ring = KeyRing(["sk-1", "sk-2"])
    assert ring.namespace_for("sk-1") != ring.namespace_for("sk-2")
    assert ring.namespace_for("sk-3") is None and ring.namespace_for(None) is None
    assert "sk-1" not in ring.namespace_for("sk-1")
    assert presented_key({"authorization": "bearer sk-1"}) == "sk-1"
    assert presented_key({"x-api-key": "sk-2"}) == "sk-2"
    assert conversation_id({"conversation_id": "from-header"}, "from-user") == "from-header"
    assert conversation_id({}, "from-user") == "from-user" and conversation_id({}, None) is None


def _serve_exit(argv, monkeypatch) -> tuple:
    err = io.StringIO()
    monkeypatch.setattr("sys.stderr", err)
    status = cli.main(["serve", *argv])
    return status, err.getvalue()


def test_serve_refuses_a_public_host_without_keys_and_a_bad_keys_file(monkeypatch, tmp_path):
    monkeypatch.delenv("PERSONA_API_KEYS", raising=False)
    status, err = _serve_exit(["--host", "0.0.0.0", "--db", str(tmp_path / "m.db")], monkeypatch)
    assert status == 1 and "refusing to serve on 0.0.0.0 with no API key" in err
    status, err = _serve_exit(["--api-keys-file", str(tmp_path / "missing"), "--db", str(tmp_path / "m.db")],
                              monkeypatch)
    assert status == 1 and "cannot read the API keys file" in err


def test_serve_reports_a_port_in_use(monkeypatch, tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(SystemExit):
            _serve_exit(["--port", str(port), "--db", str(tmp_path / "m.db")], monkeypatch)
