"""Drop a reasoning model's thinking from a chunk stream before it is spoken.

Reasoning models (Qwen3, DeepSeek-R1 distills, servers that inline their reasoning) write
``<think> ... </think>`` before the answer. Only the answer is for the ear. Tags may arrive split
across chunks ("<thi" + "nk>"), so a tail that could still become a tag is held back until the
next chunk (or the end) decides. An unclosed block hides the rest of the answer, as a chat UI
would fold it away.
"""
from __future__ import annotations

from typing import List, Tuple

__all__ = ["ThinkFilter", "strip_thinking"]

#: tag names that open a block of reasoning (compared case-insensitively)
THINK_TAGS: Tuple[str, ...] = ("think", "thinking", "reasoning")


class ThinkFilter:
    """Incremental filter: ``feed`` chunks, get the text outside thinking blocks."""

    def __init__(self, tags: Tuple[str, ...] = THINK_TAGS) -> None:
        self._opens = [f"<{tag}>" for tag in tags]
        self._closes = {f"<{tag}>": f"</{tag}>" for tag in tags}
        self._pending = ""
        self._close = ""  # the close tag awaited while inside a block; "" outside
        self.dropped = 0  # characters of thinking dropped so far

    @property
    def thinking(self) -> bool:
        """True while inside a thinking block."""
        return bool(self._close)

    def feed(self, chunk: str) -> str:
        """Add a chunk; return the visible text it completes."""
        text = self._pending + chunk
        self._pending = ""
        out: List[str] = []
        while text:
            lower = text.lower()
            if self._close:
                end = lower.find(self._close)
                if end < 0:
                    keep = _partial_tail(lower, (self._close,))
                    self.dropped += len(text) - keep
                    self._pending = text[len(text) - keep:] if keep else ""
                    break
                self.dropped += end + len(self._close)
                text = text[end + len(self._close):]
                self._close = ""
                continue
            start, tag = _first(lower, self._opens)
            if tag:
                out.append(text[:start])
                self._close = self._closes[tag]
                text = text[start + len(tag):]
                continue
            keep = _partial_tail(lower, self._opens)
            out.append(text[:len(text) - keep])
            self._pending = text[len(text) - keep:] if keep else ""
            break
        return "".join(out)

    def flush(self) -> str:
        """Return what was held back (a tail that never became a tag) and reset."""
        rest = "" if self._close else self._pending
        self._pending, self._close = "", ""
        return rest


def _first(lower: str, tags: List[str]) -> Tuple[int, str]:
    """Return (position, tag) of the earliest tag in ``lower``, or (-1, "")."""
    best, found = -1, ""
    for tag in tags:
        at = lower.find(tag)
        if at >= 0 and (best < 0 or at < best):
            best, found = at, tag
    return best, found


def _partial_tail(lower: str, tags) -> int:
    """Length of the longest tail of ``lower`` that is a proper prefix of one of ``tags``."""
    start = lower.rfind("<")
    if start < 0:
        return 0
    tail = lower[start:]
    return len(tail) if any(tag.startswith(tail) and tag != tail for tag in tags) else 0


def strip_thinking(text: str) -> str:
    """Return a complete text without its thinking blocks."""
    think = ThinkFilter()
    return think.feed(text) + think.flush()
