"""Fault injection through the whole engine with the real solvers its default factory builds.

Every fault must end in the next solver's answer or a clear, partial answer; within a bound; with
the failure's class and reason recorded; and the NEXT question on the same engine must work.
The remote model is a real HTTP server on 127.0.0.1 (``FakeOpenAIServer``), the local model a
real GGUF read by llama.cpp, the translator a real OVOS plugin, the memory a real SQLite file.
"""
from __future__ import annotations

import contextlib
import logging
import os
import shutil
import sqlite3
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, List, Optional, Tuple

import pytest

from conftest import PLUGINS, make_persona
from openai_server import (SSEStream, Drop, FakeOpenAIServer, _Handler, _HTTPServer, chat_chunk,
                           error_reply, sse)
from ovos_skill_persona_fallback.engine import Answer, PersonaEngine
from ovos_skill_persona_fallback.languages import dialog_lines
from ovos_skill_persona_fallback.memory import ConversationMemory
from ovos_skill_persona_fallback.persona import Persona
from ovos_skill_persona_fallback.solvers.base import (SolverConfigError, SolverResponseError,
                                                      SolverTimeout, SolverUnavailable)
from ovos_skill_persona_fallback.translation import Translator

# in the full run, not the quick lane (-m "not slow"): the fault table
pytestmark = pytest.mark.slow

SECRET = "sk-fault-injection-0123456789"
SESSION = "faults"
QUESTION = "What is the answer?"
NEXT_QUESTION = "And now?"
GOOD_REPLY = ("All good again. ", "Ask me anything.")
GOOD_SENTENCES = ["All good again.", "Ask me anything."]
#: every line the failure solver may say in English (each is one sentence)
FAILURE_LINES = dialog_lines("en-us", "failure")
#: a healthy answer from the local server or the tiny model must come well inside this
NEXT_BOUND_S = 3.0


def good_reply() -> SSEStream:
    return SSEStream(sse(*(chat_chunk(part) for part in GOOD_REPLY)))


class PinnedServer(FakeOpenAIServer):
    """A FakeOpenAIServer on a chosen port: brings a 'down' server back where the persona points."""

    def __init__(self, port: int) -> None:
        super().__init__()
        self._wanted_port = port

    def start(self) -> "PinnedServer":
        self._httpd = _HTTPServer(("127.0.0.1", self._wanted_port), _Handler)
        self._httpd.owner = self
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="pinned-openai-server", daemon=True)
        self._thread.start()
        return self


def build_engine(tmp_path: Path, persona: Persona, **options) -> PersonaEngine:
    """An engine as the skill builds it: real solver factory, known solvers, a file database."""
    engine = PersonaEngine(include_shipped=False, memory=ConversationMemory(tmp_path / "conv.db"),
                           default_persona=persona.name, **options)
    engine.add_persona(persona)
    return engine


def timed_ask(engine: PersonaEngine, question: str, **kwargs) -> Tuple[Answer, float]:
    started = time.monotonic()
    answer = engine.ask(question, session_id=SESSION, **kwargs)
    return answer, time.monotonic() - started


def openai_persona(url: str, first_chunk: float) -> Persona:
    return make_persona("Remote", ("openai", "failure"), system_prompt="You are {name}.", solver_configs={
        "openai": {"api_url": f"{url}/v1", "key": SECRET, "model": "remote-model", "retries": 1, "backoff": 0.05,
                   "timeout": {"connect": 1, "read": 3, "first_chunk": first_chunk, "total": 10}}})


# ------------------------------------------------------------------ the remote model misbehaves

@dataclass(frozen=True)
class Fault:
    """One misbehaviour of the remote server and what the listener must get from it."""

    arrange: Callable[[FakeOpenAIServer], None]
    error: type
    fragment: str
    #: exact sentences said; None: one failure line (the chain went on to the failure solver)
    spoken: Optional[Tuple[str, ...]] = None
    requests: Optional[int] = None
    first_chunk: float = 5.0
    bound: float = 2.0
    down: bool = False


def _script(*behaviours) -> Callable[[FakeOpenAIServer], None]:
    return lambda server: server.script(*behaviours)


def _echo_key(request) -> str:
    return f"Incorrect API key provided: {request.header('authorization')}"


