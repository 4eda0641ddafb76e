"""Client tools: an HTTP client's own ``tools`` offered to the model, the calls handed back to the client.

OpenAI semantics: the server never runs these; a reply that asks for calls ends with them
(``finish_reason: "tool_calls"``) and the client sends the results in its next request as ``tool``
messages. The persona's own tools (``tools:`` in its file) are a different thing: they run only
where the front end gives the engine a ``tool_context`` (the skill), never from an HTTP request.
"""
from __future__ import annotations

from typing import Any, Iterator, Sequence, Tuple

from ..solvers.base import CancelToken, ChatMessage, Solver, ToolDefinition, ToolPlan
from .loop import WrappedSolver, flatten_tool_messages

__all__ = ["ClientToolsSolver"]


class ClientToolsSolver(WrappedSolver):
    """One answer of ``inner`` with a client's tools offered; calls go to ``result.tool_calls``, unrun."""

    def __init__(self, inner: Solver, tools: Sequence[ToolDefinition], result: Any, required: bool = False) -> None:
        super().__init__(inner)
        self.tools: Tuple[ToolDefinition, ...] = tuple(tools)
        #: the chain's ``ChainResult``: the calls are set on it before the stream ends
        self.result = result
        #: the client's ``tool_choice`` was "required" or named one function
        self.required = required

    def stream(self, messages: Sequence[ChatMessage], *, lang: str, cancel: CancelToken,
               conversation_id: str = "") -> Iterator[str]:
        extra = {"required": True} if self.required else {}  # solvers without the keyword still serve "auto"
        plan: ToolPlan = self.inner.plan(messages, self.tools, lang=lang, cancel=cancel,
                                         conversation_id=conversation_id, **extra)
        if cancel.cancelled:
            return
        if plan.calls:
            self.result.tool_calls = plan.calls  # before the end: the chain reads it when the stream ends
        if plan.text.strip() or plan.calls:
            if plan.text.strip():
                yield plan.text
            return
        # neither text nor calls (a local model chose a plain message): answer plainly, streamed
        yield from self.inner.stream(flatten_tool_messages(messages), lang=lang, cancel=cancel,
                                     conversation_id=conversation_id)
