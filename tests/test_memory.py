"""Conversation memory: bounds, isolation, persistence, context, concurrency, damaged files."""
from __future__ import annotations

import logging
import sqlite3
import threading
import time

import pytest

from ovos_skill_persona_fallback.memory import MAX_CONTEXT_AGE_SECONDS, MAX_CONTEXT_ENTRIES, ConversationMemory, Turn


class Clock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_turns_are_kept_oldest_first_and_bounded_by_max_turns():
    store = ConversationMemory(":memory:")
    for index in range(5):
        store.record("s", "Ada", f"q{index}", f"a{index}", max_turns=3)
    history = store.history("s", "Ada", max_turns=3)
    assert [(t.question, t.answer) for t in history] == [("q2", "a2"), ("q3", "a3"), ("q4", "a4")]
    assert store.count_turns() == 3, "old turns must be deleted, not only hidden"


def test_max_age_prunes_old_turns():
    clock = Clock()
    store = ConversationMemory(":memory:", clock=clock)
    store.record("s", "Ada", "old", "a", max_turns=10, max_age_minutes=10)
    clock.now += 11 * 60
    assert store.history("s", "Ada", max_turns=10, max_age_minutes=10) == []
    store.record("s", "Ada", "new", "b", max_turns=10, max_age_minutes=10)
    assert [t.question for t in store.history("s", "Ada", max_turns=10, max_age_minutes=10)] == ["new"]
    assert store.count_turns() == 1


def test_max_turns_zero_remembers_nothing():
    store = ConversationMemory(":memory:")
    assert store.record("s", "Ada", "q", "a", max_turns=0) is False
    assert store.count_turns() == 0
    assert store.history("s", "Ada", max_turns=0) == []


ISOLATION = [
    # (session, persona) pairs that must not see ("s1", "Ada")'s turn
    ("s2", "Ada"),   # another session, same persona
    ("s1", "Bob"),   # same session, another persona
    ("s2", "Bob"),   # both differ
]


@pytest.mark.parametrize("session,persona", ISOLATION)
def test_isolation_between_sessions_and_personas(session, persona):
    store = ConversationMemory(":memory:")
    store.record("s1", "Ada", "secret question", "secret answer", max_turns=5)
    assert store.history(session, persona, max_turns=5) == []
    assert len(store.history("s1", "Ada", max_turns=5)) == 1


def test_history_survives_reopen(tmp_path):
    path = tmp_path / "db" / "conv.db"
    store = ConversationMemory(path)
    store.record("s", "Ada", "q", "a", interrupted=True, user_question="p", user_answer="r", lang="pt-pt",
                 max_turns=5)
    store.inject_context("s", "likes cats")
    store.close()
    reopened = ConversationMemory(path)
    [turn] = reopened.history("s", "Ada", max_turns=5)
    assert (turn.question, turn.answer, turn.interrupted, turn.user_question, turn.user_answer, turn.lang) == \
        ("q", "a", True, "p", "r", "pt-pt")
    assert reopened.context("s") == "likes cats"


def test_forget_one_persona_or_all():
    store = ConversationMemory(":memory:")
    for persona in ("Ada", "Bob"):
        store.record("s", persona, "q", "a", max_turns=5)
    store.record("other", "Ada", "q", "a", max_turns=5)
    assert store.forget("s", "Ada") == 1
    assert store.history("s", "Bob", max_turns=5) != []
    assert store.forget("s") == 1
    assert store.count_turns("s") == 0 and store.count_turns("other") == 1


def test_context_inject_clear_and_bound():
    store = ConversationMemory(":memory:")
    store.inject_context("s", "first")
    store.inject_context("s", " second ")
    store.inject_context("t", "other session")
    assert store.context("s") == "first\n\nsecond"
    for index in range(MAX_CONTEXT_ENTRIES + 5):
        store.inject_context("s", f"c{index}")
    assert store.context("s").split("\n\n")[0] == "c5"
    assert store.clear_context("s") == MAX_CONTEXT_ENTRIES
    assert store.context("s") == "" and store.context("t") == "other session"


