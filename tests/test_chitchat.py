"""ChitChatSolver: shipped brains in five languages, declining, language choice, extra brains, cancel."""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import FrozenSet, List, Union

import pytest

from ovos_skill_persona_fallback.solvers import chitchat
from ovos_skill_persona_fallback.solvers.base import (CancelToken, ChatMessage, Role, SolverCancelled,
                                                      SolverConfigError, SolverContext)
from ovos_skill_persona_fallback.solvers.chitchat import ChitChatSolver, normalize_text

NAME = "Jarvis"

GREETINGS = {
    "en-us": frozenset({"Hello! How can I help you?", "Hi there! What can I do for you?",
                        "Hey! What would you like to talk about?"}),
    "pt-pt": frozenset({"Olá! Em que posso ajudar?", "Olá! Diga-me o que precisa.",
                        "Viva! Em que posso ser útil?"}),
    "es-es": frozenset({"¡Hola! ¿En qué puedo ayudarte?", "¡Hola! Dime qué necesitas.",
                        "¡Buenas! ¿Qué puedo hacer por ti?"}),
    "de-de": frozenset({"Hallo! Wie kann ich dir helfen?", "Hallo! Was kann ich für dich tun?",
                        "Hi! Worüber möchtest du reden?"}),
    "fr-fr": frozenset({"Bonjour ! Comment puis-je vous aider ?", "Salut ! Que puis-je faire pour vous ?",
                        "Coucou ! De quoi voulez-vous parler ?"}),
}

JOKES = {
    "en-us": frozenset({
        "Why don't skeletons fight each other? They don't have the guts.",
        "What do you call a fake noodle? An impasta.",
        "Why did the scarecrow win an award? Because he was outstanding in his field.",
        "I'm reading a book about anti-gravity. It's impossible to put down.",
    }),
    "pt-pt": frozenset({
        "Porque é que o livro de matemática andava triste? Porque tinha demasiados problemas.",
        "O que é que o zero disse ao oito? Que cinto tão giro!",
        "O que é que o pato disse à pata? Vem quá!",
    }),
    "es-es": frozenset({
        "¿Por qué el libro de matemáticas estaba triste? Porque tenía demasiados problemas.",
        "¿Qué le dijo el cero al ocho? ¡Bonito cinturón!",
        "¿Cuál es el colmo de un electricista? Que su mujer se llame Luz y sus hijos le sigan la corriente.",
    }),
    "de-de": frozenset({
        "Was ist orange und läuft durch den Wald? Eine Wanderine.",
        "Treffen sich zwei Magnete. Sagt der eine: Was soll ich heute bloß anziehen?",
        "Warum war das Mathebuch traurig? Es hatte zu viele Probleme.",
    }),
    "fr-fr": frozenset({
        "Pourquoi les plongeurs plongent-ils toujours en arrière ? Parce que sinon, ils tombent dans le bateau.",
        "Que dit un escargot quand il croise une limace ? Oh, un nudiste !",
        "Quel est le comble pour un électricien ? De ne pas être au courant.",
    }),
}

HOW_ARE_YOU = {
    "en-us": "I'm doing great, thanks for asking! How about you?",
    "pt-pt": "Estou ótimo, obrigado por perguntar! E consigo?",
    "es-es": "¡Muy bien, gracias por preguntar! ¿Y tú?",
    "de-de": "Mir geht es gut, danke der Nachfrage! Und dir?",
    "fr-fr": "Je vais très bien, merci de demander ! Et vous ?",
}
WHO = {
    "en-us": f"I'm {NAME}, your voice assistant.",
    "pt-pt": f"Sou {NAME}, o seu assistente de voz.",
    "es-es": f"Soy {NAME}, tu asistente de voz.",
    "de-de": f"Ich bin {NAME}, dein Sprachassistent.",
    "fr-fr": f"Je suis {NAME}, votre assistant vocal.",
}
ABILITIES = {
    "en-us": "I can chat with you and answer your questions. Just ask me anything!",
    "pt-pt": "Posso conversar consigo e responder às suas perguntas. Pergunte-me o que quiser!",
    "es-es": "Puedo charlar contigo y responder a tus preguntas. ¡Pregúntame lo que quieras!",
    "de-de": "Ich kann mit dir plaudern und deine Fragen beantworten. Frag mich einfach etwas!",
    "fr-fr": "Je peux discuter avec vous et répondre à vos questions. Demandez-moi ce que vous voulez !",
}
THANKS = {
    "en-us": "You're welcome! Happy to help.",
    "pt-pt": "De nada! Estou sempre aqui para ajudar.",
    "es-es": "¡De nada! Para eso estoy.",
    "de-de": "Gern geschehen! Ich helfe dir jederzeit gern.",
    "fr-fr": "De rien ! Je suis toujours là pour vous aider.",
}
GOODBYE = {
    "en-us": "Goodbye! Talk to you soon.",
    "pt-pt": "Adeus! Até à próxima.",
    "es-es": "¡Adiós! Hasta pronto.",
    "de-de": "Tschüss! Bis bald.",
    "fr-fr": "Au revoir ! À bientôt.",
}

