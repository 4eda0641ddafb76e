"""Persona Fallback: the OVOS skill class; with its bus API mixin (bus_api.py) and tool executor
(bus_tools.py), the only code that touches the messagebus.

It claims utterances no other skill handled, asks the session's persona through the engine, and
speaks the answer sentence by sentence with ``message.forward("speak")`` so each answer reaches
the satellite that asked. Everything else lives in plain Python modules beside it.
"""
from __future__ import annotations

import copy
import random
import threading
import time
from typing import Any, Dict, List, Optional, Tuple

from ovos_bus_client.message import Message
from ovos_bus_client.session import Session, SessionManager
from ovos_utils import classproperty
from ovos_utils.events import get_handler_name
from ovos_utils.process_utils import RuntimeRequirements
from ovos_workshop.decorators import intent_handler
from ovos_workshop.skills.fallback import FallbackSkill

from .bus_api import BusApiMixin
from .bus_text import clean_value, session_key, text_of
from .bus_tools import BusToolExecutor, ToolRequest, is_tool_utterance
from .engine import EngineBusy, NoPersonaError, PersonaEngine
from .languages import normalize_lang, ovos_lang, random_dialog
from .memory import ConversationMemory, MemoryConfigError, MemoryStore, open_memory
from .models.errors import ModelNotReady
from .persona import MemorySettings, Persona, fill_placeholders
from .prompt import Speaker, placeholder_values
from .settings import DEFAULT_SETTINGS, validate_settings
from .translation import Translator

SKILL_ID = "ovos-skill-persona-fallback.openpersona"


