"""Soak on the real bus: four sessions asking at once for minutes, a flaky remote model, no leaks.

ovos-messagebus and ovos-core run as subprocesses with the skill; a persona answers with
``openai`` (a FakeOpenAIServer in this process where every 5th request fails with HTTP 500 and
the others stream two sentences), then ``failure``. Every question must end with
``ovos.utterance.handled`` after at least one ``speak``: the answer, or the failure line when the
server failed. The ovos-core process must not grow: its resident memory, threads and open files
are read from /proc after a warm-up and again at the end.

``PERSONA_SOAK_SECONDS`` sets the length of the measured run (default 120).
"""
from __future__ import annotations

import gc
import os
import re
import threading
import time
import tracemalloc
from pathlib import Path
from typing import Dict, List, Optional

import pytest
from ovos_utils.log import LOG

from conftest import make_persona
from openai_server import Behaviour, FakeOpenAIServer, SSEStream, chat_chunk, error_reply, sse
from ovos_skill_persona_fallback.ovos_stack import DEFAULT_PIPELINE, END_OF_UTTERANCE, OVOSStack
from ovos_skill_persona_fallback.engine import PersonaEngine
from ovos_skill_persona_fallback.languages import dialog_lines
from ovos_skill_persona_fallback.memory import ConversationMemory

SOAK_SECONDS = float(os.environ.get("PERSONA_SOAK_SECONDS", "120"))
SESSIONS = 4
FAIL_EVERY = 5
#: questions per session before the baseline is taken: thread pools, caches and the SQLite page
#: cache reach their working size during the warm-up, so what grows after it is a leak
WARMUP_QUESTIONS = 25
ASK_TIMEOUT_S = 60
#: resident memory may move by allocator noise and SQLite's page cache (up to 2 MB per
#: connection), and ovos-persona's pipeline plugin, loaded by ovos-core from this venv, keeps
#: every utterance and spoken line of every session (~0.4 KB per question, by tracemalloc in
#: core). The default run asks ~5000 questions, so the bound is ~4 KB per question: an answer, an
#: HTTP response or a failure with its traceback kept per question would pass it
RSS_GROWTH_LIMIT_KB = 20 * 1024
#: a thread or file leaked per question would show as hundreds; pools may still round up a little
THREAD_GROWTH_LIMIT = 4
FD_GROWTH_LIMIT = 8

#: the harness's pipeline without padacioso: padacioso 1.0 matches every utterance in a new
#: ProcessPoolExecutor (a fork per question), and with concurrent sessions ovos-core's open pipes
#: grew by ~2 per question (176 -> 560 descriptors over 200 questions; none with one session).
#: That is not this skill's to fix, it would hide any leak of ours, and it caps the rate at ~7
#: questions/s; only fallbacks answer here, so the intent stages are not needed.
PIPELINE = [stage for stage in DEFAULT_PIPELINE if not stage.startswith("padacioso")]

ANSWER_RE = re.compile(r"Answer (\d+) begins\.")
FAILURE_LINES = set(dialog_lines("en-us", "failure"))


