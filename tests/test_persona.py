"""Persona files: loading, validation messages, placeholders, folders."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from ovos_skill_persona_fallback.persona import (Persona, PersonaError, fill_placeholders, load_persona_file,
                                                 load_personas)
from ovos_skill_persona_fallback.solvers import known_solver_ids
from ovos_skill_persona_fallback.solvers.base import GenerationSettings

KNOWN = frozenset({"failure", "chitchat", "openai", "llama-cpp"})


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_full_yaml_persona_loads_every_field(tmp_path):
    path = write(tmp_path, "ada.yaml", """
name: Ada
description: Helpful
system_prompt: You are {name}.
context: Lives in {location}.
lang: pt-BR
solvers: [openai, failure]
openai: {api_url: "http://127.0.0.1:1/v1", model: m}
generation: {temperature: 0.2, top_k: 10, top_p: 0.5, repeat_penalty: 1.3, max_tokens: 64, seed: 7,
             stop: ["User:"]}
memory: {max_turns: 4, max_age_minutes: 30}
thinking: {after_seconds: 1.5, messages: ["Hmm."]}
""")
    persona = load_persona_file(path, KNOWN)
    assert persona.name == "Ada"
    assert persona.lang == "pt-br"
    assert persona.solvers == ("openai", "failure")
    assert persona.solver_config("openai") == {"api_url": "http://127.0.0.1:1/v1", "model": "m"}
    assert persona.solver_config("failure") == {}
    assert persona.generation == GenerationSettings(0.2, 10, 0.5, 1.3, 64, 7, ("User:",))
    assert (persona.memory.max_turns, persona.memory.max_age_minutes) == (4, 30)
    assert (persona.thinking.after_seconds, persona.thinking.messages) == (1.5, ("Hmm.",))
    assert persona.summary() == {"name": "Ada", "description": "Helpful", "lang": "pt-br"}


def test_ovos_persona_file_with_handlers_loads_unchanged(tmp_path):
    # the shape ovos-persona writes: "handlers" and a top-level config block per plugin
    path = write(tmp_path, "old.json", json.dumps({
        "name": "Old Friend", "handlers": ["ovos-solver-failure-plugin"],
        "ovos-solver-failure-plugin": {"x": 1}}))
    persona = load_persona_file(path, KNOWN | {"ovos-solver-failure-plugin"})
    assert persona.solvers == ("ovos-solver-failure-plugin",)
    assert persona.solver_config("ovos-solver-failure-plugin") == {"x": 1}


def test_ovos_persona_file_with_handlers_loads(tmp_path):
    # an installed plugin keeps its id and block; the failure plugin, not installed, becomes the built-in
    path = write(tmp_path, "old.json", json.dumps({
        "name": "Old Friend", "handlers": ["ovos-solver-wikipedia-plugin", "ovos-solver-failure-plugin"],
        "ovos-solver-wikipedia-plugin": {"x": 1}}))
    persona = load_persona_file(path, KNOWN | {"ovos-solver-wikipedia-plugin"})
    assert persona.solvers == ("ovos-solver-wikipedia-plugin", "failure")
    assert persona.solver_config("ovos-solver-wikipedia-plugin") == {"x": 1}


def test_defaults_when_optional_fields_are_missing(tmp_path):
    persona = load_persona_file(write(tmp_path, "p.json", '{"name": "P", "solvers": ["failure"]}'), KNOWN)
    assert persona == Persona(name="P", solvers=("failure",), source=str(tmp_path / "p.json"))
    assert persona.lang == "en-us"


BROKEN = [
    # (file name, content, the problem lines expected after "<path>: ")
    ("bad.json", '{"name": "A", "solvers": [', ["is not valid JSON: Expecting value at line 1 column 27"]),
    ("bad.yaml", "name: [A\nsolvers: x\n", ["is not valid YAML: expected ',' or ']', but got ':' "
                                            "at line 2 column 8"]),
    ("list.yaml", "- a\n- b\n", None),  # top level is not a mapping
    ("noname.yaml", "solvers: [failure]\n", ["name: is missing: every persona needs a name"]),
    ("nosolvers.yaml", "name: A\n", ["solvers: is missing: list the solvers to ask, in order"]),
    ("empty.yaml", "name: A\nsolvers: []\n", ["solvers: is empty: list at least one solver"]),
    ("notlist.yaml", "name: A\nsolvers: failure\n", ["solvers: must be a list of solver ids, not str"]),
    ("unknown.yaml", "name: A\nsolvers: [failure, gpt9]\n",
     ["solvers[1]: unknown solver 'gpt9' (known: chitchat, failure, llama-cpp, openai)"]),
    ("badid.yaml", "name: A\nsolvers: [3]\n", ["solvers[0]: must be a solver id, not 3"]),
    ("types.yaml", "name: 5\nsolvers: [failure]\ndescription: [x]\n",
     ["name: must be text, not int", "description: must be text, not list"]),
    ("temp.yaml", "name: A\nsolvers: [failure]\ngeneration: {temperature: -1}\n",
     ["generation.temperature: must be at least 0, not -1"]),
    ("tokens.yaml", "name: A\nsolvers: [failure]\ngeneration: {max_tokens: 0}\n",
     ["generation.max_tokens: must be greater than 0, not 0"]),
    ("tokfloat.yaml", "name: A\nsolvers: [failure]\ngeneration: {max_tokens: 2.5, top_p: 1.5}\n",
     ["generation.top_p: must be at most 1, not 1.5", "generation.max_tokens: must be a whole number, not 2.5"]),
    ("boolnum.yaml", "name: A\nsolvers: [failure]\ngeneration: {top_k: true}\n",
     ["generation.top_k: must be a whole number, not True"]),
    ("inf.yaml", "name: A\nsolvers: [failure]\ngeneration: {repeat_penalty: .inf, temperature: .nan}\n",
     ["generation.temperature: must be a number, not nan", "generation.repeat_penalty: must be a number, not inf"]),
    ("stop.yaml", "name: A\nsolvers: [failure]\ngeneration: {stop: [1]}\n",
     ["generation.stop: must be a list of text lines"]),
    ("memory.yaml", "name: A\nsolvers: [failure]\nmemory: {max_turns: -2}\n",
     ["memory.max_turns: must be at least 0, not -2"]),
    ("block.yaml", "name: A\nsolvers: [failure]\nmemory: 12\n", ["memory: must be a mapping of settings, not int"]),
    ("cfg.yaml", "name: A\nsolvers: [openai]\nopenai: [1]\n", ["openai: must be a mapping of settings, not list"]),
    ("lang.yaml", "name: A\nsolvers: [failure]\nlang: not a tag\n", ["lang: is not a language tag: 'not a tag'"]),
    ("instruction.yaml", "name: A\nsolvers: [failure]\nanswer_instruction: [x]\n",
     ["answer_instruction: must be text, not list"]),
    ("thinking.yaml", "name: A\nsolvers: [failure]\nthinking: {after_seconds: fast}\n",
     ["thinking.after_seconds: must be a number, not 'fast'"]),
]


@pytest.mark.parametrize("name,content,expected", BROKEN, ids=[row[0] for row in BROKEN])
def test_validation_names_file_field_and_problem(tmp_path, name, content, expected):
    path = write(tmp_path, name, content)
    with pytest.raises(PersonaError) as caught:
        load_persona_file(path, KNOWN)
    if expected is None:
        assert caught.value.problems == [f"{path}: must hold one persona as a mapping, not list"]
    else:
        assert caught.value.problems == [f"{path}: {line}" for line in expected]


def test_folder_loads_good_personas_and_reports_every_bad_one(tmp_path):
    write(tmp_path, "a.yaml", "name: A\nsolvers: [failure]\n")
    write(tmp_path, "b.json", '{"name": "B", "solvers": ["failure"]}')
    write(tmp_path, "c.yaml", "name: C\nsolvers: []\n")
    write(tmp_path, "d.json", "{")
    write(tmp_path, "notes.txt", "ignored")
    reported = []
    personas, problems = load_personas([tmp_path, tmp_path / "missing.yaml"], KNOWN, on_problem=reported.append)
    assert sorted(personas) == ["A", "B"]
    assert problems == [f"{tmp_path / 'c.yaml'}: solvers: is empty: list at least one solver",
                        f"{tmp_path / 'd.json'}: is not valid JSON: Expecting property name enclosed in "
                        f"double quotes at line 1 column 2",
                        f"{tmp_path / 'missing.yaml'}: does not exist"]
    assert reported == problems


def test_later_folder_overrides_same_name(tmp_path):
    first, second = tmp_path / "one", tmp_path / "two"
    first.mkdir(), second.mkdir()
    write(first, "a.yaml", "name: A\ndescription: first\nsolvers: [failure]\n")
    write(second, "a.yaml", "name: A\ndescription: second\nsolvers: [failure]\n")
    personas, _ = load_personas([first, second], KNOWN)
    assert personas["A"].description == "second"


PLACEHOLDER_CASES = [
    # (template, expected)
    ("I am {name}", "I am Ada"),                                  # persona name
    ("Hi {user} in {location}", "Hi Joe in Lisbon"),              # speaker info
    ("{date} {time} {lang}", "2026-11-21 10:30 pt-pt"),            # date, time, lang
    ("{unknown} stays", "{unknown} stays"),                       # unknown placeholder left alone
    ("stray { and } and {{name}}", "stray { and } and {Ada}"),      # stray braces never raise
    ("{name", "{name"),                                           # unclosed brace
    ("{0} {} {name!r}", "{0} {} {name!r}"),                       # format syntax is not interpreted
]


@pytest.mark.parametrize("template,expected", PLACEHOLDER_CASES)
def test_placeholders(template, expected):
    values = {"name": "Ada", "user": "Joe", "location": "Lisbon", "date": "2026-11-21", "time": "10:30",
              "lang": "pt-pt"}
    assert fill_placeholders(template, values) == expected


def test_missing_values_become_empty():
    assert fill_placeholders("Hi {user}!", {"name": "Ada"}) == "Hi !"


def test_shipped_personas_are_valid():
    root = Path(__file__).resolve().parent.parent / "personas"
    personas, problems = load_personas([root, root / "examples"], known_solver_ids())
    assert problems == []
    assert sorted(personas) == ["Ava", "Local Llama", "Local Small", "Remote Assistant", "Sol"]
    assert personas["Ava"].solvers == ("chitchat", "failure")


def test_shipped_example_personas_build_their_solvers(monkeypatch, tmp_path):
    from ovos_skill_persona_fallback.solvers import create_solver
    from ovos_skill_persona_fallback.solvers.base import SolverContext

    root = Path(__file__).resolve().parent.parent / "personas"
    personas, _ = load_personas([root, root / "examples"], known_solver_ids())
    for persona in personas.values():
        for solver_id in persona.solvers:
            solver = create_solver(solver_id, persona.solver_config(solver_id),
                                   SolverContext(persona.name, persona.lang, persona.generation))
            assert solver.solver_id == solver_id
            solver.close()