class PersonaFallbackSkill(BusApiMixin, FallbackSkill):
    """Answers utterances no other skill handled by asking the session's persona."""

    def __init__(self, *args: Any, engine: Optional[PersonaEngine] = None, **kwargs: Any) -> None:
        self.engine: Optional[PersonaEngine] = engine
        self._owns_engine = engine is None
        self._config: Dict[str, Any] = dict(DEFAULT_SETTINGS)
        # not "_settings_lock": ovos-workshop's skill class sets an attribute of that name itself
        self._config_lock = threading.Lock()
        #: personas whose "my model is being prepared" line was said (once each)
        self._preparing_said: set = set()
        super().__init__(*args, **kwargs)

    @classproperty
    def runtime_requirements(self) -> RuntimeRequirements:
        """Loads and answers with no network: the offline default persona needs none."""
        return RuntimeRequirements(internet_before_load=False, network_before_load=False,
                                   requires_internet=False, requires_network=False,
                                   no_internet_fallback=True, no_network_fallback=True)

    # -- life cycle ----------------------------------------------------------------------------

    def initialize(self) -> None:
        """Build the engine from the settings, register the fallback and the bus API."""
        self._config, problems = validate_settings(dict(self.settings), DEFAULT_SETTINGS)
        for problem in problems:
            self.log.error(problem)
        if self.engine is None:
            self.engine = PersonaEngine(self._config["persona_dirs"], memory=self._open_memory(),
                                        default_persona=self._config["default_persona"],
                                        translator=self._make_translator(),
                                        default_solvers=self._config["default_solvers"])
        self._apply_engine_settings()
        self.engine.tool_executor = BusToolExecutor(
            self.bus, self.skill_id, self._outgoing,
            lambda message, text, lang: self._say(message, text, lang, listen=True, dialog="tool_confirm"),
            lambda message: self.get_response(message=message, num_retries=0, wait=False))
        # load local models (and download hf: references) now, in the background: the first
        # question meanwhile falls through to the rest of the chain instead of waiting
        self.engine.warm_up()
        self.register_fallback(self.handle_fallback, self._config["priority"])
        for name, handler in (("persona.ask", self.handle_ask), ("persona.list", self.handle_list),
                              ("persona.context.inject", self.handle_context_inject),
                              ("persona.context.clear", self.handle_context_clear),
                              ("persona.conversation.end", self.handle_conversation_end),
                              ("persona.active.set", self.handle_active_set),
                              ("ovos.persona.query", self.handle_persona_query),
                              ("ovos.persona.list", self.handle_persona_list)):
            self.add_event(name, handler, speak_errors=False)
        self.settings_change_callback = self.on_settings_changed

    def _open_memory(self) -> MemoryStore:
        """The store the settings choose; a db_url that cannot be used falls back to the SQLite file."""
        db_path = self._config["db_path"] or None
        try:
            return open_memory(db_path, self._config["db_url"].strip() or None)
        except MemoryConfigError as err:
            self.log.error(f"setting db_url: {err}; using the SQLite file instead")
            return ConversationMemory(db_path)

    def _make_translator(self) -> Translator:
        return Translator(translation_module=self._config["translation_module"],
                          detection_module=self._config["detection_module"])

    def _apply_engine_settings(self) -> None:
        engine = self.engine
        engine.default_lang = normalize_lang(self._config["default_lang"])
        engine.default_persona = self._config["default_persona"]
        engine.max_utterance_chars = self._config["max_utterance_chars"]
        engine.memory_defaults = MemorySettings(self._config["max_turns"], self._config["max_age_minutes"])
        engine.admission.resize(self._config["max_concurrent_answers"], self._config["max_waiting_answers"])

    def on_settings_changed(self) -> None:
        """Apply changed settings at once; a bad value is logged and the last good one kept."""
        with self._config_lock:
            previous = self._config
            self._config, problems = validate_settings(dict(self.settings), previous)
            for problem in problems:
                self.log.error(problem)
            self._apply_engine_settings()
            if self._config["default_solvers"] != previous["default_solvers"]:
                self.engine.default_solvers = self._config["default_solvers"]
            if any(self._config[key] != previous[key] for key in ("persona_dirs", "default_solvers")):
                self.engine.load_personas(self._config["persona_dirs"])
                self.engine.warm_up()
            modules = ("translation_module", "detection_module")
            if any(self._config[key] != previous[key] for key in modules) and self._owns_engine:
                self.engine.translator = self._make_translator()
            if self._config["priority"] != previous["priority"]:
                self.remove_fallback(self.handle_fallback)
                self.register_fallback(self.handle_fallback, self._config["priority"])

    def shutdown(self) -> None:
        """Stop every answer and close the engine (if the skill built it)."""
        if self.engine is not None and self._owns_engine:
            self.engine.close()

    # -- helpers -------------------------------------------------------------------------------

    def _session(self, message: Message) -> Session:
        try:
            session = SessionManager.get(message)
        except Exception as err:  # a malformed session in a bus message must not kill the handler
            self.log.warning(f"malformed session in {message.msg_type}: {err}; using the default session")
            return SessionManager.default_session
        key = session_key(session.session_id)
        if key != session.session_id:
            session = copy.copy(session)  # SessionManager keeps the original
            session.session_id = key
        return session

    def _lang(self, message: Message, session: Session) -> str:
        """The asker's language: the message's, else the session's; "auto" lets the engine detect it."""
        requested = message.data.get("lang") if isinstance(message.data, dict) else None
        session_lang = getattr(session, "lang", None)
        for candidate in (requested, session_lang):
            if isinstance(candidate, str) and candidate.strip().lower() == "auto":
                return "auto"
            if normalize_lang(candidate, default=""):
                return normalize_lang(candidate)
        return normalize_lang(self._config["default_lang"])

    def _dialog_lang(self, message: Message, session: Session) -> str:
        """The language to answer a voice command in: ``_lang``'s, with "auto" detected from the utterance."""
        lang = self._lang(message, session)
        if lang != "auto":
            return lang
        translator = self.engine.translator if self.engine is not None else None
        utterance = text_of(message.data.get("utterance")) if isinstance(message.data, dict) else ""
        detected = translator.detect(utterance) if translator is not None and utterance else None
        return normalize_lang(detected, default="") or normalize_lang(self._config["default_lang"])

    @staticmethod
    def _speaker(message: Message, session: Session) -> Speaker:
        location = getattr(session, "location_preferences", None) or {}
        city = location.get("city", {}) if isinstance(location, dict) else {}
        city_name = city.get("name", "") if isinstance(city, dict) else ""
        context = message.context if isinstance(message.context, dict) else {}
        return Speaker(name=text_of(context.get("speaker_name") or context.get("user_name")),
                       location=text_of(city_name))

    def _say(self, message: Message, text: str, lang: str, listen: bool = False, **meta: Any) -> None:
        """Emit one ``speak`` built from the request, so it reaches the satellite that asked."""
        if not text:
            return
        reply = self._outgoing(message).forward("speak", {"utterance": text, "expect_response": listen,
                                                          "lang": ovos_lang(lang),
                                                          "meta": {"skill": self.skill_id, **meta}})
        reply.context["skill_id"] = self.skill_id
        self.bus.emit(reply)

    @staticmethod
    def _outgoing(message: Message) -> Message:
        """Return the message to build replies from, its context cleaned of lone surrogates.

        The websocket cannot encode such text, so a reply carrying one would never be sent.
        """
        if not isinstance(message.context, dict):
            return Message(message.msg_type, message.data, {})
        context = clean_value(message.context)
        if context == message.context:
            return message
        return Message(message.msg_type, message.data, context)

    def _say_dialog(self, message: Message, lang: str, dialog: str, **values: str) -> str:
        line = random_dialog(lang, dialog, **values)
        self._say(message, line, lang, dialog=dialog)
        return line

    def _persona_names(self) -> str:
        return ", ".join(sorted(self.engine.personas)) if self.engine else ""

    # -- fallback ------------------------------------------------------------------------------

    def _claim(self, message: Message) -> Optional[Tuple[str, Session, Persona]]:
        """Return (utterance, session, persona) when the skill can answer, else None; calls no solver."""
        if not self._config["enabled"] or self.engine is None:
            return None
        utterances = message.data.get("utterances") if isinstance(message.data, dict) else None
        utterance = text_of(utterances[0]) if isinstance(utterances, list) and utterances else ""
        if not utterance or is_tool_utterance(message):
            return None  # nothing to answer, or a persona's own command to the assistant (no loops)
        session = self._session(message)
        summoned = getattr(session, "persona_id", None)
        if isinstance(summoned, str) and summoned.strip():
            # the session names a persona (OVOS sessions carry persona_id): ours answers it,
            # another component's is left to its owner
            persona = self.engine.find_persona(summoned)
            return (utterance, session, persona) if persona is not None else None
        persona = self.engine.active_persona(session.session_id)
        return (utterance, session, persona) if persona is not None else None

    def can_answer(self, message: Message) -> bool:
        """Fast check (no solver is called): enabled, some persona usable, a non-empty utterance."""
        return self._claim(message) is not None

    def _handle_fallback_request(self, message: Message) -> None:
        """Run each fallback request on a plain thread of its own.

        Overrides ovos-workshop's killable wrapper, which keeps every request's thread and a bus
        listener per request for the life of the skill (memory that grows with every answer) and
        exists for force-killing, which ovos-core 2.1 no longer does. A thread of our own keeps
        core's bus thread pool free while an answer streams.
        """
        threading.Thread(target=self._run_fallback_request, args=(message,), daemon=True,
                         name=f"fallback-{self.skill_id}").start()

    def _run_fallback_request(self, message: Message) -> None:
        """The fallback protocol: ``.start``, the answer, ``.response``, ``ovos.utterance.handled``."""
        message = self._outgoing(message)
        self.bus.emit(message.forward(f"ovos.skills.fallback.{self.skill_id}.start"))
        handled, handler_name = False, None
        for _, handler in sorted(self._fallback_handlers, key=lambda entry: entry[0]):
            handler_name = get_handler_name(handler)
            try:
                handled = bool(handler(message))
            except Exception as err:  # once claimed, core must still hear how the request ended
                self.log.exception(f"fallback handler {handler_name} failed: {err}")
            if handled:
                break
        self.bus.emit(message.forward(f"ovos.skills.fallback.{self.skill_id}.response",
                                      {"result": handled, "fallback_handler": handler_name}))
        self.bus.emit(message.forward("ovos.utterance.handled"))

    def handle_fallback(self, message: Message) -> bool:
        """Answer inside the request, sentence by sentence; always say something once claimed."""
        claim = self._claim(message)
        if claim is None:
            return False
        utterance, session, persona = claim
        self._answer(message, utterance, session, self._lang(message, session), persona)
        return True

    def _answer(self, message: Message, utterance: str, session: Session, lang: str,
                persona: Persona) -> List[str]:
        """Stream the persona's answer into speak messages; return the spoken sentences."""
        lang = self.engine.resolve_lang(lang, utterance, persona)
        spoken: List[str] = []
        state = {"started": False}
        lock = threading.Lock()
        delay = persona.thinking.after_seconds
        delay = self._config["thinking_delay"] if delay is None else delay

        def think() -> None:
            with lock:
                if state["started"]:
                    return
                state["started"] = True
                line = (self.engine.localize(self._persona_line(persona, message, session, lang), persona.lang, lang)
                        if persona.thinking.messages else random_dialog(lang, "thinking", name=persona.name))
                self._say(message, line, lang, dialog="thinking", persona=persona.name)

        timer = threading.Timer(delay, think)
        timer.daemon = True
        timer.start()
        try:
            stream = self.engine.stream(utterance, session_id=session.session_id, persona=persona.name,
                                        lang=lang, speaker=self._speaker(message, session),
                                        tool_context=ToolRequest(message, lang, session.session_id))
            try:
                for sentence in stream:
                    with lock:
                        state["started"] = True
                        self._say(message, sentence, lang, persona=persona.name)
                    spoken.append(sentence)
            except EngineBusy as err:
                self.log.warning(f"session {session.session_id}: {err}")
                timer.cancel()
                with lock:
                    state["started"] = True
                self._say_dialog(message, lang, "busy")
                return spoken
        finally:
            timer.cancel()
        answer = stream.answer  # the engine has logged its failures (tracebacks once per error)
        if not spoken and not answer.result.cancelled:
            self._say_dialog(message, lang, "error", persona=persona.name)
        elif any(isinstance(failure.error, ModelNotReady) for failure in answer.failures):
            with self._config_lock:
                first_time = persona.name not in self._preparing_said
                self._preparing_said.add(persona.name)
            if first_time:  # once per persona: its model is still downloading or loading
                self._say_dialog(message, lang, "model_preparing", persona=persona.name)
        return spoken

    def _persona_line(self, persona: Persona, message: Message, session: Session, lang: str) -> str:
        """A random thinking line of the persona's own, its placeholders ({name}, ...) filled."""
        values = placeholder_values(persona, self._speaker(message, session), lang, time.time())
        return fill_placeholders(random.choice(persona.thinking.messages), values)

    # -- stop ----------------------------------------------------------------------------------

    def can_stop(self, message: Message) -> bool:
        """True while this session has an answer in progress."""
        return self.engine is not None and self.engine.is_busy(self._session(message).session_id)

    def stop_session(self, session: Session) -> bool:
        """Cancel only this session's generation; True if something was stopped."""
        return self.engine is not None and self.engine.stop(session_key(session.session_id))

    def stop(self) -> bool:
        """Global stop without a session: nothing to do, every stop here is per session."""
        return False

    # -- voice commands ------------------------------------------------------------------------

    @intent_handler("switch_persona.intent")
    def handle_switch_persona(self, message: Message) -> None:
        """Switch the session to the named persona (matched fuzzily)."""
        session, name = self._session(message), text_of(message.data.get("persona"))
        lang = self._dialog_lang(message, session)
        try:
            persona = self.engine.set_active(session.session_id, name)
        except NoPersonaError:
            self._say_dialog(message, lang, "unknown_persona", name=name or "?", personas=self._persona_names())
            return
        message = self._announce_persona(message, session, persona.name)
        self._say_dialog(message, lang, "switched", persona=persona.name)
        greeting = self.engine.greeting(persona, self._speaker(message, session), lang)
        if greeting:
            self._say(message, self.engine.localize(greeting, persona.lang, lang), lang, dialog="greeting",
                      persona=persona.name)

    @intent_handler("which_persona.intent")
    def handle_which_persona(self, message: Message) -> None:
        """Say which persona this session talks to."""
        session = self._session(message)
        persona = self.engine.active_persona(session.session_id)
        lang = self._dialog_lang(message, session)
        if persona is None:
            self._say_dialog(message, lang, "no_personas")
        else:
            self._say_dialog(message, lang, "current_persona", persona=persona.name)

    @intent_handler("list_personas.intent")
    def handle_list_personas(self, message: Message) -> None:
        """Say the names of the loaded personas."""
        lang = self._dialog_lang(message, self._session(message))
        names = self._persona_names()
        self._say_dialog(message, lang, "list_personas" if names else "no_personas", personas=names)

    @intent_handler("forget_conversation.intent")
    def handle_forget(self, message: Message) -> None:
        """Forget this session's conversation with every persona."""
        session = self._session(message)
        self.engine.forget(session.session_id)
        self._say_dialog(message, self._dialog_lang(message, session), "forgot")

    @intent_handler("release_persona.intent")
    def handle_release_persona(self, message: Message) -> None:
        """Go back to the default persona; "stop talking as X" when X is not active changes nothing."""
        session = self._session(message)
        named = text_of(message.data.get("persona")) if isinstance(message.data, dict) else ""
        summoned = getattr(session, "persona_id", None)
        active = ((self.engine.find_persona(summoned) if isinstance(summoned, str) and summoned else None)
                  or self.engine.active_persona(session.session_id))
        if named and active is not None:
            meant = self.engine.find_persona(named, fuzzy=True)
            if meant is None or meant.name != active.name:
                self._say_dialog(message, self._dialog_lang(message, session), "not_active",
                                 name=named, persona=active.name)
                return
        self.engine.reset_active(session.session_id)
        message = self._announce_persona(message, session, None,
                                         dismissed=active.name if active is not None else "")
        persona = self.engine.active_persona(session.session_id)
        self._say_dialog(message, self._dialog_lang(message, session), "released",
                         persona=persona.name if persona else "")


def create_skill(*args: Any, **kwargs: Any) -> PersonaFallbackSkill:
    """Legacy loader hook."""
    return PersonaFallbackSkill(*args, **kwargs)
