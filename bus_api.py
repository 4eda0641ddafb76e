"""The skill's bus API: the ``persona.*`` calls and OVOS's persona protocol (OVOS-PERSONA-1).

A mixin of ``PersonaFallbackSkill`` (part of the skill: it emits on the skill's bus), kept in its
own file so the skill class stays about answering. Generation runs on threads of its own, never on
ovos-core's bus handler pool.
"""
from __future__ import annotations

import copy
import threading
from typing import Any, Dict, Optional

from ovos_bus_client.message import Message
from ovos_bus_client.session import Session

from .answers import EngineBusy, NoPersonaError
from .bus_text import clean, text_of
from .bus_tools import ToolRequest
from .languages import ovos_lang


class BusApiMixin:
    """``persona.ask|list|context.*|conversation.end|active.set`` and ``ovos.persona.query|list``."""

    # -- bus API -------------------------------------------------------------------------------

    def _respond(self, message: Message, data: Dict[str, Any]) -> None:
        self.bus.emit(self._outgoing(message).response(data))

    def _error(self, message: Message, reason: str) -> None:
        self.log.warning(f"{message.msg_type}: {reason}")
        self.bus.emit(self._outgoing(message).reply(f"{message.msg_type}.error", {"error": reason}))

    def _data(self, message: Message) -> Optional[Dict[str, Any]]:
        if not isinstance(message.data, dict):
            self._error(message, "message data must be an object")
            return None
        return message.data

    def handle_ask(self, message: Message) -> None:
        """``persona.ask``: answered on a thread of its own, like the fallback.

        A whole generation on ovos-core's bus handler pool would starve the pool every other
        skill's handlers run on.
        """
        threading.Thread(target=self._run_ask, args=(message,), daemon=True,
                         name=f"ask-{self.skill_id}").start()

    def _run_ask(self, message: Message) -> None:
        """``persona.ask`` {utterance, persona?, lang?} -> {answer, persona, lang}."""
        try:
            self._ask(message)
        except Exception as err:  # a thread of ours: every request still gets its answer
            self.log.exception(f"persona.ask failed: {err}")
            self._error(message, "the persona could not answer")

    def _ask(self, message: Message) -> None:
        data = self._data(message)
        if data is None:
            return
        utterance = data.get("utterance")
        if not isinstance(utterance, str) or not utterance.strip():
            self._error(message, "utterance must be non-empty text")
            return
        name = data.get("persona")
        if name is not None and not isinstance(name, str):
            self._error(message, "persona must be a persona name")
            return
        session = self._session(message)
        persona = self.engine.find_persona(name) if name else self.engine.active_persona(session.session_id)
        if persona is None:
            self._error(message, f"no persona called {name!r}; known personas: {self._persona_names()}")
            return
        lang = self.engine.resolve_lang(self._lang(message, session), utterance, persona)
        stream = self.engine.stream(text_of(utterance), session_id=session.session_id, persona=persona.name,
                                    lang=lang, speaker=self._speaker(message, session),
                                    tool_context=ToolRequest(message, lang, session.session_id))
        try:
            for _ in stream:
                pass
        except EngineBusy as err:
            self._error(message, str(err))
            return
        answer = stream.answer
        if not answer.sentences:
            self._error(message, f"{answer.persona} could not answer")
            return
        self._respond(message, {"answer": answer.text, "persona": answer.persona, "lang": ovos_lang(lang)})

    def handle_list(self, message: Message) -> None:
        """``persona.list`` -> {personas: [{name, description, lang}]}."""
        personas = [persona.summary() for _, persona in sorted(self.engine.personas.items())]
        self._respond(message, {"personas": personas})

    def handle_context_inject(self, message: Message) -> None:
        """``persona.context.inject`` {context}: add context for the message's session."""
        data = self._data(message)
        if data is None:
            return
        context = data.get("context")
        if not isinstance(context, str) or not context.strip():
            self._error(message, "context must be non-empty text")
            return
        session_id = self._session(message).session_id
        self.engine.inject_context(session_id, text_of(context))
        self._respond(message, {"session_id": session_id})

    def handle_context_clear(self, message: Message) -> None:
        """``persona.context.clear``: remove the session's injected context."""
        session_id = self._session(message).session_id
        self.engine.clear_context(session_id)
        self._respond(message, {"session_id": session_id})

    def handle_conversation_end(self, message: Message) -> None:
        """``persona.conversation.end``: the user left; forget the session and free its caches."""
        session_id = self._session(message).session_id
        self.engine.end_conversation(session_id)
        self._respond(message, {"session_id": session_id})

    def handle_active_set(self, message: Message) -> None:
        """``persona.active.set`` {persona}: make a persona the session's active one."""
        data = self._data(message)
        if data is None:
            return
        name = data.get("persona")
        if not isinstance(name, str) or not name.strip():
            self._error(message, "persona must be a persona name")
            return
        session_id = self._session(message).session_id
        try:
            persona = self.engine.set_active(session_id, name)
        except NoPersonaError as err:
            self._error(message, f"{err}; known personas: {self._persona_names()}")
            return
        message = self._announce_persona(message, self._session(message), persona.name)
        self._respond(message, {"persona": persona.name, "session_id": session_id})

    # -- OVOS persona protocol (OVOS-PERSONA-1) ---------------------------------------------------

    def _announce_persona(self, message: Message, session: Session, persona_id: Optional[str],
                          dismissed: str = "") -> Message:
        """Set (or clear) ``persona_id`` in the session we reply with and announce the change.

        Returns the message to build further replies from, so they carry the new session.
        """
        outgoing = self._outgoing(message)
        context = copy.deepcopy(outgoing.context) if isinstance(outgoing.context, dict) else {}
        carried = context.get("session")
        if not isinstance(carried, dict):
            carried = {"session_id": session.session_id}
        if persona_id:
            carried["persona_id"] = persona_id
        else:
            carried.pop("persona_id", None)
        context["session"] = carried
        updated = Message(message.msg_type, message.data, context)
        if persona_id:
            self.bus.emit(updated.forward("ovos.persona.activated",
                                          {"persona_id": persona_id, "session_id": session.session_id}))
        elif dismissed:
            self.bus.emit(updated.forward("ovos.persona.dismissed",
                                          {"persona_id": dismissed, "session_id": session.session_id}))
        return updated

    def handle_persona_list(self, message: Message) -> None:
        """``ovos.persona.list`` -> ``.response`` {pipeline_id, personas: [{persona_id, name, tags}]}."""
        personas = [{"persona_id": persona.name, "name": persona.name, "tags": list(persona.tags)}
                    for _, persona in sorted(self.engine.personas.items())]
        self._respond(message, {"pipeline_id": self.skill_id, "personas": personas})

    def handle_persona_query(self, message: Message) -> None:
        """``ovos.persona.query`` {persona_id, utterance}: answered from a thread of its own."""
        threading.Thread(target=self._run_persona_query, args=(message,), daemon=True,
                         name=f"query-{self.skill_id}").start()

    def _run_persona_query(self, message: Message) -> None:
        """Answer with ``ovos.persona.answer``: ``response`` for ours, ``error`` for every other outcome.

        The exchange reads the session's history but is not added to it: an out-of-band lookup
        does not become part of the spoken conversation.
        """
        data = message.data if isinstance(message.data, dict) else None
        persona_id = data.get("persona_id") if data is not None else None
        utterance = data.get("utterance") if data is not None else None
        echo = {"persona_id": clean(persona_id) if isinstance(persona_id, str) else "",
                "utterance": clean(utterance) if isinstance(utterance, str) else ""}

        def answer(**result: str) -> None:
            self.bus.emit(self._outgoing(message).reply("ovos.persona.answer", {**echo, **result}))

        try:
            if data is None:
                return answer(error="message data must be an object")
            if not isinstance(persona_id, str) or not persona_id.strip():
                return answer(error="persona_id must be non-empty text")
            if not isinstance(utterance, str) or not utterance.strip():
                return answer(error="utterance must be non-empty text")
            persona = self.engine.find_persona(persona_id)
            if persona is None:
                return answer(error="unsupported persona_id")
            session = self._session(message)
            lang = self.engine.resolve_lang(self._lang(message, session), utterance, persona)
            try:
                result = self.engine.ask(text_of(utterance), session_id=session.session_id, persona=persona.name,
                                         lang=lang, speaker=self._speaker(message, session), remember=False)
            except EngineBusy:
                return answer(error="busy: too many answers at once")
            if not result.sentences:
                return answer(error=f"{persona.name} could not answer")
            return answer(response=result.text)
        except Exception as err:  # every query is answered, whatever happened
            self.log.exception(f"ovos.persona.query failed: {err}")
            return answer(error="the persona could not answer")