class EveryFifthFails(Behaviour):
    """Request n gets HTTP 500 when n is a multiple of FAIL_EVERY, else a two-sentence stream."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.served = 0
        self.failed = 0

    def serve(self, handler, request) -> None:
        with self._lock:
            self.served += 1
            number = self.served
            fail = number % FAIL_EVERY == 0
            self.failed += fail
        if fail:
            error_reply(500, "overloaded").serve(handler, request)
        else:
            SSEStream(sse(chat_chunk(f"Answer {number} begins. "), chat_chunk(f"Answer {number} ends."))
                      ).serve(handler, request)


def proc_status(pid: int) -> Dict[str, int]:
    """Resident memory (kB), threads and open file descriptors of a process, from /proc."""
    status = Path(f"/proc/{pid}/status").read_text()
    rss = int(re.search(r"^VmRSS:\s+(\d+) kB", status, re.M).group(1))
    return {"rss_kb": rss, "threads": len(os.listdir(f"/proc/{pid}/task")),
            "fds": len(os.listdir(f"/proc/{pid}/fd"))}


class Tally:
    """What the sessions heard, counted under a lock."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.asked = 0
        self.answered = 0
        self.errors_spoken = 0
        self.problems: List[str] = []

    def check(self, utterance: str, messages: List) -> None:
        spoken = OVOSStack.spoken(messages)
        problem: Optional[str] = None
        answered = errored = False
        if not messages or messages[-1].msg_type != END_OF_UTTERANCE:
            problem = f"{utterance!r} did not end with {END_OF_UTTERANCE}"
        elif len(spoken) == 2 and ANSWER_RE.fullmatch(spoken[0]) \
                and spoken[1] == spoken[0].replace("begins", "ends"):
            answered = True
        elif len(spoken) == 1 and spoken[0] in FAILURE_LINES:
            errored = True
        else:
            problem = f"{utterance!r}: unexpected speech {spoken}"
        with self.lock:
            self.asked += 1
            self.answered += answered
            self.errors_spoken += errored
            if problem:
                self.problems.append(problem)


def ask_until(stack: OVOSStack, session: int, deadline: float, limit: Optional[int], tally: Tally,
              failures: List[BaseException]) -> None:
    count = 0
    try:
        while time.monotonic() < deadline and (limit is None or count < limit):
            utterance = f"tell me about soak topic {session} {count}"
            tally.check(utterance, stack.ask(utterance, session_id=f"soak-{session}", timeout=ASK_TIMEOUT_S))
            count += 1
    except BaseException as err:  # noqa: BLE001 - handed to the main thread, which fails with it
        failures.append(err)


