"""OpenAI tool calling on the server's wire: the client's ``tools``, ``tool_choice``, tool messages,
and the ``tool_calls`` a reply hands back. Pure models and functions, testable alone.

The client runs its tools (OpenAI semantics): the server offers them to the persona's model and
returns the calls it asks for; the persona's own tools never run from an HTTP request.
"""
from __future__ import annotations

import json
from typing import Any, Dict, List, Literal, Optional, Sequence, Union

from pydantic import BaseModel, ConfigDict, Field

from ..solvers.base import ToolCall, ToolDefinition

#: tools one request may offer (OpenAI's own limit)
MAX_TOOLS = 128
#: OpenAI's rule for function names
TOOL_NAME_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"
MAX_DESCRIPTION_CHARS = 4096
MAX_SCHEMA_CHARS = 32_000


class WireFunction(BaseModel):
    """``tools[].function``: a name, a description, a JSON schema of the arguments."""

    model_config = ConfigDict(extra="allow")
    name: str = Field(..., pattern=TOOL_NAME_PATTERN)
    description: str = Field("", max_length=MAX_DESCRIPTION_CHARS)
    parameters: Optional[Dict[str, Any]] = None


class WireTool(BaseModel):
    """One entry of ``tools``; only functions exist."""

    model_config = ConfigDict(extra="allow")
    type: Literal["function"] = "function"
    function: WireFunction


class WireCalledFunction(BaseModel):
    """``tool_calls[].function`` in an assistant message: the name and the arguments as JSON text."""

    model_config = ConfigDict(extra="allow")
    name: str = Field(..., max_length=64)
    arguments: str = "{}"


class WireToolCall(BaseModel):
    """One call an earlier assistant message asked for."""

    model_config = ConfigDict(extra="allow")
    id: str = Field(..., max_length=256)
    type: Literal["function"] = "function"
    function: WireCalledFunction


class WireChosenFunction(BaseModel):
    """``tool_choice.function``."""

    name: str


class WireToolChoice(BaseModel):
    """``tool_choice`` naming one function."""

    model_config = ConfigDict(extra="allow")
    type: Literal["function"] = "function"
    function: WireChosenFunction


ToolChoice = Union[Literal["none", "auto", "required"], WireToolChoice, None]


def offered_tools(tools: Optional[Sequence[WireTool]], choice: ToolChoice) -> List[ToolDefinition]:
    """The tools to offer the model: none for ``tool_choice: "none"``, the named one for a function
    choice, else all. Raises ``ValueError`` (the caller's 400) for a schema too large or a choice
    naming no offered tool."""
    if not tools or choice == "none":
        return []
    definitions = []
    for tool in tools:
        schema = tool.function.parameters if tool.function.parameters is not None else {"type": "object",
                                                                                         "properties": {}}
        if len(json.dumps(schema)) > MAX_SCHEMA_CHARS:
            raise ValueError(f"the schema of tool {tool.function.name!r} is over {MAX_SCHEMA_CHARS} characters")
        definitions.append(ToolDefinition(tool.function.name, tool.function.description, schema))
    if isinstance(choice, WireToolChoice):
        chosen = [tool for tool in definitions if tool.name == choice.function.name]
        if not chosen:
            raise ValueError(f"tool_choice names {choice.function.name[:64]!r}, which is not in tools")
        return chosen
    return definitions


def calls_of(message_calls: Optional[Sequence[WireToolCall]]) -> tuple:
    """An assistant message's ``tool_calls`` as ``ToolCall``s."""
    return tuple(ToolCall(call.id, call.function.name, call.function.arguments) for call in message_calls or ())


def call_deltas(calls: Sequence[ToolCall]) -> List[dict]:
    """``delta.tool_calls`` entries of a streamed reply: each call whole, with its index."""
    return [{"index": index, **call.as_dict()} for index, call in enumerate(calls)]
