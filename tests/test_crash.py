"""Nothing is lost: kill -9 in the middle of an answer or of a write, and writers in several processes.

The killed and the concurrent code run in real subprocesses (tests/crash_worker.py) on a real
SQLite file; the test process plays the remote model (FakeOpenAIServer) and then reopens the file.
"""
from __future__ import annotations

import json
import os
import queue
import random
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Dict, List

import pytest

from crash_worker import PERSONA, SESSION, hammer_answer, question
from openai_server import FakeOpenAIServer, SSEStream, chat_chunk, sse
from ovos_skill_persona_fallback.memory import BUSY_TIMEOUT_MS, ConversationMemory

# in the full run, not the quick lane (-m "not slow"): kill -9 and multi-process writers
pytestmark = pytest.mark.slow

WORKER = Path(__file__).resolve().parent / "crash_worker.py"
EVENT_TIMEOUT_S = 30.0


class Worker:
    """A crash_worker.py subprocess whose JSON reports are read on a thread (so waits can time out)."""

    def __init__(self, *args: Any) -> None:
        self.process = subprocess.Popen([sys.executable, str(WORKER), *map(str, args)], stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        self.events: "queue.Queue[Dict[str, Any]]" = queue.Queue()
        self.seen: List[Dict[str, Any]] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.process.stdout:
            if line.startswith("{"):  # OVOS logs go to stdout too; reports are the JSON lines
                self.events.put(json.loads(line))
        self.events.put({"event": "exit"})

    def next(self, timeout: float = EVENT_TIMEOUT_S) -> Dict[str, Any]:
        event = self.events.get(timeout=timeout)
        self.seen.append(event)
        assert event["event"] != "exit", f"the worker ended early (rc={self.process.wait()}): {self.seen}"
        return event

    def send(self, line: str) -> None:
        self.process.stdin.write(line + "\n")
        self.process.stdin.flush()

    def kill(self) -> None:
        os.kill(self.process.pid, signal.SIGKILL)
        assert self.process.wait(10) == -signal.SIGKILL

    def finish(self, timeout: float = 60) -> int:
        try:
            return self.process.wait(timeout)
        finally:
            if self.process.poll() is None:
                self.process.kill()
                self.process.wait()


def integrity(path: Path) -> str:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return conn.execute("PRAGMA integrity_check").fetchone()[0]
    finally:
        conn.close()


def stored(path: Path) -> List[tuple]:
    conn = sqlite3.connect(path)
    try:
        return conn.execute("SELECT session_id, question, answer, interrupted FROM turns ORDER BY id").fetchall()
    finally:
        conn.close()


def two_sentences(turn: int) -> SSEStream:
    parts = [sse(chat_chunk(f"Answer {turn} begins. "), done=False), sse(chat_chunk(f"Answer {turn} ends."))]
    return SSEStream("", pieces=parts, interval=0.05)


def test_kill_9_mid_answer_keeps_every_completed_turn_and_no_half_turn(tmp_path):
    db = tmp_path / "conv.db"
    with FakeOpenAIServer() as server:
        server.script(*(two_sentences(turn) for turn in (1, 2, 3)))
        # the 4th answer: a sentence, then the model stalls (the process dies meanwhile)
        server.script(SSEStream("", pieces=[sse(chat_chunk("The fourth answer starts. "), chat_chunk("It goes"),
                                                done=False),
                                            sse(chat_chunk(" on and on."))], interval=30))
        worker = Worker("converse", db, f"{server.url}/v1", 4)
        try:
            for turn in (1, 2, 3):
                assert worker.next() == {"event": "sentence", "turn": turn, "text": f"Answer {turn} begins."}
                assert worker.next() == {"event": "sentence", "turn": turn, "text": f"Answer {turn} ends."}
                assert worker.next() == {"event": "turn", "turn": turn}
            assert worker.next() == {"event": "sentence", "turn": 4, "text": "The fourth answer starts."}
            worker.kill()
        finally:
            worker.finish()
        assert len(server.requests) == 4
        assert len(server.requests[3].body["messages"]) == 1 + 3 * 2 + 1, "turn 4 was sent with turns 1-3"

        assert integrity(db) == "ok"
        memory = ConversationMemory(db)
        try:
            turns = memory.history(SESSION, PERSONA, max_turns=100)
            completed = [(question(n), f"Answer {n} begins. Answer {n} ends.", False) for n in (1, 2, 3)]
            assert [(t.question, t.answer, t.interrupted) for t in turns[:3]] == completed
            # the interrupted turn is absent (the process died before recording it) or, if it was
            # recorded, holds exactly what was delivered and says it was interrupted
            assert [(t.question, t.answer, t.interrupted) for t in turns[3:]] in (
                [], [(question(4), "The fourth answer starts.", True)])
            assert memory.degraded is None
        finally:
            memory.close()

        # a restarted process carries on with the same conversation
        server.script(two_sentences(5))
        worker = Worker("converse", db, f"{server.url}/v1", 1)
        try:
            assert [worker.next()["event"] for _ in range(3)] == ["sentence", "sentence", "turn"]
            assert worker.finish() == 0
        finally:
            worker.finish()
        sent = server.requests[4].body["messages"]
        assert [m["content"] for m in sent[1:7:2]] == [question(n) for n in (1, 2, 3)]
    assert integrity(db) == "ok"


def test_kill_9_while_writing_never_leaves_a_torn_turn(tmp_path):
    db = tmp_path / "conv.db"
    rng = random.Random(1234)
    next_turn = 0
    for round_ in range(4):
        worker = Worker("hammer", db, next_turn)
        acknowledged = []
        try:
            assert worker.next()["degraded"] is None
            while len(acknowledged) < 25:
                acknowledged.append(worker.next()["turn"])
            time.sleep(rng.uniform(0, 0.01))  # land somewhere inside a later write
            worker.kill()
        finally:
            worker.finish()
        assert integrity(db) == "ok", f"round {round_}"
        rows = stored(db)
        turns = [int(q.split()[-1].rstrip("?")) for _, q, _, _ in rows]
        assert turns == list(range(len(turns))), "every turn once, in order"
        assert turns[-1] >= acknowledged[-1], "an acknowledged turn was lost"
        for turn, (_, asked, answer, interrupted) in zip(turns, rows):
            assert (asked, answer, interrupted) == (question(turn), hammer_answer(turn), 0), f"torn turn {turn}"
        next_turn = turns[-1] + 1


WRITER_PROCESSES = 2
THREADS_PER_PROCESS = 4
LOCAL_THREADS = 2
TURNS_PER_THREAD = 100


def test_writers_in_two_processes_and_many_threads_lose_no_turn(tmp_path):
    db = tmp_path / "conv.db"
    workers = [Worker("write", db, f"p{n}", THREADS_PER_PROCESS, TURNS_PER_THREAD)
               for n in range(WRITER_PROCESSES)]
    local = ConversationMemory(db)
    errors: List[str] = []
    try:
        for worker in workers:
            assert worker.next() == {"event": "ready", "degraded": None}
        assert local.degraded is None
        conn = local._conn
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA busy_timeout").fetchone()[0] == BUSY_TIMEOUT_MS

        def writer(index: int) -> None:
            try:
                for turn in range(TURNS_PER_THREAD):
                    local.record(f"local-{index}", PERSONA, question(turn), f"answer {turn}.",
                                 max_turns=TURNS_PER_THREAD)
            except Exception as err:  # collected and asserted below
                errors.append(repr(err))

        threads = [threading.Thread(target=writer, args=(index,)) for index in range(LOCAL_THREADS)]
        for worker in workers:
            worker.send("go")
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
        for worker in workers:
            assert worker.next(120) == {"event": "done", "degraded": None, "errors": []}
            assert worker.finish() == 0
    finally:
        for worker in workers:
            worker.finish()
    assert errors == [] and local.degraded is None
    local.close()

    sessions = ([f"p{p}-{t}" for p in range(WRITER_PROCESSES) for t in range(THREADS_PER_PROCESS)]
                + [f"local-{t}" for t in range(LOCAL_THREADS)])
    rows = stored(db)
    assert len(rows) == len(sessions) * TURNS_PER_THREAD
    for session in sessions:
        mine = [(q, a) for s, q, a, _ in rows if s == session]
        assert mine == [(question(turn), f"answer {turn}.") for turn in range(TURNS_PER_THREAD)], session
    assert integrity(db) == "ok"
