"""Per-request overhead of ``persona-fallback serve`` vs OVOS's own ovos-persona-server, same instant backend.

The backend: a tiny stdlib HTTP server (``python -m benchmarks.server_overhead --backend PORT``, a
separate process) that answers every OpenAI chat request at once with the same fixed sentence,
as one ``chat.completion`` or, when asked to stream, as one SSE stream (role chunk, the sentence,
finish chunk, ``[DONE]``). Both persona servers run as their own processes on 127.0.0.1 with one
persona whose only solver is an OpenAI-compatible client pointed at that backend:

* ours   - ``persona-fallback serve``, solver ``openai`` (``POST /v1/chat/completions``, API key on);
* theirs - ``python -m ovos_persona_server --persona FILE`` with ``ovos-solver-openai-plugin``
  (``POST /chat/completions``, no auth: it has none).

Which ovos-persona-server: 0.5.0 is the newest release on PyPI but cannot start: its wheel lacks
the ``ovos_persona_server.schemas`` package that ``chat.py`` and ``ollama.py`` import, and
``chat.py`` nests quotes in f-strings, a SyntaxError before Python 3.12 (the sdist does not build
either: no requirements.txt). So the ``bench`` extra pins 0.4.0, the newest release that runs: a
Flask app on werkzeug's threaded server. Its streaming generator sleeps 0.1 s after every chunk it
sends, so its streamed *total* carries that sleep by design; the streamed comparison is therefore
made on the time to the first content chunk, which comes before the sleep.

Measured in this process with ``time.perf_counter()`` around ``httpx`` requests on kept-alive
connections: non-streamed total, and for streams the time to the first event carrying answer text
and the total to the end of the stream. Every repetition sends one request of each mode to the
backend itself, to ours and to theirs, in a rotating order, so load swings on this shared machine
hit all three alike. "Overhead" is a server's median (or p90) minus the backend's own median (or
p90) for the same mode: the time the persona server adds around an answer that costs nothing.
``RATIO`` divides our overhead by theirs, non-streamed and streamed first content (target <= 0.5).
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from .common import (machine_load, median, percentile, positive_int, print_ratio, print_table, ratio_part,
                     stop_all)

ANSWER = "The moon is a rock that shines with borrowed light."
SYSTEM = "You are Bench, a friendly voice assistant."
QUESTION = "tell me about the moon"
KEY = "sk-bench-local"
BACKEND_MODEL = "instant"
MODES = ("plain", "stream")


# -- the instant backend (runs in its own process) -----------------------------------------------

def _chunk(delta: Dict[str, str], finish: Optional[str] = None) -> str:
    return json.dumps({"id": "chatcmpl-instant", "object": "chat.completion.chunk", "created": 0,
                       "model": BACKEND_MODEL, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})


STREAM_BODY = "".join(f"data: {event}\n\n" for event in (
    _chunk({"role": "assistant"}), _chunk({"content": ANSWER}), _chunk({}, "stop"), "[DONE]")).encode()
PLAIN_BODY = json.dumps({
    "id": "chatcmpl-instant", "object": "chat.completion", "created": 0, "model": BACKEND_MODEL,
    "choices": [{"index": 0, "message": {"role": "assistant", "content": ANSWER}, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 4, "completion_tokens": 10, "total_tokens": 14}}).encode()
MODELS_BODY = json.dumps({"object": "list", "data": [{"id": BACKEND_MODEL, "object": "model"}]}).encode()


class _InstantHandler(BaseHTTPRequestHandler):
    """Answers every chat request with ANSWER at once; keeps connections alive (HTTP/1.1)."""

    protocol_version = "HTTP/1.1"
    # headers and body leave in two writes: without TCP_NODELAY the second waits for the
    # client's delayed ACK (~40 ms), which would be the backend's time instead of zero
    disable_nagle_algorithm = True

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002  (the base class's name)
        """Stay quiet: one log line per request would cost more than the answer."""

    def _send(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:  # noqa: N802  (http.server's naming)
        """``/models`` lists the one model; anything else is 404."""
        if self.path.rstrip("/").endswith("/models"):
            self._send(200, MODELS_BODY, "application/json")
        else:
            self._send(404, b'{"detail": "Not Found"}', "application/json")

    def do_POST(self) -> None:  # noqa: N802
        """``.../chat/completions``: the fixed answer, streamed when the body asks for it."""
        length = int(self.headers.get("Content-Length") or 0)
        try:
            body = json.loads(self.rfile.read(length) or b"{}")
        except ValueError:
            self._send(400, b'{"error": {"message": "invalid JSON"}}', "application/json")
            return
        if not self.path.rstrip("/").endswith("/chat/completions"):
            self._send(404, b'{"detail": "Not Found"}', "application/json")
        elif body.get("stream"):
            self._send(200, STREAM_BODY, "text/event-stream")
        else:
            self._send(200, PLAIN_BODY, "application/json")


def run_backend(port: int) -> None:
    """Serve the instant backend on 127.0.0.1:``port`` until killed."""
    server = ThreadingHTTPServer(("127.0.0.1", port), _InstantHandler)
    server.daemon_threads = True
    server.serve_forever()


# -- starting the three processes ----------------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _start(command: List[str], probe: str, what: str, env: Optional[Dict[str, str]] = None,
           timeout: float = 90.0) -> subprocess.Popen:
    """Start ``command`` and wait until GET ``probe`` answers 200."""
    import httpx

    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                               env={**os.environ, **(env or {})})
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"{what} exited: {process.stderr.read()[-2000:] if process.stderr else ''}")
        try:
            if httpx.get(probe, headers={"Authorization": f"Bearer {KEY}"}, timeout=1).status_code == 200:
                return process
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    process.kill()
    raise SystemExit(f"{what} did not answer within {timeout:.0f} s")


def start_all(folder: Path) -> Tuple[List[subprocess.Popen], Dict[str, str]]:
    """Start backend, ours and theirs; return the processes and each side's chat URL."""
    processes: List[subprocess.Popen] = []
    urls: Dict[str, str] = {}
    try:
        port = _free_port()
        backend = f"http://127.0.0.1:{port}"
        processes.append(_start([sys.executable, "-m", "benchmarks.server_overhead", "--backend", str(port)],
                                f"{backend}/v1/models", "instant backend"))
        urls["backend"] = f"{backend}/v1/chat/completions"

        personas = folder / "personas"
        personas.mkdir()
        (personas / "bench.json").write_text(json.dumps({
            "name": "Bench", "lang": "en-us", "system_prompt": SYSTEM, "solvers": ["openai"],
            "openai": {"api_url": f"{backend}/v1", "model": BACKEND_MODEL, "retries": 0},
            "memory": {"max_turns": 0}}))
        port = _free_port()
        processes.append(_start(
            [sys.executable, "-m", "ovos_skill_persona_fallback.cli", "serve", "--port", str(port),
             "--personas-dir", str(personas), "--db", str(folder / "memory.db"), "--default-persona", "Bench"],
            f"http://127.0.0.1:{port}/v1/models", "persona-fallback serve", env={"PERSONA_API_KEYS": KEY}))
        urls["ours"] = f"http://127.0.0.1:{port}/v1/chat/completions"

        theirs_file = folder / "theirs.json"
        theirs_file.write_text(json.dumps({
            "name": "Bench", "solvers": ["ovos-solver-openai-plugin"],
            "ovos-solver-openai-plugin": {"api_url": f"{backend}/v1", "key": "unused", "model": BACKEND_MODEL,
                                          "enable_memory": False, "system_prompt": SYSTEM}}))
        port = _free_port()
        processes.append(_start(
            [sys.executable, "-m", "ovos_persona_server", "--persona", str(theirs_file), "--host", "127.0.0.1",
             "--port", str(port)], f"http://127.0.0.1:{port}/status", "ovos-persona-server"))
        urls["theirs"] = f"http://127.0.0.1:{port}/chat/completions"
    except BaseException:
        stop_all(processes)
        raise
    return processes, urls


