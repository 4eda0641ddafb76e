"""Builds the chat sent to solvers: one system message, the remembered turns, the new question.

The system message is system_prompt, then context, then the lorebook entries the recent messages
activate, then the conversation's injected context, blank-line separated with empty parts
skipped. A persona's ``post_history_instructions`` follow the remembered turns as a second system
message, just before the new question. The system message must stay byte-identical between the
turns of a conversation (while no lorebook entry comes or goes) so a local model reuses its
cache, so ``{date}`` and ``{time}`` are those of the conversation's first remembered turn, not of
each question.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import List, Optional, Sequence

from .languages import lang_name
from .lorebook import active_entries
from .memory import Turn
from .persona import Persona, fill_placeholders
from .solvers.base import ChatMessage, Role


#: what ``{user}`` becomes when the speaker's name is unknown (the label completions prompts use too)
DEFAULT_USER_NAME = "User"


@dataclass(frozen=True)
class Speaker:
    """What is known of who is asking; every field may be empty."""

    name: str = ""
    location: str = ""


def placeholder_values(persona: Persona, speaker: Speaker, lang: str, started_at: float) -> dict:
    """Return the values for the persona placeholders at a conversation start time."""
    moment = datetime.fromtimestamp(started_at)
    return {
        "name": persona.name,
        "user": speaker.name or DEFAULT_USER_NAME,
        "location": speaker.location,
        "date": moment.strftime("%Y-%m-%d"),
        "time": moment.strftime("%H:%M"),
        "lang": lang,
        "description": persona.description,
        "desc": persona.description,
    }


def system_text(persona: Persona, injected_context: str, values: dict, lore: Sequence[str] = ()) -> str:
    """Return the system message text (placeholders filled; injected context verbatim)."""
    parts = [fill_placeholders(persona.system_prompt, values).strip(),
             fill_placeholders(persona.context, values).strip(),
             *(fill_placeholders(entry, values).strip() for entry in lore),
             injected_context.strip()]
    return "\n\n".join(part for part in parts if part)


def build_messages(persona: Persona, history: Sequence[Turn], question: str, *,
                   injected_context: str = "", speaker: Optional[Speaker] = None, lang: str = "",
                   now: float = 0.0) -> List[ChatMessage]:
    """Return the full chat for chat solvers: system, remembered turns, then the new question."""
    started_at = history[0].created_at if history else now
    values = placeholder_values(persona, speaker or Speaker(), lang or persona.lang, started_at)
    messages: List[ChatMessage] = []
    lore = active_entries(persona.lorebook, [text for turn in history for text in (turn.question, turn.answer)
                                             if text] + [question]) if persona.lorebook else []
    system = system_text(persona, injected_context, values, lore)
    if system:
        messages.append(ChatMessage(Role.SYSTEM, system))
    for turn in history:
        messages.append(ChatMessage(Role.USER, turn.question))
        if turn.answer:
            messages.append(ChatMessage(Role.ASSISTANT, turn.answer))
    after = fill_placeholders(persona.post_history_instructions, values).strip()
    if after:
        messages.append(ChatMessage(Role.SYSTEM, after))
    messages.append(ChatMessage(Role.USER, question))
    return messages


def with_answer_instruction(messages: Sequence[ChatMessage], instruction: str, lang: str) -> List[ChatMessage]:
    """Return the chat with ``instruction`` ({lang}: the language's name) ending the system message."""
    line = instruction.replace("{lang}", lang_name(lang))
    if messages and messages[0].role is Role.SYSTEM:
        return [ChatMessage(Role.SYSTEM, f"{messages[0].content}\n\n{line}")] + list(messages[1:])
    return [ChatMessage(Role.SYSTEM, line)] + list(messages)


def with_history(messages: Sequence[ChatMessage], history: Sequence[ChatMessage]) -> List[ChatMessage]:
    """Return the chat with a client's earlier turns put after the system message."""
    if not history:
        return list(messages)
    head = 1 if messages and messages[0].role is Role.SYSTEM else 0
    return list(messages[:head]) + list(history) + list(messages[head:])
