"""What an HTTP request adds to a question, and the token counts reported back for it."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Optional, Sequence, Tuple

from .lorebook import estimate_tokens
from .solvers.base import ChatMessage, RequestOptions, ToolDefinition


@dataclass(frozen=True)
class AnswerRequest:
    """A request's additions to a question (see ``PersonaEngine.stream``)."""

    history: Optional[Sequence[ChatMessage]] = None
    client_context: str = ""
    options: RequestOptions = field(default_factory=RequestOptions)
    raw_chunks: bool = False
    remember: bool = True
    on_admitted: Optional[Callable[[], None]] = None
    #: the front end's context for the persona's tools (the skill's bus request); None: no tools
    tool_context: Any = None
    #: an HTTP client's own tools, offered to the model; the calls go back to the client unrun
    client_tools: Tuple[ToolDefinition, ...] = ()
    #: the client's tool calls and results since its question (they follow the question)
    tool_exchange: Tuple[ChatMessage, ...] = ()
    #: the client's ``tool_choice`` asks for a call ("required", or one named function)
    tools_required: bool = False


def usage_of(options: RequestOptions, chat: Sequence[ChatMessage], text: str) -> Dict[str, Any]:
    """Return the answer's token counts: as the solver reported them, else estimated."""
    counted = options.usage
    if counted:
        prompt, completion, source = counted["prompt_tokens"], counted["completion_tokens"], counted["source"]
    else:
        prompt = sum(estimate_tokens(message.content) for message in chat)
        completion, source = estimate_tokens(text), "estimate"
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
            "source": source, "finish_reason": counted.get("finish_reason") if counted else None}
