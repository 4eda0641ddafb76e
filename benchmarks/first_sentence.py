"""Time to the first spoken sentence: our engine + llama-cpp solver vs raw llama-cpp-python.

Three ways to answer the same question with the same model file, measured side by side:

- ours: ``PersonaEngine.stream`` with a persona whose only solver is ``llama-cpp`` (no shipped
  personas, RAM memory, ``max_turns`` 0 so every prompt is system + question). The clock starts
  before ``engine.stream`` is called and stops when the first sentence comes out of the
  ``AnswerStream``: history lookup, prompt building, the chain's worker thread and queue, the
  solver's own prompt rendering, splicing and prefill, generation and sentence splitting are all
  inside the measurement.
- raw stream: a separate ``llama_cpp.Llama`` on the same file (same n_ctx, threads, seed and
  sampling settings, given explicitly since the chat API's defaults differ from the solver's),
  ``create_chat_completion(stream=True)`` with the very messages the engine builds; the delta
  texts go through the same ``speech.SentenceSplitter``, so both sides cut sentences
  identically. The clock stops when that splitter emits its first sentence; the time to the
  first text chunk is shown too (prompt evaluation plus one token, the floor for any stack).
- non-streaming: a third ``Llama`` instance, ``create_chat_completion()`` without streaming:
  nothing can be spoken before the whole answer exists, so its first sentence time is the total.

Fairness:
- Both raw sides call llama.cpp from a fresh thread per answer, as the engine's chain does for
  ours (see ``common.in_fresh_thread``: with this OpenMP build, calling from the long-lived main
  thread was several times slower on a busy machine, which would flatter ours).
- Each repetition asks a question no earlier repetition asked (a numbered variant), the same on
  all sides. Every side keeps its own KV cache from its previous call, so each reuses the shared
  system-prompt prefix and evaluates the new question: the same work everywhere. (Resetting the
  raw models instead would not be fair: our solver would still reuse its prefix.) A single
  session id is used for ours, as for one user asking separate questions, so no state is saved or
  restored between repetitions.
- Same seed and sampling settings on all sides: the generated text is the same, so the first
  sentence is the same text at the same token; the script checks this and reports mismatches.
- ``--cold``: instead, every side starts each repetition with an empty KV cache (ours through
  ``solver.loaded_model.reset()``, raw through ``Llama.reset()``), so the whole prompt is
  evaluated: the first question after start-up, or one whose prefix another conversation evicted.
  ``--system-words N`` makes the system prompt longer (N extra words), as real personas' are.
- The order of the three sides rotates every repetition, so drift of the machine hits all;
  two untimed warm-up rounds load the models first. Medians over ``--reps``.

``--model smollm2`` (or ``--size smollm2``) answers with the real SmolLM2-135M-Instruct, whose
sentences end where a real model's do and whose answers may end before ``--max-tokens``.

The random model's vocabulary holds words ending in a period (benchmarks/common.py), so the
first sentence usually ends after 10 to 20 tokens; when an answer holds no sentence end within
``--max-tokens``, its first sentence is the whole answer, delivered at the end, on every side
(the "mid" column counts the repetitions where the sentence ended before the answer did).

Targets: ours/raw <= 1.05 and ours/non-streaming far below 1 (reported against 0.5).
"""
from __future__ import annotations

import gc
import time
from functools import partial
from typing import Any, Callable, Dict, List, Optional, Tuple

from .common import (QUESTIONS, SMOLLM2, SYSTEM_PROMPT, base_parser, benchmark_model, describe_model, engine_solver,
                     in_fresh_thread, llama_block, llama_engine, llama_persona, median, percentile,
                     print_ratio, print_table, quiet_logs, ratio_part, raw_llama, repetitions, sampling_kwargs)

SESSION = "first-sentence-bench"
TARGET_RAW = 1.05
TARGET_NON_STREAMING = 0.5


