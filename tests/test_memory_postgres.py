"""PostgreSQL memory on a real server: schema, index, many writers, outages, secrets, CLI and skill wiring."""
from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Dict, Iterator, List, Sequence

import psycopg
import pytest

from crash_worker import PERSONA, question
from pg_server import PASSWORD, PostgresServer
from test_crash import Worker
from ovos_skill_persona_fallback.engine import PersonaEngine
from ovos_skill_persona_fallback.memory import MemoryConfigError, open_memory
from ovos_skill_persona_fallback.memory.postgres import READ_TIMEOUT_S, SCHEMA_VERSION, PostgresMemory, redact_url
from ovos_skill_persona_fallback.persona import MemorySettings, Persona
from ovos_skill_persona_fallback.solvers.base import CancelToken, ChatMessage, Solver, SolverContext

ROOT = Path(__file__).resolve().parent.parent


class Echo(Solver):
    """Answers every question with one sentence that repeats it (what it heard is checkable)."""

    def stream(self, messages: Sequence[ChatMessage], *, lang: str, cancel: CancelToken,
               conversation_id: str = "") -> Iterator[str]:
        yield f"Heard {messages[-1].content}."


def echo_engine(memory) -> PersonaEngine:
    engine = PersonaEngine(include_shipped=False, memory=memory, known_solvers=None, default_persona="Echo",
                           solver_factory=lambda solver_id, config, context: Echo(config, context),
                           max_concurrent=8, max_waiting=64)
    engine.add_persona(Persona(name="Echo", solvers=("echo",), system_prompt="You are {name}.",
                               memory=MemorySettings(max_turns=1000, max_age_minutes=0)))
    return engine


def rows(url: str, query: str, *args) -> List[tuple]:
    with psycopg.connect(url) as conn:
        return conn.execute(query, args).fetchall()


