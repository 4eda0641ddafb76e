"""Our own persona document, written back from a ``Persona``: what ``persona-fallback convert``
prints, so a user can see (and edit) what was understood of a file in any format.

Loading the written YAML gives a ``Persona`` equal to the one it was written from.
"""
from __future__ import annotations

from dataclasses import asdict
from typing import Any, Dict

import yaml

from ..lorebook import LoreEntry, Lorebook
from ..persona import MemorySettings, Persona, ThinkingSettings
from ..solvers.base import GenerationSettings
from ..tools.spec import (ASSISTANT, ASSISTANT_DESCRIPTION, BUS, DEFAULT_MAX_TOOL_ROUNDS, DEFAULT_TOOL_TIMEOUT,
                          TOOLBOX, ToolSpec)

_ENTRY_DEFAULTS = LoreEntry(keys=(), content="")


def _plain(value: Any) -> Any:
    """Tuples and mappings as the lists and dicts YAML writes."""
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    if isinstance(value, dict) or hasattr(value, "items"):
        return {str(key): _plain(item) for key, item in value.items()}
    return value


def _changed(current: Any, default: Any) -> Dict[str, Any]:
    """Return the dataclass fields of ``current`` that differ from ``default``."""
    now, then = asdict(current), asdict(default)
    return {key: _plain(value) for key, value in now.items() if value != then[key]}


def _lorebook(lorebook: Lorebook) -> Dict[str, Any]:
    block: Dict[str, Any] = {"scan_depth": lorebook.scan_depth, "token_budget": lorebook.token_budget}
    block["entries"] = [{"keys": list(entry.keys), "content": entry.content,
                         **{key: value for key, value in _changed(entry, _ENTRY_DEFAULTS).items()
                            if key not in ("keys", "content")}} for entry in lorebook.entries]
    return block


def _tool(spec: ToolSpec) -> Dict[str, Any]:
    """One tool as the persona file writes it (settings left at their default are left out)."""
    entry: Dict[str, Any] = {"kind": spec.kind}
    if spec.kind == TOOLBOX:
        entry["toolbox"] = spec.toolbox
    else:
        entry["name"] = spec.name
    if spec.kind == BUS:
        entry.update(description=spec.description, parameters=_plain(spec.parameters), message=spec.message)
        if spec.reply:
            entry["reply"] = spec.reply
    elif spec.kind == ASSISTANT and spec.description != ASSISTANT_DESCRIPTION:
        entry["description"] = spec.description
    if spec.timeout != DEFAULT_TOOL_TIMEOUT:
        entry["timeout"] = spec.timeout
    if spec.confirm:
        entry["confirm"] = True
    return entry


def to_document(persona: Persona) -> Dict[str, Any]:
    """Return the persona as our persona document (only non-default settings)."""
    document: Dict[str, Any] = {"name": persona.name}
    for key in ("description", "lang", "system_prompt", "context", "post_history_instructions",
                "answer_instruction"):
        value = getattr(persona, key)
        if value:
            document[key] = value
    if persona.greetings:
        document["greetings"] = list(persona.greetings)
    if persona.tags:
        document["tags"] = list(persona.tags)
    if persona.tools.tools:
        document["tools"] = [_tool(spec) for spec in persona.tools.tools]
    if persona.tools.max_rounds != DEFAULT_MAX_TOOL_ROUNDS:
        document["max_tool_rounds"] = persona.tools.max_rounds
    document["solvers"] = list(persona.solvers)
    for solver_id in persona.solvers:
        if persona.solver_config(solver_id):
            document[solver_id] = _plain(persona.solver_config(solver_id))
    for key, default in (("generation", GenerationSettings()), ("memory", MemorySettings()),
                         ("thinking", ThinkingSettings())):
        block = _changed(getattr(persona, key), default)
        if block:
            document[key] = block
    if persona.voice:
        document["voice"] = _plain(persona.voice)
    if persona.lorebook is not None:
        document["lorebook"] = _lorebook(persona.lorebook)
    return document


def to_yaml(persona: Persona) -> str:
    """Return the persona as native YAML text."""
    origin = " ".join(f"{persona.name} from {persona.source or 'a persona'}".split())
    # a comment line is not escaped by the YAML writer: control characters would make the file unreadable
    origin = "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in origin)
    header = f"# converted by persona-fallback: {origin}\n"
    return header + yaml.safe_dump(to_document(persona), allow_unicode=True, sort_keys=False, width=100)
