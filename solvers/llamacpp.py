"""Local GGUF models through llama-cpp-python: lazy shared loading, fair queueing, prompt reuse.

How a turn runs, and why this way rather than ``create_chat_completion(stream=True)``:

1. The prompt is rendered by the library's own chat handler (the model's ``tokenizer.chat_template``
   or the configured ``chat_format``), called against a stand-in that records the prompt text and
   tokens instead of generating. So the template logic is exactly llama-cpp-python's, but the
   solver holds the token list before anything is evaluated, which it needs for three things:
   counting tokens to trim the history to ``n_ctx``; splicing (below); and evaluating the prompt
   itself in small chunks, checking the cancel token between chunks.
2. Splicing. llama.cpp reuses the KV cache for the longest common *token* prefix with what it
   evaluated last. The answer of turn N-1 comes back in turn N as text inside the re-rendered
   template, and re-tokenizing that text often differs from the tokens the model generated
   (a model may emit ``"wor" + "ld"`` where the tokenizer says ``"world"``), which would throw
   away the cache from the first differing token on. So the solver keeps a transcript of what the
   cache holds (tokens plus the text they stand for) and builds turn N's tokens as "the cached
   tokens whose text the new prompt repeats verbatim, then the tokenized rest". The reuse then
   covers everything up to the new tokens of the turn. Cached tokens are checked piece by piece
   against the new text, never across a special token of the template, so the model always sees
   the new prompt's text. Skipped (plain re-tokenization) for SentencePiece vocabularies that add
   a leading space to each text fragment, where a split tokenization would insert spaces.
3. Generation is driven with ``Llama.generate`` on that token list; the solver samples one token
   at a time, detokenizes incrementally (UTF-8 safe), applies stop strings and ``max_tokens``
   itself, checks ``cancel`` after every token and closes the generator, so no token is computed
   after a cancel is seen (a stopping criterion also stops llama.cpp between its own steps).
   Cancelling makes ``stream`` simply return; the chain knows it cancelled.

Measuring reuse: the solver evaluates the prompt itself (``Llama.eval`` on the tokens after the
reused prefix, at least one so the logits are live) and ``Llama.generate`` then finds the whole
prompt cached and samples at once, with no decode call more than raw llama-cpp-python makes
(libraries older than 0.3.2x are left the last prompt token to evaluate themselves).
``prompt_tokens_evaluated`` is therefore exactly the number of prompt tokens handed to llama.cpp's
decoder; the tests cross-check it against llama.cpp's own performance counters.

Interleaved conversations: each loaded model remembers which conversation its KV cache holds.
When a turn of another conversation comes in, the cache of the current one is saved (raw llama.cpp
state without the logits matrix that ``Llama.save_state`` also copies, which is n_batch x n_vocab
floats: tens to hundreds of MB) into a per-model LRU of ``state_cache_size`` entries, and the new
conversation's saved state, if any, is loaded. Saving on switch rather than after every answer
costs nothing while one conversation talks alone.
"""
from __future__ import annotations

import codecs
import ctypes
import os
import random
import stat
import threading
import weakref
from bisect import bisect_right
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

from ovos_utils.log import LOG

from ..concurrency import FairLock
from ..models.hub import resolve_model
from ..models.refs import is_hub_ref

from .base import (CancelToken, ChatMessage, GenerationSettings, Role, Solver, SolverConfigError,
                   SolverContext, SolverUnavailable, request_generation, request_options)

MODEL_ENV = "PERSONA_MODEL"
GGUF_MAGIC = b"GGUF"
DEFAULT_N_CTX = 4096
DEFAULT_N_THREADS: Optional[int] = None
DEFAULT_N_GPU_LAYERS = 0
DEFAULT_CHAT_FORMAT: Optional[str] = None
DEFAULT_STATE_CACHE_SIZE = 8
DEFAULT_VERBOSE = False
#: prompt tokens evaluated per llama.cpp call; cancel is checked between calls
PREFILL_CHUNK_TOKENS = 64
#: a question cut to fit the context keeps at least this many of its tokens
MIN_QUESTION_TOKENS = 32

LlamaFactory = Callable[..., Any]


@dataclass
class _Transcript:
    """What a model's KV cache holds: ``tokens``, and the text that the first ``n_text_tokens`` stand for.

    Tokens past ``n_text_tokens`` (the generated answer) are verified piece by piece when reused.
    """

    conversation_id: str
    tokens: List[int]
    text: bytes = b""
    n_text_tokens: int = 0


