"""Function calling with llama-cpp: the model's own tool template, chatml-function-calling, cancel,
the KV transcript afterwards, the tool loop through the engine, and SmolLM2's real tokenizer.

The tiny model has random weights: where a test needs a known call, a ``Llama`` subclass forces it
(a grammar for the template path, ``logit_bias`` for the generic path's choice); the arguments are
then fixed by the solver's own schema grammar (a one-value enum)."""
from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any, List

import llama_cpp
import pytest
from llama_cpp.llama_grammar import LlamaGrammar

from llama_fixtures import CountingFactory, ask, conversation_id, make_solver, smollm2  # noqa: F401
from tiny_gguf import write_tiny_gguf
from ovos_skill_persona_fallback.engine import PersonaEngine
from ovos_skill_persona_fallback.memory import ConversationMemory
from ovos_skill_persona_fallback.persona import Persona
from ovos_skill_persona_fallback.solvers.base import (CancelToken, ChatMessage, GenerationSettings, Role,
                                                      ToolCall, ToolDefinition, ToolPlan)
from ovos_skill_persona_fallback.solvers.llama_tools import MAX_CALLS, parse_tool_calls, template_takes_tools
from ovos_skill_persona_fallback.solvers.llamacpp import LlamaCppSolver
from ovos_skill_persona_fallback.tools import ToolSettings, ToolSpec

LOOKUP = ToolDefinition("lookup", "Look a city up",
                        {"type": "object", "properties": {"city": {"type": "string", "enum": ["Paris"]}},
                         "required": ["city"]})
CHAT = [ChatMessage(Role.SYSTEM, "you are a friendly voice assistant"),
        ChatMessage(Role.USER, "what's the weather like in paris")]
# a tiny template that declares tools, Hermes-style
TOOLS_TEMPLATE = (
    "{{ bos_token }}"
    "{% if tools %}{{ '<|system|>\nTools:' }}{% for tool in tools %}{{ ' ' + tool.function.name }}{% endfor %}"
    "{{ '<|end|>\n' }}{% endif %}"
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>\n' + (message['content'] or '') + '<|end|>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
)
FORCED_REPLY = 'ok <tool_call>{"name": "lookup", "arguments": {"city": "Paris"}}</tool_call>'


@pytest.fixture(scope="module")
def tools_gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_gguf(tmp_path_factory.mktemp("tiny-tools") / "tools.gguf", n_ctx=2048,
                           chat_template=TOOLS_TEMPLATE)


@pytest.fixture(scope="module")
def plain_gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_gguf(tmp_path_factory.mktemp("tiny-plain") / "plain.gguf", n_ctx=2048)


class GrammarLlama(llama_cpp.Llama):
    """Generates exactly ``FORCED_REPLY`` (a grammar on every ``generate``)."""

    def generate(self, tokens, **kwargs):
        kwargs["grammar"] = LlamaGrammar.from_string(f"root ::= {json.dumps(FORCED_REPLY)}", verbose=False)
        return super().generate(tokens, **kwargs)


class BiasedLlama(llama_cpp.Llama):
    """Pushes the generic format's choice: ``prefer`` 'f' (functions.) or 'm' (message:); the
    follow-up choice goes to the end marker ('<'), so one call is made."""

    prefer = "f"
    decodes: List[str] = []

    def create_completion(self, prompt, **kwargs):
        type(self).decodes.append(prompt)
        bias = {}
        for token in range(self.n_vocab()):
            piece = self.detokenize([token])
            if piece.startswith(self.prefer.encode()):
                bias[token] = 40.0
            elif piece.startswith(b"<"):
                bias[token] = 80.0
        kwargs["logit_bias"] = bias
        return super().create_completion(prompt, **kwargs)


class MessageLlama(BiasedLlama):
    prefer = "m"


@pytest.mark.parametrize("text,expected", [
    # (the model's reply, the plan read from it)
    ('<tool_call>{"name": "lookup", "arguments": {"city": "Paris"}}</tool_call>',
     ("", [("lookup", '{"city": "Paris"}')])),
    # text around the call is kept; string arguments pass through as they are
    ('Let me check.\n<tool_call>\n{"name": "a", "arguments": "{\\"x\\": 1}"}\n</tool_call>',
     ("Let me check.", [("a", '{"x": 1}')])),
    # a call cut by the end of turn (no closing tag) still counts
    ('<tool_call>{"name": "b", "arguments": {}}', ("", [("b", "{}")])),
    # unreadable JSON and a block without a name are dropped
    ('<tool_call>{"name": </tool_call><tool_call>{"arguments": {}}</tool_call>', ("", [])),
    ("just words", ("just words", [])),
])
def test_tool_call_blocks_are_parsed(text, expected):
    plan = parse_tool_calls(text)
    assert (plan.text, [(call.name, call.arguments) for call in plan.calls]) == expected
    assert all(call.id.startswith("call_") for call in plan.calls)
    assert len({call.id for call in plan.calls}) == len(plan.calls)


