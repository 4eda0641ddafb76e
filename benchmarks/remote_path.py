"""Remote path: our ``openai`` solver vs ovos-openai-plugin's ``OpenAIChatCompletionsSolver``,
both streaming from the same llama-cpp-python OpenAI-compatible server on 127.0.0.1.

The server (``python -m llama_cpp.server``) serves a tiny random-weight GGUF written by
``tests/tiny_gguf.write_tiny_gguf`` (fixed weight seed, with a few words that end in a period in
its vocabulary so the random text has sentence ends). Both clients send the same chat (system +
user), ``max_tokens``, ``temperature=0`` (greedy decoding, so the answer does not depend on a seed:
ovos-openai-plugin has no seed option, and llama-cpp-python draws a fresh seed per request when
none is sent; our solver is left without a seed too so both bodies sample alike) and ``top_p``; the
server's defaults for ``top_k``/``repeat_penalty`` (40/1.1) equal what our solver sends. The
script checks that both received the same text.

Measured per request (``time.perf_counter()`` in this process, from calling the solver):

* first chunk    - first text chunk out of the HTTP stream. Ours: first item of
  ``OpenAISolver.stream``. Theirs: first item of its internal ``_do_streaming_api_request``
  (wrapped on the instance to take the time; behaviour unchanged).
* first sentence - ours: first sentence out of ``speech.SentenceSplitter`` fed with our chunks (the
  splitter emits "word." once the following whitespace arrives, so it needs one more token).
  Theirs: the plugin yields whole sentences itself (a chunk ending in . ! ? : or newline), so its
  first yielded item from ``stream_chat_utterances`` is its first sentence.
* total          - until the stream is exhausted (ours: plus ``SentenceSplitter.flush``).

Requests alternate (ours, theirs / theirs, ours) over the same messages, after a warm-up. Before
every timed request an untimed, fully read one-token request with another prompt puts the server in
the same state for both: idle (ovos-openai-plugin stops reading at ``finish_reason`` and leaves the
server finishing the stream, which otherwise delays whichever request comes next) and with no
cached prefix beyond the shared system prompt (llama.cpp reuses the previous request's prompt);
then a ``gc.collect()``, so neither client pays inside its timed window for the other's garbage.
Differences worth knowing: ovos-openai-plugin opens a new ``requests.Session`` (a new TCP
connection) per request and drops a last sentence that has no final punctuation; ours keeps the
connection alive and speaks the tail.
"""
from __future__ import annotations

import argparse
import gc
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

from .bus_common import add_tests_to_path, machine_note, median, ms, p90, print_table, ratio
from .common import stop_all

SYSTEM = "You are Ada."
# greedy answers of the tiny model (weight seed 1) to these have the same first sentence under
# both splitting rules; the script reports whether that still holds on this machine
MESSAGES = ["what is the weather today", "hello there", "tell me a joke", "is it going to rain tomorrow",
            "play some music"]
SENTENCE_END_WORDS = ("yes.", "no.", "today.", "now.", "too.", "again.", "here.", "there.", "well.", "indeed.",
                      "right.", "true.", "okay.", "fine.", "sure.", "great.", "nice.", "done.")
WEIGHT_SEED = 1
MAX_TOKENS = 64
TEMPERATURE = 0.0
TOP_P = 0.95
N_CTX = 2048


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(model: Path, timeout: float = 60.0) -> tuple:
    """Start llama_cpp.server on a free loopback port; return (process, base url) once /v1/models answers."""
    import requests

    port = _free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "llama_cpp.server", "--model", str(model), "--host", "127.0.0.1",
         "--port", str(port), "--n_ctx", str(N_CTX), "--verbose", "False"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"llama_cpp.server exited: {process.stderr.read()[-2000:]}")
        try:
            if requests.get(f"{url}/v1/models", timeout=1).ok:
                return process, url
        except requests.RequestException:
            time.sleep(0.1)
    process.kill()
    raise SystemExit(f"llama_cpp.server did not answer /v1/models within {timeout:.0f} s")