Expected = Union[str, FrozenSet[str]]

CASES = [
    # --- English
    ("en-us", "Hello!", GREETINGS["en-us"]),  # plain greeting, random reply
    ("en-us", "Good morning", GREETINGS["en-us"]),  # time-of-day greeting redirects to hello
    ("en-us", "How are you doing today?", HOW_ARE_YOU["en-us"]),  # optional words in the trigger
    ("en-us", "How's it going?", HOW_ARE_YOU["en-us"]),  # apostrophe + "how s" substitution
    ("en-us", "Who are you?", WHO["en-us"]),  # identity uses the persona name
    ("en-us", "What's your name?", WHO["en-us"]),  # "what s" substitution to "what is"
    ("en-us", "What can you do?", ABILITIES["en-us"]),  # abilities
    ("en-us", "Thank you very much!", THANKS["en-us"]),  # thanks with an optional tail
    ("en-us", "Bye bye", GOODBYE["en-us"]),  # goodbye
    ("en-us", "Tell me a joke", JOKES["en-us"]),  # random joke
    ("en-us", "Could you tell me another joke, please?", JOKES["en-us"]),  # politer joke request
    # --- European Portuguese
    ("pt-pt", "Olá!", GREETINGS["pt-pt"]),  # accented greeting
    ("pt-pt", "Boa tarde", GREETINGS["pt-pt"]),  # time-of-day greeting
    ("pt-pt", "Como estás?", HOW_ARE_YOU["pt-pt"]),  # how are you, informal
    ("pt-pt", "Quem és tu?", WHO["pt-pt"]),  # identity
    ("pt-pt", "Qual é o teu nome?", WHO["pt-pt"]),  # name question
    ("pt-pt", "O que é que sabes fazer?", ABILITIES["pt-pt"]),  # abilities, "é que" form
    ("pt-pt", "Muito obrigado!", THANKS["pt-pt"]),  # thanks
    ("pt-pt", "Até à próxima!", GOODBYE["pt-pt"]),  # goodbye with accents and crasis
    ("pt-pt", "Conta-me uma anedota", JOKES["pt-pt"]),  # hyphenated clitic, "anedota"
    # --- Spanish
    ("es-es", "¡Hola!", GREETINGS["es-es"]),  # inverted exclamation marks stripped
    ("es-es", "Buenos días", GREETINGS["es-es"]),  # time-of-day greeting
    ("es-es", "¿Qué tal estás?", HOW_ARE_YOU["es-es"]),  # how are you
    ("es-es", "¿Cómo te llamas?", WHO["es-es"]),  # name question
    ("es-es", "¿Qué sabes hacer?", ABILITIES["es-es"]),  # abilities
    ("es-es", "¡Muchas gracias!", THANKS["es-es"]),  # thanks
    ("es-es", "Hasta mañana", GOODBYE["es-es"]),  # goodbye, ñ folded to n
    ("es-es", "Cuéntame un chiste", JOKES["es-es"]),  # joke
    # --- German
    ("de-de", "Hallo!", GREETINGS["de-de"]),  # greeting
    ("de-de", "Grüß Gott", GREETINGS["de-de"]),  # umlaut and sharp s folded
    ("de-de", "Wie geht's?", HOW_ARE_YOU["de-de"]),  # contraction substituted
    ("de-de", "Wie heißt du?", WHO["de-de"]),  # name question with sharp s
    ("de-de", "Was kannst du alles?", ABILITIES["de-de"]),  # abilities
    ("de-de", "Danke schön!", THANKS["de-de"]),  # thanks
    ("de-de", "Mach's gut", GOODBYE["de-de"]),  # goodbye contraction
    ("de-de", "Erzähl mir einen Witz", JOKES["de-de"]),  # joke
    # --- French
    ("fr-fr", "Bonjour !", GREETINGS["fr-fr"]),  # greeting with French spacing
    ("fr-fr", "Comment ça va ?", HOW_ARE_YOU["fr-fr"]),  # cedilla folded
    ("fr-fr", "Comment t'appelles-tu ?", WHO["fr-fr"]),  # elision and inversion
    ("fr-fr", "Qui êtes-vous ?", WHO["fr-fr"]),  # formal identity question
    ("fr-fr", "Qu'est-ce que tu sais faire ?", ABILITIES["fr-fr"]),  # abilities
    ("fr-fr", "Merci beaucoup !", THANKS["fr-fr"]),  # thanks
    ("fr-fr", "À bientôt", GOODBYE["fr-fr"]),  # goodbye
    ("fr-fr", "Raconte-moi une blague", JOKES["fr-fr"]),  # joke
]


