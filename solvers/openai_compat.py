"""OpenAI-compatible HTTP solver: llama.cpp server, Ollama, vLLM, LM Studio, LocalAI, OpenAI and
remote OVOS persona servers.

Config block (every key but ``api_url`` optional)::

    api_url           base URL, e.g. http://host:8080/v1 or http://host:8337 (required, http/https)
    key               API key, sent as ``Authorization: Bearer <key>``; never logged or shown
    model             model name; when not given, the first id of ``GET <api_url>/models`` (asked
                      once), else "default": some servers (ovos-persona-server 0.5) reject a request
                      without one
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

The wire parsing lives in ``sse.py``, the HTTP transport (discovery, timeouts, cancel, retries)
in ``http_transport.py``; this module builds requests and turns replies into text.
"""
from __future__ import annotations

import json
import re
import threading
from contextlib import contextmanager
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple
from urllib.parse import urlsplit

import requests
from ovos_utils.log import LOG

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
    SolverUnavailable,
    ToolDefinition,
    ToolPlan,
    request_generation,
    request_options,
)
from .http_transport import CHAT_SUFFIX, Call, HTTPTransport, Redactor, Retry, candidate_urls, retry
from .sse import choice_text, first_model_id, iter_lines, iter_sse_events, parse_event_data
from .tool_wire import ToolCallAssembler

__all__ = ["OpenAISolver", "candidate_urls", "iter_lines", "iter_sse_events", "render_prompt"]


DEFAULT_CONNECT_TIMEOUT = 5.0
DEFAULT_READ_TIMEOUT = 30.0
DEFAULT_RETRIES = 2
DEFAULT_BACKOFF = 0.5
DEFAULT_MODE = "chat"
DEFAULT_STREAM = True
DEFAULT_PROMPT_KEY = "prompt"
#: the model name sent when none is configured and the server lists none (some servers require one)
PLACEHOLDER_MODEL = "default"
#: placeholders: {system} system messages, {history} earlier turns as "User: ...\n"/"Assistant: ...\n"
#: lines, {question} the last user message, {persona} the persona name, {lang} the answer language
DEFAULT_PROMPT_TEMPLATE = "{system}\n\n{history}User: {question}\nAssistant:"
#: completions mode stops here so the model does not write the user's next turn itself
COMPLETIONS_STOP = "\nUser:"

MODES = ("chat", "completions")
COMPLETIONS_SUFFIX = "completions"
MODELS_SUFFIX = "models"
#: tool names quoted in logs and errors at most, each cut to this many characters
MAX_TOOL_NAMES = 5
MAX_TOOL_NAME_CHARS = 64
#: sampling keys that llama.cpp/Ollama-style servers accept but strict OpenAI servers reject
NONSTANDARD_SAMPLING = ("top_k", "repeat_penalty")

_SECRET_HEADER = re.compile(r"authorization|key|token|secret|cookie", re.IGNORECASE)
_RETRY_UNAVAILABLE = frozenset({429, 502, 503, 504})

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


