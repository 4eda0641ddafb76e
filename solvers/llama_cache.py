"""What a llama model's KV cache holds, how a new prompt reuses it, and saved states per conversation.

Splicing. llama.cpp reuses the KV cache for the longest common *token* prefix with what it
evaluated last. The answer of turn N-1 comes back in turn N as text inside the re-rendered
template, and re-tokenizing that text often differs from the tokens the model generated (a model
may emit ``"wor" + "ld"`` where the tokenizer says ``"world"``), which would throw away the cache
from the first differing token on. So the solver keeps a transcript of what the cache holds
(tokens plus the text they stand for) and builds turn N's tokens as "the cached tokens whose text
the new prompt repeats verbatim, then the tokenized rest". The reuse then covers everything up to
the new tokens of the turn. Cached tokens are checked piece by piece against the new text, never
across a special token of the template, so the model always sees the new prompt's text. Skipped
(plain re-tokenization) for SentencePiece vocabularies that add a leading space to each text
fragment, where a split tokenization would insert spaces.

Interleaved conversations: each loaded model remembers which conversation its KV cache holds.
When a turn of another conversation comes in, the cache of the current one is saved (raw llama.cpp
state without the logits matrix that ``Llama.save_state`` also copies, which is n_batch x n_vocab
floats: tens to hundreds of MB) into a per-model LRU bounded by count (``state_cache_size``) and
by bytes (``state_cache_mb``), and the new conversation's saved state, if any, is loaded. Saving on switch rather than after every answer costs nothing while one
conversation talks alone.
"""
from __future__ import annotations

import ctypes
import mmap
from bisect import bisect_right
from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Iterator, List, Optional, Sequence, Tuple

from ovos_utils.log import LOG

if TYPE_CHECKING:  # pragma: no cover
    from .llama_models import LoadedModel
    from .llama_prompt import Rendered


#: a context shift is worth it only when at least this many cached tokens follow the dropped span
MIN_SHIFT_RUN = 8


@dataclass
class Transcript:
    """What a model's KV cache holds: ``tokens``, and the text that the first ``n_text_tokens`` stand for.

    Tokens past ``n_text_tokens`` (the generated answer) are verified piece by piece when reused.
    """

    conversation_id: str
    tokens: List[int]
    text: bytes = b""
    n_text_tokens: int = 0


@dataclass
class SavedState:
    """A conversation's KV cache copied out of llama.cpp, with the transcript it stands for.

    ``blob`` is the very buffer llama.cpp wrote into, handed back to it on restore: no second copy
    is made on either side (each would be a state's size of RAM at the moment of switching).
    """

    transcript: Transcript
    blob: "ctypes.Array[ctypes.c_uint8]"


def state_blob(size: int, write: "Callable[[ctypes.Array[ctypes.c_uint8], int], int]") -> Optional["ctypes.Array[ctypes.c_uint8]"]:
    """Let llama.cpp ``write`` a state of at most ``size`` bytes into a new buffer; return what it wrote, or None.

    The buffer is an anonymous memory map of its own, not heap memory: states are megabytes each
    and come and go from many threads, and an unmapped state's pages go back to the system the
    moment it is dropped, where freed heap blocks can stay with the allocator.
    """
    if size <= 0:
        return None
    pages = mmap.mmap(-1, size)
    buffer = (ctypes.c_uint8 * size).from_buffer(pages)  # keeps the map alive; unmapped when both go
    written = int(write(buffer, size))
    if written <= 0 or written > size:
        return None
    # a view of the bytes written; it keeps the buffer alive, and copies nothing
    return buffer if written == size else (ctypes.c_uint8 * written).from_buffer(buffer)


