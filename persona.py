"""Our persona format (JSON or YAML): the model, validation with one clear line per problem, loading.

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
    greetings: ["Hello, I am {name}."]      # said when a session switches to the persona
    post_history_instructions: Stay brief.  # a system message after the remembered turns
    voice: {}                               # text-to-speech settings kept for later use
    lorebook: {token_budget: 200, scan_depth: 4, entries: [{keys: [castle], content: ...}]}

Foreign formats (OVOS persona JSON, Character Cards, Tavus, LoLLMs) are read by ``formats/``
into the same document first; ``load_persona_file`` picks the reader by content.
Unknown keys are warnings (``Persona.warnings``) with a "did you mean" suggestion.
"""
from __future__ import annotations

import difflib
import math
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Dict, FrozenSet, Iterable, List, Mapping, Optional, Sequence, Tuple

from .languages import FALLBACK_LANG, normalize_lang
from .lorebook import Lorebook, parse_lorebook
from .solvers.base import GenerationSettings
from .tools.spec import ToolSettings, parse_tools

PERSONA_SUFFIXES = (".json", ".yaml", ".yml", ".png")
#: the chain of personas whose file names no backend (Character Cards, LoLLMs); the skill's
#: ``default_solvers`` setting replaces it
DEFAULT_SOLVERS: Tuple[str, ...] = ("chitchat", "failure")
LOLLMS_CONFIG = "config.yaml"
DEFAULT_MAX_TURNS = 12
DEFAULT_MAX_AGE_MINUTES = 24 * 60
PLACEHOLDERS = ("name", "user", "location", "date", "time", "lang", "description", "desc")
_PLACEHOLDER_RE = re.compile(r"\{(" + "|".join(PLACEHOLDERS) + r")\}")
_RESERVED_KEYS = {"name", "description", "system_prompt", "context", "lang", "solvers", "handlers",
                  "generation", "memory", "thinking", "answer_instruction", "greetings",
                  "post_history_instructions", "voice", "lorebook", "tags", "tools",
                  "max_tool_rounds"}
#: misspellings and other programs' names for our keys, checked before fuzzy matching
KEY_ALIASES = {"n_predict": "max_tokens", "n_predicts": "max_tokens", "num_predict": "max_tokens",
               "max_new_tokens": "max_tokens", "max_length": "max_tokens",
               "repetition_penalty": "repeat_penalty", "temp": "temperature",
               "stop_sequences": "stop", "anti_prompts": "stop", "greeting": "greetings",
               "first_mes": "greetings", "persona": "system_prompt", "prompt": "system_prompt"}
_GENERATION_KEYS = tuple(GenerationSettings.__dataclass_fields__)
_MEMORY_KEYS = ("max_turns", "max_age_minutes")
_THINKING_KEYS = ("after_seconds", "messages")


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
    #: the tools the persona's model may call (see tools/spec.py), and how many rounds
    tools: ToolSettings = field(default_factory=ToolSettings)
    #: lines said when a session switches to the persona (one picked at random)
    greetings: Tuple[str, ...] = ()
    #: a system message placed after the remembered turns, before the new question
    post_history_instructions: str = ""
    #: text-to-speech settings from the file (Tavus ``layers.tts``), kept for later use
    voice: Mapping[str, Any] = field(default_factory=dict)
    #: entries added to the system message when their keys come up (Character Card lorebook)
    lorebook: Optional[Lorebook] = None
    #: where the persona came from and what the loader noticed; not part of its identity
    source: str = field(default="", compare=False)
    warnings: Tuple[str, ...] = field(default=(), compare=False)

    def solver_config(self, solver_id: str) -> Mapping[str, Any]:
        """Return the config block for ``solver_id`` (empty if the file has none)."""
        return self.solver_configs.get(solver_id, {})

    def summary(self) -> Dict[str, str]:
        """Return the public description used by listings (never solver configs: they hold keys)."""
        return {"name": self.name, "description": self.description, "lang": self.lang}


def fill_placeholders(text: str, values: Mapping[str, str]) -> str:
    """Replace the known ``{placeholder}`` names; anything else, stray braces included, stays."""
    return _PLACEHOLDER_RE.sub(lambda match: str(values.get(match.group(1), "")), text)


#: how alike (0-100) a key must be to the suggested one
SUGGEST_CUTOFF = 75


