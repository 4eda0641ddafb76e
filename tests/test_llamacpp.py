"""The llama.cpp solver against a tiny random-weight GGUF: streaming, cancel, errors, trimming, reuse.

Random weights give random words, so the tests assert structure (chunks, token counts, which
messages were sent, how many prompt tokens llama.cpp evaluated), never content.
"""
from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import pytest

from llama_fixtures import (QUESTIONS, SYSTEM, CountingFactory, ask, conversation_id, decoded,  # noqa: E402
                            llama_cpp, make_solver, reuse_ratio, talk, tiny_gguf)  # noqa: F401 (fixture)

from ovos_skill_persona_fallback.solvers import create_solver  # noqa: E402
from ovos_skill_persona_fallback.solvers import llamacpp  # noqa: E402
from ovos_skill_persona_fallback.solvers.base import (CancelToken, ChatMessage, GenerationSettings,  # noqa: E402
                                                      Role, SolverConfigError, SolverContext, SolverError)
from ovos_skill_persona_fallback.solvers.llamacpp import FairLock, LlamaCppSolver  # noqa: E402

# -- streaming, limits, determinism --------------------------------------------------------------

def test_streams_several_chunks_of_text(tiny_gguf: Path) -> None:
    solver = make_solver(tiny_gguf)
    chunks = ask(solver, [SYSTEM, ChatMessage(Role.USER, "hello")])
    assert len(chunks) > 1
    assert all(isinstance(chunk, str) and chunk for chunk in chunks)
    assert "".join(chunks).strip()
    assert solver.last_stats["finish_reason"] == "length"


def test_created_through_the_registry(tiny_gguf: Path) -> None:
    solver = create_solver("llama-cpp", {"model": str(tiny_gguf), "n_ctx": 1024}, SolverContext())
    assert isinstance(solver, LlamaCppSolver) and solver.supports_history


def test_max_tokens_is_respected(tiny_gguf: Path) -> None:
    solver = make_solver(tiny_gguf, max_tokens=7)
    ask(solver, [SYSTEM, ChatMessage(Role.USER, "warm up")])
    llama = solver.loaded_model.llama
    before = decoded(llama)
    chunks = ask(solver, [SYSTEM, ChatMessage(Role.USER, "tell me a long story")], conversation_id("max"))
    stats = solver.last_stats
    # the tiny model never ends a turn by itself, so it always runs into the limit
    assert stats["completion_tokens"] == 7 and stats["finish_reason"] == "length"
    assert len(chunks) <= 7
    # llama.cpp decoded the prompt plus the answer minus its last token (sampled, never fed back)
    assert decoded(llama) - before == stats["prompt_tokens_evaluated"] + 7 - 1


def test_generation_settings_from_context_and_block(tiny_gguf: Path) -> None:
    context = SolverContext(generation=GenerationSettings(max_tokens=5, seed=3))
    solver = LlamaCppSolver({"model": str(tiny_gguf), "n_ctx": 1024, "max_tokens": 4}, context)
    ask(solver, [SYSTEM, ChatMessage(Role.USER, "hello")])
    assert solver.generation.seed == 3 and solver.last_stats["completion_tokens"] == 4


def fresh_solver(path: Path, **config: Any) -> LlamaCppSolver:
    """A solver on its own model instance: nothing cached, so evaluation runs exactly the same way."""
    return make_solver(path, llama_factory=CountingFactory(), **config)


def test_same_seed_gives_same_text(tiny_gguf: Path) -> None:
    messages = [SYSTEM, ChatMessage(Role.USER, "tell me about the sun")]
    first = "".join(ask(fresh_solver(tiny_gguf, seed=42, max_tokens=16), messages))
    second = "".join(ask(fresh_solver(tiny_gguf, seed=42, max_tokens=16), messages))
    assert first and first == second


