"""Resident memory while four sessions talk in turn with one local persona, against its bound.

A ``PersonaEngine`` holds one persona whose only solver is ``llama-cpp`` on SmolLM2-135M-Instruct
(the default; ``--model``/``--size`` pick another GGUF), with the solver's default ``n_ctx``
(4096) unless ``--n-ctx`` says otherwise, a memory window of ``--window`` turns (default 12, the
shipped default) in a RAM database, and ``state_cache_mb`` from ``--state-cache-mb``. Four
sessions ask in turn (A, B, C, D, A, ...) through ``engine.ask`` for ``--minutes`` (default 2):
every answer switches the model's KV cache to another conversation, so the solver saves the
leaving conversation's state into its per-model LRU and restores the arriving one's; once the
window is full, every turn also drops the oldest turn (context shift). The default budget (32 MB)
is below what the four conversations' states reach within the run, so least recently used states
are dropped by bytes, as they are on a long-running node with many sessions.

A sampler thread reads this process's VmRSS (``/proc/self/status``) every ``--interval`` seconds
(default 2), with the bytes and count of saved states. Printed: RSS at start (libraries imported,
no model), after load (``engine.warm_up``), the last sample, the maximum; over the second half of
the run the slope (least squares, MB per minute) and the spread. The bound:

    model file size + one context (the KV cache of n_ctx tokens, f16 K and V for every layer, from
    the model's metadata) + the state_cache_mb budget + 100 MB (interpreter, libraries, llama.cpp's
    compute buffers, answers in flight)

With ``--parallel N`` (the solver's option, N > 1) the model's context holds N sequences of
``n_ctx`` cells, the four sessions ask at the same time every turn (a thread each) and keep their
own sequence, and "one context" in the bound is that whole context (N x the KV cache of n_ctx);
``--n-ctx 1024 --parallel 4`` holds the same cells as one context of 4096.

Targets: the maximum RSS <= the bound; the second-half slope <= 1 MB per minute (flat).
"""
from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from .common import (QUESTIONS, SMOLLM2, base_parser, benchmark_model, describe_model, engine_solver,
                     llama_block, llama_engine, llama_persona, print_ratio, print_table, quiet_logs, ratio_part,
                     rss_mb)

SESSIONS = ("A", "B", "C", "D")
SLACK_MB = 100.0
TARGET_SLOPE = 1.0  # MB per minute over the second half
MB = 1024 * 1024


