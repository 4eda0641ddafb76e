"""Loading GGUF models for the llama-cpp solver: file checks, the factory, one shared model per file.

Every solver that names the same file with the same load options (n_ctx, GPU layers, threads,
chat format, factory) shares one ``LoadedModel``: one ``Llama``, one fair lock (``Llama`` is not
thread-safe, so one generation at a time, in arrival order), and one record of what its KV cache
holds. Loads are serialised (two big models never fill RAM at once) and a model is dropped from
the registry once no solver uses it.
"""
from __future__ import annotations

import ctypes
import os
import stat
import threading
import weakref
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional, Tuple

from ..concurrency import FairLock
from .base import SolverConfigError, SolverUnavailable
from .llama_cache import StateCache, Transcript

if TYPE_CHECKING:  # pragma: no cover
    from .llama_batch import BatchDecoder
    from .llamacpp import LlamaCppSolver

MODEL_ENV = "PERSONA_MODEL"
GGUF_MAGIC = b"GGUF"
#: llama.cpp's OpenMP threads sleep when idle instead of spinning (unless the user set a policy):
#: on a small machine shared with the assistant's other work, spinning threads stalled prompt
#: evaluation for seconds under load (benchmarks/concurrency_llama.py), and idle it is as fast
#: (benchmarks/throughput.py, SmolLM2: 46.4 vs 46.2 tokens/s)
OMP_WAIT_POLICY = "PASSIVE"
#: ... after a short spin: with no spin at all every synchronisation point of a multi-threaded
#: decode sleeps and wakes, which made batched decoding (llama_batch) 3x slower (SmolLM2, 2 threads:
#: 42 vs 143 tokens/s for 4 sequences); 10,000 spins (microseconds) restore the speed
GOMP_SPINCOUNT = "10000"

LlamaFactory = Callable[..., Any]
#: set on a ``Llama`` whose context holds several sequences (``llama_batch.enable_parallel``)
PARALLEL_ATTRIBUTE = "persona_fallback_slots"


class LoadedModel:
    """One loaded ``Llama`` shared by every solver using the same file and load options."""

    def __init__(self, key: tuple, path: str, llama: Any) -> None:
        self.key = key
        self.path = path
        self.llama = llama
        self.lock = FairLock()
        self.users: "weakref.WeakSet[LlamaCppSolver]" = weakref.WeakSet()
        #: what the KV cache holds now (None: unknown or empty)
        self.live: Optional[Transcript] = None
        #: saved states of the conversations that are not live, least recently used first
        self.saved = StateCache()
        #: guards ``saved`` and ``live.conversation_id`` for forget() from other threads
        self.books = threading.Lock()
        #: the template refuses a system message or unordered roles: merge them (llama_prompt.render)
        self.merge_roles = False
        #: sequences the context holds (llama_batch.enable_parallel marks the Llama); 1: the fair lock only
        slots = getattr(llama, PARALLEL_ATTRIBUTE, 1)
        self.slots = slots if isinstance(slots, int) and slots > 1 else 1
        #: cells of one conversation: what a prompt and its answer must fit in
        self.n_ctx = int(llama.n_ctx()) // self.slots
        self._pieces: Dict[Tuple[int, bool], bytes] = {}
        metadata = getattr(llama, "metadata", {}) or {}
        # SentencePiece with add_space_prefix puts a space before every text fragment it tokenizes:
        # tokenizing "the rest" alone would invent one, so no splicing for those vocabularies
        self.splice_ok = not (metadata.get("tokenizer.ggml.model") == "llama"
                              and metadata.get("tokenizer.ggml.add_space_prefix", "true") != "false")
        self.partial_reuse_ok = True
        #: the KV cache can drop a span and move later positions down (llama_cache.drop_span)
        self.can_shift = False
        self._vocab = None
        self.lib: Any = None
        try:
            import llama_cpp

            self.lib = llama_cpp
            self._vocab = llama_cpp.llama_model_get_vocab(llama.model)
            # recurrent/hybrid memories cannot drop a suffix: reuse only a strict extension
            self.partial_reuse_ok = not (llama_cpp.llama_model_is_recurrent(llama.model)
                                         or llama_cpp.llama_model_is_hybrid(llama.model))
            memory = llama_cpp.llama_get_memory(llama.ctx)
            self.can_shift = self.partial_reuse_ok and memory is not None \
                and bool(llama_cpp.llama_memory_can_shift(memory))
        except (ImportError, AttributeError, TypeError, ctypes.ArgumentError):
            pass
        #: several answers decoded together (``parallel`` > 1 and a context that holds that many)
        self.decoder: Optional["BatchDecoder"] = None
        if self.slots > 1 and self.lib is not None:
            from .llama_batch import BatchDecoder

            self.decoder = BatchDecoder(self, self.slots)

    @property
    def can_save_state(self) -> bool:
        """True when the raw state functions of llama.cpp are reachable."""
        return self.lib is not None

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
            return bool(self.lib.llama_vocab_is_eog(self._vocab, token))
        return token == self.llama.token_eos()

    def reset(self) -> None:
        """Forget the context's contents."""
        self.llama.reset()
        self.live = None


