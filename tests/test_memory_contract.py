"""One contract, two stores: SQLite (a real file) and PostgreSQL (a real server) behave the same."""
from __future__ import annotations

from typing import Callable, Iterator, List

import pytest

from ovos_skill_persona_fallback.memory import (MAX_CONTEXT_AGE_SECONDS, MAX_CONTEXT_CHARS, MAX_CONTEXT_ENTRIES,
                                                ConversationMemory, MemoryStore, Turn, open_memory)


class Clock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture(params=["sqlite", "postgres"])
def opener(request, tmp_path) -> Iterator[Callable[..., MemoryStore]]:
    """Open (and reopen) the store under test; every store opened is closed afterwards."""
    location = str(tmp_path / "conv.db") if request.param == "sqlite" else request.getfixturevalue("pg_url")
    opened: List[MemoryStore] = []

    def open_(clock: Callable[[], float] = Clock()) -> MemoryStore:
        store = open_memory(db_path=location, clock=clock) if request.param == "sqlite" \
            else open_memory(db_url=location, clock=clock)
        opened.append(store)
        return store

    yield open_
    for store in opened:
        store.close()


def questions(store: MemoryStore, session: str = "s", persona: str = "Ada", **limits) -> List[str]:
    limits.setdefault("max_turns", 50)
    return [turn.question for turn in store.history(session, persona, **limits)]


def test_the_factory_picks_the_store(opener, request):
    store = opener()
    expected = "ConversationMemory" if "sqlite" in request.node.name else "PostgresMemory"
    assert type(store).__name__ == expected and store.outage is None and store.degraded is None


def test_a_turn_is_kept_whole_with_every_field(opener):
    clock = Clock()
    store = opener(clock)
    assert store.record("s", "Ada", "q", "a", interrupted=True, user_question="p", user_answer="r",
                        lang="pt-pt", max_turns=5)
    reopened = opener(clock)
    assert reopened.history("s", "Ada", max_turns=5) == [Turn("q", "a", clock.now, True, "p", "r", "pt-pt")]


def test_turns_come_oldest_first_and_are_bounded_by_count(opener):
    store = opener()
    for index in range(5):
        store.record("s", "Ada", f"q{index}", f"a{index}", max_turns=3)
    assert questions(store, max_turns=3) == ["q2", "q3", "q4"]
    assert questions(store, max_turns=2) == ["q3", "q4"], "a smaller limit reads fewer"
    assert store.count_turns() == 3, "old turns are deleted, not only hidden"


def test_turns_expire_by_age(opener):
    clock = Clock()
    store = opener(clock)
    store.record("s", "Ada", "old", "a", max_turns=10, max_age_minutes=10)
    store.record("other", "Ada", "old elsewhere", "a", max_turns=10, max_age_minutes=10)
    clock.now += 11 * 60
    assert questions(store, max_age_minutes=10) == [], "expired turns are never read"
    store.record("s", "Ada", "new", "b", max_turns=10, max_age_minutes=10)
    assert questions(store, max_age_minutes=10) == ["new"]
    assert store.count_turns() == 1, "the next write deletes the persona's expired turns, every session's"


def test_memory_off_remembers_nothing(opener):
    store = opener()
    assert store.record("s", "Ada", "q", "a", max_turns=0) is False
    assert store.count_turns() == 0 and store.history("s", "Ada", max_turns=0) == []


@pytest.mark.parametrize("session,persona", [("s2", "Ada"), ("s1", "Bob"), ("s2", "Bob")])
def test_conversations_are_isolated(opener, session, persona):
    store = opener()
    store.record("s1", "Ada", "secret", "answer", max_turns=5)
    assert questions(store, session, persona) == [] and questions(store, "s1", "Ada") == ["secret"]


def test_forget_one_persona_or_all(opener):
    store = opener()
    for persona in ("Ada", "Bob"):
        store.record("s", persona, "q", "a", max_turns=5)
    store.record("other", "Ada", "q", "a", max_turns=5)
    assert store.forget("s", "Ada") == 1 and questions(store, "s", "Bob") == ["q"]
    assert store.forget("s") == 1
    assert store.count_turns("s") == 0 and store.count_turns("other") == 1


def test_injected_context_is_bounded_cleared_and_per_session(opener):
    store = opener()
    store.inject_context("s", "first")
    store.inject_context("s", " second ")
    store.inject_context("t", "other session")
    assert store.context("s") == "first\n\nsecond"
    for index in range(MAX_CONTEXT_ENTRIES + 5):
        store.inject_context("s", f"c{index}")
    assert store.context("s").split("\n\n")[0] == "c5"
    assert store.clear_context("s") == MAX_CONTEXT_ENTRIES
    assert store.context("s") == "" and store.context("t") == "other session"
    store.inject_context("s", "x" * (MAX_CONTEXT_CHARS + 100))
    assert store.context("s") == "x" * MAX_CONTEXT_CHARS


def test_injected_context_expires(opener):
    clock = Clock()
    store = opener(clock)
    store.inject_context("gone", "old context")
    clock.now += MAX_CONTEXT_AGE_SECONDS + 1
    store.inject_context("here", "new context")
    assert store.context("gone") == "" and store.context("here") == "new context"


def test_active_persona_is_kept_replaced_cleared_and_aged(opener):
    clock = Clock()
    store = opener(clock)
    assert store.active("s") is None
    store.set_active("s", "Ada")
    store.set_active("s", "Bob")
    store.set_active("t", "Ada")
    assert opener(clock).active("s") == "Bob", "it survives a reopen"
    store.clear_active("t")
    assert store.active("t") is None
    clock.now += MAX_CONTEXT_AGE_SECONDS + 1
    assert store.active("s") is None, "a choice not renewed for the context age is forgotten"


def test_unicode_and_long_text_round_trip(opener):
    store = opener()
    text = "Olá — 你好 🙂 " * 500
    store.record("s", "Ada", text, text[::-1], max_turns=5)
    [turn] = store.history("s", "Ada", max_turns=5)
    assert (turn.question, turn.answer) == (text, text[::-1])


def test_sqlite_stays_the_default_without_a_url(tmp_path, monkeypatch):
    monkeypatch.delenv("PERSONA_DB_URL", raising=False)
    store = open_memory(db_path=tmp_path / "x.db")
    assert isinstance(store, ConversationMemory) and store.path == str(tmp_path / "x.db")
    store.close()
