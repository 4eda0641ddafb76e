"""OpenAI wire format: request models, their conversion to engine input, and the reply objects.

Pure functions and pydantic models only; no routes here, so each piece is testable alone.
"""
from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Dict, List, Literal, Optional, Sequence, Union

from pydantic import BaseModel, ConfigDict, Field

from ..solvers.base import ChatMessage, Role, ToolCall, ToolDefinition
from .openai_tools import (MAX_TOOLS, ToolChoice, WireTool, WireToolCall, WireToolChoice, call_deltas, calls_of,
                           offered_tools)

MAX_STOP_SEQUENCES = 16
MAX_TOKENS_LIMIT = 1 << 20
#: seeds are taken modulo this (llama.cpp takes a 32-bit seed; OpenAI clients may send any int64)
SEED_MODULUS = 1 << 32
INT64 = 1 << 63
#: roles whose messages are conversation context (appended to the persona's system prompt)
SYSTEM_ROLES = ("system", "developer")


class WireError(ValueError):
    """A request that is well-formed JSON but cannot be answered as asked (HTTP 400)."""

    def __init__(self, message: str, param: Optional[str] = None) -> None:
        super().__init__(message)
        self.param = param


class TextPart(BaseModel):
    """One part of a multi-part message; only text parts can be answered."""

    model_config = ConfigDict(extra="allow")
    type: str
    text: Optional[str] = None


class WireMessage(BaseModel):
    """One chat message as OpenAI clients send it."""

    model_config = ConfigDict(extra="allow")
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: Union[str, List[TextPart], None] = None
    name: Optional[str] = None
    #: an assistant message's calls (the client ran them) and a tool message's answer to one
    tool_calls: Optional[List[WireToolCall]] = None
    tool_call_id: Optional[str] = Field(None, max_length=256)


class StreamOptions(BaseModel):
    """``stream_options``: only ``include_usage`` is read."""

    model_config = ConfigDict(extra="allow")
    include_usage: bool = False


class Sampling(BaseModel):
    """The generation keys a request may override."""

    model_config = ConfigDict(extra="allow")
    temperature: Optional[float] = Field(None, ge=0, le=2)
    top_p: Optional[float] = Field(None, ge=0, le=1)
    max_tokens: Optional[int] = Field(None, ge=1, le=MAX_TOKENS_LIMIT)
    seed: Optional[int] = Field(None, ge=-INT64, lt=INT64)
    stop: Union[str, List[str], None] = None
    user: Optional[str] = None


class ChatRequest(Sampling):
    """``POST /v1/chat/completions``."""

    model: Optional[str] = None
    messages: List[WireMessage] = Field(..., min_length=1)
    stream: bool = False
    stream_options: Optional[StreamOptions] = None
    max_completion_tokens: Optional[int] = Field(None, ge=1, le=MAX_TOKENS_LIMIT)
    #: the client's own tools: offered to the model, the calls returned to the client (openai_tools)
    tools: Optional[List[WireTool]] = Field(None, max_length=MAX_TOOLS)
    tool_choice: ToolChoice = None


class CompletionRequest(Sampling):
    """``POST /v1/completions`` (the legacy API: one prompt string)."""

    model: Optional[str] = None
    prompt: Union[str, List[str]]
    stream: bool = False
    stream_options: Optional[StreamOptions] = None


@dataclass
class EngineInput:
    """What one request asks the engine: the question, earlier turns, client context, overrides."""

    question: str
    history: List[ChatMessage] = field(default_factory=list)
    client_context: str = ""
    generation: Dict[str, Any] = field(default_factory=dict)
    #: the client's tools to offer, and its tool calls and results since the question
    tools: List[ToolDefinition] = field(default_factory=list)
    tool_exchange: List[ChatMessage] = field(default_factory=list)
    tools_required: bool = False


def clean_text(text: str, where: str) -> str:
    """Return ``text``; raise ``WireError`` when it holds lone surrogates (not valid Unicode text)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:
        raise WireError(f"{where} is not valid Unicode text (lone surrogate)", where) from err
    return text


def message_text(message: WireMessage, where: str) -> str:
    """Return a message's text: the string, or its text parts joined."""
    content = message.content
    if content is None:
        return ""
    if isinstance(content, str):
        return clean_text(content, where)
    parts: List[str] = []
    for part in content:
        if part.type != "text" or part.text is None:
            raise WireError(f"{where}: only text content can be answered, not {part.type!r}", where)
        parts.append(clean_text(part.text, where))
    return "\n".join(parts)