def ask(solver: ChitChatSolver, text: str, lang: str, cancel: CancelToken = None) -> List[str]:
    """Drain the solver for one user message."""
    messages = [ChatMessage(Role.SYSTEM, "You are helpful."), ChatMessage(Role.USER, text)]
    return list(solver.stream(messages, lang=lang, cancel=cancel or CancelToken(), conversation_id="conv-1"))


def make(name: str = NAME, persona_lang: str = "en-us", **config: object) -> ChitChatSolver:
    return ChitChatSolver(config, SolverContext(persona_name=name, persona_lang=persona_lang))


@pytest.mark.parametrize("lang,text,expected", CASES)
def test_each_intent_answers_in_each_language(lang: str, text: str, expected: Expected) -> None:
    answer = ask(make(), text, lang)
    assert len(answer) == 1
    if isinstance(expected, str):
        assert answer[0] == expected
    else:
        assert answer[0] in expected


@pytest.mark.parametrize("lang", sorted(WHO))
def test_who_are_you_names_the_persona(lang: str) -> None:
    solver = make(name="Ada")
    question = {"en-us": "who are you", "pt-pt": "quem es tu", "es-es": "quien eres",
                "de-de": "wer bist du", "fr-fr": "qui es tu"}[lang]
    assert "Ada" in ask(solver, question, lang)[0]


def test_nameless_persona_gets_a_default_name() -> None:
    assert ask(make(name=""), "What is your name?", "en-us") == [f"I'm {chitchat.DEFAULT_BOT_NAME}, your voice assistant."]


@pytest.mark.parametrize("lang,text", [
    ("en-us", "What is the capital of France?"),  # a real question: decline
    ("en-us", "Hi, what's the weather like?"),  # starts like a greeting but asks more: decline
    ("pt-pt", "Qual é a capital de França?"),  # Portuguese real question
    ("es-es", "¿Cuál es la capital de Francia?"),  # Spanish real question
    ("de-de", "Was ist die Hauptstadt von Frankreich?"),  # German real question
    ("fr-fr", "Quelle est la capitale de la France ?"),  # French real question
    ("en-us", "?!"),  # only punctuation: nothing left to match
])
def test_unmatched_question_yields_nothing(lang: str, text: str) -> None:
    assert ask(make(), text, lang) == []


def test_no_user_message_yields_nothing() -> None:
    solver = make()
    assert list(solver.stream([ChatMessage(Role.SYSTEM, "x")], lang="en-us", cancel=CancelToken())) == []


def test_supported_langs_are_the_brains_shipped() -> None:
    assert make().supported_langs == frozenset({"en", "pt", "es", "de", "fr"})
    assert make().supports_history is False


def test_brazilian_portuguese_uses_the_portuguese_brain() -> None:
    assert ask(make(), "Olá", "pt-BR")[0] in GREETINGS["pt-pt"]


def test_unknown_language_falls_back_to_the_persona_language() -> None:
    solver = make(persona_lang="de-de")
    assert ask(solver, "Hallo", "ja")[0] in GREETINGS["de-de"]


