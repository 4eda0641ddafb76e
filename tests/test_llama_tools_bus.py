"""A local model calls a bus tool end to end: the real messagebus + ovos-core, the skill answering
with llama-cpp on the generated GGUF, a second bus client answering the tool.

The random model's choice is made certain by construction, not by a lucky seed: its vocabulary has
no word starting with "f" or "m", so under the function-calling grammar only the byte tokens "f"
and "m" can start a reply; byte tokens' logits are exactly 0 (tests/tiny_gguf.py), and the greedy
choice takes the lowest id of a tie, "f": ``functions.weather:``. The arguments are fixed by the
schema (a one-value enum); the follow-up choice ties "<" (end) before "f", so one call is made."""
from __future__ import annotations

from pathlib import Path

import pytest
from ovos_bus_client.message import Message

from llama_fixtures import llama_cpp  # noqa: F401  (a broken llama-cpp-python build fails loudly)
from test_tools_bus import ask, spoken
from tiny_gguf import DEFAULT_WORDS, write_tiny_gguf
from ovos_skill_persona_fallback.ovos_stack import SKILL_ID, OVOSStack, session_id_of

LOCALE = Path(__file__).resolve().parent.parent / "locale"

pytestmark = pytest.mark.slow

PERSONA = """\
name: Localsmith
lang: en-us
system_prompt: You are {name}.
solvers: [llama-cpp, failure]
llama-cpp: {model: '%s', n_ctx: 1024, n_threads: 1}
generation: {temperature: 0, max_tokens: 12}
max_tool_rounds: 1
tools:
  - name: weather
    description: The weather now in a city
    parameters: {type: object, properties: {city: {type: string, enum: [Lisbon]}}, required: [city]}
    message: test.local.weather
    timeout: 5
"""


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    folder = tmp_path_factory.mktemp("local-tools")
    model = write_tiny_gguf(folder / "no-f-no-m.gguf", n_ctx=2048,
                            vocab=[w for w in DEFAULT_WORDS if not w.startswith(("f", "m"))])
    personas = folder / "personas"
    personas.mkdir()
    (personas / "localsmith.yaml").write_text(PERSONA % model)
    settings = {"persona_dirs": [str(personas)], "default_persona": "Localsmith", "thinking_delay": 30}
    with OVOSStack(skill_settings=settings, skills=(SKILL_ID,), timeout=90) as running:
        yield running


def test_a_local_model_calls_a_bus_tool_and_answers(stack):
    client, seen = stack.client, []

    def weather(message: Message) -> None:
        seen.append(message)
        client.emit(message.response({"city": message.data.get("city"), "sky": "sunny"}))

    client.on("test.local.weather", weather)
    try:
        messages = ask(stack, "what is the weather in lisbon", "local-tools")
    finally:
        client.remove("test.local.weather", weather)
    [query] = seen
    assert query.data == {"city": "Lisbon"} and session_id_of(query) == "local-tools"
    said = " ".join(spoken(messages))
    # the tiny model's own words, not the failure solver's line (the next solver of the chain)
    failure_lines = (LOCALE / "en-us" / "failure.dialog").read_text().replace("{name}", "Localsmith")
    assert said and said not in failure_lines.splitlines()
    assert set(said.lower()) <= set("".join(DEFAULT_WORDS) + " .,!?'"), said
