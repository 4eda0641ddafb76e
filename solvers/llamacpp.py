"""Local GGUF models through llama-cpp-python: the solver, its options, and how one answer runs.

The job is split by file: ``llama_models`` loads and shares models, ``llama_prompt`` renders and
fits the prompt, ``llama_cache`` reuses the KV cache (splicing, saved states per conversation);
this file holds the solver, its configuration, and the generation itself.

How a turn runs, and why this way rather than ``create_chat_completion(stream=True)``:

1. The prompt is rendered by the library's own chat handler against a stand-in that records it
   (``llama_prompt``), trimmed to ``n_ctx``, and its tokens are spliced onto what the KV cache
   already holds (``llama_cache``).
2. The solver evaluates the prompt itself in small chunks, checking ``cancel`` between them.
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
"""
from __future__ import annotations

import codecs
import os
import random
from pathlib import Path
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

from ovos_utils.log import LOG

from ..concurrency import FairLock
from ..models.hub import ensure_model, logging_progress, resolve_model
from ..models.refs import is_hub_ref

from .base import (CancelToken, ChatMessage, GenerationSettings, Solver, SolverConfigError,
                   SolverContext, SolverUnavailable, ToolDefinition, ToolPlan, request_generation,
                   request_options)
from .llama_batch import BatchRequest, enable_parallel
from .llama_cache import (common_prefix, drop_span, forget as forget_conversation, piece_end, remember,
                          reusable, splice, switch_conversation)
from .llama_models import (MODEL_ENV, LlamaFactory, LoadedModel, acquire_model, check_model_file,
                           default_llama_factory, load_llama, loaded_models, release_model)
from .llama_prompt import Plan, plan as plan_prompt
from .llama_tools import plan_with_tools

#: the model path variable the llama chatbot seed reads, honoured after PERSONA_MODEL
MODEL_PATH_ENV = "MODEL_PATH"

__all__ = ["LlamaCppSolver", "FairLock", "LOG", "MODEL_ENV", "check_model_file", "loaded_models",
           "DEFAULT_N_CTX", "PREFILL_CHUNK_TOKENS"]

DEFAULT_N_CTX = 4096
DEFAULT_N_THREADS: Optional[int] = None
DEFAULT_N_GPU_LAYERS = 0
DEFAULT_CHAT_FORMAT: Optional[str] = None
DEFAULT_STATE_CACHE_SIZE = 8
DEFAULT_STATE_CACHE_MB = 256
#: conversations decoded together on one model; 1 keeps one answer at a time behind the fair lock
DEFAULT_PARALLEL = 1
DEFAULT_VERBOSE = False
#: prompt tokens evaluated per llama.cpp call; cancel is checked between calls
PREFILL_CHUNK_TOKENS = 64
#: more sequences than this only multiply the KV memory on the machines we aim at
MAX_PARALLEL = 64


def _int_option(config: Mapping[str, Any], key: str, default: Optional[int], *, minimum: int,
                optional: bool = False) -> Optional[int]:
    value = config.get(key, default)
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise SolverConfigError(f"llama-cpp: {key} must be an integer >= {minimum}, got {value!r}")
    return value


def _held_back(text: str, stops: Sequence[str]) -> int:
    """Length of the longest tail of ``text`` that could still grow into a stop string."""
    longest = 0
    for stop in stops:
        for size in range(min(len(stop) - 1, len(text)), longest, -1):
            if text.endswith(stop[:size]):
                longest = size
                break
    return longest


def _seed(settings: GenerationSettings) -> int:
    """The answer's sampling seed: the configured one, else a fresh random one."""
    return settings.seed if settings.seed is not None else random.getrandbits(32)


def _report_usage(stats: Mapping[str, Any]) -> None:
    """Hand the answer's token counts to the request (the HTTP server's ``usage``), if there is one."""
    options = request_options()
    if options is not None:
        options.report_usage(stats["prompt_tokens"], stats["completion_tokens"], "tokenizer", stats["finish_reason"])


