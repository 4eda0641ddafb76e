"""Build a tiny random-weight llama GGUF (about 0.4 MB) for tests: loads in milliseconds, no download.

The model speaks nonsense, but it is a real llama.cpp model: a SentencePiece ("llama") vocabulary
with byte fallback, special chat markers, a chat template, two transformer blocks. Two choices make
tests about streaming and prompt reuse deterministic in structure:

- the output rows of control and byte tokens are zero, so their logits are exactly 0 while the
  word pieces' logits spread with a standard deviation of about 4: with top-k/top-p sampling the
  model never emits a control token (no early end of turn, so ``max_tokens`` is always reached) and
  never a lone byte (no broken UTF-8), only word pieces, i.e. plain ASCII text;
- ``tokenizer.ggml.add_space_prefix`` is false, so the SentencePiece tokenizer does not invent a
  leading space in front of every text fragment (as the llama-2 tokenizers do).
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable, List, Sequence, Tuple, Union

import numpy as np

SPACE = "\u2581"  # SentencePiece's visible space

DEFAULT_WORDS: Tuple[str, ...] = (
    "the", "a", "an", "and", "or", "but", "is", "are", "was", "be", "to", "of", "in", "on", "at",
    "it", "you", "i", "we", "they", "he", "she", "this", "that", "what", "who", "how", "why",
    "when", "where", "hello", "hi", "yes", "no", "please", "thanks", "time", "weather", "today",
    "tomorrow", "music", "light", "kitchen", "house", "question", "answer", "story", "tell",
    "me", "about", "like", "good", "day", "night", "sun", "moon", "rain", "cold", "warm", "cat",
    "dog", "book", "read", "play", "song", "friend", "name", "my", "your", "our", "can", "will",
    "do", "does", "know", "think", "say", "said", "very", "much", "more", "some", "all", "one",
    "two", "three", "world", "assistant", "persona", "voice",
)

#: the chat template written into the model: clear markers, a BOS first, an open assistant turn
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>\n' + message['content'] + '<|end|>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
)

#: in the manner of Gemma's published template: no system role, strict user/model alternation
NO_SYSTEM_TEMPLATE = (
    "{{ bos_token }}"
    "{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}"
    "{% for message in messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 is even) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
    "{% endif %}"
    "{{ '<|' + message['role'] + '|>\n' + message['content'] | trim + '<|end|>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
)

#: in the manner of Mistral-Instruct's published template: instructions in brackets, user first,
#: strict alternation (a leading system message breaks it), any other role refused
ALTERNATING_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
    "{% endif %}"
    "{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token }}"
    "{% else %}{{ raise_exception('Only user and assistant roles are supported!') }}{% endif %}"
    "{% endfor %}"
)

CONTROL_TOKENS: Tuple[str, ...] = ("<unk>", "<s>", "<|end|>", "<|system|>", "<|user|>", "<|assistant|>")
UNK_ID, BOS_ID, EOS_ID = 0, 1, 2

# token types as GGUF stores them (gguf.TokenType)
NORMAL, UNKNOWN, CONTROL, BYTE = 1, 2, 3, 6


def build_vocab(words: Iterable[str]) -> Tuple[List[str], List[float], List[int]]:
    """Return (pieces, scores, types): control tokens, 256 byte tokens, characters, word pieces.

    SentencePiece merges two adjacent symbols only when their concatenation is in the vocabulary,
    so every prefix of a word piece is added as well, which lets each word form left to right.
    """
    pieces: List[str] = list(CONTROL_TOKENS)
    types: List[int] = [UNKNOWN] + [CONTROL] * (len(CONTROL_TOKENS) - 1)
    scores: List[float] = [0.0] * len(CONTROL_TOKENS)
    for byte in range(256):
        pieces.append(f"<0x{byte:02X}>")
        types.append(BYTE)
        scores.append(0.0)
    seen = set(pieces)

    def add(piece: str) -> None:
        if piece not in seen:
            seen.add(piece)
            pieces.append(piece)
            types.append(NORMAL)
            # longer pieces score higher, so the merge into a whole word wins
            scores.append(float(len(piece)))

    for char in SPACE + "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.,!?'-:;":
        add(char)
    for word in words:
        for spelled in (word, SPACE + word):
            for end in range(1, len(spelled) + 1):
                add(spelled[:end])
    return pieces, scores, types


def write_tiny_gguf(path: Union[str, Path], *, n_ctx: int = 2048, vocab: Sequence[str] = DEFAULT_WORDS,
                    seed: int = 0, n_embd: int = 64, n_layer: int = 2, n_head: int = 4,
                    n_head_kv: int = 2, n_ff: int = 128, chat_template: str = CHAT_TEMPLATE) -> Path:
    """Write a random-weight llama GGUF to ``path`` and return the path.

    ``vocab`` is the list of words that become pieces (with and without a leading space); any
    other text still tokenizes through the byte tokens. ``n_ctx`` is the trained context length
    written in the file (the runtime ``n_ctx`` may not exceed it without a warning).
    ``chat_template`` is the Jinja template stored as ``tokenizer.chat_template``.
    """
    import gguf  # test-only dependency

    path = Path(path)
    rng = np.random.default_rng(seed)
    pieces, scores, types = build_vocab(vocab)
    n_vocab = len(pieces)
    head_dim = n_embd // n_head

    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("tiny-random-llama")
    writer.add_context_length(n_ctx)
    writer.add_embedding_length(n_embd)
    writer.add_block_count(n_layer)
    writer.add_feed_forward_length(n_ff)
    writer.add_head_count(n_head)
    writer.add_head_count_kv(n_head_kv)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_rope_dimension_count(head_dim)
    writer.add_vocab_size(n_vocab)
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16)

    writer.add_tokenizer_model("llama")
    writer.add_token_list(pieces)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    writer.add_unk_token_id(UNK_ID)
    writer.add_bos_token_id(BOS_ID)
    writer.add_eos_token_id(EOS_ID)
    writer.add_add_bos_token(True)
    writer.add_add_space_prefix(False)
    writer.add_chat_template(chat_template)

    def matrix(rows: int, cols: int, scale: float) -> np.ndarray:
        # numpy shape is (rows, cols) = ggml ne (cols, rows): a weight mapping cols -> rows
        return (rng.standard_normal((rows, cols)) * scale).astype(np.float16)

    def ones(size: int) -> np.ndarray:
        return np.ones(size, dtype=np.float32)

    writer.add_tensor("token_embd.weight", matrix(n_vocab, n_embd, 1.0))
    for layer in range(n_layer):
        prefix = f"blk.{layer}"
        writer.add_tensor(f"{prefix}.attn_norm.weight", ones(n_embd))
        writer.add_tensor(f"{prefix}.attn_q.weight", matrix(n_head * head_dim, n_embd, n_embd ** -0.5))
        writer.add_tensor(f"{prefix}.attn_k.weight", matrix(n_head_kv * head_dim, n_embd, n_embd ** -0.5))
        writer.add_tensor(f"{prefix}.attn_v.weight", matrix(n_head_kv * head_dim, n_embd, n_embd ** -0.5))
        writer.add_tensor(f"{prefix}.attn_output.weight", matrix(n_embd, n_head * head_dim, n_embd ** -0.5))
        writer.add_tensor(f"{prefix}.ffn_norm.weight", ones(n_embd))
        writer.add_tensor(f"{prefix}.ffn_gate.weight", matrix(n_ff, n_embd, n_embd ** -0.5))
        writer.add_tensor(f"{prefix}.ffn_up.weight", matrix(n_ff, n_embd, n_embd ** -0.5))
        writer.add_tensor(f"{prefix}.ffn_down.weight", matrix(n_embd, n_ff, n_ff ** -0.5))
    writer.add_tensor("output_norm.weight", ones(n_embd))
    output = matrix(n_vocab, n_embd, 0.5)
    silent = [index for index, kind in enumerate(types) if kind != NORMAL]
    output[silent, :] = 0  # control and byte tokens: logit exactly 0, never sampled (see module doc)
    writer.add_tensor("output.weight", output)

    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
