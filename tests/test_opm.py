"""OPMSolver: installed OVOS solver plugins run in the chain, their failures map to the error tree."""
from __future__ import annotations

from typing import Dict, Iterator, List, Optional

import pytest
from ovos_plugin_manager.templates.solvers import ChatMessageSolver, QuestionSolver

from ovos_skill_persona_fallback.solvers import create_solver, known_solver_ids, opm
from ovos_skill_persona_fallback.solvers.base import (CancelToken, ChatMessage, Role, SolverCancelled,
                                                      SolverConfigError, SolverContext, SolverError,
                                                      SolverResponseError, SolverUnavailable)
from ovos_skill_persona_fallback.solvers.opm import OPMSolver, installed_plugin_ids

#: the entry point name ovos-solver-failure-plugin 0.0.3 registers (group neon.plugin.solver)
FAILURE_PLUGIN = "ovos-solver-failure-plugin"
CONTEXT = SolverContext(persona_name="Jarvis", persona_lang="pt-pt")
MESSAGES = [
    ChatMessage(Role.SYSTEM, "You are Jarvis."),
    ChatMessage(Role.USER, "first question"),
    ChatMessage(Role.ASSISTANT, "first answer"),
    ChatMessage(Role.USER, "what time is it"),
]


def drain(solver: OPMSolver, lang: str = "pt-pt", cancel: Optional[CancelToken] = None) -> List[str]:
    return list(solver.stream(MESSAGES, lang=lang, cancel=cancel or CancelToken(), conversation_id="c"))


class RecordingQuestionPlugin(QuestionSolver):
    """Answers with a fixed text and remembers what it was asked."""

    answer: Optional[str] = "It is noon."

    def __init__(self, config: Optional[Dict] = None) -> None:
        super().__init__(config)
        self.calls: List[tuple] = []

    def get_spoken_answer(self, query: str, lang: Optional[str] = None,
                          units: Optional[str] = None) -> Optional[str]:
        self.calls.append((query, lang))
        return self.answer


class SilentPlugin(RecordingQuestionPlugin):
    answer = None


class BrokenPlugin(RecordingQuestionPlugin):
    def get_spoken_answer(self, query: str, lang: Optional[str] = None,
                          units: Optional[str] = None) -> Optional[str]:
        raise ValueError("kaboom")


class OfflinePlugin(RecordingQuestionPlugin):
    def get_spoken_answer(self, query: str, lang: Optional[str] = None,
                          units: Optional[str] = None) -> Optional[str]:
        raise ConnectionError("server down")


class ChatPlugin(ChatMessageSolver):
    """A chat plugin that echoes how many messages it saw."""

    def __init__(self, config: Optional[Dict] = None) -> None:
        super().__init__(config)
        self.seen: List[tuple] = []

    def continue_chat(self, messages: List[Dict[str, str]], lang: Optional[str],
                      units: Optional[str] = None) -> Optional[str]:
        self.seen.append((messages, lang))
        return f"I saw {len(messages)} messages."


class StreamingPlugin(RecordingQuestionPlugin):
    """Streams three utterances and notes whether it was closed early."""

    closed = False

    def stream_utterances(self, query: str, lang: Optional[str] = None,
                          units: Optional[str] = None) -> Iterator[str]:
        try:
            yield "One."
            yield ""  # empty chunks are dropped
            yield "Two."
            yield "Three."
        finally:
            type(self).closed = True


class LegacyPlugin:
    """An old-style plugin that takes a context dict instead of lang and subclasses nothing."""

    def __init__(self, config: Optional[Dict] = None) -> None:
        self.config = config

    def get_spoken_answer(self, query: str, context: Optional[dict] = None) -> str:
        return f"legacy {context['lang']}"


class UnstartablePlugin(RecordingQuestionPlugin):
    def __init__(self, config: Optional[Dict] = None) -> None:
        raise RuntimeError("model missing")


def test_installed_plugin_ids_include_the_failure_plugin() -> None:
    assert FAILURE_PLUGIN in installed_plugin_ids()
    assert FAILURE_PLUGIN in known_solver_ids()


