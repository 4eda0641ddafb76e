"""PersonaEngine: the one entry point the front ends (skill, CLI, benchmarks) call.

Given a persona, a session and a question it builds the prompt, runs the persona's solver chain,
turns the chunks into speakable sentences (translating them when the persona works in another
language than the user), and remembers what was delivered. Everything per user is keyed by the
session id: active persona, memory, injected context, in-flight generations.
"""
from __future__ import annotations

import random
import threading
import time
from collections import OrderedDict
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, Iterator, List, Mapping, Optional, Sequence, Tuple

from ovos_utils.log import LOG
from rapidfuzz import fuzz, process

from .answers import Answer, AnswerStream, EngineBusy, NoPersonaError, Translator
from .concurrency import FairSemaphore, QueueFull
from .chain import ChainLink, SolverChain, SolverFailure, SolverInput
from .persona_chains import PersonaChains
from .languages import FALLBACK_LANG, base_lang, normalize_lang
from .memory import ConversationMemory, MemoryStore
from .persona import DEFAULT_SOLVERS, MemorySettings, Persona, fill_placeholders, load_personas
from .prompt import Speaker, build_messages, placeholder_values, with_answer_instruction, with_history
from .reasoning import ThinkFilter
from .request import AnswerRequest, usage_of
from .solvers import create_solver, known_solver_ids
from .solvers.base import CancelToken, ChatMessage, RequestOptions, Role, ToolDefinition
from .sessions import ActivePersonas, Flight, Flights
from .speech import SentenceSplitter
from .tools import ClientToolsSolver, ToolExecutor, ToolUsingSolver, flatten_tool_messages

__all__ = ["Answer", "AnswerStream", "EngineBusy", "NoPersonaError", "PersonaEngine", "Translator"]

SHIPPED_PERSONAS_DIR = Path(__file__).resolve().parent / "personas"
DEFAULT_PERSONA = "Ava"
DEFAULT_MAX_UTTERANCE_CHARS = 2000
#: sessions whose active persona is remembered; the oldest is forgotten first
DEFAULT_MAX_SESSIONS = 10000
#: answers generated at once; more wait in arrival order, up to DEFAULT_MAX_WAITING of them
DEFAULT_MAX_CONCURRENT = 4
DEFAULT_MAX_WAITING = 16
#: rapidfuzz WRatio (0-100) a spoken persona name must reach ("remote" finds "Remote Assistant")
FUZZY_CUTOFF = 65
#: distinct solver errors whose traceback has been logged; later repeats log one line
MAX_LOGGED_ERRORS = 256


