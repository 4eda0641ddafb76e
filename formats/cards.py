"""Character Cards (V1, V2 ``chara_card_v2``, V3 ``chara_card_v3``) as JSON or inside a PNG.

A PNG card carries the card as base64-encoded UTF-8 JSON in a ``tEXt`` chunk: keyword ``ccv3``
(V3), else ``chara`` (V2/V1); ``ccv3`` wins when both are present. Mapping:

- description, personality, scenario and ``system_prompt`` (its ``{{original}}`` stands for
  ``DEFAULT_MAIN_PROMPT``) -> the system prompt; ``mes_example`` -> example dialogue in context
- ``post_history_instructions`` -> after the remembered turns; ``first_mes`` and
  ``alternate_greetings`` -> greetings; ``character_book`` -> the lorebook
- ``{{char}}``/``<BOT>`` -> the persona's name (V3 ``nickname`` when set), ``{{user}}``/``<USER>``
  -> ``{user}``; ``{{// comments}}`` are dropped
- creator_notes and the other bookkeeping fields never reach a prompt (listed as ignored)
"""
from __future__ import annotations

import base64
import binascii
import json
import re
import struct
import zlib
from typing import Any, Dict, List, Mapping, Optional, Tuple

from ..persona import PersonaError
from .common import Fields, ReadContext

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
CARD_KEYWORDS = ("ccv3", "chara")  # preferred first
SPECS = ("chara_card_v2", "chara_card_v3")
#: what ``{{original}}`` in a card's system_prompt stands for, and the prompt of cards without one
DEFAULT_MAIN_PROMPT = "You are {{char}}. Stay in character and reply to {{user}}."
USED = frozenset({"name", "description", "personality", "scenario", "first_mes", "mes_example", "system_prompt",
                  "post_history_instructions", "alternate_greetings", "character_book", "nickname"})
_BOOK_ENTRY_USED = frozenset({"keys", "content", "constant", "selective", "secondary_keys", "case_sensitive",
                              "use_regex", "insertion_order", "priority", "enabled", "name"})
_CHAR = re.compile(r"\{\{char\}\}|<BOT>", re.IGNORECASE)
_USER = re.compile(r"\{\{user\}\}|<USER>", re.IGNORECASE)
_COMMENT = re.compile(r"\{\{//.*?\}\}", re.DOTALL)
_LINE_USER = re.compile(r"^(\{\{user\}\}|<USER>):", re.IGNORECASE | re.MULTILINE)
_START = re.compile(r"^\s*<START>\s*$", re.IGNORECASE | re.MULTILINE)


def _chunks(raw: bytes, source: str) -> Dict[str, bytes]:
    """Return the text of the card keywords' ``tEXt`` chunks; raise on a truncated PNG."""
    found: Dict[str, bytes] = {}
    offset = len(PNG_SIGNATURE)
    while offset < len(raw):
        if offset + 8 > len(raw):
            raise PersonaError([f"{source}: is a truncated PNG (a chunk header is cut off)"])
        length, kind = struct.unpack(">I4s", raw[offset:offset + 8])
        end = offset + 8 + length + 4
        if end > len(raw):
            raise PersonaError([f"{source}: is a truncated PNG (chunk {kind.decode('latin-1')!r} is cut off)"])
        body = raw[offset + 8:offset + 8 + length]
        if kind == b"tEXt" and b"\x00" in body:
            keyword, _, text = body.partition(b"\x00")
            name = keyword.decode("latin-1").lower()
            if name in CARD_KEYWORDS:
                crc = struct.unpack(">I", raw[end - 4:end])[0]
                if zlib.crc32(kind + body) & 0xFFFFFFFF != crc:
                    raise PersonaError([f"{source}: the PNG's {name!r} chunk is corrupt (CRC mismatch)"])
                found.setdefault(name, text)
        if kind == b"IEND":
            break
        offset = end
    return found


def card_from_png(raw: bytes, source: str) -> Any:
    """Return the decoded card JSON a PNG carries (``ccv3`` preferred over ``chara``)."""
    chunks = _chunks(raw, source)
    for keyword in CARD_KEYWORDS:
        if keyword in chunks:
            try:
                return json.loads(base64.b64decode(chunks[keyword], validate=True).decode("utf-8"))
            except (binascii.Error, ValueError) as err:  # JSONDecodeError and UnicodeDecodeError included
                raise PersonaError([f"{source}: the PNG's {keyword!r} chunk is not base64-encoded card "
                                    f"JSON: {err}"]) from err
            except RecursionError as err:
                raise PersonaError([f"{source}: the PNG's {keyword!r} card is nested too deeply"]) from err
    raise PersonaError([f"{source}: is a PNG image with no character card in it (no 'ccv3' or 'chara' "
                        f"text chunk)"])


