"""Our own format: unknown keys are warnings with a suggestion; validate --strict makes them errors."""
from __future__ import annotations

import io
from pathlib import Path

import pytest

from ovos_skill_persona_fallback import cli
from ovos_skill_persona_fallback.persona import load_persona_file, load_personas, suggest
from ovos_skill_persona_fallback.prompt import Speaker, build_messages

KNOWN = frozenset({"failure", "chitchat", "openai", "llama-cpp"})


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


WARNED = [
    # (yaml after "name: A\nsolvers: [failure]\n", the warning after "<path>: ")
    ("generation: {n_predict: 5}", "generation.n_predict: unknown key, ignored (did you mean 'max_tokens'?)"),
    ("generation: {repetition_penalty: 1.2}",
     "generation.repetition_penalty: unknown key, ignored (did you mean 'repeat_penalty'?)"),
    ("generation: {temprature: 0.2}", "generation.temprature: unknown key, ignored (did you mean 'temperature'?)"),
    ("temprature: 0.2", "temprature: unknown key, ignored (did you mean 'generation.temperature'?)"),  # wrong level
    ("n_predict: 9", "n_predict: unknown key, ignored (did you mean 'generation.max_tokens'?)"),
    ("sytem_prompt: hi", "sytem_prompt: unknown key, ignored (did you mean 'system_prompt'?)"),
    ("memory: {max_turn: 3}", "memory.max_turn: unknown key, ignored (did you mean 'max_turns'?)"),
    ("thinking: {message: [x]}", "thinking.message: unknown key, ignored (did you mean 'messages'?)"),
    ("zebra: 1", "zebra: unknown key, ignored"),                                # nothing close: no suggestion
    ("openai: {api_url: 'http://x'}", "openai: settings for a solver that is not in solvers, ignored"),
]


@pytest.mark.parametrize("extra,warning", WARNED, ids=[row[0] for row in WARNED])
def test_unknown_keys_warn_with_a_suggestion(tmp_path, extra, warning):
    path = write(tmp_path, "a.yaml", f"name: A\nsolvers: [failure]\n{extra}\n")
    persona = load_persona_file(path, KNOWN)
    assert persona.warnings == (f"{path}: {warning}",)


def test_known_keys_and_solver_blocks_do_not_warn(tmp_path):
    path = write(tmp_path, "a.yaml", "name: A\nsolvers: [openai, failure]\nopenai: {api_url: 'http://x'}\n"
                                     "generation: {temperature: 0.1, stop: [x]}\nmemory: {max_turns: 2}\n"
                                     "greetings: [Hi]\nvoice: {voice_id: v}\n")
    assert load_persona_file(path, KNOWN).warnings == ()


def test_suggest_without_a_close_match_is_none():
    assert suggest("qqq", ["temperature", "top_k"]) is None
    assert suggest("top_kk", ["temperature", "top_k"]) == "top_k"


def test_warnings_are_reported_once_and_do_not_block_loading(tmp_path):
    write(tmp_path, "a.yaml", "name: A\nsolvers: [failure]\ngeneration: {n_predict: 5}\n")
    warned, problems = [], []
    personas, _ = load_personas([tmp_path], KNOWN, on_problem=problems.append, on_warning=warned.append)
    assert sorted(personas) == ["A"] and problems == []
    assert warned == [f"{tmp_path / 'a.yaml'}: generation.n_predict: unknown key, ignored "
                      f"(did you mean 'max_tokens'?)"]


def run_cli(*argv: str) -> tuple:
    out = io.StringIO()
    parser = cli.build_parser()
    args = parser.parse_args(list(argv))
    args.out = out
    return args.func(args), out.getvalue()


def test_validate_prints_warnings_and_exits_0_strict_exits_1(tmp_path):
    path = write(tmp_path, "a.yaml", "name: A\nsolvers: [failure]\ngeneration: {repetition_penalty: 1.2}\n")
    expected = (f"OK A ({path})\nwarning: {path}: generation.repetition_penalty: unknown key, ignored "
                f"(did you mean 'repeat_penalty'?)\n")
    assert run_cli("validate", str(path)) == (0, expected)
    assert run_cli("validate", "--strict", str(path)) == (1, expected)
    clean = write(tmp_path, "b.yaml", "name: B\nsolvers: [failure]\n")
    assert run_cli("validate", "--strict", str(clean)) == (0, f"OK B ({clean})\n")


def test_description_placeholder_and_its_alias(tmp_path):
    path = write(tmp_path, "a.yaml", "name: Bob\ndescription: a grumpy innkeeper\nsolvers: [failure]\n"
                                     "system_prompt: 'You are {name}, {description}. ({desc})'\n")
    messages = build_messages(load_persona_file(path, KNOWN), [], "hi", speaker=Speaker(), now=0)
    assert messages[0].content == "You are Bob, a grumpy innkeeper. (a grumpy innkeeper)"


def test_suggestions_are_the_same_without_rapidfuzz(monkeypatch):
    import sys

    with_rapidfuzz = [suggest(key, ["temperature", "top_k", "max_tokens", "repeat_penalty"])
                      for key in ("temprature", "topk", "max_token", "zebra", "n_predict")]
    monkeypatch.setitem(sys.modules, "rapidfuzz", None)  # import fails: difflib answers
    without = [suggest(key, ["temperature", "top_k", "max_tokens", "repeat_penalty"])
               for key in ("temprature", "topk", "max_token", "zebra", "n_predict")]
    assert with_rapidfuzz == without == ["temperature", "top_k", "max_tokens", None, "max_tokens"]