class StateCache:
    """Saved conversation states of one model, least recently used first, bounded in count and bytes."""

    def __init__(self) -> None:
        self._states: "OrderedDict[str, SavedState]" = OrderedDict()
        #: bytes of llama.cpp state held (the blobs; transcripts are small beside them)
        self.bytes = 0

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._states))

    def __len__(self) -> int:
        return len(self._states)

    def pop(self, conversation_id: str) -> Optional[SavedState]:
        """Remove and return a conversation's state, if kept."""
        state = self._states.pop(conversation_id, None)
        if state is not None:
            self.bytes -= len(state.blob)
        return state

    def put(self, conversation_id: str, state: SavedState, *, max_entries: int, max_bytes: int) -> List[str]:
        """Keep ``state`` as the most recent; evict the least recent until both bounds hold; return evicted ids.

        A state larger than ``max_bytes`` on its own is not kept at all.
        """
        self.pop(conversation_id)
        evicted: List[str] = []
        if len(state.blob) > max_bytes or max_entries <= 0:
            return [conversation_id]
        self._states[conversation_id] = state
        self.bytes += len(state.blob)
        while len(self._states) > max_entries or self.bytes > max_bytes:
            oldest = next(iter(self._states))
            self.pop(oldest)
            evicted.append(oldest)
        return evicted


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    """Return how many leading items ``a`` and ``b`` share."""
    count = 0
    for x, y in zip(a, b):
        if x != y:
            break
        count += 1
    return count


#: llama.cpp computes a batch of one token on another path (one-query attention) than a batch of
#: several, and the logits differ by up to ~0.5 (SmolLM2): enough to change an answer. Any split of
#: a prompt into pieces of two or more tokens gives the logits of one evaluation of the whole, so
#: the last token's logits never come from a piece of its own: reuse stops two tokens short of a
#: fully cached prompt, and no piece of a prompt is a single token.
MIN_PIECE = 2


def reusable(cached: int, prompt: int) -> int:
    """How many of ``cached`` matching leading tokens to reuse for a prompt of ``prompt`` tokens."""
    return max(0, min(cached, prompt - MIN_PIECE))


def piece_end(start: int, end: int, size: int) -> int:
    """Where the piece of at most ``size`` tokens from ``start`` ends, leaving no single token behind."""
    stop = min(end, start + size)
    return stop - 1 if end - stop == 1 and stop - start > MIN_PIECE else stop


def save_live(model: "LoadedModel") -> Optional[SavedState]:
    """Copy the context's state (KV cache) for the live transcript."""
    if model.live is None or not model.can_save_state:
        return None
    lib, ctx = model.lib, model.llama.ctx
    # the sequence's KV cells only: the whole-context state also carries the output buffers
    # (logits), which nothing here needs, since every answer evaluates at least two prompt tokens
    blob = state_blob(int(lib.llama_state_seq_get_size(ctx, 0)),
                      lambda buffer, size: lib.llama_state_seq_get_data(ctx, buffer, size, 0))
    if blob is None:
        return None
    live = model.live
    transcript = Transcript(live.conversation_id, list(live.tokens), live.text, live.n_text_tokens)
    return SavedState(transcript, blob)


def restore(model: "LoadedModel", saved: SavedState) -> bool:
    """Load a saved state into the context; return False (context reset) if llama.cpp refuses."""
    lib, llama = model.lib, model.llama
    blob = saved.blob
    lib.llama_memory_seq_rm(lib.llama_get_memory(llama.ctx), 0, -1, -1)
    if int(lib.llama_state_seq_set_data(llama.ctx, blob, len(blob), 0)) != len(blob):
        model.reset()
        return False
    count = len(saved.transcript.tokens)
    llama.input_ids[:count] = saved.transcript.tokens
    llama.n_tokens = count
    model.live = saved.transcript
    return True


