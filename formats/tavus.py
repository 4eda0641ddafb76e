"""Tavus personas: ``persona_name``, ``system_prompt``, ``context`` and ``layers``.

``layers.llm`` with a ``base_url`` (a custom, OpenAI-compatible LLM) becomes the ``openai``
solver (``base_url`` -> ``api_url``, ``api_key`` -> ``key``, ``model``, ``headers``,
``extra_body``), followed by the default chain so the persona still answers when that server is
down. Without ``base_url`` the model is one Tavus hosts, which cannot be called from here: the
persona answers through the default chain. ``layers.tts`` is kept as the persona's voice.
"""
from __future__ import annotations

from typing import Any, Dict, List, Mapping, Tuple

from .common import Fields, ReadContext

USED = ("persona_name", "system_prompt", "context", "layers")
LLM_KEYS = {"base_url": "api_url", "api_key": "key", "model": "model", "headers": "headers",
            "extra_body": "extra_body"}


def looks_like(data: Mapping[str, Any]) -> bool:
    """True for Tavus personas: ``persona_name``, or ``layers`` holding an ``llm`` or ``tts`` block."""
    layers = data.get("layers")
    return "persona_name" in data or (isinstance(layers, Mapping) and ("llm" in layers or "tts" in layers))


def translate(data: Mapping[str, Any], ctx: ReadContext) -> Tuple[Dict[str, Any], List[str]]:
    """Turn a Tavus persona into our document; return it and the warnings."""
    fields = Fields(data, ctx)
    document: Dict[str, Any] = {
        "name": fields.text("persona_name").strip() or ctx.stem,
        "system_prompt": fields.text("system_prompt"),
        "context": fields.text("context"),
    }
    layers = fields.mapping("layers")
    llm = fields.mapping("llm", layers, "layers.")
    tts = fields.mapping("tts", layers, "layers.")
    ctx.default_chain(document)
    if fields.text("base_url", llm, "layers.llm.").strip():
        config = {ours: llm[theirs] for theirs, ours in LLM_KEYS.items() if llm.get(theirs) is not None}
        document["solvers"] = ["openai"] + [s for s in document["solvers"] if s != "openai"]
        document["openai"] = config
    elif llm.get("model"):
        fields.warn(f"layers.llm: model {llm['model']!r} is hosted by Tavus and cannot be called from here; "
                    f"answering through the default chain")
    if tts:
        document["voice"] = dict(tts)
    fields.finish()
    fields.ignored([key for key in llm if key not in LLM_KEYS], "layers.llm")
    fields.ignored([key for key in layers if key not in ("llm", "tts")], "layers")
    fields.ignored([key for key in data if key not in USED])
    return document, fields.warnings