_REGISTRY: Dict[tuple, LoadedModel] = {}
# held while loading: loads are rare, and serialising them avoids two big models filling RAM at once
_REGISTRY_LOCK = threading.Lock()


def acquire_model(key: tuple, path: str, load: Callable[[], Any], user: "LlamaCppSolver") -> LoadedModel:
    """Return the shared model for ``key``, loading it with ``load()`` if nobody has; register ``user``."""
    with _REGISTRY_LOCK:
        for stale in [k for k, m in _REGISTRY.items() if not m.users and k != key]:
            del _REGISTRY[stale]  # every solver using it was closed or collected
        model = _REGISTRY.get(key)
        if model is None:
            llama = load()  # raises a SolverError; nothing is registered then
            model = _REGISTRY[key] = LoadedModel(key, path, llama)
        model.users.add(user)
        return model


def release_model(model: LoadedModel, user: "LlamaCppSolver") -> None:
    """Stop ``user`` sharing ``model``; the last user drops it from the registry."""
    with _REGISTRY_LOCK:
        model.users.discard(user)
        if not model.users and _REGISTRY.get(model.key) is model:
            # no explicit close: a stream still running holds a reference; the Llama frees itself
            del _REGISTRY[model.key]


def loaded_models() -> List[LoadedModel]:
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


def default_llama_factory(**kwargs: Any) -> Any:
    """Build a ``llama_cpp.Llama``; a missing library is a ``SolverUnavailable``."""
    # read by the OpenMP runtime when llama.cpp is first loaded, so before the import
    if "OMP_WAIT_POLICY" not in os.environ:
        os.environ["OMP_WAIT_POLICY"] = OMP_WAIT_POLICY
        os.environ.setdefault("GOMP_SPINCOUNT", GOMP_SPINCOUNT)
    try:
        from llama_cpp import Llama
    except ImportError as err:
        raise SolverUnavailable(f"llama-cpp-python is not installed: {err}") from err
    return Llama(**kwargs)


def load_llama(factory: LlamaFactory, path: Path, kwargs: Dict[str, Any]) -> Any:
    """Call ``factory(**kwargs)``; llama.cpp's load failures become a ``SolverUnavailable`` naming the file."""
    try:
        from jinja2 import TemplateError
    except ImportError:  # no jinja2, no templates compiled at load
        TemplateError = ValueError  # noqa: N806
    try:
        return factory(**kwargs)
    except TemplateError as err:  # the GGUF's chat template does not compile
        raise SolverConfigError(f"the chat template in {path} is broken: {err}") from err
    except (ValueError, RuntimeError, OSError) as err:
        raise SolverUnavailable(f"llama.cpp could not load {path}: {err}") from err
