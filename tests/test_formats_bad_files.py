"""Broken files of any format: one clear line naming the file and the reason, the others still load;
fuzzed files never raise anything but PersonaError out of the loader."""
from __future__ import annotations

import json
import os

import pytest
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from persona_samples import CARD_V2, card_chunk, png
from ovos_skill_persona_fallback.formats import detect
from ovos_skill_persona_fallback.formats.common import ReadContext
from ovos_skill_persona_fallback.formats.native import to_yaml
from ovos_skill_persona_fallback.persona import PersonaError, load_persona_file, load_personas, parse_persona

KNOWN = frozenset({"failure", "chitchat", "openai", "llama-cpp"})
BOMB = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join(['*' + chr(97 + i)] * 9)}]\n" for i in range(9))


def big_file(path):
    with path.open("wb") as handle:  # sparse: 50 MB on paper, nothing written
        handle.truncate(50 * 1024 * 1024)


BAD_FILES = [
    # (file name, content or a writer, the problem after "<path>: ")
    ("truncated.json", b'{"name": "A", "solvers": ["fail', "is not valid JSON: Unterminated string starting at "
                                                           "line 1 column 27"),
    ("nocard.png", png(), "is a PNG image with no character card in it (no 'ccv3' or 'chara' text chunk)"),
    ("wrongspec.json", json.dumps({"spec": "chara_card_v1", "data": {"name": "X"}}).encode(),
     "spec: unsupported card spec 'chara_card_v1' (readable: chara_card_v2, chara_card_v3)"),
    ("huge.yaml", big_file, f"is too big for a persona file (52428800 bytes, the limit is "
                            f"{detect.MAX_PERSONA_BYTES})"),
    ("garbage.yaml", bytes(range(256)) * 4, "is binary, not a persona file (JSON, YAML or a PNG card)"),
    ("latin1.yaml", "name: Jos\xe9\n".encode("latin-1"), "is not UTF-8 text: byte 9 cannot be decoded"),
    ("bomb.yaml", BOMB.encode(), f"is not valid YAML: more than {detect.MAX_YAML_ALIASES} aliases (a YAML bomb?)"),
    ("deep.json", b"[" * 100000 + b"]" * 100000, "is nested too deeply to be a persona file"),
    ("empty.yaml", b"", "must hold one persona as a mapping, not NoneType"),
    ("cut.png", png([card_chunk("chara", CARD_V2)])[:-30], "is a truncated PNG (chunk 'tEXt' is cut off)"),
]


@pytest.mark.parametrize("name,content,problem", BAD_FILES, ids=[row[0] for row in BAD_FILES])
def test_bad_file_is_one_line_and_the_others_still_load(tmp_path, name, content, problem):
    path = tmp_path / name
    if callable(content):
        content(path)
    else:
        path.write_bytes(content)
    (tmp_path / "good.yaml").write_text("name: Good\nsolvers: [failure]\n", encoding="utf-8")
    with pytest.raises(PersonaError) as caught:
        load_persona_file(path, KNOWN)
    assert caught.value.problems == [f"{path}: {problem}"]
    personas, problems = load_personas([tmp_path], KNOWN)
    assert sorted(personas) == ["Good"] and problems == [f"{path}: {problem}"]


def test_unreadable_file_is_one_line(tmp_path):
    folder = tmp_path / "sub.yaml"
    folder.mkdir()  # a folder with a persona suffix, named directly
    with pytest.raises(PersonaError) as caught:
        load_persona_file(folder, KNOWN)
    assert caught.value.problems == [f"{folder}: cannot be read: Is a directory"]


KEYS = st.sampled_from(["name", "solvers", "handlers", "spec", "data", "persona_name", "layers", "llm", "tts",
                        "base_url", "personality_conditioning", "model_temperature", "anti_prompts", "memory_module",
                        "character_book", "entries", "keys", "content", "lorebook", "generation", "greetings",
                        "first_mes", "alternate_greetings", "mes_example", "system_prompt", "description",
                        "ovos-solver-openai-persona-plugin", "persona", "language", "user_message_prefix",
                        "ai_message_prefix", "memory", "max_turns", "voice", "token_budget", "scan_depth",
                        "use_regex", "constant", "selective", "secondary_keys", "insertion_order", "nickname",
                        "model_top_k", "model_n_predicts", "temperature", "repeat_penalty", "top_k"])
LEAVES = st.one_of(st.none(), st.booleans(), st.integers(-5, 10 ** 6), st.floats(allow_nan=False),
                   st.text(max_size=12), st.sampled_from(["chara_card_v2", "chara_card_v3", "failure", "openai",
                                                          "ovos-solver-failure-plugin", "{{char}}", "@@activate\nx",
                                                          "(", "http://127.0.0.1:1/v1", "english"]))
DOCUMENTS = st.recursive(LEAVES, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                         st.dictionaries(st.one_of(KEYS, st.integers(0, 2)), inner,
                                                                         max_size=6)), max_leaves=30)


@pytest.mark.slow
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(DOCUMENTS)
@example({"name": "x", "handlers": ["failure"], "memory_module": None, "memory": 5})  # memory is not a mapping
@example({"personality_conditioning": "x", "model_top_k": float("inf"), "model_n_predicts": float("nan")})
@example({"name": "x", "handlers": ["ovos-chat-openai-plugin"], "memory": "y",
          "ovos-chat-openai-plugin": {"enable_memory": False}})
@example({"name": "\x1b", "solvers": ["failure"]})  # a control character in convert's header comment
def test_fuzzed_documents_of_every_format_never_raise_out_of_the_loader(data):
    ctx = ReadContext("<fuzz>", KNOWN, stem="fuzz")
    try:
        document, warnings, _ = detect.document_of(data, ctx)
        persona = parse_persona(document, "<fuzz>", KNOWN, warnings)
    except PersonaError as err:
        assert err.problems and all(line.startswith("<fuzz>") for line in err.problems)
    else:
        assert persona.name and persona.solvers
        # whatever was understood survives convert: our YAML loads back into the same persona
        assert parse_persona(yaml.safe_load(to_yaml(persona)), "<again>", KNOWN) == persona


@pytest.mark.slow
@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                 HealthCheck.function_scoped_fixture])
@given(st.binary(max_size=400), st.sampled_from(["p.json", "p.yaml", "p.png", "config.yaml"]))
def test_fuzzed_bytes_never_raise_out_of_the_loader(tmp_path, raw, name):
    path = tmp_path / name
    for prefix in (b"", b"\x89PNG\r\n\x1a\n", b"{"):
        path.write_bytes(prefix + raw)
        try:
            load_persona_file(path, KNOWN)
        except PersonaError as err:
            assert len(err.problems) >= 1 and all(line.startswith(str(path)) for line in err.problems)
    os.remove(path)