HALF = sse(chat_chunk("Half of the answer. "), done=False)
CUT_EVENT = 'data: {"choices": [{"delta": {"content": "and th'

OPENAI_FAULTS = {
    # nothing listens on the port: refused at once, one retry, then the failure line
    "down": Fault(lambda server: server.stop(), SolverUnavailable, "cannot reach", down=True),
    # something accepts the connection and closes it without a word, both attempts
    "refusing": Fault(_script(Drop(), Drop()), SolverUnavailable, "cannot reach", requests=2),
    # a wrong key, echoed back by the server: never retried, never shown
    "401": Fault(_script(error_reply(401, _echo_key)), SolverConfigError, "rejected the API key (HTTP 401)",
                 requests=1),
    "403": Fault(_script(error_reply(403, "forbidden")), SolverConfigError, "rejected the API key (HTTP 403)",
                 requests=1),
    # no scripted behaviour: every known path answers 404, each is tried once
    "404 everywhere": Fault(lambda server: None, SolverConfigError,
                            "HTTP 404 on /v1/chat/completions, /chat/completions, /openai/v1/chat/completions",
                            requests=3),
    "429": Fault(_script(error_reply(429, "slow down"), error_reply(429, "slow down")), SolverUnavailable,
                 "rate limiting (HTTP 429): slow down", requests=2),
    "500": Fault(_script(error_reply(500, "boom"), error_reply(500, "boom")), SolverResponseError,
                 "answered HTTP 500: boom", requests=2),
    # headers come after 3 s; the chain's first-chunk deadline is 0.5 s
    "slow first byte": Fault(_script(SSEStream(sse(chat_chunk("Too late.")), delay=3.0)), SolverTimeout,
                             "openai gave no first chunk within 0.5 s", requests=1, first_chunk=0.5, bound=1.2),
    # one sentence streamed, then the connection is cut inside the next event: the answer ends there
    "dropped mid-stream": Fault(_script(SSEStream(HALF, pieces=[HALF, 'data: {"choi'], drop=True)),
                                SolverResponseError, "dropped mid-reply", spoken=("Half of the answer.",),
                                requests=1),
    "garbage SSE": Fault(_script(SSEStream("data: <html><body>Bad gateway</body></html>\n\n")),
                         SolverResponseError, "invalid JSON in stream event", requests=1),
    # the body ends cleanly, but inside an event: what came before is kept, nothing is guessed
    "truncated SSE": Fault(_script(SSEStream(sse(chat_chunk("Only this arrived. "), done=False) + CUT_EVENT)),
                           SolverResponseError, "invalid JSON in stream event", spoken=("Only this arrived.",),
                           requests=1),
}


@pytest.mark.parametrize("name", list(OPENAI_FAULTS))
def test_remote_fault_falls_through_or_ends_clearly_and_the_next_question_works(name, tmp_path):
    fault = OPENAI_FAULTS[name]
    server = FakeOpenAIServer().start()
    engine = build_engine(tmp_path, openai_persona(server.url, fault.first_chunk))
    try:
        port = server.port
        fault.arrange(server)
        answer, elapsed = timed_ask(engine, QUESTION)

        if fault.spoken is None:
            assert len(answer.sentences) == 1 and answer.sentences[0] in FAILURE_LINES
            assert answer.result.solver_id == "failure" and not answer.result.interrupted
        else:
            assert answer.sentences == list(fault.spoken)
            assert answer.result.solver_id == "openai" and answer.result.interrupted
        assert len(set(answer.sentences)) == len(answer.sentences), "something was said twice"
        heard = answer.text
        [failure] = answer.failures
        assert failure.solver_id == "openai"
        assert type(failure.error) is fault.error, failure.format_traceback()
        assert fault.fragment in str(failure.error)
        assert SECRET not in str(failure.error) and SECRET not in failure.format_traceback()
        assert elapsed < fault.bound, f"{name}: took {elapsed:.2f} s"
        if fault.requests is not None:
            assert len(server.requests) == fault.requests
            assert server.pending == 0

        if fault.down:
            server = PinnedServer(port).start()
        seen = len(server.requests)
        server.script(good_reply())
        answer, elapsed = timed_ask(engine, NEXT_QUESTION)
        assert answer.sentences == GOOD_SENTENCES
        assert answer.failures == [] and answer.result.solver_id == "openai"
        assert elapsed < NEXT_BOUND_S
        [request] = server.requests[seen:]
        assert request.body["messages"][-1] == {"role": "user", "content": NEXT_QUESTION}
        first, second = engine.memory.history(SESSION, "Remote", max_turns=10)
        assert (first.question, first.answer, first.interrupted) == (QUESTION, heard, fault.spoken is not None)
        assert (second.question, second.answer, second.interrupted) == (NEXT_QUESTION, " ".join(GOOD_SENTENCES),
                                                                         False)
        # what was heard is what the model is reminded of, and nothing more
        assert request.body["messages"][1:3] == [{"role": "user", "content": QUESTION},
                                                 {"role": "assistant", "content": first.answer}]
    finally:
        engine.close()
        server.stop()


