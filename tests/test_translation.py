"""Translation through real OVOS language plugins (a test plugin registered by entry points)."""
from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time

import pytest

from conftest import PLUGIN_SITE, PLUGINS, make_persona
from ovos_skill_persona_fallback.languages import same_lang
from ovos_skill_persona_fallback.memory import Turn
from ovos_skill_persona_fallback.solvers.base import ChatMessage, Role
from ovos_skill_persona_fallback.translation import Translator




def test_plugins_load_through_the_opm_factories(plugin):
    translator = Translator(dict(PLUGINS))
    assert translator.available
    assert translator.translate("olá", "en-us", "pt-PT") == "hello"
    assert translator.detect("qual é a capital") == "pt-pt"
    assert plugin.CALLS == [("olá", "en-us", "pt-pt")]


def test_same_base_language_is_never_translated(plugin):
    translator = Translator(dict(PLUGINS))
    assert translator.translate("Olá", "pt-BR", "pt-PT") == "Olá"
    assert translator.translate("Hi", "en-GB", "en-us") == "Hi"
    assert plugin.CALLS == []
    assert same_lang("pt-PT", "pt-BR") and same_lang("en-US", "en-gb") and not same_lang("pt", "es")


def test_lru_cache_makes_repeats_free_and_is_bounded(plugin):
    translator = Translator(dict(PLUGINS), cache_size=2)
    for _ in range(3):
        assert translator.translate("Let me think.", "pt-PT", "en-us") == "Deixe-me pensar."
    assert len(plugin.CALLS) == 1 and translator.hits == 2
    translator.translate("one", "pt", "en")
    translator.translate("two", "pt", "en")
    assert translator.cached == 2
    translator.translate("Let me think.", "pt-PT", "en-us")
    assert len(plugin.CALLS) == 4, "the oldest entry was evicted"


def test_missing_plugin_is_reported_once_and_text_passes_through(plugin, caplog):
    translator = Translator({"translation_module": "no-such-plugin"})
    with caplog.at_level(logging.DEBUG):
        assert translator.translate("olá", "en", "pt") == "olá"
        assert translator.translate("olá", "en", "pt") == "olá"
        assert translator.available is False
    reports = [r for r in caplog.records if "no usable language plugin" in r.getMessage()]
    assert len(reports) == 1


def test_unconfigured_plugin_passes_through():
    translator = Translator({})
    assert translator.translate("olá", "en", "pt") == "olá" and translator.detect("olá") is None


def test_translation_error_falls_back_to_the_untranslated_text(plugin, caplog):
    translator = Translator(dict(PLUGINS))
    plugin.FAIL_WITH.append(RuntimeError("service down"))
    with caplog.at_level(logging.WARNING):
        assert translator.translate("Paris.", "pt", "en") == "Paris."
    assert any("failed, using the untranslated text" in r.getMessage() for r in caplog.records)


def test_portuguese_question_reaches_english_solver_and_answer_streams_back(plugin, box, engine_with, memory):
    solver = box.add("scripted", supported_langs=frozenset({"en"}))
    solver.enqueue("The capital of France is Paris. ", "It is a lovely city.", delay=0.4)
    engine = engine_with(make_persona(system_prompt="You are {name}, answer briefly."),
                         translator=Translator(dict(PLUGINS)))
    started = time.monotonic()
    stream = iter(engine.stream("Qual é a capital de França?", session_id="s", lang="pt-PT"))
    first = next(stream)
    first_at = time.monotonic() - started
    rest = list(stream)
    assert [first] + rest == ["A capital de França é Paris.", "É uma cidade encantadora."]
    assert first_at < 0.35, "the first sentence must be spoken before the solver finished"
    assert solver.calls[0].messages == [ChatMessage(Role.SYSTEM, "You are Ada, answer briefly."),
                                        ChatMessage(Role.USER, "What is the capital of France?")]
    assert solver.calls[0].lang == "en-us"
    # the system prompt and the roles never went through the translator
    assert all("You are" not in text and text not in ("system", "user") for text, _, _ in plugin.CALLS)
    [turn] = memory.history("s", "Ada", max_turns=5)
    assert turn == Turn("What is the capital of France?",
                        "The capital of France is Paris. It is a lovely city.", turn.created_at, False,
                        "Qual é a capital de França?", "A capital de França é Paris. É uma cidade encantadora.",
                        "pt-pt")


def test_earlier_turns_are_never_translated_again(plugin, box, engine_with):
    solver = box.add("scripted", supported_langs=frozenset({"en"}))
    solver.enqueue("The capital of France is Paris.").enqueue("The capital of Germany is Berlin.")
    engine = engine_with(make_persona(), translator=Translator(dict(PLUGINS)))
    engine.ask("Qual é a capital de França?", session_id="s", lang="pt-PT")
    plugin.CALLS.clear()
    answer = engine.ask("E da Alemanha?", session_id="s", lang="pt-PT")
    assert answer.sentences == ["A capital da Alemanha é Berlim."]
    assert [c[0] for c in plugin.CALLS] == ["E da Alemanha?", "The capital of Germany is Berlin."]
    assert [m.content for m in solver.calls[1].messages] == [
        "What is the capital of France?", "The capital of France is Paris.", "And of Germany?"]


