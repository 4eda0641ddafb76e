"""``persona-fallback convert``: the native YAML of any format loads back into an equal Persona;
greetings are said on a switch; a card persona answers through the CLI and the skill."""
from __future__ import annotations

import io
import json
import sys
import time
from pathlib import Path

import pytest
import yaml
from ovos_bus_client.message import Message
from ovos_bus_client.session import Session
from ovos_utils.fakebus import FakeBus

from persona_samples import CARD_V2, CARD_V3, LOLLMS, OVOS_LLM, OVOS_OLDSCHOOL, TAVUS, card_chunk, png
from ovos_skill_persona_fallback import SKILL_ID, PersonaFallbackSkill, cli
from ovos_skill_persona_fallback.engine import PersonaEngine
from ovos_skill_persona_fallback.languages import dialog_lines
from ovos_skill_persona_fallback.memory import ConversationMemory
from ovos_skill_persona_fallback.persona import load_persona_file
from ovos_skill_persona_fallback.solvers import known_solver_ids


def sample_files(tmp_path: Path) -> dict:
    files = {
        "card.png": png([card_chunk("ccv3", CARD_V3)]),
        "card.json": json.dumps(CARD_V2).encode(),
        "ovos.json": json.dumps(OVOS_LLM).encode(),
        "oldschool.json": json.dumps(OVOS_OLDSCHOOL).encode(),
        "tavus.json": json.dumps(TAVUS).encode(),
        "config.yaml": LOLLMS.encode(),
        "native.yaml": b"name: N\nsolvers: [failure]\ngeneration: {seed: 3, stop: [x]}\nthinking: {after_seconds: 1}\n"
                       b"voice: {id: v}\nmemory: {max_age_minutes: 0}\n",
    }
    paths = {}
    for name, content in files.items():
        path = tmp_path / name
        path.write_bytes(content)
        paths[name] = path
    return paths


def run_cli(*argv: str):
    out = io.StringIO()
    args = cli.build_parser().parse_args(list(argv))
    args.out = out
    return args.func(args), out.getvalue()


@pytest.mark.parametrize("name", ["card.png", "card.json", "ovos.json", "oldschool.json", "tavus.json",
                                  "config.yaml", "native.yaml"])
def test_convert_then_load_gives_the_same_persona(tmp_path, name):
    path = sample_files(tmp_path)[name]
    out = tmp_path / "converted" / f"{name}.yaml"
    out.parent.mkdir()
    assert run_cli("convert", str(path), "-o", str(out)) == (0, "")
    original = load_persona_file(path, known_solver_ids())
    again = load_persona_file(out, known_solver_ids())
    assert again == original
    assert again.warnings == ()  # the native file holds nothing we do not understand
    assert yaml.safe_load(out.read_text(encoding="utf-8"))["name"] == original.name


def test_convert_to_stdout_and_a_bad_file(tmp_path, capsys):
    paths = sample_files(tmp_path)
    code, text = run_cli("convert", str(paths["ovos.json"]))
    assert code == 0
    assert text.splitlines()[1:] == ["name: My Local LLM", "lang: en-us",
                                     "system_prompt: helpful, creative, clever, and very friendly.",
                                     "solvers:", "- openai", "openai:", "  api_url: https://llama.smartgic.io/v1",
                                     "  key: sk-xxxx"]
    bad = tmp_path / "bad.json"
    bad.write_text("{", encoding="utf-8")
    assert run_cli("convert", str(bad)) == (1, "")
    assert capsys.readouterr().err.strip().endswith(
        "bad.json: is not valid JSON: Expecting property name enclosed in double quotes at line 1 column 2")


@pytest.mark.parametrize("name,persona", [("card.png", "Seraphina V3"),    # no backend: the default chain
                                          ("config.yaml", "Lollms Helper"),  # the same
                                          ("oldschool.json", "OldSchoolBot"),  # plugins missing: chitchat, failure
                                          ("native.yaml", "N")])             # only failure: it does not know
