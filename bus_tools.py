"""The skill's tool executor: runs a persona's tools on the messagebus, in the asking session.

Part of the skill (only ``__init__.py`` builds it and hands it to the engine as
``engine.tool_executor``), so the rule holds: nothing below the skill touches the bus. Every
message it emits is derived from the request that asked, so it carries that session and reaches
the same satellite.

- ``bus`` tools emit their allow-listed message with the checked arguments as data and wait for
  the reply type, up to the tool's timeout.
- The ``assistant`` tool hands a command to the OVOS intent pipeline as a new utterance of the
  same session, marked so that this skill's fallback declines it (no loops), and reports what the
  assistant said and whether a skill handled it.
- ``toolbox`` tools follow OVOS-TOOLS-1: ``ovos.persona.tools.discover`` / ``.call`` with the
  toolbox id in the data; a silent toolbox is a timeout, not a hang.
- ``confirm`` tools ask the user first (in the session's language), with the framework's
  get_response and its yes/no parser.
"""
from __future__ import annotations

import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional

from ovos_bus_client.message import Message
from ovos_utils.log import LOG
from ovos_yes_no_solver import YesNoSolver

from .languages import random_dialog
from .solvers.base import CancelToken
from .tools import ASSISTANT, BUS, TOOLBOX, ToolError, ToolSpec, toolbox_specs

#: context key marking an utterance the assistant tool sent; the fallback declines such utterances
TOOL_MARKER = "persona_fallback_tool"
#: a toolbox that has not answered ``discover`` within this many seconds is silent
DISCOVER_SECONDS = 2.0
_SLICE = 0.05


@dataclass(frozen=True)
class ToolRequest:
    """The tool context the skill hands the engine: the request message and its session's language."""

    message: Message
    lang: str
    session_id: str


def _session_of(message: Message) -> str:
    session = message.context.get("session") if isinstance(message.context, dict) else None
    return session.get("session_id", "") if isinstance(session, dict) else ""


class _Waiter:
    """Collects bus messages of some types that match, until one of them ends the wait."""

    def __init__(self, bus: Any, types: Iterable[str], keep: Callable[[Message], bool],
                 done: Callable[[Message], bool]) -> None:
        self.bus, self.types, self.keep, self.done = bus, list(dict.fromkeys(types)), keep, done
        self.seen: List[Message] = []
        self._event = threading.Event()
        self._lock = threading.Lock()

    def _on(self, message: Message) -> None:
        if not self.keep(message):
            return
        with self._lock:
            self.seen.append(message)
        if self.done(message):
            self._event.set()

    def __enter__(self) -> "_Waiter":
        for msg_type in self.types:
            self.bus.on(msg_type, self._on)
        return self

    def __exit__(self, *exc_info: Any) -> None:
        for msg_type in self.types:
            self.bus.remove(msg_type, self._on)

    def wait(self, timeout: float, cancel: CancelToken) -> bool:
        """True once done; False on timeout; raises ``ToolError`` on cancel."""
        deadline = time.monotonic() + timeout
        while not self._event.wait(min(_SLICE, max(0.0, deadline - time.monotonic()))):
            if cancel.cancelled:
                raise ToolError("stopped")
            if time.monotonic() >= deadline:
                return False
        return True


