"""OVOS persona JSON as ovos-persona reads it: ``solvers``/``handlers`` named by plugin id, one
config block per plugin, ``memory_module``; and personas installed packages publish through the
``opm.persona`` entry point group.

The OpenAI-compatible plugins become the built-in ``openai`` solver; ``ovos-solver-failure-plugin``
and ``ovos-solver-rivescript-plugin`` become ``failure`` and ``chitchat`` when they are not
installed themselves; any other plugin that is not installed is skipped with a warning while
another solver remains.
"""
from __future__ import annotations

import re
from importlib import metadata
from typing import Any, Dict, FrozenSet, Iterator, List, Mapping, Optional, Sequence, Tuple, Union

from ..persona import DEFAULT_SOLVERS, Persona, PersonaError, parse_persona
from .common import Fields, ReadContext

ENTRY_POINT_GROUP = "opm.persona"
FAILURE_PLUGINS = frozenset({"ovos-solver-failure-plugin"})
CHITCHAT_PLUGINS = frozenset({"ovos-solver-rivescript-plugin"})
OPENAI_PLUGINS = frozenset({"ovos-solver-openai-persona-plugin", "ovos-solver-openai-plugin", "ovos-openai-plugin",
                            "ovos-chat-openai-plugin", "ovos-openai-chat-plugin", "ovos-solver-openai-chat-plugin"})
BUILTIN_FOR_PLUGIN: Dict[str, str] = {
    **{plugin: "failure" for plugin in FAILURE_PLUGINS},
    **{plugin: "chitchat" for plugin in CHITCHAT_PLUGINS},
    **{plugin: "openai" for plugin in OPENAI_PLUGINS},
}
#: keys of the OpenAI plugins' blocks that our openai solver reads under the same name
OPENAI_KEPT = ("api_url", "key", "model", "temperature", "top_p", "max_tokens", "stop", "timeout")
#: keys that hold the system prompt, in the order they are looked for
PROMPT_KEYS = ("system_prompt", "persona", "initial_prompt")
_PLUGIN_ID = re.compile(r"^(ovos|neon)-|-plugin(-|$)")
#: our own top-level keys, passed through unchanged
NATIVE_KEYS = frozenset({"description", "system_prompt", "context", "lang", "generation", "memory", "thinking",
                         "answer_instruction", "greetings", "post_history_instructions", "voice", "lorebook"})


def _solver_list(data: Mapping[str, Any]) -> Any:
    return data.get("handlers", data.get("solvers"))


def _solver_for(plugin: str, known: Optional[FrozenSet[str]]) -> str:
    """The OpenAI plugins always become our ``openai`` (their ``persona`` must be the system prompt);
    the failure and RiveScript plugins become the built-ins only when not installed themselves."""
    if plugin in OPENAI_PLUGINS or (plugin in BUILTIN_FOR_PLUGIN and (known is None or plugin not in known)):
        return BUILTIN_FOR_PLUGIN[plugin]
    return plugin


def looks_like(data: Mapping[str, Any]) -> bool:
    """True for ovos-persona files: ``handlers``, ``memory_module`` or a plugin id among the solvers."""
    if "handlers" in data or "memory_module" in data:
        return True
    solvers = data.get("solvers")
    return isinstance(solvers, list) and any(isinstance(s, str) and _PLUGIN_ID.search(s) for s in solvers)


def _max_turns(document: Dict[str, Any], turns: int) -> None:
    """Set ``memory.max_turns`` without touching the file's data; a bad ``memory`` is left to validation."""
    memory = document.get("memory")
    if memory is None or isinstance(memory, Mapping):
        document["memory"] = {**(memory or {}), "max_turns": turns}


def _openai_block(fields: Fields, plugin: str, block: Mapping[str, Any], document: Dict[str, Any]) -> None:
    config = {key: block[key] for key in OPENAI_KEPT if key in block}
    for key in PROMPT_KEYS:
        prompt = fields.text(key, block, where=f"{plugin}.")
        if prompt.strip() and not document.get("system_prompt"):
            document["system_prompt"] = prompt.strip()
            break
    if block.get("enable_memory") is False:
        _max_turns(document, 0)
    elif isinstance(block.get("memory_size"), int) and not isinstance(block.get("memory_size"), bool):
        _max_turns(document, max(0, block["memory_size"]))
    if config:
        document["openai"] = config
    fields.ignored([key for key in block if key not in OPENAI_KEPT + PROMPT_KEYS
                    + ("enable_memory", "memory_size")], plugin)


