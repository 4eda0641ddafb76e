"""Several conversations decoded together on one model (the llama-cpp ``parallel`` option, issue 14).

The streams of one test are pulled round-robin from a single thread: behind the old fair lock the
second stream would wait for the first to end, so every test here also proves the answers run at
the same time. Each batched answer must be exactly the one the model gives alone (same seed, same
text), a stopped answer must leave the others running, and a conversation must keep its cache in
its slot, through a saved state when it had to leave, and across its memory window.
"""
from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence

import pytest

from llama_fixtures import (SYSTEM, ask, conversation_id, llama_cpp, make_solver, smollm2,  # noqa: F401
                            tiny_gguf)
from test_llama_window import question, windowed

from ovos_skill_persona_fallback.solvers.base import CancelToken, ChatMessage, Role, SolverConfigError
from ovos_skill_persona_fallback.solvers.llama_batch import enable_parallel
from ovos_skill_persona_fallback.solvers.llama_prompt import render

QUESTIONS = ["hello how are you today", "tell me a story about the moon", "what is the weather like",
             "can you play some music"]


def messages(text: str) -> List[ChatMessage]:
    return [SYSTEM, ChatMessage(Role.USER, text)]


class Stream:
    """One answer being pulled chunk by chunk."""

    def __init__(self, solver: Any, chat: Sequence[ChatMessage], conversation: str) -> None:
        self.solver, self.cancel = solver, CancelToken()
        self.chunks: List[str] = []
        self.done = False
        self._it: Iterator[str] = solver.stream(chat, lang="en", cancel=self.cancel, conversation_id=conversation)
        self.stats: Optional[Dict[str, Any]] = None

    def pull(self) -> bool:
        """Take the next chunk; return False once the answer has ended."""
        if self.done:
            return False
        try:
            self.chunks.append(next(self._it))
        except StopIteration:
            self.done = True
        return not self.done

    @property
    def text(self) -> str:
        return "".join(self.chunks)


def round_robin(streams: Sequence[Stream], each: Optional[Any] = None) -> None:
    """Pull one chunk from every live stream in turn until all have ended (one thread)."""
    while any(not s.done for s in streams):
        for stream in streams:
            if stream.pull() and each is not None:
                each(stream)


def solvers_per_stream(path: Path, count: int, **config: Any) -> List[Any]:
    """One solver per stream (as four personas or sessions would each have), all on one loaded model."""
    return [make_solver(path, **config) for _ in range(count)]


