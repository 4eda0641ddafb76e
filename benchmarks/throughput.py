"""Generation speed: our llama-cpp solver vs raw llama-cpp-python on the same model file.

- ours: a ``LlamaCppSolver`` built through the solver registry (``solvers.create_solver``),
  streamed directly (no engine, no chain thread): ``solver.stream(messages, ...)``. Its token count
  is ``last_stats["completion_tokens"]``.
- raw stream: a separate ``llama_cpp.Llama`` on the same file with the same n_ctx and threads,
  ``create_chat_completion(stream=True)`` with the same messages, seed, max_tokens and sampling
  settings (given explicitly: the chat API's defaults differ from the solver's).
- raw generate: the library's bare token loop, the floor for any Python stack: the same prompt
  rendered by the model's chat template and tokenized as ``create_chat_completion`` does, then
  ``Llama.generate`` with the same sampling, one ``detokenize`` per token, stopping at max_tokens
  (no stop strings, no UTF-8 care, no cancel checks). A third ``Llama`` instance.

What is measured: generation only. The clock of each side runs from its first text chunk (raw
generate: its first token) to the end of its stream, and ``tokens - 1`` tokens are generated in
that span (the first token is already out when it starts), so prompt evaluation and the first
token are excluded on every side. Every side must generate exactly ``--max-tokens`` tokens: the
random model never ends a turn by itself (its control tokens are never sampled, see
tests/tiny_gguf.py); the solver must report ``finish_reason == "length"``, the raw stream too, and
with the same seed all texts are identical, which the script counts. (A real ``--model`` may end
its answer early; the script then stops and says so: lower ``--max-tokens``. ``--model smollm2``,
the real SmolLM2-135M-Instruct, tells a story of well over 128 tokens to the question below, so its
default is 128 tokens.) Total tokens/s
(prompt included) and the time to the first chunk are shown as well.

Every side runs on a fresh thread per answer, as the engine's chain runs solvers (see
``common.in_fresh_thread``: this OpenMP build was measured slower from the long-lived main
thread on a busy machine). All sides ask the same question every repetition and keep their KV
cache, so each evaluates just the last prompt token before generating: the same prompt work
everywhere. The order of the sides rotates each repetition; one untimed warm-up round; medians
over ``--reps``.

Target: tokens/s ours / raw >= 0.97, against both raw sides.
"""
from __future__ import annotations

import gc
import time
from functools import partial
from typing import Any, Dict, List, Optional

from .common import (SMOLLM2, base_parser, benchmark_model, describe_model, in_fresh_thread, llama_block, median,
                     percentile, print_ratio, print_table, quiet_logs, ratio_part, raw_llama, repetitions,
                     model_kind, sampling_kwargs)

TARGET = 0.97
CONVERSATION = "throughput-bench"
SYSTEM = "You are a storyteller. Tell long stories."
QUESTION = "tell me a long story about the moon and the sun"


def run_ours(solver: Any, messages: List[Any]) -> Dict[str, Any]:
    """Stream through the solver; return times of first chunk and end, tokens and text."""
    from ovos_skill_persona_fallback.solvers.base import CancelToken

    clock = time.perf_counter
    parts: List[str] = []
    start = clock()
    first: Optional[float] = None
    for chunk in solver.stream(messages, lang="en-us", cancel=CancelToken(), conversation_id=CONVERSATION):
        if first is None:
            first = clock()
        parts.append(chunk)
    end = clock()
    stats = solver.last_stats
    if stats["finish_reason"] != "length":
        raise SystemExit(f"ours stopped early ({stats['finish_reason']}): the token counts would differ")
    return {"tokens": stats["completion_tokens"], "start": start, "first": first, "end": end,
            "text": "".join(parts)}


def run_raw(llama: Any, messages: List[Dict[str, str]], options: Dict[str, Any]) -> Dict[str, Any]:
    """Stream create_chat_completion; return the same fields (tokens known from finish_reason)."""
    clock = time.perf_counter
    parts: List[str] = []
    finish = None
    start = clock()
    first: Optional[float] = None
    for chunk in llama.create_chat_completion(messages, stream=True, **options):
        choice = chunk["choices"][0]
        text = choice["delta"].get("content")
        if text:
            if first is None:
                first = clock()
            parts.append(text)
        finish = choice.get("finish_reason") or finish
    end = clock()
    if finish != "length":
        raise SystemExit(f"raw stopped early ({finish}): the token counts would differ")
    return {"tokens": options["max_tokens"], "start": start, "first": first, "end": end, "text": "".join(parts)}


def chat_prompt_tokens(llama: Any, messages: List[Dict[str, str]]) -> List[int]:
    """Render and tokenize ``messages`` with the model's own template, as create_chat_completion does."""
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    def token_text(token_id: int) -> str:
        return llama.detokenize([token_id], special=True).decode("utf-8", errors="ignore")

    formatter = Jinja2ChatFormatter(template=llama.metadata["tokenizer.chat_template"],
                                    eos_token=token_text(llama.token_eos()),
                                    bos_token=token_text(llama.token_bos()))
    rendered = formatter(messages=messages)
    return llama.tokenize(rendered.prompt.encode("utf-8"), add_bos=not rendered.added_special, special=True)


