"""OpenAI-compatible HTTP solver: llama.cpp server, Ollama, vLLM, LM Studio, LocalAI, OpenAI and
remote OVOS persona servers.

Config block (every key but ``api_url`` optional)::

    api_url           base URL, e.g. http://host:8080/v1 or http://host:8337 (required, http/https)
    key               API key, sent as ``Authorization: Bearer <key>``; never logged or shown
    model             model name, sent when given
    timeout           seconds: a number (connect and read) or {"connect": 5, "read": 30}; the read
                      timeout is the longest silence allowed, before the first byte and between bytes
    headers           extra HTTP headers (dict)
    mode              "chat" (messages, default) or "completions" (one rendered prompt)
    chat_path         path (relative to api_url) or full URL of the chat endpoint, tried first
    completions_path  the same for completions mode (default: discovery from "/completions")
    prompt_key        body key of the prompt in completions mode (default "prompt")
    prompt_template   how completions mode renders the chat (see ``render_prompt``)
    extra_body        dict merged into the request body (server-specific sampling knobs)
    stream            ask for a server-sent-event stream (default true)
    retries           extra attempts on connection errors, 429 and 5xx before any text (default 2)
    backoff           first retry delay in seconds, doubled each retry (default 0.5)
    temperature, top_p, top_k, repeat_penalty, max_tokens, seed, stop
                      override the persona's generation settings for this solver

Endpoint discovery: the configured path first, then on HTTP 404 ``/chat/completions``,
``/v1/chat/completions`` and ``/openai/v1/chat/completions``; the one that answers is remembered.
"""
from __future__ import annotations

import http.client
import json
import re
import socket
import threading
from typing import Any, Dict, Iterable, Iterator, List, Mapping, Optional, Sequence, Tuple
from urllib.parse import urlsplit, urlunsplit

import requests
from ovos_utils.log import LOG
import urllib3

from .base import (
    CancelToken,
    ChatMessage,
    Role,
    Solver,
    SolverCancelled,
    SolverConfigError,
    SolverContext,
    SolverError,
    SolverResponseError,
    SolverTimeout,
    SolverUnavailable,
    request_generation,
    request_options,
)


DEFAULT_CONNECT_TIMEOUT = 5.0
DEFAULT_READ_TIMEOUT = 30.0
DEFAULT_RETRIES = 2
DEFAULT_BACKOFF = 0.5
DEFAULT_MODE = "chat"
DEFAULT_STREAM = True
DEFAULT_PROMPT_KEY = "prompt"
#: placeholders: {system} system messages, {history} earlier turns as "User: ...\n"/"Assistant: ...\n"
#: lines, {question} the last user message, {persona} the persona name, {lang} the answer language
DEFAULT_PROMPT_TEMPLATE = "{system}\n\n{history}User: {question}\nAssistant:"
#: completions mode stops here so the model does not write the user's next turn itself
COMPLETIONS_STOP = "\nUser:"

MODES = ("chat", "completions")
CHAT_SUFFIX = "chat/completions"
COMPLETIONS_SUFFIX = "completions"
#: where OpenAI-compatible servers mount their API, relative to the server root, in try order
KNOWN_PREFIXES = ("", "/v1", "/openai/v1")
#: sampling keys that llama.cpp/Ollama-style servers accept but strict OpenAI servers reject
NONSTANDARD_SAMPLING = ("top_k", "repeat_penalty")

READ_SIZE = 8192
MAX_LINE_BYTES = 1 << 20
MAX_BODY_BYTES = 8 << 20
ERROR_BODY_BYTES = 64 << 10
ERROR_SNIPPET_CHARS = 200
REDACTED = "***"

_EOL = re.compile(rb"\r\n|\r|\n")
_SECRET_HEADER = re.compile(r"authorization|key|token|secret|cookie", re.IGNORECASE)
_RETRY_UNAVAILABLE = frozenset({429, 502, 503, 504})


