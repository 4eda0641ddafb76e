"""Tools through the skill on FakeBus: a ``confirm`` tool asks the user with the framework's
get_response and its yes/no parser, in the session's language, and runs only after a yes."""
from __future__ import annotations

import json
import time

import pytest
from ovos_bus_client.message import Message
from ovos_bus_client.session import Session

from conftest import make_persona
from test_skill import REQUEST, skill_env  # noqa: F401 - skill_env is a fixture
from ovos_skill_persona_fallback import SKILL_ID
from ovos_skill_persona_fallback.languages import dialog_lines
from ovos_skill_persona_fallback.solvers.base import ToolCall, ToolPlan
from ovos_skill_persona_fallback.tools import ToolSettings, ToolSpec

ALARM = ToolSpec("alarm", "bus", "Set an alarm", {"type": "object", "properties": {"time": {"type": "string"}}},
                 message="test.alarm.set", timeout=5, confirm=True)


def _wait(rec, predicate, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = [m for m in list(rec.messages) if predicate(m)]
        if found:
            return found[0]
        time.sleep(0.01)
    raise AssertionError(f"not seen within {timeout} s: {rec.types()}")


@pytest.mark.parametrize("lang,reply,runs", [
    ("en-us", "yes please", True),
    ("en-us", "no", False),
    ("pt-pt", "sim", True),      # the yes/no parser of the session's language
    ("de-de", "nein", False),
])
def test_confirm_tool_asks_and_runs_only_on_yes(skill_env, box, lang, reply, runs):
    solver = box.add("scripted", supports_tools=True)
    solver.enqueue_plan(ToolPlan("", (ToolCall("c1", "alarm", json.dumps({"time": "7:00"})),)))
    solver.enqueue_plan(ToolPlan("Alright."))
    skill, bus, rec = skill_env(make_persona(tools=ToolSettings((ALARM,)), lang=lang))
    ran = []
    bus.on("test.alarm.set", lambda m: (ran.append(m.data), bus.emit(m.response({"ok": True}))))
    session = Session("S", lang=lang)
    bus.emit(Message(REQUEST, {"utterances": ["wake me at seven"], "lang": lang}, {"session": session.serialize()}))
    question = _wait(rec, lambda m: m.msg_type == "speak" and m.data["meta"].get("dialog") == "tool_confirm")
    assert question.data["expect_response"] is True
    assert question.data["utterance"] in [line.replace("{tool}", "alarm") for line in dialog_lines(lang, "tool_confirm")]
    _wait(rec, lambda m: m.msg_type == "skill.converse.get_response.enable")
    bus.emit(Message(f"{SKILL_ID}.converse.get_response", {"utterances": [reply], "lang": lang},
                     {"session": session.serialize()}))
    _wait(rec, lambda m: m.msg_type == "ovos.utterance.handled", timeout=30)
    assert ran == ([{"time": "7:00"}] if runs else [])
    told = solver.plan_calls[1].messages[-1].content
    assert told == ('{"ok": true}' if runs else "error: the user did not allow this call")
    assert [m.data["utterance"] for m in rec.of("speak")][-1] == "Alright."
