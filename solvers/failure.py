"""The solver that always answers: a random localized line saying no answer was found."""
from __future__ import annotations

import random
from typing import Any, Iterator, Mapping, Optional, Sequence

from ..languages import base_lang, random_dialog, shipped_langs
from .base import CancelToken, ChatMessage, Solver, SolverContext

DIALOG = "failure"


class FailureSolver(Solver):
    """Answers every question with a line of ``locale/<lang>/failure.dialog`` (English if missing)."""

    solver_id = "failure"
    supports_history = False

    def __init__(self, config: Mapping[str, Any], context: SolverContext,
                 rng: Optional[random.Random] = None) -> None:
        super().__init__(config, context)
        self.supported_langs = frozenset(base_lang(lang) for lang in shipped_langs())
        self._rng = rng or random.Random()

    def stream(self, messages: Sequence[ChatMessage], *, lang: str, cancel: CancelToken,
               conversation_id: str = "") -> Iterator[str]:
        """Yield one failure line in ``lang``."""
        cancel.raise_if_cancelled()
        yield random_dialog(lang, DIALOG, self._rng, name=self.context.persona_name)
