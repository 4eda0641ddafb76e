"""Persona files: load (JSON or YAML), validate with one clear line per problem, normalise.

A persona file holds one persona::

    name: Ada                      # required
    description: A helpful assistant
    lang: en-us                    # the language the persona's solvers work in
    system_prompt: You are {name}. Today is {date}.
    context: The user lives in {location}.
    solvers: [chitchat, failure]   # required, ordered ("handlers" is accepted as a synonym)
    chitchat: {}                   # one config block per solver, keyed by its id
    generation: {temperature: 0.7, top_k: 40, top_p: 0.95, repeat_penalty: 1.1, max_tokens: 256,
                 seed: null, stop: []}
    memory: {max_turns: 12, max_age_minutes: 1440}
    thinking: {after_seconds: 2, messages: ["Let me think."]}
    answer_instruction: Answer in {lang}.   # optional: see Persona.answer_instruction
    tags: [chat, offline]          # optional: announced in ovos.persona.list
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, FrozenSet, Iterable, List, Mapping, Optional, Tuple

import yaml

from .languages import FALLBACK_LANG, normalize_lang
from .solvers.base import GenerationSettings

PERSONA_SUFFIXES = (".json", ".yaml", ".yml")
DEFAULT_MAX_TURNS = 12
DEFAULT_MAX_AGE_MINUTES = 24 * 60
PLACEHOLDERS = ("name", "user", "location", "date", "time", "lang")
_PLACEHOLDER_RE = re.compile(r"\{(" + "|".join(PLACEHOLDERS) + r")\}")
_RESERVED_KEYS = {"name", "description", "system_prompt", "context", "lang", "solvers", "handlers",
                  "generation", "memory", "thinking", "answer_instruction", "tags"}


class PersonaError(ValueError):
    """A persona file is invalid; ``problems`` holds one line per problem."""

    def __init__(self, problems: List[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


@dataclass(frozen=True)
class MemorySettings:
    """How much of a conversation is remembered.

    ``max_turns`` = 0 remembers nothing (every question stands alone); ``max_age_minutes`` = 0
    means turns never expire by age. None means "not set": the front end's default applies
    (the skill's ``max_turns`` / ``max_age_minutes`` settings), else the module defaults.
    """

    max_turns: Optional[int] = None
    max_age_minutes: Optional[float] = None

    def resolved(self, defaults: Optional["MemorySettings"] = None) -> "MemorySettings":
        """Return these settings with every unset value taken from ``defaults``, then the module's."""
        fallback = defaults or MemorySettings(DEFAULT_MAX_TURNS, DEFAULT_MAX_AGE_MINUTES)
        turns = self.max_turns if self.max_turns is not None else fallback.max_turns
        age = self.max_age_minutes if self.max_age_minutes is not None else fallback.max_age_minutes
        return MemorySettings(DEFAULT_MAX_TURNS if turns is None else turns,
                              DEFAULT_MAX_AGE_MINUTES if age is None else age)


@dataclass(frozen=True)
class ThinkingSettings:
    """What to say while the first sentence is slow to come.

    ``after_seconds`` None means the skill's ``thinking_delay`` setting decides.
    """

    after_seconds: Optional[float] = None
    messages: Tuple[str, ...] = ()


@dataclass(frozen=True)
class Persona:
    """A validated persona: personality, ordered solver chain, settings."""

    name: str
    solvers: Tuple[str, ...]
    description: str = ""
    system_prompt: str = ""
    context: str = ""
    lang: str = FALLBACK_LANG
    solver_configs: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    generation: GenerationSettings = field(default_factory=GenerationSettings)
    memory: MemorySettings = field(default_factory=MemorySettings)
    thinking: ThinkingSettings = field(default_factory=ThinkingSettings)
    #: when set, a chat solver that does not know the user's language is asked in it anyway, with
    #: this line ({lang}: the language's English name) added to the system message, and nothing
    #: is translated; when empty, the question and answer are translated
    answer_instruction: str = ""
    #: freeform capability tags, announced in OVOS-PERSONA-1's ovos.persona.list
    tags: Tuple[str, ...] = ()
    source: str = ""

    def solver_config(self, solver_id: str) -> Mapping[str, Any]:
        """Return the config block for ``solver_id`` (empty if the file has none)."""
        return self.solver_configs.get(solver_id, {})

    def summary(self) -> Dict[str, str]:
        """Return the public description used by listings (never solver configs: they hold keys)."""
        return {"name": self.name, "description": self.description, "lang": self.lang}


def fill_placeholders(text: str, values: Mapping[str, str]) -> str:
    """Replace the known ``{placeholder}`` names; anything else, stray braces included, stays."""
    return _PLACEHOLDER_RE.sub(lambda match: str(values.get(match.group(1), "")), text)


class _Checker:
    """Collects problems for one file, each line naming the file and the field."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.problems: List[str] = []

    def problem(self, where: str, what: str) -> None:
        self.problems.append(f"{self.source}: {where}: {what}")

    def text(self, data: Mapping[str, Any], key: str, default: str = "") -> str:
        value = data.get(key, default)
        if value is None:
            return default
        if not isinstance(value, str):
            self.problem(key, f"must be text, not {type(value).__name__}")
            return default
        return value

    def number(self, data: Mapping[str, Any], key: str, where: str, default: Any, *,
               integer: bool = False, minimum: Optional[float] = None, above: Optional[float] = None,
               maximum: Optional[float] = None, optional: bool = False) -> Any:
        value = data.get(key, default)
        if value is None and optional:
            return None
        kind = "a whole number" if integer else "a number"
        valid_type = isinstance(value, int) if integer else isinstance(value, (int, float))
        if isinstance(value, bool) or not valid_type:
            self.problem(f"{where}.{key}", f"must be {kind}, not {value!r}")
            return default
        if minimum is not None and value < minimum:
            self.problem(f"{where}.{key}", f"must be at least {minimum}, not {value!r}")
            return default
        if above is not None and value <= above:
            self.problem(f"{where}.{key}", f"must be greater than {above}, not {value!r}")
            return default
        if maximum is not None and value > maximum:
            self.problem(f"{where}.{key}", f"must be at most {maximum}, not {value!r}")
            return default
        return value

    def block(self, data: Mapping[str, Any], key: str) -> Mapping[str, Any]:
        value = data.get(key)
        if value is None:
            return {}
        if not isinstance(value, Mapping):
            self.problem(key, f"must be a mapping of settings, not {type(value).__name__}")
            return {}
        return value

    def strings(self, value: Any, where: str) -> Tuple[str, ...]:
        if value is None:
            return ()
        if isinstance(value, str):
            return (value,)
        if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
            self.problem(where, "must be a list of text lines")
            return ()
        return tuple(value)


def _generation(check: _Checker, block: Mapping[str, Any]) -> GenerationSettings:
    base = GenerationSettings()
    where = "generation"
    return GenerationSettings(
        temperature=check.number(block, "temperature", where, base.temperature, minimum=0, maximum=5),
        top_k=check.number(block, "top_k", where, base.top_k, integer=True, minimum=0),
        top_p=check.number(block, "top_p", where, base.top_p, above=0, maximum=1),
        repeat_penalty=check.number(block, "repeat_penalty", where, base.repeat_penalty, above=0),
        max_tokens=check.number(block, "max_tokens", where, base.max_tokens, integer=True, above=0),
        seed=check.number(block, "seed", where, None, integer=True, optional=True),
        stop=check.strings(block.get("stop"), "generation.stop"),
    )


def _solver_ids(check: _Checker, data: Mapping[str, Any], known: Optional[FrozenSet[str]]) -> Tuple[str, ...]:
    key = "solvers" if "solvers" in data or "handlers" not in data else "handlers"
    value = data.get(key)
    if value is None:
        check.problem("solvers", "is missing: list the solvers to ask, in order")
        return ()
    if not isinstance(value, list):
        check.problem(key, f"must be a list of solver ids, not {type(value).__name__}")
        return ()
    if not value:
        check.problem(key, "is empty: list at least one solver")
        return ()
    ids: List[str] = []
    for index, solver_id in enumerate(value):
        if not isinstance(solver_id, str) or not solver_id.strip():
            check.problem(f"{key}[{index}]", f"must be a solver id, not {solver_id!r}")
        elif known is not None and solver_id.strip() not in known:
            check.problem(f"{key}[{index}]", f"unknown solver {solver_id.strip()!r} "
                                             f"(known: {', '.join(sorted(known))})")
        else:
            ids.append(solver_id.strip())
    return tuple(ids)


def parse_persona(data: Any, source: str = "<persona>",
                  known_solvers: Optional[FrozenSet[str]] = None) -> Persona:
    """Validate a decoded persona document; raise ``PersonaError`` listing every problem."""
    check = _Checker(source)
    if not isinstance(data, Mapping):
        raise PersonaError([f"{source}: must hold one persona as a mapping, not {type(data).__name__}"])
    name = check.text(data, "name").strip()
    if "name" not in data or (not name and not check.problems):
        check.problem("name", "is missing: every persona needs a name")
    solvers = _solver_ids(check, data, known_solvers)
    configs: Dict[str, Mapping[str, Any]] = {
        solver_id: check.block(data, solver_id) for solver_id in solvers
        if solver_id in data and solver_id not in _RESERVED_KEYS}
    raw_lang = data.get("lang", FALLBACK_LANG)
    lang = normalize_lang(raw_lang, default="")
    if not lang:
        check.problem("lang", f"is not a language tag: {raw_lang!r}")
    memory_block = check.block(data, "memory")
    thinking_block = check.block(data, "thinking")
    persona = Persona(
        name=name,
        solvers=solvers,
        description=check.text(data, "description"),
        system_prompt=check.text(data, "system_prompt"),
        context=check.text(data, "context"),
        lang=lang or FALLBACK_LANG,
        solver_configs=configs,
        generation=_generation(check, check.block(data, "generation")),
        memory=MemorySettings(
            max_turns=check.number(memory_block, "max_turns", "memory", None,
                                   integer=True, minimum=0, optional=True),
            max_age_minutes=check.number(memory_block, "max_age_minutes", "memory", None,
                                         minimum=0, optional=True),
        ),
        thinking=ThinkingSettings(
            after_seconds=check.number(thinking_block, "after_seconds", "thinking", None,
                                       minimum=0, optional=True),
            messages=check.strings(thinking_block.get("messages"), "thinking.messages"),
        ),
        answer_instruction=check.text(data, "answer_instruction").strip(),
        tags=tuple(tag.strip() for tag in check.strings(data.get("tags"), "tags") if tag.strip()),
        source=source,
    )
    if check.problems:
        raise PersonaError(check.problems)
    return persona


def read_persona_file(path: Path) -> Any:
    """Decode a JSON or YAML persona file; raise ``PersonaError`` with the parser's complaint."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise PersonaError([f"{path}: cannot be read: {err}"]) from err
    try:
        if path.suffix.lower() == ".json":
            return json.loads(text)
        return yaml.safe_load(text)
    except json.JSONDecodeError as err:
        raise PersonaError([f"{path}: is not valid JSON: {err.msg} at line {err.lineno} "
                            f"column {err.colno}"]) from err
    except yaml.YAMLError as err:
        where = getattr(err, "problem_mark", None)
        at = f" at line {where.line + 1} column {where.column + 1}" if where else ""
        reason = getattr(err, "problem", None) or str(err)
        raise PersonaError([f"{path}: is not valid YAML: {reason}{at}"]) from err


def load_persona_file(path: Path, known_solvers: Optional[FrozenSet[str]] = None) -> Persona:
    """Load and validate one persona file."""
    path = Path(path)
    return parse_persona(read_persona_file(path), str(path), known_solvers)


def persona_files(paths: Iterable[Path]) -> List[Path]:
    """Expand files and folders into the persona files they hold, sorted per folder."""
    found: List[Path] = []
    for path in map(Path, paths):
        if path.is_dir():
            found.extend(sorted(p for p in path.iterdir()
                                if p.suffix.lower() in PERSONA_SUFFIXES and p.is_file()))
        else:
            found.append(path)
    return found


def load_personas(paths: Iterable[Path], known_solvers: Optional[FrozenSet[str]] = None,
                  on_problem: Optional[Callable[[str], None]] = None) -> Tuple[Dict[str, Persona], List[str]]:
    """Load every good persona from files and folders; report, never raise, for the bad ones.

    Returns the personas by name (a later file with the same name replaces an earlier one, so
    user folders listed after the shipped one override it) and the problem lines.
    """
    personas: Dict[str, Persona] = {}
    problems: List[str] = []
    for path in persona_files(paths):
        if not path.exists():
            lines = [f"{path}: does not exist"]
        else:
            try:
                persona = load_persona_file(path, known_solvers)
            except PersonaError as err:
                lines = err.problems
            else:
                personas[persona.name] = persona
                continue
        problems.extend(lines)
        if on_problem:
            for line in lines:
                on_problem(line)
    return personas, problems