def switch_conversation(model: "LoadedModel", conversation_id: str, max_entries: int, max_bytes: int) -> bool:
    """Make the context hold ``conversation_id``'s cache if saved; return True if a state was loaded.

    The conversation that leaves the context is saved first, within ``max_entries`` states and
    ``max_bytes`` bytes per model (least recently used states go first).
    """
    live = model.live
    if live is not None and live.conversation_id == conversation_id:
        return False
    if model.decoder is not None:  # several sequences: the decoder saves per sequence (llama_batch)
        return False
    if max_entries <= 0 or max_bytes <= 0 or not model.can_save_state:
        return False
    evicted: List[str] = []
    with model.books:
        # taken out first, so that saving the leaving conversation cannot evict the one arriving
        wanted = model.saved.pop(conversation_id) if conversation_id else None
        if live is not None and live.conversation_id:
            saved = save_live(model)  # the freshest copy: a restored state left ``saved`` on load
            if saved is not None:
                evicted = model.saved.put(live.conversation_id, saved, max_entries=max_entries, max_bytes=max_bytes)
                del saved
    restored = wanted is not None and restore(model, wanted)
    # ovos_utils' LOG walks the stack and leaves the frames in a reference cycle until the garbage
    # collector runs: a state still named here stayed in memory that long (+13 MB per switch,
    # rss_llama swinging between 330 and 416 MB)
    del wanted
    if evicted:
        LOG.debug(f"llama-cpp: saved states dropped for {len(evicted)} conversations "
                  f"({model.saved.bytes} bytes kept, limit {max_bytes})")
    return restored


def forget(model: "LoadedModel", conversation_id: str) -> None:
    """Drop the saved state of ``conversation_id`` and stop calling the live cache by its name."""
    with model.books:
        model.saved.pop(conversation_id)
        if model.live is not None and model.live.conversation_id == conversation_id:
            model.live.conversation_id = ""


class _PromptMap:
    """Where a new prompt's text lies and where its special tokens are, for piece-by-piece checks."""

    def __init__(self, model: "LoadedModel", rendered: "Rendered") -> None:
        self.model = model
        self.text: bytes = rendered.text or b""
        self.ok = rendered.text is not None
        offsets, position = [], 0
        for token in rendered.tokens:
            offsets.append(position)
            position += len(model.piece(token))
        # the tokens must spell the text back exactly, or nothing is reused: do not guess
        self.ok = self.ok and position == len(self.text)
        self.specials = {offsets[i]: (offsets[i] + len(model.piece(t)), t)
                         for i, t in enumerate(rendered.tokens) if model.is_special(t)}
        self.starts = sorted(self.specials)

    def straddles(self, position: int) -> bool:
        """True when a special token of the prompt starts before ``position`` and ends after it."""
        at = bisect_right(self.starts, position - 1) - 1
        return at >= 0 and self.specials[self.starts[at]][0] > position

    def _inside_special(self, begin: int, end: int) -> bool:
        at = bisect_right(self.starts, end - 1) - 1  # last special starting before ``end``
        return at >= 0 and self.specials[self.starts[at]][0] > begin

    def walk(self, tokens: Sequence[int], count: int, position: int) -> Tuple[int, int]:
        """Follow ``tokens`` from index ``count`` while they spell the text from byte ``position`` on.

        Never across a special token of the template: a cached special token must be one in the
        new prompt, and a cached text token must not cover part of one.
        """
        model, text = self.model, self.text
        while count < len(tokens):
            token = tokens[count]
            piece = model.piece(token)
            end = position + len(piece)
            if not piece or not text.startswith(piece, position):
                break
            if model.is_special(token):
                if self.specials.get(position) != (end, token):
                    break
            elif self._inside_special(position, end):
                break
            count, position = count + 1, end
        return count, position


def drop_span(model: "LoadedModel", rendered: "Rendered") -> int:
    """Context shift on the model's one sequence (see ``shift_span``); return the tokens removed."""
    base = model.live
    if base is None or model.llama.n_tokens != len(base.tokens):
        return 0
    kept = shift_span(model, base, rendered, 0)
    if kept is None:
        return 0
    if not kept.tokens:  # llama.cpp refused to remove the span: the sequence was emptied
        model.reset()
        return 0
    llama = model.llama
    llama.input_ids[:len(kept.tokens)] = kept.tokens
    llama.n_tokens = len(kept.tokens)
    model.live = kept
    return len(base.tokens) - len(kept.tokens)


