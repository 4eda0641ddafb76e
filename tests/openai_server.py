"""A scripted, misbehaving OpenAI-compatible HTTP server on 127.0.0.1 for tests.

Usage::

    with FakeOpenAIServer() as server:            # or the ``openai_server`` fixture
        server.script(SSEStream(sse(chat_chunk("Hi"), chat_chunk(" there"))))
        ... point a client at server.url ...
        assert server.requests[0].path == "/chat/completions"

Each request takes the first scripted behaviour whose path matches (``path=None`` matches any),
else the behaviour routed to its path (``route``), else gets 404 ``{"detail": "Not Found"}`` like
an unknown route on a real server. Every request is recorded (method, path, headers, JSON body).
"""
from __future__ import annotations

import json
import socket
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Dict, List, Optional, Sequence, Union

import pytest

DONE = "[DONE]"
#: how long any behaviour keeps a connection busy at most, so a forgotten test cannot hang
MAX_BUSY_S = 20.0


@dataclass
class RecordedRequest:
    """One request the server received."""

    method: str
    path: str
    headers: Dict[str, str]  # lower-case names
    body: Any  # parsed JSON, or None if the body was not JSON
    raw_body: bytes = b""
    received_at: float = field(default_factory=time.monotonic)

    def header(self, name: str) -> Optional[str]:
        """Return a header's value by case-insensitive name, or None."""
        return self.headers.get(name.lower())


# ------------------------------------------------------------------ wire-format helpers

def chat_chunk(content: Optional[str] = None, *, finish_reason: Optional[str] = None,
               role: Optional[str] = None) -> dict:
    """Return one chat.completion.chunk object."""
    delta: Dict[str, Any] = {}
    if role is not None:
        delta["role"] = role
    if content is not None:
        delta["content"] = content
    return {"id": "chatcmpl-test", "object": "chat.completion.chunk", "created": 0, "model": "fake",
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}]}


def completion_chunk(text: str, *, finish_reason: Optional[str] = None) -> dict:
    """Return one streamed text_completion object."""
    return {"id": "cmpl-test", "object": "text_completion", "created": 0, "model": "fake",
            "choices": [{"index": 0, "text": text, "finish_reason": finish_reason}]}


def chat_completion(content: str) -> dict:
    """Return a whole (non-streamed) chat.completion reply."""
    return {"id": "chatcmpl-test", "object": "chat.completion", "created": 0, "model": "fake",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                         "finish_reason": "stop"}]}


def text_completion(text: str) -> dict:
    """Return a whole (non-streamed) text_completion reply."""
    return {"id": "cmpl-test", "object": "text_completion", "created": 0, "model": "fake",
            "choices": [{"index": 0, "text": text, "finish_reason": "stop"}]}


def error_body(message: str, *, type_: str = "invalid_request_error", code: Any = None) -> dict:
    """Return an OpenAI-style error body."""
    return {"error": {"message": message, "type": type_, "code": code}}


def sse(*events: Union[dict, str], done: bool = True, space: bool = True, eol: str = "\n") -> str:
    """Return SSE wire text: one ``data:`` event per item (dicts as JSON), then ``[DONE]`` if ``done``."""
    items = [json.dumps(event) if isinstance(event, dict) else event for event in events]
    if done:
        items.append(DONE)
    prefix = "data: " if space else "data:"
    return "".join(f"{prefix}{item}{eol}{eol}" for item in items)


# ------------------------------------------------------------------ behaviours

class Behaviour:
    """How the server answers one request. ``delay`` sleeps before anything is sent."""

    delay: float = 0.0

    def serve(self, handler: "_Handler", request: RecordedRequest) -> None:
        """Write the whole response (or misbehave) on ``handler``."""
        raise NotImplementedError