def test_installed_plugin_ids_never_raise(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(group: str) -> list:
        raise RuntimeError("corrupt metadata")

    monkeypatch.setattr(opm, "_group_entry_points", broken)
    installed_plugin_ids.cache_clear()
    try:
        assert installed_plugin_ids() == frozenset()
    finally:
        monkeypatch.undo()
        installed_plugin_ids.cache_clear()
    assert FAILURE_PLUGIN in installed_plugin_ids()


def test_failure_plugin_runs_and_yields_its_answer() -> None:
    solver = OPMSolver(FAILURE_PLUGIN, {}, CONTEXT)
    assert solver.solver_id == FAILURE_PLUGIN
    assert solver.supports_history is False
    assert drain(solver) == ["404"]  # the plugin ships no dialogs, so every language gets "404"


def test_create_solver_builds_an_opm_solver_for_a_plugin_id() -> None:
    solver = create_solver(FAILURE_PLUGIN, {}, CONTEXT)
    assert isinstance(solver, OPMSolver)
    assert drain(solver) == ["404"]


def test_unknown_plugin_id_is_a_config_error() -> None:
    with pytest.raises(SolverConfigError, match="no-such-plugin"):
        OPMSolver("no-such-plugin", {}, CONTEXT)


def test_plugin_that_fails_to_start_is_a_config_error() -> None:
    with pytest.raises(SolverConfigError, match="my-plugin") as caught:
        OPMSolver("my-plugin", {}, CONTEXT, plugin_class=UnstartablePlugin)
    assert isinstance(caught.value.__cause__, RuntimeError)


def test_question_plugin_gets_the_last_user_message_and_the_ovos_lang_tag() -> None:
    solver = OPMSolver("recorder", {}, CONTEXT, plugin_class=RecordingQuestionPlugin)
    assert drain(solver, lang="pt-br") == ["It is noon."]
    assert solver._plugin.calls == [("what time is it", "pt-BR")]


def test_translation_inside_opm_is_off_and_config_is_not_mutated() -> None:
    config = {"supported_langs": ["en-us", "de-DE"], "key": "value"}
    solver = OPMSolver("recorder", config, CONTEXT, plugin_class=RecordingQuestionPlugin)
    assert solver._plugin.enable_tx is False
    assert solver._plugin.config["lang"] == "pt-PT"  # defaults to the persona language
    assert solver._plugin.config["key"] == "value"
    assert config == {"supported_langs": ["en-us", "de-DE"], "key": "value"}
    assert solver.supported_langs == frozenset({"en", "de"})


def test_supported_langs_default_to_none() -> None:
    assert OPMSolver("recorder", {}, CONTEXT, plugin_class=RecordingQuestionPlugin).supported_langs is None


def test_bad_supported_langs_is_a_config_error() -> None:
    with pytest.raises(SolverConfigError, match="supported_langs"):
        OPMSolver("recorder", {"supported_langs": "en"}, CONTEXT, plugin_class=RecordingQuestionPlugin)


def test_chat_plugin_gets_the_whole_history() -> None:
    solver = OPMSolver("chat", {}, CONTEXT, plugin_class=ChatPlugin)
    assert solver.supports_history is True
    assert drain(solver, lang="en-us") == ["I saw 4 messages."]
    messages, lang = solver._plugin.seen[0]
    assert messages == [message.as_dict() for message in MESSAGES]
    assert lang == "en-US"


def test_plugin_without_answer_yields_nothing() -> None:
    assert drain(OPMSolver("silent", {}, CONTEXT, plugin_class=SilentPlugin)) == []


@pytest.mark.parametrize("plugin_class,error", [
    (BrokenPlugin, SolverResponseError),  # a bug inside the plugin: unusable answer
    (OfflinePlugin, SolverUnavailable),  # a connection error: the backend is down
])
def test_plugin_exception_becomes_a_solver_error(plugin_class: type, error: type) -> None:
    solver = OPMSolver("fragile", {}, CONTEXT, plugin_class=plugin_class)
    with pytest.raises(error, match="fragile") as caught:
        drain(solver)
    assert isinstance(caught.value, SolverError)
    assert caught.value.__cause__ is not None


def test_streaming_plugin_chunks_are_spaced_and_empty_ones_dropped() -> None:
    solver = OPMSolver("streamer", {}, CONTEXT, plugin_class=StreamingPlugin)
    chunks = drain(solver)
    assert chunks == ["One.", " Two.", " Three."]
    assert "".join(chunks) == "One. Two. Three."


def test_cancel_between_chunks_stops_the_plugin() -> None:
    StreamingPlugin.closed = False
    solver = OPMSolver("streamer", {}, CONTEXT, plugin_class=StreamingPlugin)
    cancel = CancelToken()
    stream = solver.stream(MESSAGES, lang="en-us", cancel=cancel)
    assert next(stream) == "One."
    cancel.cancel()
    with pytest.raises(SolverCancelled):
        next(stream)
    assert StreamingPlugin.closed is True


def test_already_cancelled_token_never_calls_the_plugin() -> None:
    solver = OPMSolver("recorder", {}, CONTEXT, plugin_class=RecordingQuestionPlugin)
    cancel = CancelToken()
    cancel.cancel()
    with pytest.raises(SolverCancelled):
        drain(solver, cancel=cancel)
    assert solver._plugin.calls == []


def test_legacy_plugin_gets_lang_in_a_context_dict() -> None:
    assert drain(OPMSolver("legacy", {}, CONTEXT, plugin_class=LegacyPlugin), lang="fr-fr") == ["legacy fr-FR"]