def test_calls_per_reply_are_capped():
    text = "".join(f'<tool_call>{{"name": "t{i}", "arguments": {{}}}}</tool_call>' for i in range(MAX_CALLS + 3))
    assert [call.name for call in parse_tool_calls(text).calls] == [f"t{i}" for i in range(MAX_CALLS)]


def test_a_template_that_declares_tools_renders_them_and_the_call_is_read(tools_gguf):
    solver = make_solver(tools_gguf, llama_factory=CountingFactory(GrammarLlama), max_tokens=200)
    cancel = CancelToken()
    plan = solver.plan(CHAT, [LOOKUP], lang="en", cancel=cancel, conversation_id=conversation_id("tpl"))
    model = solver.loaded_model
    assert template_takes_tools(model)
    assert plan.text == "ok"
    assert [(c.name, json.loads(c.arguments)) for c in plan.calls] == [("lookup", {"city": "Paris"})]
    assert cancel.started, "the plan says when it holds the model"
    assert b"Tools: lookup<|end|>" in model.live.text, "the tools were rendered by the model's template"
    assert solver.last_stats["finish_reason"] == "stop"


def test_the_tool_result_goes_back_through_the_template(tools_gguf):
    solver = make_solver(tools_gguf, llama_factory=CountingFactory(GrammarLlama), max_tokens=200)
    chat = CHAT + [ChatMessage(Role.ASSISTANT, "", tool_calls=(ToolCall("c1", "lookup", '{"city": "Paris"}'),)),
                   ChatMessage(Role.TOOL, "sunny and 21 degrees", tool_call_id="c1")]
    solver.plan(chat, [LOOKUP], lang="en", cancel=CancelToken(), conversation_id=conversation_id("tpl"))
    assert b"<|tool|>\nsunny and 21 degrees<|end|>\n<|assistant|>\n" in solver.loaded_model.live.text


def test_the_generic_format_decodes_a_call_and_leaves_the_cache_unknown(plain_gguf):
    BiasedLlama.decodes = []
    solver = make_solver(plain_gguf, llama_factory=CountingFactory(BiasedLlama))
    conversation = conversation_id("generic")
    ask(solver, CHAT, conversation)  # the cache now holds this conversation
    assert solver.loaded_model.live is not None
    plan = solver.plan(CHAT, [LOOKUP], lang="en", cancel=CancelToken(), conversation_id=conversation)
    assert not template_takes_tools(solver.loaded_model)
    assert plan.text == ""
    assert [(c.name, json.loads(c.arguments)) for c in plan.calls] == [("lookup", {"city": "Paris"})]
    # the choice, the arguments, the follow-up choice; all on the library's function-calling prompt
    assert len(BiasedLlama.decodes) == 3
    assert "functions.lookup:\n" in BiasedLlama.decodes[0]
    assert "<|im_start|>user\nwhat's the weather like in paris<|im_end|>" in BiasedLlama.decodes[0], \
        "the text reaches the model unescaped"
    assert BiasedLlama.decodes[1].endswith("<|im_start|>assistant\nfunctions.lookup:\n")
    assert solver.loaded_model.live is None, "create_completion moved the cache: the transcript is unknown"
    answer = "".join(ask(solver, CHAT, conversation))
    assert answer and solver.last_stats["completion_tokens"] == 12, "the next answer runs normally"


def test_the_generic_format_choosing_a_message_returns_an_empty_plan(plain_gguf):
    MessageLlama.decodes = []
    solver = make_solver(plain_gguf, llama_factory=CountingFactory(MessageLlama))
    plan = solver.plan(CHAT, [LOOKUP], lang="en", cancel=CancelToken(), conversation_id=conversation_id("msg"))
    assert plan == ToolPlan()
    assert len(MessageLlama.decodes) == 1, "no arguments decoded after 'message:'"


def test_required_takes_the_message_choice_away(plain_gguf):
    MessageLlama.decodes = []
    solver = make_solver(plain_gguf, llama_factory=CountingFactory(MessageLlama))
    plan = solver.plan(CHAT, [LOOKUP], lang="en", cancel=CancelToken(), conversation_id=conversation_id("req"),
                       required=True)
    assert [(c.name, json.loads(c.arguments)) for c in plan.calls] == [("lookup", {"city": "Paris"})]


