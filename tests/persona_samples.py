"""Persona files in other programs' formats, written from their published docs, and a PNG writer."""
from __future__ import annotations

import base64
import json
import struct
import zlib
from typing import Iterable, Tuple


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)


def png(text_chunks: Iterable[Tuple[str, bytes]] = ()) -> bytes:
    """A real 1x1 RGB PNG (signature, IHDR, IDAT, tEXt..., IEND), any image viewer opens it."""
    header = struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0)
    pixels = zlib.compress(b"\x00\xff\x80\x00")  # filter byte + one orange pixel
    chunks = [_chunk(b"IHDR", header), _chunk(b"IDAT", pixels)]
    chunks += [_chunk(b"tEXt", keyword.encode("latin-1") + b"\x00" + text) for keyword, text in text_chunks]
    return b"\x89PNG\r\n\x1a\n" + b"".join(chunks) + _chunk(b"IEND", b"")


def card_chunk(keyword: str, card: dict) -> Tuple[str, bytes]:
    """A card's tEXt chunk: base64 of its UTF-8 JSON."""
    return keyword, base64.b64encode(json.dumps(card).encode("utf-8"))


CARD_V2 = {
    "spec": "chara_card_v2",
    "spec_version": "2.0",
    "data": {
        "name": "Seraphina",
        "description": "{{char}} is a guardian of the forest glade.",
        "personality": "kind, protective",
        "scenario": "<USER> wakes up in {{char}}'s cottage.",
        "first_mes": "*{{char}} smiles* You're awake, {{user}}.",
        "mes_example": "<START>\n{{user}}: Who are you?\n{{char}}: I am {{char}}, keeper of this glade.",
        "creator_notes": "SECRET-NOTES: best with a 13B model",
        "system_prompt": "{{original}} Never break character.",
        "post_history_instructions": "Reply in at most two sentences.",
        "alternate_greetings": ["Oh, hello {{user}}!"],
        "tags": ["fantasy"],
        "creator": "someone",
        "character_version": "1.0",
        "extensions": {"depth_prompt": {"prompt": "x", "depth": 4}},
        "character_book": {
            "name": "Glade lore",
            "scan_depth": 2,
            "token_budget": 14,
            "recursive_scanning": False,
            "extensions": {},
            "entries": [
                {"keys": ["glade"], "content": "The glade is hidden by old magic.", "extensions": {},
                 "enabled": True, "insertion_order": 1, "priority": 5, "id": 1, "comment": "place"},
                {"keys": ["amulet"], "content": "{{char}} wears a silver amulet.", "extensions": {},
                 "enabled": True, "insertion_order": 0, "id": 2},
                {"keys": [], "content": "Magic exists.", "extensions": {}, "enabled": True, "insertion_order": 2,
                 "constant": True, "id": 3},
                {"keys": ["glade"], "content": "Never shown: disabled.", "extensions": {}, "enabled": False,
                 "insertion_order": 3},
            ],
        },
    },
}

CARD_V3 = {
    "spec": "chara_card_v3",
    "spec_version": "3.0",
    "data": {**CARD_V2["data"], "name": "Seraphina V3", "nickname": "Sera", "group_only_greetings": [],
             "creation_date": 1700000000, "modification_date": 1700000000, "assets": []},
}

OVOS_LLM = {  # ovos-persona README: a local OpenAI-compatible server
    "name": "My Local LLM",
    "solvers": ["ovos-solver-openai-persona-plugin"],
    "ovos-solver-openai-persona-plugin": {
        "api_url": "https://llama.smartgic.io/v1",
        "key": "sk-xxxx",
        "persona": "helpful, creative, clever, and very friendly.",
    },
}

OVOS_OLDSCHOOL = {  # ovos-persona README: no LLM at all
    "name": "OldSchoolBot",
    "solvers": ["ovos-solver-wikipedia-plugin", "ovos-solver-ddg-plugin", "ovos-solver-plugin-wolfram-alpha",
                "ovos-solver-wordnet-plugin", "ovos-solver-rivescript-plugin", "ovos-solver-failure-plugin"],
    "ovos-solver-plugin-wolfram-alpha": {"appid": "Y7353-XXX"},
}

TAVUS = {  # Tavus "create persona" request with a custom LLM
    "persona_name": "Life Coach",
    "system_prompt": "As a Life Coach, you are a dedicated professional.",
    "pipeline_mode": "full",
    "context": "Here are a few times that you have helped an individual make a breakthrough.",
    "default_replica_id": "r79e1c033f",
    "document_ids": ["doc1"],
    "layers": {
        "llm": {"model": "my-model", "base_url": "http://127.0.0.1:9/v1", "api_key": "tavus-key-123",
                "tools": [{"type": "function", "function": {"name": "get_weather"}}],
                "headers": {"X-Team": "coaches"}, "extra_body": {"min_p": 0.05}, "speculative_inference": True},
        "tts": {"tts_engine": "cartesia", "external_voice_id": "voice-1", "voice_settings": {"speed": "normal"}},
        "perception": {"perception_model": "raven-0"},
        "stt": {"stt_engine": "tavus-advanced"},
    },
}

LOLLMS = """\
# LoLLMs personality configuration
author: ParisNeo
version: 1.0.0
category: generic
name: Lollms Helper
user_name: user
language: english
personality_description: |
  A helpful assistant that answers briefly.
personality_conditioning: |
  You are a helpful assistant. Current date: {{date}}.
welcome_message: |
  Welcome! How can I help you today?
user_message_prefix: '### Human:'
ai_message_prefix: '### Assistant:'
link_text: '\\n'
anti_prompts: ["### Human:", "### Assistant:"]
dependencies: []
disclaimer: ''
model_temperature: 0.6
model_n_predicts: 1024
model_top_k: 50
model_top_p: 0.9
model_repeat_penalty: 1.3
model_repeat_last_n: 40
"""
