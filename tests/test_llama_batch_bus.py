"""Four sessions ask one local persona at once on the real messagebus + ovos-core (issue 14).

The persona answers with SmolLM2-135M-Instruct and ``parallel: 4``: the four questions are decoded
together on one model. Each session must hear exactly what it hears when it asks alone (one fixed
seed, so the same question gets the same answer; batching must not mix or change anything), and
every question must be answered.
"""
from __future__ import annotations

import threading
from typing import Dict, List

import pytest

from llama_fixtures import smollm2_path

from ovos_skill_persona_fallback.ovos_stack import SKILL_ID, OVOSStack, spoken

pytestmark = pytest.mark.slow

PERSONA = """\
name: Quartet
lang: en-us
system_prompt: You are {name}, a friendly voice assistant. Answer in one or two short sentences.
solvers: [llama-cpp, failure]
llama-cpp: {model: '%s', n_ctx: 1024, parallel: 4}
generation: {temperature: 0.8, seed: 11, max_tokens: 32}
"""
QUESTIONS = ["tell me something about the moon", "what should I cook tonight",
             "how do I stay calm before an exam", "why is the sky blue"]


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    personas = tmp_path_factory.mktemp("quartet")
    (personas / "quartet.yaml").write_text(PERSONA % smollm2_path())
    settings = {"persona_dirs": [str(personas)], "default_persona": "Quartet", "thinking_delay": 60}
    with OVOSStack(skill_settings=settings, skills=(SKILL_ID,), timeout=90) as running:
        yield running


def test_four_sessions_at_once_hear_what_each_would_hear_alone(stack):
    alone = [" ".join(spoken(stack.ask(q, session_id=f"alone-{n}", timeout=120))) for n, q in enumerate(QUESTIONS)]
    assert all(alone) and len(set(alone)) == len(QUESTIONS), alone
    heard: Dict[int, List[str]] = {}

    def ask(number: int) -> None:
        heard[number] = spoken(stack.ask(QUESTIONS[number], session_id=f"together-{number}", timeout=120))

    threads = [threading.Thread(target=ask, args=(n,)) for n in range(len(QUESTIONS))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(150)
    assert [" ".join(heard.get(n, [])) for n in range(len(QUESTIONS))] == alone
