"""Offline small talk from RiveScript brains shipped per language; declines anything it does not know.

Each shipped ``locale/<lang>/chitchat.rive`` ends with a catch-all ``+ *`` whose reply is the
``DECLINE`` sentinel: a question no rule knows yields nothing, so the chain moves on to the next
solver. Triggers are written lower-case, without accents or punctuation, because user input is
normalised to that form (``normalize_text``) before it reaches the interpreter.
"""
from __future__ import annotations

import threading
import unicodedata
from functools import lru_cache
from pathlib import Path
from typing import Any, Dict, FrozenSet, Iterator, List, Mapping, Optional, Sequence, Tuple

from rivescript import RiveScript
from rivescript.exceptions import RiveScriptError

from ..languages import FALLBACK_LANG, LOCALE_DIR, base_lang, locale_dir, same_lang, shipped_langs
from .base import (CancelToken, ChatMessage, Solver, SolverConfigError, SolverContext,
                   SolverUnavailable, last_user_text)

BRAIN_FILE = "chitchat.rive"
#: what the catch-all rule answers; seeing it means "no rule matched"
DECLINE = "__chitchat_decline__"
#: how the bot introduces itself when the persona has no name
DEFAULT_BOT_NAME = "OpenVoiceOS"
#: RiveScript keeps history per user id; this one is used when no conversation id is given
DEFAULT_USER = "chitchat-user"
BRAIN_EXTENSIONS = (".rive", ".rs")

# Parsed brains keyed by (shipped brain file, extra brain path or None). Parsing is the costly
# part and a brain is read-only once sorted, so every solver instance shares them.
_BRAINS: Dict[Tuple[Path, Optional[Path]], "_Brain"] = {}
_BRAINS_LOCK = threading.Lock()


def normalize_text(text: str) -> str:
    """Return ``text`` lower-cased, without accents or punctuation, single-spaced (the trigger form)."""
    # casefold also turns German sharp s into "ss", the spelling the German brain's triggers use
    decomposed = unicodedata.normalize("NFKD", text.casefold())
    kept: List[str] = []
    for char in decomposed:
        category = unicodedata.category(char)
        if category == "Mn":
            continue  # a combining accent split off by NFKD
        # punctuation and symbols become spaces so "conta-me" and "t'appelles" split into words
        kept.append(" " if category[0] in "PSZC" else char)
    return " ".join("".join(kept).split())


@lru_cache(maxsize=1)
def brain_langs() -> FrozenSet[str]:
    """Return the base languages that ship a chit-chat brain."""
    return frozenset(base_lang(name) for name in shipped_langs() if (LOCALE_DIR / name / BRAIN_FILE).is_file())


def _shipped_brain(lang: str) -> Optional[Path]:
    """Return the shipped brain file for ``lang`` (exact tag, then base language), or None."""
    folder = locale_dir(lang, fallback=False)
    if folder is not None and (folder / BRAIN_FILE).is_file():
        return folder / BRAIN_FILE
    # locale_dir picks the first folder of the base language, which may hold no brain
    for name in shipped_langs():
        if same_lang(name, lang) and (LOCALE_DIR / name / BRAIN_FILE).is_file():
            return LOCALE_DIR / name / BRAIN_FILE
    return None


def _brain_files(path: Path) -> List[Path]:
    """Return the RiveScript files at ``path`` (the file itself, or those inside the folder)."""
    if path.is_file():
        return [path]
    return sorted(found for found in path.rglob("*")
                  if found.is_file() and found.suffix.lower() in BRAIN_EXTENSIONS)


