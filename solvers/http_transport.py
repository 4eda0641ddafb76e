"""HTTP transport for OpenAI-compatible servers: endpoint discovery, timeouts and transport
failures mapped onto the solver error tree, a cancel that interrupts a blocked read at once, and
retries with backoff before any text reached the caller. Every message is redacted of secrets.
"""
from __future__ import annotations

import http.client
import json
import socket
import threading
from typing import Any, Callable, Iterator, List, Mapping, Optional, Sequence
from urllib.parse import urlsplit, urlunsplit

import requests
import urllib3
from ovos_utils.log import LOG

from .base import (
    CancelToken,
    SolverCancelled,
    SolverConfigError,
    SolverError,
    SolverResponseError,
    SolverTimeout,
    SolverUnavailable,
)
from .sse import ERROR_SNIPPET_CHARS, error_text

#: where OpenAI-compatible servers mount their API, relative to the server root, in try order
KNOWN_PREFIXES = ("", "/v1", "/openai/v1")
CHAT_SUFFIX = "chat/completions"

READ_SIZE = 8192
MAX_BODY_BYTES = 8 << 20
ERROR_BODY_BYTES = 64 << 10
REDACTED = "***"


# ---------------------------------------------------------------- secrets and URLs

def secret_strings(values: Sequence[Optional[str]]) -> List[str]:
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


class Redactor:
    """Replaces every known secret in a text with ``***``."""

    def __init__(self, values: Sequence[Optional[str]]) -> None:
        self._secrets = secret_strings(values)

    def __call__(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, REDACTED)
        return text


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


# ---------------------------------------------------------------- low-level helpers

class Retry(Exception):
    """A failure worth another attempt if no text was yielded yet."""

    def __init__(self, error: SolverError) -> None:
        super().__init__(str(error))
        self.error = error


def retry(error: SolverError, cause: Optional[BaseException] = None) -> Retry:
    """Wrap ``error`` (caused by ``cause``) as worth another attempt."""
    error.__cause__ = cause
    return Retry(error)


def shutdown_socket(response: requests.Response) -> None:
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


def raw_chunks(raw: Any) -> Iterator[bytes]:
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


def is_timeout(err: BaseException) -> bool:
    """True for the timeout exceptions of urllib3, requests and socket."""
    return isinstance(err, (urllib3.exceptions.TimeoutError, requests.exceptions.Timeout, socket.timeout))