def reset_server(session: Any, url: str) -> None:
    """One fully read, one-token request with an unrelated prompt: the server is idle and its
    prompt cache holds nothing of the next question. Then a full garbage collection, so neither
    client pays for the other's garbage (the plugin leaves a requests.Session and an unclosed
    response behind per request) inside its timed window."""
    reply = session.post(f"{url}/v1/chat/completions", timeout=30, json={
        "messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "reset"}],
        "max_tokens": 1, "temperature": 0.0, "stream": False})
    reply.raise_for_status()
    reply.json()
    gc.collect()


class Samples:
    """Timings and outputs of one contender."""

    def __init__(self, label: str) -> None:
        self.label = label
        self.first_chunk: List[float] = []
        self.first_sentence: List[float] = []
        self.total: List[float] = []
        self.sentences: Dict[str, List[str]] = {}
        self.text: Dict[str, str] = {}
        self.errors = 0

    def row(self) -> List[str]:
        return [self.label, str(len(self.total)), ms(median(self.first_chunk)), ms(p90(self.first_chunk)),
                ms(median(self.first_sentence)), ms(p90(self.first_sentence)), ms(median(self.total)),
                ms(p90(self.total)), str(self.errors)]


def run_ours(solver: Any, question: str, record: Optional[Samples]) -> None:
    from ovos_skill_persona_fallback.solvers.base import CancelToken, ChatMessage, Role
    from ovos_skill_persona_fallback.speech import SentenceSplitter

    messages = [ChatMessage(Role.SYSTEM, SYSTEM), ChatMessage(Role.USER, question)]
    splitter = SentenceSplitter()
    sentences: List[str] = []
    chunks: List[str] = []
    first_chunk = first_sentence = None
    start = time.perf_counter()
    for chunk in solver.stream(messages, lang="en-us", cancel=CancelToken(), conversation_id="bench"):
        if first_chunk is None:
            first_chunk = time.perf_counter() - start
        chunks.append(chunk)
        for sentence in splitter.feed(chunk):
            if first_sentence is None:
                first_sentence = time.perf_counter() - start
            sentences.append(sentence)
    for sentence in splitter.flush():
        if first_sentence is None:
            first_sentence = time.perf_counter() - start
        sentences.append(sentence)
    total = time.perf_counter() - start
    if record is not None:
        _record(record, question, first_chunk, first_sentence, total, sentences, "".join(chunks))


def run_theirs(solver: Any, question: str, record: Optional[Samples]) -> None:
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": question}]
    stamps: Dict[str, float] = {}
    chunks: List[str] = []
    original = type(solver)._do_streaming_api_request

    def timed(messages_: Any) -> Any:
        for chunk in original(solver, messages_):
            stamps.setdefault("first_chunk", time.perf_counter())
            chunks.append(chunk)
            yield chunk

    solver._do_streaming_api_request = timed
    sentences: List[str] = []
    first_sentence = None
    start = time.perf_counter()
    for sentence in solver.stream_chat_utterances(messages, lang="en-us"):
        if first_sentence is None:
            first_sentence = time.perf_counter() - start
        sentences.append(sentence)
    total = time.perf_counter() - start
    first_chunk = stamps["first_chunk"] - start if "first_chunk" in stamps else None
    if record is not None:
        _record(record, question, first_chunk, first_sentence, total, sentences, "".join(chunks))


def _record(record: Samples, question: str, first_chunk: Optional[float], first_sentence: Optional[float],
            total: float, sentences: List[str], text: str) -> None:
    if first_chunk is None or first_sentence is None:
        record.errors += 1
        return
    record.first_chunk.append(first_chunk)
    record.first_sentence.append(first_sentence)
    record.total.append(total)
    record.sentences[question] = sentences
    record.text[question] = text