def translate(data: Mapping[str, Any], ctx: ReadContext) -> Tuple[Dict[str, Any], List[str]]:
    """Turn an ovos-persona document into ours; return it and the warnings."""
    fields = Fields(data, ctx)
    document: Dict[str, Any] = {key: data[key] for key in NATIVE_KEYS if key in data}
    document["name"] = data.get("name") if data.get("name") is not None else ctx.stem
    key = "handlers" if "handlers" in data else "solvers"
    listed = _solver_list(data)
    used = {"name", "handlers", "solvers", "memory_module"} | NATIVE_KEYS
    if not isinstance(listed, list):
        document["solvers"] = listed  # validation reports it as ours would
        return document, fields.warnings
    chain: List[Any] = []
    for index, plugin in enumerate(listed):
        if not isinstance(plugin, str):
            chain.append(plugin)
            continue
        used.add(plugin)
        solver_id = _solver_for(plugin, ctx.known_solvers)
        block = data.get(plugin) if isinstance(data.get(plugin), Mapping) else {}
        if data.get(plugin) is not None and not isinstance(data.get(plugin), Mapping):
            fields.problem(plugin, f"must be a mapping of settings, not {type(data[plugin]).__name__}")
        if solver_id in chain:
            fields.warn(f"{key}[{index}]: {plugin} is a second {solver_id!r} solver, skipped")
            continue
        if ctx.known_solvers is not None and solver_id not in ctx.known_solvers:
            fields.warn(f"{key}[{index}]: solver {plugin!r} is not installed, skipped")
            continue
        chain.append(solver_id)
        if solver_id == "openai":
            _openai_block(fields, plugin, block, document)
        elif plugin in data:
            document[solver_id] = data[plugin]
    if listed and not chain:
        fields.problem(key, "none of the solvers is installed: " + ", ".join(map(str, listed)))
    document["solvers"] = chain
    memory_module = data.get("memory_module", "")
    if "memory_module" in data and memory_module is None:
        _max_turns(document, 0)
    elif isinstance(memory_module, str) and isinstance(data.get(memory_module), Mapping):
        used.add(memory_module)
        block = data[memory_module]
        prompt = fields.text("system_prompt", block, where=f"{memory_module}.")
        if prompt.strip() and not document.get("system_prompt"):
            document["system_prompt"] = prompt.strip()
        history = block.get("max_history")
        if isinstance(history, int) and not isinstance(history, bool) and history >= 0:
            _max_turns(document, history)
        fields.ignored([k for k in block if k not in ("system_prompt", "max_history")], memory_module)
    fields.ignored([k for k in data if k not in used])
    fields.finish()
    return document, fields.warnings


def entry_point_personas(known_solvers: Optional[FrozenSet[str]] = None,
                         default_solvers: Sequence[Any] = DEFAULT_SOLVERS) -> Iterator[Union[Persona, PersonaError]]:
    """Yield the personas installed packages publish (``opm.persona``), or the error of each bad one."""
    try:
        every = metadata.entry_points()
        # Python 3.9 returns a dict of lists, later versions a selectable collection
        found = list(every.select(group=ENTRY_POINT_GROUP) if hasattr(every, "select")
                     else every.get(ENTRY_POINT_GROUP, ()))
    except Exception as err:  # a broken distribution's metadata can raise anything; loading goes on
        yield PersonaError([f"{ENTRY_POINT_GROUP}: entry points cannot be listed: {err}"])
        return
    for entry in found:
        source = f"{ENTRY_POINT_GROUP}:{entry.name} ({entry.value})"
        try:
            data = entry.load()
            if callable(data):
                data = data()
        except Exception as err:  # third-party code at import time can raise anything; never stop the load
            yield PersonaError([f"{source}: cannot be loaded: {type(err).__name__}: {err}"])
            continue
        if not isinstance(data, Mapping):
            yield PersonaError([f"{source}: must be a persona mapping, not {type(data).__name__}"])
            continue
        ctx = ReadContext(source, known_solvers, default_solvers, stem=entry.name)
        try:
            document, warnings = translate(dict(data), ctx)
            yield parse_persona(document, source, known_solvers, warnings)
        except PersonaError as err:
            yield err
