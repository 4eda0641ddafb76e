"""Token stream -> speakable sentences: incremental sentence splitting and markdown/emoji stripping.

The voice speaks sentence by sentence, so a sentence is emitted as soon as its end is certain
("Hello. " once the space arrives; "Hello." at the end of the buffer waits, since "3." may become
"3.14"). Split decisions are made on the raw text and each sentence is cleaned on its own.

Design choices:

- Every newline ends a sentence, so each line (list item, heading, table row) is spoken alone.
- Code fences: the fence lines *and the code between them* are dropped. Code read aloud
  symbol by symbol helps nobody; the prose around a code block carries its meaning. Inline code
  keeps its text (only the backticks go). An unclosed fence drops the rest of the answer, as a
  renderer would show it all as code.
- Cleaning is local: ``clean_for_speech(text)`` equals the cleaned sentences of ``text`` joined
  (modulo whitespace), because no cleaning rule looks across a sentence boundary and line-start
  rules (bullets, headings, ordinals, rules, table separators) only touch the first sentence
  of a line, which the splitter never cuts inside.
- A stop ends a sentence only once the sentence holds a letter or digit ("...", "- ." do not).
"""
from __future__ import annotations

import re
import unicodedata
from functools import lru_cache
from typing import Iterable, Iterator, List, Optional, Tuple

from .abbreviations import rules_for

__all__ = ["SentenceSplitter", "clean_for_speech", "iter_sentences", "split_sentences"]

# Western stops end a sentence only when whitespace (or the end of the text) follows.
_STOPS = ".!?…‽؟।॥"
# CJK stops end a sentence on their own: these scripts put no space after them.
_CJK_STOPS = "。！？｡"
_ALL_STOPS = _STOPS + _CJK_STOPS
# Closing quotes/brackets and emphasis markers right after a stop stay with the sentence.
# "]" is left out on purpose: "[Done.](url)" must keep its link target next to its text.
_CLOSERS = "\"'”’“‘»›)」』）】〕〉》*_~`"
# Skipped when looking at the first letter of the next word ("etc. (and more)").
_OPENERS = "\"'“‘„«‹([{*_~`¿¡"

_DOTTED_INITIALS_RE = re.compile(r"(?:[^\W\d_]\.)+[^\W\d_]")  # "u.s", "a.m"

_INTERESTING_RE = re.compile("[\n" + re.escape(_ALL_STOPS) + "]")
_WORD_CHAR_RE = re.compile(r"[^\W_]")

# Line-start markdown: blockquote, heading, bullet, task box, then an ordinal ("1.", "**2.**").
_LEAD = r"[ \t]*(?:>[ \t]*)*(?:#{1,6}[ \t]+)?(?:[-*+•][ \t]+)?(?:\[[ xX]\][ \t]+)?"
_LINE_PREFIX_RE = re.compile(_LEAD + r"(?:[*_]{0,3}\d{1,3}[.)][*_]{0,3}[ \t]+)?")
# The splitter must not cut after an ordinal that _LINE_PREFIX_RE would strip.
_ORDINAL_LEAD_RE = re.compile(_LEAD + r"[*_]{0,3}\d{1,3}\.[*_]{0,3}")
# Whole lines with nothing to say: horizontal rules, setext underlines, table separators.
_RULE_LINE_RE = re.compile(r"\s*([-*_=])(?:\s*\1){2,}\s*")
_TABLE_SEP_RE = re.compile(r"\s*\|?(?:[ \t]*:?-+:?[ \t]*\|)+(?:[ \t]*:?-+:?)?\s*")

_FENCE_OPEN_RE = re.compile(r"[ \t]{0,3}(`{3,}|~{3,})")
_FENCE_CLOSE_RE = re.compile(r"[ \t]{0,3}(`{3,}|~{3,})\s*")
_FENCE_PARTIAL_RE = re.compile(r"[ \t]{0,3}(?:`{0,2}|~{0,2})")

