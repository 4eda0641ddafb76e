"""OVOS persona JSON as ovos-persona ships it, and personas published through ``opm.persona``."""
from __future__ import annotations

import io
import json
import textwrap
from pathlib import Path

import pytest

from persona_samples import OVOS_LLM, OVOS_OLDSCHOOL
from ovos_skill_persona_fallback import cli
from ovos_skill_persona_fallback.persona import (MemorySettings, Persona, PersonaError, load_persona_file,
                                                 load_personas)
from ovos_skill_persona_fallback.solvers.base import ChatMessage, Role

BUILTINS = frozenset({"failure", "chitchat", "openai", "llama-cpp"})


def write_json(tmp_path: Path, name: str, data: dict) -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


def test_openai_persona_plugin_becomes_the_openai_solver_with_its_persona_as_system_prompt(tmp_path):
    path = write_json(tmp_path, "llm.json", OVOS_LLM)
    persona = load_persona_file(path, BUILTINS)
    assert persona == Persona(name="My Local LLM", solvers=("openai",),
                              system_prompt="helpful, creative, clever, and very friendly.",
                              solver_configs={"openai": {"api_url": "https://llama.smartgic.io/v1", "key": "sk-xxxx"}})
    assert persona.warnings == ()


def test_the_persona_key_reaches_the_solver_as_the_system_message(tmp_path, box, engine_with):
    persona = load_persona_file(write_json(tmp_path, "llm.json", OVOS_LLM), BUILTINS)
    solver = box.add("openai").enqueue("Hi!")
    engine_with(persona).ask("hello", session_id="s")
    assert solver.calls[0].messages == [ChatMessage(Role.SYSTEM, "helpful, creative, clever, and very friendly."),
                                        ChatMessage(Role.USER, "hello")]


def test_plugins_not_installed_are_skipped_with_a_warning(tmp_path):
    path = write_json(tmp_path, "oldschool.json", OVOS_OLDSCHOOL)
    persona = load_persona_file(path, BUILTINS)
    assert persona == Persona(name="OldSchoolBot", solvers=("chitchat", "failure"))
    assert persona.warnings == tuple(f"{path}: solvers[{i}]: solver {plugin!r} is not installed, skipped"
                                     for i, plugin in enumerate(OVOS_OLDSCHOOL["solvers"][:4]))


def test_validate_prints_the_skipped_solvers_and_exits_0(tmp_path, monkeypatch):
    path = write_json(tmp_path, "oldschool.json", OVOS_OLDSCHOOL)
    monkeypatch.setattr(cli, "known_solver_ids", lambda: BUILTINS)
    out = io.StringIO()
    args = cli.build_parser().parse_args(["validate", str(path)])
    args.out = out
    assert args.func(args) == 0
    lines = out.getvalue().splitlines()
    assert lines[0] == f"OK OldSchoolBot ({path})"
    assert lines[1] == f"warning: {path}: solvers[0]: solver 'ovos-solver-wikipedia-plugin' is not installed, skipped"
    assert len(lines) == 5


def test_installed_plugins_keep_their_id_and_block(tmp_path):
    path = write_json(tmp_path, "oldschool.json", OVOS_OLDSCHOOL)
    persona = load_persona_file(path, BUILTINS | {"ovos-solver-plugin-wolfram-alpha"})
    assert persona.solvers == ("ovos-solver-plugin-wolfram-alpha", "chitchat", "failure")
    assert persona.solver_config("ovos-solver-plugin-wolfram-alpha") == {"appid": "Y7353-XXX"}


def test_no_installed_solver_at_all_is_an_error(tmp_path):
    path = write_json(tmp_path, "none.json", {"name": "N", "handlers": ["ovos-solver-ddg-plugin"]})
    with pytest.raises(PersonaError) as caught:
        load_persona_file(path, BUILTINS)
    assert caught.value.problems == [f"{path}: handlers: none of the solvers is installed: ovos-solver-ddg-plugin"]


def test_memory_module_null_turns_memory_off(tmp_path, box, engine_with):
    path = write_json(tmp_path, "stateless.json", {"name": "Stateless", "handlers": ["ovos-chat-openai-plugin"],
                                                   "memory_module": None})
    persona = load_persona_file(path, BUILTINS)
    assert persona.memory == MemorySettings(max_turns=0)
    solver = box.add("openai").enqueue("One.").enqueue("Two.")
    engine = engine_with(persona)
    engine.ask("first", session_id="s")
    engine.ask("second", session_id="s")
    assert solver.calls[1].messages == [ChatMessage(Role.USER, "second")]


def test_memory_module_block_gives_system_prompt_and_history_and_name_defaults_to_file(tmp_path):
    path = write_json(tmp_path, "researcher.json", {
        "handlers": ["ovos-chat-openai-plugin", "ovos-wikipedia-plugin"],
        "memory_module": "ovos-agents-short-term-memory-plugin",
        "ovos-agents-short-term-memory-plugin": {"max_history": 10, "system_prompt": "Cite sources."},
        "ovos-chat-openai-plugin": {"api_url": "https://api.openai.com/v1", "key": "sk-1", "model": "gpt-4"}})
    persona = load_persona_file(path, BUILTINS)
    assert persona == Persona(name="researcher", solvers=("openai",), system_prompt="Cite sources.",
                              memory=MemorySettings(max_turns=10),
                              solver_configs={"openai": {"api_url": "https://api.openai.com/v1", "key": "sk-1",
                                                         "model": "gpt-4"}})


def test_entry_point_personas_are_listed_and_user_files_override_them(tmp_path, monkeypatch):
    site = tmp_path / "site"
    (site / "persona_pkg").mkdir(parents=True)
    (site / "persona_pkg" / "__init__.py").write_text(textwrap.dedent("""
        PIRATE = {"name": "Pirate", "solvers": ["ovos-solver-failure-plugin"], "description": "from a package"}
        OTHER = {"name": "Other", "solvers": ["ovos-solver-failure-plugin"]}
        BROKEN = ["not", "a", "persona"]
    """))
    dist = site / "persona_pkg-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: persona-pkg\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[opm.persona]\npirate = persona_pkg:PIRATE\nother = persona_pkg:OTHER\n"
                                           "broken = persona_pkg:BROKEN\nmissing = persona_pkg:NOPE\n")
    monkeypatch.syspath_prepend(str(site))
    users = tmp_path / "users"
    users.mkdir()
    write_json(users, "other.json", {"name": "Other", "solvers": ["chitchat"], "description": "mine"})
    personas, problems = load_personas([users], BUILTINS, plugin_personas=True)
    assert personas["Pirate"] == Persona(name="Pirate", solvers=("failure",), description="from a package")
    assert personas["Other"].description == "mine"
    assert problems == [
        "opm.persona:broken (persona_pkg:BROKEN): must be a persona mapping, not list",
        "opm.persona:missing (persona_pkg:NOPE): cannot be loaded: AttributeError: module 'persona_pkg' has no "
        "attribute 'NOPE'"]
    # an engine without the shipped personas lists none from packages either
    personas, _ = load_personas([users], BUILTINS)
    assert sorted(personas) == ["Other"]