def wait_until(condition, timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def test_schema_is_created_versioned_and_made_once_by_nodes_starting_together(pg_url):
    stores: List[PostgresMemory] = []
    threads = [threading.Thread(target=lambda: stores.append(open_memory(db_url=pg_url))) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    try:
        assert rows(pg_url, "SELECT version FROM schema_version") == [(SCHEMA_VERSION,)], "migrated once"
        assert all(store.schema_version == SCHEMA_VERSION and store.outage is None for store in stores)
        tables = {name for (name,) in rows(pg_url, "SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}
        assert tables == {"schema_version", "turns", "contexts", "active_personas"}
    finally:
        for store in stores:
            store.close()


def test_an_older_schema_is_migrated_forward_at_start_up(pg_url):
    with psycopg.connect(pg_url, autocommit=True) as conn:  # a database a version-0 node left behind
        conn.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
    store = open_memory(db_url=pg_url)
    try:
        store.record("s", "Ada", "q", "a", max_turns=5)
        assert rows(pg_url, "SELECT version FROM schema_version ORDER BY version") == [(1,)]
        assert rows(pg_url, "SELECT session_id, question FROM turns") == [("s", "q")]
    finally:
        store.close()


def test_history_is_one_index_lookup_at_any_table_size(pg_url):
    store = open_memory(db_url=pg_url)
    try:
        with psycopg.connect(pg_url, autocommit=True) as conn:
            conn.execute("INSERT INTO turns (session_id, persona, created_at, question, answer) "
                         "SELECT 's' || (n % 2000), 'Ada', n, 'q', 'a' FROM generate_series(1, 40000) AS n")
            conn.execute("ANALYZE turns")
            plan = "\n".join(row[0] for row in conn.execute(
                "EXPLAIN SELECT question, answer, created_at, interrupted, user_question, user_answer, lang "
                "FROM turns WHERE session_id = 's7' AND persona = 'Ada' AND created_at >= 0 "
                "ORDER BY id DESC LIMIT 12").fetchall())
        assert "Index Scan Backward using turns_by_conversation" in plan, plan
        assert "Sort" not in plan and "Seq Scan" not in plan, plan
        assert len(store.history("s7", "Ada", max_turns=12)) == 12
    finally:
        store.close()


def test_a_conversation_alternating_between_two_nodes_keeps_its_whole_history_in_order(pg_url):
    nodes = [echo_engine(open_memory(db_url=pg_url)) for _ in range(2)]
    try:
        for index in range(6):
            answer = nodes[index % 2].ask(f"q{index}", session_id="kitchen")
            assert answer.sentences == [f"Heard q{index}."]
        nodes[1].set_active("kitchen", "Echo")
        history = nodes[0].memory.history("kitchen", "Echo", max_turns=20)
        assert [turn.question for turn in history] == [f"q{i}" for i in range(6)]
        assert nodes[0].memory.active("kitchen") == "Echo", "the other node sees the chosen persona"
    finally:
        for node in nodes:
            node.close()


WRITER_PROCESSES = 2
THREADS_PER_PROCESS = 8
TURNS_PER_THREAD = 125  # 2 x 8 x 125 = 2,000 turns


@pytest.mark.slow
def test_two_processes_of_eight_threads_write_2000_turns_and_lose_none(pg_url):
    workers = [Worker("write", pg_url, f"p{n}", THREADS_PER_PROCESS, TURNS_PER_THREAD)
               for n in range(WRITER_PROCESSES)]
    try:
        for worker in workers:
            assert worker.next(60) == {"event": "ready", "degraded": None}
        for worker in workers:
            worker.send("go")
        for worker in workers:
            assert worker.next(180) == {"event": "done", "degraded": None, "errors": []}
            assert worker.finish() == 0
    finally:
        for worker in workers:
            worker.finish()
    stored = rows(pg_url, "SELECT session_id, question, answer FROM turns ORDER BY id")
    assert len(stored) == WRITER_PROCESSES * THREADS_PER_PROCESS * TURNS_PER_THREAD
    for process in range(WRITER_PROCESSES):
        for thread in range(THREADS_PER_PROCESS):
            session = f"p{process}-{thread}"
            mine = [(q, a) for s, q, a in stored if s == session]
            assert mine == [(question(t), f"answer {t}.") for t in range(TURNS_PER_THREAD)], session
    assert {persona for (persona,) in rows(pg_url, "SELECT DISTINCT persona FROM turns")} == {PERSONA}


def db_errors(caplog) -> List[str]:
    return [r.getMessage() for r in caplog.records
            if r.levelno >= logging.ERROR and "conversation database" in r.getMessage()]


def test_database_down_at_start_up_answers_go_on_and_turns_are_written_when_it_is_back(
        postgres_server: PostgresServer, pg_url, caplog):
    postgres_server.kill()
    try:
        with caplog.at_level(logging.INFO):
            engine = echo_engine(PostgresMemory(pg_url, retry_interval_s=0.2, read_timeout_s=0.5))
            try:
                for index in range(3):
                    started = time.monotonic()
                    assert engine.ask(f"q{index}", session_id="s").sentences == [f"Heard q{index}."]
                    assert time.monotonic() - started < 2.0, "an outage in progress holds nothing up"
                assert engine.memory.pending == 3 and engine.memory.outage
                history = engine.memory.history("s", "Echo", max_turns=10)
                assert [t.question for t in history] == ["q0", "q1", "q2"], "waiting turns are read"
            finally:
                postgres_server.start()
            assert wait_until(lambda: engine.memory.pending == 0 and engine.memory.outage is None)
            engine.close()
    finally:
        if not wait_until(lambda: _answers(postgres_server), timeout=1):
            postgres_server.start()
    assert rows(pg_url, "SELECT question FROM turns ORDER BY id") == [("q0",), ("q1",), ("q2",)]
    [report] = db_errors(caplog)
    assert "cannot be used for now" in report and PASSWORD not in report
    assert redact_url(pg_url) in report


def _answers(server: PostgresServer) -> bool:
    try:
        with psycopg.connect(server.url(), connect_timeout=2):
            return True
    except psycopg.OperationalError:
        return False


@pytest.mark.slow
def test_database_killed_and_restarted_mid_run_loses_no_turn_and_answering_never_stops(
        postgres_server: PostgresServer, pg_url, caplog):
    nodes = [echo_engine(PostgresMemory(pg_url, retry_interval_s=0.2)) for _ in range(2)]
    done: Dict[str, List[str]] = {}
    slowest: List[float] = []
    stop = threading.Event()

    def user(node: PersonaEngine, session: str) -> None:
        done[session] = []
        while not stop.is_set():
            text = f"{session} q{len(done[session])}"
            started = time.monotonic()
            answer = node.ask(text, session_id=session)
            slowest.append(time.monotonic() - started)
            assert answer.sentences == [f"Heard {text}."]
            done[session].append(text)
            time.sleep(0.02)

    users = [threading.Thread(target=user, args=(nodes[n % 2], f"u{n}")) for n in range(8)]
    with caplog.at_level(logging.INFO):
        for thread in users:
            thread.start()
        time.sleep(1.0)
        postgres_server.kill()
        # the first call to notice waits one connection timeout; after that answers go on at once
        time.sleep(READ_TIMEOUT_S + 0.5)
        noticed = sum(map(len, done.values()))
        time.sleep(2.0)
        during = sum(map(len, done.values())) - noticed
        postgres_server.start()
        time.sleep(1.5)
        stop.set()
        for thread in users:
            thread.join(30)
        assert not any(thread.is_alive() for thread in users)
        assert during > 8, f"answering stopped while the database was down ({during} answers)"
        assert max(slowest) < 2 * READ_TIMEOUT_S + 2.0, "no answer waited much longer than a connection timeout"
        assert all(wait_until(lambda n=node: n.memory.pending == 0, timeout=30) for node in nodes)
    for node in nodes:
        node.close()
    stored = rows(pg_url, "SELECT session_id, question FROM turns ORDER BY id")
    for session, asked in done.items():
        assert [q for s, q in stored if s == session] == asked, f"{session}: every turn, once, in order"
    errors = db_errors(caplog)
    assert len(errors) <= 2 and all("cannot be used for now" in line for line in errors), errors


def test_credentials_never_reach_a_log_line_or_an_error(postgres_server: PostgresServer, caplog):
    wrong = postgres_server.url(password="Wrong-Pass-42")
    with caplog.at_level(logging.DEBUG):
        store = PostgresMemory(wrong, retry_interval_s=0.1, read_timeout_s=0.5)
        store.record("s", "Ada", "q", "a", max_turns=5)
        assert store.history("s", "Ada", max_turns=5)[0].question == "q"
        time.sleep(0.5)  # a few background retries
        store.close()
    text = "\n".join(record.getMessage() for record in caplog.records)
    assert "Wrong-Pass-42" not in text and "password authentication failed" in text
    assert "persona:***@127.0.0.1" in text
    with pytest.raises(MemoryConfigError) as caught:
        open_memory(db_url="mysql://persona:Wrong-Pass-42@127.0.0.1/x")
    assert "Wrong-Pass-42" not in str(caught.value) and "persona:***@" in str(caught.value)


@pytest.mark.slow
def test_the_cli_asks_with_memory_in_postgresql(pg_url, tmp_path):
    env = dict(os.environ, XDG_DATA_HOME=str(tmp_path), XDG_CONFIG_HOME=str(tmp_path))
    persona = tmp_path / "Chat.yaml"
    persona.write_text("name: Chat\nsolvers: [failure]\n")
    command = [sys.executable, "-m", "ovos_skill_persona_fallback.cli", "ask", "hello there", "--persona",
               str(persona), "--session", "cli-1"]
    done = subprocess.run(command + ["--db-url", pg_url], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    assert rows(pg_url, "SELECT session_id, persona, question FROM turns") == [("cli-1", "Chat", "hello there")]
    env["PERSONA_DB_URL"] = pg_url
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    assert len(rows(pg_url, "SELECT id FROM turns")) == 2, "$PERSONA_DB_URL chose the same database"
    assert not (tmp_path / "ovos-skill-persona-fallback").exists(), "no SQLite file was made"
    bad = subprocess.run(command + ["--db-url", "mysql://u:Secret-9@h/x"], capture_output=True, text=True,
                         env=env, timeout=120)
    assert bad.returncode != 0 and "must start" not in bad.stderr
    assert "Secret-9" not in bad.stderr + bad.stdout and "is not of the form postgresql://" in bad.stderr


def test_a_database_refusing_the_schema_is_a_clear_config_error(postgres_server: PostgresServer, pg_url):
    with psycopg.connect(pg_url, autocommit=True) as conn:  # a role that may connect but not create tables
        conn.execute("CREATE ROLE visitor LOGIN PASSWORD 'Visitor-Pw-5'")
    url = pg_url.replace(f"persona:{PASSWORD}@", "visitor:Visitor-Pw-5@")
    with pytest.raises(MemoryConfigError) as caught:
        open_memory(db_url=url)
    assert "permission denied" in str(caught.value) and "Visitor-Pw-5" not in str(caught.value)
    assert "visitor:***@" in str(caught.value)


def test_the_skill_opens_the_store_its_settings_choose(pg_url, tmp_path, monkeypatch, caplog):
    from ovos_utils.fakebus import FakeBus

    from ovos_skill_persona_fallback import SKILL_ID, PersonaFallbackSkill
    from ovos_skill_persona_fallback.memory import ConversationMemory
    from ovos_skill_persona_fallback.settings import DEFAULT_SETTINGS

    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    monkeypatch.delenv("PERSONA_DB_URL", raising=False)
    engine = echo_engine(ConversationMemory(":memory:"))
    skill = PersonaFallbackSkill(bus=FakeBus(), skill_id=SKILL_ID, engine=engine)
    try:
        skill._config = dict(DEFAULT_SETTINGS, db_url=pg_url)
        store = skill._open_memory()
        assert isinstance(store, PostgresMemory) and store.outage is None
        store.close()
        skill._config = dict(DEFAULT_SETTINGS, db_url="postgresql://persona:Bad-Pw-1@127.0.0.1:notaport/x",
                             db_path=str(tmp_path / "fallback.db"))
        with caplog.at_level(logging.INFO):
            store = skill._open_memory()
        assert isinstance(store, ConversationMemory) and store.path == str(tmp_path / "fallback.db")
        store.close()
        [line] = [r.getMessage() for r in caplog.records if "setting db_url" in r.getMessage()]
        assert "cannot be parsed" in line and "using the SQLite file instead" in line
        assert "Bad-Pw-1" not in "\n".join(r.getMessage() for r in caplog.records)
    finally:
        skill.default_shutdown()


def test_a_turn_written_again_after_a_lost_commit_reply_is_stored_once(pg_url):
    from ovos_skill_persona_fallback.memory.queued import TURN, Write
    from ovos_skill_persona_fallback.memory import Turn

    store = open_memory(db_url=pg_url)
    try:
        write = Write(TURN, "s", "Ada", turn=Turn("q", "a", 1.0), max_turns=5, key="0" * 32)
        store._apply(write, quick=False)
        store._apply(write, quick=False)  # what a retry does when the reply to COMMIT never came
        assert rows(pg_url, "SELECT question FROM turns") == [("q",)]
    finally:
        store.close()
