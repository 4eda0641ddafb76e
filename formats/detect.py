"""Read any persona file: check its size, decode it (PNG card, JSON or YAML), pick the reader by
content and validate the result into a ``Persona``.

Every failure is one ``PersonaError`` line that names the file and the reason; nothing else
escapes, so one broken file never stops the others from loading.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Dict, FrozenSet, List, Optional, Sequence, Tuple

import yaml

from ..persona import DEFAULT_SOLVERS, Persona, PersonaError, parse_persona
from . import cards, lollms, ovos, tavus
from .common import ReadContext

#: bigger files are refused before they are read (card PNGs are a few MB at most)
MAX_PERSONA_BYTES = 16 * 1024 * 1024
#: YAML aliases allowed in one file: a "billion laughs" file needs many, persona files none
MAX_YAML_ALIASES = 64
#: the readers by the format name ``convert`` and the logs show, tried in this order
Translate = Callable[[Any, ReadContext], Tuple[Dict[str, Any], List[str]]]
READERS: Tuple[Tuple[str, Callable[[Any], bool], Translate], ...] = (
    ("Character Card", cards.looks_like, cards.translate),
    ("Tavus persona", tavus.looks_like, tavus.translate),
    ("LoLLMs personality", lollms.looks_like, lollms.translate),
    ("OVOS persona", ovos.looks_like, ovos.translate),
)
NATIVE = "persona-fallback"


class _AliasCountingLoader(yaml.SafeLoader):
    """A safe loader that refuses files with more aliases than any persona needs."""

    aliases = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            self.aliases += 1
            if self.aliases > MAX_YAML_ALIASES:
                raise yaml.YAMLError(f"more than {MAX_YAML_ALIASES} aliases (a YAML bomb?)")
        return super().compose_node(parent, index)


def _yaml(text: str) -> Any:
    loader = _AliasCountingLoader(text)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


def read_bytes(path: Path) -> bytes:
    """Return the file's bytes; refuse missing, unreadable and oversized files."""
    try:
        size = path.stat().st_size
        if size > MAX_PERSONA_BYTES:
            raise PersonaError([f"{path}: is too big for a persona file ({size} bytes, the limit is "
                                f"{MAX_PERSONA_BYTES})"])
        with path.open("rb") as handle:
            raw = handle.read(MAX_PERSONA_BYTES + 1)
    except OSError as err:
        raise PersonaError([f"{path}: cannot be read: {err.strerror or err}"]) from err
    if len(raw) > MAX_PERSONA_BYTES:  # grew while being read
        raise PersonaError([f"{path}: is too big for a persona file (the limit is {MAX_PERSONA_BYTES} bytes)"])
    return raw


def decode(raw: bytes, path: Path) -> Any:
    """Decode a persona file's bytes: a PNG card's JSON, else JSON, else YAML."""
    if raw.startswith(cards.PNG_SIGNATURE):
        return cards.card_from_png(raw, str(path))
    if b"\x00" in raw[:4096]:
        raise PersonaError([f"{path}: is binary, not a persona file (JSON, YAML or a PNG card)"])
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise PersonaError([f"{path}: is not UTF-8 text: byte {err.start} cannot be decoded"]) from err
    looks_json = text.lstrip()[:1] in ("{", "[")
    try:
        if path.suffix.lower() == ".json" or looks_json:
            try:
                return json.loads(text)
            except json.JSONDecodeError:
                if path.suffix.lower() == ".json" or looks_json and path.suffix.lower() not in (".yaml", ".yml"):
                    raise
        return _yaml(text)
    except json.JSONDecodeError as err:
        reason = err.msg[:-3] if err.msg.endswith(" at") else err.msg  # "...starting at" + " at line"
        raise PersonaError([f"{path}: is not valid JSON: {reason} at line {err.lineno} "
                            f"column {err.colno}"]) from err
    except yaml.YAMLError as err:
        where = getattr(err, "problem_mark", None)
        at = f" at line {where.line + 1} column {where.column + 1}" if where else ""
        reason = getattr(err, "problem", None) or str(err)
        raise PersonaError([f"{path}: is not valid YAML: {reason}{at}"]) from err
    except RecursionError as err:
        raise PersonaError([f"{path}: is nested too deeply to be a persona file"]) from err


def document_of(data: Any, ctx: ReadContext) -> Tuple[Dict[str, Any], List[str], str]:
    """Translate decoded data into our persona document; return it, warnings and the format name."""
    if isinstance(data, dict):
        for name, looks_like, translate in READERS:
            if looks_like(data):
                document, warnings = translate(data, ctx)
                return document, warnings, name
    return data, [], NATIVE


def read_persona(path: Path, known_solvers: Optional[FrozenSet[str]] = None,
                 default_solvers: Sequence[Any] = DEFAULT_SOLVERS) -> Persona:
    """Load one persona file of any format; raise ``PersonaError`` (one line per problem)."""
    persona, _ = read_with_format(path, known_solvers, default_solvers)
    return persona


def read_with_format(path: Path, known_solvers: Optional[FrozenSet[str]] = None,
                     default_solvers: Sequence[Any] = DEFAULT_SOLVERS) -> Tuple[Persona, str]:
    """Load one persona file; return it and the name of the format it was written in."""
    path = Path(path)
    data = decode(read_bytes(path), path)
    ctx = ReadContext(str(path), known_solvers, default_solvers, stem=_stem(path))
    try:
        document, warnings, name = document_of(data, ctx)
        return parse_persona(document, str(path), known_solvers, warnings), name
    except RecursionError as err:
        raise PersonaError([f"{path}: is nested too deeply to be a persona file"]) from err


def _stem(path: Path) -> str:
    # a LoLLMs personality is a folder holding config.yaml: its name is the folder's
    return path.parent.name if path.name == "config.yaml" else path.stem
