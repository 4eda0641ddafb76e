"""The tool loop through the engine: what the model is offered, what runs, what it gets back,
what is said and what is remembered. The executor here is a plain object (the skill's bus
executor is tested on the real bus in test_tools_bus.py)."""
from __future__ import annotations

import json
import threading
from typing import Any, Dict, List, Mapping, Tuple

import pytest

from conftest import make_persona
from ovos_skill_persona_fallback.persona import PersonaError, parse_persona
from ovos_skill_persona_fallback.solvers.base import (ChatMessage, Role, ToolCall,
                                                      ToolDefinition, ToolPlan)
from ovos_skill_persona_fallback.tools import (ToolError, ToolSettings, ToolSpec, check_arguments,
                                               flatten_tool_messages, parse_tools)

WEATHER = ToolSpec("weather", "bus", "The weather in a city",
                   {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
                   message="weather.query")
ALARM = ToolSpec("alarm", "bus", "Set an alarm", {"type": "object", "properties": {"time": {"type": "string"}}},
                 message="alarm.set", confirm=True)


class Executor:
    """Runs tools from a table and records every call; answers confirmations from a list."""

    def __init__(self, results: Mapping[str, Any] = (), confirms: Tuple[bool, ...] = ()) -> None:
        self.results = dict(results)
        self.confirms = list(confirms)
        self.ran: List[Tuple[Any, str, Dict[str, Any]]] = []
        self.asked: List[str] = []
        self.started = threading.Event()

    def run(self, context, spec, arguments, cancel):
        self.ran.append((context, spec.name, dict(arguments)))
        self.started.set()
        result = self.results.get(spec.name)
        if result == "hang":
            cancel.wait(30)
            raise ToolError("stopped")
        if isinstance(result, ToolError):
            raise result
        return result

    def confirm(self, context, spec, arguments, cancel):
        self.asked.append(spec.name)
        return self.confirms.pop(0) if self.confirms else False

    def discover(self, context, toolbox, cancel):
        return []


def tool_persona(*tools: ToolSpec, rounds: int = 3):
    return make_persona(system_prompt="You are Ada.", tools=ToolSettings(tuple(tools), rounds))


def call(name: str, arguments: Any, call_id: str = "c1") -> ToolCall:
    return ToolCall(call_id, name, arguments if isinstance(arguments, str) else json.dumps(arguments))


def test_a_call_runs_and_the_model_answers_with_its_result(box, engine_with, memory):
    solver = box.add("scripted", supports_tools=True)
    solver.enqueue_plan(ToolPlan("", (call("weather", {"city": "Lisbon"}),)))
    solver.enqueue_plan(ToolPlan("It is sunny in Lisbon. Enjoy!"))
    engine = engine_with(tool_persona(WEATHER))
    engine.tool_executor = executor = Executor({"weather": {"sky": "sunny", "celsius": 21}})
    answer = engine.ask("How is the weather in Lisbon?", session_id="s", tool_context="the request")
    assert answer.sentences == ["It is sunny in Lisbon.", "Enjoy!"]
    assert executor.ran == [("the request", "weather", {"city": "Lisbon"})]
    assert solver.offered[0] == [ToolDefinition("weather", "The weather in a city", WEATHER.parameters)]
    assert solver.plan_calls[1].messages[-2:] == [
        ChatMessage(Role.ASSISTANT, "", tool_calls=(call("weather", {"city": "Lisbon"}),)),
        ChatMessage(Role.TOOL, '{"sky": "sunny", "celsius": 21}', tool_call_id="c1")]
    [turn] = memory.history("s", "Ada", max_turns=5)
    assert turn.answer == "It is sunny in Lisbon. Enjoy!\n(tools used: weather: ok)"
    assert solver.calls == [], "the answer came with the plan: no second generation"


@pytest.mark.parametrize("bad_call,error", [
    # (what the model asked, what it is told)
    (call("weather", {"town": "Lisbon"}), "error: invalid arguments: 'city' is a required property"),
    (call("weather", {"city": 7}), "error: invalid arguments at city: 7 is not of type 'string'"),
    (call("weather", "{not json"), "error: the arguments are not valid JSON: Expecting property name enclosed in "
                                   "double quotes: line 1 column 2 (char 1)"),
    (call("weather", "[1, 2]"), "error: the arguments must be a JSON object, not list"),
    (call("rm_rf", {}), "error: there is no tool called 'rm_rf'; the tools are: weather"),
])
def test_a_bad_call_goes_back_to_the_model_and_never_runs(box, engine_with, bad_call, error):
    solver = box.add("scripted", supports_tools=True)
    solver.enqueue_plan(ToolPlan("", (bad_call,))).enqueue_plan(ToolPlan("Sorry, I could not check."))
    engine = engine_with(tool_persona(WEATHER))
    engine.tool_executor = executor = Executor({"weather": "sunny"})
    assert engine.ask("weather?", session_id="s", tool_context="ctx").text == "Sorry, I could not check."
    assert executor.ran == []
    assert solver.plan_calls[1].messages[-1] == ChatMessage(Role.TOOL, error, tool_call_id="c1")


def test_a_failing_tool_is_an_error_for_the_model(box, engine_with, memory):
    solver = box.add("scripted", supports_tools=True)
    solver.enqueue_plan(ToolPlan("", (call("weather", {"city": "Oslo"}),))).enqueue_plan(ToolPlan("No data."))
    engine = engine_with(tool_persona(WEATHER))
    engine.tool_executor = Executor({"weather": ToolError("weather.query got no reply within 5 s")})
    assert engine.ask("weather?", session_id="s", tool_context="ctx").text == "No data."
    assert solver.plan_calls[1].messages[-1].content == "error: weather.query got no reply within 5 s"
    [turn] = memory.history("s", "Ada", max_turns=5)
    assert turn.answer == "No data.\n(tools used: weather: error: weather.query got no reply within 5 s)"


@pytest.mark.parametrize("confirms,runs,told", [
    ((True,), True, "set"),                                    # the user said yes
    ((False,), False, "error: the user did not allow this call"),  # the user said no
])
def test_confirm_tools_run_only_after_a_yes(box, engine_with, confirms, runs, told):
    solver = box.add("scripted", supports_tools=True)
    solver.enqueue_plan(ToolPlan("", (call("alarm", {"time": "7:00"}),))).enqueue_plan(ToolPlan("Done."))
    engine = engine_with(tool_persona(ALARM))
    engine.tool_executor = executor = Executor({"alarm": "set"}, confirms)
    engine.ask("wake me at 7", session_id="s", tool_context="ctx")
    assert executor.asked == ["alarm"]
    assert [name for _, name, _ in executor.ran] == (["alarm"] if runs else [])
    assert solver.plan_calls[1].messages[-1].content == told


def test_a_model_that_keeps_calling_gets_one_last_answer_without_tools(box, engine_with):
    solver = box.add("scripted", supports_tools=True)
    for number in range(5):
        solver.enqueue_plan(ToolPlan("", (call("weather", {"city": "Rome"}, f"c{number}"),)))
    solver.enqueue("Rome is warm.")
    engine = engine_with(tool_persona(WEATHER, rounds=2))
    engine.tool_executor = executor = Executor({"weather": "warm"})
    assert engine.ask("weather in Rome?", session_id="s", tool_context="ctx").text == "Rome is warm."
    assert len(solver.plan_calls) == 2 and len(executor.ran) == 2
    [final] = solver.calls
    assert final.messages == [
        ChatMessage(Role.SYSTEM, "You are Ada."),
        ChatMessage(Role.USER, "weather in Rome?\n\nResults of the tools you used (answer the question with "
                               "them; do not call tools):\n- weather({\"city\": \"Rome\"}): warm\n"
                               "- weather({\"city\": \"Rome\"}): warm")]


def test_no_tools_without_a_context_or_an_executor(box, engine_with):
    solver = box.add("scripted", supports_tools=True).enqueue("Plain.").enqueue("Plain again.")
    engine = engine_with(tool_persona(WEATHER))
    engine.tool_executor = Executor()
    assert engine.ask("q", session_id="s").text == "Plain."            # CLI/server: no tool_context
    engine.tool_executor = None
    assert engine.ask("q", session_id="t", tool_context="ctx").text == "Plain again."
    assert solver.plan_calls == []


def test_solvers_that_cannot_call_tools_answer_without_them(box, engine_with):
    solver = box.add("scripted").enqueue("No tools here.")
    engine = engine_with(tool_persona(WEATHER))
    engine.tool_executor = Executor()
    assert engine.ask("q", session_id="s", tool_context="ctx").text == "No tools here."
    assert solver.plan_calls == []


def test_stop_during_a_tool_call_ends_cleanly(box, engine_with, memory):
    solver = box.add("scripted", supports_tools=True)
    solver.enqueue_plan(ToolPlan("", (call("weather", {"city": "Paris"}),)))
    engine = engine_with(tool_persona(WEATHER))
    engine.tool_executor = executor = Executor({"weather": "hang"})
    done = {}
    thread = threading.Thread(target=lambda: done.setdefault("answer", engine.ask(
        "weather?", session_id="s", tool_context="ctx")))
    thread.start()
    assert executor.started.wait(5)
    assert engine.stop("s")
    thread.join(5)
    assert not thread.is_alive() and done["answer"].sentences == []
    assert memory.count_turns("s") == 0 and len(solver.plan_calls) == 1


def test_result_is_cut_to_the_size_limit(box, engine_with):
    solver = box.add("scripted", supports_tools=True)
    solver.enqueue_plan(ToolPlan("", (call("weather", {"city": "X"}),))).enqueue_plan(ToolPlan("Ok."))
    persona = make_persona(tools=ToolSettings((WEATHER,), 3, result_chars=10))
    engine = engine_with(persona)
    engine.tool_executor = Executor({"weather": "abcdefghijklmnopqrstuvwxyz"})
    engine.ask("q", session_id="s", tool_context="ctx")
    assert solver.plan_calls[1].messages[-1].content == "abcdefghij ... [cut: 16 more characters]"


# -- declaring tools in a persona file -------------------------------------------------------------

def test_persona_file_tools_are_parsed():
    persona = parse_persona({"name": "A", "solvers": ["failure"], "max_tool_rounds": 2, "tools": [
        {"name": "weather", "message": "weather.query", "timeout": 5, "description": "d",
         "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}},
        {"kind": "assistant", "confirm": True},
        {"kind": "toolbox", "toolbox": "wordnet"}]})
    weather, assistant, toolbox = persona.tools.tools
    assert (weather.kind, weather.message, weather.reply_type, weather.timeout) == \
        ("bus", "weather.query", "weather.query.response", 5.0)
    assert (assistant.name, assistant.confirm, assistant.parameters["required"]) == ("assistant", True, ["command"])
    assert (toolbox.kind, toolbox.toolbox) == ("toolbox", "wordnet")
    assert persona.tools.max_rounds == 2


@pytest.mark.parametrize("tools,problem", [
    ([{"name": "x"}], "tools[0].message: must name the bus message to emit, not None"),
    ([{"name": "bad name!", "message": "a.b"}], "tools[0].name: must be 1-64 letters, digits, '_' or '-', not 'bad name!'"),
    ([{"kind": "shell", "name": "x"}], "tools[0].kind: must be one of bus, assistant, toolbox, not 'shell'"),
    ([{"name": "x", "message": "a.b", "parameters": {"type": "nonsense"}}], "tools[0].parameters: is not a valid JSON schema"),
    ([{"name": "x", "message": "a.b", "timeout": -1}], "tools[0].timeout: must be a number of seconds from 0 to 600, not -1"),
    ([{"kind": "assistant"}, {"kind": "assistant"}], "tools[1]: names 'assistant' a second time"),
    ("weather", "tools: must be a list of tools"),
])
def test_bad_tool_declarations_are_specific_problems(tools, problem):
    with pytest.raises(PersonaError) as caught:
        parse_persona({"name": "A", "solvers": ["failure"], "tools": tools}, "p.yaml")
    assert any(line.startswith(f"p.yaml: {problem}") for line in caught.value.problems), caught.value.problems


def test_check_arguments_accepts_valid_and_empty():
    assert check_arguments(WEATHER, '{"city": "Lisbon"}') == {"city": "Lisbon"}
    assert check_arguments(ToolSpec("t", "bus", message="a.b"), "") == {}
    with pytest.raises(ToolError):
        check_arguments(WEATHER, "{}")


def test_parse_tools_reports_rounds():
    problems = []
    parse_tools([], 99, lambda where, what: problems.append(f"{where}: {what}"))
    assert problems == ["max_tool_rounds: must be a whole number from 0 to 20, not 99"]


def test_flatten_keeps_plain_chats_as_they_are():
    chat = [ChatMessage(Role.SYSTEM, "s"), ChatMessage(Role.USER, "q")]
    assert flatten_tool_messages(chat) == chat