def generation_overrides(request: Sampling, max_tokens: Optional[int] = None) -> Dict[str, Any]:
    """Return the request's sampling keys that override the persona's settings."""
    overrides: Dict[str, Any] = {}
    if request.temperature is not None:
        overrides["temperature"] = float(request.temperature)
    if request.top_p is not None:
        overrides["top_p"] = float(request.top_p)
    limit = max_tokens if max_tokens is not None else request.max_tokens
    if limit is not None:
        overrides["max_tokens"] = int(limit)
    if request.seed is not None:
        overrides["seed"] = int(request.seed) % SEED_MODULUS
    if request.stop is not None:
        stops = [request.stop] if isinstance(request.stop, str) else list(request.stop)
        if len(stops) > MAX_STOP_SEQUENCES:
            raise WireError(f"at most {MAX_STOP_SEQUENCES} stop sequences are accepted", "stop")
        if any(not stop for stop in stops):
            raise WireError("a stop sequence cannot be empty", "stop")
        if stops:
            overrides["stop"] = tuple(clean_text(stop, "stop") for stop in stops)
    return overrides


def _turn(message: WireMessage, text: str, index: int) -> ChatMessage:
    if message.role == "tool":
        if not message.tool_call_id:
            raise WireError(f"messages[{index}]: a tool message needs its tool_call_id", f"messages[{index}]")
        return ChatMessage(Role.TOOL, text, tool_call_id=message.tool_call_id)
    return ChatMessage(Role(message.role), text, tool_calls=calls_of(message.tool_calls))


def chat_input(request: ChatRequest) -> EngineInput:
    """Split a chat request into question, earlier turns, client context (system messages), and the
    tool exchange after the question (assistant calls and ``tool`` results, for the client's tools)."""
    context: List[str] = []
    turns: List[ChatMessage] = []
    for index, message in enumerate(request.messages):
        text = message_text(message, f"messages[{index}].content")
        if message.role in SYSTEM_ROLES:
            if text.strip():
                context.append(text.strip())
        else:
            turns.append(_turn(message, text, index))
    last_user = max((i for i, turn in enumerate(turns) if turn.role is Role.USER), default=-1)
    exchange = turns[last_user + 1:] if last_user >= 0 else []
    if last_user < 0 or (exchange and not any(turn.role is Role.TOOL for turn in exchange)):
        raise WireError("the last message (after any system messages) must be the user's, or a tool result",
                        "messages")
    question = turns[last_user].content
    if not question.strip():
        raise WireError("the user's last message is empty", "messages")
    # earlier rounds' tool internals stay out: the assistant's answers after them carry what they gave
    history = [turn for turn in turns[:last_user]
               if turn.content.strip() and turn.role is not Role.TOOL and not turn.tool_calls]
    try:
        tools = offered_tools(request.tools, request.tool_choice)
    except ValueError as err:
        raise WireError(str(err), "tools") from err
    # a named function is offered alone (offered_tools), so "call it" is "call a tool"
    required = bool(tools) and (request.tool_choice == "required" or isinstance(request.tool_choice, WireToolChoice))
    return EngineInput(question, history, "\n\n".join(context),
                       generation_overrides(request, request.max_completion_tokens or request.max_tokens),
                       tools, exchange, required)


def completion_input(request: CompletionRequest) -> EngineInput:
    """Turn a legacy completion request into a question (a list prompt must hold one string)."""
    prompt = request.prompt
    if isinstance(prompt, list):
        if len(prompt) != 1:
            raise WireError("prompt must be one string (batches are not served)", "prompt")
        prompt = prompt[0]
    if not clean_text(prompt, "prompt").strip():
        raise WireError("prompt is empty", "prompt")
    return EngineInput(prompt, [], "", generation_overrides(request))


# -- replies ---------------------------------------------------------------------------------------

def error_body(message: str, type_: str, code: Optional[str], param: Optional[str] = None) -> dict:
    """Return an OpenAI-shaped error body."""
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def finish_reason(usage: Dict[str, Any]) -> str:
    """Return OpenAI's finish reason: "length" when the model hit ``max_tokens``, else "stop"."""
    return "length" if usage.get("finish_reason") == "length" else "stop"


def new_id(prefix: str) -> str:
    """Return a fresh response id such as ``chatcmpl-...``."""
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def wire_usage(usage: Dict[str, Any]) -> dict:
    """Return the OpenAI ``usage`` object from the engine's counts."""
    return {"prompt_tokens": int(usage.get("prompt_tokens", 0)),
            "completion_tokens": int(usage.get("completion_tokens", 0)),
            "total_tokens": int(usage.get("total_tokens", 0))}


