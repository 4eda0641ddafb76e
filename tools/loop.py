"""The tool loop: offer a persona's tools to a solver, run the calls it asks for, answer at the end.

``ToolUsingSolver`` wraps one solver for one answer, so the chain runs it like any other
(deadlines, cancel, fall-through). Each round the model sees the tools (``Solver.plan``); the
calls it asks for are checked (listed tool, arguments valid for its schema, the user's yes for a
``confirm`` tool) and run by the executor the front end injected (the skill runs them on the
messagebus); every result or error goes back to the model as a ``tool`` message. A reply with no
calls is the answer. After ``max_rounds`` rounds the model answers once more without tools, with
the results written into the question, so any solver (and any chat template) can take them.
"""
from __future__ import annotations

import json
import time
from typing import Any, Dict, Iterator, List, Mapping, Optional, Protocol, Sequence

from ovos_utils.log import LOG

from ..solvers.base import CancelToken, ChatMessage, Role, Solver, ToolCall, ToolPlan
from .spec import TOOLBOX, ToolError, ToolSettings, ToolSpec, check_arguments

__all__ = ["ToolExecutor", "ToolUsingSolver", "WrappedSolver", "flatten_tool_messages"]


class ToolExecutor(Protocol):
    """What runs tools: the skill's bus executor in production. ``context`` is the front end's."""

    def run(self, context: Any, spec: ToolSpec, arguments: Mapping[str, Any], cancel: CancelToken) -> Any:
        """Run one validated call; return a JSON-able result or raise ``ToolError``."""

    def confirm(self, context: Any, spec: ToolSpec, arguments: Mapping[str, Any], cancel: CancelToken) -> bool:
        """Ask the user whether to run a ``confirm`` tool; True only on a yes."""

    def discover(self, context: Any, toolbox: ToolSpec, cancel: CancelToken) -> List[ToolSpec]:
        """Return the tools a toolbox announces (empty when it is silent within its timeout)."""


def _result_text(result: Any, limit: int) -> str:
    text = result if isinstance(result, str) else json.dumps(result, ensure_ascii=False, default=str)
    if len(text) > limit:
        return text[:limit] + f" ... [cut: {len(text) - limit} more characters]"
    return text


def flatten_tool_messages(messages: Sequence[ChatMessage]) -> List[ChatMessage]:
    """Return the chat with tool exchanges written into the last user message as plain text.

    For the last answer, asked without tools: every chat template takes system/user/assistant
    turns, not every one takes tool roles.
    """
    notes: List[str] = []
    names: Dict[str, str] = {}
    plain: List[ChatMessage] = []
    for message in messages:
        if message.role is Role.ASSISTANT and message.tool_calls:
            for call in message.tool_calls:
                names[call.id] = f"{call.name}({call.arguments})"
            continue
        if message.role is Role.TOOL:
            notes.append(f"- {names.get(message.tool_call_id, 'a tool')}: {message.content}")
            continue
        plain.append(message)
    if not notes:
        return plain
    for index in range(len(plain) - 1, -1, -1):
        if plain[index].role is Role.USER:
            text = (f"{plain[index].content}\n\nResults of the tools you used (answer the question "
                    f"with them; do not call tools):\n" + "\n".join(notes))
            plain[index] = ChatMessage(Role.USER, text)
            break
    return plain


class WrappedSolver(Solver):
    """A solver standing in for ``inner`` for one answer: same id and capabilities, same caches."""

    def __init__(self, inner: Solver) -> None:
        super().__init__(inner.config, inner.context)
        self.inner = inner
        self.solver_id = inner.solver_id
        self.supports_history = inner.supports_history
        self.supported_langs = inner.supported_langs
        self.supports_tools = inner.supports_tools
        self.reports_start = inner.reports_start  # a local model behind tools keeps its start clock

    def plan(self, messages: Sequence[ChatMessage], tools, *, lang: str, cancel: CancelToken,
             conversation_id: str = "", required: bool = False) -> ToolPlan:
        """Delegated to the wrapped solver."""
        extra = {"required": True} if required else {}  # solvers without the keyword still serve "auto"
        return self.inner.plan(messages, tools, lang=lang, cancel=cancel, conversation_id=conversation_id, **extra)

    def forget(self, conversation_id: str) -> None:
        self.inner.forget(conversation_id)