# -- one request ---------------------------------------------------------------------------------

def request_once(client, side: str, url: str, stream: bool) -> Dict[str, float]:
    """One chat request; return total and (streamed) first-content seconds, the text and whether it worked."""
    messages = [{"role": "user", "content": QUESTION}]
    if side == "backend":
        messages.insert(0, {"role": "system", "content": SYSTEM})
    body = {"model": "Bench" if side == "ours" else BACKEND_MODEL, "messages": messages, "stream": stream}
    headers = {"Authorization": f"Bearer {KEY}"}
    started = time.perf_counter()
    if not stream:
        response = client.post(url, json=body, headers=headers, timeout=30)
        total = time.perf_counter() - started
        if response.status_code != 200:
            return {"ok": False}
        text = response.json()["choices"][0]["message"]["content"]
        return {"ok": bool(text), "total": total, "first": total, "text": text}
    first: Optional[float] = None
    pieces: List[str] = []
    with client.stream("POST", url, json=body, headers=headers, timeout=30) as response:
        if response.status_code != 200:
            return {"ok": False}
        for line in response.iter_lines():
            if not line.startswith("data:"):
                continue
            data = line[5:].strip()
            if data == "[DONE]":
                continue  # ovos-persona-server 0.4.0 sends none: the end of the body ends the stream
            choices = json.loads(data).get("choices") or []
            text = choices[0].get("delta", {}).get("content") if choices else None
            if text:
                first = time.perf_counter() if first is None else first
                pieces.append(text)
    total = time.perf_counter() - started
    return {"ok": first is not None, "first": (first or started) - started, "total": total, "text": "".join(pieces)}


