"""The persona server over a real local model (llama-cpp on the tiny generated GGUF), and the
``persona-fallback serve`` process stopped by SIGTERM mid-answer."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from llama_fixtures import tiny_gguf  # noqa: F401  (pytest fixture)
from openai_server import EndlessStream, JSONReply, chat_completion, openai_server  # noqa: F401
from server_fixtures import KEY_A, llama_persona, serve  # noqa: F401

from ovos_skill_persona_fallback.memory import ConversationMemory
from ovos_skill_persona_fallback.server.auth import KeyRing, session_id

openai = pytest.importorskip("openai")
pytest.importorskip("llama_cpp")


def session_of(key: str, conversation: str) -> str:
    return session_id(KeyRing([key]).namespace_for(key), conversation)


def llama_solver(served, persona: str = "Tiny"):
    return served.engine.chain_links(served.engine.find_persona(persona))[0].solver  # built on first use


def test_local_model_streams_tokens_and_counts_usage_with_its_tokenizer(serve, tiny_gguf):  # noqa: F811
    served = serve(llama_persona(tiny_gguf))
    client = served.openai()
    stream = client.chat.completions.create(model="Tiny", messages=[{"role": "user", "content": "hello world"}],
                                            stream=True, max_tokens=6, stream_options={"include_usage": True})
    chunks = list(stream)
    pieces = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    stats = llama_solver(served).last_stats
    assert len(pieces) > 1  # token by token, not one sentence at the end
    assert chunks[-1].usage.completion_tokens == stats["completion_tokens"] <= 6
    assert chunks[-1].usage.prompt_tokens == stats["prompt_tokens"] > 5
    whole = client.chat.completions.create(model="Tiny", messages=[{"role": "user", "content": "hello world"}],
                                           max_tokens=6)
    # temperature 0 and a fixed seed: the same stateless request gives the same words
    assert whole.choices[0].message.content == "".join(pieces)
    assert whole.usage.completion_tokens == llama_solver(served).last_stats["completion_tokens"]


def test_request_overrides_reach_the_local_model(serve, tiny_gguf):  # noqa: F811
    served = serve(llama_persona(tiny_gguf))
    client = served.openai()
    reply = client.chat.completions.create(model="Tiny", messages=[{"role": "user", "content": "hi"}],
                                           max_tokens=3, temperature=1.5, seed=5)
    assert llama_solver(served).last_stats["max_tokens"] == 3
    assert reply.usage.completion_tokens == 3
    assert llama_solver(served).last_stats["finish_reason"] == reply.choices[0].finish_reason == "length"
    again = client.chat.completions.create(model="Tiny", messages=[{"role": "user", "content": "hi"}],
                                           max_tokens=3, temperature=1.5, seed=5)
    assert again.choices[0].message.content == reply.choices[0].message.content  # the seed took effect


def test_disconnect_stops_the_local_model_at_once_and_keeps_the_delivered_part(serve, tiny_gguf):  # noqa: F811
    served = serve(llama_persona(tiny_gguf))
    session = session_of(KEY_A, "cut")
    with httpx.stream("POST", f"{served.url}/v1/chat/completions", timeout=30,
                      headers={"X-Api-Key": KEY_A, "X-Conversation-Id": "cut"},
                      json={"messages": [{"role": "user", "content": "tell me everything"}], "stream": True,
                            "max_tokens": 1500}) as response:
        seen = []
        for line in response.iter_lines():
            if line.startswith("data: {") and '"content": "' in line:
                seen.append(json.loads(line[6:])["choices"][0]["delta"]["content"])
            if len(seen) >= 4:
                break
        closed_at = time.monotonic()
    lock = llama_solver(served).loaded_model.lock  # held by the model while it generates
    while (lock.locked or served.engine.is_busy(session)) and time.monotonic() - closed_at < 5:
        time.sleep(0.005)
    stopped_after = time.monotonic() - closed_at
    print(f"local model stopped {stopped_after * 1000:.0f} ms after the client left")
    assert stopped_after < 1.0  # the target is 200 ms; the margin is for a loaded machine
    stats = llama_solver(served).last_stats
    assert stats["finish_reason"] == "cancelled" and stats["completion_tokens"] < 1500
    deadline = time.monotonic() + 5
    while not served.memory.count_turns(session) and time.monotonic() < deadline:
        time.sleep(0.02)
    [turn] = served.memory.history(session, "Tiny", max_turns=3)
    assert turn.interrupted and turn.answer.startswith("".join(seen).strip())


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
def test_sigterm_mid_answer_ends_cleanly_and_loses_no_completed_turn(tmp_path: Path, openai_server):  # noqa: F811
    personas = tmp_path / "personas"
    personas.mkdir()
    (personas / "echo.yaml").write_text(
        f"name: Echo\ndescription: over a loopback server\nsystem_prompt: You are Echo.\nsolvers: [openai]\n"
        f"openai:\n  api_url: {openai_server.url}\n  model: upstream-model\n  retries: 0\n")
    db, port = tmp_path / "memory.db", _free_port()
    openai_server.script(JSONReply(chat_completion("First answer.")))
    endless = EndlessStream(interval=0.02)
    openai_server.script(endless)
    env = {**os.environ, "PERSONA_API_KEYS": KEY_A}
    process = subprocess.Popen(
        [sys.executable, "-m", "ovos_skill_persona_fallback.cli", "serve", "--port", str(port),
         "--personas-dir", str(personas), "--db", str(db), "--default-persona", "Echo"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    url, headers = f"http://127.0.0.1:{port}", {"X-Api-Key": KEY_A, "X-Conversation-Id": "keep"}
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert process.poll() is None and time.monotonic() < deadline, "the server did not start"
            time.sleep(0.1)
        first = httpx.post(f"{url}/v1/chat/completions", headers=headers, timeout=10,
                           json={"messages": [{"role": "user", "content": "One?"}]})
        assert first.json()["choices"][0]["message"]["content"] == "First answer."
        with httpx.stream("POST", f"{url}/v1/chat/completions", headers=headers, timeout=20,
                          json={"messages": [{"role": "user", "content": "Two?"}], "stream": True}) as response:
            lines = response.iter_lines()
            got = [next(lines) for _ in range(6)]
            process.send_signal(signal.SIGTERM)
            rest = list(lines)  # the server ends the stream itself
        assert process.wait(20) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    out, err = process.communicate()
    assert f"http://127.0.0.1:{port}" in out and "Echo" in out
    assert KEY_A not in out + err
    assert "data: [DONE]" in rest and any("tok" in line for line in got + rest)
    assert endless.disconnected.wait(5)
    memory = ConversationMemory(db)
    try:
        turns = memory.history(session_of(KEY_A, "keep"), "Echo", max_turns=5)
    finally:
        memory.close()
    assert (turns[0].question, turns[0].answer, turns[0].interrupted) == ("One?", "First answer.", False)
    assert turns[1].question == "Two?" and turns[1].interrupted and turns[1].answer.startswith("tok")