def test_tool_results_reach_the_generic_prompt_as_user_turns(plain_gguf):
    BiasedLlama.decodes = []
    solver = make_solver(plain_gguf, llama_factory=CountingFactory(BiasedLlama))
    chat = CHAT + [ChatMessage(Role.ASSISTANT, "", tool_calls=(ToolCall("c9", "lookup", '{"city": "Paris"}'),)),
                   ChatMessage(Role.TOOL, "sunny", tool_call_id="c9")]
    solver.plan(chat, [LOOKUP], lang="en", cancel=CancelToken(), conversation_id=conversation_id("res"))
    assert ('<|im_start|>assistant\nfunctions.lookup:\n{"city": "Paris"}<|im_end|>\n'
            '<|im_start|>user\nResult of functions.lookup:\nsunny<|im_end|>\n') in BiasedLlama.decodes[0]


class CancellingLlama(llama_cpp.Llama):
    """Cancels ``token`` after a few sampled tokens of any decode."""

    token: CancelToken = CancelToken()
    sampled = 0

    def sample(self, *args, **kwargs):
        type(self).sampled += 1
        if type(self).sampled == 3:
            type(self).token.cancel()
        return super().sample(*args, **kwargs)


@pytest.mark.parametrize("template", ["tools", "plain"])
def test_cancel_stops_a_plan_part_way(template, tools_gguf, plain_gguf):
    CancellingLlama.token, CancellingLlama.sampled = CancelToken(), 0
    path = tools_gguf if template == "tools" else plain_gguf
    # a free string argument: without the cancel the arguments run to max_tokens
    free = ToolDefinition("note", "Write a note", {"type": "object", "properties": {"text": {"type": "string"}}})
    solver = make_solver(path, llama_factory=CountingFactory(CancellingLlama), max_tokens=200)
    plan = solver.plan(CHAT, [free], lang="en", cancel=CancellingLlama.token,
                       conversation_id=conversation_id("cancel"))
    assert plan == ToolPlan()
    assert CancellingLlama.sampled <= 4, "no more than a token after the cancel"


def test_a_plan_waits_for_the_model_lock_and_a_cancel_frees_it(plain_gguf):
    solver = make_solver(plain_gguf, llama_factory=CountingFactory(BiasedLlama))
    solver.prepare()
    model = solver.loaded_model
    holder = CancelToken()
    assert model.lock.acquire(holder)
    try:
        cancel, result = CancelToken(), []
        worker = threading.Thread(target=lambda: result.append(
            solver.plan(CHAT, [LOOKUP], lang="en", cancel=cancel, conversation_id="w")))
        worker.start()
        worker.join(0.3)
        assert worker.is_alive() and not cancel.started, "the plan waits its turn on the model"
        cancel.cancel()
        worker.join(10)
        assert result == [ToolPlan()]
    finally:
        model.lock.release()


class LookupExecutor:
    """Runs ``lookup`` and records its calls (the skill's bus executor in production)."""

    def __init__(self) -> None:
        self.ran: List[Any] = []

    def run(self, context, spec, arguments, cancel):
        self.ran.append((context, spec.name, dict(arguments)))
        return {"sky": "sunny"}

    def confirm(self, context, spec, arguments, cancel):
        return False

    def discover(self, context, toolbox, cancel):
        return []


def test_the_engine_runs_a_local_models_call_and_it_answers(tools_gguf, tmp_path):
    class OnceLlama(llama_cpp.Llama):
        """Forces the call on the first generation only; then answers freely."""

        forced = 0

        def generate(self, tokens, **kwargs):
            if OnceLlama.forced == 0:
                OnceLlama.forced += 1
                kwargs["grammar"] = LlamaGrammar.from_string(f"root ::= {json.dumps(FORCED_REPLY)}",
                                                             verbose=False)
            return super().generate(tokens, **kwargs)

    factory = CountingFactory(OnceLlama)
    spec = ToolSpec("lookup", "bus", LOOKUP.description, LOOKUP.parameters, message="city.lookup")
    persona = Persona(name="Tiny", solvers=("llama-cpp",), system_prompt="You are Tiny.",
                      solver_configs={"llama-cpp": {"model": str(tools_gguf), "n_ctx": 1024, "n_threads": 1}},
                      generation=GenerationSettings(max_tokens=80, seed=3), tools=ToolSettings((spec,), 2))
    engine = PersonaEngine(include_shipped=False, memory=ConversationMemory(tmp_path / "m.db"),
                           known_solvers=None, default_persona="Tiny",
                           solver_factory=lambda sid, config, context: LlamaCppSolver(config, context,
                                                                                       llama_factory=factory))
    engine.add_persona(persona)
    executor = engine.tool_executor = LookupExecutor()
    try:
        answer = engine.ask("weather in paris?", session_id="s1", tool_context="the bus request")
        assert executor.ran == [("the bus request", "lookup", {"city": "Paris"})]
        assert answer.text, "the model answered after the call"
        assert answer.result.solver_id == "llama-cpp"
        [run] = answer.tool_runs
        assert run.used == ["lookup: ok"]
        # the second round saw the result through the model's template
        live = run.inner.loaded_model.live
        assert b'<|tool|>\n{"sky": "sunny"}<|end|>' in live.text
    finally:
        engine.close()