#: one side's measurement of one repetition: seconds to the first chunk ("chunk", raw stream only)
#: and first sentence ("first"), the whole answer ("total"), the sentence, and "mid" (the sentence
#: ended before the answer did)
Sample = Dict[str, Any]


def system_prompt(extra_words: int) -> str:
    """The benchmark persona's system prompt, lengthened by ``extra_words`` plain words."""
    words = " ".join(QUESTIONS).split()
    return " ".join([SYSTEM_PROMPT] + [words[i % len(words)] for i in range(extra_words)])


def run_ours(engine: Any, question: str) -> Sample:
    """Ask through the engine; time the first sentence, then drain the rest."""
    clock = time.perf_counter
    start = clock()
    stream = engine.stream(question, session_id=SESSION, lang="en-us")
    first: Optional[float] = None
    sentence = ""
    count = 0
    for said in stream:
        if first is None:
            first, sentence = clock() - start, said
        count += 1
    total = clock() - start
    return {"first": first if first is not None else total, "total": total, "sentence": sentence,
            "mid": count > 1, "chunk": None}


def run_raw_stream(llama: Any, messages: List[Dict[str, str]], options: Dict[str, Any],
                   start: float) -> Sample:
    """Stream with create_chat_completion; cut with the engine's splitter; time chunk and sentence."""
    from ovos_skill_persona_fallback.speech import SentenceSplitter

    clock = time.perf_counter
    splitter = SentenceSplitter()
    first_chunk: Optional[float] = None
    first: Optional[float] = None
    sentence = ""
    mid = False
    for chunk in llama.create_chat_completion(messages, stream=True, **options):
        delta = chunk["choices"][0]["delta"].get("content")
        if not delta:
            continue
        if first_chunk is None:
            first_chunk = clock() - start
        if first is None:
            done = splitter.feed(delta)
            if done:
                first, sentence, mid = clock() - start, done[0], True
    if first is None:
        done = splitter.flush()
        first, sentence = clock() - start, (done[0] if done else "")
    total = clock() - start
    return {"first": first, "total": total, "sentence": sentence, "mid": mid, "chunk": first_chunk}


def run_non_streaming(llama: Any, messages: List[Dict[str, str]], options: Dict[str, Any],
                      start: float) -> Sample:
    """Whole answer first, then split: the first sentence can be spoken only at the end."""
    from ovos_skill_persona_fallback.speech import SentenceSplitter

    clock = time.perf_counter
    reply = llama.create_chat_completion(messages, **options)
    splitter = SentenceSplitter()
    sentences = splitter.feed(reply["choices"][0]["message"]["content"] or "") + splitter.flush()
    total = clock() - start
    return {"first": total, "total": total, "sentence": sentences[0] if sentences else "", "mid": False,
            "chunk": None}


def on_fresh_thread(function: Callable[..., Sample], *args: Any) -> Sample:
    """Start the clock, then run a raw side on a fresh thread (thread start inside its time)."""
    return in_fresh_thread(function, *args, time.perf_counter())


