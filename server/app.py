"""FastAPI routes: each turns a request into engine input, runs the engine, and writes the reply.

No answering logic lives here: the wire modules convert, ``runs.EngineRun`` runs the engine.
"""
from __future__ import annotations

import asyncio
import time
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator, Dict, Optional

from fastapi import Depends, FastAPI, Path as PathParam, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from ..engine import PersonaEngine
from ..persona import Persona
from . import ollama_wire, openai_wire
from .auth import (BadConversationId, KeyRing, check_conversation_id, conversation_id, presented_key,
                   session_id)
from .errors import DEFAULT_MAX_BODY_BYTES, ApiError, BodyLimit, install_error_handlers
from .runs import BUSY, FAILED, MISSING, EngineRun, RunRegistry
from .stream import chat_stream, completion_stream, ollama_stream

#: seconds a client is told to wait after a 429 (the engine's waiting line was full)
RETRY_AFTER_SECONDS = 1
#: how often a non-streamed request looks whether its client is still there
DISCONNECT_POLL_SECONDS = 0.1
MAX_CONTEXT_CHARS = 8000
#: how long ending a conversation waits for its cancelled answer to be written down
END_WAIT_SECONDS = 5.0


class ContextBody(BaseModel):
    """``POST /v1/conversations/{id}/context``."""

    model_config = ConfigDict(extra="forbid")
    context: str = Field(..., min_length=1, max_length=MAX_CONTEXT_CHARS)


