"""Defects found by running the landed engine as a user would; each test failed before its fix."""
from __future__ import annotations

import logging
import time

import pytest

from conftest import make_persona
from ovos_skill_persona_fallback.persona import MemorySettings
from ovos_skill_persona_fallback.reasoning import ThinkFilter, strip_thinking
from ovos_skill_persona_fallback.solvers.base import ChatMessage, Role, SolverUnavailable
from ovos_skill_persona_fallback.speech import split_sentences


# -- answer_instruction without a translation plugin --------------------------------------------

def test_answer_instruction_applies_with_no_translator(box, engine_with):
    solver = box.add("scripted").enqueue("Olá.")
    engine = engine_with(make_persona(system_prompt="You are Ada.", lang="en-us",
                                      answer_instruction="Always answer in {lang}."))
    assert engine.translator is None
    engine.ask("Quem és tu?", session_id="s", lang="pt-pt")
    assert solver.calls[0].messages == [
        ChatMessage(Role.SYSTEM, "You are Ada.\n\nAlways answer in Portuguese."),
        ChatMessage(Role.USER, "Quem és tu?")]
    assert solver.calls[0].lang == "pt-pt"


def test_answer_instruction_is_not_added_for_the_persona_language(box, engine_with):
    solver = box.add("scripted").enqueue("Hi.")
    engine = engine_with(make_persona(system_prompt="You are Ada.", answer_instruction="Answer in {lang}."))
    engine.ask("Who are you?", session_id="s", lang="en-gb")
    assert solver.calls[0].messages[0] == ChatMessage(Role.SYSTEM, "You are Ada.")


def test_answer_instruction_skips_question_only_solvers(box, engine_with):
    solver = box.add("scripted", supports_history=False).enqueue("Olá.")
    engine = engine_with(make_persona(answer_instruction="Answer in {lang}."))
    engine.ask("Olá", session_id="s", lang="pt-pt")
    assert solver.calls[0].messages == [ChatMessage(Role.USER, "Olá")]


# -- forgetting wins over an answer in flight ---------------------------------------------------

@pytest.mark.parametrize("how", ["forget", "end_conversation"])
def test_forget_during_an_answer_leaves_nothing_stored(box, engine_with, memory, how):
    box.add("scripted").enqueue("First sentence. ", "Second sentence.", delay=0.3)
    engine = engine_with(make_persona())
    stream = iter(engine.stream("private question", session_id="s"))
    assert next(stream) == "First sentence."
    getattr(engine, how)("s")
    rest = list(stream)
    assert memory.count_turns("s") == 0
    assert rest in ([], ["Second sentence."])  # end_conversation also stops; forget lets it finish


def test_forget_of_another_persona_keeps_this_answer(box, engine_with, memory):
    box.add("scripted").enqueue("One. ", "Two.", delay=0.2)
    engine = engine_with(make_persona())
    stream = iter(engine.stream("q", session_id="s"))
    next(stream)
    engine.forget("s", "Someone Else")
    list(stream)
    assert memory.count_turns("s") == 1


def test_forget_of_one_session_keeps_another(box, engine_with, memory):
    box.add("scripted").enqueue("One. ", "Two.", delay=0.2)
    engine = engine_with(make_persona())
    stream = iter(engine.stream("q", session_id="kept"))
    next(stream)
    engine.forget("other")
    list(stream)
    assert memory.count_turns("kept") == 1


# -- reasoning models ---------------------------------------------------------------------------

def test_thinking_is_not_spoken_but_kept_in_memory(box, engine_with, memory):
    box.add("scripted").enqueue("<thi", "nk>The user wants. A greeting.</th", "ink>\n\nHello there. ",
                                "Nice <think>hidden</think>day.")
    engine = engine_with(make_persona())
    answer = engine.ask("hi", session_id="s")
    assert answer.sentences == ["Hello there.", "Nice day."]
    [turn] = memory.history("s", "Ada", max_turns=5)
    assert turn.answer.startswith("<think>The user wants.")


@pytest.mark.parametrize("chunks,visible", [
    (["<think>a</think>b"], "b"),                      # whole block in one chunk
    (["<", "t", "h", "i", "n", "k", ">x<", "/think>y"], "y"),  # tag split char by char
    (["a <THINK>x</THINK> b"], "a  b"),                # case-insensitive
    (["a <thinking>x</thinking>b"], "a b"),            # the longer tag name
    (["<think>never closed"], ""),                     # unclosed: the rest is thinking
    (["x < y and a<b"], "x < y and a<b"),              # comparisons are text
    (["ends with <th"], "ends with <th"),              # a tail that never became a tag
    (["<reasoning>r</reasoning>ok"], "ok"),            # servers that inline reasoning
])
def test_think_filter_table(chunks, visible):
    think = ThinkFilter()
    assert "".join(think.feed(chunk) for chunk in chunks) + think.flush() == visible


def test_strip_thinking_equals_streamed_for_every_split():
    text = "A<think>b<c</think>d<think>e"
    for cut in range(len(text) + 1):
        think = ThinkFilter()
        assert think.feed(text[:cut]) + think.feed(text[cut:]) + think.flush() == strip_thinking(text) == "Ad"


# -- sentence splitting per language -------------------------------------------------------------