@dataclass
class _SavedState:
    transcript: _Transcript
    blob: bytes


@dataclass
class _Rendered:
    """A rendered prompt: its text (as the tokens spell it), its canonical tokens, template stops."""

    text: Optional[bytes]
    tokens: List[int]
    stops: Tuple[str, ...]


class _LoadedModel:
    """One loaded ``Llama`` shared by every solver using the same file and load options."""

    def __init__(self, key: tuple, path: str, llama: Any) -> None:
        self.key = key
        self.path = path
        self.llama = llama
        self.lock = FairLock()
        self.users: "weakref.WeakSet[LlamaCppSolver]" = weakref.WeakSet()
        self.live: Optional[_Transcript] = None
        self.saved: "OrderedDict[str, _SavedState]" = OrderedDict()
        #: guards ``saved`` and ``live.conversation_id`` for forget() from other threads
        self.books = threading.Lock()
        self.n_ctx = int(llama.n_ctx())
        self._pieces: Dict[Tuple[int, bool], bytes] = {}
        metadata = getattr(llama, "metadata", {}) or {}
        # SentencePiece with add_space_prefix puts a space before every text fragment it tokenizes:
        # tokenizing "the rest" alone would invent one, so no splicing for those vocabularies
        self.splice_ok = not (metadata.get("tokenizer.ggml.model") == "llama"
                              and metadata.get("tokenizer.ggml.add_space_prefix", "true") != "false")
        self.partial_reuse_ok = True
        self._vocab = None
        self._lib = None
        try:
            import llama_cpp

            self._lib = llama_cpp
            self._vocab = llama_cpp.llama_model_get_vocab(llama.model)
            # recurrent/hybrid memories cannot drop a suffix: reuse only a strict extension
            self.partial_reuse_ok = not (llama_cpp.llama_model_is_recurrent(llama.model)
                                         or llama_cpp.llama_model_is_hybrid(llama.model))
        except (ImportError, AttributeError, TypeError, ctypes.ArgumentError):
            pass

    @property
    def can_save_state(self) -> bool:
        """True when the raw state functions of llama.cpp are reachable."""
        return self._lib is not None

    def piece(self, token: int, special: bool = True) -> bytes:
        """Return the text of one token (control tokens as their text when ``special``)."""
        key = (token, special)
        piece = self._pieces.get(key)
        if piece is None:
            piece = self._pieces[key] = bytes(self.llama.detokenize([token], special=special))
        return piece

    def is_special(self, token: int) -> bool:
        """True for control tokens (they print as nothing unless asked)."""
        return self.piece(token, True) != self.piece(token, False)

    def is_eog(self, token: int) -> bool:
        """True for end-of-generation tokens (EOS, end of turn)."""
        if self._vocab is not None:
            return bool(self._lib.llama_vocab_is_eog(self._vocab, token))
        return token == self.llama.token_eos()

    def save_live(self) -> Optional[_SavedState]:
        """Copy the context's state (KV cache) for the live transcript."""
        if self.live is None or not self.can_save_state:
            return None
        lib, ctx = self._lib, self.llama.ctx
        size = int(lib.llama_state_get_size(ctx))
        buffer = (ctypes.c_uint8 * size)()
        written = int(lib.llama_state_get_data(ctx, buffer, size))
        if written <= 0 or written > size:
            return None
        transcript = _Transcript(self.live.conversation_id, list(self.live.tokens), self.live.text,
                                 self.live.n_text_tokens)
        return _SavedState(transcript, ctypes.string_at(buffer, written))

    def restore(self, saved: _SavedState) -> bool:
        """Load a saved state into the context; return False (context reset) if llama.cpp refuses."""
        lib, llama = self._lib, self.llama
        blob = saved.blob
        buffer = (ctypes.c_uint8 * len(blob)).from_buffer_copy(blob)
        if int(lib.llama_state_set_data(llama.ctx, buffer, len(blob))) != len(blob):
            self.reset()
            return False
        count = len(saved.transcript.tokens)
        llama.input_ids[:count] = saved.transcript.tokens
        llama.n_tokens = count
        self.live = saved.transcript
        return True

    def reset(self) -> None:
        """Forget the context's contents."""
        self.llama.reset()
        self.live = None