def create_app(engine: PersonaEngine, keys: Optional[KeyRing] = None, *,
               max_body_bytes: int = DEFAULT_MAX_BODY_BYTES) -> FastAPI:
    """Return the server app over ``engine``; with ``keys`` every route but /health needs a key."""
    ring = keys if keys is not None else KeyRing()
    registry = RunRegistry()

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        yield
        registry.cancel_all()  # stopping: in-flight answers end now; finished turns are stored

    app = FastAPI(title="Persona Fallback", version="0.1.0", lifespan=lifespan,
                  description="The personas of the persona fallback skill, over OpenAI- and Ollama-compatible HTTP.")
    app.state.engine, app.state.registry, app.state.keys = engine, registry, ring
    app.add_middleware(BodyLimit, limit=max_body_bytes)
    install_error_handlers(app)

    def caller(request: Request) -> str:
        namespace = ring.namespace_for(presented_key(request.headers))
        if namespace is None:
            raise ApiError(401, "a valid API key is required (Authorization: Bearer KEY or X-Api-Key: KEY)",
                           headers={"WWW-Authenticate": "Bearer"})
        return namespace

    def persona_for(model: Optional[str]) -> Persona:
        if model is None or not model.strip():
            found = engine.find_persona(engine.default_persona) or next(iter(engine.personas.values()), None)
            if found is None:
                raise ApiError(404, "no persona is loaded", "model_not_found")
            return found
        found = engine.find_persona(model)
        if found is None:
            raise ApiError(404, f"the model {model[:100]!r} does not exist (models are persona names: "
                                f"GET /v1/models)", "model_not_found", param="model")
        return found

    def conversation(request: Request, user: Optional[str]) -> Optional[str]:
        try:
            return conversation_id(request.headers, user)
        except BadConversationId as err:
            raise ApiError(400, str(err), "invalid_conversation_id") from err

    async def begin(request: Request, namespace: str, data: openai_wire.EngineInput, persona: Persona,
                    user: Optional[str]) -> EngineRun:
        conv = conversation(request, user)
        run = EngineRun(engine, registry, request=data, session_id=session_id(namespace, conv),
                        persona=persona.name, remember=conv is not None, stateless=conv is None)
        first = await _watched(request, run, run.start())
        if first.kind == BUSY:
            raise ApiError(429, "too many answers are in progress; try again shortly",
                           headers={"Retry-After": str(RETRY_AFTER_SECONDS)})
        if first.kind == MISSING:
            raise ApiError(404, str(first.value), "model_not_found", param="model")
        if first.kind == FAILED:
            raise ApiError(500, "the answer failed", "internal_error")
        return run  # admitted, or already ended (cancelled while it waited)

    # -- health and models -----------------------------------------------------------------

    @app.get("/health")
    async def health() -> Dict[str, Any]:
        """Liveness: no key needed."""
        return {"status": "ok", "personas": len(engine.personas)}

    @app.get("/v1/models")
    async def models(_ns: str = Depends(caller)) -> Dict[str, Any]:
        """Every persona as a model."""
        return openai_wire.model_list(list(engine.personas.values()))

    @app.get("/v1/models/{model}")
    async def model(model: str, _ns: str = Depends(caller)) -> Dict[str, Any]:
        """One persona as a model."""
        return openai_wire.model_list([persona_for(model)])["data"][0]

    # -- OpenAI answering ------------------------------------------------------------------

    @app.post("/v1/chat/completions")
    async def chat_completions(body: openai_wire.ChatRequest, request: Request,
                               namespace: str = Depends(caller)) -> Any:
        """Answer a chat, streamed (SSE) or whole."""
        persona = persona_for(body.model)
        run = await begin(request, namespace, openai_wire.chat_input(body), persona, body.user)
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        if body.stream:
            chunks = openai_wire.ChatChunks(persona.name, include_usage)
            return _sse(chat_stream(run, chunks))
        text = await _watched(request, run, run.collect())
        calls = run.answer.tool_calls if run.answer is not None else ()
        return openai_wire.chat_completion(persona.name, text, openai_wire.finish_reason(_usage(run)), _usage(run),
                                           calls)

    @app.post("/v1/completions")
    async def completions(body: openai_wire.CompletionRequest, request: Request,
                          namespace: str = Depends(caller)) -> Any:
        """Answer one prompt string (the legacy completions API), streamed or whole."""
        persona = persona_for(body.model)
        run = await begin(request, namespace, openai_wire.completion_input(body), persona, body.user)
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        if body.stream:
            return _sse(completion_stream(run, openai_wire.CompletionChunks(persona.name, include_usage)))
        text = await _watched(request, run, run.collect())
        return openai_wire.text_completion(persona.name, text, openai_wire.finish_reason(_usage(run)), _usage(run))

    # -- conversations ---------------------------------------------------------------------

    def conversation_session(namespace: str, cid: str) -> str:
        try:
            return session_id(namespace, check_conversation_id(cid))
        except BadConversationId as err:
            raise ApiError(400, str(err), "invalid_conversation_id") from err

    @app.post("/v1/conversations/{cid}/context")
    async def inject_context(body: ContextBody, cid: str = PathParam(..., max_length=256),
                             namespace: str = Depends(caller)) -> Dict[str, Any]:
        """Add context to one conversation's system prompt."""
        text = openai_wire.clean_text(body.context, "context")
        await asyncio.to_thread(engine.inject_context, conversation_session(namespace, cid), text)
        return {"object": "conversation.context", "id": cid, "injected": True}

    @app.delete("/v1/conversations/{cid}/context")
    async def clear_context(cid: str = PathParam(..., max_length=256),
                            namespace: str = Depends(caller)) -> Dict[str, Any]:
        """Remove one conversation's injected context."""
        await asyncio.to_thread(engine.clear_context, conversation_session(namespace, cid))
        return {"object": "conversation.context", "id": cid, "cleared": True}

    @app.delete("/v1/conversations/{cid}")
    async def end_conversation(cid: str = PathParam(..., max_length=256),
                               namespace: str = Depends(caller)) -> Dict[str, Any]:
        """End a conversation: cancel its answer in progress, forget its turns and context."""
        session = conversation_session(namespace, cid)
        # the cancelled answer writes its interrupted turn as it ends: wait, then forget it too
        await asyncio.to_thread(registry.stop_session, session, END_WAIT_SECONDS)
        await asyncio.to_thread(engine.end_conversation, session)
        return {"object": "conversation", "id": cid, "deleted": True}

    # -- Ollama ----------------------------------------------------------------------------

    @app.get("/api/version")
    async def ollama_version() -> Dict[str, str]:
        """The Ollama API version this server speaks (clients check it before anything else)."""
        return {"version": "0.6.0"}

    @app.get("/api/tags")
    async def ollama_tags(_ns: str = Depends(caller)) -> Dict[str, Any]:
        """Every persona as an Ollama model."""
        return ollama_wire.tags(list(engine.personas.values()))

    @app.post("/api/chat")
    async def ollama_chat(body: ollama_wire.OllamaChatRequest, request: Request,
                          namespace: str = Depends(caller)) -> Any:
        """Answer a chat as Ollama does: NDJSON objects, the last with ``done: true``."""
        persona = persona_for(ollama_wire.persona_name(body.model))
        name = body.model or persona.name
        started = time.monotonic()
        run = await begin(request, namespace, ollama_wire.chat_input(body), persona, None)
        if body.stream:
            return StreamingResponse(ollama_stream(run, name, started), media_type="application/x-ndjson")
        text = await _watched(request, run, run.collect())
        return ollama_wire.chat_done(name, text, openai_wire.finish_reason(_usage(run)), _usage(run),
                                     time.monotonic() - started)

    return app


def _sse(events: AsyncIterator[bytes]) -> StreamingResponse:
    return StreamingResponse(events, media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


def _usage(run: EngineRun) -> Dict[str, Any]:
    return run.answer.usage if run.answer is not None else {}


async def _watched(request: Request, run: EngineRun, work: Any) -> Any:
    """Await ``work``; cancel the run if the client disconnects meanwhile."""
    task = asyncio.ensure_future(work)
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=DISCONNECT_POLL_SECONDS)
            if done:
                return task.result()
            if await request.is_disconnected():
                run.cancel()
                return await task
    finally:
        if not task.done():
            task.cancel()