@pytest.mark.parametrize("lang,text,expected", [
    ("pt-pt", "O Sr. Silva chegou. Ele disse olá.", ["O Sr. Silva chegou.", "Ele disse olá."]),
    ("pt-br", "A Dra. Costa e a Profa. Lima vieram. Bom dia.", ["A Dra. Costa e a Profa. Lima vieram.", "Bom dia."]),
    ("pt-pt", "Veja a pág. 12 do livro. Obrigado.", ["Veja a pág. 12 do livro.", "Obrigado."]),
    ("es-es", "La Sra. García llegó. Hola.", ["La Sra. García llegó.", "Hola."]),
    ("es-es", "El Dr. Pérez y Ud. están aquí. Bien.", ["El Dr. Pérez y Ud. están aquí.", "Bien."]),
    ("fr-fr", "Mme. Dupont est là. Bonjour.", ["Mme. Dupont est là.", "Bonjour."]),
    ("fr-fr", "M. Martin et Mlle. Roux sont partis. Fin.", ["M. Martin et Mlle. Roux sont partis.", "Fin."]),
    ("de-de", "Der 3. Oktober ist ein Feiertag. Gut.", ["Der 3. Oktober ist ein Feiertag.", "Gut."]),
    ("de-de", "Obst, z. B. Äpfel, ist gesund. Ja.", ["Obst, z. B. Äpfel, ist gesund.", "Ja."]),
    ("de-de", "Das heißt, d. h. alles. Hr. Meier kommt.", ["Das heißt, d. h. alles.", "Hr. Meier kommt."]),
    ("en-us", "Mr. Smith came. It is No. 5. Then he left.", ["Mr. Smith came.", "It is No. 5.", "Then he left."]),
    ("en-us", "I counted to 3. Then I stopped.", ["I counted to 3.", "Then I stopped."]),
])
def test_sentences_split_per_language(lang, text, expected):
    assert split_sentences(text, lang) == expected


def test_engine_splits_in_the_solver_language(box, engine_with):
    box.add("scripted").enqueue("O Sr. ", "Silva chegou. Ele disse olá.")
    engine = engine_with(make_persona(lang="pt-pt"))
    assert engine.ask("q", session_id="s", lang="pt-pt").sentences == ["O Sr. Silva chegou.", "Ele disse olá."]


# -- failures are diagnosable --------------------------------------------------------------------

def _crash() -> None:
    raise RuntimeError("plugin exploded")


def test_solver_failure_logs_its_traceback_once(box, engine_with, caplog):
    failing = box.add("broken")
    box.add("scripted")
    engine = engine_with(make_persona(solvers=("broken", "scripted")))
    for _ in range(3):
        try:
            _crash()
        except RuntimeError as err:
            failing.enqueue(error=SolverUnavailable("down because of the plugin"))
            failing.replies[-1].error.__cause__ = err
        box.solvers["scripted"].enqueue("Fine.")
        with caplog.at_level(logging.INFO):
            assert engine.ask("q", session_id="s").sentences == ["Fine."]
    tracebacks = [r for r in caplog.records if "Traceback" in r.getMessage()]
    assert len(tracebacks) == 1
    assert "_crash" in tracebacks[0].getMessage() and tracebacks[0].levelno == logging.WARNING


# -- memory settings: one rule -------------------------------------------------------------------

def test_persona_memory_wins_over_the_skill_default(box, engine_with, memory):
    solver = box.add("scripted")
    engine = engine_with(make_persona(memory=MemorySettings(max_turns=20)),
                         memory_defaults=MemorySettings(max_turns=2, max_age_minutes=0))
    for index in range(4):
        solver.enqueue(f"a{index}.")
        engine.ask(f"q{index}", session_id="s")
    assert memory.count_turns("s") == 4


def test_skill_default_applies_where_the_persona_sets_none(box, engine_with, memory):
    solver = box.add("scripted")
    engine = engine_with(make_persona(), memory_defaults=MemorySettings(max_turns=2, max_age_minutes=0))
    for index in range(4):
        solver.enqueue(f"a{index}.")
        engine.ask(f"q{index}", session_id="s")
    assert [m.content for m in solver.calls[-1].messages] == ["q1", "a1.", "q2", "a2.", "q3"]
    assert engine.memory_limits(engine.find_persona("Ada")) == MemorySettings(2, 0)


# -- personas by spoken name ---------------------------------------------------------------------

@pytest.mark.parametrize("spoken,found", [
    ("remote", "Remote Assistant"),   # one word of a longer name
    ("the remote assistant", "Remote Assistant"),
    ("ava", "Ava"),
    ("eva", "Ava"),                   # misheard
    ("pirate", None),                 # nothing like it
])
def test_fuzzy_persona_names(box, engine_with, spoken, found):
    engine = engine_with(make_persona("Ava"), make_persona("Remote Assistant"), make_persona("Bob"))
    persona = engine.find_persona(spoken, fuzzy=True)
    assert (persona.name if persona else None) == found


# -- reloading personas never closes a chain that is answering -----------------------------------

class _Closing:
    closed = False


def test_reload_closes_a_replaced_chain_only_after_its_answer(box, engine_with):
    solver = box.add("scripted").enqueue("One. ", "Two. ", "Three.", delay=0.2)
    closes = []
    solver.close = lambda: closes.append(time.monotonic())  # type: ignore[method-assign]
    engine = engine_with(make_persona())
    stream = iter(engine.stream("q", session_id="s"))
    assert next(stream) == "One."
    engine.add_persona(make_persona(system_prompt="changed"))
    assert closes == []
    assert list(stream) == ["Two.", "Three."]
    assert len(closes) == 1


def test_reload_closes_an_idle_chain_at_once(box, engine_with):
    solver = box.add("scripted").enqueue("One.")
    closes = []
    solver.close = lambda: closes.append(1)  # type: ignore[method-assign]
    engine = engine_with(make_persona())
    engine.ask("q", session_id="s")
    engine.add_persona(make_persona(system_prompt="changed"))
    assert closes == [1]