_REGISTRY: Dict[tuple, _LoadedModel] = {}
# held while loading: loads are rare, and serialising them avoids two big models filling RAM at once
_REGISTRY_LOCK = threading.Lock()


def _acquire_model(key: tuple, path: str, load: Callable[[], Any], user: "LlamaCppSolver") -> _LoadedModel:
    with _REGISTRY_LOCK:
        for stale in [k for k, m in _REGISTRY.items() if not m.users and k != key]:
            del _REGISTRY[stale]  # every solver using it was closed or collected
        model = _REGISTRY.get(key)
        if model is None:
            llama = load()  # raises a SolverError; nothing is registered then
            model = _REGISTRY[key] = _LoadedModel(key, path, llama)
        model.users.add(user)
        return model


def _release_model(model: _LoadedModel, user: "LlamaCppSolver") -> None:
    with _REGISTRY_LOCK:
        model.users.discard(user)
        if not model.users and _REGISTRY.get(model.key) is model:
            # no explicit close: a stream still running holds a reference; the Llama frees itself
            del _REGISTRY[model.key]


def loaded_models() -> List[_LoadedModel]:
    """Return the models currently loaded (for diagnostics and tests)."""
    with _REGISTRY_LOCK:
        return list(_REGISTRY.values())


def check_model_file(path: Path) -> Tuple[str, int, int]:
    """Check that ``path`` is a readable GGUF file; return (real path, size, mtime) or raise."""
    try:
        info = path.stat()
    except FileNotFoundError as err:
        raise SolverUnavailable(f"model file not found: {path}") from err
    except OSError as err:
        raise SolverConfigError(f"cannot read model file {path}: {err}") from err
    if not stat.S_ISREG(info.st_mode):
        raise SolverConfigError(f"model path is not a file: {path}")
    try:
        with open(path, "rb") as handle:
            magic = handle.read(len(GGUF_MAGIC))
    except OSError as err:
        raise SolverConfigError(f"cannot read model file {path}: {err}") from err
    if magic != GGUF_MAGIC:
        raise SolverConfigError(f"not a GGUF model file: {path}")
    return str(path.resolve()), info.st_size, info.st_mtime_ns


def _default_llama_factory(**kwargs: Any) -> Any:
    try:
        from llama_cpp import Llama
    except ImportError as err:
        raise SolverUnavailable(f"llama-cpp-python is not installed: {err}") from err
    return Llama(**kwargs)


class _Captured(Exception):
    """Raised by the capture stand-in once the chat handler asks for a completion."""


class _PromptCapture:
    """Stands in for a ``Llama`` while its chat handler renders a prompt; records instead of generating."""

    def __init__(self, llama: Any) -> None:
        self._llama = llama
        self.text: Optional[bytes] = None
        self.add_bos = False
        self.tokens: Optional[List[int]] = None
        self.prompt: Optional[List[int]] = None
        self.stop: Any = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._llama, name)

    def tokenize(self, text: bytes, add_bos: bool = True, special: bool = False) -> List[int]:
        tokens = self._llama.tokenize(text, add_bos=add_bos, special=special)
        self.text, self.add_bos, self.tokens = bytes(text), add_bos, list(tokens)
        return tokens

    def create_completion(self, prompt: Any, **kwargs: Any) -> Any:
        if isinstance(prompt, str):  # handlers that pass text: tokenized as create_completion would
            prompt = self.tokenize(prompt.encode("utf-8"), add_bos=False, special=True)
        self.prompt = list(prompt)
        self.stop = kwargs.get("stop")
        raise _Captured()


def _template_errors() -> Tuple[type, ...]:
    """What rendering a chat template can raise: an unknown format name, a Jinja error, a bad message."""
    errors: Tuple[type, ...] = (ValueError, KeyError, TypeError, IndexError)
    try:
        from jinja2 import TemplateError
        from llama_cpp.llama_chat_format import LlamaChatCompletionHandlerNotFoundException
    except ImportError:
        return errors
    return errors + (TemplateError, LlamaChatCompletionHandlerNotFoundException)


def _int_option(config: Mapping[str, Any], key: str, default: Optional[int], *, minimum: int,
                optional: bool = False) -> Optional[int]:
    value = config.get(key, default)
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise SolverConfigError(f"llama-cpp: {key} must be an integer >= {minimum}, got {value!r}")
    return value


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    count = 0
    for x, y in zip(a, b):
        if x != y:
            break
        count += 1
    return count