class ChatChunks:
    """Builds the ``chat.completion.chunk`` objects of one streamed reply."""

    def __init__(self, model: str, include_usage: bool, completion_id: Optional[str] = None,
                 created: Optional[int] = None) -> None:
        self.id = completion_id or new_id("chatcmpl")
        self.model = model
        self.created = created if created is not None else int(time.time())
        self.include_usage = include_usage

    def _chunk(self, choices: list) -> dict:
        chunk = {"id": self.id, "object": "chat.completion.chunk", "created": self.created,
                 "model": self.model, "system_fingerprint": None, "choices": choices}
        if self.include_usage:
            chunk["usage"] = None
        return chunk

    def role(self) -> dict:
        """The first chunk: the assistant role, no text yet."""
        return self._chunk([{"index": 0, "delta": {"role": "assistant", "content": ""},
                             "logprobs": None, "finish_reason": None}])

    def content(self, text: str) -> dict:
        """A chunk of answer text."""
        return self._chunk([{"index": 0, "delta": {"content": text}, "logprobs": None, "finish_reason": None}])

    def tool_calls(self, calls: Sequence[ToolCall]) -> dict:
        """The chunk carrying the calls the client is to run (each whole, with its index)."""
        return self._chunk([{"index": 0, "delta": {"tool_calls": call_deltas(calls)}, "logprobs": None,
                             "finish_reason": None}])

    def finish(self, reason: str) -> dict:
        """The chunk that ends the choice."""
        return self._chunk([{"index": 0, "delta": {}, "logprobs": None, "finish_reason": reason}])

    def usage(self, usage: Dict[str, Any]) -> dict:
        """The extra chunk with the totals (``stream_options.include_usage``)."""
        chunk = self._chunk([])
        chunk["usage"] = wire_usage(usage)
        return chunk


def chat_completion(model: str, text: str, finish_reason: str, usage: Dict[str, Any],
                    tool_calls: Sequence[ToolCall] = ()) -> dict:
    """Return a whole ``chat.completion`` object (with ``tool_calls`` for the client to run, if any)."""
    message: Dict[str, Any] = {"role": "assistant", "content": text}
    if tool_calls:
        message["content"] = text or None
        message["tool_calls"] = [call.as_dict() for call in tool_calls]
        finish_reason = "tool_calls"
    return {"id": new_id("chatcmpl"), "object": "chat.completion", "created": int(time.time()),
            "model": model, "system_fingerprint": None,
            "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": finish_reason}],
            "usage": wire_usage(usage)}


class CompletionChunks:
    """Builds the ``text_completion`` chunks of one streamed legacy completion."""

    def __init__(self, model: str, include_usage: bool) -> None:
        self.id = new_id("cmpl")
        self.model = model
        self.created = int(time.time())
        self.include_usage = include_usage

    def chunk(self, text: str, finish_reason: Optional[str] = None) -> dict:
        """A chunk of text (or the last one, with its finish reason)."""
        chunk = {"id": self.id, "object": "text_completion", "created": self.created, "model": self.model,
                 "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": finish_reason}]}
        if self.include_usage:
            chunk["usage"] = None
        return chunk

    def usage(self, usage: Dict[str, Any]) -> dict:
        """The extra chunk with the totals."""
        return {"id": self.id, "object": "text_completion", "created": self.created, "model": self.model,
                "choices": [], "usage": wire_usage(usage)}


def text_completion(model: str, text: str, finish_reason: str, usage: Dict[str, Any]) -> dict:
    """Return a whole ``text_completion`` object."""
    return {"id": new_id("cmpl"), "object": "text_completion", "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": finish_reason}],
            "usage": wire_usage(usage)}


def sse(payload: Union[dict, str]) -> bytes:
    """Return one server-sent event carrying ``payload`` (a dict as JSON, or ``[DONE]``)."""
    # ASCII JSON: any text (even one a model broke mid-character) encodes safely
    data = payload if isinstance(payload, str) else json.dumps(payload)
    return f"data: {data}\n\n".encode("utf-8")


def model_list(personas: Sequence[Any]) -> dict:
    """Return ``GET /v1/models``: each persona is a model."""
    return {"object": "list", "data": [
        {"id": persona.name, "object": "model", "created": 0, "owned_by": "persona-fallback",
         "description": getattr(persona, "description", "") or ""} for persona in personas]}