class ToolUsingSolver(WrappedSolver):
    """One answer of ``inner`` with the persona's tools; ``used`` lists what ran, for memory."""

    def __init__(self, inner: Solver, settings: ToolSettings, executor: ToolExecutor, context: Any) -> None:
        super().__init__(inner)
        self.settings = settings
        self.executor = executor
        self.tool_context = context
        #: "name: outcome" per call, in order
        self.used: List[str] = []

    def note(self) -> str:
        """One line naming the tools used and how each went ("" when none ran)."""
        return f"(tools used: {'; '.join(self.used)})" if self.used else ""

    def stream(self, messages: Sequence[ChatMessage], *, lang: str, cancel: CancelToken,
               conversation_id: str = "") -> Iterator[str]:
        tools = self._tools(cancel)
        if not tools or self.settings.max_rounds == 0:
            yield from self.inner.stream(messages, lang=lang, cancel=cancel, conversation_id=conversation_id)
            return
        chat = list(messages)
        definitions = [spec.definition() for spec in tools.values()]
        for _ in range(self.settings.max_rounds):
            plan: ToolPlan = self.inner.plan(chat, definitions, lang=lang, cancel=cancel,
                                             conversation_id=conversation_id)
            if cancel.cancelled:
                return
            if not plan.calls:
                if plan.text.strip():
                    yield plan.text
                    return
                break  # neither text nor calls: ask once more, plainly
            chat.append(ChatMessage(Role.ASSISTANT, plan.text, tool_calls=plan.calls))
            for call in plan.calls:
                result = self._run(call, tools, cancel)
                if cancel.cancelled:
                    return
                chat.append(ChatMessage(Role.TOOL, result, tool_call_id=call.id))
        else:
            LOG.info(f"{self.solver_id}: still calling tools after {self.settings.max_rounds} rounds; "
                     f"asking for an answer without them")
        yield from self.inner.stream(flatten_tool_messages(chat), lang=lang, cancel=cancel,
                                     conversation_id=conversation_id)

    def _tools(self, cancel: CancelToken) -> Dict[str, ToolSpec]:
        """The persona's tools by name, each toolbox replaced by the tools it announces now."""
        tools: Dict[str, ToolSpec] = {}
        for spec in self.settings.tools:
            if spec.kind != TOOLBOX:
                tools[spec.name] = spec
                continue
            try:
                announced = self.executor.discover(self.tool_context, spec, cancel)
            except ToolError as err:
                LOG.warning(f"toolbox {spec.toolbox}: {err}")
                continue
            for tool in announced:
                name = tool.name if tool.name not in tools else f"{spec.toolbox}_{tool.name}"[:64]
                tools[name] = ToolSpec(name, TOOLBOX, tool.description, tool.parameters, toolbox=tool.toolbox,
                                       timeout=tool.timeout, confirm=tool.confirm, message=tool.name)
        return tools

    def _run(self, call: ToolCall, tools: Mapping[str, ToolSpec], cancel: CancelToken) -> str:
        """Run one call; return the text the model gets back (the result, or an error it can act on)."""
        started = time.monotonic()
        spec: Optional[ToolSpec] = tools.get(call.name)
        try:
            if spec is None:
                raise ToolError(f"there is no tool called {call.name[:64]!r}; the tools are: "
                                f"{', '.join(sorted(tools))}")
            arguments = check_arguments(spec, call.arguments)
            if spec.confirm and not self.executor.confirm(self.tool_context, spec, arguments, cancel):
                raise ToolError("the user did not allow this call")
            result = self.executor.run(self.tool_context, spec, arguments, cancel)
            text, outcome = _result_text(result, self.settings.result_chars), "ok"
        except ToolError as err:
            text, outcome = f"error: {err}", f"error: {err}"
        elapsed = time.monotonic() - started
        name = spec.name if spec is not None else call.name[:64]
        self.used.append(f"{name}: {outcome[:120]}")
        # the outcome, never the arguments: they may hold what the user said
        LOG.info(f"tool {name} ({spec.kind if spec else 'unknown'}) -> {outcome[:200]} in {elapsed:.2f} s")
        return text