def _held_back(text: str, stops: Sequence[str]) -> int:
    """Length of the longest tail of ``text`` that could still grow into a stop string."""
    longest = 0
    for stop in stops:
        for size in range(min(len(stop) - 1, len(text)), longest, -1):
            if text.endswith(stop[:size]):
                longest = size
                break
    return longest


@dataclass
class _Plan:
    """The messages that fit the context, their rendering, and the answer budget."""

    messages: List[ChatMessage]
    rendered: _Rendered
    max_tokens: int
    dropped_messages: int = 0
    question_truncated: bool = False


class LlamaCppSolver(Solver):
    """Answers with a local GGUF model through llama-cpp-python (see the module docstring).

    Config keys: ``model`` (path or ``hf:`` reference; else ``$PERSONA_MODEL``), ``n_ctx`` (4096), ``n_threads``
    (None: llama.cpp's default), ``n_gpu_layers`` (0), ``chat_format`` (None: the model's own
    template), ``state_cache_size`` (8 saved conversation states per model; 0: none), ``verbose``,
    and the generation keys of ``GenerationSettings`` (temperature, top_k, top_p, repeat_penalty,
    max_tokens, seed, stop) over the persona's. A cancelled stream simply ends.
    """

    solver_id = "llama-cpp"
    supports_history = True

    def __init__(self, config: Mapping[str, Any], context: SolverContext, *,
                 llama_factory: Optional[LlamaFactory] = None) -> None:
        super().__init__(config, context)
        self._factory = llama_factory
        self.n_ctx = _int_option(self.config, "n_ctx", DEFAULT_N_CTX, minimum=16)
        self.n_threads = _int_option(self.config, "n_threads", DEFAULT_N_THREADS, minimum=1, optional=True)
        self.n_gpu_layers = _int_option(self.config, "n_gpu_layers", DEFAULT_N_GPU_LAYERS, minimum=-1)
        self.state_cache_size = _int_option(self.config, "state_cache_size", DEFAULT_STATE_CACHE_SIZE, minimum=0)
        self.chat_format = self.config.get("chat_format", DEFAULT_CHAT_FORMAT)
        if self.chat_format is not None and not isinstance(self.chat_format, str):
            raise SolverConfigError(f"llama-cpp: chat_format must be a name, got {self.chat_format!r}")
        self.verbose = bool(self.config.get("verbose", DEFAULT_VERBOSE))
        model = self.config.get("model")
        if model is not None and not isinstance(model, (str, os.PathLike)):
            raise SolverConfigError(f"llama-cpp: model must be a path, got {model!r}")
        try:
            self.generation: GenerationSettings = context.generation.merged(self.config)
        except TypeError as err:
            raise SolverConfigError(f"llama-cpp: bad generation settings: {err}") from err
        if isinstance(self.generation.max_tokens, bool) or not isinstance(self.generation.max_tokens, int) \
                or self.generation.max_tokens < 1:
            raise SolverConfigError(f"llama-cpp: max_tokens must be >= 1, got {self.generation.max_tokens!r}")
        self._model: Optional[_LoadedModel] = None
        #: prompt tokens llama.cpp evaluated for the last answer (the rest came from its cache)
        self.last_prompt_tokens_evaluated: Optional[int] = None
        #: details of the last answer: token counts, trimmed messages, finish reason ...
        self.last_stats: Dict[str, Any] = {}

    # -- model loading -------------------------------------------------------------------------

    def model_path(self) -> Path:
        """Return the configured model path (``model`` key, else ``$PERSONA_MODEL``)."""
        value = self.config.get("model") or os.environ.get(MODEL_ENV)
        if not value:
            raise SolverConfigError(f"llama-cpp: no model configured (set 'model' or ${MODEL_ENV})")
        if is_hub_ref(value):  # the cached download, or ModelNotReady (SolverUnavailable) until it lands
            return resolve_model(value)
        return Path(os.path.expandvars(os.fspath(value))).expanduser()

    @property
    def loaded_model(self) -> Optional[_LoadedModel]:
        """The shared model this solver uses, once loaded."""
        return self._model

    def _ensure_model(self) -> _LoadedModel:
        path = self.model_path()
        identity = check_model_file(path)
        factory = self._factory or _default_llama_factory
        key = identity + (self.n_ctx, self.n_gpu_layers, self.n_threads, self.chat_format, factory)
        current = self._model
        if current is not None and current.key == key:
            return current
        model = _acquire_model(key, identity[0], lambda: self._load(factory, path), self)
        if current is not None:
            _release_model(current, self)
        self._model = model
        return model

    def _load(self, factory: LlamaFactory, path: Path) -> Any:
        kwargs: Dict[str, Any] = {"model_path": str(path), "n_ctx": self.n_ctx,
                                  "n_gpu_layers": self.n_gpu_layers, "verbose": self.verbose}
        if self.n_threads is not None:
            kwargs["n_threads"] = self.n_threads
        if self.chat_format is not None:
            kwargs["chat_format"] = self.chat_format
        try:
            return factory(**kwargs)
        except (ValueError, RuntimeError, OSError) as err:
            raise SolverUnavailable(f"llama.cpp could not load {path}: {err}") from err

    def forget(self, conversation_id: str) -> None:
        """Drop the saved state of ``conversation_id``."""
        model = self._model
        if model is None or not conversation_id:
            return
        with model.books:
            model.saved.pop(conversation_id, None)
            if model.live is not None and model.live.conversation_id == conversation_id:
                model.live.conversation_id = ""

    def close(self) -> None:
        """Stop sharing the model; it is unloaded when no solver uses it."""
        if self._model is not None:
            _release_model(self._model, self)
            self._model = None

    # -- prompt rendering and trimming ---------------------------------------------------------

    def _render(self, model: _LoadedModel, messages: Sequence[ChatMessage]) -> _Rendered:
        capture = _PromptCapture(model.llama)
        try:
            type(model.llama).create_chat_completion(capture, messages=[m.as_dict() for m in messages])
        except _Captured:
            pass
        except _template_errors() as err:
            raise SolverConfigError(f"chat template of {model.path} failed: {err}") from err
        if capture.prompt is None:
            raise SolverConfigError(f"chat format {self.chat_format!r} of {model.path} is not a text template")
        stops = capture.stop
        stops = (stops,) if isinstance(stops, str) else tuple(stops or ())
        text = None
        if capture.text is not None and capture.tokens == capture.prompt:
            text = capture.text
            bos = model.llama.token_bos()
            if capture.add_bos and capture.prompt[:1] == [bos]:
                text = model.piece(bos) + text
        return _Rendered(text, capture.prompt, tuple(s for s in stops if s))

    def _plan(self, model: _LoadedModel, messages: Sequence[ChatMessage], max_tokens: int) -> _Plan:
        """Fit the prompt into ``n_ctx``: drop old turns, then cut the question, then shrink the answer."""
        n_ctx = model.n_ctx
        messages = list(messages)
        plan = _Plan(messages, self._render(model, messages), max_tokens)

        def over() -> int:
            return len(plan.rendered.tokens) + plan.max_tokens - n_ctx

        if over() <= 0:
            return plan
        last_user = max((i for i, m in enumerate(messages) if m.role is Role.USER), default=len(messages) - 1)
        groups: List[List[int]] = []  # droppable turns, oldest first: a user message and its replies
        for index, message in enumerate(messages[:last_user]):
            if message.role is Role.SYSTEM:
                continue
            if message.role is Role.USER or not groups:
                groups.append([index])
            else:
                groups[-1].append(index)
        dropped: set = set()
        while over() > 0 and groups:
            dropped.update(groups.pop(0))
            plan.messages = [m for i, m in enumerate(messages) if i not in dropped]
            plan.rendered = self._render(model, plan.messages)
        plan.dropped_messages = len(dropped)
        if plan.dropped_messages:
            LOG.debug(f"llama-cpp: dropped {plan.dropped_messages} old messages to fit n_ctx={n_ctx}")
        if over() > 0 and 0 <= last_user < len(messages) and messages[last_user].role is Role.USER:
            self._cut_question(model, plan, messages[last_user])
        if over() > 0:
            budget = n_ctx - len(plan.rendered.tokens)
            if budget < 1:
                raise SolverConfigError(f"llama-cpp: the prompt alone ({len(plan.rendered.tokens)} tokens) "
                                        f"does not fit n_ctx={n_ctx} of {model.path}")
            LOG.warning(f"llama-cpp: answer limited to {budget} tokens (max_tokens={plan.max_tokens}) "
                        f"to fit n_ctx={n_ctx}")
            plan.max_tokens = budget
        return plan

    def _cut_question(self, model: _LoadedModel, plan: _Plan, question: ChatMessage) -> None:
        """Keep the END of an over-long question: a spoken request usually ends with what is asked."""
        llama = model.llama
        index = max(i for i, m in enumerate(plan.messages) if m is question)
        tokens = llama.tokenize(question.content.encode("utf-8"), add_bos=False, special=False)
        floor = min(MIN_QUESTION_TOKENS, len(tokens))
        keep = max(floor, len(tokens) - (len(plan.rendered.tokens) + plan.max_tokens - model.n_ctx))
        for _ in range(8):  # re-rendering may shift a token or two at the cut; converge
            text = llama.detokenize(tokens[len(tokens) - keep:]).decode("utf-8", errors="ignore").lstrip()
            messages = list(plan.messages)
            messages[index] = ChatMessage(Role.USER, text)
            rendered = self._render(model, messages)
            plan.messages, plan.rendered, plan.question_truncated = messages, rendered, True
            excess = len(rendered.tokens) + plan.max_tokens - model.n_ctx
            if excess <= 0 or keep <= floor:
                break
            keep = max(floor, keep - excess)
        LOG.warning(f"llama-cpp: question of {len(tokens)} tokens cut to its last {keep} "
                    f"to fit n_ctx={model.n_ctx} of {model.path}")

    def _splice(self, model: _LoadedModel, rendered: _Rendered) -> List[int]:
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
        if count <= _common_prefix(base.tokens, canonical):
            return canonical
        rest = text[position:]
        tail = model.llama.tokenize(rest, add_bos=False, special=True) if rest else []
        return list(base.tokens[:count]) + list(tail)

    # -- conversation state --------------------------------------------------------------------

    def _switch_conversation(self, model: _LoadedModel, conversation_id: str) -> bool:
        """Make the context hold ``conversation_id``'s cache if saved; return True if a state was loaded."""
        live = model.live
        if live is not None and live.conversation_id == conversation_id:
            return False
        if self.state_cache_size <= 0 or not model.can_save_state:
            return False
        with model.books:
            if live is not None and live.conversation_id:
                saved = model.save_live()  # the freshest copy: a restored state left ``saved`` on load
                if saved is not None:
                    model.saved[live.conversation_id] = saved
                    model.saved.move_to_end(live.conversation_id)
            wanted = model.saved.pop(conversation_id, None) if conversation_id else None
            while len(model.saved) > self.state_cache_size:
                model.saved.popitem(last=False)
        if wanted is None:
            return False
        return model.restore(wanted)

    def _prefill(self, model: _LoadedModel, tokens: List[int], cancel: CancelToken) -> Tuple[int, int, bool]:
        """Evaluate the prompt after the reusable prefix.

        Return (tokens reused, tokens that will have been evaluated, completed). Versions that
        track whether the logits are live (``_requires_eval``, 0.3.2x on) let ``Llama.generate``
        sample at once from a prompt evaluated here in full; older ones are left the last token,
        which they then evaluate themselves (one more decode call before the first token).
        """
        llama = model.llama
        if not tokens:
            raise SolverConfigError(f"chat template of {model.path} rendered an empty prompt")
        cached = list(llama.input_ids[:llama.n_tokens])
        reuse = min(_common_prefix(cached, tokens), len(tokens) - 1)
        if reuse < len(cached) and not model.partial_reuse_ok:
            reuse = 0
        if reuse == 0:
            llama.reset()
        llama.n_tokens = reuse  # Llama.eval drops the cache from n_tokens on
        # small chunks on CPU keep cancel prompt; a GPU does a whole batch in milliseconds
        size = PREFILL_CHUNK_TOKENS if self.n_gpu_layers == 0 else max(PREFILL_CHUNK_TOKENS, llama.n_batch)
        end = len(tokens) if hasattr(llama, "_requires_eval") else len(tokens) - 1
        for start in range(reuse, end, size):
            if cancel.cancelled:
                return reuse, start - reuse, False
            llama.eval(tokens[start:min(start + size, end)])
        if cancel.cancelled:
            return reuse, end - reuse, False
        return reuse, len(tokens) - reuse, True

    # -- the answer ----------------------------------------------------------------------------

    def stream(self, messages: Sequence[ChatMessage], *, lang: str, cancel: CancelToken,
               conversation_id: str = "") -> Iterator[str]:
        """Yield the model's answer token by token; return quietly once ``cancel`` is set."""
        if cancel.cancelled:
            return
        model = self._ensure_model()
        if not model.lock.acquire(cancel):
            return
        try:
            yield from self._answer(model, messages, cancel, conversation_id)
        finally:
            model.lock.release()

    def _answer(self, model: _LoadedModel, messages: Sequence[ChatMessage], cancel: CancelToken,
                conversation_id: str) -> Iterator[str]:
        llama = model.llama
        settings = request_generation(self.generation)  # a server request may override sampling
        plan = self._plan(model, messages, settings.max_tokens)
        restored = self._switch_conversation(model, conversation_id)
        tokens = self._splice(model, plan.rendered)
        if len(tokens) + plan.max_tokens > model.n_ctx:
            tokens = plan.rendered.tokens  # a spliced prompt may be a little longer than canonical
        stats: Dict[str, Any] = {
            "conversation_id": conversation_id, "prompt_tokens": len(tokens), "prompt_tokens_evaluated": 0,
            "prompt_tokens_reused": 0, "completion_tokens": 0, "max_tokens": plan.max_tokens,
            "finish_reason": "cancelled", "messages": tuple(plan.messages),
            "dropped_messages": plan.dropped_messages, "question_truncated": plan.question_truncated,
            "state_restored": restored, "spliced": tokens is not plan.rendered.tokens,
        }
        self.last_stats = stats
        stops = tuple(dict.fromkeys(settings.stop + plan.rendered.stops))
        decoder = codecs.getincrementaldecoder("utf-8")(errors="ignore")
        text, emitted, completion = "", 0, 0
        generator = None
        try:
            reused, evaluated, complete = self._prefill(model, tokens, cancel)
            stats["prompt_tokens_evaluated"] = evaluated
            stats["prompt_tokens_reused"] = reused
            self.last_prompt_tokens_evaluated = evaluated
            if not complete:
                return
            seed = settings.seed if settings.seed is not None else random.getrandbits(32)
            llama.set_seed(seed)
            generator = llama.generate(
                tokens, top_k=settings.top_k, top_p=settings.top_p, temp=settings.temperature,
                repeat_penalty=settings.repeat_penalty,
                # stops llama.cpp between its own steps too, so a cancel never waits for our loop
                stopping_criteria=lambda _ids, _logits: cancel.cancelled)
            finish, stop_hit = "length", False
            for token in generator:
                if cancel.cancelled:
                    break
                if model.is_eog(token):
                    finish = "stop"
                    break
                completion += 1
                before = len(text)
                text += decoder.decode(model.piece(token, False))
                if stops:
                    window = max(0, before - max(len(s) for s in stops) + 1)
                    hits = [i for i in (text.find(s, window) for s in stops) if i >= 0]
                    if hits:
                        text, finish, stop_hit = text[:min(hits)], "stop", True
                safe = len(text) if stop_hit else len(text) - _held_back(text, stops)
                if safe > emitted:
                    chunk, emitted = text[emitted:safe], safe
                    yield chunk
                if stop_hit or cancel.cancelled or completion >= plan.max_tokens:
                    break
            if cancel.cancelled:
                return
            stats["finish_reason"] = finish
            if not stop_hit:
                text += decoder.decode(b"", final=True)
                if len(text) > emitted:
                    yield text[emitted:]
        except RuntimeError as err:  # llama_decode failures: the context is in an unknown state
            model.reset()
            raise SolverUnavailable(f"llama.cpp failed while answering with {model.path}: {err}") from err
        finally:
            if generator is not None:
                generator.close()  # no token is evaluated after this
            stats["completion_tokens"] = completion
            options = request_options()
            if options is not None:
                options.report_usage(len(tokens), completion, "tokenizer", stats["finish_reason"])
            self._remember(model, plan.rendered, tokens, conversation_id)

    def _remember(self, model: _LoadedModel, rendered: _Rendered, tokens: List[int], conversation_id: str) -> None:
        """Record what the context now holds, for splicing and state saving on the next turn."""
        llama = model.llama
        held = [int(t) for t in llama.input_ids[:llama.n_tokens]]
        if len(held) >= len(tokens) and held[:len(tokens)] == tokens and rendered.text is not None:
            model.live = _Transcript(conversation_id, held, rendered.text, len(tokens))
        else:  # cancelled during the prompt: only the tokens are known
            model.live = _Transcript(conversation_id, held)