def idle(model: Any, timeout: float = 5.0) -> bool:
    """True once the model's decoder thread has ended (no work left)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if model.decoder._thread is None:
            return True
        time.sleep(0.01)
    return False


def test_each_batched_answer_is_the_one_it_would_be_alone(tiny_gguf: Path) -> None:
    config = dict(n_ctx=512, max_tokens=24, temperature=0.9, top_k=40, top_p=0.95)
    alone = []
    for number, text in enumerate(QUESTIONS):
        solver = make_solver(tiny_gguf, seed=100 + number, **config)  # parallel 1: the fair-lock path
        alone.append("".join(ask(solver, messages(text), conversation_id("alone"))))
        assert solver.loaded_model.decoder is None
    solvers = [make_solver(tiny_gguf, seed=100 + n, parallel=4, **config) for n in range(len(QUESTIONS))]
    streams = [Stream(s, messages(t), conversation_id("together")) for s, t in zip(solvers, QUESTIONS)]
    round_robin(streams)
    assert [s.text for s in streams] == alone
    assert all(a for a in alone) and len(set(alone)) == len(alone)
    stats = [s.solver.last_stats for s in streams]
    assert sorted(st["slot"] for st in stats) == [0, 1, 2, 3]  # four sequences at once
    assert all(st["batched"] and st["finish_reason"] == "length" and st["completion_tokens"] == 24 for st in stats)
    model = solvers[0].loaded_model
    assert all(s.loaded_model is model for s in solvers) and model.slots == 4 and model.n_ctx == 512
    assert idle(model)  # no thread is left once the answers are done


@pytest.mark.slow
def test_smollm2_batched_answers_match_the_ones_alone(smollm2: Path) -> None:
    # prompts of different lengths: llama.cpp would cut them at other places when decoded in one
    # batch (equal shares per sequence), and the first answer here then changed after 3 words
    system = ChatMessage(Role.SYSTEM, "You are Quartet, a friendly voice assistant. Answer in one or two short sentences.")
    asked = ["tell me something about the moon", "what should I cook tonight", "how do I stay calm before an exam",
             "why is the sky blue"]
    config = dict(n_ctx=1024, max_tokens=32, temperature=0.8, seed=11)
    solver = make_solver(smollm2, **config)
    alone = ["".join(ask(solver, [system, ChatMessage(Role.USER, q)], conversation_id("smol-alone"))) for q in asked]
    solvers = [make_solver(smollm2, parallel=4, **config) for _ in asked]
    together: Dict[int, str] = {}
    gate = threading.Barrier(len(asked))

    def run(number: int) -> None:  # all four prompts arrive together, so they are evaluated in one step
        gate.wait()
        chat = [system, ChatMessage(Role.USER, asked[number])]
        together[number] = "".join(ask(solvers[number], chat, conversation_id("smol-together")))

    threads = [threading.Thread(target=run, args=(n,)) for n in range(len(asked))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert [together.get(n) for n in range(len(asked))] == alone
    assert len(set(alone)) == len(alone)


def test_stopping_one_batched_answer_leaves_the_others_running(tiny_gguf: Path) -> None:
    config = dict(n_ctx=512, max_tokens=40, temperature=0.9, parallel=3)
    alone = []
    for number, text in enumerate(QUESTIONS[:3]):
        solver = make_solver(tiny_gguf, seed=200 + number, **{**config, "parallel": 1})
        alone.append("".join(ask(solver, messages(text), conversation_id("stop-alone"))))
    solvers = [make_solver(tiny_gguf, seed=200 + n, **config) for n in range(3)]
    streams = [Stream(s, messages(t), conversation_id("stop")) for s, t in zip(solvers, QUESTIONS[:3])]
    stopped = streams[1]

    def stop_the_second(stream: Stream) -> None:
        if stream is stopped and len(stream.chunks) == 3:
            stream.cancel.cancel()

    round_robin(streams, stop_the_second)
    assert stopped.text == alone[1][:len(stopped.text)] and len(stopped.chunks) <= 4
    assert stopped.solver.last_stats["finish_reason"] == "cancelled"
    assert [streams[0].text, streams[2].text] == [alone[0], alone[2]]
    assert all(s.solver.last_stats["completion_tokens"] == 40 for s in (streams[0], streams[2]))
    # the stopped answer's slot is free again: three more answers run at once
    more = [Stream(s, messages(t), conversation_id("after")) for s, t in zip(solvers, QUESTIONS[1:])]
    round_robin(more)
    assert all(s.solver.last_stats["finish_reason"] == "length" for s in more)


def test_a_waiting_request_cancelled_before_it_gets_a_slot_ends_at_once(tiny_gguf: Path) -> None:
    # long answers hold both slots for seconds; they are stopped once the test is done with them
    solvers = solvers_per_stream(tiny_gguf, 3, n_ctx=4000, max_tokens=3900, parallel=2, temperature=0.9)
    running = [Stream(s, messages(t), conversation_id("busy")) for s, t in zip(solvers[:2], QUESTIONS)]
    for stream in running:
        stream.pull()  # both slots taken
    waiting = Stream(solvers[2], messages(QUESTIONS[2]), conversation_id("queued"))
    timer = threading.Timer(0.1, waiting.cancel.cancel)
    timer.start()
    started = time.monotonic()
    assert not waiting.pull() and waiting.chunks == []  # it never got a slot: no text, ended by the cancel
    assert time.monotonic() - started < 1.0
    # ... while both others were still answering
    assert all(slot.request is not None for slot in solvers[0].loaded_model.decoder.slots)
    for stream in running:
        stream.cancel.cancel()
    round_robin(running)
    assert all(s.solver.last_stats["finish_reason"] == "cancelled" for s in running)
    assert idle(solvers[0].loaded_model)


def held_after(stats: Dict[str, Any]) -> int:
    """Cells a sequence holds after an answer: prompt and answer, less a last token cut by max_tokens."""
    return stats["prompt_tokens"] + stats["completion_tokens"] - (stats["finish_reason"] == "length")


def test_conversations_keep_their_cache_in_a_slot_or_a_saved_state(tiny_gguf: Path) -> None:
    # three conversations on two slots: one of them is always out, in the state cache
    solvers = solvers_per_stream(tiny_gguf, 3, n_ctx=1024, max_tokens=6, parallel=2)
    model = solvers[0].loaded_model or solvers[0]._ensure_model()
    ids = [conversation_id(f"slot{n}") for n in range(3)]
    histories: List[List[ChatMessage]] = [[SYSTEM] for _ in range(3)]
    last: List[Optional[Dict[str, Any]]] = [None, None, None]
    restored = 0
    for turn in range(4):
        for n, solver in enumerate(solvers):
            histories[n].append(ChatMessage(Role.USER, question(turn, f"c{n}")))
            answer = "".join(ask(solver, histories[n], ids[n]))
            histories[n].append(ChatMessage(Role.ASSISTANT, answer))
            stats = dict(solver.last_stats)
            if last[n] is not None:  # exactly the new tokens: the rest came from its slot or its saved state
                assert stats["prompt_tokens_reused"] == held_after(last[n]), (turn, n, stats)
                assert stats["prompt_tokens_evaluated"] == stats["prompt_tokens"] - held_after(last[n])
                restored += stats["state_restored"]
            slot = model.decoder.slots[stats["slot"]]
            # what the sequence holds is the fresh rendering of the chat, and llama.cpp agrees on its length
            prompt = slot.transcript.tokens[:stats["prompt_tokens"]]
            assert model.llama.detokenize(prompt, special=True) == render(model, histories[n][:-1]).text
            memory = llama_cpp.llama_get_memory(model.llama.ctx)
            assert llama_cpp.llama_memory_seq_pos_max(memory, slot.seq) == len(slot.transcript.tokens) - 1
            last[n] = stats
    assert restored >= 6  # round-robin over two slots: most returns come back from a saved state
    assert 0 < model.saved.bytes and len(model.saved) == 1


def test_a_new_conversation_takes_the_slot_sharing_the_longest_prefix(tiny_gguf: Path) -> None:
    solver = make_solver(tiny_gguf, n_ctx=512, max_tokens=6, parallel=2)
    first, second = messages("hello how are you today"), messages("tell me a story about the moon")
    ask(solver, first, conversation_id("prefix"))
    ask(solver, second, conversation_id("prefix"))
    slot_of_second = solver.last_stats["slot"]
    # no slot is empty now: the same question from a new conversation goes where its prompt already is
    ask(solver, second, conversation_id("prefix"))
    stats = solver.last_stats
    assert stats["slot"] == slot_of_second
    assert stats["prompt_tokens_reused"] == stats["prompt_tokens"] - 2  # the last two are read again (MIN_PIECE)
    ask(solver, first, conversation_id("prefix"))
    assert solver.last_stats["slot"] != slot_of_second


def test_a_batched_conversation_crosses_its_memory_window(tiny_gguf: Path) -> None:
    solver = make_solver(tiny_gguf, n_ctx=1024, max_tokens=6, parallel=2)
    talk = conversation_id("window")
    history: List[ChatMessage] = []
    evaluated = new = 0
    previous: Optional[Dict[str, Any]] = None
    for turn in range(9):
        asked = question(turn)
        chat = windowed(SYSTEM, history, 3, asked)
        answer = "".join(ask(solver, chat, talk))
        stats = dict(solver.last_stats)
        model = solver.loaded_model
        slot = model.decoder.slots[stats["slot"]]
        assert model.llama.detokenize(slot.transcript.tokens[:stats["prompt_tokens"]], special=True) \
            == render(model, chat).text
        if previous is not None:
            kept = held_after(previous) - stats["shifted_out"]
            assert stats["prompt_tokens_reused"] == kept
            evaluated += stats["prompt_tokens_evaluated"]
            new += stats["prompt_tokens"] - kept
            assert (stats["shifted_out"] > 0) == (turn > 3)
        history += [ChatMessage(Role.USER, asked), ChatMessage(Role.ASSISTANT, answer)]
        previous = stats
    assert evaluated == new


def test_forgetting_drops_a_batched_conversations_cache(tiny_gguf: Path) -> None:
    solver = make_solver(tiny_gguf, n_ctx=512, max_tokens=6, parallel=2)
    other = make_solver(tiny_gguf, n_ctx=512, max_tokens=6, parallel=2)
    talk, chat = conversation_id("forget"), messages("hello how are you today")
    ask(solver, chat, talk)
    ask(other, messages("what about the moon"), conversation_id("push"))  # takes the empty slot
    # no slot left empty: one whose prompt starts like ours takes our slot, and ours goes to the state cache
    ask(other, messages("hello how are you today my friend"), conversation_id("push"))
    model = solver.loaded_model
    assert talk in list(model.saved)
    solver.forget(talk)
    assert talk not in list(model.saved)
    assert all(s.transcript is None or s.transcript.conversation_id != talk for s in model.decoder.slots)
    ask(solver, chat, talk)
    assert solver.last_stats["state_restored"] is False


def test_tool_planning_on_a_parallel_model_has_the_context_to_itself(tmp_path_factory: pytest.TempPathFactory) -> None:
    from tiny_gguf import write_tiny_gguf

    from ovos_skill_persona_fallback.solvers.base import ToolDefinition

    path = write_tiny_gguf(tmp_path_factory.mktemp("tiny-batch-tools") / "plain.gguf", n_ctx=2048)
    solver = make_solver(path, n_ctx=1024, max_tokens=8, parallel=2)
    talk = conversation_id("tools")
    first = "".join(ask(solver, messages("hello how are you today"), talk))
    tool = ToolDefinition("get_time", "the time now", {"type": "object", "properties": {}})
    solver.plan(messages("what time is it"), [tool], lang="en", cancel=CancelToken(), conversation_id=talk)
    model = solver.loaded_model
    assert model.live is None and all(s.transcript is None for s in model.decoder.slots)
    assert talk in list(model.saved)  # parked, not lost
    again = "".join(ask(solver, messages("hello how are you today"), talk))
    assert again == first and solver.last_stats["state_restored"] is True


@pytest.mark.parametrize("value", [0, -1, True, "2", 2.0, 65])
def test_bad_parallel_values_are_config_errors(value: Any) -> None:
    with pytest.raises(SolverConfigError, match="parallel"):
        make_solver(None, parallel=value)


def test_a_model_that_cannot_hold_several_sequences_says_why() -> None:
    reason = enable_parallel(object(), 4, 512)
    assert reason is not None and "cannot hold several sequences" in reason
