"""LoLLMs personalities (``config.yaml`` in a personality folder).

``personality_conditioning`` then ``personality_description`` -> the system prompt (the
description is the persona's description too); ``model_temperature``, ``model_top_k``,
``model_top_p``, ``model_repeat_penalty``, ``model_n_predicts`` -> generation; ``anti_prompts``
-> stop strings; ``welcome_message`` -> greeting; ``language`` -> lang; ``{{date}}``/``{{time}}``
-> ours. A LoLLMs file names no backend, so the persona answers through the default chain; when
that chain holds the ``openai`` solver, ``user_message_prefix``/``ai_message_prefix`` become its
completions-mode ``prompt_template``.
"""
from __future__ import annotations

import re
from typing import Any, Dict, List, Mapping, Tuple

import langcodes

from ..languages import normalize_lang
from .common import Fields, ReadContext

GENERATION = {"model_temperature": "temperature", "model_top_k": "top_k", "model_top_p": "top_p",
              "model_repeat_penalty": "repeat_penalty", "model_n_predicts": "max_tokens"}
USED = frozenset({"name", "personality_description", "personality_conditioning", "welcome_message",
                  "anti_prompts", "language", "user_message_prefix", "ai_message_prefix"} | set(GENERATION))
_MACRO = re.compile(r"\{\{(date|time)\}\}")


def looks_like(data: Mapping[str, Any]) -> bool:
    """True for LoLLMs personality configs."""
    return ("personality_conditioning" in data or "personality_description" in data
            or ("user_message_prefix" in data and "ai_message_prefix" in data))


def _lang(fields: Fields) -> str:
    raw = fields.text("language").strip()
    if not raw:
        return ""
    tag = normalize_lang(raw.replace("_XX", ""), default="")
    if not tag:
        try:
            tag = normalize_lang(langcodes.find(raw).to_tag(), default="")
        except LookupError:
            tag = ""
    if not tag:
        fields.warn(f"language: {raw!r} is not a language this reader knows; using the default")
    return tag


def _label(prefix: str, fallback: str) -> str:
    """Return a prefix as a completions label that ends in a space or newline ("### Human: ")."""
    prefix = prefix.replace("{", "{{").replace("}", "}}")
    if not prefix.strip():
        return f"{fallback}: "
    if prefix.endswith(("\n", " ")):
        return prefix
    return f"{prefix} " if prefix.endswith(":") else f"{prefix}: "


def translate(data: Mapping[str, Any], ctx: ReadContext) -> Tuple[Dict[str, Any], List[str]]:
    """Turn a LoLLMs personality into our document; return it and the warnings."""
    fields = Fields(data, ctx)
    conditioning = _MACRO.sub(r"{\1}", fields.text("personality_conditioning")).strip()
    description = fields.text("personality_description").strip()
    document: Dict[str, Any] = {
        "name": fields.text("name").strip() or ctx.stem,
        "description": description,
        "system_prompt": "\n\n".join(part for part in (conditioning, description) if part),
        "greetings": [line for line in [fields.text("welcome_message").strip()] if line],
    }
    generation: Dict[str, Any] = {}
    for theirs, ours in GENERATION.items():
        value = fields.number(theirs)
        if value is not None and not (ours == "max_tokens" and value <= 0):
            generation[ours] = int(value) if ours in ("top_k", "max_tokens") else value
    stop = [line for line in fields.strings("anti_prompts") if line]
    if stop:
        generation["stop"] = stop
    if generation:
        document["generation"] = generation
    lang = _lang(fields)
    if lang:
        document["lang"] = lang
    ctx.default_chain(document)
    ignored = [key for key in data if key not in USED]
    prefixes = ("user_message_prefix", "ai_message_prefix")
    if "openai" in document["solvers"]:
        user, ai = (_label(fields.text(key), label) for key, label in zip(prefixes, ("User", "Assistant")))
        block = dict(document.get("openai") or {})
        block.setdefault("prompt_template", f"{{system}}\n\n{{history}}{user}{{question}}\n{ai.rstrip(' ')}")
        document["openai"] = block
    else:
        ignored += [key for key in prefixes if key in data]
    fields.finish()
    fields.ignored(ignored)
    return document, fields.warnings