def test_stop_string_ends_the_answer(tiny_gguf: Path) -> None:
    messages = [SYSTEM, ChatMessage(Role.USER, "say something")]
    full = "".join(ask(fresh_solver(tiny_gguf, seed=9, max_tokens=24), messages))
    stop = full[len(full) // 2:len(full) // 2 + 3]
    assert len(stop) == 3
    solver = fresh_solver(tiny_gguf, seed=9, max_tokens=24, stop=[stop])
    cut = "".join(ask(solver, messages))
    assert cut == full[:full.index(stop)]
    assert solver.last_stats["finish_reason"] == "stop"


# -- cancel ----------------------------------------------------------------------------------------

def test_cancel_from_another_thread_stops_generation(tiny_gguf: Path) -> None:
    solver = make_solver(tiny_gguf, n_ctx=2048, max_tokens=1500)
    cancel = CancelToken()
    stream = solver.stream([SYSTEM, ChatMessage(Role.USER, "talk forever")], lang="en", cancel=cancel,
                           conversation_id=conversation_id("cancel"))
    chunks = [next(stream)]
    llama = solver.loaded_model.llama
    at_cancel: Dict[str, float] = {}

    def canceller() -> None:
        time.sleep(0.03)
        at_cancel["decoded"] = decoded(llama)
        at_cancel["time"] = time.monotonic()
        cancel.cancel()

    thread = threading.Thread(target=canceller)
    thread.start()
    for chunk in stream:  # a consumer a little slower than the model, as speech output is
        chunks.append(chunk)
        time.sleep(0.0005)
    ended = time.monotonic()
    thread.join()
    assert ended - at_cancel["time"] < 0.1
    assert solver.last_stats["completion_tokens"] < 1500
    assert solver.last_stats["finish_reason"] == "cancelled"
    # at most the token being computed when cancel came in; nothing afterwards
    after = decoded(llama)
    assert after - at_cancel["decoded"] <= 1
    time.sleep(0.05)
    assert decoded(llama) == after
    assert not solver.loaded_model.lock.locked


def test_cancelled_before_start_yields_nothing(tiny_gguf: Path) -> None:
    cancel = CancelToken()
    cancel.cancel()
    assert ask(make_solver(tiny_gguf), [SYSTEM, ChatMessage(Role.USER, "hi")], cancel=cancel) == []


def test_closing_the_stream_releases_the_model(tiny_gguf: Path) -> None:
    solver = make_solver(tiny_gguf, max_tokens=50)
    stream = solver.stream([SYSTEM, ChatMessage(Role.USER, "hi")], lang="en", cancel=CancelToken())
    next(stream)
    assert solver.loaded_model.lock.locked
    stream.close()
    assert not solver.loaded_model.lock.locked
    assert ask(solver, [SYSTEM, ChatMessage(Role.USER, "again")])


# -- model files and configuration ---------------------------------------------------------------

def _missing(tmp_path: Path, good: Path) -> Path:
    return tmp_path / "nowhere" / "model.gguf"


def _not_gguf(tmp_path: Path, good: Path) -> Path:
    path = tmp_path / "notes.gguf"
    path.write_bytes(b"this is not a model\n" * 10)
    return path


def _truncated(tmp_path: Path, good: Path) -> Path:
    path = tmp_path / "truncated.gguf"
    path.write_bytes(good.read_bytes()[:good.stat().st_size // 2])
    return path


def _header_only(tmp_path: Path, good: Path) -> Path:
    path = tmp_path / "header.gguf"
    path.write_bytes(good.read_bytes()[:64])
    return path


def _directory(tmp_path: Path, good: Path) -> Path:
    path = tmp_path / "folder.gguf"
    path.mkdir()
    return path


@pytest.mark.parametrize("make_bad", [_missing, _not_gguf, _truncated, _header_only, _directory],
                         ids=["missing", "not-gguf", "truncated", "header-only", "directory"])
def test_bad_model_file_is_a_solver_error_naming_the_path(tiny_gguf: Path, tmp_path: Path, make_bad) -> None:
    bad = make_bad(tmp_path, tiny_gguf)
    factory = CountingFactory()
    solver = make_solver(bad, llama_factory=factory)
    with pytest.raises(SolverError) as caught:
        ask(solver, [SYSTEM, ChatMessage(Role.USER, "hi")])
    assert str(bad) in str(caught.value)
    assert not any(model.path == str(bad.resolve()) for model in llamacpp.loaded_models())
    # files that are not GGUF never reach llama.cpp
    if make_bad in (_missing, _not_gguf, _directory):
        assert factory.calls == []
    good = make_solver(tiny_gguf, llama_factory=factory)
    assert ask(good, [SYSTEM, ChatMessage(Role.USER, "hi")])


def test_no_model_configured_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(llamacpp.MODEL_ENV, raising=False)
    with pytest.raises(SolverConfigError, match="no model"):
        ask(make_solver(None), [SYSTEM, ChatMessage(Role.USER, "hi")])


def test_model_path_from_environment(tiny_gguf: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(llamacpp.MODEL_ENV, str(tiny_gguf))
    solver = make_solver(None)
    assert ask(solver, [SYSTEM, ChatMessage(Role.USER, "hi")])
    assert solver.loaded_model.path == str(tiny_gguf.resolve())


@pytest.mark.parametrize("config", [
    {"n_ctx": "big"},            # not a number
    {"n_ctx": 0},                # no room at all
    {"n_threads": 0},            # zero threads
    {"state_cache_size": -1},    # negative cache
    {"max_tokens": 0},           # no answer
    {"chat_format": 3},          # a name is expected
    {"model": 12},               # a path is expected
])
def test_bad_options_are_config_errors(config: Dict[str, Any]) -> None:
    with pytest.raises(SolverConfigError):
        LlamaCppSolver(config, SolverContext())


def test_load_options_are_passed_to_llama(tiny_gguf: Path) -> None:
    factory = CountingFactory()
    solver = make_solver(tiny_gguf, llama_factory=factory, n_ctx=768, n_threads=1, n_gpu_layers=0)
    ask(solver, [SYSTEM, ChatMessage(Role.USER, "hi")])
    (kwargs,) = factory.calls
    assert kwargs["n_ctx"] == 768 and kwargs["n_threads"] == 1 and kwargs["n_gpu_layers"] == 0
    assert kwargs["model_path"] == str(tiny_gguf) and kwargs["verbose"] is False
    assert "chat_format" not in kwargs  # the model's own template
    assert solver.loaded_model.llama.n_ctx() == 768


def test_default_context_is_not_the_library_default(tiny_gguf: Path) -> None:
    factory = CountingFactory()
    solver = LlamaCppSolver({"model": str(tiny_gguf)}, SolverContext(), llama_factory=factory)
    ask(solver, [SYSTEM, ChatMessage(Role.USER, "hi")])
    assert factory.calls[0]["n_ctx"] == llamacpp.DEFAULT_N_CTX == 4096
    assert "n_threads" not in factory.calls[0]


def test_model_is_loaded_once_for_solvers_sharing_the_file(tiny_gguf: Path) -> None:
    factory = CountingFactory()
    first, second = make_solver(tiny_gguf, llama_factory=factory), make_solver(tiny_gguf, llama_factory=factory)
    ask(first, [SYSTEM, ChatMessage(Role.USER, "hi")])
    ask(second, [ChatMessage(Role.SYSTEM, "another persona"), ChatMessage(Role.USER, "hi")])
    assert len(factory.calls) == 1
    assert first.loaded_model is second.loaded_model
    # a different context size is a different load
    third = make_solver(tiny_gguf, llama_factory=factory, n_ctx=512)
    ask(third, [SYSTEM, ChatMessage(Role.USER, "hi")])
    assert len(factory.calls) == 2
    for solver in (first, second, third):
        solver.close()
    assert not any(model.key[-1] is factory for model in llamacpp.loaded_models())


def test_builtin_chat_format_by_name(tiny_gguf: Path) -> None:
    factory = CountingFactory()
    solver = make_solver(tiny_gguf, llama_factory=factory, chat_format="chatml")
    assert ask(solver, [SYSTEM, ChatMessage(Role.USER, "hi")])
    assert factory.calls[0]["chat_format"] == "chatml"


# -- fitting the context ---------------------------------------------------------------------------

def long_history(turns: int) -> List[ChatMessage]:
    history = []
    for turn in range(turns):
        history.append(ChatMessage(Role.USER, f"question number {turn} about the weather in the kitchen"))
        history.append(ChatMessage(Role.ASSISTANT, f"answer number {turn} the sun is warm and the rain is cold"))
    return history


def test_oldest_turns_are_dropped_to_fit_the_context(tiny_gguf: Path) -> None:
    solver = make_solver(tiny_gguf, n_ctx=256, max_tokens=16)
    history = long_history(20)
    question = ChatMessage(Role.USER, "and what about tomorrow")
    chunks = ask(solver, [SYSTEM, *history, question])
    stats = solver.last_stats
    sent = list(stats["messages"])
    assert chunks
    assert sent[0] == SYSTEM and sent[-1] == question
    kept = sent[1:-1]
    assert 0 < len(kept) < len(history)
    assert kept == history[len(history) - len(kept):]  # the newest turns, in order
    assert kept[0].role is Role.USER  # whole turns are dropped
    assert stats["dropped_messages"] == len(history) - len(kept)
    assert stats["prompt_tokens"] + stats["max_tokens"] <= 256 and stats["max_tokens"] == 16
    assert not stats["question_truncated"]


def test_overlong_question_keeps_its_end_and_warns(tiny_gguf: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    warnings: List[str] = []
    monkeypatch.setattr(llamacpp.LOG, "warning", lambda message, *args: warnings.append(str(message)))
    solver = make_solver(tiny_gguf, n_ctx=256, max_tokens=16)
    words = " ".join(f"word{n}" for n in range(200))
    question = ChatMessage(Role.USER, words + " so what do you think")
    chunks = ask(solver, [SYSTEM, *long_history(3), question])
    stats = solver.last_stats
    assert chunks
    assert stats["question_truncated"] and stats["dropped_messages"] == 6
    sent = stats["messages"]
    assert sent[0] == SYSTEM and sent[-1].role is Role.USER and len(sent) == 2
    assert question.content.endswith(sent[-1].content) and sent[-1].content.endswith("so what do you think")
    assert len(sent[-1].content) < len(question.content)
    assert stats["prompt_tokens"] + stats["max_tokens"] <= 256 and stats["max_tokens"] == 16
    assert any("cut" in warning for warning in warnings)


def test_huge_system_prompt_shrinks_the_answer_budget(tiny_gguf: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(llamacpp.LOG, "warning", lambda message, *args: None)
    solver = make_solver(tiny_gguf, n_ctx=256, max_tokens=64)
    system = ChatMessage(Role.SYSTEM, " ".join(f"rule{n}" for n in range(32)))
    chunks = ask(solver, [system, ChatMessage(Role.USER, "hello")])
    stats = solver.last_stats
    assert chunks and stats["max_tokens"] < 64
    assert stats["prompt_tokens"] + stats["max_tokens"] <= 256
    too_big = ChatMessage(Role.SYSTEM, " ".join(f"rule{n}" for n in range(200)))
    with pytest.raises(SolverConfigError, match="does not fit"):
        ask(solver, [too_big, ChatMessage(Role.USER, "hello")])


# -- one generation at a time, in arrival order ------------------------------------------------------

class LoggingLlama(llama_cpp.Llama):
    """Records which thread runs every llama.cpp evaluation, and fails if two ever overlap."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.eval_log: List[str] = []
        self.active = 0
        self.overlaps = 0

    def eval(self, tokens: Sequence[int]) -> None:
        self.active += 1
        if self.active > 1:
            self.overlaps += 1
        self.eval_log.append(threading.current_thread().name)
        time.sleep(0.0002)  # widen the window in which an overlap would show
        try:
            super().eval(tokens)
        finally:
            self.active -= 1


def test_generations_never_overlap_and_are_served_in_arrival_order(tiny_gguf: Path) -> None:
    factory = CountingFactory(LoggingLlama)
    solver = make_solver(tiny_gguf, llama_factory=factory, max_tokens=20)
    first_chunk, go_on = threading.Event(), threading.Event()
    finished: List[str] = []

    def first() -> None:
        stream = solver.stream([SYSTEM, ChatMessage(Role.USER, "first")], lang="en", cancel=CancelToken())
        next(stream)
        first_chunk.set()
        go_on.wait(5)  # holds the model mid-answer
        list(stream)
        finished.append("t1")

    def later(name: str, cancel: Optional[CancelToken] = None) -> None:
        chunks = ask(solver, [SYSTEM, ChatMessage(Role.USER, f"question from {name}")], cancel=cancel)
        finished.append(name if chunks else f"{name}-gave-up")

    def wait_for(condition, timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            assert time.monotonic() < deadline
            time.sleep(0.001)

    threads = [threading.Thread(target=first, name="t1")]
    threads[0].start()
    assert first_chunk.wait(5)
    lock = solver.loaded_model.lock
    impatient = CancelToken()
    for index, name in enumerate(["t2", "t4", "t3"], start=1):
        cancel = impatient if name == "t4" else None
        threads.append(threading.Thread(target=later, args=(name, cancel), name=name))
        threads[-1].start()
        wait_for(lambda: lock.waiting == index)
    # the caller queued second gives up: it leaves at once and does not disturb the order
    impatient.cancel()
    wait_for(lambda: "t4-gave-up" in finished, timeout=2)
    assert lock.waiting == 2
    go_on.set()
    for thread in threads:
        thread.join(10)
    llama = solver.loaded_model.llama
    assert llama.overlaps == 0
    assert finished == ["t4-gave-up", "t1", "t2", "t3"]
    runs = [name for index, name in enumerate(llama.eval_log) if index == 0 or llama.eval_log[index - 1] != name]
    assert runs == ["t1", "t2", "t3"]  # each generation ran whole, one after the other


def test_fair_lock_grants_in_arrival_order() -> None:
    lock = FairLock()
    assert lock.acquire()
    order: List[int] = []
    threads = []
    for number in range(5):
        def worker(number: int = number) -> None:
            assert lock.acquire()
            order.append(number)
            lock.release()
        threads.append(threading.Thread(target=worker))
        threads[-1].start()
        while lock.waiting != number + 1:
            time.sleep(0.001)
    lock.release()
    for thread in threads:
        thread.join(5)
    assert order == [0, 1, 2, 3, 4]
    assert not lock.locked


def test_fair_lock_waiter_gives_up_on_cancel() -> None:
    lock = FairLock()
    lock.acquire()
    cancel = CancelToken()
    result: Dict[str, Any] = {}

    def waiter() -> None:
        result["got"] = lock.acquire(cancel)
        result["time"] = time.monotonic()

    thread = threading.Thread(target=waiter)
    thread.start()
    while lock.waiting != 1:
        time.sleep(0.001)
    cancelled_at = time.monotonic()
    cancel.cancel()
    thread.join(1)
    assert result["got"] is False and result["time"] - cancelled_at < 0.1
    assert lock.waiting == 0
    lock.release()
    assert lock.acquire(CancelToken()) and lock.locked


# -- prompt reuse ---------------------------------------------------------------------------------

def test_each_turn_evaluates_only_its_new_tokens(tiny_gguf: Path) -> None:
    solver = make_solver(tiny_gguf, max_tokens=16)
    conversation, history = conversation_id("reuse"), [SYSTEM]
    turns = [talk(solver, conversation, history, question) for question in QUESTIONS[:5]]
    ratios = [reuse_ratio(previous, current) for previous, current in zip(turns, turns[1:])]
    print("consecutive turns, evaluated/new:", [round(r, 2) for r in ratios],
          [(t["prompt_tokens"], t["prompt_tokens_evaluated"]) for t in turns])
    assert all(ratio <= 1.2 for ratio in ratios), ratios


def test_evaluated_count_matches_llama_cpp_counters(tiny_gguf: Path) -> None:
    solver = make_solver(tiny_gguf, max_tokens=10)
    conversation, history = conversation_id("count"), [SYSTEM]
    talk(solver, conversation, history, QUESTIONS[0])
    llama = solver.loaded_model.llama
    for question in QUESTIONS[1:4]:
        before = decoded(llama)
        stats = talk(solver, conversation, history, question)
        assert solver.last_prompt_tokens_evaluated == stats["prompt_tokens_evaluated"]
        assert decoded(llama) - before == stats["prompt_tokens_evaluated"] + stats["completion_tokens"] - 1
        assert stats["prompt_tokens_evaluated"] + stats["prompt_tokens_reused"] == stats["prompt_tokens"]


def _interleave(solver: LlamaCppSolver, prefix: str) -> Dict[str, List[Dict[str, Any]]]:
    names = {"A": conversation_id(prefix), "B": conversation_id(prefix)}
    histories = {"A": [SYSTEM], "B": [ChatMessage(Role.SYSTEM, SYSTEM.content)]}
    stats: Dict[str, List[Dict[str, Any]]] = {"A": [], "B": []}
    for turn in range(3):
        for who in "AB":
            question = f"{QUESTIONS[turn]} from {who.lower()}"
            stats[who].append(talk(solver, names[who], histories[who], question))
    return stats


def test_interleaved_conversations_keep_their_reuse_through_the_state_cache(tiny_gguf: Path) -> None:
    cached = _interleave(make_solver(tiny_gguf, max_tokens=16), "cached")
    ratios = [reuse_ratio(previous, current)
              for turns in cached.values() for previous, current in zip(turns, turns[1:])]
    restored = [turn["state_restored"] for turns in cached.values() for turn in turns[1:]]
    uncached = _interleave(make_solver(tiny_gguf, max_tokens=16, state_cache_size=0), "uncached")

    def later_turns(stats: Dict[str, List[Dict[str, Any]]]) -> int:
        return sum(turn["prompt_tokens_evaluated"] for turns in stats.values() for turn in turns[1:])

    print("interleaved, evaluated/new:", [round(r, 2) for r in ratios],
          "evaluated on turns 2-3 with cache:", later_turns(cached), "without:", later_turns(uncached))
    assert all(restored)
    assert all(ratio <= 1.2 for ratio in ratios), ratios
    assert later_turns(uncached) >= 2 * later_turns(cached)


def test_state_cache_is_bounded_and_forget_drops_a_conversation(tiny_gguf: Path) -> None:
    solver = make_solver(tiny_gguf, max_tokens=4, state_cache_size=2, n_ctx=768)
    names = [conversation_id("lru") for _ in range(4)]
    for name in names:
        ask(solver, [SYSTEM, ChatMessage(Role.USER, f"hello from {name}")], name)
    model = solver.loaded_model
    assert list(model.saved) == names[1:3]  # the oldest fell out; the last one is live, not saved
    solver.forget(names[2])
    assert list(model.saved) == names[1:2]
    solver.forget(names[3])
    assert model.live.conversation_id == ""
    ask(solver, [SYSTEM, ChatMessage(Role.USER, "after forgetting")], names[3])
    assert not solver.last_stats["state_restored"]


def test_unknown_chat_format_is_a_config_error(tiny_gguf: Path) -> None:
    solver = make_solver(tiny_gguf, chat_format="no-such-format")
    with pytest.raises(SolverConfigError, match="no-such-format"):
        ask(solver, [SYSTEM, ChatMessage(Role.USER, "hi")])


def test_cancel_during_a_long_prompt_stops_between_chunks(tiny_gguf: Path) -> None:
    class SlowLlama(llama_cpp.Llama):
        """Cancels its caller after the first prompt chunk, as a stop arriving mid-prompt would."""

        cancel: Optional[CancelToken] = None
        chunks = 0

        def eval(self, tokens: Sequence[int]) -> None:
            self.chunks += 1
            super().eval(tokens)
            if self.cancel is not None:
                self.cancel.cancel()

    solver = make_solver(tiny_gguf, llama_factory=CountingFactory(SlowLlama), n_ctx=2048)
    ask(solver, [SYSTEM, ChatMessage(Role.USER, "warm up")])
    llama = solver.loaded_model.llama
    llama.chunks, llama.cancel = 0, CancelToken()
    question = ChatMessage(Role.USER, " ".join(f"word{n}" for n in range(150)))
    assert ask(solver, [SYSTEM, question], cancel=llama.cancel) == []
    assert llama.chunks == 1 and solver.last_stats["prompt_tokens"] > 3 * llamacpp.PREFILL_CHUNK_TOKENS
    assert solver.last_stats["prompt_tokens_evaluated"] == llamacpp.PREFILL_CHUNK_TOKENS
    llama.cancel = None
    assert ask(solver, [SYSTEM, question])  # the half-evaluated prompt is picked up again
    assert solver.last_stats["prompt_tokens_reused"] >= llamacpp.PREFILL_CHUNK_TOKENS


def test_openmp_threads_sleep_when_idle_unless_the_user_chose(tiny_gguf: Path) -> None:
    import os
    import subprocess
    import sys

    # a fresh interpreter: the policy only counts if set before llama.cpp's OpenMP runtime loads
    script = ("import os, sys\n"
              "from ovos_skill_persona_fallback.solvers.llama_models import default_llama_factory\n"
              "assert 'llama_cpp' not in sys.modules\n"
              f"default_llama_factory(model_path={str(tiny_gguf)!r}, n_ctx=64, verbose=False)\n"
              "print(os.environ.get('OMP_WAIT_POLICY'), os.environ.get('GOMP_SPINCOUNT'))\n")
    # passive after a short spin by default; a policy the user set is left alone, spin count included
    for given, expected in ((None, "PASSIVE 10000"), ("ACTIVE", "ACTIVE None")):
        env = {name: value for name, value in os.environ.items() if name not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
        if given:
            env["OMP_WAIT_POLICY"] = given
        done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr[-2000:]
        assert done.stdout.strip().splitlines()[-1] == expected
