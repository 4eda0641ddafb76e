"""OpenAI tool calls on the wire: assembling streamed ``tool_calls`` deltas into whole calls.

A streamed reply sends each call in pieces: the first delta of a call carries its ``index``,
``id`` and ``function.name``; later deltas with the same ``index`` carry more of
``function.arguments`` (JSON text cut anywhere). A whole reply carries ``message.tool_calls``
complete. Some servers omit ``index`` (one call per delta) or the ``id`` (one is made up, so
the tool result can still name its call). Pure functions, testable alone.
"""
from __future__ import annotations

import json
from typing import Any, Dict, List, Tuple

from .base import ToolCall

#: a model asking for more calls than this in one reply is cut here (it is looping)
MAX_CALLS_PER_REPLY = 16
#: arguments longer than this are cut (and will fail validation): no tool takes a book
MAX_ARGUMENT_CHARS = 64_000


class ToolCallAssembler:
    """Feed chat chunks or replies; ``calls()`` returns the whole calls seen so far, in order."""

    def __init__(self) -> None:
        self._calls: Dict[int, Dict[str, Any]] = {}
        self._order: List[int] = []

    def feed(self, payload: Any) -> None:
        """Take one streamed chunk or whole reply; anything without tool calls is ignored."""
        if not isinstance(payload, dict):
            return
        choices = payload.get("choices")
        if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
            return
        part = choices[0].get("delta") or choices[0].get("message")
        if not isinstance(part, dict):
            return
        calls = part.get("tool_calls")
        if isinstance(calls, list):
            for position, call in enumerate(calls):
                if isinstance(call, dict):
                    self._add(call, position)
        legacy = part.get("function_call")  # the pre-tools API: one call, no id
        if isinstance(legacy, dict):
            self._add({"index": 0, "function": legacy}, 0)

    def _add(self, call: Dict[str, Any], position: int) -> None:
        index = call.get("index")
        if isinstance(index, bool) or not isinstance(index, int):
            # no index: a new call whenever a name arrives, else more of the last one
            function = call.get("function") if isinstance(call.get("function"), dict) else {}
            if function.get("name") or not self._order:
                index = (max(self._order) + 1) if self._order else position
            else:
                index = self._order[-1]
        if index not in self._calls:
            if len(self._order) >= MAX_CALLS_PER_REPLY:
                return
            self._calls[index] = {"id": "", "name": "", "arguments": ""}
            self._order.append(index)
        entry = self._calls[index]
        if isinstance(call.get("id"), str) and call["id"]:
            entry["id"] = call["id"]
        function = call.get("function")
        if isinstance(function, dict):
            if isinstance(function.get("name"), str) and function["name"]:
                entry["name"] = function["name"]
            arguments = function.get("arguments")
            if isinstance(arguments, str) and len(entry["arguments"]) < MAX_ARGUMENT_CHARS:
                entry["arguments"] = (entry["arguments"] + arguments)[:MAX_ARGUMENT_CHARS]
            elif isinstance(arguments, dict):  # some servers send an object, not JSON text
                entry["arguments"] = json.dumps(arguments)

    def calls(self) -> Tuple[ToolCall, ...]:
        """Return the assembled calls (those that name a function), ids made up where missing."""
        out: List[ToolCall] = []
        for number, index in enumerate(self._order):
            entry = self._calls[index]
            if entry["name"]:
                out.append(ToolCall(entry["id"] or f"call_{number}", entry["name"], entry["arguments"] or "{}"))
        return tuple(out)
