"""Issue 14: one vs four simultaneous questions to one local persona, ours vs ``llama_cpp.server``.

Both sides answer with SmolLM2-135M-Instruct (the default; ``--model``/``--size`` pick another GGUF)
on the same n_ctx, threads and sampling settings:

- ours: a ``PersonaEngine`` in this process holding one persona whose only solver is ``llama-cpp``
  (RAM memory, ``max_turns`` 0: every prompt is system + question). "1 session": the
  repetition's four questions asked one after another, each alone; "4 sessions": the same four
  questions from four threads calling ``engine.stream`` at the same instant, each with its own
  session id (the engine admits 4 answers at once by default).
- theirs: ``python -m llama_cpp.server`` (llama-cpp-python's own OpenAI-compatible server) as a
  subprocess on 127.0.0.1 (``--interrupt_requests False``, so a new request does not cut the one
  streaming), the four questions as streamed ``/v1/chat/completions`` one at a time, then four at
  once from four threads, each with the very messages our engine builds.

Per answer: the first sentence (each side's text cut by the engine's ``speech.SentenceSplitter``,
clock from the call to the first sentence) and the tokens generated (the answer text tokenized by
the model's own vocabulary, so both sides are counted the same way). Tokens/s: alone, each answer's
tokens / its own time from call to end; four at once, the tokens of all four / the wall time from
the first call to the last answer's end (prompt evaluation included). The four rounds (ours 1,
ours 4, theirs 1, theirs 4) rotate their order every repetition; one untimed warm-up repetition;
p50/p90 over all answers of ``--reps``. Both sides sample with one fixed seed, so a question gets
the same answer alone and among four (ours: exactly; ``tests/test_llama_batch.py``), and the
first sentences compared are the same sentences.

Targets (ours): p90 first sentence with 4 sessions <= 2 x a single question's, judged per question
(the p90 over all answers of: first sentence among four / the same question's alone), and
aggregate tokens/s with 4 sessions / the median of one alone >= 2. Also printed, stricter, as
earlier runs judged it: p90 among four / the median alone over all questions. Ours decodes the four together (``--parallel 4``,
the default here: one context with four sequences, ``solvers/llama_batch.py``); ``--parallel 1``
measures the old fair lock. ``llama_cpp.server`` answers one request at a time.

Threads: llama.cpp decodes a single token with ``n_threads`` (llama-cpp-python's default: half the
cores) and a batch of several with ``n_threads_batch`` (all cores), so with the default threads the
batched rounds also use more cores than a lone answer; ``--threads`` set to the number of cores
makes both the same, for a like-for-like comparison of the batching alone.
"""
from __future__ import annotations

import gc
import json
import threading
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

from .common import (QUESTIONS, SMOLLM2, base_parser, benchmark_model, describe_model, engine_solver,
                     llama_block, llama_engine, llama_persona, median, percentile, print_ratio, print_table,
                     quiet_logs, ratio_part, repetitions, sampling_kwargs, stop_all)
from .server_http import start_theirs

SESSIONS = 4
TARGET_FIRST = 2.0
TARGET_RATE = 2.0
SERVER_N_CTX = 2048  # what server_http.start_theirs starts llama_cpp.server with

#: one answer: seconds to the first sentence, seconds to the end (both from the round's start), its text
Answer = Dict[str, Any]


def ask_ours(engine: Any, question: str, session: str, start: float) -> Answer:
    """Stream one answer through the engine; note the first sentence and the end."""
    clock = time.perf_counter
    first: Optional[float] = None
    said: List[str] = []
    for sentence in engine.stream(question, session_id=session, lang="en-us"):
        if first is None:
            first = clock() - start
        said.append(sentence)
    end = clock() - start
    return {"first": first if first is not None else end, "end": end, "text": " ".join(said)}