class LlamaCppSolver(Solver):
    """Answers with a local GGUF model through llama-cpp-python (see the module docstring).

    Config keys: ``model`` (path or ``hf:`` reference; else ``$PERSONA_MODEL``), ``n_ctx`` (4096), ``n_threads``
    (None: llama.cpp's default), ``n_gpu_layers`` (0), ``chat_format`` (None: the model's own
    template), ``state_cache_size`` (8 saved conversation states per model; 0: none),
    ``state_cache_mb`` (256: bytes of saved states per model, least recently used dropped first), ``verbose``,
    and the generation keys of ``GenerationSettings`` (temperature, top_k, top_p, repeat_penalty,
    max_tokens, seed, stop) over the persona's. A cancelled stream simply ends.
    """

    solver_id = "llama-cpp"
    supports_history = True
    #: loading the model and waiting for it do not count against the chain's first-chunk deadline
    reports_start = True
    #: function calling: the model's own template when it takes tools, else chatml-function-calling
    supports_tools = True

    def __init__(self, config: Mapping[str, Any], context: SolverContext, *,
                 llama_factory: Optional[LlamaFactory] = None) -> None:
        super().__init__(config, context)
        self._factory = llama_factory
        self.n_ctx = _int_option(self.config, "n_ctx", DEFAULT_N_CTX, minimum=16)
        self.n_threads = _int_option(self.config, "n_threads", DEFAULT_N_THREADS, minimum=1, optional=True)
        self.n_gpu_layers = _int_option(self.config, "n_gpu_layers", DEFAULT_N_GPU_LAYERS, minimum=-1)
        self.state_cache_size = _int_option(self.config, "state_cache_size", DEFAULT_STATE_CACHE_SIZE, minimum=0)
        self.parallel = _int_option(self.config, "parallel", DEFAULT_PARALLEL, minimum=1)
        if self.parallel > MAX_PARALLEL:
            raise SolverConfigError(f"llama-cpp: parallel must be at most {MAX_PARALLEL}, got {self.parallel}")
        cache_mb = self.config.get("state_cache_mb", DEFAULT_STATE_CACHE_MB)
        if isinstance(cache_mb, bool) or not isinstance(cache_mb, (int, float)) or not 0 <= cache_mb < 2 ** 40:
            raise SolverConfigError(f"llama-cpp: state_cache_mb must be a number of MB >= 0, got {cache_mb!r}")
        #: bytes of saved conversation states kept per model
        self.state_cache_bytes = int(cache_mb * 1024 * 1024)
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
        self._model: Optional[LoadedModel] = None
        #: prompt tokens llama.cpp evaluated for the last answer (the rest came from its cache)
        self.last_prompt_tokens_evaluated: Optional[int] = None
        #: details of the last answer: token counts, trimmed messages, finish reason ...
        self.last_stats: Dict[str, Any] = {}

    # -- model loading -------------------------------------------------------------------------

    def model_path(self) -> Path:
        """Return the configured model path (``model`` key, else ``$PERSONA_MODEL``, else ``$MODEL_PATH``)."""
        value = self.model_ref
        if not value:
            raise SolverConfigError(f"llama-cpp: no model configured (set 'model', ${MODEL_ENV} or "
                                    f"${MODEL_PATH_ENV})")
        if is_hub_ref(value):  # the cached download, or ModelNotReady (SolverUnavailable) until it lands
            return resolve_model(value)
        return Path(os.path.expandvars(os.fspath(value))).expanduser()

    @property
    def loaded_model(self) -> Optional[LoadedModel]:
        """The shared model this solver uses, once loaded."""
        return self._model

    def _ensure_model(self) -> LoadedModel:
        path = self.model_path()
        identity = check_model_file(path)
        factory = self._factory or default_llama_factory
        key = identity + (self.n_ctx, self.n_gpu_layers, self.n_threads, self.chat_format, factory, self.parallel)
        current = self._model
        if current is not None and current.key == key:
            return current
        model = acquire_model(key, identity[0], lambda: self._load(factory, path), self)
        if current is not None:
            release_model(current, self)
        self._model = model
        return model

    def _load(self, factory: LlamaFactory, path: Path) -> Any:
        kwargs: Dict[str, Any] = {"model_path": str(path), "n_ctx": self.n_ctx,
                                  "n_gpu_layers": self.n_gpu_layers, "verbose": self.verbose}
        if self.n_threads is not None:
            kwargs["n_threads"] = self.n_threads
        if self.chat_format is not None:
            kwargs["chat_format"] = self.chat_format
        llama = load_llama(factory, path, kwargs)
        if self.parallel > 1:
            reason = enable_parallel(llama, self.parallel, self.n_ctx)
            if reason is not None:
                LOG.warning(f"llama-cpp: parallel {self.parallel} is not available for {path}: {reason}; "
                            f"answers on this model take turns")
        return llama

    @property
    def model_ref(self) -> str:
        """The model as configured: a path or an ``hf:`` reference ("" when none is set)."""
        # MODEL_PATH is the name the llama chatbot seed reads; PERSONA_MODEL is ours
        value = self.config.get("model") or os.environ.get(MODEL_ENV) or os.environ.get(MODEL_PATH_ENV)
        return str(value) if value else ""

    def prepare(self) -> None:
        """Download (an ``hf:`` reference not cached yet) and load the model now, ahead of the first
        question; raises a ``SolverError`` as a question would. Meanwhile questions fall through."""
        ref = self.model_ref
        if ref and is_hub_ref(ref):
            ensure_model(ref, logging_progress(ref))
        self._ensure_model()

    def forget(self, conversation_id: str) -> None:
        """Drop the saved state of ``conversation_id``."""
        model = self._model
        if model is None or not conversation_id:
            return
        forget_conversation(model, conversation_id)
        if model.decoder is not None:
            model.decoder.forget(conversation_id)

    def close(self) -> None:
        """Stop sharing the model; it is unloaded when no solver uses it."""
        if self._model is not None:
            release_model(self._model, self)
            self._model = None

    # -- the answer ----------------------------------------------------------------------------

    def _prefill(self, model: LoadedModel, tokens: List[int], cancel: CancelToken) -> Tuple[int, int, bool]:
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
        reuse = reusable(common_prefix(cached, tokens), len(tokens))
        if reuse < len(cached) and not model.partial_reuse_ok:
            reuse = 0
        if reuse == 0:
            llama.reset()
        llama.n_tokens = reuse  # Llama.eval drops the cache from n_tokens on
        # small chunks on CPU keep cancel prompt; a GPU does a whole batch in milliseconds
        size = PREFILL_CHUNK_TOKENS if self.n_gpu_layers == 0 else max(PREFILL_CHUNK_TOKENS, llama.n_batch)
        end = len(tokens) if hasattr(llama, "_requires_eval") else len(tokens) - 1
        start = reuse
        while start < end:
            if cancel.cancelled:
                return reuse, start - reuse, False
            stop = piece_end(start, end, size)
            llama.eval(tokens[start:stop])
            start = stop
        if cancel.cancelled:
            return reuse, end - reuse, False
        return reuse, len(tokens) - reuse, True

    def stream(self, messages: Sequence[ChatMessage], *, lang: str, cancel: CancelToken,
               conversation_id: str = "") -> Iterator[str]:
        """Yield the model's answer token by token; return quietly once ``cancel`` is set."""
        if cancel.cancelled:
            return
        model = self._ensure_model()
        if model.decoder is not None:
            yield from self._answer_batched(model, messages, cancel, conversation_id)
            return
        if not model.lock.acquire(cancel):
            return
        try:
            cancel.mark_started()  # loaded, and our turn: the chain's first-chunk clock starts now
            yield from self._answer(model, messages, cancel, conversation_id)
        finally:
            model.lock.release()

    def plan(self, messages: Sequence[ChatMessage], tools: Sequence[ToolDefinition], *, lang: str,
             cancel: CancelToken, conversation_id: str = "", required: bool = False) -> ToolPlan:
        """Offer ``tools`` to the model (see ``llama_tools``); an empty plan once ``cancel`` is set."""
        if cancel.cancelled:
            return ToolPlan()
        model = self._ensure_model()
        if not model.lock.acquire(cancel):
            return ToolPlan()
        try:
            cancel.mark_started()
            if model.decoder is not None:  # the one-sequence API below needs the context to itself
                model.decoder.park()
            try:
                return plan_with_tools(self, model, messages, tools, cancel, conversation_id, required)
            finally:
                if model.decoder is not None:
                    model.decoder.park()
        finally:
            model.lock.release()

    def _start_stats(self, conversation_id: str, plan: Plan, prompt_tokens: int, **extra: Any) -> Dict[str, Any]:
        """The details of a new answer (``last_stats``), before anything is evaluated."""
        stats: Dict[str, Any] = {
            "conversation_id": conversation_id, "prompt_tokens": prompt_tokens, "prompt_tokens_evaluated": 0,
            "prompt_tokens_reused": 0, "completion_tokens": 0, "max_tokens": plan.max_tokens,
            "finish_reason": "cancelled", "messages": tuple(plan.messages),
            "dropped_messages": plan.dropped_messages, "question_truncated": plan.question_truncated,
            "state_restored": False, "spliced": False, "shifted_out": 0, **extra,
        }
        self.last_stats = stats
        return stats

    def _text(self, model: LoadedModel, tokens: Iterator[int], stops: Sequence[str], max_tokens: int,
              cancel: CancelToken, stats: Dict[str, Any], keep_specials: bool) -> Iterator[str]:
        """Turn sampled tokens into text chunks: UTF-8 safe, stop strings held back and cut, ``max_tokens``.

        ``stats`` gets ``completion_tokens`` and, unless cancelled, ``finish_reason``.
        """
        stops = tuple(dict.fromkeys(stops))
        decoder = codecs.getincrementaldecoder("utf-8")(errors="ignore")
        text, emitted, completion = "", 0, 0
        finish, stop_hit = "length", False
        try:
            for token in tokens:
                if cancel.cancelled:
                    break
                if model.is_eog(token):
                    finish = "stop"
                    break
                completion += 1
                before = len(text)
                # with tools, markers such as <tool_call> may be special tokens: keep their text
                text += decoder.decode(model.piece(token, keep_specials))
                if stops:
                    window = max(0, before - max(len(s) for s in stops) + 1)
                    hits = [i for i in (text.find(s, window) for s in stops) if i >= 0]
                    if hits:
                        text, finish, stop_hit = text[:min(hits)], "stop", True
                safe = len(text) if stop_hit else len(text) - _held_back(text, stops)
                if safe > emitted:
                    chunk, emitted = text[emitted:safe], safe
                    yield chunk
                if stop_hit or cancel.cancelled or completion >= max_tokens:
                    break
            if cancel.cancelled:
                return
            stats["finish_reason"] = finish
            if not stop_hit:
                text += decoder.decode(b"", final=True)
                if len(text) > emitted:
                    yield text[emitted:]
        finally:
            stats["completion_tokens"] = completion

    def _answer_batched(self, model: LoadedModel, messages: Sequence[ChatMessage], cancel: CancelToken,
                        conversation_id: str) -> Iterator[str]:
        """One answer on the model's batch decoder (``parallel`` > 1): decoded beside the others."""
        settings = request_generation(self.generation)
        plan = plan_prompt(model, messages, settings.max_tokens, self.chat_format)
        # the decoder fills in the prompt figures when it admits the request
        stats = self._start_stats(conversation_id, plan, len(plan.rendered.tokens), batched=True)
        request = BatchRequest(conversation_id, plan.rendered, plan.max_tokens, settings, _seed(settings), cancel, stats,
                               (self.state_cache_size, self.state_cache_bytes))
        model.decoder.submit(request)
        try:
            yield from self._text(model, request.stream(), settings.stop + plan.rendered.stops, plan.max_tokens,
                                  cancel, stats, False)
        finally:
            request.finish()  # the decoder drops it before its next step; the others go on
            self.last_prompt_tokens_evaluated = stats["prompt_tokens_evaluated"]
            _report_usage(stats)

    def _answer(self, model: LoadedModel, messages: Sequence[ChatMessage], cancel: CancelToken,
                conversation_id: str, tools: Optional[Sequence[dict]] = None) -> Iterator[str]:
        llama = model.llama
        settings = request_generation(self.generation)  # a server request may override sampling
        plan = plan_prompt(model, messages, settings.max_tokens, self.chat_format, tools)
        restored = switch_conversation(model, conversation_id, self.state_cache_size, self.state_cache_bytes)
        shifted = drop_span(model, plan.rendered)
        tokens = splice(model, plan.rendered)
        if len(tokens) + plan.max_tokens > model.n_ctx:
            tokens = plan.rendered.tokens  # a spliced prompt may be a little longer than canonical
        stats = self._start_stats(conversation_id, plan, len(tokens), state_restored=restored,
                                  spliced=tokens is not plan.rendered.tokens, shifted_out=shifted)
        generator = None
        try:
            reused, evaluated, complete = self._prefill(model, tokens, cancel)
            stats["prompt_tokens_evaluated"] = evaluated
            stats["prompt_tokens_reused"] = reused
            self.last_prompt_tokens_evaluated = evaluated
            if not complete:
                return
            llama.set_seed(_seed(settings))
            generator = llama.generate(
                tokens, top_k=settings.top_k, top_p=settings.top_p, temp=settings.temperature,
                repeat_penalty=settings.repeat_penalty,
                # stops llama.cpp between its own steps too, so a cancel never waits for our loop
                stopping_criteria=lambda _ids, _logits: cancel.cancelled)
            yield from self._text(model, generator, settings.stop + plan.rendered.stops, plan.max_tokens,
                                  cancel, stats, tools is not None)
        except RuntimeError as err:  # llama_decode failures: the context is in an unknown state
            model.reset()
            raise SolverUnavailable(f"llama.cpp failed while answering with {model.path}: {err}") from err
        finally:
            if generator is not None:
                generator.close()  # no token is evaluated after this
            _report_usage(stats)
            remember(model, plan.rendered, tokens, conversation_id)