# ------------------------------------------------------------------ the local model file is bad

@pytest.fixture(scope="module")
def gguf(tmp_path_factory) -> Path:
    pytest.importorskip("llama_cpp")
    pytest.importorskip("gguf")
    from tiny_gguf import write_tiny_gguf

    return write_tiny_gguf(tmp_path_factory.mktemp("faults-gguf") / "tiny.gguf", n_ctx=1024)


def _missing(path: Path, good: Path) -> None:
    pass


def _truncated(path: Path, good: Path) -> None:
    data = good.read_bytes()
    path.write_bytes(data[:len(data) // 2])


def _not_gguf(path: Path, good: Path) -> None:
    path.write_bytes(b"PK\x03\x04 this is a zip file, not a model" * 10)


MODEL_FAULTS = {
    # (how the file is damaged, error class, reason)
    "missing": (_missing, SolverUnavailable, "model file not found"),
    "truncated": (_truncated, SolverUnavailable, "llama.cpp could not load"),
    "not a GGUF": (_not_gguf, SolverConfigError, "not a GGUF model file"),
}


@pytest.mark.parametrize("name", list(MODEL_FAULTS))
def test_bad_model_file_falls_through_and_a_repaired_file_answers(name, tmp_path, gguf):
    damage, error, fragment = MODEL_FAULTS[name]
    path = tmp_path / "models" / "model.gguf"
    path.parent.mkdir()
    damage(path, gguf)
    persona = make_persona("Local", ("llama-cpp", "failure"), solver_configs={
        "llama-cpp": {"model": str(path), "n_ctx": 512, "max_tokens": 8, "seed": 7,
                      "timeout": {"first_chunk": 10, "total": 30}}})
    engine = build_engine(tmp_path, persona)
    try:
        answer, elapsed = timed_ask(engine, QUESTION)
        assert len(answer.sentences) == 1 and answer.sentences[0] in FAILURE_LINES
        [failure] = answer.failures
        assert failure.solver_id == "llama-cpp" and type(failure.error) is error
        assert fragment in str(failure.error) and str(path) in str(failure.error)
        assert elapsed < 2.0

        shutil.copyfile(gguf, path)  # the owner puts the right file in place: no restart needed
        answer, elapsed = timed_ask(engine, NEXT_QUESTION)
        assert answer.failures == [] and answer.result.solver_id == "llama-cpp"
        assert answer.sentences and answer.text.strip()
        assert elapsed < NEXT_BOUND_S
    finally:
        engine.close()


# ------------------------------------------------------------------ the translation plugin raises

PT_QUESTION = "Qual é a capital de França?"
EN_ANSWER = ("The capital of France is Paris. ", "It is a lovely city.")



def test_translation_plugin_raising_gives_the_untranslated_answer_then_recovers(plugin, tmp_path, caplog):
    server = FakeOpenAIServer().start()
    engine = build_engine(tmp_path, openai_persona(server.url, 5.0), translator=Translator(dict(PLUGINS)))
    try:
        plugin.FAIL_WITH.append(RuntimeError("translation service down"))
        server.script(SSEStream(sse(*(chat_chunk(part) for part in EN_ANSWER))))
        with caplog.at_level(logging.WARNING):
            answer, elapsed = timed_ask(engine, PT_QUESTION, lang="pt-PT")
        # the model got the question as said and the listener the answer as written: late, never lost
        assert server.requests[0].body["messages"][-1]["content"] == PT_QUESTION
        assert answer.sentences == ["The capital of France is Paris.", "It is a lovely city."]
        assert answer.failures == [] and answer.result.solver_id == "openai"
        assert elapsed < 2.0
        reports = [r.getMessage() for r in caplog.records if "using the untranslated text" in r.getMessage()]
        assert len(reports) == 3  # the question and each of the two sentences
        assert all("RuntimeError('translation service down')" in report for report in reports)

        plugin.FAIL_WITH.clear()
        server.script(SSEStream(sse(*(chat_chunk(part) for part in EN_ANSWER))))
        answer, elapsed = timed_ask(engine, PT_QUESTION, lang="pt-PT")
        assert server.requests[1].body["messages"][-1]["content"] == "What is the capital of France?"
        assert answer.sentences == ["A capital de França é Paris.", "É uma cidade encantadora."]
        assert elapsed < NEXT_BOUND_S
    finally:
        engine.close()
        server.stop()


# ------------------------------------------------------------------ the conversation database fails

CHAT_PERSONA = make_persona("Chat", ("chitchat", "failure"))
HOW_ARE_YOU = ["I'm doing great, thanks for asking!", "How about you?"]


def db_reports(caplog) -> List[str]:
    """The conversation database's error reports (one per failure that changed where turns go)."""
    return [r.getMessage() for r in caplog.records
            if r.levelno >= logging.ERROR and "conversation database" in r.getMessage()]


def ask_twice(engine: PersonaEngine, bound: float) -> None:
    for _ in range(2):
        answer, elapsed = timed_ask(engine, "how are you")
        assert answer.sentences == HOW_ARE_YOU and answer.failures == []
        assert elapsed < bound


def _chattr(flag: str, path: Path) -> bool:
    chattr = shutil.which("chattr")
    if chattr is None:
        return False
    return subprocess.run([chattr, flag, str(path)], capture_output=True).returncode == 0


@contextlib.contextmanager
def read_only_file(path: Path) -> Iterator[str]:
    """Make ``path`` unwritable for real where possible; yield how ("chmod", "chattr", "query_only").

    Root ignores permission bits, so as root the file is made immutable (``chattr +i``, which
    binds root too). Where that is impossible (no chattr, a file system without the flag, no
    CAP_LINUX_IMMUTABLE) the caller simulates it with ``PRAGMA query_only`` on the store's own
    connection, which fails writes with the same "attempt to write a readonly database".
    """
    if os.geteuid() != 0:
        os.chmod(path, 0o444)
        try:
            yield "chmod"
        finally:
            os.chmod(path, 0o644)
    elif _chattr("+i", path):
        try:
            yield "chattr"
        finally:
            _chattr("-i", path)
    else:
        yield "query_only"


def seed_database(path: Path) -> None:
    store = ConversationMemory(path)
    store.record(SESSION, "Chat", "kept question", "kept answer", max_turns=12)
    store.close()


def turns_in_file(path: Path) -> List[Tuple[str, str]]:
    """The turns stored in the file itself, read without writing anything."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return conn.execute("SELECT question, answer FROM turns ORDER BY id").fetchall()
    finally:
        conn.close()


def remembered(engine: PersonaEngine) -> List[str]:
    return [turn.question for turn in engine.memory.history(SESSION, "Chat", max_turns=12)]


def test_read_only_database_keeps_answering_from_ram_and_reports_once(tmp_path, caplog):
    path = tmp_path / "conv.db"
    seed_database(path)
    with read_only_file(path) as how, caplog.at_level(logging.INFO):
        engine = build_engine(tmp_path, CHAT_PERSONA)
        if how == "query_only":
            engine.memory._conn.execute("PRAGMA query_only = ON")
        try:
            ask_twice(engine, bound=1.0)
            assert engine.memory.degraded and "readonly" in engine.memory.degraded
            assert remembered(engine) == ["kept question", "how are you", "how are you"]
        finally:
            engine.close()
        [report] = db_reports(caplog)
        assert "is unusable (attempt to write a readonly database)" in report
    assert turns_in_file(path) == [("kept question", "kept answer")]


HOLDER = """
import sqlite3, sys
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("BEGIN EXCLUSIVE")
print("locked", flush=True)
sys.stdin.readline()
conn.execute("ROLLBACK")
conn.close()
"""


def test_database_locked_by_another_process_queues_turns_and_writes_them_once_released(tmp_path, caplog):
    from ovos_skill_persona_fallback.memory import BUSY_TIMEOUT_MS
    from ovos_skill_persona_fallback.memory.queued import RETRY_GAP_S

    path = tmp_path / "conv.db"
    seed_database(path)
    engine = build_engine(tmp_path, CHAT_PERSONA)
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(path)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with caplog.at_level(logging.INFO):
            started = time.monotonic()
            stream = engine.stream("how are you", session_id=SESSION)
            said = [next(iter(stream))]
            first_at = time.monotonic() - started
            said += list(stream)
            total = time.monotonic() - started
            # the answer is heard at once; only the recording waits for the lock, then queues the turn
            assert said == HOW_ARE_YOU and first_at < 1.0
            assert total < BUSY_TIMEOUT_MS / 1000 + 2.0
            ask_twice(engine, bound=1.0)  # an outage in progress: retries wait only briefly
            assert engine.memory.pending == 3 and engine.memory.degraded is None
            assert remembered(engine) == ["kept question"] + ["how are you"] * 3, "queued turns are read"
            assert turns_in_file(path) == [("kept question", "kept answer")]
            holder.stdin.write("\n")
            holder.stdin.flush()
            assert holder.wait(10) == 0
            time.sleep(RETRY_GAP_S)  # while an outage is fresh, calls use the queue without trying
            ask_twice(engine, bound=1.0)
        [report] = db_reports(caplog)
        assert "cannot be used for now (database is locked)" in report
        assert any("works again; wrote 3 waiting changes" in r.getMessage() for r in caplog.records)
        assert engine.memory.degraded is None and engine.memory.outage is None and engine.memory.pending == 0
        assert remembered(engine) == ["kept question"] + ["how are you"] * 5
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()
        engine.close()
    assert turns_in_file(path) == [("kept question", "kept answer")] + [("how are you", " ".join(HOW_ARE_YOU))] * 5


def _garbage(path: Path) -> bytes:
    data = b"this is not a database at all\n" * 200
    path.write_bytes(data)
    return data


def _malformed(path: Path) -> bytes:
    """A real database whose pages after the first are overwritten: opens fine, fails on reading."""
    store = ConversationMemory(path)
    for index in range(100):
        store.record("someone-else", "Chat", f"q{index}", "an answer " * 20, max_turns=1000)
    store.close()
    with open(path, "r+b") as handle:
        handle.seek(4096)
        handle.write(b"\xff" * (path.stat().st_size - 4096))
    return path.read_bytes()


CORRUPTIONS = {
    "not a database": _garbage,  # noticed when the file is opened
    "malformed pages": _malformed,  # noticed only by the first query
}


@pytest.mark.parametrize("name", list(CORRUPTIONS))
def test_corrupt_database_is_moved_aside_and_a_new_one_used(name, tmp_path, caplog):
    path = tmp_path / "conv.db"
    damaged = CORRUPTIONS[name](path)
    with caplog.at_level(logging.INFO):
        engine = build_engine(tmp_path, CHAT_PERSONA)
        try:
            ask_twice(engine, bound=1.0)
            assert engine.memory.degraded is None, "a fresh file can be used: no need for RAM"
            assert remembered(engine) == ["how are you", "how are you"]
        finally:
            engine.close()
    [report] = db_reports(caplog)
    assert "was corrupt; moved it to" in report
    [aside] = tmp_path.glob("conv.db.corrupt-*")
    assert aside.read_bytes() == damaged, "the damaged file is kept as it was, never deleted"
    assert turns_in_file(path) == [("how are you", " ".join(HOW_ARE_YOU))] * 2


def test_a_second_corruption_in_the_same_second_keeps_both_damaged_files(tmp_path):
    path = tmp_path / "conv.db"
    kept = []
    for attempt in range(2):
        kept.append(_garbage(path) + bytes([attempt]))
        path.write_bytes(kept[-1])
        store = ConversationMemory(path, clock=lambda: 42.0)
        store.record(SESSION, "Chat", "q", "a", max_turns=5)
        store.close()
    assert (tmp_path / "conv.db.corrupt-42").read_bytes() == kept[0]
    assert (tmp_path / "conv.db.corrupt-42.1").read_bytes() == kept[1]