# A "!" that starts its own stop run and opens "[" is an image; the lookbehind keeps the rule
# from reaching into a stop run that may end a CJK sentence.
_IMAGE_RE = re.compile(r"(?<![" + re.escape(_ALL_STOPS) + r"])!\[")
# Link targets hold no whitespace and no CJK stop, so no sentence boundary falls inside one.
_LINK_TARGET_RE = re.compile(r"\]\([^\s()" + re.escape(_CJK_STOPS) + r"]*\)")
_HTML_TAG_RE = re.compile(r"</?[A-Za-z][A-Za-z0-9]*/?>")
_LONE_ZWNJ_RE = re.compile(r"(?<!\w)\u200c|\u200c(?!\w)")
_SPACE_BEFORE_PUNCT_RE = re.compile(r"\s+(?=[.,!?;:…。！？、，])")
_SPACES_RE = re.compile(r"\s+")

_REMOVED_CHARS = frozenset("#*~`|<>[]{}^\\•‣⁃◦∙")
_KEPT_SYMBOLS = frozenset("°℃℉№")
_ARROW_RANGES = ((0x2190, 0x21FF), (0x27F0, 0x27FF), (0x2900, 0x297F), (0x2B00, 0x2BFF))

_LINE_START, _NORMAL, _FENCE_LINE = "line_start", "normal", "fence_line"
_Fence = Optional[Tuple[str, int]]
_Decision = Optional[Tuple[bool, int]]


@lru_cache(maxsize=8192)
def _speakable(ch: str) -> str:
    """Map one character to what the TTS should see: itself, a space or nothing."""
    if ch == "_" or ch.isspace():
        return " "
    if ch in _REMOVED_CHARS:
        return ""
    if ch == "\u200c":
        # ZWNJ is part of Persian spelling; lone ones are removed later.
        return ch
    cat = unicodedata.category(ch)
    if cat[0] in "LNP" or cat == "Sc":
        return ch
    if cat == "Sm":
        code = ord(ch)
        return "" if any(lo <= code <= hi for lo, hi in _ARROW_RANGES) else ch
    if cat == "So":
        # Emoji, box drawing, dingbats; a few unit signs are real words.
        return ch if ch in _KEPT_SYMBOLS else ""
    if cat[0] == "M":
        # Enclosing keycaps and variation selectors only dress emoji; other marks spell words.
        code = ord(ch)
        if cat == "Me" or 0xFE00 <= code <= 0xFE0F or 0xE0100 <= code <= 0xE01EF:
            return ""
        return ch
    if cat[0] == "Z":
        return " "
    # Sk (emoji skin tones, ^), controls, format characters (ZWJ, tags), private use, unassigned.
    return ""


def _clean_piece(raw: str, at_line_start: bool) -> str:
    """Clean one sentence (or one whole line); line-start markdown only counts at a line start."""
    text = raw
    if at_line_start:
        if _RULE_LINE_RE.fullmatch(text) or _TABLE_SEP_RE.fullmatch(text):
            return ""
        text = text[_LINE_PREFIX_RE.match(text).end():]
    text = _IMAGE_RE.sub("[", text)
    text = _LINK_TARGET_RE.sub("", text)
    text = _HTML_TAG_RE.sub(" ", text)
    text = "".join(map(_speakable, text))
    text = _LONE_ZWNJ_RE.sub("", text)
    text = _SPACE_BEFORE_PUNCT_RE.sub("", text)
    return _SPACES_RE.sub(" ", text).strip()


def _classify_line(line: str, fence: _Fence) -> Tuple[bool, _Fence]:
    """Return (drop the line, fence state after it) for one complete line."""
    if fence is None:
        match = _FENCE_OPEN_RE.match(line)
        if not match:
            return False, None
        marker = match.group(1)
        # CommonMark: a backtick info string holds no backtick, so "```ls```" is inline code.
        if marker[0] == "`" and "`" in line[match.end():]:
            return False, None
        return True, (marker[0], len(marker))
    match = _FENCE_CLOSE_RE.fullmatch(line)
    if match and match.group(1)[0] == fence[0] and len(match.group(1)) >= fence[1]:
        return True, None
    return True, fence


