"""What the engine hands its front ends: an answer, its sentence stream, and the two refusals."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, Iterator, List, Optional, Protocol, Tuple

from .chain import ChainResult, SolverFailure
from .solvers.base import ToolCall
from .tools import ToolUsingSolver


class Translator(Protocol):
    """What the engine needs from a translation layer (``translation.Translator`` is the real one)."""

    available: bool

    def translate(self, text: str, target: str, source: str) -> str:
        """Return ``text`` translated from ``source`` into ``target`` (the text itself on failure)."""

    def detect(self, text: str) -> Optional[str]:
        """Return the language of ``text``, or None."""


class NoPersonaError(LookupError):
    """No usable persona matches the request."""


class EngineBusy(RuntimeError):
    """Too many answers are being generated and the waiting line is full."""


@dataclass
class Answer:
    """A finished (or stopped) answer: what was said, by whom, and what went wrong on the way."""

    persona: str
    sentences: List[str] = field(default_factory=list)
    result: ChainResult = field(default_factory=ChainResult)
    #: the tool-using solvers of this answer (``used`` says which tools ran)
    tool_runs: List[ToolUsingSolver] = field(default_factory=list)
    #: prompt_tokens, completion_tokens, total_tokens and their source: "tokenizer" (the local
    #: model's), "upstream" (an HTTP backend's report) or "estimate" (characters / 4)
    usage: Dict[str, Any] = field(default_factory=dict)

    @property
    def text(self) -> str:
        """The spoken answer as one string."""
        return " ".join(self.sentences)

    @property
    def failures(self) -> List[SolverFailure]:
        """Every solver failure met on the way."""
        return self.result.failures

    @property
    def tool_calls(self) -> Tuple[ToolCall, ...]:
        """Calls the model asked an HTTP client to run (``client_tools``); empty otherwise."""
        return self.result.tool_calls

    def tool_note(self) -> str:
        """One line naming the tools this answer used ("" when none ran)."""
        return " ".join(run.note() for run in self.tool_runs if run.note())


class AnswerStream:
    """Iterate to get sentences as they are ready; ``answer`` fills in as it goes."""

    def __init__(self, answer: Answer, sentences: Iterator[str]) -> None:
        self.answer = answer
        self._sentences = sentences

    def __iter__(self) -> Iterator[str]:
        return self._sentences

    def close(self) -> None:
        """Stop early; what was delivered so far is remembered as an interrupted turn."""
        close = getattr(self._sentences, "close", None)
        if close is not None:
            close()