def ask_theirs(url: str, messages: List[Dict[str, str]], options: Dict[str, Any], start: float) -> Answer:
    """Stream one chat completion from llama_cpp.server; cut its text with the engine's splitter."""
    import httpx

    from ovos_skill_persona_fallback.speech import SentenceSplitter

    clock = time.perf_counter
    splitter = SentenceSplitter()
    first: Optional[float] = None
    parts: List[str] = []
    body = dict(options, messages=messages, stream=True, model="bench")
    with httpx.Client(timeout=300) as client, \
            client.stream("POST", f"{url}/v1/chat/completions", json=body) as response:
        if response.status_code != 200:
            raise SystemExit(f"llama_cpp.server answered {response.status_code}: {response.read()[:300]!r}")
        for line in response.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            choices = json.loads(line[6:]).get("choices") or []
            text = choices[0].get("delta", {}).get("content") if choices else None
            if text:
                parts.append(text)
                if first is None and splitter.feed(text):
                    first = clock() - start
    end = clock() - start
    return {"first": first if first is not None else end, "end": end, "text": "".join(parts)}


def alone_round(calls: List[Callable[[float], Answer]]) -> List[Tuple[List[Answer], float]]:
    """Run the calls one after another, each timed from its own start; one (answers, wall) per call."""
    results = []
    for call in calls:
        gc.collect()
        start = time.perf_counter()
        answer = call(start)
        results.append(([answer], time.perf_counter() - start))
    return results


def one_round(calls: List[Callable[[float], Answer]]) -> Tuple[List[Answer], float]:
    """Start every call on its own thread at the same instant; return the answers and the wall time."""
    answers: List[Optional[Answer]] = [None] * len(calls)
    errors: List[BaseException] = []
    gate = threading.Barrier(len(calls) + 1)

    def run(index: int, call: Callable[[float], Answer]) -> None:
        gate.wait()
        try:
            answers[index] = call(start)
        except BaseException as err:  # handed to the caller below
            errors.append(err)

    threads = [threading.Thread(target=run, args=(i, call), daemon=True) for i, call in enumerate(calls)]
    for thread in threads:
        thread.start()
    gc.collect()
    start = time.perf_counter()
    gate.wait()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - start
    if errors:
        raise errors[0]
    return [answer for answer in answers if answer is not None], wall