@pytest.mark.slow
def test_smollm2_offers_tools_through_the_generic_format(smollm2):  # noqa: F811
    solver = make_solver(smollm2, n_ctx=2048, max_tokens=40)
    weather = ToolDefinition("get_weather", "Get the weather in a city",
                             {"type": "object", "properties": {"city": {"type": "string", "maxLength": 20}},
                              "required": ["city"]})
    cancel = CancelToken()
    conversation = conversation_id("smol")
    plan = solver.plan([ChatMessage(Role.SYSTEM, "You can call functions."),
                        ChatMessage(Role.USER, "What is the weather in Paris?")], [weather], lang="en",
                       cancel=cancel, conversation_id=conversation)
    assert cancel.started
    assert not template_takes_tools(solver.loaded_model), "SmolLM2's template has no tools"
    assert plan.text == ""
    for call in plan.calls:  # whatever it chose, every call names the tool and fits its schema
        assert call.name == "get_weather"
        assert isinstance(json.loads(call.arguments)["city"], str)
    assert solver.loaded_model.live is None
    assert "".join(ask(solver, CHAT, conversation)), "a plain answer follows on the same model"


def test_an_http_client_gets_the_local_models_call(plain_gguf, tmp_path):
    """The server passes a client's tools to llama-cpp (generic format) and returns its call, whole
    and streamed, through the official SDK."""
    pytest.importorskip("fastapi")
    openai = pytest.importorskip("openai")
    from ovos_skill_persona_fallback.server.app import create_app
    from ovos_skill_persona_fallback.server.auth import KeyRing
    from ovos_skill_persona_fallback.server.run import ServerThread

    factory = CountingFactory(BiasedLlama)
    persona = Persona(name="Tiny", solvers=("llama-cpp",), system_prompt="You are Tiny.",
                      solver_configs={"llama-cpp": {"model": str(plain_gguf), "n_ctx": 1024, "n_threads": 1}},
                      generation=GenerationSettings(max_tokens=16, seed=7))
    engine = PersonaEngine(include_shipped=False, memory=ConversationMemory(tmp_path / "m.db"),
                           known_solvers=None, default_persona="Tiny",
                           solver_factory=lambda sid, config, context: LlamaCppSolver(config, context,
                                                                                       llama_factory=factory))
    engine.add_persona(persona)
    thread = ServerThread(create_app(engine, KeyRing(["sk-tools-test-0123456789"]))).start()
    try:
        client = openai.OpenAI(base_url=f"{thread.url}/v1", api_key="sk-tools-test-0123456789", max_retries=0)
        BiasedLlama.decodes = []
        reply = client.chat.completions.create(model="Tiny", messages=[{"role": "user", "content": "paris?"}],
                                               tools=[LOOKUP.as_openai()])
        [call] = reply.choices[0].message.tool_calls
        assert (call.function.name, json.loads(call.function.arguments)) == ("lookup", {"city": "Paris"})
        assert reply.choices[0].finish_reason == "tool_calls" and reply.choices[0].message.content is None
        assert "functions.lookup:" in BiasedLlama.decodes[0] and "You are Tiny." in BiasedLlama.decodes[0]
        chunks = list(client.chat.completions.create(
            model="Tiny", messages=[{"role": "user", "content": "paris?"}], tools=[LOOKUP.as_openai()], stream=True))
        [delta] = [d for c in chunks if c.choices and c.choices[0].delta.tool_calls
                   for d in c.choices[0].delta.tool_calls]
        assert (delta.index, delta.function.name, json.loads(delta.function.arguments)) == \
            (0, "lookup", {"city": "Paris"})
        assert delta.id.startswith("call_")
        assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == \
            ["tool_calls"]
    finally:
        thread.stop()
        engine.close()