class _Brain:
    """One parsed RiveScript interpreter and the lock that serialises its replies."""

    def __init__(self, files: Sequence[Path]) -> None:
        self._rs = RiveScript(utf8=True)
        # brains are data, not code: refuse embedded Python object macros
        self._rs.set_handler("python", None)
        for path in files:
            try:
                self._rs.load_file(str(path))
            except (OSError, UnicodeDecodeError) as err:
                raise SolverConfigError(f"cannot read chit-chat brain {str(path)!r}: {err}") from err
            except Exception as err:  # rivescript's strict parser raises plain Exception on bad syntax
                raise SolverConfigError(f"invalid chit-chat brain {str(path)!r}: {err}") from err
        self._rs.sort_replies()
        # the interpreter keeps the current user and bot variables on itself
        self._lock = threading.Lock()

    def reply(self, text: str, bot_name: str, user: str) -> str:
        """Return the matched reply for normalised ``text``, or "" when no rule knows it."""
        with self._lock:
            self._rs.set_variable("name", bot_name)
            try:
                answer = self._rs.reply(user, text, errors_as_replies=False)
            except RiveScriptError:
                answer = ""  # no trigger matched, or a rule had no usable reply
            finally:
                # the solver only sees one question at a time, so per-user history would only grow
                if self._rs.get_uservars(user) is not None:
                    self._rs.clear_uservars(user)
        answer = (answer or "").strip()
        # errors inside nested redirects come back as text even with errors_as_replies=False
        if DECLINE in answer or answer.startswith("[ERR:"):
            return ""
        return answer


def _get_brain(shipped: Path, extra: Optional[Path]) -> _Brain:
    """Return the cached brain for ``shipped`` plus ``extra``, parsing it on first use."""
    key = (shipped, extra)
    with _BRAINS_LOCK:
        brain = _BRAINS.get(key)
        if brain is None:
            # RiveScript lets the first-loaded of two identical triggers win: author rules go first
            files = (_brain_files(extra) if extra is not None else []) + [shipped]
            brain = _BRAINS[key] = _Brain(files)
        return brain


class ChitChatSolver(Solver):
    """Offline greetings, thanks, goodbyes, jokes and "who are you" from per-language RiveScript brains.

    Config keys (all optional): ``brain``, a ``.rive`` file or a folder of them loaded before the
    shipped brain of every language, so its rules take precedence. Triggers there must be written
    without accents or punctuation, like the shipped ones.
    """

    solver_id = "chitchat"
    supports_history = False

    def __init__(self, config: Mapping[str, Any], context: SolverContext) -> None:
        super().__init__(config, context)
        self.supported_langs = brain_langs()
        self._extra = self._extra_brain(self.config.get("brain"))
        self._bot_name = context.persona_name.strip() or DEFAULT_BOT_NAME

    @staticmethod
    def _extra_brain(value: Any) -> Optional[Path]:
        """Validate the ``brain`` config value and return it as an absolute path."""
        if value is None or value == "":
            return None
        if not isinstance(value, (str, Path)):
            raise SolverConfigError(f"chitchat 'brain' must be a path, not {type(value).__name__}")
        path = Path(value).expanduser().resolve()
        if not path.exists():
            raise SolverConfigError(f"chitchat brain not found: {str(path)!r}")
        if not _brain_files(path):
            raise SolverConfigError(f"chitchat brain {str(path)!r} holds no .rive files")
        return path

    def _brain_for(self, lang: str) -> _Brain:
        """Return the brain for ``lang``, else the persona language's, else English."""
        for candidate in (lang, self.context.persona_lang, FALLBACK_LANG):
            shipped = _shipped_brain(candidate)
            if shipped is not None:
                return _get_brain(shipped, self._extra)
        raise SolverUnavailable("no chit-chat brain is shipped, not even the English one")

    def stream(self, messages: Sequence[ChatMessage], *, lang: str, cancel: CancelToken,
               conversation_id: str = "") -> Iterator[str]:
        """Yield the one matching small-talk reply, or nothing when no rule matches.

        Raises ``SolverCancelled`` when ``cancel`` is set before the answer is given.
        """
        cancel.raise_if_cancelled()
        text = normalize_text(last_user_text(messages))
        if not text:
            return
        brain = self._brain_for(lang)
        answer = brain.reply(text, self._bot_name, conversation_id or DEFAULT_USER)
        cancel.raise_if_cancelled()
        if answer:
            yield answer