def _norm(text: str) -> str:
    return " ".join(text.split())


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.remote_path", description=__doc__.split("\n")[0])
    parser.add_argument("--reps", type=int, default=20, help="timed requests per contender (default 20)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed requests per contender first")
    args = parser.parse_args(argv)

    add_tests_to_path()
    from tiny_gguf import DEFAULT_WORDS, write_tiny_gguf
    from ovos_skill_persona_fallback.solvers.base import GenerationSettings, SolverContext
    from ovos_skill_persona_fallback.solvers.openai_compat import OpenAISolver
    try:
        from importlib.metadata import version
        from ovos_solver_openai_persona.engines import OpenAIChatCompletionsSolver
        plugin_version = version("ovos-openai-plugin")
    except ImportError:
        OpenAIChatCompletionsSolver, plugin_version = None, None
        print("ovos-openai-plugin is not installed: only our numbers are measured "
              "(pip install 'ovos-openai-plugin==2.0.6')", file=sys.stderr)

    with tempfile.TemporaryDirectory(prefix="bench-remote-") as tmp:
        model = write_tiny_gguf(Path(tmp) / "tiny.gguf", n_ctx=N_CTX, seed=WEIGHT_SEED,
                                vocab=tuple(DEFAULT_WORDS) + SENTENCE_END_WORDS)
        process, url = start_server(model)
        try:
            generation = GenerationSettings(temperature=TEMPERATURE, top_p=TOP_P, top_k=40, repeat_penalty=1.1,
                                            max_tokens=MAX_TOKENS, seed=None)
            ours = OpenAISolver({"api_url": f"{url}/v1", "model": "tiny", "retries": 0},
                                SolverContext("Ada", "en-us", generation))
            theirs = None
            if OpenAIChatCompletionsSolver is not None:
                theirs = OpenAIChatCompletionsSolver({
                    "api_url": f"{url}/v1", "key": "unused", "model": "tiny", "max_tokens": MAX_TOKENS,
                    "temperature": TEMPERATURE, "top_p": TOP_P, "enable_memory": False, "system_prompt": SYSTEM})
            mine, other = Samples("ours (openai solver + SentenceSplitter)"), Samples(
                f"ovos-openai-plugin {plugin_version} (stream_chat_utterances)")
            import requests
            resetter = requests.Session()
            for n in range(args.warmup):
                reset_server(resetter, url)
                run_ours(ours, MESSAGES[n % len(MESSAGES)], None)
                if theirs is not None:
                    reset_server(resetter, url)
                    run_theirs(theirs, MESSAGES[n % len(MESSAGES)], None)
            started = time.monotonic()
            for n in range(args.reps):
                question = MESSAGES[n % len(MESSAGES)]
                order = [(run_ours, ours, mine), (run_theirs, theirs, other)]
                if n % 2:
                    order.reverse()
                for runner, solver, record in order:
                    if solver is not None:
                        reset_server(resetter, url)
                        runner(solver, question, record)
            elapsed = time.monotonic() - started
            ours.close()
            resetter.close()
        finally:
            stop_all([process])

    print(f"remote path: {args.reps} requests per contender against llama_cpp.server (tiny GGUF, "
          f"max_tokens={MAX_TOKENS}, temperature={TEMPERATURE}, top_p={TOP_P}), {elapsed:.1f} s; {machine_note()}; "
          "milliseconds")
    rows = [mine.row()] + ([other.row()] if theirs is not None else [])
    print_table(["contender", "n", "1st chunk med", "1st chunk p90", "1st sentence med", "1st sentence p90",
                 "total med", "total p90", "errors"], rows)
    if theirs is not None:
        same_text = sum(1 for q in MESSAGES if q in mine.text and mine.text[q] == other.text.get(q))
        same_first = sum(1 for q in MESSAGES if mine.sentences.get(q) and other.sentences.get(q)
                         and _norm(mine.sentences[q][0]) == _norm(other.sentences[q][0]))
        tails = sum(1 for q in MESSAGES if len(_norm(" ".join(other.sentences.get(q, []))))
                    < len(_norm(" ".join(mine.sentences.get(q, [])))))
        print(f"same streamed text: {same_text}/{len(MESSAGES)} messages; same first sentence: "
              f"{same_first}/{len(MESSAGES)}; answers where the plugin spoke less (dropped an unpunctuated tail): "
              f"{tails}/{len(MESSAGES)}")
        parts = []
        for name, attr in (("first_chunk", "first_chunk"), ("first_sentence", "first_sentence"), ("total", "total")):
            parts.append(f"{name} ours/theirs={ratio(median(getattr(mine, attr)), median(getattr(other, attr))):.2f}")
        print("RATIO " + "; ".join(parts) + " (below 1 = ours faster; no numeric target given)")
    else:
        print("RATIO theirs not measured (ovos-openai-plugin missing); ours first_sentence median="
              f"{ms(median(mine.first_sentence))} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