def looks_like(data: Mapping[str, Any]) -> bool:
    """True for V2/V3 cards (any ``chara_card`` spec, or ``spec`` with ``data``) and V1 cards."""
    spec = data.get("spec")
    if isinstance(spec, str) and spec.startswith("chara_card"):
        return True
    if "spec" in data and isinstance(data.get("data"), Mapping):
        return True
    return "spec" not in data and "first_mes" in data and "name" in data


class _Macros:
    """Replaces a card's macros with our placeholders (or the nickname)."""

    def __init__(self, char: str) -> None:
        self.char = char

    def __call__(self, text: str, original: str = "") -> str:
        text = _COMMENT.sub("", text)
        text = re.sub(r"\{\{original\}\}", lambda _: original, text, flags=re.IGNORECASE)
        text = _CHAR.sub(lambda _: self.char, text)
        return _USER.sub("{user}", text).strip()


def _examples(text: str, macros: _Macros) -> str:
    text = _LINE_USER.sub("User:", text)
    blocks = [block.strip() for block in _START.split(text) if block.strip()]
    return "Example dialogue:\n" + "\n\n".join(macros(block) for block in blocks) if blocks else ""


def _decorators(content: str, entry: Dict[str, Any]) -> str:
    """Apply V3 ``@@`` decorator lines at the start of an entry's content; return the rest."""
    lines = content.split("\n")
    while lines and lines[0].startswith("@@"):
        decorator = lines.pop(0).strip()
        if decorator == "@@activate":
            entry["constant"] = True
        elif decorator == "@@dont_activate":
            entry["enabled"] = False
    return "\n".join(lines)


def _lorebook(fields: Fields, book: Mapping[str, Any], macros: _Macros) -> Dict[str, Any]:
    lorebook: Dict[str, Any] = {}
    for key in ("scan_depth", "token_budget"):
        if book.get(key) is not None:
            lorebook[key] = book[key]
    entries = book.get("entries") or []
    if not isinstance(entries, list):
        fields.problem("character_book.entries", "must be a list")
        return lorebook
    converted: List[Any] = []
    ignored: set = set()
    for item in entries:
        if not isinstance(item, Mapping):
            converted.append(item)  # validation names it
            continue
        entry = {key: item[key] for key in _BOOK_ENTRY_USED if key in item and item[key] is not None}
        if isinstance(entry.get("content"), str):
            entry["content"] = macros(_decorators(entry["content"], entry))
        ignored.update(key for key in item if key not in _BOOK_ENTRY_USED)
        converted.append(entry)
    lorebook["entries"] = converted
    fields.ignored(ignored, "character_book.entries")
    fields.ignored([key for key in book if key not in ("scan_depth", "token_budget", "entries")], "character_book")
    return lorebook


def card_data(data: Mapping[str, Any], fields: Fields) -> Optional[Mapping[str, Any]]:
    """Return the card's field mapping (``data`` of V2/V3, the top level of V1), or None on a problem."""
    if "spec" not in data:
        return data
    spec = data.get("spec")
    if spec not in SPECS:
        fields.problem("spec", f"unsupported card spec {spec!r} (readable: {', '.join(SPECS)})")
        return None
    inner = data.get("data")
    if not isinstance(inner, Mapping):
        fields.problem("data", f"must hold the card's fields as a mapping, not {type(inner).__name__}")
        return None
    return inner


def translate(data: Mapping[str, Any], ctx: ReadContext) -> Tuple[Dict[str, Any], List[str]]:
    """Turn a character card into our persona document; return it and the warnings."""
    fields = Fields(data, ctx)
    card = card_data(data, fields)
    if card is None:
        raise PersonaError(fields.problems)
    fields.data = card
    name = fields.text("name").strip() or ctx.stem
    macros = _Macros(fields.text("nickname").strip() or "{name}")
    main = fields.text("system_prompt").strip()
    default_main = macros(DEFAULT_MAIN_PROMPT)
    personality, scenario = macros(fields.text("personality")), macros(fields.text("scenario"))
    parts = [macros(main, original=default_main) if main else default_main,
             macros(fields.text("description")),
             f"{macros('{{char}}')}'s personality: {personality}" if personality else "",
             f"Scenario: {scenario}" if scenario else ""]
    document: Dict[str, Any] = {
        "name": name,
        "system_prompt": "\n\n".join(part for part in parts if part),
        "context": _examples(fields.text("mes_example"), macros),
        "post_history_instructions": macros(fields.text("post_history_instructions")),
        "greetings": [macros(line) for line in [fields.text("first_mes")] + fields.strings("alternate_greetings")
                      if line.strip()],
    }
    book = fields.mapping("character_book")
    if book:
        document["lorebook"] = _lorebook(fields, book, macros)
    ctx.default_chain(document)
    fields.finish()
    top_ignored = [key for key in data if key not in ("spec", "spec_version", "data")] if "spec" in data else []
    fields.ignored([key for key in card if key not in USED] + top_ignored)
    return document, fields.warnings
