"""The streamed replies: engine run events written as OpenAI SSE or Ollama NDJSON.

Each generator ends the run when the client goes away: Starlette cancels the response task on
disconnect, ``EngineRun.events`` sees it in its ``finally`` and cancels the generation.
"""
from __future__ import annotations

import time
from typing import AsyncIterator

from . import ollama_wire
from .openai_wire import ChatChunks, CompletionChunks, error_body, finish_reason, sse
from .runs import CHUNK, END, FAILED, EngineRun

FAILED_MID_STREAM = "the answer failed part way"


async def chat_stream(run: EngineRun, chunks: ChatChunks) -> AsyncIterator[bytes]:
    """``chat.completion.chunk`` events: role, text as it comes, finish, usage if asked, ``[DONE]``."""
    yield sse(chunks.role())
    async for event in run.events():
        if event.kind == CHUNK:
            yield sse(chunks.content(event.value))
        elif event.kind == FAILED:
            yield sse(error_body(FAILED_MID_STREAM, "server_error", "internal_error"))
        elif event.kind == END:
            calls = event.value.tool_calls
            if calls:  # the client's tools: its calls, then the reason that says so
                yield sse(chunks.tool_calls(calls))
            yield sse(chunks.finish("tool_calls" if calls else finish_reason(event.value.usage)))
            if chunks.include_usage:
                yield sse(chunks.usage(event.value.usage))
    yield sse("[DONE]")


async def completion_stream(run: EngineRun, chunks: CompletionChunks) -> AsyncIterator[bytes]:
    """``text_completion`` events: text as it comes, the finish, usage if asked, ``[DONE]``."""
    async for event in run.events():
        if event.kind == CHUNK:
            yield sse(chunks.chunk(event.value))
        elif event.kind == FAILED:
            yield sse(error_body(FAILED_MID_STREAM, "server_error", "internal_error"))
        elif event.kind == END:
            yield sse(chunks.chunk("", finish_reason(event.value.usage)))
            if chunks.include_usage:
                yield sse(chunks.usage(event.value.usage))
    yield sse("[DONE]")


async def ollama_stream(run: EngineRun, model: str, started: float) -> AsyncIterator[bytes]:
    """Ollama NDJSON: one object per chunk, then the ``done: true`` object with the counts."""
    async for event in run.events():
        if event.kind == CHUNK:
            yield ollama_wire.ndjson(ollama_wire.chat_part(model, event.value))
        elif event.kind == FAILED:
            yield ollama_wire.ndjson(ollama_wire.error(FAILED_MID_STREAM))
        elif event.kind == END:
            yield ollama_wire.ndjson(ollama_wire.chat_done(model, "", finish_reason(event.value.usage),
                                                           event.value.usage,
                                                           time.monotonic() - started))