def test_concurrent_threads_lose_no_turn(tmp_path):
    store = ConversationMemory(tmp_path / "conv.db")

    def writer(session: str) -> None:
        for index in range(50):
            store.record(session, "Ada", f"q{index}", f"a{index}", max_turns=100)

    threads = [threading.Thread(target=writer, args=(f"s{n}",)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert store.count_turns() == 400
    assert [t.question for t in store.history("s3", "Ada", max_turns=100)] == [f"q{i}" for i in range(50)]


def test_corrupt_file_is_moved_aside_and_a_new_one_made(tmp_path, caplog):
    path = tmp_path / "conv.db"
    path.write_bytes(b"this is not a database at all" * 100)
    store = ConversationMemory(path, clock=Clock(42))
    store.record("s", "Ada", "q", "a", max_turns=5)
    assert store.degraded is None
    moved = tmp_path / "conv.db.corrupt-42"
    assert moved.read_bytes() == b"this is not a database at all" * 100
    assert [t.question for t in ConversationMemory(path).history("s", "Ada", max_turns=5)] == ["q"]


def test_locked_database_queues_turns_and_the_timer_writes_them_once_free(tmp_path, caplog):
    path = tmp_path / "conv.db"
    store = ConversationMemory(path, busy_timeout_ms=50, retry_interval_s=0.1)
    store.record("s", "Ada", "kept", "a", max_turns=5)
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN EXCLUSIVE")
    try:
        for question in ("new", "newer"):
            store.record("s", "Ada", question, "b", max_turns=5)
        store.inject_context("s", "likes tea")
        store.set_active("s", "Bob")
        assert store.pending == 4 and store.outage == "database is locked" and store.degraded is None
        assert [t.question for t in store.history("s", "Ada", max_turns=5)] == ["kept", "new", "newer"]
        assert store.context("s") == "likes tea" and store.active("s") == "Bob"
    finally:
        other.execute("ROLLBACK")
        other.close()
    deadline = time.monotonic() + 10
    while (store.pending or store.outage) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert store.pending == 0 and store.outage is None, "the timer writes the queue with no other call"
    fresh = ConversationMemory(path)
    assert [t.question for t in fresh.history("s", "Ada", max_turns=5)] == ["kept", "new", "newer"]
    assert fresh.context("s") == "likes tea" and fresh.active("s") == "Bob"
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "database is locked" in errors[0], "one report per outage, not per turn"


def test_a_full_queue_drops_the_oldest_change_and_warns_once(tmp_path, caplog):
    path = tmp_path / "conv.db"
    store = ConversationMemory(path, busy_timeout_ms=20, max_pending=3, retry_interval_s=60)
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN EXCLUSIVE")
    try:
        for index in range(6):
            store.record("s", "Ada", f"q{index}", "a", max_turns=10)
        assert store.pending == 3 and store.dropped == 3
        assert [t.question for t in store.history("s", "Ada", max_turns=10)] == ["q3", "q4", "q5"]
    finally:
        other.execute("ROLLBACK")
        other.close()
    assert store.flush() and [t.question for t in store.history("s", "Ada", max_turns=10)] == ["q3", "q4", "q5"]
    assert len([r for r in caplog.records if "dropping the oldest" in r.getMessage()]) == 1
    store.close()


def test_forget_while_locked_hides_the_turns_at_once_and_deletes_them_later(tmp_path):
    path = tmp_path / "conv.db"
    store = ConversationMemory(path, busy_timeout_ms=20, retry_interval_s=60)
    store.record("s", "Ada", "old", "a", max_turns=10)
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN EXCLUSIVE")
    try:
        store.record("s", "Ada", "waiting", "a", max_turns=10)
        assert store.forget("s") == 1, "the waiting turn; the stored one is deleted once the lock is gone"
        store.record("s", "Ada", "after", "a", max_turns=10)
        assert [t.question for t in store.history("s", "Ada", max_turns=10)] == ["after"]
    finally:
        other.execute("ROLLBACK")
        other.close()
    store.close()
    assert [t.question for t in ConversationMemory(path).history("s", "Ada", max_turns=10)] == ["after"]


def test_turn_dataclass_defaults():
    assert Turn("q", "a", 1.0) == Turn("q", "a", 1.0, False, None, None, None)


def test_history_lookup_uses_the_conversation_index():
    store = ConversationMemory(":memory:")
    statements = []
    store._conn.set_trace_callback(statements.append)
    store.history("s", "Ada", max_turns=5, max_age_minutes=10)
    store._conn.set_trace_callback(None)
    [query] = [sql for sql in statements if sql.lstrip().upper().startswith("SELECT")]
    plan = store._conn.execute(f"EXPLAIN QUERY PLAN {query}").fetchall()
    assert any("turns_by_conversation" in row[-1] for row in plan), plan
    assert not any("TEMP B-TREE" in row[-1] for row in plan), plan


def test_context_of_sessions_that_never_came_back_expires():
    clock = Clock()
    store = ConversationMemory(":memory:", clock=clock)
    store.inject_context("gone", "old context")
    clock.now += MAX_CONTEXT_AGE_SECONDS + 1
    store.inject_context("here", "new context")
    assert store.context("gone") == "" and store.context("here") == "new context"


def _engine_on(path, box):
    from conftest import make_persona
    from ovos_skill_persona_fallback.engine import PersonaEngine

    engine = PersonaEngine(include_shipped=False, memory=ConversationMemory(path), solver_factory=box,
                           known_solvers=None, default_persona="Ada")
    for name in ("Ada", "Bob"):
        engine.add_persona(make_persona(name))
    return engine


def test_a_new_engine_on_the_same_file_sees_the_sessions_persona(tmp_path, box):
    path = tmp_path / "conv.db"
    first = _engine_on(path, box)
    assert first.set_active("kitchen", "bob").name == "Bob"
    first.close()
    second = _engine_on(path, box)
    try:
        assert second.active_persona("kitchen").name == "Bob", "the choice survives a restart"
        assert second.active_persona("hall").name == "Ada", "other sessions keep the default"
        second.end_conversation("kitchen")
        assert second.active_persona("kitchen").name == "Ada"
    finally:
        second.close()
    third = _engine_on(path, box)
    try:
        assert third.active_persona("kitchen").name == "Ada", "ending the conversation cleared the stored choice"
    finally:
        third.close()


def test_active_persona_is_aged_and_bounded(monkeypatch):
    clock = Clock()
    monkeypatch.setattr("ovos_skill_persona_fallback.memory.sqlite.MAX_ACTIVE_SESSIONS", 2)
    store = ConversationMemory(":memory:", clock=clock)
    store.set_active("old", "Ada")
    clock.now += MAX_CONTEXT_AGE_SECONDS + 1
    assert store.active("old") is None, "a choice older than the context age is not used"
    for index, session in enumerate(("a", "b", "c")):
        clock.now += 1
        store.set_active(session, f"P{index}")
    assert [store.active(s) for s in ("a", "b", "c")] == [None, "P1", "P2"], "the least recently set goes first"
    assert store._conn.execute("SELECT COUNT(*) FROM active_personas").fetchone()[0] == 2
    store.set_active("b", "Zed")
    store.clear_active("c")
    assert (store.active("b"), store.active("c")) == ("Zed", None)


def test_a_file_locked_at_start_up_is_an_outage_not_a_reason_for_ram(tmp_path):
    path = tmp_path / "conv.db"
    other = sqlite3.connect(path, isolation_level=None)  # another program's file, in rollback-journal mode
    other.execute("CREATE TABLE unrelated (x)")
    other.execute("BEGIN EXCLUSIVE")
    try:
        store = ConversationMemory(path, busy_timeout_ms=50, retry_interval_s=60)
        assert store.outage == "database is locked" and store.degraded is None
        store.record("s", "Ada", "while locked", "a", max_turns=5)
        assert store.pending == 1 and questions_of(store) == ["while locked"]
    finally:
        other.execute("ROLLBACK")
        other.close()
    assert store.flush() and store.outage is None
    store.close()
    assert questions_of(ConversationMemory(path)) == ["while locked"], "the schema was made once the lock was gone"


def questions_of(store: ConversationMemory) -> list:
    return [turn.question for turn in store.history("s", "Ada", max_turns=5)]