class Call:
    """The response one ``stream()`` call is reading, so that a cancel can interrupt it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._response: Optional[requests.Response] = None

    def attach(self, response: requests.Response) -> None:
        """Remember the response now being read."""
        with self._lock:
            self._response = response

    def interrupt(self) -> None:
        """Make a read blocked on the response return at once (from any thread)."""
        with self._lock:
            response = self._response
        if response is not None:
            shutdown_socket(response)

    def close(self) -> None:
        """Close the response, if any."""
        with self._lock:
            response, self._response = self._response, None
        if response is not None:
            response.close()


# ---------------------------------------------------------------- the transport

class HTTPTransport:
    """Sends JSON to one OpenAI-compatible server and reads replies as bytes or JSON."""

    def __init__(self, api_url: str, candidates: Sequence[str], *, session: requests.Session,
                 connect_timeout: float, read_timeout: float, retries: int, backoff: float,
                 redact: Callable[[str], str]) -> None:
        self.api_url = api_url
        self.candidates = list(candidates)
        self.session = session
        self.connect_timeout, self.read_timeout = connect_timeout, read_timeout
        self.retries, self.backoff = retries, backoff
        self.redact = redact
        self._lock = threading.Lock()
        self._working_url: Optional[str] = None

    @property
    def working_url(self) -> Optional[str]:
        """The endpoint that answered last (None until one did)."""
        with self._lock:
            return self._working_url

    def close(self) -> None:
        """Close the HTTP session."""
        self.session.close()

    def with_retries(self, attempt: Callable[[], Iterator[str]], cancel: CancelToken) -> Iterator[str]:
        """Yield from ``attempt()``, starting it again after a ``Retry`` as long as nothing was yielded."""
        count = 0
        while True:
            produced = False
            try:
                for text in attempt():
                    produced = True
                    yield text
                return
            except Retry as again:
                # once text reached the caller a retry would repeat it: fail and let the chain end there
                if produced or count >= self.retries:
                    raise again.error from again.error.__cause__
                delay = self.backoff * (2 ** count)
                count += 1
                LOG.warning("%s; retry %d/%d in %.2f s", self.redact(str(again.error)), count,
                            self.retries, delay)
                if cancel.wait(delay):
                    raise SolverCancelled("cancelled") from again.error

    def post_discovering(self, body: Mapping[str, Any], headers: Mapping[str, str],
                         cancel: CancelToken, call: Call) -> requests.Response:
        """POST to the remembered endpoint, or find one; return the first non-404 response."""
        with self._lock:
            working = self._working_url
        urls = list(dict.fromkeys(([working] if working else []) + self.candidates))
        tried: List[str] = []
        for url in urls:
            response = self.request("POST", url, body, headers, cancel, call)
            if response.status_code != 404:
                with self._lock:
                    self._working_url = url
                return response
            message = self.error_message(response)
            if "model" in message.lower():  # Ollama, vLLM, OpenAI: the path exists, the model does not
                raise SolverUnavailable(f"{self.redact(self.api_url)}: model not found (HTTP 404): {message}")
            tried.append(urlsplit(url).path)
        with self._lock:
            self._working_url = None
        raise SolverConfigError(f"no OpenAI-compatible endpoint at {self.redact(self.api_url)}: "
                                f"HTTP 404 on {', '.join(tried)}")

    def request(self, method: str, url: str, body: Optional[Mapping[str, Any]], headers: Mapping[str, str],
                cancel: CancelToken, call: Call) -> requests.Response:
        """Send one request (JSON ``body`` if given) and return the streaming response."""
        where = self.redact(url)
        try:
            send = self.session.post if method == "POST" else self.session.get
            response = send(url, json=body, headers=headers, stream=True,
                            timeout=(self.connect_timeout, self.read_timeout))
        except requests.exceptions.ConnectTimeout as err:
            raise SolverTimeout(f"could not connect to {where} within {self.connect_timeout:g} s") from err
        except requests.exceptions.Timeout as err:
            raise SolverTimeout(f"{where} sent no reply within {self.read_timeout:g} s") from err
        except requests.exceptions.SSLError as err:
            raise SolverConfigError(f"TLS failed with {where}: {self.redact(str(err))}") from err
        except requests.exceptions.ConnectionError as err:
            raise retry(SolverUnavailable(f"cannot reach {where}: {self.redact(str(err))}"), err) from err
        except (requests.exceptions.InvalidURL, requests.exceptions.InvalidHeader) as err:
            raise SolverConfigError(f"bad request settings for {where}: {self.redact(str(err))}") from err
        except requests.RequestException as err:
            raise SolverUnavailable(f"request to {where} failed: {self.redact(str(err))}") from err
        call.attach(response)
        if cancel.cancelled:
            raise SolverCancelled("cancelled")
        return response

    def chunks(self, response: requests.Response, cancel: CancelToken) -> Iterator[bytes]:
        """Yield the body's bytes as they arrive, mapping transport failures onto the error tree."""
        try:
            for chunk in raw_chunks(response.raw):
                if chunk:
                    yield chunk
        except (urllib3.exceptions.HTTPError, requests.RequestException, http.client.HTTPException,
                OSError) as err:
            if cancel.cancelled:
                raise SolverCancelled("cancelled") from err
            if is_timeout(err):
                raise SolverTimeout(f"{self.redact(self.api_url)} went silent for "
                                    f"{self.read_timeout:g} s") from err
            raise retry(SolverResponseError(f"connection to {self.redact(self.api_url)} dropped "
                                            f"mid-reply: {self.redact(str(err))}"), err) from err
        if cancel.cancelled:
            raise SolverCancelled("cancelled")

    def read_json(self, response: requests.Response, cancel: CancelToken) -> Any:
        """Read a whole (bounded) body and parse it as JSON."""
        body = bytearray()
        for chunk in self.chunks(response, cancel):
            body += chunk
            if len(body) > MAX_BODY_BYTES:
                raise SolverResponseError(
                    f"reply from {self.redact(self.api_url)} is over {MAX_BODY_BYTES} bytes")
        try:
            return json.loads(body.decode("utf-8", errors="replace"))
        except ValueError as err:
            snippet = self.redact(body.decode("utf-8", errors="replace"))[:ERROR_SNIPPET_CHARS]
            raise SolverResponseError(f"{self.redact(self.api_url)} sent a reply that is not JSON: "
                                      f"{snippet!r}") from err

    def error_message(self, response: requests.Response) -> str:
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
        return self.redact(message or text.strip())[:ERROR_SNIPPET_CHARS]
