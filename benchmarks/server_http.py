"""Persona server over HTTP vs llama-cpp-python's own ``llama_cpp.server``, side by side on the same GGUF.

Both servers run as separate processes on 127.0.0.1 and load the same random-weight GGUF (written
by ``tests/tiny_gguf.write_tiny_gguf``, or ``--model``). Ours is ``persona-fallback serve`` with one
persona whose only solver is ``llama-cpp`` on that file; its system prompt is the one the
``llama_cpp.server`` requests carry, so both models see the same chat. Every request is stateless,
greedy (``temperature`` 0) and asks for ``max_tokens`` tokens, streamed (SSE).

Measured in this process with ``time.perf_counter()`` around an ``httpx`` stream:

* first token - from sending the request to the first SSE event carrying answer text;
* total       - until ``data: [DONE]``;
* tokens/s    - content events after the first one, divided by the time from the first to the last.

Sequential requests alternate (ours, theirs / theirs, ours) over the same questions after a warm-up.
Then ``--clients`` streaming clients start at once against each server: errors (non-200 replies or
streams that end without ``[DONE]``) and the p90 first token. ``llama_cpp.server`` cuts a stream in
progress when another request arrives unless it runs with ``--interrupt_requests False``; it runs
with that here, so its concurrent streams complete one after the other as ours do.
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from .common import (QUESTIONS, benchmark_model, median, percentile, print_ratio, print_table, ratio_part,
                     stop_all)

SYSTEM = "You are Bench, a friendly voice assistant."
MAX_TOKENS = 48
N_CTX = 2048
KEY = "sk-bench-local"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait(process: subprocess.Popen, url: str, what: str, timeout: float = 90.0) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"{what} exited: {process.stderr.read()[-2000:] if process.stderr else ''}")
        try:
            if httpx.get(f"{url}/v1/models", headers={"Authorization": f"Bearer {KEY}"}, timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    process.kill()
    raise SystemExit(f"{what} did not answer within {timeout:.0f} s")


def start_theirs(model: Path, threads: Optional[int]) -> Tuple[subprocess.Popen, str]:
    """``python -m llama_cpp.server`` on a free port."""
    port = _free_port()
    command = [sys.executable, "-m", "llama_cpp.server", "--model", str(model), "--host", "127.0.0.1",
               "--port", str(port), "--n_ctx", str(N_CTX), "--verbose", "False", "--interrupt_requests", "False"]
    if threads:
        command += ["--n_threads", str(threads)]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    _wait(process, url, "llama_cpp.server")
    return process, url


def start_ours(model: Path, threads: Optional[int], folder: Path) -> Tuple[subprocess.Popen, str]:
    """``persona-fallback serve`` with one llama-cpp persona on the same file."""
    personas = folder / "personas"
    personas.mkdir()
    block = {"model": str(model), "n_ctx": N_CTX, **({"n_threads": threads} if threads else {})}
    (personas / "bench.json").write_text(json.dumps({
        "name": "Bench", "lang": "en-us", "system_prompt": SYSTEM, "solvers": ["llama-cpp"], "llama-cpp": block,
        "memory": {"max_turns": 0}}))
    port = _free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "ovos_skill_persona_fallback.cli", "serve", "--port", str(port),
         "--personas-dir", str(personas), "--db", str(folder / "memory.db"), "--default-persona", "Bench"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env={**os.environ, "PERSONA_API_KEYS": KEY})
    url = f"http://127.0.0.1:{port}"
    _wait(process, url, "persona-fallback serve")
    return process, url


def stream_once(client, url: str, question: str, ours: bool) -> Dict[str, float]:
    """One streamed chat; return first token, total, tokens/s, the text and whether it completed."""
    messages = [{"role": "user", "content": question}]
    if not ours:  # ours adds the persona's system prompt itself
        messages.insert(0, {"role": "system", "content": SYSTEM})
    body = {"model": "Bench", "messages": messages, "stream": True, "max_tokens": MAX_TOKENS, "temperature": 0.0,
            "seed": 7}
    started = time.perf_counter()
    first = last = None
    pieces: List[str] = []
    done = False
    with client.stream("POST", f"{url}/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {KEY}"},
                       timeout=120) as response:
        if response.status_code != 200:
            return {"ok": False}
        for line in response.iter_lines():
            if not line.startswith("data: "):
                continue
            data = line[6:]
            if data == "[DONE]":
                done = True
                break
            choices = json.loads(data).get("choices") or []
            text = choices[0].get("delta", {}).get("content") if choices else None
            if text:
                now = time.perf_counter()
                first = now if first is None else first
                last = now
                pieces.append(text)
    total = time.perf_counter() - started
    rate = (len(pieces) - 1) / (last - first) if first is not None and last > first else float("nan")
    return {"ok": done and first is not None, "first": (first or started) - started, "total": total,
            "rate": rate, "text": "".join(pieces)}


def concurrent(url: str, ours: bool, clients: int) -> Tuple[int, List[float]]:
    """``clients`` streams at once; return (errors, first-token times)."""
    import httpx

    results: List[Dict[str, float]] = []
    lock = threading.Lock()

    def one(n: int) -> None:
        try:
            with httpx.Client() as client:
                result = stream_once(client, url, QUESTIONS[n % len(QUESTIONS)], ours)
        except httpx.HTTPError:
            result = {"ok": False}
        with lock:
            results.append(result)

    threads = [threading.Thread(target=one, args=(n,)) for n in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    errors = sum(1 for result in results if not result["ok"])
    return errors, [result["first"] for result in results if result["ok"]]


def main(argv: Optional[List[str]] = None) -> int:
    import httpx

    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--model", metavar="PATH", help="a GGUF file (default: a random one in a temp dir)")
    parser.add_argument("--size", choices=("tiny", "small", "medium"), default="tiny")
    parser.add_argument("--reps", type=int, default=30, help="sequential requests per server (default 30)")
    parser.add_argument("--clients", type=int, default=8, help="concurrent streaming clients (default 8)")
    parser.add_argument("--threads", type=int, default=None, help="n_threads for both servers")
    args = parser.parse_args(argv)
    with benchmark_model(args) as model, tempfile.TemporaryDirectory(prefix="persona-bench-http-") as folder:
        theirs_process, theirs_url = start_theirs(model, args.threads)
        ours_process, ours_url = start_ours(model, args.threads, Path(folder))
        try:
            samples: Dict[str, List[Dict[str, float]]] = {"ours": [], "theirs": []}
            same_text = 0
            with httpx.Client() as client:
                for warm in QUESTIONS[:2]:
                    stream_once(client, ours_url, warm, True)
                    stream_once(client, theirs_url, warm, False)
                for n in range(args.reps):
                    question = QUESTIONS[n % len(QUESTIONS)]
                    order = [("ours", ours_url), ("theirs", theirs_url)]
                    got = {}
                    for side, url in (order if n % 2 == 0 else order[::-1]):
                        got[side] = stream_once(client, url, question, side == "ours")
                        samples[side].append(got[side])
                    same_text += got["ours"].get("text") == got["theirs"].get("text")
            rows, figures = [], {}
            for side in ("ours", "theirs"):
                ok = [s for s in samples[side] if s["ok"]]
                figures[side] = {key: median([s[key] for s in ok]) for key in ("first", "total", "rate")}
                rows.append([side, len(ok), figures[side]["first"] * 1000, figures[side]["total"] * 1000,
                             figures[side]["rate"]])
            print_table(["server", "ok", "first token ms (median)", "total ms (median)", "tokens/s (median)"], rows,
                        title=f"sequential: {args.reps} streamed requests each, max_tokens {MAX_TOKENS}, greedy")
            print(f"same text from both: {same_text}/{args.reps}\n")
            crowd = {}
            for side, url in (("ours", ours_url), ("theirs", theirs_url)):
                errors, firsts = concurrent(url, side == "ours", args.clients)
                crowd[side] = (errors, percentile(firsts, 90.0))
            print_table(["server", "errors", "p90 first token ms"],
                        [[side, crowd[side][0], crowd[side][1] * 1000] for side in ("ours", "theirs")],
                        title=f"concurrent: {args.clients} streaming clients at once")
        finally:
            stop_all([ours_process, theirs_process], wait=15)
        met = print_ratio([
            ratio_part("first_token", figures["ours"]["first"] / figures["theirs"]["first"], "<=", 1.05),
            ratio_part("tokens_per_s", figures["ours"]["rate"] / figures["theirs"]["rate"], ">=", 0.95),
            ratio_part("concurrent_errors", float(crowd["ours"][0]), "<=", float(crowd["theirs"][0])),
        ])
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