class SSEStream(Behaviour):
    """An event stream of ``wire`` text, optionally cut into pieces, slowed, gated or dropped."""

    def __init__(self, wire: Union[str, bytes], *, status: int = 200,
                 content_type: str = "text/event-stream", chunked: bool = True,
                 split: Optional[int] = None, pieces: Optional[Sequence[Union[str, bytes]]] = None,
                 delay: float = 0.0, first_delay: float = 0.0, interval: float = 0.0,
                 gate: Optional[threading.Event] = None, drop: bool = False) -> None:
        """``split``: bytes per write; ``pieces``: explicit writes (overrides wire); ``first_delay``:
        sleep after the headers; ``interval``: sleep between writes; ``gate``: wait for it after
        the first write; ``drop``: cut the connection at the end (no terminating chunk);
        ``chunked=False``: body delimited by closing the connection, HTTP/1.0 style."""
        data = wire.encode() if isinstance(wire, str) else wire
        if pieces is not None:
            self.pieces = [p.encode() if isinstance(p, str) else p for p in pieces]
        elif split:
            self.pieces = [data[i:i + split] for i in range(0, len(data), split)]
        else:
            self.pieces = [data]
        self.status, self.content_type, self.chunked = status, content_type, chunked
        self.delay, self.first_delay, self.interval = delay, first_delay, interval
        self.gate, self.drop = gate, drop

    def serve(self, handler: "_Handler", request: RecordedRequest) -> None:
        handler.start_body(self.status, self.content_type, chunked=self.chunked)
        if not handler.pause(self.first_delay):
            return
        for index, piece in enumerate(self.pieces):
            if index and not handler.pause(self.interval):
                return
            handler.write_part(piece, chunked=self.chunked)
            if index == 0 and self.gate is not None:
                self.gate.wait(MAX_BUSY_S)
        if self.drop:
            handler.drop()
        else:
            handler.end_body(chunked=self.chunked)


class JSONReply(Behaviour):
    """A JSON reply with Content-Length; ``body`` may be a function of the request (to echo it)."""

    def __init__(self, body: Union[dict, str, Callable[[RecordedRequest], Any]], *, status: int = 200,
                 delay: float = 0.0, content_type: str = "application/json",
                 headers: Optional[Dict[str, str]] = None) -> None:
        self.body, self.status, self.delay = body, status, delay
        self.content_type, self.headers = content_type, headers or {}

    def serve(self, handler: "_Handler", request: RecordedRequest) -> None:
        body = self.body(request) if callable(self.body) else self.body
        data = (body if isinstance(body, str) else json.dumps(body)).encode()
        handler.send_response(self.status)
        handler.send_header("Content-Type", self.content_type)
        handler.send_header("Content-Length", str(len(data)))
        for name, value in self.headers.items():
            handler.send_header(name, value)
        handler.end_headers()
        handler.wfile.write(data)


def error_reply(status: int, message: Union[str, Callable[[RecordedRequest], str]], **kwargs: Any) -> JSONReply:
    """An HTTP error with an OpenAI-style JSON error body (``message`` may be a function of the request)."""
    if callable(message):
        return JSONReply(lambda request: error_body(message(request), code=status), status=status, **kwargs)
    return JSONReply(error_body(message, code=status), status=status, **kwargs)


class Drop(Behaviour):
    """Close the connection without answering (the client sees the remote end disconnect)."""

    def __init__(self, *, delay: float = 0.0) -> None:
        self.delay = delay

    def serve(self, handler: "_Handler", request: RecordedRequest) -> None:
        handler.drop()


class EndlessStream(Behaviour):
    """One chat token every ``interval`` seconds until the client goes away; records when it did."""

    def __init__(self, *, interval: float = 0.02, token: str = "tok ", chunked: bool = True) -> None:
        self.interval, self.token, self.chunked = interval, token, chunked
        self.tokens_sent = 0
        self.disconnected = threading.Event()
        self.disconnected_at: Optional[float] = None

    def serve(self, handler: "_Handler", request: RecordedRequest) -> None:
        handler.start_body(200, "text/event-stream", chunked=self.chunked)
        event = sse(chat_chunk(self.token), done=False).encode()
        deadline = time.monotonic() + MAX_BUSY_S
        try:
            while time.monotonic() < deadline:
                handler.write_part(event, chunked=self.chunked)
                self.tokens_sent += 1
                if not handler.pause(self.interval):
                    return
        except OSError:  # BrokenPipe/ConnectionReset: the client is gone
            self.disconnected_at = time.monotonic()
            self.disconnected.set()
            raise


# ------------------------------------------------------------------ the server

