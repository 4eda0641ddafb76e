"""Tools a persona may use: how they are declared in a persona file, and their arguments checked.

A persona lists its tools; nothing else can run. Three kinds::

    tools:
      - name: weather                   # kind "bus": an allow-listed bus message
        kind: bus
        description: The weather now in a city
        parameters: {type: object, properties: {city: {type: string}}, required: [city]}
        message: weather.query          # emitted with the validated arguments as data
        reply: weather.query.response   # waited for (default: <message>.response)
        timeout: 5                      # seconds (default 10)
        confirm: false                  # true: run only after the user says yes
      - kind: assistant                 # built in: a command handed to the OVOS intent pipeline
      - kind: toolbox                   # every tool an OVOS-TOOLS-1 toolbox announces
        toolbox: wordnet
    max_tool_rounds: 3                  # rounds of calls before a last answer without tools

Arguments the model sends are checked against the tool's JSON schema (``jsonschema``) before
anything runs; a bad call goes back to the model as an error, never onto the bus.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import jsonschema

from ..solvers.base import ToolDefinition

BUS, ASSISTANT, TOOLBOX = "bus", "assistant", "toolbox"
TOOL_KINDS = (BUS, ASSISTANT, TOOLBOX)
DEFAULT_TOOL_TIMEOUT = 10.0
DEFAULT_MAX_TOOL_ROUNDS = 3
#: characters of a tool's result handed to the model; the rest is cut with a note
DEFAULT_RESULT_CHARS = 2000
EMPTY_SCHEMA: Mapping[str, Any] = {"type": "object", "properties": {}}
_NAME_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")  # what OpenAI-style function names allow
_MESSAGE_RE = re.compile(r"^[A-Za-z0-9_.:-]{1,200}$")

ASSISTANT_DESCRIPTION = ("Ask the voice assistant itself to do something: give one short command in the "
                         "user's language, as the user would say it (\"set a timer for 10 minutes\"). "
                         "Returns what the assistant said and whether a skill handled it.")
ASSISTANT_SCHEMA: Mapping[str, Any] = {
    "type": "object",
    "properties": {"command": {"type": "string", "description": "the command, as the user would say it"}},
    "required": ["command"],
}


@dataclass(frozen=True)
class ToolSpec:
    """One tool a persona may use."""

    name: str
    kind: str
    description: str = ""
    parameters: Mapping[str, Any] = field(default_factory=lambda: dict(EMPTY_SCHEMA))
    message: str = ""   # bus: the message type emitted
    reply: str = ""     # bus: the reply type waited for
    toolbox: str = ""   # toolbox: the OVOS-TOOLS-1 toolbox id
    timeout: float = DEFAULT_TOOL_TIMEOUT
    confirm: bool = False

    @property
    def reply_type(self) -> str:
        """The bus reply waited for: ``reply`` or ``<message>.response``."""
        return self.reply or f"{self.message}.response"

    def definition(self) -> ToolDefinition:
        """Return the tool as the model sees it."""
        return ToolDefinition(self.name, self.description, self.parameters)


@dataclass(frozen=True)
class ToolSettings:
    """A persona's tools and how many rounds of calls it may make."""

    tools: Tuple[ToolSpec, ...] = ()
    max_rounds: int = DEFAULT_MAX_TOOL_ROUNDS
    result_chars: int = DEFAULT_RESULT_CHARS


class ToolError(Exception):
    """A tool could not be run or did not answer; the text goes back to the model."""


def check_arguments(spec: ToolSpec, raw: str) -> Dict[str, Any]:
    """Return the call's arguments as an object valid for ``spec``; raise ``ToolError`` saying why not."""
    try:
        arguments = json.loads(raw) if raw and raw.strip() else {}
    except ValueError as err:
        raise ToolError(f"the arguments are not valid JSON: {err}") from err
    if not isinstance(arguments, dict):
        raise ToolError(f"the arguments must be a JSON object, not {type(arguments).__name__}")
    try:
        jsonschema.validate(arguments, spec.parameters)
    except jsonschema.ValidationError as err:
        where = "/".join(str(part) for part in err.absolute_path)
        raise ToolError(f"invalid arguments{' at ' + where if where else ''}: {err.message}") from err
    return arguments


def _number(value: Any, default: float, where: str, problem: Callable[[str, str], None]) -> float:
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 600:
        problem(where, f"must be a number of seconds from 0 to 600, not {value!r}")
        return default
    return float(value)


def _schema(value: Any, where: str, problem: Callable[[str, str], None]) -> Mapping[str, Any]:
    if value is None:
        return dict(EMPTY_SCHEMA)
    if not isinstance(value, Mapping):
        problem(where, "must be a JSON schema object")
        return dict(EMPTY_SCHEMA)
    try:
        jsonschema.validators.validator_for(value).check_schema(value)
    except jsonschema.SchemaError as err:
        problem(where, f"is not a valid JSON schema: {err.message}")
        return dict(EMPTY_SCHEMA)
    if value.get("type", "object") != "object":
        problem(where, "must describe an object (type: object)")
        return dict(EMPTY_SCHEMA)
    return dict(value)