def run_sessions(stack: OVOSStack, seconds: float, limit: Optional[int], tally: Tally) -> None:
    failures: List[BaseException] = []
    deadline = time.monotonic() + seconds
    threads = [threading.Thread(target=ask_until, args=(stack, n, deadline, limit, tally, failures))
               for n in range(SESSIONS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(seconds + ASK_TIMEOUT_S * 2)
    if failures:
        raise failures[0]


@pytest.mark.slow
def test_soak_four_sessions_flaky_model_no_leaks(tmp_path):
    personas = tmp_path / "personas"
    personas.mkdir()
    with FakeOpenAIServer() as server:
        flaky = EveryFifthFails()
        server.route("/v1/chat/completions", flaky)
        (personas / "soak.yaml").write_text(
            "name: Soak\nlang: en-us\nsystem_prompt: You are {name}.\nsolvers: [openai, failure]\n"
            f"openai: {{api_url: '{server.url}/v1', retries: 0, "
            "timeout: {read: 10, first_chunk: 10, total: 60}}\n")
        settings = {"persona_dirs": [str(personas)], "default_persona": "Soak", "thinking_delay": 30}
        with OVOSStack(config={"intents": {"pipeline": PIPELINE}}, skill_settings=settings, timeout=90,
                       log_level="WARNING") as stack:
            pid = stack.core_process.pid

            warmup = Tally()
            run_sessions(stack, ASK_TIMEOUT_S * 5, WARMUP_QUESTIONS, warmup)
            assert warmup.problems == [] and warmup.asked == SESSIONS * WARMUP_QUESTIONS
            time.sleep(1.0)  # let the last handlers return
            before = proc_status(pid)

            tally = Tally()
            started = time.monotonic()
            samples = []
            sampler_stop = threading.Event()

            def sample() -> None:
                while not sampler_stop.wait(10):
                    samples.append((round(time.monotonic() - started), proc_status(pid)["rss_kb"]))

            sampler = threading.Thread(target=sample, daemon=True)
            sampler.start()
            run_sessions(stack, SOAK_SECONDS, None, tally)
            elapsed = time.monotonic() - started
            sampler_stop.set()
            time.sleep(1.0)
            after = proc_status(pid)
            assert stack.running, "a service died during the soak"

    total_failed = flaky.failed
    print(f"\nsoak: {SESSIONS} sessions for {elapsed:.0f} s: {tally.asked} questions "
          f"({tally.asked / elapsed:.1f}/s), {tally.answered} answered, {tally.errors_spoken} errors spoken "
          f"(server failed {total_failed} of {flaky.served} requests, warm-up included)")
    print(f"soak: ovos-core RSS {before['rss_kb'] / 1024:.1f} MB -> {after['rss_kb'] / 1024:.1f} MB "
          f"({(after['rss_kb'] - before['rss_kb']) / 1024:+.1f} MB), threads {before['threads']} -> "
          f"{after['threads']}, fds {before['fds']} -> {after['fds']}")
    print("soak: RSS samples (s, MB): " + ", ".join(f"{t}:{kb / 1024:.1f}" for t, kb in samples))

    assert tally.problems == [], tally.problems[:5]
    assert tally.asked >= SESSIONS, "the soak asked nothing"
    assert tally.answered + tally.errors_spoken == tally.asked
    # each HTTP 500 became exactly one spoken failure line, and nothing else did
    assert warmup.errors_spoken + tally.errors_spoken == total_failed
    assert flaky.served == warmup.asked + tally.asked
    assert after["rss_kb"] - before["rss_kb"] < RSS_GROWTH_LIMIT_KB
    assert after["threads"] - before["threads"] <= THREAD_GROWTH_LIMIT
    assert after["fds"] - before["fds"] <= FD_GROWTH_LIMIT


ENGINE_WARMUP_QUESTIONS = 400
ENGINE_QUESTIONS = 600
#: Python heap allowed per question once warm: one retained answer, failure (with its traceback)
#: or HTTP response would cost several KB each, so a real leak shows far above this
ENGINE_BYTES_PER_QUESTION = 512


@pytest.mark.slow
def test_engine_heap_stays_flat_over_many_questions(tmp_path, monkeypatch):
    """The same flaky model through the engine alone: what it keeps on the Python heap, measured."""
    # pytest keeps every log record it captures; 200 "trying the next one" lines would be its growth
    monkeypatch.setattr(LOG, "level", "WARNING")
    with FakeOpenAIServer() as server:
        flaky = EveryFifthFails()
        server.route("/v1/chat/completions", flaky)
        engine = PersonaEngine(include_shipped=False, memory=ConversationMemory(tmp_path / "conv.db"),
                               default_persona="Soak")
        engine.add_persona(make_persona("Soak", ("openai", "failure"), solver_configs={
            "openai": {"api_url": f"{server.url}/v1", "retries": 0}}))

        def ask(count: int) -> None:
            for number in range(count):
                answer = engine.ask(f"tell me about engine topic {number}", session_id=f"s{number % SESSIONS}")
                assert len(answer.sentences) in (1, 2)
            server.requests.clear()  # the fake server's own record of requests is not the engine's
            gc.collect()

        try:
            tracemalloc.start()
            try:
                # warm up while traced: bounded caches then hold traced entries only, so replacing
                # one (an untraced old entry freed, a traced new one made) cannot look like growth
                ask(ENGINE_WARMUP_QUESTIONS)
                before = tracemalloc.get_traced_memory()[0]
                ask(ENGINE_QUESTIONS)
                growth = tracemalloc.get_traced_memory()[0] - before
            finally:
                tracemalloc.stop()
        finally:
            engine.close()
    print(f"\nengine: {ENGINE_QUESTIONS} questions, Python heap {growth / 1024:+.1f} KB "
          f"({growth / ENGINE_QUESTIONS:+.0f} B per question), {flaky.failed} HTTP 500s")
    assert growth < ENGINE_QUESTIONS * ENGINE_BYTES_PER_QUESTION