def run_generate(llama: Any, tokens: List[int], options: Dict[str, Any]) -> Dict[str, Any]:
    """The bare loop: Llama.generate, detokenize each token, stop at max_tokens."""
    clock = time.perf_counter
    parts: List[str] = []
    count = 0
    start = clock()
    first: Optional[float] = None
    llama.set_seed(options["seed"])
    generator = llama.generate(tokens, top_k=options["top_k"], top_p=options["top_p"], min_p=options["min_p"],
                               temp=options["temperature"], repeat_penalty=options["repeat_penalty"])
    for token in generator:
        parts.append(llama.detokenize([token]).decode("utf-8", errors="ignore"))
        count += 1
        if first is None:
            first = clock()
        if count >= options["max_tokens"]:
            break
    generator.close()
    end = clock()
    return {"tokens": count, "start": start, "first": first, "end": end, "text": "".join(parts)}


def rates(sample: Dict[str, Any]) -> Dict[str, float]:
    """Generation tokens/s (first chunk to end) and total tokens/s (call to end)."""
    return {"gen": (sample["tokens"] - 1) / (sample["end"] - sample["first"]),
            "total": sample["tokens"] / (sample["end"] - sample["start"]),
            "ttft": (sample["first"] - sample["start"]) * 1000}


def main(argv: Optional[List[str]] = None) -> int:
    parser = base_parser(__doc__, reps={"tiny": 30, "small": 15, "medium": 16, SMOLLM2: 8})
    parser.add_argument("--max-tokens", type=int, default=None,
                        help=f"tokens generated per answer (default 200; {SMOLLM2}: 128)")
    args = parser.parse_args(argv)
    if args.max_tokens is None:
        args.max_tokens = 128 if model_kind(args) == SMOLLM2 else 200
    reps = repetitions(args)
    quiet_logs()
    from ovos_skill_persona_fallback.solvers import create_solver
    from ovos_skill_persona_fallback.solvers.base import ChatMessage, Role, SolverContext

    with benchmark_model(args) as model:
        print(describe_model(model, args))
        block = llama_block(model, args, max_tokens=args.max_tokens)
        solver = create_solver("llama-cpp", block, SolverContext(persona_name="Bench"))
        raw, bare = raw_llama(model, args), raw_llama(model, args)
        messages = [ChatMessage(Role.SYSTEM, SYSTEM), ChatMessage(Role.USER, QUESTION)]
        raw_messages = [m.as_dict() for m in messages]
        options = dict(sampling_kwargs(solver.generation, args.seed), max_tokens=args.max_tokens)
        prompt_tokens = chat_prompt_tokens(bare, raw_messages)
        runs = {"ours": partial(in_fresh_thread, run_ours, solver, messages),
                "raw stream": partial(in_fresh_thread, run_raw, raw, raw_messages, options),
                "raw generate": partial(in_fresh_thread, run_generate, bare, prompt_tokens, options)}
        sides = tuple(runs)
        samples: Dict[str, List[Dict[str, float]]] = {side: [] for side in sides}
        same_text = 0
        started = time.perf_counter()
        for rep in range(-1, reps):
            got: Dict[str, Dict[str, Any]] = {}
            for offset in range(len(sides)):
                side = sides[(rep + 1 + offset) % len(sides)]
                gc.collect()
                got[side] = runs[side]()
            if rep < 0:
                continue
            counts = {side: got[side]["tokens"] for side in sides}
            if len(set(counts.values())) != 1:
                raise SystemExit(f"token counts differ: {counts}")
            same_text += len({got[side]["text"] for side in sides}) == 1
            for side in samples:
                samples[side].append(rates(got[side]))
        elapsed = time.perf_counter() - started
        solver.close()

    rows = []
    for side, values in samples.items():
        gen = [v["gen"] for v in values]
        rows.append([side, median(gen), percentile(gen, 10), percentile(gen, 90),
                     median([v["total"] for v in values]), median([v["ttft"] for v in values])])
    print(f"{reps} repetitions (+1 warm-up), {args.max_tokens} tokens each, seed {args.seed}, {elapsed:.1f} s; "
          f"identical text on all sides in {same_text}/{reps}")
    print_table(["side", "gen tok/s (median)", "p10", "p90", "total tok/s", "first chunk ms"], rows)
    parts = []
    ours = median([v["gen"] for v in samples["ours"]])
    for side, name in (("raw stream", "raw_stream"), ("raw generate", "raw_generate")):
        per_rep = [o["gen"] / r["gen"] for o, r in zip(samples["ours"], samples[side])]
        print(f"per-repetition ratio ours/{side}: median {median(per_rep):.3f}, "
              f"p10 {percentile(per_rep, 10):.3f}, p90 {percentile(per_rep, 90):.3f}")
        parts.append(ratio_part(f"tokens_per_s_ours/{name}", ours / median([v["gen"] for v in samples[side]]),
                                ">=", TARGET))
    met = print_ratio(parts)
    return 0 if met else 1


if __name__ == "__main__":
    raise SystemExit(main())