# ---------------------------------------------------------------- wire format (pure functions)

def iter_lines(chunks: Iterable[bytes], max_line: int = MAX_LINE_BYTES) -> Iterator[str]:
    """Split a byte stream into text lines at CRLF, LF or CR, as the SSE spec defines them.

    A last line without an end of line is yielded too. Raises ``SolverResponseError`` when one
    line grows past ``max_line`` bytes (a server that never sends a newline).
    """
    buffer = bytearray()
    skip_lf = False  # the previous chunk ended in CR: a LF opening this one is the same line end
    first = True
    for chunk in chunks:
        if skip_lf and chunk[:1] == b"\n":
            chunk = chunk[1:]
        skip_lf = False
        buffer += chunk
        start = 0
        for match in _EOL.finditer(buffer):
            line = bytes(buffer[start:match.start()])
            start = match.end()
            if first:
                line, first = _strip_bom(line), False
            yield line.decode("utf-8", errors="replace")
        if start and buffer[start - 1:start] == b"\r":
            skip_lf = True
        del buffer[:start]
        if len(buffer) > max_line:
            raise SolverResponseError(f"stream line longer than {max_line} bytes")
    if buffer:
        yield (_strip_bom(bytes(buffer)) if first else bytes(buffer)).decode("utf-8", errors="replace")


def _strip_bom(line: bytes) -> bytes:
    return line[3:] if line.startswith(b"\xef\xbb\xbf") else line


def iter_sse_events(lines: Iterable[str]) -> Iterator[str]:
    """Yield the data of each server-sent event: its ``data:`` lines joined with newlines.

    Follows the HTML SSE spec: one optional space after the colon, a blank line dispatches,
    comment lines (``:``) and ``event``/``id``/``retry``/unknown fields are ignored, events
    without data are not dispatched. One leniency: data pending when the stream ends is
    dispatched too, because some servers omit the final blank line.
    """
    data: List[str] = []
    for line in lines:
        if not line:
            if data:
                yield "\n".join(data)
                data = []
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        if name == "data":
            data.append(value[1:] if value.startswith(" ") else value)
    if data:
        yield "\n".join(data)


def parse_event_data(data: str) -> List[Any]:
    """Parse one event's data as JSON; raise ``SolverResponseError`` if it is not JSON.

    Data split over several ``data:`` lines is one JSON text; if it does not parse, each line is
    tried alone, for servers that send one JSON object per line without blank lines between.
    """
    try:
        return [json.loads(data)]
    except ValueError as err:
        lines = [line for line in data.split("\n") if line.strip()]
        if len(lines) > 1:
            try:
                return [json.loads(line) for line in lines]
            except ValueError:
                pass  # report the error of the whole event below
        raise SolverResponseError(f"invalid JSON in stream event: {data[:ERROR_SNIPPET_CHARS]!r}") from err


def choice_text(payload: Any) -> str:
    """Return the text of ``choices[0]`` of a chat or completions chunk or reply ('' if none).

    Reads ``delta.content`` (chat stream), ``message.content`` (chat reply) or ``text``
    (completions); raises ``SolverResponseError`` for an ``error`` object or a non-object payload.
    """
    if not isinstance(payload, dict):
        raise SolverResponseError(f"unexpected JSON from server: {str(payload)[:ERROR_SNIPPET_CHARS]!r}")
    if payload.get("error"):
        raise SolverResponseError(f"server reported an error: {error_text(payload)}")
    choices = payload.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        return ""
    choice = choices[0]
    part = choice.get("delta") or choice.get("message")
    content = part.get("content") if isinstance(part, dict) else None
    if content is None:
        content = choice.get("text")
    return content if isinstance(content, str) else ""