def _note_usage(payload: Any) -> None:
    """Pass an upstream's ``usage`` counts to the current request, when both exist."""
    options = request_options()
    usage = payload.get("usage") if isinstance(payload, dict) else None
    if options is None or not isinstance(usage, dict):
        return
    prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens")
    if all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in (prompt, completion)):
        options.report_usage(prompt, completion, "upstream")



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
        self._redact = Redactor([self._key] + [
            value for name, value in self.headers.items() if _SECRET_HEADER.search(name)])
        self._http = HTTPTransport(
            self.api_url, self._candidates, session=session if session is not None else requests.Session(),
            connect_timeout=self.connect_timeout, read_timeout=self.read_timeout,
            retries=self.retries, backoff=self.backoff, redact=self._redact)
        self._lock = threading.Lock()
        # the model a server listed (or the placeholder once it answered without one); asked once
        self._model_lock = threading.Lock()
        self._found_model: Optional[str] = None
        self._warned_tools = False
        # learnt from 400 replies: the server cannot stream / rejects llama.cpp-style sampling keys
        self._no_stream = False
        self._plain_sampling = False
        # tools are offered through the chat API only
        self.supports_tools = self.mode == "chat"
        self._no_stream_usage = False

    # -- public

    def stream(self, messages: Sequence[ChatMessage], *, lang: str, cancel: CancelToken,
               conversation_id: str = "") -> Iterator[str]:
        """Yield the answer as it streams in; raise a ``SolverError`` (``SolverCancelled`` on cancel)."""
        with self._guarded_call(cancel) as call:
            headers = self._build_headers(conversation_id)
            self._discover_model(headers, cancel, call)
            yield from self._http.with_retries(
                lambda: self._attempt(messages, lang, conversation_id, headers, cancel, call), cancel)

    @contextmanager
    def _guarded_call(self, cancel: CancelToken) -> Iterator[Call]:
        """One request's ``Call`` (a cancel interrupts it), with its errors made safe to show.

        A failure after a cancel is the cancel; an error a server built by echoing a secret back
        is raised again with the secret redacted.
        """
        cancel.raise_if_cancelled()
        call = Call()
        unregister = cancel.on_cancel(call.interrupt)
        try:
            yield call
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

    def plan(self, messages: Sequence[ChatMessage], tools: Sequence[ToolDefinition], *, lang: str,
             cancel: CancelToken, conversation_id: str = "", required: bool = False) -> ToolPlan:
        """Ask with ``tools`` offered (``tool_choice: auto``, or ``required``); return the text and the calls.

        Streamed replies are read to the end, their ``tool_calls`` deltas assembled into calls.
        """
        if not self.supports_tools:
            raise SolverConfigError("openai solver: tools need mode chat")
        with self._guarded_call(cancel) as call:
            headers = self._build_headers(conversation_id)
            self._discover_model(headers, cancel, call)
            offered = [tool.as_openai() for tool in tools]
            for plan in self._http.with_retries(
                    lambda: self._plan_attempt(messages, offered, lang, conversation_id, headers, cancel, call,
                                               "required" if required else "auto"),
                    cancel):
                return plan  # type: ignore[return-value]
            raise SolverResponseError(f"{self._redact(self.api_url)} gave no reply")

    def _plan_attempt(self, messages: Sequence[ChatMessage], offered: List[dict], lang: str,
                      conversation_id: str, headers: Mapping[str, str], cancel: CancelToken,
                      call: Call, choice: str = "auto") -> Iterator[Any]:
        response, body = self._post(messages, lang, conversation_id, headers, cancel, call,
                                    {"tools": offered, "tool_choice": choice})
        try:
            assembler = ToolCallAssembler()
            text = "".join(self._read_body(response, body["stream"], cancel, assembler))
            cancel.raise_if_cancelled()
            yield ToolPlan(text, assembler.calls())
        finally:
            response.close()

    def close(self) -> None:
        """Close the HTTP session."""
        self._http.close()

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
        elif "model" not in body:
            body["model"] = self._found_model or PLACEHOLDER_MODEL
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

    # -- the model name

    def _discover_model(self, headers: Mapping[str, str], cancel: CancelToken, call: Call) -> None:
        """With no model configured, ask ``<api_url>/models`` once and remember the first id.

        A server that answers without a usable list gets the placeholder for good; an unreachable
        one gets it for this request only, and is asked again next time.
        """
        if self.model or "model" in self.extra_body:
            return
        with self._model_lock:
            if self._found_model is not None:
                return
            listed = None
            # <api_url>/models first, then under the server root's known prefixes, like the chat path
            for url in candidate_urls(self.api_url, MODELS_SUFFIX):
                try:
                    response = self._http.request("GET", url, None, headers, cancel, call)
                    try:
                        if response.status_code == 404:
                            continue
                        listed = first_model_id(self._http.read_json(response, cancel)) if response.ok else None
                    finally:
                        response.close()
                except SolverCancelled:
                    raise
                except (Retry, SolverError) as err:
                    cancel.raise_if_cancelled()
                    if isinstance(err, (Retry, SolverUnavailable)):  # unreachable or slow: ask again next time
                        LOG.debug("model list at %s unreachable: %s", self._redact(url), self._redact(str(err)))
                        return
                    # it answered, just not with a list we can read
                break
            self._found_model = listed or PLACEHOLDER_MODEL
            LOG.info("%s: sending model %r (%s)", self._redact(self.api_url), self._found_model,
                     "first one listed" if listed else "placeholder: the server lists none")

    # -- one attempt

    def _post(self, messages: Sequence[ChatMessage], lang: str, conversation_id: str,
              headers: Mapping[str, str], cancel: CancelToken, call: Call,
              extra: Optional[Mapping[str, Any]] = None) -> Tuple[requests.Response, Dict[str, Any]]:
        """POST the request (``extra`` added to the body), learning from replies that refuse a
        feature; return the first OK response and the body it answered."""
        while True:
            body = self.build_body(messages, lang=lang, conversation_id=conversation_id)
            body.update(extra or {})
            response = self._http.post_discovering(body, headers, cancel, call)
            if response.ok:
                return response, body
            status = response.status_code
            message = self._http.error_message(response)
            if not self._adapt(status, message, body):
                raise self._status_error(status, message)

    def _attempt(self, messages: Sequence[ChatMessage], lang: str, conversation_id: str,
                 headers: Mapping[str, str], cancel: CancelToken, call: Call) -> Iterator[str]:
        response, body = self._post(messages, lang, conversation_id, headers, cancel, call)
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
            return retry(SolverUnavailable(f"{where} is rate limiting (HTTP 429){detail}"))
        if status >= 500:
            kind = SolverUnavailable if status in _RETRY_UNAVAILABLE else SolverResponseError
            return retry(kind(f"{where} answered HTTP {status}{detail}"))
        return SolverResponseError(f"{where} answered HTTP {status}{detail}")

    # -- reading replies

    def _read(self, response: requests.Response, *, streaming: bool, cancel: CancelToken) -> Iterator[str]:
        assembler = ToolCallAssembler()
        produced = False
        for text in self._read_body(response, streaming, cancel, assembler):
            produced = True
            yield text
        calls = assembler.calls()
        if calls and not produced:
            raise self._tool_calls_only([call.name for call in calls])

    def _tool_calls_only(self, tools: List[str]) -> SolverResponseError:
        """The error for a reply made only of tool calls, warned about once per solver."""
        unique = list(dict.fromkeys(name[:MAX_TOOL_NAME_CHARS] for name in tools))
        names = self._redact(", ".join(unique[:MAX_TOOL_NAMES]) + (", ..." if len(unique) > MAX_TOOL_NAMES else ""))
        where = self._redact(self.api_url)
        with self._lock:
            warn, self._warned_tools = not self._warned_tools, True
        if warn:  # a server set up with tools does it on every request: once says it all
            LOG.warning("%s answered with only tool calls (%s) and no text; this solver runs no tools, "
                        "so the next solver answers", where, names)
        return SolverResponseError(f"{where} answered with only tool calls ({names}) and no text")

    def _read_body(self, response: requests.Response, streaming: bool, cancel: CancelToken,
                   assembler: ToolCallAssembler) -> Iterator[str]:
        """Yield the reply's text (SSE or one JSON reply); its tool calls go to ``assembler``."""
        content_type = response.headers.get("Content-Type", "").split(";")[0].strip().lower()
        if content_type == "text/event-stream" or (streaming and not content_type.endswith("json")):
            yield from self._read_sse(response, cancel, assembler)
        else:  # a server that cannot stream answers a streaming request with one JSON reply
            payload = self._http.read_json(response, cancel)
            _note_usage(payload)
            text = choice_text(payload)
            assembler.feed(payload)
            if text:
                yield text

    def _read_sse(self, response: requests.Response, cancel: CancelToken,
                  assembler: ToolCallAssembler) -> Iterator[str]:
        for data in iter_sse_events(iter_lines(self._http.chunks(response, cancel))):
            cancel.raise_if_cancelled()
            if data.strip() == "[DONE]":
                return
            if not data.strip():  # "data:" keep-alives
                continue
            for event in parse_event_data(data):
                _note_usage(event)
                text = choice_text(event)
                assembler.feed(event)
                if text:
                    cancel.raise_if_cancelled()
                    yield text
        # no [DONE]: ovos-persona-server 0.4 and others just end the stream
        cancel.raise_if_cancelled()
