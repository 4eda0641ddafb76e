"""Errors as OpenAI (or, under ``/api``, Ollama) clients expect them, and the request size limit.

Every failure leaves as a 4xx (or, for a bug, a 500) with a JSON body; nothing reaches the
client as a traceback, and no message carries a key.
"""
from __future__ import annotations

from typing import Any, Dict, Optional

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from ovos_utils.log import LOG
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from . import ollama_wire
from .openai_wire import WireError, error_body

DEFAULT_MAX_BODY_BYTES = 1 << 20
OLLAMA_PREFIX = "/api/"
_TYPES = {400: "invalid_request_error", 401: "invalid_request_error", 404: "invalid_request_error",
          405: "invalid_request_error", 413: "invalid_request_error", 415: "invalid_request_error",
          429: "rate_limit_error"}
_CODES = {401: "invalid_api_key", 405: "method_not_allowed", 413: "request_too_large",
          415: "unsupported_media_type", 429: "rate_limit_exceeded"}


class ApiError(Exception):
    """A request that gets an error reply: status, message, OpenAI ``code``, extra headers."""

    def __init__(self, status: int, message: str, code: Optional[str] = None, *,
                 param: Optional[str] = None, headers: Optional[Dict[str, str]] = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code if code is not None else _CODES.get(status)
        self.param = param
        self.headers = headers or {}


def error_response(request_path: str, error: ApiError) -> JSONResponse:
    """Return the JSON reply for ``error`` in the wire format of the route asked."""
    if request_path.startswith(OLLAMA_PREFIX):
        body: Dict[str, Any] = ollama_wire.error(error.message)
    else:
        body = error_body(error.message, _TYPES.get(error.status, "server_error" if error.status >= 500
                                                    else "invalid_request_error"), error.code, error.param)
    return JSONResponse(body, status_code=error.status, headers=error.headers)


def _validation_message(err: RequestValidationError) -> str:
    problems = []
    for problem in err.errors()[:3]:
        where = ".".join(str(part) for part in problem.get("loc", ()) if part != "body") or "body"
        if problem.get("type") == "json_invalid":
            problems.append("the body is not valid JSON")
        else:
            problems.append(f"{where}: {problem.get('msg', 'invalid')}")
    return "; ".join(problems) or "invalid request"


def install_error_handlers(app: FastAPI) -> None:
    """Make every error reply OpenAI-shaped (Ollama-shaped under ``/api``)."""

    @app.exception_handler(ApiError)
    async def api_error(request: Request, err: ApiError) -> JSONResponse:
        return error_response(request.url.path, err)

    @app.exception_handler(WireError)
    async def wire_error(request: Request, err: WireError) -> JSONResponse:
        return error_response(request.url.path, ApiError(400, str(err), "invalid_request", param=err.param))

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, err: RequestValidationError) -> JSONResponse:
        return error_response(request.url.path, ApiError(400, _validation_message(err), "invalid_request"))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, err: StarletteHTTPException) -> JSONResponse:
        message = err.detail if isinstance(err.detail, str) else "request failed"
        if err.status_code == 404:
            message, code = f"no route {request.method} {request.url.path}", "not_found"
        else:
            code = None
        return error_response(request.url.path, ApiError(err.status_code, message, code,
                                                         headers=dict(err.headers or {})))

    @app.exception_handler(Exception)
    async def bug(request: Request, err: Exception) -> JSONResponse:
        LOG.exception(f"unexpected error serving {request.method} {request.url.path}: {err!r}")
        return error_response(request.url.path, ApiError(500, "internal error", "internal_error"))


class BodyLimit:
    """ASGI middleware: a body over ``limit`` bytes gets 413 before any route parses it.

    Every body is read as JSON whatever its Content-Type says, as Ollama and llama.cpp's server do
    (``curl -d`` sends a form type by default).
    """

    def __init__(self, app: ASGIApp, limit: int = DEFAULT_MAX_BODY_BYTES) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("method") in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", []):
            if name == b"content-length" and value.isdigit() and int(value) > self.limit:
                await self._refuse(scope, receive, send)
                return
        headers = [(name, value) for name, value in scope.get("headers", []) if name != b"content-type"]
        scope = {**scope, "headers": headers + [(b"content-type", b"application/json")]}
        # read the body here (bounded), then replay it to the app
        body, more = bytearray(), True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > self.limit:
                await self._refuse(scope, receive, send)
                return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": bytes(body), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        error = ApiError(413, f"the request body is over {self.limit} bytes")
        await error_response(scope.get("path", ""), error)(scope, receive, send)
