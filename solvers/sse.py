"""Server-sent-event and reply parsing for OpenAI-compatible servers: pure functions, no I/O.

Bytes -> lines (``iter_lines``) -> event data (``iter_sse_events``) -> JSON (``parse_event_data``)
-> text (``choice_text``); ``error_text`` finds the human message in an error body.
"""
from __future__ import annotations

import json
import re
from typing import Any, Iterable, Iterator, List, Mapping, Optional

from .base import SolverResponseError

MAX_LINE_BYTES = 1 << 20
ERROR_SNIPPET_CHARS = 200

_EOL = re.compile(rb"\r\n|\r|\n")


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
    (completions), and with no ``choices`` the ``results[0].text`` of text-generation-webui's
    legacy ``/api/v1/generate`` reply; raises ``SolverResponseError`` for an ``error`` object or a non-object payload.
    """
    if not isinstance(payload, dict):
        raise SolverResponseError(f"unexpected JSON from server: {str(payload)[:ERROR_SNIPPET_CHARS]!r}")
    if payload.get("error"):
        raise SolverResponseError(f"server reported an error: {error_text(payload)}")
    choices = payload.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        return _legacy_results_text(payload)
    choice = choices[0]
    part = choice.get("delta") or choice.get("message")
    content = part.get("content") if isinstance(part, dict) else None
    if content is None:
        content = choice.get("text")
    return content if isinstance(content, str) else ""


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


def _legacy_results_text(payload: Mapping[str, Any]) -> str:
    results = payload.get("results")
    if isinstance(results, list) and results and isinstance(results[0], dict):
        text = results[0].get("text")
        return text if isinstance(text, str) else ""
    return ""


def first_model_id(payload: Any) -> Optional[str]:
    """Return the first model id of a ``/models`` list (OpenAI ``data[].id``, Ollama ``models[].name``)."""
    if isinstance(payload, dict):
        entries = payload.get("data")
        if not isinstance(entries, list):
            entries = payload.get("models")
    else:
        entries = payload
    if not isinstance(entries, list):
        return None
    for entry in entries:
        if isinstance(entry, dict):
            for key in ("id", "name", "model"):
                value = entry.get(key)
                if isinstance(value, str) and value.strip():
                    return value.strip()
    return None
