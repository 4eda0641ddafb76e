"""PersonaEngine: the one entry point the front ends (skill, CLI, benchmarks) call.

Given a persona, a session and a question it builds the prompt, runs the persona's solver chain,
turns the chunks into speakable sentences (translating them when the persona works in another
language than the user), and remembers what was delivered. Everything per user is keyed by the
session id: active persona, memory, injected context, in-flight generations.
"""
from __future__ import annotations

import difflib
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, Iterable, Iterator, List, Optional, Protocol, Sequence

from ovos_utils.log import LOG

from .concurrency import FairSemaphore, QueueFull
from .chain import ChainLink, ChainResult, Deadlines, SolverChain, SolverFailure, SolverInput
from .languages import FALLBACK_LANG, base_lang, normalize_lang
from .memory import ConversationMemory
from .persona import MemorySettings, Persona, load_personas
from .prompt import Speaker, build_messages, with_answer_instruction
from .solvers import create_solver, known_solver_ids
from .solvers.base import CancelToken, ChatMessage, Role, SolverContext, SolverError
from .speech import SentenceSplitter

SHIPPED_PERSONAS_DIR = Path(__file__).resolve().parent / "personas"
DEFAULT_PERSONA = "Ava"
DEFAULT_MAX_UTTERANCE_CHARS = 2000
#: sessions whose active persona is remembered; the oldest is forgotten first
DEFAULT_MAX_SESSIONS = 10000
#: answers generated at once; more wait in arrival order, up to DEFAULT_MAX_WAITING of them
DEFAULT_MAX_CONCURRENT = 4
DEFAULT_MAX_WAITING = 16
FUZZY_CUTOFF = 0.6


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

    @property
    def text(self) -> str:
        """The spoken answer as one string."""
        return " ".join(self.sentences)

    @property
    def failures(self) -> List[SolverFailure]:
        """Every solver failure met on the way."""
        return self.result.failures


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