def main(argv: Optional[List[str]] = None) -> int:
    parser = base_parser(__doc__, reps={"tiny": 200, "small": 40, "medium": 20, SMOLLM2: 20})
    parser.add_argument("--max-tokens", type=int, default=64,
                        help="answer length limit on every side (default 64)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed rounds first (default 2)")
    parser.add_argument("--verbose", action="store_true", help="print every repetition's times")
    parser.add_argument("--cold", action="store_true", help="empty every KV cache before each repetition")
    parser.add_argument("--system-words", type=int, default=0,
                        help="words added to the system prompt (default 0: one short sentence)")
    args = parser.parse_args(argv)
    args.reps = repetitions(args)
    quiet_logs()
    from ovos_skill_persona_fallback.prompt import build_messages

    with benchmark_model(args) as model:
        print(describe_model(model, args))
        persona = llama_persona(llama_block(model, args, max_tokens=args.max_tokens), max_turns=0,
                                system_prompt=system_prompt(args.system_words))
        engine = llama_engine(persona)
        solver = engine_solver(engine, persona)
        options = dict(sampling_kwargs(solver.generation, args.seed), max_tokens=args.max_tokens)
        streaming, whole = raw_llama(model, args), raw_llama(model, args)
        sides = ("ours", "raw stream", "non-streaming")
        samples: Dict[str, List[Sample]] = {side: [] for side in sides}
        mismatches: List[Tuple[int, str, str]] = []
        started = time.perf_counter()
        for rep in range(-args.warmup, args.reps):
            round_no = rep + args.warmup
            question = f"{QUESTIONS[round_no % len(QUESTIONS)]} number {round_no}"
            messages = [m.as_dict() for m in build_messages(persona, [], question, lang="en-us", now=time.time())]
            runs = {
                "ours": partial(run_ours, engine, question),
                "raw stream": partial(on_fresh_thread, run_raw_stream, streaming, messages, options),
                "non-streaming": partial(on_fresh_thread, run_non_streaming, whole, messages, options),
            }
            got: Dict[str, Sample] = {}
            if args.cold and solver.loaded_model is not None:  # loaded by the first (warm-up) answer
                solver.loaded_model.reset()
                streaming.reset()
                whole.reset()
            for offset in range(len(sides)):
                side = sides[(round_no + offset) % len(sides)]
                gc.collect()
                got[side] = runs[side]()
            if rep < 0:
                continue
            for side in sides:
                samples[side].append(got[side])
            if args.verbose:
                print(f"rep {rep:3d}: " + "  ".join(f"{side} {got[side]['first'] * 1000:7.1f}/"
                                                    f"{got[side]['total'] * 1000:7.1f} ms" for side in sides))
            if got["ours"]["sentence"] != got["raw stream"]["sentence"]:
                mismatches.append((rep, got["ours"]["sentence"], got["raw stream"]["sentence"]))
        elapsed = time.perf_counter() - started
        engine.close()

    def ms(side: str, key: str, q: float = 50.0) -> float:
        values = [s[key] for s in samples[side] if s[key] is not None]
        return percentile(values, q) * 1000 if values else float("nan")

    rows = [[side, ms(side, "chunk"), ms(side, "first"), ms(side, "first", 90), ms(side, "total"),
             f"{sum(s['mid'] for s in samples[side])}/{args.reps}"] for side in sides]
    print(f"{args.reps} repetitions (+{args.warmup} warm-up), max_tokens {args.max_tokens}, seed {args.seed}, "
          f"{'cold' if args.cold else 'warm'} KV cache, prompt {solver.last_stats.get('prompt_tokens')} tokens "
          f"({solver.last_stats.get('prompt_tokens_evaluated')} evaluated by ours), {elapsed:.1f} s")
    print_table(["side", "first chunk ms", "first sentence ms", "p90 ms", "whole answer ms", "mid"], rows)
    per_rep = [o["first"] / r["first"] for o, r in zip(samples["ours"], samples["raw stream"])]
    print(f"ours - raw first sentence (median): {(ms('ours', 'first') - ms('raw stream', 'first')):.3f} ms; "
          f"per-repetition ratio median {median(per_rep):.3f}")
    if mismatches:
        print(f"first sentence differed in {len(mismatches)} repetitions, e.g. rep {mismatches[0][0]}: "
              f"ours {mismatches[0][1]!r} vs raw {mismatches[0][2]!r}")
    else:
        print("first sentence text identical on both streaming sides in every repetition")
    ours = median([s["first"] for s in samples["ours"]])
    raw = median([s["first"] for s in samples["raw stream"]])
    whole_time = median([s["first"] for s in samples["non-streaming"]])
    met = print_ratio([ratio_part("ttfs_ours/ttfs_raw", ours / raw, "<=", TARGET_RAW),
                       ratio_part("ttfs_ours/ttfs_non_streaming", ours / whole_time, "<=", TARGET_NON_STREAMING)])
    return 0 if met else 1


if __name__ == "__main__":
    raise SystemExit(main())
