"""A loopback server speaking the part of the Hugging Face Hub API that huggingface_hub downloads with.

Routes (what huggingface_hub 2.x asks):

- ``HEAD``/``GET /{owner}/{repo}/resolve/{revision}/{filename}``: ``X-Repo-Commit``, ``ETag`` (the
  git blob id), ``X-Linked-Etag`` (the LFS sha256), ``X-Linked-Size``, ``Content-Length``,
  ``Accept-Ranges``; a ``Range: bytes=N-`` GET gets 206 with ``Content-Range``;
- ``GET /api/models/{owner}/{repo}`` and ``.../revision/{revision}`` (``?blobs=true``): the file
  listing with sizes and LFS sha256s;
- errors as the Hub sends them: 404 with ``X-Error-Code: RepoNotFound`` / ``EntryNotFound`` /
  ``RevisionNotFound``, 401 for a repo that needs a token.

Faults for tests: ``drop_after`` (the first GET of a file sends that many bytes, then cuts the
connection), ``corrupt`` (the bytes served differ from the advertised sha256), ``token`` (the
bearer token a repo requires).
"""
from __future__ import annotations

import hashlib
import json
import re
import socket
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Dict, List, Optional
from urllib.parse import unquote, urlsplit

COMMIT = "0123456789abcdef0123456789abcdef01234567"
_RESOLVE = re.compile(r"^/([^/]+/[^/]+)/resolve/([^/]+)/(.+)$")
_INFO = re.compile(r"^/api/models/([^/]+/[^/]+?)(?:/revision/([^/]+))?$")


@dataclass
class HubFile:
    """One file of a served repository."""

    data: bytes
    corrupt: bool = False  # serve different bytes than the sha256 says
    drop_after: Optional[int] = None  # first GET: send this many bytes, then drop the connection
    drops_left: int = 1

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()

    @property
    def served(self) -> bytes:
        return bytes(b ^ 0xFF for b in self.data[:64]) + self.data[64:] if self.corrupt else self.data


@dataclass
class HubRepo:
    """A served model repository."""

    files: Dict[str, HubFile]
    token: Optional[str] = None
    commit: str = COMMIT
    revisions: List[str] = field(default_factory=lambda: ["main", COMMIT])


@dataclass
class HubRequest:
    """One request the server received."""

    method: str
    path: str
    headers: Dict[str, str]


class FakeHub:
    """The loopback Hub: ``with FakeHub() as hub: hub.repos["o/r"] = HubRepo({...}); hub.url``."""

    def __init__(self) -> None:
        self.repos: Dict[str, HubRepo] = {}
        self.requests: List[HubRequest] = []
        self._lock = threading.Lock()
        self._httpd: Optional[ThreadingHTTPServer] = None

    @property
    def url(self) -> str:
        assert self._httpd is not None
        return f"http://127.0.0.1:{self._httpd.server_address[1]}"

    def __enter__(self) -> "FakeHub":
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self._httpd.daemon_threads = True
        self._httpd.hub = self  # type: ignore[attr-defined]
        threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        return self

    def __exit__(self, *exc: Any) -> None:
        assert self._httpd is not None
        self._httpd.shutdown()
        self._httpd.server_close()

    def record(self, request: HubRequest) -> None:
        with self._lock:
            self.requests.append(request)

    def file_requests(self, method: Optional[str] = None) -> List[HubRequest]:
        """Requests to ``/resolve/`` (optionally of one method)."""
        with self._lock:
            return [r for r in self.requests if "/resolve/" in r.path and (method is None or r.method == method)]


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        pass

    @property
    def hub(self) -> FakeHub:
        return self.server.hub  # type: ignore[attr-defined]

    def do_HEAD(self) -> None:
        self._route(body=False)

    def do_GET(self) -> None:
        self._route(body=True)

    def _route(self, body: bool) -> None:
        path = unquote(urlsplit(self.path).path)
        self.hub.record(HubRequest(self.command, path, {k.lower(): v for k, v in self.headers.items()}))
        resolve, info = _RESOLVE.match(path), _INFO.match(path)
        if resolve:
            self._resolve(*resolve.groups(), body=body)
        elif info and body:
            self._info(*info.groups())
        else:
            self._reply(404, {"error": "Not Found"}, body=body)

    def _repo(self, repo_id: str, body: bool) -> Optional[HubRepo]:
        repo = self.hub.repos.get(repo_id)
        if repo is None:
            self._reply(404, {"error": "Repository not found"}, body=body, code="RepoNotFound")
            return None
        if repo.token and self.headers.get("Authorization") != f"Bearer {repo.token}":
            # the Hub answers 401 without an error code when a token is missing or wrong for a private repo
            self._reply(401, {"error": "Invalid credentials in Authorization header"}, body=body)
            return None
        return repo

    def _info(self, repo_id: str, revision: Optional[str]) -> None:
        repo = self._repo(repo_id, True)
        if repo is None:
            return
        if revision is not None and revision not in repo.revisions:
            self._reply(404, {"error": "Revision not found"}, body=True, code="RevisionNotFound")
            return
        siblings = [{"rfilename": name, "size": len(f.data), "blobId": hashlib.sha1(f.data).hexdigest(),
                     "lfs": {"size": len(f.data), "sha256": f.sha256, "pointerSize": 134}}
                    for name, f in repo.files.items()]
        self._reply(200, {"id": repo_id, "modelId": repo_id, "sha": repo.commit, "private": bool(repo.token),
                          "siblings": siblings}, body=True)

    def _resolve(self, repo_id: str, revision: str, filename: str, body: bool) -> None:
        repo = self._repo(repo_id, body)
        if repo is None:
            return
        if revision not in repo.revisions:
            self._reply(404, {"error": "Revision not found"}, body=body, code="RevisionNotFound")
            return
        hub_file = repo.files.get(filename)
        if hub_file is None:
            self._reply(404, {"error": "Entry not found"}, body=body, code="EntryNotFound",
                        extra={"X-Repo-Commit": repo.commit})
            return
        data = hub_file.served
        start = 0
        match = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range", ""))
        if match and body:
            start = int(match.group(1))
        self.send_response(206 if start else 200)
        self.send_header("X-Repo-Commit", repo.commit)
        self.send_header("ETag", f'"{hashlib.sha1(hub_file.data).hexdigest()}"')
        self.send_header("X-Linked-Etag", f'"{hub_file.sha256}"')
        self.send_header("X-Linked-Size", str(len(hub_file.data)))
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(data) - start))
        if start:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.end_headers()
        if not body:
            return
        if hub_file.drop_after is not None and hub_file.drops_left > 0 and not start:
            hub_file.drops_left -= 1
            self.wfile.write(data[:hub_file.drop_after])
            self.wfile.flush()
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        self.wfile.write(data[start:])

    def _reply(self, status: int, payload: Any, *, body: bool, code: Optional[str] = None,
               extra: Optional[Dict[str, str]] = None) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        if code:
            self.send_header("X-Error-Code", code)
        for name, value in (extra or {}).items():
            self.send_header(name, value)
        self.end_headers()
        if body:
            self.wfile.write(data)