def _secret_strings(values: Sequence[Optional[str]]) -> List[str]:
    """Return every string to hide: each value, and the token of "Bearer <token>"-style values,
    longest first so a value is replaced whole before its token is looked for."""
    found = set()
    for value in values:
        if not value:
            continue
        found.add(value)
        token = value.split()[-1] if value.split() else ""
        if len(token) >= 8:
            found.add(token)
    return sorted(found, key=len, reverse=True)


def error_text(payload: Any) -> str:
    """Return the human message of an OpenAI/FastAPI-style error body ('' if none is found)."""
    if not isinstance(payload, dict):
        return ""
    error = payload.get("error")
    if isinstance(error, dict):
        message = error.get("message")
        return str(message) if message else json.dumps(error)
    for value in (error, payload.get("message"), payload.get("detail")):
        if isinstance(value, str) and value:
            return value
    return ""


def candidate_urls(api_url: str, suffix: str = CHAT_SUFFIX, explicit: Optional[str] = None) -> List[str]:
    """Return the endpoint URLs to try in order, without duplicates.

    ``explicit`` (a path relative to ``api_url`` or a full URL) comes first, then ``suffix``
    under ``api_url``, then ``suffix`` under each known prefix of the server root, where the
    root is ``api_url`` without a trailing ``/v1`` or ``/openai/v1`` (so ``.../v1`` never
    turns into ``.../v1/v1``). A query string in ``api_url`` is kept on every candidate.
    """
    parts = urlsplit(api_url)
    base_path = parts.path.rstrip("/")
    root_path = base_path
    for prefix in sorted(KNOWN_PREFIXES, key=len, reverse=True):
        if prefix and root_path.endswith(prefix):
            root_path = root_path[: -len(prefix)]
            break

    def at(path: str) -> str:
        return urlunsplit((parts.scheme, parts.netloc, path, parts.query, ""))

    urls: List[str] = []
    if explicit:
        if explicit.lower().startswith(("http://", "https://")):
            urls.append(explicit)
        else:
            urls.append(at(f"{base_path}/{explicit.lstrip('/')}"))
    urls.append(at(f"{base_path}/{suffix}"))
    urls.extend(at(f"{root_path}{prefix}/{suffix}") for prefix in KNOWN_PREFIXES)
    return list(dict.fromkeys(urls))


_LABELS = {Role.USER: "User", Role.ASSISTANT: "Assistant"}


def render_prompt(template: str, messages: Sequence[ChatMessage], *, persona: str = "", lang: str = "") -> str:
    """Render a chat as one completions prompt with ``template`` (``str.format`` placeholders).

    Placeholders: ``{system}`` (system messages, blank-line separated), ``{history}`` (turns
    before the last user message, one ``User: ...``/``Assistant: ...`` line each, each ending in
    a newline), ``{question}`` (the last user message), ``{persona}`` and ``{lang}``. Literal
    braces are written ``{{`` and ``}}``. Leading newlines are dropped (an empty ``{system}``).
    """
    system = "\n\n".join(m.content for m in messages if m.role is Role.SYSTEM)
    last_user = max((i for i, m in enumerate(messages) if m.role is Role.USER), default=len(messages))
    question = messages[last_user].content if last_user < len(messages) else ""
    history = "".join(f"{_LABELS[m.role]}: {m.content}\n" for m in messages[:last_user] if m.role in _LABELS)
    return template.format(system=system, history=history, question=question,
                           persona=persona, lang=lang).lstrip("\n")


# ---------------------------------------------------------------- transport helpers

class _Retry(Exception):
    """Internal: a failure worth another attempt if no text was yielded yet."""

    def __init__(self, error: SolverError) -> None:
        super().__init__(str(error))
        self.error = error


def _retry(error: SolverError, cause: Optional[BaseException] = None) -> _Retry:
    error.__cause__ = cause
    return _Retry(error)


