"""Character Cards V1/V2/V3, JSON and PNG: the exact Persona and the exact messages a solver gets."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from persona_samples import CARD_V2, CARD_V3, card_chunk, png
from ovos_skill_persona_fallback.lorebook import LoreEntry, Lorebook
from ovos_skill_persona_fallback.persona import Persona, PersonaError, load_persona_file
from ovos_skill_persona_fallback.solvers.base import ChatMessage, Role

KNOWN = frozenset({"failure", "chitchat", "openai", "llama-cpp", "scripted"})
SYSTEM_PROMPT = ("You are {name}. Stay in character and reply to {user}. Never break character.\n\n"
                 "{name} is a guardian of the forest glade.\n\n"
                 "{name}'s personality: kind, protective\n\n"
                 "Scenario: {user} wakes up in {name}'s cottage.")
CONTEXT = "Example dialogue:\nUser: Who are you?\n{name}: I am {name}, keeper of this glade."
LOREBOOK = Lorebook(entries=(
    LoreEntry(keys=("glade",), content="The glade is hidden by old magic.", insertion_order=1, priority=5),
    LoreEntry(keys=("amulet",), content="{name} wears a silver amulet."),
    LoreEntry(keys=(), content="Magic exists.", constant=True, insertion_order=2),
    LoreEntry(keys=("glade",), content="Never shown: disabled.", enabled=False, insertion_order=3),
), scan_depth=2, token_budget=14)
EXPECTED = Persona(name="Seraphina", solvers=("scripted",), system_prompt=SYSTEM_PROMPT, context=CONTEXT,
                   post_history_instructions="Reply in at most two sentences.",
                   greetings=("*{name} smiles* You're awake, {user}.", "Oh, hello {user}!"), lorebook=LOREBOOK)


def load(path: Path, **options) -> Persona:
    return load_persona_file(path, KNOWN, default_solvers=options.pop("default_solvers", ("scripted",)))


def test_v2_json_card_maps_every_field(tmp_path):
    path = tmp_path / "seraphina.json"
    path.write_text(json.dumps(CARD_V2), encoding="utf-8")
    persona = load(path)
    assert persona == EXPECTED
    assert persona.warnings == (
        f"{path}: character_book.entries: ignored fields: comment, extensions, id",
        f"{path}: character_book: ignored fields: extensions, name, recursive_scanning",
        f"{path}: ignored fields: character_version, creator, creator_notes, extensions, tags",
    )


def test_v2_png_card_reads_the_chara_chunk(tmp_path):
    path = tmp_path / "seraphina.png"
    path.write_bytes(png([("Software", b"paint"), card_chunk("chara", CARD_V2)]))
    assert load(path) == EXPECTED


def test_v3_png_prefers_ccv3_over_chara_and_uses_the_nickname(tmp_path):
    path = tmp_path / "both.png"
    path.write_bytes(png([card_chunk("chara", CARD_V2), card_chunk("ccv3", CARD_V3)]))
    persona = load(path)
    assert persona.name == "Seraphina V3"
    assert persona.system_prompt == SYSTEM_PROMPT.replace("{name}", "Sera")
    assert persona.greetings == ("*Sera smiles* You're awake, {user}.", "Oh, hello {user}!")
    assert persona.warnings[-1] == (f"{path}: ignored fields: assets, character_version, creation_date, creator, "
                                    f"creator_notes, extensions, group_only_greetings, modification_date, tags")


def test_v1_card_and_macros_without_system_prompt(tmp_path):
    path = tmp_path / "v1.json"
    path.write_text(json.dumps({"name": "Bob", "description": "<BOT> likes <USER>. {{// a comment}}",
                                "personality": "", "scenario": "", "first_mes": "Yo {{USER}}",
                                "mes_example": ""}), encoding="utf-8")
    persona = load(path)
    assert persona == Persona(name="Bob", solvers=("scripted",), greetings=("Yo {user}",), system_prompt=(
        "You are {name}. Stay in character and reply to {user}.\n\n{name} likes {user}."))


def test_card_answers_through_the_default_chain_with_lorebook_and_post_history(tmp_path, box, engine_with):
    path = tmp_path / "seraphina.json"
    path.write_text(json.dumps(CARD_V2), encoding="utf-8")
    solver = box.add("scripted").enqueue("Rest now.").enqueue("It is.").enqueue("Yes.")
    engine = engine_with(load(path))
    system = SYSTEM_PROMPT.replace("{name}", "Seraphina").replace("{user}", "User") + "\n\n" + \
        CONTEXT.replace("{name}", "Seraphina")
    after = ChatMessage(Role.SYSTEM, "Reply in at most two sentences.")
    engine.ask("Where am I?", session_id="s")
    # only the constant entry: no key in the question
    assert solver.calls[0].messages == [ChatMessage(Role.SYSTEM, system + "\n\nMagic exists."), after,
                                        ChatMessage(Role.USER, "Where am I?")]
    engine.ask("Is the Glade safe?", session_id="s")
    # "glade" (case-insensitive, whole word) activates its entry; it comes before the constant one
    # (insertion order); the post-history instructions follow the remembered turn
    assert solver.calls[1].messages == [
        ChatMessage(Role.SYSTEM, system + "\n\nThe glade is hidden by old magic.\n\nMagic exists."),
        ChatMessage(Role.USER, "Where am I?"), ChatMessage(Role.ASSISTANT, "Rest now."), after,
        ChatMessage(Role.USER, "Is the Glade safe?")]
    engine.ask("And your amulet?", session_id="s")
    # scan depth 2: "It is." and this question; "glade" is out of reach, the amulet fits the budget
    assert solver.calls[2].messages[0] == ChatMessage(
        Role.SYSTEM, system + "\n\nSeraphina wears a silver amulet.\n\nMagic exists.")
    assert all("SECRET-NOTES" not in m.content for call in solver.calls for m in call.messages)


def test_token_budget_keeps_higher_priority_entries(tmp_path, box, engine_with):
    path = tmp_path / "seraphina.json"
    path.write_text(json.dumps(CARD_V2), encoding="utf-8")
    solver = box.add("scripted").enqueue("Hm.")
    engine_with(load(path)).ask("The glade and the amulet?", session_id="s")
    # budget 14 estimated tokens: "Magic exists." (4, constant) + the glade (9, priority 5); the
    # amulet (8) no longer fits
    assert solver.calls[0].messages[0].content.endswith(
        "\n\nThe glade is hidden by old magic.\n\nMagic exists.")


def test_selective_and_regex_and_decorator_entries(tmp_path, box, engine_with):
    book = {"entries": [
        {"keys": ["sword"], "secondary_keys": ["fire"], "selective": True, "content": "Flame sword.",
         "insertion_order": 0},
        {"keys": [r"drag(on|ons)\b"], "use_regex": True, "content": "Dragons sleep.", "insertion_order": 1},
        {"keys": ["never"], "content": "@@activate\nAlways here.", "insertion_order": 2},
        {"keys": ["cat"], "content": "Cats purr.", "insertion_order": 3},
    ]}
    card = {"spec": "chara_card_v2", "data": {"name": "Lore", "character_book": book}}
    path = tmp_path / "lore.json"
    path.write_text(json.dumps(card), encoding="utf-8")
    solver = box.add("scripted").enqueue("a").enqueue("b")
    engine = engine_with(load(path))
    engine.ask("A sword, dragons and a category", session_id="s")  # no "fire"; "cat" is not a word here
    engine.ask("A sword on fire", session_id="t")
    first, second = (call.messages[0].content.split("\n\n")[1:] for call in solver.calls)
    assert first == ["Dragons sleep.", "Always here."]
    assert second == ["Flame sword.", "Always here."]


BAD_CARDS = [
    # (file name, bytes, the problem after "<path>: ")
    ("wrongspec.json", json.dumps({"spec": "chara_card_v9", "data": {"name": "X"}}).encode(),
     "spec: unsupported card spec 'chara_card_v9' (readable: chara_card_v2, chara_card_v3)"),
    ("nodata.json", json.dumps({"spec": "chara_card_v2", "data": "x"}).encode(),
     "data: must hold the card's fields as a mapping, not str"),
    ("plain.png", png([("Software", b"paint")]),
     "is a PNG image with no character card in it (no 'ccv3' or 'chara' text chunk)"),
    ("cut.png", png([card_chunk("chara", CARD_V2)])[:80], "is a truncated PNG (chunk 'tEXt' is cut off)"),
    ("notb64.png", png([("chara", b"!!!not base64!!!")]),
     "the PNG's 'chara' chunk is not base64-encoded card JSON: Only base64 data is allowed"),
    ("badtype.json", json.dumps({"spec": "chara_card_v2", "data": {"name": "X", "first_mes": 3,
                                                                  "alternate_greetings": [1]}}).encode(),
     "alternate_greetings: must be a list of text"),
]


@pytest.mark.parametrize("name,content,problem", BAD_CARDS, ids=[row[0] for row in BAD_CARDS])
def test_bad_cards_are_one_clear_line(tmp_path, name, content, problem):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(PersonaError) as caught:
        load(path)
    assert caught.value.problems == [f"{path}: {problem}"]
