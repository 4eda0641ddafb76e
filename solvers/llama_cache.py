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
floats: tens to hundreds of MB) into a per-model LRU, and the new conversation's saved state, if
any, is loaded. Saving on switch rather than after every answer costs nothing while one
conversation talks alone.
"""
from __future__ import annotations

import ctypes
from bisect import bisect_right
from dataclasses import dataclass
from typing import TYPE_CHECKING, List, Optional, Sequence

if TYPE_CHECKING:  # pragma: no cover
    from .llama_models import LoadedModel
    from .llama_prompt import Rendered


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
    """A conversation's KV cache copied out of llama.cpp, with the transcript it stands for."""

    transcript: Transcript
    blob: bytes


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    """Return how many leading items ``a`` and ``b`` share."""
    count = 0
    for x, y in zip(a, b):
        if x != y:
            break
        count += 1
    return count


def save_live(model: "LoadedModel") -> Optional[SavedState]:
    """Copy the context's state (KV cache) for the live transcript."""
    if model.live is None or not model.can_save_state:
        return None
    lib, ctx = model.lib, model.llama.ctx
    size = int(lib.llama_state_get_size(ctx))
    buffer = (ctypes.c_uint8 * size)()
    written = int(lib.llama_state_get_data(ctx, buffer, size))
    if written <= 0 or written > size:
        return None
    live = model.live
    transcript = Transcript(live.conversation_id, list(live.tokens), live.text, live.n_text_tokens)
    return SavedState(transcript, ctypes.string_at(buffer, written))


def restore(model: "LoadedModel", saved: SavedState) -> bool:
    """Load a saved state into the context; return False (context reset) if llama.cpp refuses."""
    lib, llama = model.lib, model.llama
    blob = saved.blob
    buffer = (ctypes.c_uint8 * len(blob)).from_buffer_copy(blob)
    if int(lib.llama_state_set_data(llama.ctx, buffer, len(blob))) != len(blob):
        model.reset()
        return False
    count = len(saved.transcript.tokens)
    llama.input_ids[:count] = saved.transcript.tokens
    llama.n_tokens = count
    model.live = saved.transcript
    return True


def switch_conversation(model: "LoadedModel", conversation_id: str, cache_size: int) -> bool:
    """Make the context hold ``conversation_id``'s cache if saved; return True if a state was loaded."""
    live = model.live
    if live is not None and live.conversation_id == conversation_id:
        return False
    if cache_size <= 0 or not model.can_save_state:
        return False
    with model.books:
        if live is not None and live.conversation_id:
            saved = save_live(model)  # the freshest copy: a restored state left ``saved`` on load
            if saved is not None:
                model.saved[live.conversation_id] = saved
                model.saved.move_to_end(live.conversation_id)
        wanted = model.saved.pop(conversation_id, None) if conversation_id else None
        while len(model.saved) > cache_size:
            model.saved.popitem(last=False)
    if wanted is None:
        return False
    return restore(model, wanted)


def forget(model: "LoadedModel", conversation_id: str) -> None:
    """Drop the saved state of ``conversation_id`` and stop calling the live cache by its name."""
    with model.books:
        model.saved.pop(conversation_id, None)
        if model.live is not None and model.live.conversation_id == conversation_id:
            model.live.conversation_id = ""


def splice(model: "LoadedModel", rendered: "Rendered") -> List[int]:
    """Return prompt tokens reusing the cached tokens whose text the new prompt repeats (module doc)."""
    canonical = rendered.tokens
    base, text = model.live, rendered.text
    if not model.splice_ok or base is None or not base.tokens or text is None:
        return canonical
    # byte spans of the template's special tokens in the new prompt: never cut or imitated
    offsets, position = [], 0
    for token in canonical:
        offsets.append(position)
        position += len(model.piece(token))
    if position != len(text):
        return canonical  # the tokens do not spell the text back exactly: do not guess
    specials = {offsets[i]: (offsets[i] + len(model.piece(t)), t)
                for i, t in enumerate(canonical) if model.is_special(t)}
    starts = sorted(specials)

    def inside_special(begin: int, end: int) -> bool:
        at = bisect_right(starts, end - 1) - 1  # last special starting before ``end``
        return at >= 0 and specials[starts[at]][0] > begin

    count, position = 0, 0
    if base.n_text_tokens and text.startswith(base.text):
        count, position = base.n_text_tokens, len(base.text)
        at = bisect_right(starts, position - 1) - 1  # a special token straddling the boundary?
        if at >= 0 and specials[starts[at]][0] > position:
            count, position = 0, 0
    while count < len(base.tokens):
        token = base.tokens[count]
        piece = model.piece(token)
        end = position + len(piece)
        if not piece or not text.startswith(piece, position):
            break
        if model.is_special(token):
            if specials.get(position) != (end, token):
                break
        elif inside_special(position, end):
            break
        count, position = count + 1, end
    if count <= common_prefix(base.tokens, canonical):
        return canonical
    rest = text[position:]
    tail = model.llama.tokenize(rest, add_bos=False, special=True) if rest else []
    return list(base.tokens[:count]) + list(tail)


def remember(model: "LoadedModel", rendered: "Rendered", tokens: List[int], conversation_id: str) -> None:
    """Record what the context now holds, for splicing and state saving on the next turn."""
    llama = model.llama
    held = [int(t) for t in llama.input_ids[:llama.n_tokens]]
    if len(held) >= len(tokens) and held[:len(tokens)] == tokens and rendered.text is not None:
        model.live = Transcript(conversation_id, held, rendered.text, len(tokens))
    else:  # cancelled during the prompt: only the tokens are known
        model.live = Transcript(conversation_id, held)