class PersonaEngine:
    """Personas, their chains, memory and sessions behind ask/stream/stop/forget."""

    def __init__(self, persona_dirs: Iterable[Path] = (), *, memory: Optional[ConversationMemory] = None,
                 default_persona: str = DEFAULT_PERSONA, include_shipped: bool = True,
                 translator: Optional[Translator] = None,
                 solver_factory: Callable = create_solver,
                 known_solvers: Optional[Callable[[], frozenset]] = known_solver_ids,
                 max_utterance_chars: int = DEFAULT_MAX_UTTERANCE_CHARS,
                 max_sessions: int = DEFAULT_MAX_SESSIONS,
                 memory_caps: Optional[MemorySettings] = None,
                 default_lang: str = FALLBACK_LANG,
                 max_concurrent: int = DEFAULT_MAX_CONCURRENT,
                 max_waiting: int = DEFAULT_MAX_WAITING,
                 clock: Callable[[], float] = time.time) -> None:
        self.memory = memory if memory is not None else ConversationMemory()
        self.translator = translator
        self.default_persona = default_persona
        self.max_utterance_chars = max_utterance_chars
        #: limits the owner of the assistant sets over every persona's own memory settings
        self.memory_caps = memory_caps
        #: the language used when a request says "auto" and detection cannot tell
        self.default_lang = default_lang
        self.admission = FairSemaphore(max_concurrent, max_waiting)
        self._solver_factory = solver_factory
        self._known_solvers = known_solvers
        self._clock = clock
        self._lock = threading.RLock()
        self._personas: Dict[str, Persona] = {}
        self._links: Dict[str, List[ChainLink]] = {}
        self._active: "OrderedDict[str, str]" = OrderedDict()
        self._max_sessions = max_sessions
        self._inflight: Dict[str, List[CancelToken]] = {}
        self.problems: List[str] = []
        self._include_shipped = include_shipped
        self.load_personas(persona_dirs)

    # -- personas ----------------------------------------------------------------------------

    def load_personas(self, persona_dirs: Iterable[Path] = ()) -> List[str]:
        """(Re)load personas from the shipped folder and ``persona_dirs``; return the problems."""
        dirs = ([SHIPPED_PERSONAS_DIR] if self._include_shipped else []) + [Path(d) for d in persona_dirs]
        known = self._known_solvers() if self._known_solvers else None
        personas, problems = load_personas(dirs, known, on_problem=LOG.warning)
        with self._lock:
            stale = [name for name, old in self._personas.items() if personas.get(name) != old]
            for name in stale:
                self._close_links(self._links.pop(name, []))
            self._personas = personas
            self.problems = problems
        return problems

    def add_persona(self, persona: Persona) -> None:
        """Register (or replace) one persona directly."""
        with self._lock:
            self._close_links(self._links.pop(persona.name, []))
            self._personas[persona.name] = persona

    @property
    def personas(self) -> Dict[str, Persona]:
        """The loaded personas by name."""
        with self._lock:
            return dict(self._personas)

    def find_persona(self, name: object, fuzzy: bool = False) -> Optional[Persona]:
        """Return a persona by exact, case-insensitive or (if ``fuzzy``) closest name."""
        if not isinstance(name, str) or not name.strip():
            return None
        personas = self.personas
        wanted = name.strip()
        if wanted in personas:
            return personas[wanted]
        by_lower = {key.lower(): persona for key, persona in personas.items()}
        if wanted.lower() in by_lower:
            return by_lower[wanted.lower()]
        if fuzzy:
            match = difflib.get_close_matches(wanted.lower(), list(by_lower), n=1, cutoff=FUZZY_CUTOFF)
            if match:
                return by_lower[match[0]]
        return None

    def active_persona(self, session_id: str) -> Optional[Persona]:
        """Return the session's active persona, else the default, else any loaded one."""
        with self._lock:
            name = self._active.get(session_id)
        return (self.find_persona(name) or self.find_persona(self.default_persona)
                or next(iter(self.personas.values()), None))

    def set_active(self, session_id: str, name: str) -> Persona:
        """Make ``name`` (matched fuzzily) the session's persona; raise ``NoPersonaError`` if unknown."""
        persona = self.find_persona(name, fuzzy=True)
        if persona is None:
            raise NoPersonaError(f"no persona called {name!r}")
        with self._lock:
            self._active[session_id] = persona.name
            self._active.move_to_end(session_id)
            while len(self._active) > self._max_sessions:
                self._active.popitem(last=False)
        return persona

    def reset_active(self, session_id: str) -> None:
        """Return the session to the default persona."""
        with self._lock:
            self._active.pop(session_id, None)

    # -- answering ---------------------------------------------------------------------------

    def stream(self, question: str, *, session_id: str, persona: Optional[str] = None,
               lang: Optional[str] = None, speaker: Optional[Speaker] = None,
               cancel: Optional[CancelToken] = None) -> AnswerStream:
        """Start answering; iterate the result for sentences as soon as each is ready.

        Raises ``NoPersonaError`` when ``persona`` is unknown or no persona is loaded.
        """
        chosen = self.find_persona(persona) if persona else self.active_persona(session_id)
        if chosen is None:
            raise NoPersonaError(f"no persona called {persona!r}" if persona else "no persona is loaded")
        answer = Answer(persona=chosen.name)
        token = cancel.child() if cancel is not None else CancelToken()
        user_lang = self.resolve_lang(lang, question, chosen)
        if len(question) > self.max_utterance_chars:
            LOG.warning(f"utterance of {len(question)} characters cut to {self.max_utterance_chars}")
            question = question[:self.max_utterance_chars]
        sentences = self._answer(chosen, question.strip(), session_id, user_lang, speaker or Speaker(),
                                 token, answer)
        return AnswerStream(answer, sentences)

    def resolve_lang(self, lang: Optional[str], question: str, persona: Persona) -> str:
        """Return the asker's language: as given; detected when "auto"; else the default."""
        if isinstance(lang, str) and lang.strip().lower() == "auto":
            detected = self.translator.detect(question) if self.translator is not None else None
            return detected or normalize_lang(self.default_lang)
        return normalize_lang(lang or persona.lang, default=normalize_lang(self.default_lang))

    def localize(self, text: str, source_lang: str, target_lang: str) -> str:
        """Translate a persona-written line (a thinking line) into the asker's language if needed."""
        if self.translator is None or self._same(source_lang, target_lang):
            return text
        return self.translator.translate(text, target_lang, source_lang)

    def ask(self, question: str, **kwargs) -> Answer:
        """Answer and return the whole ``Answer`` (no streaming)."""
        stream = self.stream(question, **kwargs)
        for _ in stream:
            pass
        return stream.answer

    def memory_limits(self, persona: Persona) -> MemorySettings:
        """Return the persona's memory settings within the engine's caps (0 age means no limit)."""
        own, caps = persona.memory, self.memory_caps
        if caps is None:
            return own
        ages = [age for age in (own.max_age_minutes, caps.max_age_minutes) if age > 0]
        return MemorySettings(max_turns=min(own.max_turns, caps.max_turns),
                              max_age_minutes=min(ages) if ages else 0)

    def _answer(self, persona: Persona, question: str, session_id: str, user_lang: str,
                speaker: Speaker, token: CancelToken, answer: Answer) -> Iterator[str]:
        said: List[str] = []
        solver_question = question
        finished = False
        self._register(session_id, token)
        try:
            admitted = self.admission.acquire(token)
        except QueueFull as err:
            self._unregister(session_id, token)
            raise EngineBusy(f"too many answers at once ({err})") from err
        if not admitted:
            self._unregister(session_id, token)
            answer.result.cancelled = True
            return
        try:
            limits = self.memory_limits(persona)
            history = self.memory.history(session_id, persona.name, max_turns=limits.max_turns,
                                          max_age_minutes=limits.max_age_minutes)
            chat = build_messages(persona, history, question, injected_context=self.memory.context(session_id),
                                  speaker=speaker, lang=user_lang, now=self._clock())
            translated: Dict[str, List[ChatMessage]] = {}

            def prepare(link: ChainLink) -> SolverInput:
                nonlocal solver_question
                target = self._solver_lang(link, persona, user_lang)
                if target == user_lang:
                    solver_question = question
                    return SolverInput(chat, user_lang)
                if persona.answer_instruction and link.solver is not None and link.solver.supports_history:
                    solver_question = question  # the persona asked to be told the language instead
                    return SolverInput(with_answer_instruction(chat, persona.answer_instruction, user_lang),
                                       user_lang)
                if base_lang(target) not in translated:
                    text = self.translator.translate(question, target, user_lang)  # type: ignore[union-attr]
                    translated[base_lang(target)] = chat[:-1] + [ChatMessage(Role.USER, text)]
                solver_question = translated[base_lang(target)][-1].content
                return SolverInput(translated[base_lang(target)], target)

            chain = SolverChain(self._chain_links(persona))
            splitter = SentenceSplitter()
            chunks = chain.stream(prepare, cancel=token, conversation_id=session_id, result=answer.result)
            for chunk in chunks:
                for sentence in splitter.feed(chunk):
                    said.append(sentence)
                    yield self._to_user(sentence, answer.result.lang, user_lang, answer)
            if not token.cancelled:
                for sentence in splitter.flush():
                    said.append(sentence)
                    yield self._to_user(sentence, answer.result.lang, user_lang, answer)
            finished = not token.cancelled
        finally:
            self.admission.release()
            self._unregister(session_id, token)
            if said:
                interrupted = not finished or answer.result.interrupted
                answer.result.cancelled = answer.result.cancelled or token.cancelled
                self._remember(persona, session_id, solver_question, question, said, answer, user_lang,
                               interrupted)

    def _to_user(self, sentence: str, solver_lang: Optional[str], user_lang: str, answer: Answer) -> str:
        spoken = sentence
        if solver_lang and not self._same(solver_lang, user_lang) and self.translator is not None:
            spoken = self.translator.translate(sentence, user_lang, solver_lang)
        answer.sentences.append(spoken)
        return spoken

    def _solver_lang(self, link: ChainLink, persona: Persona, user_lang: str) -> str:
        """Pick the language a solver is asked in: the user's when it can, else the persona's."""
        langs = link.solver.supported_langs if link.solver is not None else None
        accepted = langs if langs is not None else frozenset({base_lang(persona.lang)})
        if base_lang(user_lang) in accepted or self.translator is None or not self.translator.available:
            return user_lang
        return persona.lang if base_lang(persona.lang) in accepted else sorted(accepted)[0]

    @staticmethod
    def _same(first: str, second: str) -> bool:
        return base_lang(first) == base_lang(second)

    def _remember(self, persona: Persona, session_id: str, solver_question: str, user_question: str,
                  said: Sequence[str], answer: Answer, user_lang: str, interrupted: bool) -> None:
        translated = solver_question != user_question or answer.sentences != list(said)
        limits = self.memory_limits(persona)
        # a complete answer is remembered as the solver wrote it, so the next prompt repeats the
        # model's own text and a local model reuses its cache; a cut one as what was delivered
        solver_answer = answer.result.text if not interrupted else " ".join(said)
        try:
            self.memory.record(
                session_id, persona.name, solver_question, solver_answer, interrupted=interrupted,
                user_question=user_question if translated else None,
                user_answer=answer.text if translated else None, lang=user_lang,
                max_turns=limits.max_turns, max_age_minutes=limits.max_age_minutes)
        except Exception as err:  # memory trouble must never cost the user the answer
            LOG.exception(f"could not remember the turn for session {session_id}: {err}")

    # -- chains ------------------------------------------------------------------------------

    def _chain_links(self, persona: Persona) -> List[ChainLink]:
        with self._lock:
            links = self._links.get(persona.name)
            if links is None:
                links = [self._build_link(persona, solver_id) for solver_id in persona.solvers]
                self._links[persona.name] = links
            return links

    def _build_link(self, persona: Persona, solver_id: str) -> ChainLink:
        config = persona.solver_config(solver_id)
        context = SolverContext(persona_name=persona.name, persona_lang=persona.lang,
                                generation=persona.generation)
        deadlines = Deadlines.from_config(config)
        try:
            return ChainLink(solver_id, self._solver_factory(solver_id, config, context), deadlines)
        except SolverError as err:
            LOG.warning(f"persona {persona.name}: solver {solver_id} cannot be used: {err}")
            return ChainLink(solver_id, None, deadlines, build_error=err)

    def warm_up(self) -> threading.Thread:
        """Build every persona's chain and ``prepare()`` each solver (load models) on one background thread.

        Returns the started daemon thread; failures are logged, never raised (the first question
        then meets the same problem and falls through as usual).
        """
        def run() -> None:
            for persona in list(self.personas.values()):
                try:
                    links = self._chain_links(persona)
                except Exception as err:  # a broken persona must not stop warming the others
                    LOG.warning(f"warm-up: persona {persona.name} has no chain: {err!r}")
                    continue
                for link in links:
                    if link.solver is None:
                        continue
                    try:
                        link.solver.prepare()
                    except SolverError as err:  # e.g. the model file is missing: one line, no traceback
                        LOG.warning(f"warm-up: solver {link.solver_id} of persona {persona.name} "
                                    f"could not prepare: {err}")
                    except Exception:  # anything else a backend raises while preparing is only logged
                        LOG.exception(f"warm-up: solver {link.solver_id} of persona {persona.name} "
                                      f"could not prepare")

        thread = threading.Thread(target=run, name="persona-warm-up", daemon=True)
        thread.start()
        return thread

    @staticmethod
    def _close_links(links: Iterable[ChainLink]) -> None:
        for link in links:
            if link.solver is not None:
                try:
                    link.solver.close()
                except Exception as err:  # closing one solver must not stop closing the rest
                    LOG.warning(f"closing solver {link.solver_id} failed: {err!r}")

    # -- sessions ----------------------------------------------------------------------------

    def _register(self, session_id: str, token: CancelToken) -> None:
        with self._lock:
            self._inflight.setdefault(session_id, []).append(token)

    def _unregister(self, session_id: str, token: CancelToken) -> None:
        with self._lock:
            tokens = self._inflight.get(session_id, [])
            if token in tokens:
                tokens.remove(token)
            if not tokens:
                self._inflight.pop(session_id, None)

    def is_busy(self, session_id: str) -> bool:
        """True while the session has an answer in progress."""
        with self._lock:
            return bool(self._inflight.get(session_id))

    def stop(self, session_id: str) -> bool:
        """Cancel the session's answers in progress; return True if there were any."""
        with self._lock:
            tokens = list(self._inflight.get(session_id, []))
        for token in tokens:
            token.cancel()
        return bool(tokens)

    def inject_context(self, session_id: str, text: str) -> None:
        """Add conversational context for the session's next prompts."""
        self.memory.inject_context(session_id, text)

    def clear_context(self, session_id: str) -> None:
        """Remove the session's injected context."""
        self.memory.clear_context(session_id)

    def forget(self, session_id: str, persona: Optional[str] = None) -> int:
        """Forget the session's conversation (one persona's or all) and drop solver caches for it."""
        deleted = self.memory.forget(session_id, persona)
        with self._lock:
            links = [link for name, chain in self._links.items() if persona in (None, name) for link in chain]
        for link in links:
            if link.solver is not None:
                link.solver.forget(session_id)
        return deleted

    def end_conversation(self, session_id: str) -> None:
        """The user is gone: stop, forget, clear context and the active persona of the session."""
        self.stop(session_id)
        self.forget(session_id)
        self.clear_context(session_id)
        self.reset_active(session_id)

    def close(self) -> None:
        """Stop everything, close solvers and the memory."""
        with self._lock:
            sessions = list(self._inflight)
            links = [link for chain in self._links.values() for link in chain]
            self._links.clear()
        for session_id in sessions:
            self.stop(session_id)
        self._close_links(links)
        self.memory.close()