def test_solver_that_speaks_portuguese_gets_the_question_untouched(plugin, box, engine_with):
    solver = box.add("scripted", supported_langs=frozenset({"pt", "en"})).enqueue("Paris.")
    engine = engine_with(make_persona(), translator=Translator(dict(PLUGINS)))
    assert engine.ask("Qual é a capital de França?", session_id="s", lang="pt-BR").sentences == ["Paris."]
    assert solver.calls[0].messages[-1].content == "Qual é a capital de França?"
    assert solver.calls[0].lang == "pt-br" and plugin.CALLS == []


def test_persona_language_decides_for_solvers_that_do_not_say(plugin, box, engine_with):
    solver = box.add("scripted").enqueue("Paris.")        # supported_langs None: the persona's lang
    engine = engine_with(make_persona(lang="pt-pt"), translator=Translator(dict(PLUGINS)))
    engine.ask("Qual é a capital de França?", session_id="s", lang="pt-BR")
    assert plugin.CALLS == [] and solver.calls[0].lang == "pt-br"


def test_without_a_plugin_the_answer_is_untranslated(plugin, box, engine_with):
    solver = box.add("scripted", supported_langs=frozenset({"en"})).enqueue("Paris.")
    engine = engine_with(make_persona(), translator=Translator({"translation_module": "no-such-plugin"}))
    assert engine.ask("Qual é a capital?", session_id="s", lang="pt-PT").sentences == ["Paris."]
    assert solver.calls[0].messages[-1].content == "Qual é a capital?"


AUTO = [
    # (question, expected language)
    ("qual é a capital de frança?", "pt-pt"),   # detected
    ("what is this", "en-us"),                  # detected English
    ("!! unreadable", "de-de"),                 # detection fails: the engine's default language
]


@pytest.mark.parametrize("question,expected", AUTO)
def test_auto_language_is_detected_else_default(plugin, box, engine_with, question, expected):
    box.add("scripted", supported_langs=frozenset({"pt", "en", "de"})).enqueue("ok")
    engine = engine_with(make_persona(), translator=Translator(dict(PLUGINS)), default_lang="de-DE")
    engine.ask(question, session_id="s", lang="auto")
    assert box.solvers["scripted"].calls[0].lang == expected


def test_thinking_lines_are_localized_and_cached(plugin, box, engine_with):
    engine = engine_with(make_persona(), translator=Translator(dict(PLUGINS)))
    assert engine.localize("Let me think.", "en-us", "pt-PT") == "Deixe-me pensar."
    assert engine.localize("Let me think.", "en-us", "pt-PT") == "Deixe-me pensar."
    assert engine.localize("Let me think.", "en-us", "en-GB") == "Let me think."
    assert len(plugin.CALLS) == 1


def test_cli_ask_with_lang_goes_through_the_same_path(tmp_path):
    config_dir = tmp_path / "config" / "mycroft"
    config_dir.mkdir(parents=True)
    (config_dir / "mycroft.conf").write_text(json.dumps({"language": dict(PLUGINS)}))
    persona = tmp_path / "plain.yaml"
    persona.write_text("name: Plain\nsolvers: [ovos-solver-failure-plugin]\nlang: en-us\n")
    env = dict(os.environ, XDG_CONFIG_HOME=str(tmp_path / "config"), XDG_DATA_HOME=str(tmp_path / "data"),
               PYTHONPATH=os.pathsep.join([str(PLUGIN_SITE), os.environ.get("PYTHONPATH", "")]))
    done = subprocess.run([sys.executable, "-m", "ovos_skill_persona_fallback.cli", "ask", "--lang", "pt-PT",
                           "--persona", str(persona), "--db", str(tmp_path / "c.db"), "olá"],
                          env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.splitlines() == ["[pt] 404"]


def test_answer_instruction_asks_in_the_users_language_without_translating(plugin, box, engine_with):
    solver = box.add("scripted", supported_langs=frozenset({"en"})).enqueue("A capital é Paris.")
    persona = make_persona(system_prompt="You are {name}.", answer_instruction="Always answer in {lang}.")
    engine = engine_with(persona, translator=Translator(dict(PLUGINS)))
    answer = engine.ask("Qual é a capital de França?", session_id="s", lang="pt-PT")
    assert answer.sentences == ["A capital é Paris."]
    assert solver.calls[0].messages == [ChatMessage(Role.SYSTEM, "You are Ada.\n\nAlways answer in Portuguese."),
                                        ChatMessage(Role.USER, "Qual é a capital de França?")]
    assert solver.calls[0].lang == "pt-pt" and plugin.CALLS == []


def test_answer_instruction_is_not_added_when_the_solver_knows_the_language(plugin, box, engine_with):
    solver = box.add("scripted", supported_langs=frozenset({"en", "pt"})).enqueue("Paris.").enqueue("Paris.")
    engine = engine_with(make_persona(answer_instruction="Always answer in {lang}."),
                         translator=Translator(dict(PLUGINS)))
    engine.ask("Qual é a capital?", session_id="s", lang="pt-PT")
    engine.ask("What is the capital?", session_id="t", lang="en-US")
    assert [call.messages[0].role for call in solver.calls] == [Role.USER, Role.USER]