class BusToolExecutor:
    """Runs tools for the skill; ``emit`` sends a message, ``outgoing`` cleans a request to reply from."""

    def __init__(self, bus: Any, skill_id: str, outgoing: Callable[[Message], Message],
                 say: Callable[[Message, str, str], None],
                 get_response: Callable[[Message], Optional[str]]) -> None:
        self.bus = bus
        self.skill_id = skill_id
        self._outgoing = outgoing
        self._say = say
        self._get_response = get_response

    # -- the executor contract (tools.loop.ToolExecutor) ---------------------------------------

    def run(self, context: ToolRequest, spec: ToolSpec, arguments: Mapping[str, Any], cancel: CancelToken) -> Any:
        """Run one checked call; return its result or raise ``ToolError``."""
        if spec.kind == BUS:
            return self._bus_tool(context, spec, arguments, cancel)
        if spec.kind == ASSISTANT:
            return self._assistant(context, spec, str(arguments.get("command", "")), cancel)
        if spec.kind == TOOLBOX:
            return self._toolbox_call(context, spec, arguments, cancel)
        raise ToolError(f"unknown tool kind {spec.kind!r}")

    def confirm(self, context: ToolRequest, spec: ToolSpec, arguments: Mapping[str, Any],
                cancel: CancelToken) -> bool:
        """Ask the user (in the session's language) whether to run the call; True only on a yes."""
        what = str(arguments.get("command", "")) if spec.kind == ASSISTANT else spec.name
        question = random_dialog(context.lang, "tool_confirm", tool=what)
        request = self._outgoing(context.message)
        abort = cancel.on_cancel(lambda: self.bus.emit(request.forward(
            "mycroft.skills.abort_question", {"skill_id": self.skill_id})))
        try:
            self._say(request, question, context.lang)
            reply = self._get_response(request)
        finally:
            abort()
        if cancel.cancelled or not reply:
            return False
        verdict = YesNoSolver().match_yes_or_no(reply, lang=context.lang)
        LOG.info(f"tool {spec.name}: the user answered {'yes' if verdict else 'no'}")
        return verdict is True

    def discover(self, context: ToolRequest, toolbox: ToolSpec, cancel: CancelToken) -> List[ToolSpec]:
        """OVOS-TOOLS-1 discover: the tools ``toolbox`` announces, or none if it stays silent."""
        request = self._outgoing(context.message).forward("ovos.persona.tools.discover", {})
        wanted = toolbox.toolbox
        with _Waiter(self.bus, ["ovos.persona.tools.discover.response"],
                     keep=lambda m: isinstance(m.data, dict) and m.data.get("toolbox_id") == wanted,
                     done=lambda m: True) as waiter:
            self.bus.emit(request)
            if not waiter.wait(min(toolbox.timeout, DISCOVER_SECONDS), cancel):
                LOG.warning(f"toolbox {wanted} did not answer ovos.persona.tools.discover; its tools are left out")
                return []
        return toolbox_specs(toolbox, waiter.seen[0].data.get("tools"))

    # -- the three kinds -------------------------------------------------------------------------

    def _bus_tool(self, context: ToolRequest, spec: ToolSpec, arguments: Mapping[str, Any],
                  cancel: CancelToken) -> Any:
        request = self._outgoing(context.message).forward(spec.message, dict(arguments))
        session_id = _session_of(request)
        with _Waiter(self.bus, [spec.reply_type],
                     keep=lambda m: _session_of(m) in ("", session_id), done=lambda m: True) as waiter:
            self.bus.emit(request)
            if not waiter.wait(spec.timeout, cancel):
                raise ToolError(f"{spec.message} got no reply within {spec.timeout:g} s")
        return waiter.seen[0].data

    def _toolbox_call(self, context: ToolRequest, spec: ToolSpec, arguments: Mapping[str, Any],
                      cancel: CancelToken) -> Any:
        # spec.message holds the tool's own name inside its toolbox (the model may see a prefixed one)
        data = {"toolbox_id": spec.toolbox, "name": spec.message or spec.name, "kwargs": dict(arguments)}
        request = self._outgoing(context.message).forward("ovos.persona.tools.call", data)
        with _Waiter(self.bus, ["ovos.persona.tools.call.response"],
                     keep=lambda m: isinstance(m.data, dict) and m.data.get("toolbox_id") == spec.toolbox,
                     done=lambda m: True) as waiter:
            self.bus.emit(request)
            if not waiter.wait(spec.timeout, cancel):
                raise ToolError(f"toolbox {spec.toolbox} did not answer within {spec.timeout:g} s")
        reply: Dict[str, Any] = waiter.seen[0].data
        if "error" in reply:
            raise ToolError(f"toolbox {spec.toolbox}: {reply['error']}")
        return reply.get("result")

    def _assistant(self, context: ToolRequest, spec: ToolSpec, command: str, cancel: CancelToken) -> Any:
        if not command.strip():
            raise ToolError("the command is empty")
        marker = uuid.uuid4().hex
        base = self._outgoing(context.message)
        utterance = Message("recognizer_loop:utterance", {"utterances": [command], "lang": context.lang},
                            dict(base.context))
        utterance.context[TOOL_MARKER] = marker
        utterance.context.pop("skill_id", None)
        ends = ("ovos.utterance.handled", "complete_intent_failure")
        with _Waiter(self.bus, ["speak", "mycroft.skill.handler.start", *ends],
                     keep=lambda m: isinstance(m.context, dict) and m.context.get(TOOL_MARKER) == marker,
                     done=lambda m: m.msg_type in ends) as waiter:
            self.bus.emit(utterance)
            finished = waiter.wait(spec.timeout, cancel)
        spoken = [m.data.get("utterance", "") for m in waiter.seen if m.msg_type == "speak"]
        handled = (any(m.msg_type == "mycroft.skill.handler.start" for m in waiter.seen)
                   and not any(m.msg_type == "complete_intent_failure" for m in waiter.seen))
        if not finished and not spoken:
            raise ToolError(f"the assistant did not finish {command!r} within {spec.timeout:g} s")
        return {"handled": handled, "spoken": spoken}


def is_tool_utterance(message: Message) -> bool:
    """True for an utterance the assistant tool sent (the fallback must not answer it again)."""
    return isinstance(message.context, dict) and bool(message.context.get(TOOL_MARKER))