def main(argv: Optional[List[str]] = None) -> int:
    parser = base_parser(__doc__, reps={SMOLLM2: 5, "tiny": 20, "small": 10, "medium": 5}, size=SMOLLM2)
    parser.add_argument("--max-tokens", type=int, default=48, help="answer length cap (default 48)")
    parser.add_argument("--parallel", type=int, default=SESSIONS,
                        help=f"our solver's parallel option: sequences decoded together (default {SESSIONS}; "
                             "1: one answer at a time behind the fair lock, as before)")
    parser.add_argument("--verbose", action="store_true", help="print every round's times")
    args = parser.parse_args(argv)
    reps = repetitions(args)
    quiet_logs()
    from ovos_skill_persona_fallback.prompt import build_messages

    with benchmark_model(args) as model:
        print(describe_model(model, args))
        persona = llama_persona(llama_block(model, args, n_ctx=SERVER_N_CTX, max_tokens=args.max_tokens,
                                            parallel=args.parallel), max_turns=0)
        engine = llama_engine(persona)
        solver = engine_solver(engine, persona)
        engine.warm_up().join()
        options = dict(sampling_kwargs(solver.generation, args.seed), max_tokens=args.max_tokens)
        process, url = start_theirs(model, args.threads)
        rounds: Dict[str, List[Tuple[List[Answer], float]]] = {}
        started = time.perf_counter()
        try:
            for rep in range(-1, reps):
                questions = [f"{QUESTIONS[(rep + 1 + n) % len(QUESTIONS)]} number {rep + 1}" for n in range(SESSIONS)]
                chats = [[m.as_dict() for m in build_messages(persona, [], q, lang="en-us", now=time.time())]
                         for q in questions]

                def ours(count: int) -> List[Callable[[float], Answer]]:
                    return [lambda start, n=n: ask_ours(engine, questions[n], f"conc-{rep}-{count}-{n}", start)
                            for n in range(count)]

                def theirs(count: int) -> List[Callable[[float], Answer]]:
                    return [lambda start, n=n: ask_theirs(url, chats[n], options, start) for n in range(count)]

                plan = [("ours 1", ours(SESSIONS)), ("ours 4", ours(SESSIONS)), ("theirs 1", theirs(SESSIONS)),
                        ("theirs 4", theirs(SESSIONS))]
                for offset in range(len(plan)):
                    name, calls = plan[(rep + 1 + offset) % len(plan)]
                    results = alone_round(calls) if name.endswith(" 1") else [one_round(calls)]
                    for answers, wall in results:
                        if args.verbose:
                            print(f"rep {rep:2d} {name:8s}: wall {wall * 1000:7.0f} ms; first sentence / end ms: "
                                  + ", ".join(f"{a['first'] * 1000:.0f}/{a['end'] * 1000:.0f}" for a in answers))
                    if rep >= 0:
                        rounds.setdefault(name, []).extend(results)
            elapsed = time.perf_counter() - started
            # the engine's own model tokenizes the answers of both sides, now that nothing else uses it
            llama = solver.loaded_model.llama

            def tokens(answer: Answer) -> int:
                return len(llama.tokenize(answer["text"].encode("utf-8"), add_bos=False, special=False))

            figures: Dict[str, Dict[str, float]] = {}
            for name, results in rounds.items():
                firsts = [a["first"] for answers, _ in results for a in answers]
                ends = [a["end"] for answers, _ in results for a in answers]
                rates = [sum(tokens(a) for a in answers) / wall for answers, wall in results]
                count = sum(tokens(a) for answers, _ in results for a in answers)
                figures[name] = {"p50": percentile(firsts, 50) * 1000, "p90": percentile(firsts, 90) * 1000,
                                 "end90": percentile(ends, 90) * 1000, "rate": median(rates),
                                 "tokens": count / len(ends)}
            # the same question alone and among four: answers in the same order on both rounds
            paired: Dict[str, float] = {}
            texts_same: Dict[str, float] = {}
            for side in ("ours", "theirs"):
                alone = [a for answers, _ in rounds[f"{side} 1"] for a in answers]
                crowd = [a for answers, _ in rounds[f"{side} 4"] for a in answers]
                paired[side] = percentile([c["first"] / a["first"] for a, c in zip(alone, crowd)], 90)
                texts_same[side] = sum(a["text"] == c["text"] for a, c in zip(alone, crowd)) / len(alone)
        finally:
            stop_all([process], wait=15)
            engine.close()

    print(f"{reps} repetitions (+1 warm-up) of 4 rounds, max_tokens {args.max_tokens}, seed {args.seed}, "
          f"parallel {args.parallel}, n_threads {args.threads or 'default'}, {elapsed:.1f} s")
    print_table(["round", "first sentence p50 ms", "p90 ms", "answer end p90 ms", "tokens/answer",
                 "aggregate tok/s (median)"],
                [[name, f["p50"], f["p90"], f["end90"], f["tokens"], f["rate"]]
                 for name, f in sorted(figures.items())])
    for side in ("ours", "theirs"):
        alone, crowd = figures[f"{side} 1"], figures[f"{side} 4"]
        print(f"{side}: first sentence among 4 / the same question alone, p90 over answers "
              f"{paired[side]:.2f}; p90 4 sessions / p90 alone {crowd['p90'] / alone['p90']:.2f}; "
              f"p90 4 sessions / median alone {crowd['p90'] / alone['p50']:.2f}; aggregate tok/s 4 / 1 "
              f"{crowd['rate'] / alone['rate']:.2f}; same answer alone and among 4: {texts_same[side]:.0%}")
    ours4, theirs4 = figures["ours 4"], figures["theirs 4"]
    print(f"ours/theirs with 4 at once: p90 first sentence {ours4['p90'] / theirs4['p90']:.2f}, "
          f"aggregate tok/s {ours4['rate'] / theirs4['rate']:.2f}")
    ours1 = figures["ours 1"]
    met = print_ratio([ratio_part("first_sentence_4/same_question_alone_p90", paired["ours"], "<=",
                                  TARGET_FIRST),
                       ratio_part("aggregate_tokens_per_s_4/1", ours4["rate"] / ours1["rate"], ">=", TARGET_RATE)])
    return 0 if met else 1


if __name__ == "__main__":
    raise SystemExit(main())