def context_mb(llama: Any, n_ctx: int) -> float:
    """MB of one full KV cache: K and V, f16, n_ctx cells, every layer, (n_embd / heads) x kv heads each."""
    meta = llama.metadata
    arch = meta["general.architecture"]
    layers = int(meta[f"{arch}.block_count"])
    embd = int(meta[f"{arch}.embedding_length"])
    heads = int(meta[f"{arch}.attention.head_count"])
    kv_heads = int(meta.get(f"{arch}.attention.head_count_kv", heads))
    return 2 * layers * n_ctx * (embd // heads) * kv_heads * 2 / MB


def slope_per_minute(points: List[Tuple[float, float]]) -> float:
    """Least-squares slope of (seconds, MB) points, in MB per minute."""
    if len(points) < 2:
        return float("nan")
    mean_t = sum(t for t, _ in points) / len(points)
    mean_v = sum(v for _, v in points) / len(points)
    spread = sum((t - mean_t) ** 2 for t, _ in points)
    return sum((t - mean_t) * (v - mean_v) for t, v in points) / spread * 60 if spread else float("nan")


class Sampler(threading.Thread):
    """Reads RSS and the solver's saved-state books every ``interval`` seconds until stopped."""

    def __init__(self, interval: float, solver: Any, began: float) -> None:
        super().__init__(name="rss-sampler", daemon=True)
        self.interval, self.solver, self.began = interval, solver, began
        self.samples: List[Dict[str, float]] = []
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            model = self.solver.loaded_model
            saved = model.saved if model is not None else None
            self.samples.append({"t": time.perf_counter() - self.began, "rss": rss_mb(),
                                 "states_mb": saved.bytes / MB if saved is not None else 0.0,
                                 "states": float(len(saved)) if saved is not None else 0.0})
            self.done.wait(self.interval)


def main(argv: Optional[List[str]] = None) -> int:
    parser = base_parser(__doc__, reps={SMOLLM2: 1}, size=SMOLLM2)
    parser.add_argument("--minutes", type=float, default=2.0, help="how long the sessions talk (default 2)")
    parser.add_argument("--interval", type=float, default=2.0, help="seconds between RSS samples (default 2)")
    parser.add_argument("--max-tokens", type=int, default=32, help="answer length cap (default 32)")
    parser.add_argument("--window", type=int, default=12, help="memory window in turns (default 12)")
    parser.add_argument("--n-ctx", type=int, default=4096, help="context size (default 4096, the solver's)")
    parser.add_argument("--state-cache-mb", type=float, default=32.0,
                        help="the solver's state_cache_mb (default 32 here, so the budget is reached; shipped: 256)")
    parser.add_argument("--parallel", type=int, default=1,
                        help="the solver's parallel option (default 1); above 1 the sessions ask at the same time")
    args = parser.parse_args(argv)
    quiet_logs()
    # the libraries every answer needs are imported before "start", so start means "no model yet"
    import llama_cpp  # noqa: F401

    from ovos_skill_persona_fallback import engine as _engine  # noqa: F401
    from ovos_skill_persona_fallback.solvers import llamacpp as _llamacpp  # noqa: F401
    start_rss = rss_mb()
    with benchmark_model(args) as model:
        print(describe_model(model, args))
        block = llama_block(model, args, n_ctx=args.n_ctx, max_tokens=args.max_tokens,
                            state_cache_mb=args.state_cache_mb, parallel=args.parallel)
        persona = llama_persona(block, max_turns=args.window)
        engine = llama_engine(persona)
        solver = engine_solver(engine, persona)
        engine.warm_up().join()
        loaded_rss = rss_mb()
        llama = solver.loaded_model.llama
        context = context_mb(llama, int(llama.n_ctx()))
        model_mb = Path(model).stat().st_size / MB
        bound = model_mb + context + args.state_cache_mb + SLACK_MB
        began = time.perf_counter()
        sampler = Sampler(args.interval, solver, began)
        sampler.start()
        deadline = began + args.minutes * 60
        answers, turn = 0, 0
        failed: List[str] = []

        def ask(index: int, name: str) -> None:
            question = QUESTIONS[(turn + 3 * index) % len(QUESTIONS)]
            answer = engine.ask(question, session_id=f"rss-{name}", lang="en-us")
            if not answer.sentences or answer.result.solver_id != "llama-cpp":
                failed.append(f"turn {turn} of {name}: the model did not answer: "
                              f"{[f.describe() for f in answer.failures]}")

        try:
            while time.perf_counter() < deadline and not failed:
                turn += 1
                if args.parallel > 1:
                    threads = [threading.Thread(target=ask, args=(i, n)) for i, n in enumerate(SESSIONS)]
                    for thread in threads:
                        thread.start()
                    for thread in threads:
                        thread.join()
                else:
                    for index, name in enumerate(SESSIONS):
                        ask(index, name)
                answers += len(SESSIONS)
            if failed:
                raise SystemExit(failed[0])
        finally:
            sampler.done.set()
            sampler.join()
            engine.close()
        elapsed = time.perf_counter() - began

    samples = sampler.samples
    half = elapsed / 2
    second = [(s["t"], s["rss"]) for s in samples if s["t"] >= half]
    slope = slope_per_minute(second)
    peak = max(s["rss"] for s in samples)
    peak_states = max(s["states_mb"] for s in samples)
    print(f"{answers} answers in {elapsed:.0f} s ({turn} turns per session, window {args.window}), "
          f"max_tokens {args.max_tokens}, n_ctx {int(llama.n_ctx())}, parallel {args.parallel}, "
          f"{len(samples)} RSS samples every "
          f"{args.interval:g} s")
    step = max(1, len(samples) // 12)
    print_table(["t s", "RSS MB", "saved states MB", "saved states"],
                [[s["t"], s["rss"], s["states_mb"], int(s["states"])] for s in samples[::step] + samples[-1:]])
    print_table(["", "MB"], [
        ["RSS at start (engine and llama_cpp imported, no model)", start_rss],
        ["RSS after load", loaded_rss],
        ["RSS at the end", samples[-1]["rss"]],
        ["RSS max", peak],
        ["second half: min", min(v for _, v in second)],
        ["second half: max", max(v for _, v in second)],
        ["second half: slope MB/min", slope],
        ["saved states max (budget state_cache_mb)", peak_states],
        ["bound = model + one context + state_cache_mb + 100", bound],
    ], title=f"bound: model {model_mb:.1f} + one context {context:.1f} + state_cache_mb {args.state_cache_mb:g} "
             f"+ {SLACK_MB:g} MB")
    met = print_ratio([ratio_part("rss_max/bound", peak / bound, "<=", 1.0),
                       ratio_part("second_half_slope_mb_per_min", slope, "<=", TARGET_SLOPE)])
    return 0 if met else 1


if __name__ == "__main__":
    raise SystemExit(main())