# -- the run -------------------------------------------------------------------------------------

def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--reps", type=positive_int, default=150,
                        help="measured requests per server and mode (default 150)")
    parser.add_argument("--warmup", type=positive_int, default=10, help="unmeasured rounds first (default 10)")
    parser.add_argument("--backend", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.backend is not None:
        run_backend(args.backend)
        return 0

    import httpx

    load_before = machine_load()
    with tempfile.TemporaryDirectory(prefix="persona-bench-overhead-") as folder:
        processes, urls = start_all(Path(folder))
        samples: Dict[Tuple[str, str], List[Dict[str, float]]] = {
            (side, mode): [] for side in urls for mode in MODES}
        texts: Dict[str, set] = {side: set() for side in urls}
        try:
            with httpx.Client() as client:
                started = time.monotonic()
                sides = list(urls)
                for n in range(args.warmup + args.reps):
                    for mode in (MODES if n % 2 == 0 else MODES[::-1]):
                        shift = n % len(sides)
                        for side in sides[shift:] + sides[:shift]:
                            result = request_once(client, side, urls[side], mode == "stream")
                            if n >= args.warmup:
                                samples[(side, mode)].append(result)
                                texts[side].add(result.get("text", ""))
                elapsed = time.monotonic() - started
        finally:
            stop_all(processes)

    print(f"server overhead: {args.reps} requests per server and mode after {args.warmup} warm-up rounds, "
          f"{elapsed:.1f} s; {load_before} at the start, {machine_load()} at the end")
    print(f"backend: instant fixed answer ({len(ANSWER)} chars); theirs: ovos-persona-server "
          f"{_version('ovos-persona-server')} + ovos-openai-plugin {_version('ovos-openai-plugin')}\n")
    figures: Dict[Tuple[str, str, str], float] = {}
    rows = []
    for mode in MODES:
        for side in urls:
            ok = [s for s in samples[(side, mode)] if s["ok"]]
            for key in ("first", "total"):
                values = [s[key] for s in ok]
                figures[(side, mode, key + "50")] = median(values)
                figures[(side, mode, key + "90")] = percentile(values, 90.0)
            rows.append([mode, side, len(ok)] + [figures[(side, mode, k)] * 1000
                                                 for k in ("total50", "total90", "first50", "first90")])
    print_table(["mode", "server", "ok", "total ms med", "total ms p90", "first content ms med",
                 "first content ms p90"], rows, title="as the client sees it")
    overhead_rows = []
    for mode, key in (("plain", "total"), ("stream", "first"), ("stream", "total")):
        for side in ("ours", "theirs"):
            overhead_rows.append([f"{mode} {'first content' if key == 'first' else 'total'}", side] + [
                (figures[(side, mode, key + q)] - figures[("backend", mode, key + q)]) * 1000 for q in ("50", "90")])
    print_table(["measure", "server", "overhead ms med", "overhead ms p90"], overhead_rows,
                title="overhead = server minus the backend's own time (same mode, same percentile)")
    for side in ("ours", "theirs"):
        print(f"{side} answered: {sorted(texts[side])!r}")
    print()

    def overhead(side: str, mode: str, key: str) -> float:
        return figures[(side, mode, key + "50")] - figures[("backend", mode, key + "50")]

    met = print_ratio([
        ratio_part("plain_overhead", overhead("ours", "plain", "total") / overhead("theirs", "plain", "total"),
                   "<=", 0.5),
        ratio_part("stream_first_content_overhead",
                   overhead("ours", "stream", "first") / overhead("theirs", "stream", "first"), "<=", 0.5),
    ])
    return 0 if met else 1


def _version(package: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return "not installed"


if __name__ == "__main__":
    sys.exit(main())
