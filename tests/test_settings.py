"""Settings: defaults, validation, and settingsmeta.yaml / README mirroring the code."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from ovos_skill_persona_fallback.settings import DEFAULT_SETTINGS, validate_settings

ROOT = Path(__file__).resolve().parent.parent


def meta_fields() -> dict:
    meta = yaml.safe_load((ROOT / "settingsmeta.yaml").read_text())
    return {field["name"]: field for section in meta["skillMetadata"]["sections"] for field in section["fields"]}


def test_settingsmeta_mirrors_every_default():
    fields = meta_fields()
    assert set(fields) == set(DEFAULT_SETTINGS)
    for name, default in DEFAULT_SETTINGS.items():
        value = fields[name]["value"]
        shown = value if isinstance(default, str) or fields[name]["type"] == "text" else json.loads(value)
        effective, problems = validate_settings({name: shown}, DEFAULT_SETTINGS)
        assert problems == [] and effective[name] == default, name


def test_readme_settings_table_mirrors_every_default():
    readme = (ROOT / "README.md").read_text()
    rows = dict(re.findall(r"^\| `(\w+)` \| `([^`]*)` \|", readme, re.MULTILINE))
    assert set(DEFAULT_SETTINGS) <= set(rows)
    for name, default in DEFAULT_SETTINGS.items():
        assert rows[name] == json.dumps(default), name


BAD = [
    # (key, bad value)
    ("enabled", "yes"),
    ("default_persona", ""),
    ("persona_dirs", 3),
    ("persona_dirs", ["/ok", 4]),
    ("priority", 101),
    ("priority", 5.5),
    ("thinking_delay", -1),
    ("max_turns", True),
    ("max_age_minutes", None),
    ("max_utterance_chars", 1),
    ("db_path", 3),
    ("default_lang", ""),
    ("default_solvers", "chitchat"),       # not a list
    ("default_solvers", []),               # empty chain
    ("default_solvers", [{"openai": 1}]),  # config is not a mapping
]


@pytest.mark.parametrize("key,value", BAD)
def test_bad_value_keeps_previous_good_value_and_says_why(key, value):
    previous = dict(DEFAULT_SETTINGS)
    good, problems = validate_settings({}, previous)
    assert good == DEFAULT_SETTINGS and problems == []
    effective, problems = validate_settings({key: value}, previous)
    assert effective[key] == previous[key]
    assert len(problems) == 1 and problems[0].startswith(f"setting {key}: expected ")
    assert repr(value) in problems[0]


def test_good_values_are_taken_and_unknown_keys_ignored():
    effective, problems = validate_settings({"priority": 10, "persona_dirs": ["/x"], "whatever": 1},
                                            DEFAULT_SETTINGS)
    assert problems == [] and effective["priority"] == 10 and effective["persona_dirs"] == ["/x"]
    assert "whatever" not in effective


@pytest.mark.parametrize("key,value,expected", [
    ("priority", 90.0, 90),                                  # settings UIs store numbers as floats
    ("max_turns", 12.0, 12),
    ("persona_dirs", "/one/path", ["/one/path"]),             # a settings UI's text field
    ("persona_dirs", "/a, /b\n/c", ["/a", "/b", "/c"]),
    ("persona_dirs", '["/x"]', ["/x"]),                        # the list as JSON text
    ("persona_dirs", "", []),
])
def test_values_from_settings_uis_are_converted(key, value, expected):
    effective, problems = validate_settings({key: value}, DEFAULT_SETTINGS)
    assert problems == [] and effective[key] == expected


def test_default_solvers_take_ids_and_id_config_mappings():
    chain = [{"openai": {"api_url": "http://127.0.0.1:8080/v1"}}, "failure"]
    effective, problems = validate_settings({"default_solvers": chain}, DEFAULT_SETTINGS)
    assert problems == [] and effective["default_solvers"] == chain


def test_a_bad_db_url_is_rejected_without_showing_its_password():
    effective, problems = validate_settings({"db_url": "mysql://bob:hunter2@db/x"}, DEFAULT_SETTINGS)
    assert effective["db_url"] == "" and len(problems) == 1
    assert "hunter2" not in problems[0] and "mysql://bob:***@db/x" in problems[0]
    good, problems = validate_settings({"db_url": "postgresql://bob:hunter2@db:5432/x"}, DEFAULT_SETTINGS)
    assert problems == [] and good["db_url"] == "postgresql://bob:hunter2@db:5432/x"