def test_each_format_answers_through_the_cli(tmp_path, monkeypatch, name, persona):
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    path = sample_files(tmp_path)[name]
    out = io.StringIO()
    monkeypatch.setattr(sys, "stdout", out)
    code = cli.main(["ask", "--persona", str(path), "--db", str(tmp_path / "m.db"), "What is your name?"])
    assert code == 0
    if name == "native.yaml":
        assert out.getvalue() in [line + "\n" for line in dialog_lines("en-us", "failure")]
    else:
        assert out.getvalue() == f"I'm {persona}, your voice assistant.\n"


REQUEST = f"ovos.skills.fallback.{SKILL_ID}.request"


def test_card_persona_greets_on_switch_and_answers_through_the_skill(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    folder = tmp_path / "personas"
    folder.mkdir()
    (folder / "seraphina.json").write_text(json.dumps(CARD_V2), encoding="utf-8")
    bus = FakeBus()
    engine = PersonaEngine([folder], memory=ConversationMemory(":memory:"), include_shipped=True)
    skill = PersonaFallbackSkill(bus=bus, skill_id=SKILL_ID, engine=engine)
    spoken = []
    bus.on("speak", lambda message: spoken.append(Message.deserialize(message).data
                                                  if isinstance(message, str) else message.data))
    try:
        session = Session("kitchen").serialize()
        bus.emit(Message(f"{SKILL_ID}:switch_persona.intent", {"persona": "seraphina"},
                         {"session": session, "user_name": "Ann"}))
        switched = [line.replace("{persona}", "Seraphina") for line in dialog_lines("en-us", "switched")]
        assert spoken[0]["utterance"] in switched
        assert spoken[1]["utterance"] in ("*Seraphina smiles* You're awake, Ann.", "Oh, hello Ann!")
        assert spoken[1]["meta"] == {"skill": SKILL_ID, "dialog": "greeting", "persona": "Seraphina"}
        done = []
        bus.on("ovos.utterance.handled", lambda _: done.append(True))
        bus.emit(Message(REQUEST, {"utterances": ["What is your name?"], "lang": "en-us"},
                         {"session": session, "source": "audio", "destination": "skills"}))
        for _ in range(500):
            if done:
                break
            time.sleep(0.01)
        assert spoken[-1]["utterance"] == "I'm Seraphina, your voice assistant."
        assert spoken[-1]["meta"]["persona"] == "Seraphina"
    finally:
        skill.default_shutdown()


def test_greeting_is_empty_for_a_persona_without_one(tmp_path):
    engine = PersonaEngine(include_shipped=True, memory=ConversationMemory(":memory:"))
    try:
        assert engine.greeting(engine.personas["Ava"]) == ""
    finally:
        engine.close()


def test_card_answers_through_an_llm_chain_given_on_the_command_line(tmp_path, monkeypatch):
    from openai_server import FakeOpenAIServer, SSEStream, chat_chunk, sse

    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    path = sample_files(tmp_path)["card.json"]
    out = io.StringIO()
    monkeypatch.setattr(sys, "stdout", out)
    with FakeOpenAIServer() as server:
        server.script(SSEStream(sse(chat_chunk("Rest, traveller.")), interval=0.0))
        chain = json.dumps([{"openai": {"api_url": f"{server.url}/v1", "model": "m"}}, "failure"])
        code = cli.main(["ask", "--persona", str(path), "--db", str(tmp_path / "m.db"), "--default-solvers", chain,
                         "Where is the amulet?"])
    assert code == 0 and out.getvalue() == "Rest, traveller.\n"
    [request] = server.requests
    messages = request.body["messages"]
    assert [m["role"] for m in messages] == ["system", "system", "user"]
    assert messages[0]["content"].startswith("You are Seraphina. Stay in character and reply to User.")
    assert messages[0]["content"].endswith("\n\nSeraphina wears a silver amulet.\n\nMagic exists.")
    assert messages[1:] == [{"role": "system", "content": "Reply in at most two sentences."},
                            {"role": "user", "content": "Where is the amulet?"}]


def test_a_bad_default_chain_on_the_command_line_is_refused(capsys):
    with pytest.raises(SystemExit) as caught:
        cli.build_parser().parse_args(["ask", "--default-solvers", "[3]", "hi"])
    assert caught.value.code == 2
    assert "not a solver chain: entry 3 is neither a solver id nor an {id: config} mapping" in capsys.readouterr().err
