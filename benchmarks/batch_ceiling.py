"""What decoding several sequences together can gain on this machine: llama.cpp's bare loop, 1 vs N.

No solver, no engine, no threads of ours: one ``llama_cpp.Llama`` whose context is given N
sequences by the solver's own ``llama_batch.enable_parallel`` (separate KV streams, as with
``parallel: N``), then a plain loop: evaluate N prompts, then per step one ``llama_decode`` with one
token of every sequence and one sample per sequence (llama-cpp-python's sampler chain, as the
solver uses it). The same loop with one sequence is the baseline. Clock: generation only (from the
first sampled token to the last), ``--tokens`` tokens per sequence, medians over ``--reps``, the two
rounds alternating.

llama.cpp decodes one token with ``n_threads`` and a batch of several with ``n_threads_batch``;
both are printed. This is the ceiling for ``concurrency_llama``'s tokens/s ratio: the solver and
the engine can only lose to it (prompt evaluation, answers ending at different lengths, their
threads sharing the cores with llama.cpp's).
"""
from __future__ import annotations

import time
from typing import Any, List, Optional

from .common import (SMOLLM2, base_parser, benchmark_model, describe_model, median, print_ratio, print_table,
                     quiet_logs, ratio_part, repetitions)

PROMPT = "<|im_start|>user\nTell me a long story about a lighthouse keeper number {n}<|im_end|>\n<|im_start|>assistant\n"


def decode_round(llama: Any, sequences: int, tokens: int, seed: int) -> float:
    """Generate ``tokens`` tokens in each of ``sequences`` sequences together; return tokens/s of generation."""
    import llama_cpp

    lib, ctx = llama_cpp, llama.ctx
    lib.llama_memory_clear(lib.llama_get_memory(ctx), True)
    batch = lib.llama_batch_init(llama.n_batch, 0, 1)
    samplers: List[Any] = []
    try:
        positions, rows = [], []
        for seq in range(sequences):  # each prompt alone, as the solver evaluates prompts
            prompt = llama.tokenize(PROMPT.format(n=seq).encode(), add_bos=False, special=True)
            for index, token in enumerate(prompt):
                batch.token[index], batch.pos[index], batch.n_seq_id[index] = token, index, 1
                batch.seq_id[index][0], batch.logits[index] = seq, index == len(prompt) - 1
            batch.n_tokens = len(prompt)
            if lib.llama_decode(ctx, batch) != 0:
                raise SystemExit("llama_decode failed on a prompt")
            llama.set_seed(seed + seq)
            samplers.append(llama._init_sampler(top_k=40, top_p=0.95, temp=0.8, repeat_penalty=1.1))
            positions.append(len(prompt))
            rows.append(samplers[-1].sample(llama._ctx, len(prompt) - 1))
        started = time.perf_counter()
        for _ in range(tokens - 1):
            for seq in range(sequences):
                batch.token[seq], batch.pos[seq], batch.n_seq_id[seq] = rows[seq], positions[seq], 1
                batch.seq_id[seq][0], batch.logits[seq] = seq, True
                positions[seq] += 1
            batch.n_tokens = sequences
            if lib.llama_decode(ctx, batch) != 0:
                raise SystemExit("llama_decode failed while generating")
            rows = [samplers[seq].sample(llama._ctx, seq) for seq in range(sequences)]
        return sequences * (tokens - 1) / (time.perf_counter() - started)
    finally:
        for sampler in samplers:
            sampler.close()
        lib.llama_batch_free(batch)


def main(argv: Optional[List[str]] = None) -> int:
    parser = base_parser(__doc__, reps={SMOLLM2: 5, "tiny": 10, "small": 5, "medium": 5}, size=SMOLLM2)
    parser.add_argument("--sequences", type=int, default=4, help="sequences decoded together (default 4)")
    parser.add_argument("--tokens", type=int, default=64, help="tokens generated per sequence (default 64)")
    args = parser.parse_args(argv)
    quiet_logs()
    from ovos_skill_persona_fallback.solvers.llama_batch import enable_parallel
    from ovos_skill_persona_fallback.solvers.llama_models import default_llama_factory

    with benchmark_model(args) as model:
        print(describe_model(model, args))
        kwargs = {"model_path": str(model), "n_ctx": 1024, "verbose": False}
        if args.threads is not None:
            kwargs["n_threads"] = args.threads
        llama = default_llama_factory(**kwargs)  # the solver's factory: same OpenMP settings
        reason = enable_parallel(llama, args.sequences, 1024)
        if reason is not None:
            raise SystemExit(reason)
        rates: dict = {1: [], args.sequences: []}
        decode_round(llama, args.sequences, 8, args.seed)  # warm-up
        for rep in range(repetitions(args)):
            for count in ((1, args.sequences) if rep % 2 == 0 else (args.sequences, 1)):
                rates[count].append(decode_round(llama, count, args.tokens, args.seed))
    one, many = median(rates[1]), median(rates[args.sequences])
    print(f"n_threads {llama.context_params.n_threads}, n_threads_batch {llama.context_params.n_threads_batch}, "
          f"{args.tokens} tokens per sequence, {repetitions(args)} reps")
    print_table(["sequences", "tokens/s (median, all sequences)"], [[1, one], [args.sequences, many]])
    return 0 if print_ratio([ratio_part(f"tokens_per_s_{args.sequences}/1", many / one, ">=", 2.0)]) else 1


if __name__ == "__main__":
    raise SystemExit(main())