class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: "_HTTPServer"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        pass  # keep test output clean

    def do_GET(self) -> None:
        self._handle()

    def do_POST(self) -> None:
        self._handle()

    def _handle(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = None
        request = RecordedRequest(self.command, self.path, {k.lower(): v for k, v in self.headers.items()},
                                  body, raw)
        owner = self.server.owner
        behaviour = owner._take(request)
        if behaviour is None:
            behaviour = JSONReply({"detail": "Not Found"}, status=404)
        try:
            if self.pause(behaviour.delay):
                behaviour.serve(self, request)
        except OSError:
            self.close_connection = True  # the client went away; nothing left to answer

    # helpers for behaviours

    def pause(self, seconds: float) -> bool:
        """Sleep ``seconds`` unless the server stops; False if it stopped."""
        return not (seconds and self.server.owner.stopping.wait(seconds))

    def start_body(self, status: int, content_type: str, *, chunked: bool) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Cache-Control", "no-cache")
        if chunked:
            self.send_header("Transfer-Encoding", "chunked")
        else:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()

    def write_part(self, data: bytes, *, chunked: bool) -> None:
        if chunked:
            self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        else:
            self.wfile.write(data)
        self.wfile.flush()

    def end_body(self, *, chunked: bool) -> None:
        if chunked:
            self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()

    def drop(self) -> None:
        self.close_connection = True
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass  # already gone


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    owner: "FakeOpenAIServer"

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # disconnects are part of the script; tests assert on recorded behaviour instead


class FakeOpenAIServer:
    """A scripted OpenAI-compatible server on an ephemeral 127.0.0.1 port."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._scripted: List[tuple] = []
        self._routes: Dict[str, Behaviour] = {}
        self.requests: List[RecordedRequest] = []
        self.stopping = threading.Event()
        self._httpd: Optional[_HTTPServer] = None
        self._thread: Optional[threading.Thread] = None

    @property
    def port(self) -> int:
        """The port the server listens on."""
        assert self._httpd is not None, "server not started"
        return self._httpd.server_address[1]

    @property
    def url(self) -> str:
        """The server root, e.g. ``http://127.0.0.1:40123`` (no trailing slash)."""
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> "FakeOpenAIServer":
        """Start serving in a daemon thread."""
        self._httpd = _HTTPServer(("127.0.0.1", 0), _Handler)
        self._httpd.owner = self
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="fake-openai-server", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and wake any sleeping behaviour."""
        self.stopping.set()
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    def __enter__(self) -> "FakeOpenAIServer":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def script(self, *behaviours: Behaviour, path: Optional[str] = None) -> None:
        """Queue one-shot behaviours, used in order by requests to ``path`` (None: any path)."""
        with self._lock:
            self._scripted.extend((path, behaviour) for behaviour in behaviours)

    def clear_script(self) -> None:
        """Drop every scripted behaviour not used yet."""
        with self._lock:
            self._scripted.clear()

    def route(self, path: str, behaviour: Behaviour) -> None:
        """Serve ``behaviour`` on every request to ``path`` that no scripted behaviour takes."""
        with self._lock:
            self._routes[path] = behaviour

    @property
    def paths(self) -> List[str]:
        """The paths of all requests so far, in order."""
        with self._lock:
            return [request.path for request in self.requests]

    @property
    def pending(self) -> int:
        """How many scripted behaviours are still unused."""
        with self._lock:
            return len(self._scripted)

    def wait_for_requests(self, count: int, timeout: float = 2.0) -> bool:
        """Wait until ``count`` requests arrived; False on timeout."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if len(self.requests) >= count:
                    return True
            time.sleep(0.005)
        return False

    def _take(self, request: RecordedRequest) -> Optional[Behaviour]:
        with self._lock:
            self.requests.append(request)
            for index, (path, behaviour) in enumerate(self._scripted):
                if path is None or path == request.path:
                    del self._scripted[index]
                    return behaviour
            return self._routes.get(request.path)


@pytest.fixture
def openai_server() -> Any:
    """A started ``FakeOpenAIServer``, stopped after the test."""
    with FakeOpenAIServer() as server:
        yield server


@pytest.fixture(scope="module")
def remote() -> Any:
    """A ``FakeOpenAIServer`` shared by a module's tests (the remote model of the end-to-end stacks)."""
    with FakeOpenAIServer() as server:
        yield server