def _shutdown_socket(response: requests.Response) -> None:
    """Shut the socket under ``response`` down so a read blocked in another thread returns now."""
    # Closing the response from another thread is not enough: the buffered reader's lock makes
    # close() wait for the blocked read, and close() on a socket does not wake a blocked recv().
    # shutdown() does both: the read returns at once and the server sees the connection end.
    raw = getattr(response, "raw", None)
    sock = getattr(getattr(raw, "_connection", None), "sock", None)
    if sock is None:  # urllib3 without the connection on the response: reach it via http.client
        fp = getattr(getattr(raw, "_fp", None), "fp", None)
        sock = getattr(getattr(fp, "raw", None), "_sock", None)
    if sock is None:
        return
    try:
        # the plain-socket method, so an SSL socket is not unwrapped under a reader's feet
        socket.socket.shutdown(sock, socket.SHUT_RDWR)
    except OSError:
        pass  # already closed or never connected: nothing is blocked on it


def _raw_chunks(raw: Any) -> Iterator[bytes]:
    """Yield body bytes as they arrive, never waiting to fill a fixed-size block."""
    if raw.chunked and raw.supports_chunked_reads():
        yield from raw.read_chunked(decode_content=True)
    elif hasattr(raw, "read1"):  # urllib3 2: read() would block until READ_SIZE bytes came
        while True:
            data = raw.read1(READ_SIZE, decode_content=True)
            if not data:
                return
            yield data
    else:  # urllib3 1 has no read1; byte by byte is slow but streams
        yield from raw.stream(1, decode_content=True)


def _note_usage(payload: Any) -> None:
    """Pass an upstream's ``usage`` counts to the current request, when both exist."""
    options = request_options()
    usage = payload.get("usage") if isinstance(payload, dict) else None
    if options is None or not isinstance(usage, dict):
        return
    prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens")
    if all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in (prompt, completion)):
        options.report_usage(prompt, completion, "upstream")


def _is_timeout(err: BaseException) -> bool:
    return isinstance(err, (urllib3.exceptions.TimeoutError, requests.exceptions.Timeout, socket.timeout))


