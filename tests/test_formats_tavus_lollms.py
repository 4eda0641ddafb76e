"""Tavus personas and LoLLMs personalities: the exact Persona and the exact request a real
OpenAI-compatible server receives (system prompt, headers, extra body, sampling, stop strings)."""
from __future__ import annotations

import time

import json
from datetime import datetime

import pytest

from openai_server import FakeOpenAIServer, JSONReply, SSEStream, chat_chunk, sse
from persona_samples import LOLLMS, TAVUS
from ovos_skill_persona_fallback.engine import PersonaEngine
from ovos_skill_persona_fallback.persona import Persona, load_persona_file, load_personas
from ovos_skill_persona_fallback.solvers.base import GenerationSettings

BUILTINS = frozenset({"failure", "chitchat", "openai", "llama-cpp"})
NOW = datetime(2026, 12, 2, 9, 30).timestamp()


@pytest.fixture
def server():
    with FakeOpenAIServer() as running:
        yield running


def real_engine(memory, *personas: Persona) -> PersonaEngine:
    engine = PersonaEngine(include_shipped=False, memory=memory, known_solvers=None, clock=lambda: NOW,
                           default_persona=personas[0].name)
    for persona in personas:
        engine.add_persona(persona)
    return engine


def tavus_file(tmp_path, base_url: str):
    data = json.loads(json.dumps(TAVUS))
    data["layers"]["llm"]["base_url"] = base_url
    path = tmp_path / "coach.json"
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


def test_tavus_persona_maps_to_the_openai_solver_then_the_default_chain(tmp_path):
    path = tavus_file(tmp_path, "http://127.0.0.1:9/v1")
    persona = load_persona_file(path, BUILTINS)
    assert persona == Persona(
        name="Life Coach", solvers=("openai", "chitchat", "failure"),
        system_prompt="As a Life Coach, you are a dedicated professional.",
        context="Here are a few times that you have helped an individual make a breakthrough.",
        solver_configs={"openai": {"api_url": "http://127.0.0.1:9/v1", "key": "tavus-key-123", "model": "my-model",
                                   "headers": {"X-Team": "coaches"}, "extra_body": {"min_p": 0.05}}},
        voice={"tts_engine": "cartesia", "external_voice_id": "voice-1", "voice_settings": {"speed": "normal"}})
    assert persona.warnings == (f"{path}: layers.llm: ignored fields: speculative_inference, tools",
                                f"{path}: layers: ignored fields: perception, stt",
                                f"{path}: ignored fields: default_replica_id, document_ids, pipeline_mode")


def test_tavus_persona_answers_through_its_llm_with_headers_and_extra_body(tmp_path, server, memory):
    server.script(SSEStream(sse(chat_chunk("Let us begin."), chat_chunk(finish_reason="stop"))))
    engine = real_engine(memory, load_persona_file(tavus_file(tmp_path, server.url + "/v1"), BUILTINS))
    try:
        assert engine.ask("Help me focus", session_id="s").text == "Let us begin."
    finally:
        engine.close()
    [request] = server.requests
    assert request.path == "/v1/chat/completions"
    assert request.header("X-Team") == "coaches" and request.header("Authorization") == "Bearer tavus-key-123"
    assert request.body["model"] == "my-model" and request.body["min_p"] == 0.05
    assert request.body["messages"] == [
        {"role": "system", "content": "As a Life Coach, you are a dedicated professional.\n\n"
                                      "Here are a few times that you have helped an individual make a breakthrough."},
        {"role": "user", "content": "Help me focus"}]


def test_tavus_hosted_model_answers_through_the_default_chain(tmp_path):
    path = tmp_path / "hosted.json"
    path.write_text(json.dumps({"persona_name": "Hosted", "system_prompt": "x",
                                "layers": {"llm": {"model": "tavus-gpt-4o"}}}), encoding="utf-8")
    persona = load_persona_file(path, BUILTINS)
    assert persona.solvers == ("chitchat", "failure")
    assert persona.warnings == (f"{path}: layers.llm: model 'tavus-gpt-4o' is hosted by Tavus and cannot be "
                                f"called from here; answering through the default chain",)


LOLLMS_SYSTEM = "You are a helpful assistant. Current date: {date}.\n\nA helpful assistant that answers briefly."


def lollms_folder(tmp_path):
    folder = tmp_path / "personalities" / "lollms_helper"
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text(LOLLMS, encoding="utf-8")
    return folder.parent


def test_lollms_personality_folder_loads_every_field(tmp_path):
    root = lollms_folder(tmp_path)
    warned = []
    personas, problems = load_personas([root], BUILTINS, on_warning=warned.append)
    assert problems == []
    assert personas["Lollms Helper"] == Persona(
        name="Lollms Helper", solvers=("chitchat", "failure"), lang="en",
        description="A helpful assistant that answers briefly.", system_prompt=LOLLMS_SYSTEM,
        greetings=("Welcome! How can I help you today?",),
        generation=GenerationSettings(temperature=0.6, top_k=50, top_p=0.9, repeat_penalty=1.3, max_tokens=1024,
                                      stop=("### Human:", "### Assistant:")))
    assert warned == [f"{root / 'lollms_helper' / 'config.yaml'}: ignored fields: ai_message_prefix, author, category, "
                      f"dependencies, disclaimer, link_text, model_repeat_last_n, user_message_prefix, user_name, "
                      f"version"]


def test_lollms_through_an_openai_default_chain_sends_its_template_sampling_and_stops(tmp_path, server, memory):
    root = lollms_folder(tmp_path)
    chain = [{"openai": {"api_url": server.url + "/v1", "model": "m", "mode": "completions", "stream": False}}, "failure"]
    personas, _ = load_personas([root], BUILTINS, default_solvers=chain)
    persona = personas["Lollms Helper"]
    assert persona.solver_config("openai")["prompt_template"] == \
        "{system}\n\n{history}### Human: {question}\n### Assistant:"
    server.route("/v1/completions", JSONReply({"choices": [{"text": " Sure."}]}))
    engine = real_engine(memory, persona)
    try:
        assert engine.ask("Hello", session_id="s").text == "Sure."
    finally:
        engine.close()
    [request] = server.requests
    assert request.body == {
        "temperature": 0.6, "top_p": 0.9, "max_tokens": 1024, "top_k": 50, "repeat_penalty": 1.3,
        "stop": ["### Human:", "### Assistant:", "\nUser:"],
        "prompt": LOLLMS_SYSTEM.replace("{date}", time.strftime("%Y-%m-%d")) + "\n\n### Human: Hello\n### Assistant:",
        "stream": False, "user": "s", "model": "m"}