def _one_tool(raw: Any, where: str, problem: Callable[[str, str], None]) -> Optional[ToolSpec]:
    if not isinstance(raw, Mapping):
        problem(where, f"must be a mapping describing one tool, not {type(raw).__name__}")
        return None
    kind = raw.get("kind", BUS)
    if kind not in TOOL_KINDS:
        problem(f"{where}.kind", f"must be one of {', '.join(TOOL_KINDS)}, not {kind!r}")
        return None
    default_name = ASSISTANT if kind == ASSISTANT else ""
    name = raw.get("name", default_name) if kind != TOOLBOX else raw.get("toolbox", "")
    if not isinstance(name, str) or not _NAME_RE.match(name):
        field_name = "toolbox" if kind == TOOLBOX else "name"
        problem(f"{where}.{field_name}", f"must be 1-64 letters, digits, '_' or '-', not {name!r}")
        return None
    description = raw.get("description", ASSISTANT_DESCRIPTION if kind == ASSISTANT else "")
    if not isinstance(description, str):
        problem(f"{where}.description", "must be text")
        description = ""
    confirm = raw.get("confirm", False)
    if not isinstance(confirm, bool):
        problem(f"{where}.confirm", f"must be true or false, not {confirm!r}")
        confirm = False
    timeout = _number(raw.get("timeout"), DEFAULT_TOOL_TIMEOUT, f"{where}.timeout", problem)
    if kind == BUS:
        message, reply = raw.get("message"), raw.get("reply", "")
        if not isinstance(message, str) or not _MESSAGE_RE.match(message):
            problem(f"{where}.message", f"must name the bus message to emit, not {message!r}")
            return None
        if reply and (not isinstance(reply, str) or not _MESSAGE_RE.match(reply)):
            problem(f"{where}.reply", f"must name a bus message type, not {reply!r}")
            return None
        return ToolSpec(name, BUS, description, _schema(raw.get("parameters"), f"{where}.parameters", problem),
                        message=message, reply=reply, timeout=timeout, confirm=confirm)
    if kind == ASSISTANT:
        return ToolSpec(name, ASSISTANT, description, dict(ASSISTANT_SCHEMA), timeout=timeout, confirm=confirm)
    return ToolSpec(name, TOOLBOX, description, dict(EMPTY_SCHEMA), toolbox=name, timeout=timeout,
                    confirm=confirm)


def parse_tools(tools: Any, max_rounds: Any, problem: Callable[[str, str], None]) -> ToolSettings:
    """Read a persona file's ``tools`` list and ``max_tool_rounds``; report problems by field."""
    if tools is None:
        tools = []
    if not isinstance(tools, Sequence) or isinstance(tools, (str, bytes)):
        problem("tools", "must be a list of tools")
        tools = []
    specs: List[ToolSpec] = []
    for index, raw in enumerate(tools):
        spec = _one_tool(raw, f"tools[{index}]", problem)
        if spec is None:
            continue
        if any(other.name == spec.name for other in specs):
            problem(f"tools[{index}]", f"names {spec.name!r} a second time")
            continue
        specs.append(spec)
    rounds = DEFAULT_MAX_TOOL_ROUNDS if max_rounds is None else max_rounds
    if isinstance(rounds, bool) or not isinstance(rounds, int) or not 0 <= rounds <= 20:
        problem("max_tool_rounds", f"must be a whole number from 0 to 20, not {max_rounds!r}")
        rounds = DEFAULT_MAX_TOOL_ROUNDS
    return ToolSettings(tuple(specs), rounds)


def toolbox_specs(toolbox: ToolSpec, announced: Any) -> List[ToolSpec]:
    """Return the tools an OVOS-TOOLS-1 discover response announces for ``toolbox`` (bad ones skipped)."""
    specs: List[ToolSpec] = []
    if not isinstance(announced, list):
        return specs
    for item in announced:
        if not isinstance(item, Mapping):
            continue
        name, schema = item.get("name"), item.get("argument_schema") or dict(EMPTY_SCHEMA)
        if not isinstance(name, str) or not _NAME_RE.match(name) or not isinstance(schema, Mapping):
            continue
        try:
            jsonschema.validators.validator_for(schema).check_schema(schema)
        except jsonschema.SchemaError:
            continue
        description = item.get("description") if isinstance(item.get("description"), str) else ""
        specs.append(ToolSpec(name, TOOLBOX, description, dict(schema), toolbox=toolbox.toolbox,
                              timeout=toolbox.timeout, confirm=toolbox.confirm))
    return specs