class _Call:
    """The response one ``stream()`` call is reading, so that a cancel can interrupt it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._response: Optional[requests.Response] = None

    def attach(self, response: requests.Response) -> None:
        with self._lock:
            self._response = response

    def interrupt(self) -> None:
        with self._lock:
            response = self._response
        if response is not None:
            _shutdown_socket(response)

    def close(self) -> None:
        with self._lock:
            response, self._response = self._response, None
        if response is not None:
            response.close()


# ---------------------------------------------------------------- the solver

def _positive_number(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise SolverConfigError(f"openai solver: {name} must be a positive number of seconds, not {value!r}")
    return float(value)


def _parse_timeout(value: Any) -> Tuple[float, float]:
    if value is None:
        return DEFAULT_CONNECT_TIMEOUT, DEFAULT_READ_TIMEOUT
    if isinstance(value, Mapping):
        # first_chunk and total are the chain's deadlines, read from the same block
        unknown = set(value) - {"connect", "read", "first_chunk", "total"}
        if unknown:
            raise SolverConfigError(f"openai solver: unknown timeout keys {sorted(unknown)}")
        return (_positive_number(value.get("connect", DEFAULT_CONNECT_TIMEOUT), "timeout.connect"),
                _positive_number(value.get("read", DEFAULT_READ_TIMEOUT), "timeout.read"))
    seconds = _positive_number(value, "timeout")
    return seconds, seconds


def _optional_str(config: Mapping[str, Any], name: str, default: Optional[str] = None) -> Optional[str]:
    value = config.get(name, default)
    if value is not None and not isinstance(value, str):
        raise SolverConfigError(f"openai solver: {name} must be a string")
    return value or default


def _mapping(config: Mapping[str, Any], name: str) -> Dict[str, Any]:
    value = config.get(name) or {}
    if not isinstance(value, Mapping):
        raise SolverConfigError(f"openai solver: {name} must be a mapping")
    return dict(value)


class OpenAISolver(Solver):
    """Streams answers from any OpenAI-compatible chat or completions endpoint."""

    solver_id = "openai"
    supports_history = True

    def __init__(self, config: Mapping[str, Any], context: SolverContext,
                 session: Optional[requests.Session] = None) -> None:
        super().__init__(config, context)
        api_url = config.get("api_url")
        if not isinstance(api_url, str) or not api_url.lower().startswith(("http://", "https://")) \
                or not urlsplit(api_url).netloc:
            raise SolverConfigError("openai solver: api_url must be an http:// or https:// URL")
        self.api_url = api_url.rstrip("/")
        self._key = _optional_str(config, "key") or ""
        self.model = _optional_str(config, "model")
        self.connect_timeout, self.read_timeout = _parse_timeout(config.get("timeout"))
        self.mode = _optional_str(config, "mode", DEFAULT_MODE)
        if self.mode not in MODES:
            raise SolverConfigError(f"openai solver: mode must be one of {MODES}, not {self.mode!r}")
        path_key = "chat_path" if self.mode == "chat" else "completions_path"
        self._candidates = candidate_urls(
            self.api_url, CHAT_SUFFIX if self.mode == "chat" else COMPLETIONS_SUFFIX,
            _optional_str(config, path_key))
        self.prompt_key = _optional_str(config, "prompt_key", DEFAULT_PROMPT_KEY)
        self.prompt_template = _optional_str(config, "prompt_template", DEFAULT_PROMPT_TEMPLATE)
        try:
            render_prompt(self.prompt_template, [])
        except (KeyError, IndexError, ValueError) as err:
            raise SolverConfigError(f"openai solver: bad prompt_template placeholder: {err}") from err
        self.headers = {str(name): value for name, value in _mapping(config, "headers").items()}
        if not all(isinstance(value, str) for value in self.headers.values()):
            raise SolverConfigError("openai solver: header values must be strings")
        self.extra_body = _mapping(config, "extra_body")
        try:
            json.dumps(self.extra_body)
        except (TypeError, ValueError) as err:
            raise SolverConfigError(f"openai solver: extra_body is not JSON: {err}") from err
        self.stream_enabled = config.get("stream", DEFAULT_STREAM)
        if not isinstance(self.stream_enabled, bool):
            raise SolverConfigError("openai solver: stream must be true or false")
        self.retries = config.get("retries", DEFAULT_RETRIES)
        if isinstance(self.retries, bool) or not isinstance(self.retries, int) or self.retries < 0:
            raise SolverConfigError("openai solver: retries must be a whole number >= 0")
        self.backoff = config.get("backoff", DEFAULT_BACKOFF)
        if isinstance(self.backoff, bool) or not isinstance(self.backoff, (int, float)) or self.backoff < 0:
            raise SolverConfigError("openai solver: backoff must be a number of seconds >= 0")
        self.generation = context.generation.merged(config)
        self._secrets = _secret_strings([self._key] + [
            value for name, value in self.headers.items() if _SECRET_HEADER.search(name)])
        self._session = session if session is not None else requests.Session()
        self._lock = threading.Lock()
        self._working_url: Optional[str] = None
        # learnt from 400 replies: the server cannot stream / rejects llama.cpp-style sampling keys
        self._no_stream = False
        self._plain_sampling = False
        self._no_stream_usage = False

    # -- public

    def stream(self, messages: Sequence[ChatMessage], *, lang: str, cancel: CancelToken,
               conversation_id: str = "") -> Iterator[str]:
        """Yield the answer as it streams in; raise a ``SolverError`` (``SolverCancelled`` on cancel)."""
        cancel.raise_if_cancelled()
        call = _Call()
        unregister = cancel.on_cancel(call.interrupt)
        try:
            yield from self._stream_with_retries(messages, lang, cancel, conversation_id, call)
        except SolverError as err:
            if cancel.cancelled and not isinstance(err, SolverCancelled):
                raise SolverCancelled("cancelled") from err
            safe = self._redact(str(err))
            if safe != str(err):  # a server echoed a secret back into its error message
                raise type(err)(safe) from err.__cause__
            raise
        finally:
            unregister()
            call.close()

    def close(self) -> None:
        """Close the HTTP session."""
        self._session.close()

    def __repr__(self) -> str:
        return (f"<{type(self).__name__} {self.solver_id} for {self.context.persona_name!r} "
                f"at {self._redact(self.api_url)}>")

    # -- request building

    def build_body(self, messages: Sequence[ChatMessage], *, lang: str = "", conversation_id: str = "") -> dict:
        """Return the JSON body for ``messages`` as it would be sent now."""
        settings = request_generation(self.generation)  # a server request may override sampling
        body: Dict[str, Any] = {
            "temperature": settings.temperature,
            "top_p": settings.top_p,
            "max_tokens": settings.max_tokens,
        }
        if not self._plain_sampling:
            # llama.cpp/Ollama names; not OpenAI's frequency_penalty, which means something else
            body["top_k"] = settings.top_k
            body["repeat_penalty"] = settings.repeat_penalty
        if settings.seed is not None:
            body["seed"] = settings.seed
        stop = list(settings.stop)
        if self.mode == "completions" and COMPLETIONS_STOP not in stop:
            stop.append(COMPLETIONS_STOP)
        if stop:
            body["stop"] = stop
        body.update(self.extra_body)
        if self.model:
            body["model"] = self.model
        if self.mode == "chat":
            body["messages"] = [message.as_dict() for message in messages]
        else:
            body[self.prompt_key] = render_prompt(self.prompt_template, messages,
                                                  persona=self.context.persona_name, lang=lang)
        body["stream"] = self.stream_enabled and not self._no_stream
        if body["stream"] and request_options() is not None and not self._no_stream_usage \
                and "stream_options" not in self.extra_body:
            # a request that reports usage (the persona server's) asks the upstream for its counts
            body["stream_options"] = {"include_usage": True}
        if conversation_id:
            body["user"] = conversation_id
        return body

    def _build_headers(self, conversation_id: str) -> Dict[str, str]:
        headers = dict(self.headers)
        if self._key:
            headers["Authorization"] = f"Bearer {self._key}"
        # header values must be plain printable ASCII; the body's "user" carries any id anyway
        if conversation_id and conversation_id.isascii() and conversation_id.isprintable():
            headers["X-Conversation-Id"] = conversation_id
        return headers

    def _redact(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, REDACTED)
        return text

    # -- attempts and retries

    def _stream_with_retries(self, messages: Sequence[ChatMessage], lang: str, cancel: CancelToken,
                             conversation_id: str, call: _Call) -> Iterator[str]:
        headers = self._build_headers(conversation_id)
        attempt = 0
        while True:
            produced = False
            try:
                for text in self._attempt(messages, lang, conversation_id, headers, cancel, call):
                    produced = True
                    yield text
                return
            except _Retry as retry:
                # once text reached the caller a retry would repeat it: fail and let the chain end there
                if produced or attempt >= self.retries:
                    raise retry.error from retry.error.__cause__
                delay = self.backoff * (2 ** attempt)
                attempt += 1
                LOG.warning("%s; retry %d/%d in %.2f s", self._redact(str(retry.error)), attempt,
                            self.retries, delay)
                if cancel.wait(delay):
                    raise SolverCancelled("cancelled") from retry.error

    def _attempt(self, messages: Sequence[ChatMessage], lang: str, conversation_id: str,
                 headers: Mapping[str, str], cancel: CancelToken, call: _Call) -> Iterator[str]:
        while True:
            body = self.build_body(messages, lang=lang, conversation_id=conversation_id)
            response = self._post_discovering(body, headers, cancel, call)
            if response.ok:
                break
            status = response.status_code
            message = self._error_message(response)
            if not self._adapt(status, message, body):
                raise self._status_error(status, message)
        try:
            yield from self._read(response, streaming=body["stream"], cancel=cancel)
        finally:
            response.close()

    def _adapt(self, status: int, message: str, body: Mapping[str, Any]) -> bool:
        """Learn from a 400 that names a request feature the server lacks; True to try again."""
        if status not in (400, 422):
            return False
        lowered = message.lower()
        with self._lock:
            if "stream_options" in body and "stream_options" in lowered:
                LOG.info("%s rejects stream_options; not asking for usage", self._redact(self.api_url))
                self._no_stream_usage = True
                return True
            if body.get("stream") and "stream" in lowered:
                LOG.info("%s cannot stream; asking for whole replies", self._redact(self.api_url))
                self._no_stream = True
                return True
            # only keys the solver added: those the user set in extra_body stay, and so does the error
            if any(key in body and key not in self.extra_body and key in lowered for key in NONSTANDARD_SAMPLING):
                LOG.info("%s rejects %s; leaving them out", self._redact(self.api_url),
                         "/".join(NONSTANDARD_SAMPLING))
                self._plain_sampling = True
                return True
        return False

    def _status_error(self, status: int, message: str) -> Exception:
        detail = f": {message}" if message else ""
        where = self._redact(self.api_url)
        if status in (401, 403):
            if self._key:
                return SolverConfigError(f"{where} rejected the API key (HTTP {status}){detail}")
            return SolverConfigError(f"{where} requires an API key (HTTP {status}){detail}")
        if status == 429:
            return _retry(SolverUnavailable(f"{where} is rate limiting (HTTP 429){detail}"))
        if status >= 500:
            kind = SolverUnavailable if status in _RETRY_UNAVAILABLE else SolverResponseError
            return _retry(kind(f"{where} answered HTTP {status}{detail}"))
        return SolverResponseError(f"{where} answered HTTP {status}{detail}")

    # -- HTTP

    def _post_discovering(self, body: Mapping[str, Any], headers: Mapping[str, str],
                          cancel: CancelToken, call: _Call) -> requests.Response:
        """POST to the remembered endpoint, or find one; return the first non-404 response."""
        with self._lock:
            working = self._working_url
        urls = list(dict.fromkeys(([working] if working else []) + self._candidates))
        tried: List[str] = []
        for url in urls:
            response = self._post(url, body, headers, cancel, call)
            if response.status_code != 404:
                with self._lock:
                    self._working_url = url
                return response
            message = self._error_message(response)
            if "model" in message.lower():  # Ollama, vLLM, OpenAI: the path exists, the model does not
                raise SolverUnavailable(f"{self._redact(self.api_url)}: model not found (HTTP 404): {message}")
            tried.append(urlsplit(url).path)
        with self._lock:
            self._working_url = None
        raise SolverConfigError(f"no OpenAI-compatible endpoint at {self._redact(self.api_url)}: "
                                f"HTTP 404 on {', '.join(tried)}")

    def _post(self, url: str, body: Mapping[str, Any], headers: Mapping[str, str],
              cancel: CancelToken, call: _Call) -> requests.Response:
        where = self._redact(url)
        try:
            response = self._session.post(url, json=body, headers=headers, stream=True,
                                          timeout=(self.connect_timeout, self.read_timeout))
        except requests.exceptions.ConnectTimeout as err:
            raise SolverTimeout(f"could not connect to {where} within {self.connect_timeout:g} s") from err
        except requests.exceptions.Timeout as err:
            raise SolverTimeout(f"{where} sent no reply within {self.read_timeout:g} s") from err
        except requests.exceptions.SSLError as err:
            raise SolverConfigError(f"TLS failed with {where}: {self._redact(str(err))}") from err
        except requests.exceptions.ConnectionError as err:
            raise _retry(SolverUnavailable(f"cannot reach {where}: {self._redact(str(err))}"), err) from err
        except (requests.exceptions.InvalidURL, requests.exceptions.InvalidHeader) as err:
            raise SolverConfigError(f"bad request settings for {where}: {self._redact(str(err))}") from err
        except requests.RequestException as err:
            raise SolverUnavailable(f"request to {where} failed: {self._redact(str(err))}") from err
        call.attach(response)
        if cancel.cancelled:
            raise SolverCancelled("cancelled")
        return response

    def _chunks(self, response: requests.Response, cancel: CancelToken) -> Iterator[bytes]:
        """Yield the body's bytes as they arrive, mapping transport failures onto the error tree."""
        try:
            for chunk in _raw_chunks(response.raw):
                if chunk:
                    yield chunk
        except (urllib3.exceptions.HTTPError, requests.RequestException, http.client.HTTPException,
                OSError) as err:
            if cancel.cancelled:
                raise SolverCancelled("cancelled") from err
            if _is_timeout(err):
                raise SolverTimeout(f"{self._redact(self.api_url)} went silent for "
                                    f"{self.read_timeout:g} s") from err
            raise _retry(SolverResponseError(f"connection to {self._redact(self.api_url)} dropped "
                                             f"mid-reply: {self._redact(str(err))}"), err) from err
        if cancel.cancelled:
            raise SolverCancelled("cancelled")

    def _read(self, response: requests.Response, *, streaming: bool, cancel: CancelToken) -> Iterator[str]:
        content_type = response.headers.get("Content-Type", "").split(";")[0].strip().lower()
        if content_type == "text/event-stream" or (streaming and not content_type.endswith("json")):
            yield from self._read_sse(response, cancel)
        else:  # a server that cannot stream answers a streaming request with one JSON reply
            payload = self._read_json(response, cancel)
            _note_usage(payload)
            text = choice_text(payload)
            if text:
                yield text

    def _read_sse(self, response: requests.Response, cancel: CancelToken) -> Iterator[str]:
        for data in iter_sse_events(iter_lines(self._chunks(response, cancel))):
            cancel.raise_if_cancelled()
            if data.strip() == "[DONE]":
                return
            if not data.strip():  # "data:" keep-alives
                continue
            for event in parse_event_data(data):
                _note_usage(event)
                text = choice_text(event)
                if text:
                    cancel.raise_if_cancelled()
                    yield text
        # no [DONE]: ovos-persona-server 0.4 and others just end the stream
        cancel.raise_if_cancelled()

    def _read_json(self, response: requests.Response, cancel: CancelToken) -> Any:
        body = bytearray()
        for chunk in self._chunks(response, cancel):
            body += chunk
            if len(body) > MAX_BODY_BYTES:
                raise SolverResponseError(
                    f"reply from {self._redact(self.api_url)} is over {MAX_BODY_BYTES} bytes")
        try:
            return json.loads(body.decode("utf-8", errors="replace"))
        except ValueError as err:
            snippet = self._redact(body.decode("utf-8", errors="replace"))[:ERROR_SNIPPET_CHARS]
            raise SolverResponseError(f"{self._redact(self.api_url)} sent a reply that is not JSON: "
                                      f"{snippet!r}") from err

    def _error_message(self, response: requests.Response) -> str:
        """Read (bounded) and close an error response; return its redacted message."""
        try:
            raw = response.raw.read(ERROR_BODY_BYTES, decode_content=True) or b""
        except (urllib3.exceptions.HTTPError, requests.RequestException, OSError):
            raw = b""  # the status alone still says what went wrong
        finally:
            response.close()
        text = raw.decode("utf-8", errors="replace")
        try:
            message = error_text(json.loads(text))
        except ValueError:
            message = ""
        # redact before cutting: a cut could split a key and leave half of it unmatched
        return self._redact(message or text.strip())[:ERROR_SNIPPET_CHARS]
