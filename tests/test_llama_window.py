"""Conversations longer than their memory window keep evaluating only their new tokens (issue 14).

The engine gives the solver the last ``max_turns`` turns; once a conversation is longer, each turn
drops the oldest one from the prompt. The solver then removes that turn's span from the KV cache
and shifts the later positions down (context shift) instead of evaluating the whole history again.
These tests walk conversations across the window boundary and check, exactly: which span left the
cache, how many prompt tokens were evaluated (also by llama.cpp's own counters), that the prompt
the model saw is the fresh rendering of the windowed chat (the cache never serves stale tokens),
and that the KV cache's positions stay contiguous.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Sequence

import pytest

from llama_fixtures import (SYSTEM, CountingFactory, ask, conversation_id, decoded, llama_cpp,  # noqa: F401
                            make_solver, smollm2, tiny_gguf)

from ovos_skill_persona_fallback.solvers.base import ChatMessage, Role
from ovos_skill_persona_fallback.solvers.llama_prompt import render

WORDS = ["weather", "kitchen", "music", "story", "moon", "friend", "light", "book", "song", "rain"]


def question(turn: int, who: str = "") -> str:
    return f"tell me about the {WORDS[turn % len(WORDS)]} {who} and the {WORDS[(3 * turn + 1) % len(WORDS)]}"


def windowed(system: ChatMessage, history: Sequence[ChatMessage], max_turns: int, asked: str) -> List[ChatMessage]:
    """What the engine sends: the system message, the last ``max_turns`` turns, the question."""
    return [system, *history[max(0, len(history) - 2 * max_turns):], ChatMessage(Role.USER, asked)]


def seen_prompt(solver: Any) -> bytes:
    """The prompt the last answer was generated from, as text (special tokens spelled out)."""
    llama = solver.loaded_model.llama
    return llama.detokenize(llama.input_ids[:solver.last_stats["prompt_tokens"]].tolist(), special=True)


def user_turns(model: Any, tokens: Sequence[int], mark: bytes) -> List[int]:
    """Indices of the special tokens in ``tokens`` that start a user turn (``mark`` spelled from there)."""
    pieces = [model.piece(token) for token in tokens]
    text, offsets, position = b"".join(pieces), [], 0
    for piece in pieces:
        offsets.append(position)
        position += len(piece)
    return [i for i, token in enumerate(tokens) if model.is_special(token) and text.startswith(mark, offsets[i])]


class Conversation:
    """One conversation seen through a memory window, with exact per-turn bookkeeping."""

    def __init__(self, solver: Any, max_turns: int, who: str = "", user_mark: bytes = b"<|user|>") -> None:
        self.solver, self.max_turns, self.who = solver, max_turns, who
        self.user_mark = user_mark  # how a user turn starts in the model's template
        self.id = conversation_id(f"window{who}")
        self.system = ChatMessage(Role.SYSTEM, f"{SYSTEM.content} {who}".strip())
        self.history: List[ChatMessage] = []
        self.turns: List[Dict[str, Any]] = []
        self.held: List[int] = []  # what the KV cache held after this conversation's last turn

    def window_start(self, number: int) -> int:
        """The first remembered turn the prompt of turn ``number`` still shows."""
        return max(0, number - self.max_turns)

    def turn(self) -> Dict[str, Any]:
        """Ask the next question, check the exact accounting of the turn, return its stats."""
        solver, number = self.solver, len(self.turns)
        asked = question(number, self.who)
        messages = windowed(self.system, self.history, self.max_turns, asked)
        llama = solver.loaded_model.llama if solver.loaded_model else None
        before = decoded(llama) if llama is not None else 0
        answer = "".join(ask(solver, messages, self.id))
        llama = solver.loaded_model.llama
        stats = dict(solver.last_stats)
        assert answer and stats["finish_reason"] in ("length", "stop")
        # the model saw exactly the fresh rendering of the windowed chat
        assert seen_prompt(solver) == render(solver.loaded_model, messages).text
        if self.turns:
            previous = self.turns[-1]
            # an answer cut at max_tokens never fed its last token back; one ended by the model did
            held = previous["prompt_tokens"] + previous["completion_tokens"] - (previous["finish_reason"] == "length")
            start, previous_start = self.window_start(number), self.window_start(number - 1)
            assert start - previous_start in (0, 1)
            # the turn that left the window spans, in the cache, from its user marker to the next one
            marks = user_turns(solver.loaded_model, self.held, self.user_mark)
            expected_shift = marks[1] - marks[0] if start > previous_start else 0
            assert len(self.held) == held
            assert stats["shifted_out"] == expected_shift, (number, stats["shifted_out"], expected_shift)
            assert stats["prompt_tokens_reused"] == held - expected_shift
            assert stats["prompt_tokens_evaluated"] == stats["prompt_tokens"] - (held - expected_shift)
            stats["new_tokens"] = stats["prompt_tokens"] - (previous["prompt_tokens"]
                                                           + previous["completion_tokens"] - expected_shift)
            if not stats["state_restored"]:  # llama.cpp's own count: this turn's prompt and answer only
                fed_back = stats["completion_tokens"] - (stats["finish_reason"] == "length")
                assert decoded(llama) - before == stats["prompt_tokens_evaluated"] + fed_back
        # contiguous positions: the shifted cache ends where the transcript ends
        memory = llama_cpp.llama_get_memory(llama.ctx)
        assert llama_cpp.llama_memory_seq_pos_max(memory, 0) == llama.n_tokens - 1
        self.history += [ChatMessage(Role.USER, asked), ChatMessage(Role.ASSISTANT, answer)]
        self.held = [int(t) for t in llama.input_ids[:llama.n_tokens]]
        self.turns.append(stats)
        return stats


def ratio(conversations: Sequence[Conversation]) -> float:
    later = [t for c in conversations for t in c.turns[1:]]
    return sum(t["prompt_tokens_evaluated"] for t in later) / sum(t["new_tokens"] for t in later)


def test_crossing_the_window_evaluates_only_the_new_tokens(tiny_gguf: Path) -> None:
    solver = make_solver(tiny_gguf, llama_factory=CountingFactory(), max_tokens=6, n_ctx=1024)
    talk = Conversation(solver, max_turns=3)
    for _ in range(9):
        talk.turn()
    shifted = [t["shifted_out"] for t in talk.turns[1:]]
    assert shifted[:3] == [0, 0, 0] and all(shifted[3:])  # from turn 5 on, each turn drops the oldest
    assert ratio([talk]) <= 1.2


@pytest.mark.slow
def test_fifty_turns_alone_and_three_interleaved(tiny_gguf: Path) -> None:
    solver = make_solver(tiny_gguf, llama_factory=CountingFactory(), max_tokens=8, n_ctx=1024)
    alone = Conversation(solver, max_turns=12)
    for _ in range(50):
        alone.turn()
    print(f"50 turns alone: evaluated/new {ratio([alone]):.3f}")
    assert ratio([alone]) <= 1.2, ratio([alone])
    three = [Conversation(solver, max_turns=12, who=who) for who in ("ann", "bob", "cy")]
    for _ in range(50):
        for talk in three:
            talk.turn()
    assert all(t["state_restored"] for c in three for t in c.turns[1:])
    print(f"3 x 50 turns interleaved: evaluated/new {ratio(three):.3f}")
    assert ratio(three) <= 1.2, ratio(three)


def test_no_shift_without_a_dropped_turn_or_with_a_changed_system_message(tiny_gguf: Path) -> None:
    solver = make_solver(tiny_gguf, llama_factory=CountingFactory(), max_tokens=6)
    name = conversation_id("noshift")
    first = [SYSTEM, ChatMessage(Role.USER, question(0))]
    answer = "".join(ask(solver, first, name))
    assert solver.last_stats["shifted_out"] == 0
    changed = [ChatMessage(Role.SYSTEM, "a new system prompt entirely"), ChatMessage(Role.USER, question(0)),
               ChatMessage(Role.ASSISTANT, answer), ChatMessage(Role.USER, question(1))]
    ask(solver, changed, name)
    stats = solver.last_stats
    # new text in the middle is an insertion, not a dropped span: everything from the system text
    # on is evaluated again, and the model sees exactly the new prompt
    assert stats["shifted_out"] == 0
    assert seen_prompt(solver) == render(solver.loaded_model, changed).text
    assert stats["prompt_tokens_reused"] + stats["prompt_tokens_evaluated"] == stats["prompt_tokens"]


# -- saved states bounded in bytes -----------------------------------------------------------------

def test_saved_states_are_bounded_in_bytes_least_recent_first(tiny_gguf: Path) -> None:
    def run(limit_mb: float, count: int = 5) -> Any:
        solver = make_solver(tiny_gguf, llama_factory=CountingFactory(), max_tokens=4, n_ctx=768,
                             state_cache_size=100, state_cache_mb=limit_mb)
        names = [conversation_id("bytes") for _ in range(count)]
        for name in names:  # each switch saves the previous conversation's state
            ask(solver, [SYSTEM, ChatMessage(Role.USER, "hello there")], name)
        return solver, names

    unbounded, names = run(1024)
    saved = unbounded.loaded_model.saved
    assert list(saved) == names[:-1]  # the last one is live, not saved
    sizes = [len(saved.pop(name).blob) for name in names[:-1]]
    assert saved.bytes == 0 and min(sizes) > 0
    # room for exactly the two newest saved states: older ones are evicted by bytes, not count
    limit = sizes[-1] + sizes[-2]
    bounded, names = run(limit / (1024 * 1024))
    cache = bounded.loaded_model.saved
    assert list(cache) == names[-3:-1]
    assert cache.bytes == limit
    # a kept state is restored (saving the live one evicts the least recent); an evicted one is not
    ask(bounded, [SYSTEM, ChatMessage(Role.USER, "hello there")], names[-3])
    assert bounded.last_stats["state_restored"]
    assert list(cache) == [names[-2], names[-1]] and cache.bytes <= limit
    ask(bounded, [SYSTEM, ChatMessage(Role.USER, "hello there")], names[0])
    assert not bounded.last_stats["state_restored"]


def test_a_state_larger_than_the_whole_budget_is_not_kept(tiny_gguf: Path) -> None:
    solver = make_solver(tiny_gguf, llama_factory=CountingFactory(), max_tokens=4, n_ctx=768,
                         state_cache_mb=0.000001)
    for name in (conversation_id("huge"), conversation_id("huge")):
        ask(solver, [SYSTEM, ChatMessage(Role.USER, "hello")], name)
    assert list(solver.loaded_model.saved) == [] and solver.loaded_model.saved.bytes == 0


@pytest.mark.parametrize("value", ["lots", -1, True, None])
def test_bad_state_cache_mb_is_a_config_error(value: Any) -> None:
    from ovos_skill_persona_fallback.solvers.base import SolverConfigError
    with pytest.raises(SolverConfigError, match="state_cache_mb"):
        make_solver(None, state_cache_mb=value)


@pytest.mark.slow
def test_smollm2_crosses_the_window_with_exact_counts(smollm2: Path) -> None:
    solver = make_solver(smollm2, llama_factory=CountingFactory(), n_ctx=2048, n_threads=1, max_tokens=12,
                         seed=4, temperature=0.2)
    talk = Conversation(solver, max_turns=2, user_mark=b"<|im_start|>user")
    for _ in range(6):
        talk.turn()
    assert all(t["shifted_out"] for t in talk.turns[3:])
    print(f"SmolLM2, window 2: evaluated/new {ratio([talk]):.3f}")
    assert ratio([talk]) <= 1.2
