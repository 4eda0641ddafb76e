"""The openai solver against llama-cpp-python's own OpenAI-compatible server serving the tiny GGUF,
and an OVOS solver plugin from the registry running inside a persona chain."""
from __future__ import annotations

import socket
import subprocess
import sys
import time

import pytest
import requests

from conftest import make_persona
from llama_fixtures import tiny_gguf  # noqa: F401  (pytest fixture)
from ovos_skill_persona_fallback.engine import PersonaEngine
from ovos_skill_persona_fallback.memory import ConversationMemory
from ovos_skill_persona_fallback.solvers import create_solver
from ovos_skill_persona_fallback.solvers.base import (CancelToken, ChatMessage, GenerationSettings, Role,
                                                      SolverCancelled, SolverContext)

pytest.importorskip("llama_cpp.server")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def llama_server(tiny_gguf):  # noqa: F811
    port = _free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "llama_cpp.server", "--model", str(tiny_gguf), "--host", "127.0.0.1",
         "--port", str(port), "--n_ctx", "2048", "--verbose", "False"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"llama_cpp.server exited: {process.stderr.read()[-2000:]}")
        try:
            if requests.get(f"{url}/v1/models", timeout=1).ok:
                break
        except requests.ConnectionError:
            time.sleep(0.2)
    else:
        process.kill()
        pytest.fail("llama_cpp.server did not start within 60 s")
    yield url
    process.terminate()
    try:
        process.wait(10)
    except subprocess.TimeoutExpired:
        process.kill()


CONTEXT = SolverContext("Ada", "en-us", GenerationSettings(temperature=0.0, max_tokens=12, seed=1))
CHAT = [ChatMessage(Role.SYSTEM, "You are Ada."), ChatMessage(Role.USER, "hello")]


def test_streams_from_llama_cpp_server_and_finds_the_v1_path(llama_server):
    solver = create_solver("openai", {"api_url": llama_server}, CONTEXT)
    chunks = list(solver.stream(CHAT, lang="en-us", cancel=CancelToken(), conversation_id="s1"))
    assert len(chunks) > 1 and "".join(chunks).strip()
    # no prefix given: /chat/completions is a 404 there, /v1/chat/completions works and is remembered
    assert solver._http.working_url.endswith("/v1/chat/completions")
    again = list(solver.stream(CHAT, lang="en-us", cancel=CancelToken(), conversation_id="s1"))
    assert again == chunks, "same seed and temperature 0 give the same answer"
    solver.close()


def test_completions_mode_against_llama_cpp_server(llama_server):
    solver = create_solver("openai", {"api_url": f"{llama_server}/v1", "mode": "completions"}, CONTEXT)
    text = "".join(solver.stream(CHAT, lang="en-us", cancel=CancelToken(), conversation_id="s1"))
    assert text.strip()
    solver.close()


def test_cancel_stops_the_server_stream(llama_server):
    context = SolverContext("Ada", "en-us", GenerationSettings(temperature=0.0, max_tokens=1500, seed=1))
    solver = create_solver("openai", {"api_url": f"{llama_server}/v1"}, context)
    cancel = CancelToken()
    stream = solver.stream(CHAT, lang="en-us", cancel=cancel, conversation_id="s1")
    received = [next(stream)]
    started = time.monotonic()
    cancel.cancel()
    with pytest.raises(SolverCancelled):  # this solver reports a cancel by raising
        for chunk in stream:
            received.append(chunk)
    assert time.monotonic() - started < 0.1
    assert len(received) < 50
    solver.close()


def test_ovos_solver_plugin_answers_inside_a_persona_chain():
    engine = PersonaEngine(include_shipped=False, memory=ConversationMemory(":memory:"))
    engine.add_persona(make_persona("Old", ("ovos-solver-failure-plugin", "failure")))
    answer = engine.ask("what is the meaning of life", session_id="s")
    assert answer.sentences == ["404"]
    assert answer.result.solver_id == "ovos-solver-failure-plugin" and answer.failures == []
    engine.close()