class PersonaEngine:
    """Personas, their chains, memory and sessions behind ask/stream/stop/forget."""

    def __init__(self, persona_dirs: Iterable[Path] = (), *, memory: Optional[MemoryStore] = None,
                 default_persona: str = DEFAULT_PERSONA, include_shipped: bool = True,
                 translator: Optional[Translator] = None,
                 solver_factory: Callable = create_solver,
                 known_solvers: Optional[Callable[[], frozenset]] = known_solver_ids,
                 max_utterance_chars: int = DEFAULT_MAX_UTTERANCE_CHARS,
                 max_sessions: int = DEFAULT_MAX_SESSIONS,
                 memory_defaults: Optional[MemorySettings] = None,
                 default_lang: str = FALLBACK_LANG,
                 max_concurrent: int = DEFAULT_MAX_CONCURRENT,
                 max_waiting: int = DEFAULT_MAX_WAITING,
                 clock: Callable[[], float] = time.time,
                 default_solvers: Sequence[Any] = DEFAULT_SOLVERS) -> None:
        self.memory = memory if memory is not None else ConversationMemory()
        self.translator = translator
        self.default_persona = default_persona
        self.max_utterance_chars = max_utterance_chars
        #: memory settings for personas whose file sets none (the skill's max_turns/max_age_minutes)
        self.memory_defaults = memory_defaults
        #: the language used when a request says "auto" and detection cannot tell
        self.default_lang = default_lang
        #: the chain of personas whose file names no backend (cards, LoLLMs): ids or {id: config}
        self.default_solvers = default_solvers
        self.admission = FairSemaphore(max_concurrent, max_waiting)
        self._known_solvers = known_solvers
        self._clock = clock
        self._lock = threading.RLock()
        self._personas: Dict[str, Persona] = {}
        self._chains = PersonaChains(solver_factory)
        self._active = ActivePersonas(self.memory, max_sessions)
        self._flights = Flights()
        #: forget and remember exclude each other, so a forget wins over any answer in flight
        self._remember_lock = threading.Lock()
        self._logged_errors: "OrderedDict[Tuple[str, str, str], None]" = OrderedDict()
        #: runs the persona's tools (the skill injects its bus executor); None: no tool runs
        self.tool_executor: Optional[ToolExecutor] = None
        self.problems: List[str] = []
        self._include_shipped = include_shipped
        self.load_personas(persona_dirs)

    # -- personas ----------------------------------------------------------------------------

    def load_personas(self, persona_dirs: Iterable[Path] = ()) -> List[str]:
        """(Re)load personas from the shipped folder and ``persona_dirs``; return the problems."""
        dirs = ([SHIPPED_PERSONAS_DIR] if self._include_shipped else []) + [Path(d) for d in persona_dirs]
        known = self._known_solvers() if self._known_solvers else None
        # personas installed packages publish (opm.persona) come with the shipped ones
        personas, problems = load_personas(dirs, known, on_problem=LOG.warning, on_warning=LOG.warning,
                                           default_solvers=self.default_solvers,
                                           plugin_personas=self._include_shipped)
        with self._lock:
            stale = [name for name, old in self._personas.items() if personas.get(name) != old]
            for name in stale:
                self._chains.retire(name)
            self._personas = personas
            self.problems = problems
        return problems

    def add_persona(self, persona: Persona) -> None:
        """Register (or replace) one persona directly."""
        with self._lock:
            self._chains.retire(persona.name)
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
            # WRatio scores a name that holds the spoken word ("remote" in "remote assistant")
            # as well as a misheard one ("ada" for "ava")
            match = process.extractOne(wanted.lower(), list(by_lower), scorer=fuzz.WRatio,
                                       score_cutoff=FUZZY_CUTOFF)
            if match:
                return by_lower[match[0]]
        return None

    def active_persona(self, session_id: str) -> Optional[Persona]:
        """Return the session's active persona, else the default, else any loaded one."""
        name = self._active.get(session_id)
        return (self.find_persona(name) or self.find_persona(self.default_persona)
                or next(iter(self.personas.values()), None))

    def set_active(self, session_id: str, name: str) -> Persona:
        """Make ``name`` (matched fuzzily) the session's persona; raise ``NoPersonaError`` if unknown."""
        persona = self.find_persona(name, fuzzy=True)
        if persona is None:
            raise NoPersonaError(f"no persona called {name!r}")
        self._active.set(session_id, persona.name)
        return persona

    def greeting(self, persona: Persona, speaker: Optional[Speaker] = None, lang: str = "") -> str:
        """Return one of the persona's greetings at random (placeholders filled), or '' if it has none."""
        if not persona.greetings:
            return ""
        values = placeholder_values(persona, speaker or Speaker(), lang or persona.lang, self._clock())
        return fill_placeholders(random.choice(persona.greetings), values).strip()

    def reset_active(self, session_id: str) -> None:
        """Return the session to the default persona."""
        self._active.clear(session_id)

    # -- answering ---------------------------------------------------------------------------

    def stream(self, question: str, *, session_id: str, persona: Optional[str] = None,
               lang: Optional[str] = None, speaker: Optional[Speaker] = None,
               cancel: Optional[CancelToken] = None, remember: bool = True,
               tool_context: Any = None, history: Optional[Sequence[ChatMessage]] = None,
               client_context: str = "", generation: Optional[Mapping[str, Any]] = None,
               raw_chunks: bool = False, on_admitted: Optional[Callable[[], None]] = None,
               client_tools: Sequence[ToolDefinition] = (),
               tool_exchange: Sequence[ChatMessage] = (), tools_required: bool = False) -> AnswerStream:
        """Start answering; iterate the result for sentences as soon as each is ready.

        ``remember`` False keeps this exchange out of the conversation (an out-of-band lookup;
        the history is still read). ``tool_context`` (the front end's, e.g. the bus request)
        lets the persona's tools run through ``tool_executor``; without it no tool runs.
        For HTTP clients: ``history`` (earlier user/assistant messages) replaces the remembered
        turns; ``client_context`` follows the injected context in the system message;
        ``generation`` overrides sampling keys (``REQUEST_GENERATION_KEYS``); ``raw_chunks``
        yields the solver's chunks as they come (sentences still, when translating);
        ``on_admitted`` runs once the answer got its slot. ``client_tools`` (an HTTP client's
        own tools) are offered to the first solver that can call tools; the calls it asks for end
        the answer, unrun (``Answer.tool_calls``). ``tool_exchange`` (the client's tool calls and
        their results since its question) follows the question; ``tools_required`` asks the
        solver to insist on a call where it can.
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
        request = AnswerRequest(history, client_context, RequestOptions(dict(generation or {})), raw_chunks,
                                remember, on_admitted, tool_context, tuple(client_tools), tuple(tool_exchange),
                                tools_required)
        sentences = self._answer(chosen, question.strip(), session_id, user_lang, speaker or Speaker(),
                                 token, answer, request)
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
        """Return the persona's memory settings; what its file leaves unset comes from the defaults."""
        return persona.memory.resolved(self.memory_defaults)

    def _answer(self, persona: Persona, question: str, session_id: str, user_lang: str,
                speaker: Speaker, token: CancelToken, answer: Answer,
                request: Optional[AnswerRequest] = None) -> Iterator[str]:
        request = request or AnswerRequest()
        said: List[str] = []
        delivered: List[str] = []  # raw chunks handed out (raw_chunks mode)
        chat: List[ChatMessage] = []
        solver_question = question
        finished = False
        flight = self._flights.start(session_id, token, persona.name)
        try:
            admitted = self.admission.acquire(token)
        except QueueFull as err:
            self._flights.end(session_id, flight)
            raise EngineBusy(f"too many answers at once ({err})") from err
        if not admitted:
            self._flights.end(session_id, flight)
            answer.result.cancelled = True
            return
        links = self._chains.acquire(persona)
        try:
            if request.on_admitted is not None:
                request.on_admitted()
            limits = self.memory_limits(persona)
            history = [] if request.history is not None else self.memory.history(
                session_id, persona.name, max_turns=limits.max_turns, max_age_minutes=limits.max_age_minutes)
            context = "\n\n".join(part for part in (self.memory.context(session_id).strip(),
                                                     request.client_context.strip()) if part)
            chat = build_messages(persona, history, question, injected_context=context,
                                  speaker=speaker, lang=user_lang, now=self._clock())
            chat = with_history(chat, request.history or ())
            translated: Dict[str, List[ChatMessage]] = {}
            splitter = SentenceSplitter(user_lang)

            def prepare(link: ChainLink) -> SolverInput:
                solver_input = replace(ask(link), options=request.options)
                solver_input = self._with_client_tools(link, solver_input, request, answer)
                return self._with_tools(link, persona, solver_input, request.tool_context, answer)

            def ask(link: ChainLink) -> SolverInput:
                nonlocal solver_question
                if self._instructed(link, persona, user_lang):
                    solver_question = question  # the persona asked to be told the language instead
                    splitter.lang = user_lang
                    return SolverInput(with_answer_instruction(chat, persona.answer_instruction, user_lang),
                                       user_lang)
                target = self._solver_lang(link, persona, user_lang)
                splitter.lang = target
                if target == user_lang:
                    solver_question = question
                    return SolverInput(chat, user_lang)
                if base_lang(target) not in translated:
                    text = self.translator.translate(question, target, user_lang)  # type: ignore[union-attr]
                    translated[base_lang(target)] = chat[:-1] + [ChatMessage(Role.USER, text)]
                solver_question = translated[base_lang(target)][-1].content
                return SolverInput(translated[base_lang(target)], target)

            chain = SolverChain(links)
            thoughts = ThinkFilter()
            chunks = chain.stream(prepare, cancel=token, conversation_id=session_id, result=answer.result)
            raw = False
            for chunk in chunks:
                visible = thoughts.feed(chunk)
                # raw chunks only while no translation is needed: a translator works on sentences
                raw = request.raw_chunks and (self.translator is None or answer.result.lang is None
                                              or self._same(answer.result.lang, user_lang))
                for sentence in splitter.feed(visible):
                    said.append(sentence)
                    spoken = self._to_user(sentence, answer.result.lang, user_lang, answer)
                    if not raw:
                        yield spoken
                if raw and visible:
                    delivered.append(visible)
                    yield visible
            if not token.cancelled:
                rest = thoughts.flush()
                if raw and rest:
                    delivered.append(rest)
                    yield rest
                for sentence in splitter.feed(rest) + splitter.flush():
                    said.append(sentence)
                    spoken = self._to_user(sentence, answer.result.lang, user_lang, answer)
                    if not raw:
                        yield spoken
            finished = not token.cancelled
        finally:
            self.admission.release()
            self._flights.end(session_id, flight)
            self._chains.release(links)
            self._log_failures(persona, answer.result.failures)
            answer.usage = usage_of(request.options, chat, answer.result.text)
            if said or delivered:
                answer.result.cancelled = answer.result.cancelled or token.cancelled
            if (said or delivered) and request.remember:
                interrupted = not finished or answer.result.interrupted
                self._remember(persona, session_id, solver_question, question, said, answer, user_lang,
                               interrupted, flight, "".join(delivered).strip() if delivered else None)

    def _with_tools(self, link: ChainLink, persona: Persona, request: SolverInput, tool_context: Any,
                    answer: Answer) -> SolverInput:
        """Wrap the link's solver with the persona's tools for this answer, when all three allow it."""
        if (not persona.tools.tools or tool_context is None or self.tool_executor is None
                or link.solver is None or not link.solver.supports_tools):
            return request
        solver = ToolUsingSolver(link.solver, persona.tools, self.tool_executor, tool_context)
        answer.tool_runs.append(solver)
        return replace(request, solver=solver)

    @staticmethod
    def _with_client_tools(link: ChainLink, solver_input: SolverInput, request: AnswerRequest,
                           answer: Answer) -> SolverInput:
        """Offer an HTTP client's tools (the calls go back to it); others get the exchange as text."""
        if not request.client_tools and not request.tool_exchange:
            return solver_input
        messages = list(solver_input.messages) + list(request.tool_exchange)
        if request.client_tools and link.solver is not None and link.solver.supports_tools:
            solver = ClientToolsSolver(link.solver, request.client_tools, answer.result, request.tools_required)
            return replace(solver_input, messages=messages, solver=solver)
        # a solver that cannot call tools answers with text, the results written into the question
        return replace(solver_input, messages=flatten_tool_messages(messages))

    def _to_user(self, sentence: str, solver_lang: Optional[str], user_lang: str, answer: Answer) -> str:
        spoken = sentence
        if solver_lang and not self._same(solver_lang, user_lang) and self.translator is not None:
            spoken = self.translator.translate(sentence, user_lang, solver_lang)
        answer.sentences.append(spoken)
        return spoken

    @staticmethod
    def _accepted_langs(link: ChainLink, persona: Persona) -> frozenset:
        langs = link.solver.supported_langs if link.solver is not None else None
        return langs if langs is not None else frozenset({base_lang(persona.lang)})

    def _instructed(self, link: ChainLink, persona: Persona, user_lang: str) -> bool:
        """True when a chat solver that does not list the user's language is to be told it instead.

        Decided by the persona (``answer_instruction``) and the solver's languages alone, whether
        or not a translation plugin is configured.
        """
        return (bool(persona.answer_instruction) and link.solver is not None
                and link.solver.supports_history
                and base_lang(user_lang) not in self._accepted_langs(link, persona))

    def _solver_lang(self, link: ChainLink, persona: Persona, user_lang: str) -> str:
        """Pick the language a solver is asked in: the user's when it can, else the persona's."""
        accepted = self._accepted_langs(link, persona)
        if base_lang(user_lang) in accepted or self.translator is None or not self.translator.available:
            return user_lang
        return persona.lang if base_lang(persona.lang) in accepted else sorted(accepted)[0]

    def _log_failures(self, persona: Persona, failures: Sequence[SolverFailure]) -> None:
        """Log each solver failure: with its traceback the first time an error is seen, then one line."""
        for failure in failures:
            error = failure.error
            key = (failure.solver_id, type(error).__name__, str(error)[:200])
            with self._lock:
                seen = key in self._logged_errors
                if not seen:
                    self._logged_errors[key] = None
                    while len(self._logged_errors) > MAX_LOGGED_ERRORS:
                        self._logged_errors.popitem(last=False)
            if seen:
                LOG.debug(f"persona {persona.name}: {failure.describe()} (again)")
            else:
                LOG.warning(f"persona {persona.name}: {failure.describe()}\n{failure.format_traceback()}")

    @staticmethod
    def _same(first: str, second: str) -> bool:
        return base_lang(first) == base_lang(second)

    def _remember(self, persona: Persona, session_id: str, solver_question: str, user_question: str,
                  said: Sequence[str], answer: Answer, user_lang: str, interrupted: bool,
                  flight: Flight, delivered: Optional[str] = None) -> None:
        translated = solver_question != user_question or answer.sentences != list(said)
        limits = self.memory_limits(persona)
        # a complete answer is remembered as the solver wrote it, so the next prompt repeats the
        # model's own text and a local model reuses its cache; a cut one as what was delivered
        solver_answer = answer.result.text if not interrupted else (delivered or " ".join(said))
        note = answer.tool_note()
        if note:  # the next turn's prompt says which tools were used, in one line
            solver_answer = f"{solver_answer}\n{note}"
        try:
            with self._remember_lock:
                if flight.forgotten:
                    LOG.debug(f"session {session_id}: conversation forgotten during the answer; not remembered")
                    return
                self.memory.record(
                    session_id, persona.name, solver_question, solver_answer, interrupted=interrupted,
                    user_question=user_question if translated else None,
                    user_answer=answer.text if translated else None, lang=user_lang,
                    max_turns=limits.max_turns, max_age_minutes=limits.max_age_minutes)
        except Exception as err:  # memory trouble must never cost the user the answer
            LOG.exception(f"could not remember the turn for session {session_id}: {err}")

    # -- chains ------------------------------------------------------------------------------

    def chain_links(self, persona: Persona) -> List[ChainLink]:
        """The persona's solver chain, built on first use (benchmarks and tests read solvers here)."""
        return self._chains.links(persona)

    def warm_up(self) -> threading.Thread:
        """Build every persona's chain and ``prepare()`` its solvers (load models) in the background."""
        return self._chains.warm_up(self.personas.values())

    # -- sessions ----------------------------------------------------------------------------

    def is_busy(self, session_id: str) -> bool:
        """True while the session has an answer in progress."""
        return self._flights.busy(session_id)

    def stop(self, session_id: str) -> bool:
        """Cancel the session's answers in progress; return True if there were any."""
        return self._flights.stop(session_id)

    def inject_context(self, session_id: str, text: str) -> None:
        """Add conversational context for the session's next prompts."""
        self.memory.inject_context(session_id, text)

    def clear_context(self, session_id: str) -> None:
        """Remove the session's injected context."""
        self.memory.clear_context(session_id)

    def forget(self, session_id: str, persona: Optional[str] = None) -> int:
        """Forget the session's conversation (one persona's or all) and drop solver caches for it.

        Answers still in progress for it are spoken to the end but not remembered.
        """
        with self._remember_lock:
            self._flights.mark_forgotten(session_id, persona)
            deleted = self.memory.forget(session_id, persona)
        for link in self._chains.built(persona):
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
        for session_id in self._flights.sessions():
            self.stop(session_id)
        self._chains.close()
        self.memory.close()
