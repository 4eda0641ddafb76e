"""A persona in each imported format answers end to end: ovos-messagebus + ovos-core with the skill,
persona files as users have them (a Character Card PNG, Tavus, LoLLMs, OVOS persona JSON)."""
from __future__ import annotations

import json

import pytest
from ovos_bus_client.message import Message

from ovos_skill_persona_fallback.ovos_stack import OVOSStack
from openai_server import SSEStream, chat_chunk, sse, remote  # noqa: F401 - a fixture
from persona_samples import CARD_V3, LOLLMS, OVOS_LLM, TAVUS, card_chunk, png

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def stack(tmp_path_factory, remote):
    personas = tmp_path_factory.mktemp("formats")
    (personas / "seraphina.png").write_bytes(png([card_chunk("ccv3", CARD_V3)]))
    tavus = json.loads(json.dumps(TAVUS))
    tavus["layers"]["llm"]["base_url"] = f"{remote.url}/v1"
    (personas / "coach.json").write_text(json.dumps(tavus), encoding="utf-8")
    ovos = json.loads(json.dumps(OVOS_LLM))
    ovos["ovos-solver-openai-persona-plugin"]["api_url"] = f"{remote.url}/v1"
    (personas / "llm.json").write_text(json.dumps(ovos), encoding="utf-8")
    (personas / "helper").mkdir()
    (personas / "helper" / "config.yaml").write_text(LOLLMS, encoding="utf-8")
    with OVOSStack(skill_settings={"persona_dirs": [str(personas)], "thinking_delay": 30}, timeout=90) as running:
        yield running


def switch(stack, session_id: str, name: str) -> None:
    mark = stack.mark()
    stack.emit(Message("persona.active.set", {"persona": name}, {"session": {"session_id": session_id}}))
    reply = stack.wait_for("persona.active.set.response", timeout=10, since=mark)
    assert reply is not None and reply.data["persona"] == name


@pytest.mark.parametrize("name", ["Seraphina V3", "Lollms Helper"])
def test_personas_without_a_backend_answer_through_the_default_chain(stack, name):
    switch(stack, f"e2e-{name}", name)
    messages = stack.ask("What is your name?", session_id=f"e2e-{name}", timeout=30)
    assert stack.spoken(messages) == [f"I'm {name}, your voice assistant."]


@pytest.mark.parametrize("name,system", [
    ("Life Coach", "As a Life Coach, you are a dedicated professional.\n\n"
                   "Here are a few times that you have helped an individual make a breakthrough."),
    ("My Local LLM", "helpful, creative, clever, and very friendly."),
])
def test_personas_with_a_model_send_their_system_prompt(stack, remote, name, system):
    # on the chat path only: a persona without a model first asks GET /models for one
    remote.script(SSEStream(sse(chat_chunk("Glad to help.")), interval=0.0), path="/v1/chat/completions")
    switch(stack, f"e2e-{name}", name)
    before = len(remote.requests)
    messages = stack.ask("hello there", session_id=f"e2e-{name}", timeout=30)
    assert stack.spoken(messages) == ["Glad to help."]
    [request] = [r for r in remote.requests[before:] if r.path.endswith("/chat/completions")]
    assert request.body["messages"] == [{"role": "system", "content": system},
                                        {"role": "user", "content": "hello there"}]