def shift_span(model: "LoadedModel", base: Transcript, rendered: "Rendered", seq: int) -> Optional[Transcript]:
    """Context shift: remove from sequence ``seq`` a span of cached tokens the new prompt no longer has.

    A conversation longer than its memory window loses its oldest turn from the prompt, which
    changes everything after the system message; without this every such turn re-evaluates the
    whole history. The span is found where the cached tokens (``base``) stop spelling the new
    prompt, and ends where a later run of cached tokens spells it again; llama.cpp removes it and
    shifts the later positions down (RoPE models re-rotate their keys). Return what the sequence
    holds afterwards, or None when nothing was removed (on a refusal the sequence is emptied).
    """
    if (not model.can_shift or not model.splice_ok or not base.tokens or rendered.text is None):
        return None
    prompt = _PromptMap(model, rendered)
    if not prompt.ok:
        return None
    tokens = base.tokens
    diverged, _ = prompt.walk(tokens, 0, 0)
    if diverged >= len(tokens):
        return None  # the new prompt extends the cache: nothing to drop
    starts, position = [], 0  # byte offset of each cached token up to the divergence
    for token in tokens[:diverged + 1]:
        starts.append(position)
        position += len(model.piece(token))
    # cut where the turn that diverged begins (its special marker) or right at the divergence
    cuts = [diverged] + [i for i in range(diverged, 0, -1) if model.is_special(tokens[i])][:3]
    best, best_reuse = None, diverged
    for cut in cuts:
        at = starts[cut]
        if prompt.straddles(at):
            continue
        for resume in range(cut + 1, len(tokens)):
            end, _ = prompt.walk(tokens, resume, at) if model.piece(tokens[resume]) else (resume, at)
            run = end - resume
            if run >= MIN_SHIFT_RUN and cut + run > best_reuse:
                best, best_reuse = (cut, resume), cut + run
    if best is None:
        return None
    cut, resume = best
    lib = model.lib
    memory = lib.llama_get_memory(model.llama.ctx)
    if not lib.llama_memory_seq_rm(memory, seq, cut, resume):
        lib.llama_memory_seq_rm(memory, seq, -1, -1)
        return Transcript(base.conversation_id, [])
    lib.llama_memory_seq_add(memory, seq, resume, -1, cut - resume)
    return Transcript(base.conversation_id, list(tokens[:cut]) + list(tokens[resume:]))


def splice(model: "LoadedModel", rendered: "Rendered", base: Optional[Transcript] = None) -> List[int]:
    """Return prompt tokens reusing the cached tokens (``base``, else the live transcript) whose text
    the new prompt repeats (module doc)."""
    canonical = rendered.tokens
    base = model.live if base is None else base
    if not model.splice_ok or base is None or not base.tokens or rendered.text is None:
        return canonical
    prompt = _PromptMap(model, rendered)
    if not prompt.ok:
        return canonical
    count, position = 0, 0
    if base.n_text_tokens and prompt.text.startswith(base.text):
        count, position = base.n_text_tokens, len(base.text)
        if prompt.straddles(position):
            count, position = 0, 0
    count, position = prompt.walk(base.tokens, count, position)
    if count <= common_prefix(base.tokens, canonical):
        return canonical
    rest = prompt.text[position:]
    tail = model.llama.tokenize(rest, add_bos=False, special=True) if rest else []
    return list(base.tokens[:count]) + list(tail)


def transcript_of(conversation_id: str, held: List[int], rendered: "Rendered", tokens: List[int]) -> Transcript:
    """What cells holding ``held`` stand for after an answer to the prompt ``tokens`` (rendered as ``rendered``)."""
    if len(held) >= len(tokens) and held[:len(tokens)] == tokens and rendered.text is not None:
        return Transcript(conversation_id, held, rendered.text, len(tokens))
    return Transcript(conversation_id, held)  # cancelled during the prompt: only the tokens are known


def remember(model: "LoadedModel", rendered: "Rendered", tokens: List[int], conversation_id: str) -> None:
    """Record what the context now holds, for splicing and state saving on the next turn."""
    llama = model.llama
    model.live = transcript_of(conversation_id, [int(t) for t in llama.input_ids[:llama.n_tokens]], rendered, tokens)

