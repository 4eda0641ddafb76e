"""Ollama wire format (``/api/chat``, ``/api/tags``): request models, conversion, reply objects.

Ollama streams newline-delimited JSON objects; the last has ``done: true``, ``done_reason`` and
the counts. Pure functions and pydantic models only.
"""
from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Any, Dict, List, Literal, Optional, Sequence, Union

from pydantic import BaseModel, ConfigDict, Field

from ..solvers.base import ChatMessage, Role
from .openai_wire import (INT64, MAX_TOKENS_LIMIT, SEED_MODULUS, SYSTEM_ROLES, EngineInput, WireError,
                          clean_text)

#: the tag Ollama clients add to model names; "Ava:latest" is the persona "Ava"
DEFAULT_TAG = ":latest"


class OllamaMessage(BaseModel):
    """One chat message as Ollama clients send it."""

    model_config = ConfigDict(extra="allow")
    role: Literal["system", "developer", "user", "assistant"]
    content: str = ""
    images: Optional[List[str]] = None


class OllamaOptions(BaseModel):
    """The ``options`` keys that override the persona's generation settings."""

    model_config = ConfigDict(extra="allow")
    temperature: Optional[float] = Field(None, ge=0, le=2)
    top_p: Optional[float] = Field(None, ge=0, le=1)
    num_predict: Optional[int] = Field(None, ge=-2, le=MAX_TOKENS_LIMIT)
    seed: Optional[int] = Field(None, ge=-INT64, lt=INT64)
    stop: Union[str, List[str], None] = None


class OllamaChatRequest(BaseModel):
    """``POST /api/chat``."""

    model_config = ConfigDict(extra="allow")
    model: Optional[str] = None
    messages: List[OllamaMessage] = Field(..., min_length=1)
    stream: bool = True
    options: Optional[OllamaOptions] = None


def persona_name(model: Optional[str]) -> Optional[str]:
    """Return the persona a model name means (the ``:latest`` tag dropped)."""
    if model is None:
        return None
    return model[:-len(DEFAULT_TAG)] if model.endswith(DEFAULT_TAG) else model


def overrides(options: Optional[OllamaOptions]) -> Dict[str, Any]:
    """Return the generation overrides of an Ollama ``options`` object."""
    if options is None:
        return {}
    found: Dict[str, Any] = {}
    if options.temperature is not None:
        found["temperature"] = float(options.temperature)
    if options.top_p is not None:
        found["top_p"] = float(options.top_p)
    if options.num_predict is not None and options.num_predict > 0:  # -1/-2: Ollama's "no limit"
        found["max_tokens"] = int(options.num_predict)
    if options.seed is not None:
        found["seed"] = int(options.seed) % SEED_MODULUS
    if options.stop is not None:
        stops = [options.stop] if isinstance(options.stop, str) else list(options.stop)
        if any(not stop for stop in stops):
            raise WireError("a stop sequence cannot be empty", "options.stop")
        if stops:
            found["stop"] = tuple(clean_text(stop, "options.stop") for stop in stops)
    return found


def chat_input(request: OllamaChatRequest) -> EngineInput:
    """Split an Ollama chat request into question, earlier turns and client context."""
    context: List[str] = []
    turns: List[ChatMessage] = []
    for index, message in enumerate(request.messages):
        if message.images:
            raise WireError(f"messages[{index}]: images cannot be answered", "messages")
        text = clean_text(message.content, f"messages[{index}].content")
        if message.role in SYSTEM_ROLES:
            if text.strip():
                context.append(text.strip())
        else:
            turns.append(ChatMessage(Role(message.role), text))
    if not turns or turns[-1].role is not Role.USER or not turns[-1].content.strip():
        raise WireError("the last message must be the user's, and not empty", "messages")
    history = [turn for turn in turns[:-1] if turn.content.strip()]
    return EngineInput(turns[-1].content, history, "\n\n".join(context), overrides(request.options))


def now_iso() -> str:
    """Return the current time the way Ollama writes ``created_at``."""
    return datetime.now(timezone.utc).isoformat().replace("+00:00", "Z")


def chat_part(model: str, text: str) -> dict:
    """One streamed object carrying answer text."""
    return {"model": model, "created_at": now_iso(), "message": {"role": "assistant", "content": text},
            "done": False}


def chat_done(model: str, text: str, reason: str, usage: Dict[str, Any], seconds: float) -> dict:
    """The last object (``done: true``): any remaining text, the reason and the counts."""
    nanos = int(seconds * 1e9)
    return {"model": model, "created_at": now_iso(), "message": {"role": "assistant", "content": text},
            "done": True, "done_reason": reason, "total_duration": nanos, "load_duration": 0,
            "prompt_eval_count": int(usage.get("prompt_tokens", 0)), "prompt_eval_duration": 0,
            "eval_count": int(usage.get("completion_tokens", 0)), "eval_duration": nanos}


def ndjson(payload: dict) -> bytes:
    """Return one NDJSON line."""
    return (json.dumps(payload) + "\n").encode("utf-8")


def tags(personas: Sequence[Any]) -> dict:
    """Return ``GET /api/tags``: each persona as a model."""
    return {"models": [
        {"name": f"{persona.name}{DEFAULT_TAG}", "model": f"{persona.name}{DEFAULT_TAG}",
         "modified_at": "1970-01-01T00:00:00Z", "size": 0, "digest": "",
         "details": {"format": "persona", "family": "persona-fallback", "families": ["persona-fallback"],
                     "parameter_size": "", "quantization_level": "", "parent_model": ""}}
        for persona in personas]}


def error(message: str) -> dict:
    """Return Ollama's error body."""
    return {"error": message}