def test_unknown_language_and_persona_language_fall_back_to_english() -> None:
    solver = make(persona_lang="ja")
    assert ask(solver, "Hello", "ko")[0] in GREETINGS["en-us"]


def test_extra_brain_file_adds_rules_and_overrides_shipped_ones(tmp_path: Path) -> None:
    brain = tmp_path / "extra.rive"
    brain.write_text("! version = 2.0\n\n+ what is your favourite colour\n- Blue, like the sky.\n\n"
                     "+ hello\n- Ahoy, matey!\n", encoding="utf-8")
    solver = make(brain=str(brain))
    assert ask(solver, "What's your favourite colour?", "en-us") == ["Blue, like the sky."]
    assert ask(solver, "Hello!", "en-us") == ["Ahoy, matey!"]  # author rules load first and win
    assert ask(solver, "Thanks", "en-us") == [THANKS["en-us"]]  # shipped rules still answer
    assert ask(solver, "What is the meaning of life?", "en-us") == []  # still declines
    assert ask(make(), "What's your favourite colour?", "en-us") == []  # other personas unaffected


def test_extra_brain_folder_is_loaded(tmp_path: Path) -> None:
    (tmp_path / "pets.rive").write_text("+ do you like cats\n- I adore cats.\n", encoding="utf-8")
    assert ask(make(brain=str(tmp_path)), "Do you like cats?", "fr-fr") == ["I adore cats."]


def test_missing_brain_path_is_a_config_error(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.rive"
    with pytest.raises(SolverConfigError, match="nowhere.rive"):
        make(brain=str(missing))


def test_empty_brain_folder_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(SolverConfigError, match="no .rive files"):
        make(brain=str(tmp_path))


def test_brain_with_bad_syntax_is_a_config_error(tmp_path: Path) -> None:
    brain = tmp_path / "bad.rive"
    brain.write_text("+ Hello There\n- hi\n", encoding="utf-8")  # upper case is invalid in a trigger
    solver = make(brain=str(brain))
    with pytest.raises(SolverConfigError, match="bad.rive") as caught:
        ask(solver, "hello", "en-us")
    assert caught.value.__cause__ is not None


def test_cancelled_token_raises_solver_cancelled() -> None:
    # Documented choice: a token cancelled before the answer raises SolverCancelled, like the
    # failure solver, so the chain knows it was a stop and not a decline.
    cancel = CancelToken()
    cancel.cancel()
    with pytest.raises(SolverCancelled):
        ask(make(), "Hello", "en-us", cancel)


def test_user_state_is_not_kept_between_replies() -> None:
    solver = make()
    for number in range(5):
        list(solver.stream([ChatMessage(Role.USER, "hello")], lang="en-us", cancel=CancelToken(),
                           conversation_id=f"conv-{number}"))
    brain = solver._brain_for("en-us")
    assert brain._rs.get_uservars() == {}


def test_brains_are_cached_and_shared_between_solvers() -> None:
    assert make()._brain_for("fr-fr") is make(name="Other")._brain_for("fr-FR")


def test_concurrent_requests_get_their_own_persona_names() -> None:
    jobs = [(name, lang) for name in ("Ada", "Bob", "Cy") for lang in ("en-us", "de-de")] * 10
    question = {"en-us": "who are you", "de-de": "wer bist du"}

    def run(job: tuple) -> bool:
        name, lang = job
        return name in ask(make(name=name), question[lang], lang)[0]

    with ThreadPoolExecutor(max_workers=8) as pool:
        assert all(pool.map(run, jobs))


@pytest.mark.parametrize("raw,expected", [
    ("Hello, World!", "hello world"),  # punctuation becomes space, lower-cased
    ("  Qu'est-ce   que ", "qu est ce que"),  # elision and hyphen split words
    ("Grüß Gott", "gruss gott"),  # umlaut dropped, sharp s folded to ss
    ("¿Cómo estás?", "como estas"),  # accents and inverted marks stripped
    ("Até à próxima", "ate a proxima"),  # Portuguese accents
    ("", ""),  # empty stays empty
])
def test_normalize_text(raw: str, expected: str) -> None:
    assert normalize_text(raw) == expected