def clean_for_speech(text: str) -> str:
    """Strip markdown, code blocks, emoji and stray symbols, and collapse whitespace."""
    parts: List[str] = []
    fence: _Fence = None
    for line in text.split("\n"):
        drop, fence = _classify_line(line, fence)
        if not drop:
            cleaned = _clean_piece(line, True)
            if cleaned:
                parts.append(cleaned)
    return " ".join(parts)


class SentenceSplitter:
    """Incremental splitter: feed text chunks, get speakable sentences as soon as they end.

    Only the unfinished tail is kept and each character is scanned about once; a stop whose
    meaning depends on characters not yet received is re-examined when they arrive. ``lang``
    picks the abbreviations that do not end a sentence ("Sr." in Portuguese, "z. B." in German).
    """

    def __init__(self, lang: str = "en") -> None:
        self.lang = lang
        self._reset()

    @property
    def lang(self) -> str:
        """The language whose abbreviations apply; may change while text streams."""
        return self._lang

    @lang.setter
    def lang(self, value: str) -> None:
        self._lang = value
        self._rules = rules_for(value)

    def _reset(self) -> None:
        self._buf = ""
        self._start = 0  # where the current sentence begins in _buf
        self._scan = 0  # everything in _buf[_start:_scan] is known not to end the sentence
        self._has_word = False  # _buf[_start:_scan] holds a letter or digit
        self._at_line_start = True
        self._mode = _LINE_START
        self._fence: _Fence = None

    def feed(self, chunk: str) -> List[str]:
        """Add a chunk; return the sentences it completed, cleaned for speech."""
        if not chunk:
            return []
        self._buf += chunk
        out = self._drain(final=False)
        if self._start:
            # Forget what was emitted so the buffer holds only the unfinished sentence.
            self._buf = self._buf[self._start:]
            self._scan -= self._start
            self._start = 0
        return out

    def flush(self) -> List[str]:
        """Return the rest (the last sentence even without final punctuation) and reset."""
        out = self._drain(final=True)
        self._reset()
        return out

    def _emit(self, end: int, out: List[str]) -> None:
        cleaned = _clean_piece(self._buf[self._start:end], self._at_line_start)
        if cleaned:
            out.append(cleaned)

    def _drain(self, final: bool) -> List[str]:
        out: List[str] = []
        buf = self._buf
        size = len(buf)
        while not (final and self._start >= size):
            if self._mode == _LINE_START:
                progressed = self._classify_line_start(final)
            elif self._mode == _FENCE_LINE:
                progressed = self._consume_fence_line(final)
            else:
                progressed = self._scan_normal(final, out)
            if not progressed:
                break
        if final and self._mode == _NORMAL and self._start < size:
            self._emit(size, out)
            self._start = size
        return out

    def _classify_line_start(self, final: bool) -> bool:
        """Decide whether the line now starting is a fence line; False while it cannot be told."""
        if self._fence is not None or _FENCE_OPEN_RE.match(self._buf, self._start):
            self._mode = _FENCE_LINE
            return True
        if not final and _FENCE_PARTIAL_RE.fullmatch(self._buf, self._start):
            return False
        self._mode = _NORMAL
        return True

    def _consume_fence_line(self, final: bool) -> bool:
        """Drop a complete fence or code line; False while the line is incomplete."""
        buf, start = self._buf, self._start
        newline = buf.find("\n", self._scan)
        if newline < 0:
            if not final:
                self._scan = len(buf)
                return False
            end = len(buf)
        else:
            end = newline
        drop, fence = _classify_line(buf[start:end], self._fence)
        if not drop:
            # Looked like a fence opener but is text ("```ls``` lists files."): split it normally.
            self._mode = _NORMAL
            self._scan = start
            return True
        self._fence = fence
        self._start = self._scan = min(end + 1, len(buf))
        self._mode = _LINE_START
        return True

    def _scan_normal(self, final: bool, out: List[str]) -> bool:
        """Advance to the next newline or stop and act on it; False when waiting for input."""
        buf = self._buf
        pos = self._scan
        match = _INTERESTING_RE.search(buf, pos)
        end = match.start() if match else len(buf)
        if not self._has_word and _WORD_CHAR_RE.search(buf, pos, end):
            self._has_word = True
        if match is None:
            self._scan = end
            return False
        if buf[end] == "\n":
            self._emit(end, out)
            self._start = self._scan = end + 1
            self._has_word = False
            self._at_line_start = True
            self._mode = _LINE_START
            return True
        decision = self._decide(end, final)
        if decision is None:
            self._scan = end
            return False
        is_boundary, after = decision
        if is_boundary:
            self._emit(after, out)
            self._start = after
            self._has_word = False
            self._at_line_start = False
        self._scan = after
        return True

    def _decide(self, pos: int, final: bool) -> _Decision:
        """For the stop run at ``pos``: (ends the sentence, index after it), or None to wait."""
        buf = self._buf
        size = len(buf)
        run_end = pos
        while run_end < size and buf[run_end] in _ALL_STOPS:
            run_end += 1
        after = run_end
        while after < size and buf[after] in _CLOSERS:
            after += 1
        if after == size and not final:
            return None
        if not self._has_word:
            return False, after
        run = buf[pos:run_end]
        if any(ch in _CJK_STOPS for ch in run):
            return True, after
        if after < size and not buf[after].isspace():
            return False, after  # "3.14", "v1.2", "Hi!there"
        if (self._at_line_start and after < size and buf[after] in " \t"
                and _ORDINAL_LEAD_RE.fullmatch(buf, self._start, after)):
            return False, after  # list ordinal "1. " or "**2.** "
        if run != "." or after != run_end:
            return True, after
        return self._decide_abbreviation(pos, after, final)

    def _decide_abbreviation(self, pos: int, after: int, final: bool) -> _Decision:
        """Handle a lone period followed by whitespace or the end: abbreviation or sentence end."""
        buf = self._buf
        begin = pos
        while begin > self._start and not buf[begin - 1].isspace():
            begin -= 1
        word = buf[begin:pos].lstrip(_OPENERS)
        if len(word) == 1 and word.isupper():
            return False, after  # an initial: "J. R. R. Tolkien"
        word = word.lower()
        rules = self._rules
        if word in rules.never:
            return False, after  # "Sr. Silva", "Mme. Dupont"
        if rules.spaced_letters and len(word) == 1 and word.isalpha():
            return False, after  # "z. B.", "d. h."
        if rules.ordinal_period and word.isdigit() and len(word) <= 2:
            return False, after  # "Der 3. Oktober"
        before_number = word in rules.before_number
        unless_lower = word in rules.words or bool(_DOTTED_INITIALS_RE.fullmatch(word))
        if not before_number and not unless_lower:
            return True, after
        following = self._next_visible(after, final)
        if following is None:
            return None
        if following.isdigit() or (unless_lower and following.islower()):
            return False, after
        return True, after

    def _next_visible(self, pos: int, final: bool) -> Optional[str]:
        """First character of the next word on this line; "" at a line or text end, None to wait."""
        buf = self._buf
        size = len(buf)
        while pos < size and buf[pos] != "\n" and (buf[pos].isspace() or buf[pos] in _OPENERS):
            pos += 1
        if pos == size:
            return "" if final else None
        return "" if buf[pos] == "\n" else buf[pos]


def split_sentences(text: str, lang: str = "en") -> List[str]:
    """Split a complete text into speakable sentences."""
    splitter = SentenceSplitter(lang)
    return splitter.feed(text) + splitter.flush()


def iter_sentences(chunks: Iterable[str], lang: str = "en") -> Iterator[str]:
    """Yield speakable sentences as soon as the streamed chunks complete them."""
    splitter = SentenceSplitter(lang)
    for chunk in chunks:
        yield from splitter.feed(chunk)
    yield from splitter.flush()