def suggest(word: str, choices: Sequence[str]) -> Optional[str]:
    """Return the choice ``word`` was most likely meant to be, or None when nothing is close.

    Known aliases first (``n_predict`` -> ``max_tokens``), then the closest spelling: with
    rapidfuzz when installed (it comes with OVOS), else with difflib.
    """
    lowered = word.lower()
    if lowered in KEY_ALIASES and KEY_ALIASES[lowered] in choices:
        return KEY_ALIASES[lowered]
    if not choices:
        return None
    try:
        from rapidfuzz import fuzz, process
    except ImportError:
        close = difflib.get_close_matches(lowered, list(choices), n=1, cutoff=SUGGEST_CUTOFF / 100)
        return close[0] if close else None
    found = process.extractOne(lowered, list(choices), scorer=fuzz.ratio, score_cutoff=SUGGEST_CUTOFF)
    return found[0] if found else None


class _Checker:
    """Collects problems and warnings for one file, each line naming the file and the field."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.problems: List[str] = []
        self.warnings: List[str] = []

    def problem(self, where: str, what: str) -> None:
        self.problems.append(f"{self.source}: {where}: {what}")

    def unknown_keys(self, data: Mapping[str, Any], known: Sequence[str], where: str = "",
                     elsewhere: Optional[Mapping[str, str]] = None) -> None:
        """Warn about keys not in ``known``; suggest the closest key, here or (``elsewhere``) in a block."""
        for key in data:
            if not isinstance(key, str):
                self.warnings.append(f"{self.source}: {where or 'top level'}: ignored key {key!r}")
                continue
            if key in known:
                continue
            near = suggest(key, known)
            other = suggest(key, list(elsewhere)) if elsewhere and not near else None
            hint = (f" (did you mean {near!r}?)" if near else
                    f" (did you mean '{elsewhere[other]}.{other}'?)" if other and elsewhere else "")
            self.warnings.append(f"{self.source}: {where + '.' if where else ''}{key}: unknown key, "
                                 f"ignored{hint}")

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
        if isinstance(value, bool) or not valid_type or not math.isfinite(value):
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


def _warn_unknown(check: _Checker, data: Mapping[str, Any], solvers: Sequence[str],
                  known_solvers: Optional[FrozenSet[str]]) -> None:
    blocks = {key: "generation" for key in _GENERATION_KEYS}
    blocks.update({key: "memory" for key in _MEMORY_KEYS})
    blocks.update({key: "thinking" for key in _THINKING_KEYS})
    solver_keys = set(solvers) | set(known_solvers or ())
    top = [key for key in data if not (isinstance(key, str) and key in solver_keys)]
    check.unknown_keys({key: data[key] for key in top}, sorted(_RESERVED_KEYS), elsewhere={
        key: block for key, block in blocks.items() if key not in _RESERVED_KEYS})
    for key in sorted(k for k in data if isinstance(k, str) and k in solver_keys and k not in solvers):
        check.warnings.append(f"{check.source}: {key}: settings for a solver that is not in solvers, ignored")
    for block, keys in (("generation", _GENERATION_KEYS), ("memory", _MEMORY_KEYS),
                        ("thinking", _THINKING_KEYS)):
        if isinstance(data.get(block), Mapping):
            check.unknown_keys(data[block], keys, block)


def parse_persona(data: Any, source: str = "<persona>",
                  known_solvers: Optional[FrozenSet[str]] = None,
                  warnings: Sequence[str] = ()) -> Persona:
    """Validate a decoded persona document; raise ``PersonaError`` listing every problem.

    Unknown keys do not fail: they become ``Persona.warnings`` (after ``warnings``, those a
    foreign-format reader already found).
    """
    check = _Checker(source)
    check.warnings.extend(warnings)
    if not isinstance(data, Mapping):
        raise PersonaError([f"{source}: must hold one persona as a mapping, not {type(data).__name__}"])
    name = check.text(data, "name").strip()
    if "name" not in data or (not name and not check.problems):
        check.problem("name", "is missing: every persona needs a name")
    solvers = _solver_ids(check, data, known_solvers)
    blocks = {solver_id: check.block(data, solver_id) for solver_id in solvers
              if solver_id in data and solver_id not in _RESERVED_KEYS}
    # an empty block is no block: the persona is the same with or without "openai: {}"
    configs: Dict[str, Mapping[str, Any]] = {solver_id: block for solver_id, block in blocks.items() if block}
    raw_lang = data.get("lang", FALLBACK_LANG)
    lang = normalize_lang(raw_lang, default="")
    if not lang:
        check.problem("lang", f"is not a language tag: {raw_lang!r}")
    memory_block = check.block(data, "memory")
    thinking_block = check.block(data, "thinking")
    lorebook_block = check.block(data, "lorebook")
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
        tools=parse_tools(data.get("tools"), data.get("max_tool_rounds"), check.problem),
        greetings=tuple(line for line in check.strings(data.get("greetings"), "greetings") if line.strip()),
        post_history_instructions=check.text(data, "post_history_instructions").strip(),
        voice=dict(check.block(data, "voice")),
        lorebook=(parse_lorebook(lorebook_block, check.problem, lambda line: check.warnings.append(f"{source}: {line}"))
                  if lorebook_block else None),
        source=source,
    )
    if check.problems:
        raise PersonaError(check.problems)
    _warn_unknown(check, data, solvers, known_solvers)
    return replace(persona, warnings=tuple(check.warnings))


def read_persona_file(path: Path) -> Any:
    """Decode a persona file (JSON, YAML or a PNG card's JSON); raise ``PersonaError`` saying why."""
    from .formats.detect import decode, read_bytes

    path = Path(path)
    return decode(read_bytes(path), path)


def load_persona_file(path: Path, known_solvers: Optional[FrozenSet[str]] = None,
                      default_solvers: Sequence[str] = DEFAULT_SOLVERS) -> Persona:
    """Load and validate one persona file of any readable format (picked by content)."""
    from .formats.detect import read_persona

    return read_persona(Path(path), known_solvers, default_solvers)


def _is_file(path: Path) -> bool:
    try:
        return path.is_file()
    except OSError:  # a sub-folder we may not enter: not a persona folder
        return False


def persona_files(paths: Iterable[Path]) -> List[Path]:
    """Expand files and folders into the persona files they hold, sorted per folder.

    A folder's own ``.json``/``.yaml``/``.yml``/``.png`` files count, and so does the
    ``config.yaml`` of each sub-folder (the layout of a LoLLMs personality).
    """
    found: List[Path] = []
    for path in map(Path, paths):
        if path.is_dir():
            try:
                entries = sorted(path.iterdir())
            except OSError:
                found.append(path)  # reported as unreadable by the loader
                continue
            found.extend(p for p in entries if p.suffix.lower() in PERSONA_SUFFIXES and _is_file(p))
            found.extend(p / LOLLMS_CONFIG for p in entries if _is_file(p / LOLLMS_CONFIG))
        else:
            found.append(path)
    return found


def load_personas(paths: Iterable[Path], known_solvers: Optional[FrozenSet[str]] = None,
                  on_problem: Optional[Callable[[str], None]] = None, *,
                  default_solvers: Sequence[str] = DEFAULT_SOLVERS,
                  on_warning: Optional[Callable[[str], None]] = None,
                  plugin_personas: bool = False) -> Tuple[Dict[str, Persona], List[str]]:
    """Load every good persona from files and folders; report, never raise, for the bad ones.

    Returns the personas by name (a later file with the same name replaces an earlier one, so
    user folders listed after the shipped one override it) and the problem lines. With
    ``plugin_personas``, personas that installed packages publish (``opm.persona``) come first.
    Each persona's warnings (ignored keys, skipped solvers) go to ``on_warning`` once.
    """
    personas: Dict[str, Persona] = {}
    problems: List[str] = []
    loaded: List[Any] = []
    if plugin_personas:
        from .formats.ovos import entry_point_personas

        loaded.extend(entry_point_personas(known_solvers, default_solvers))
    loaded.extend(persona_files(paths))
    for item in loaded:
        lines: List[str] = []
        if isinstance(item, (Persona, PersonaError)):
            persona_or_error: Any = item
        elif not item.exists():
            persona_or_error = PersonaError([f"{item}: does not exist"])
        else:
            try:
                persona_or_error = load_persona_file(item, known_solvers, default_solvers)
            except PersonaError as err:
                persona_or_error = err
        if isinstance(persona_or_error, Persona):
            personas[persona_or_error.name] = persona_or_error
            for line in persona_or_error.warnings if on_warning else ():
                on_warning(line)
            continue
        lines = persona_or_error.problems
        problems.extend(lines)
        if on_problem:
            for line in lines:
                on_problem(line)
    return personas, problems
