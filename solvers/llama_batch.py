"""Several conversations on one model, decoded together (the llama-cpp solver's ``parallel`` option).

Without it a model answers one question at a time behind its fair lock, so the fourth of four
sessions asking at once waits for three whole answers. With ``parallel: N`` the model's context
holds N sequences (llama.cpp's ``n_seq_max``), and one decoder thread per model advances every
running answer in each step: one ``llama_decode`` call with the new token of every answering
sequence, and a call of its own for the next chunk of each prompt still being read (see
``_fill_prompt``), so N answers advance in much less than N times one on hardware with compute to
spare (a single token leaves most of a CPU's vector units idle).

- **Slots.** Each sequence is a slot that remembers what its KV cells hold (a ``Transcript``), so a
  conversation returning to its slot reuses its cache exactly as the one-sequence path does (context
  shift and splicing included). A new conversation takes a free slot, else the idle one whose cells
  share the longest prefix with its prompt (the least recently used of equals: a persona's system
  text is shared by all its conversations), whose conversation is first saved into the model's
  ``StateCache`` (per sequence, so only that conversation's cells are copied).
- **Separate KV streams** (``kv_unified`` off): each sequence has its own ``n_ctx`` cells, so the
  prompt budget per conversation is the configured ``n_ctx`` and nothing is ever evicted for
  space, and a sequence's numbers do not depend on the others' cells: an answer decoded beside
  others is the one it would be alone (same seed, same text), which the tests check.
- **Sampling per sequence** with a sampler built by llama-cpp-python's own ``Llama._init_sampler``
  (the chain, order and seed handling of the one-sequence path).
- **Cancel and stop are per request.** The consumer (the solver's thread) reads tokens from a queue
  and marks its request finished on a stop string, ``max_tokens`` or cancel; the decoder drops a
  finished request before its next step, and the other sequences go on.
- **Fair lock kept.** The decoder holds the model's fair lock while it has work and gives it up
  between answers when something else waits (tool planning uses the one-sequence API), which then
  finds the context emptied (``park``: idle slots saved first).

Where a model or build cannot hold several sequences (recurrent or hybrid memories, a factory that
returns no real ``Llama``), ``enable_parallel`` says so and the solver keeps the fair lock.
"""
from __future__ import annotations

import ctypes
import queue
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Deque, Dict, Iterator, List, Optional, Tuple

from ovos_utils.log import LOG

from .base import CancelToken, GenerationSettings, SolverUnavailable
from .llama_cache import (SavedState, Transcript, common_prefix, piece_end, reusable, shift_span, splice, state_blob,
                          transcript_of)
from .llama_models import PARALLEL_ATTRIBUTE

if TYPE_CHECKING:  # pragma: no cover
    from .llama_models import LoadedModel
    from .llama_prompt import Rendered

#: prompt tokens of one sequence evaluated per step (and per call), so the answers running beside
#: a long new prompt keep getting a token every step
PREFILL_STEP_TOKENS = 64
#: seconds between checks of ``cancel`` while a request waits for a slot or a token
POLL_SECONDS = 0.05


def enable_parallel(llama: Any, slots: int, n_ctx: int) -> Optional[str]:
    """Give ``llama`` a context of ``slots`` sequences of ``n_ctx`` cells each; return why not, or None."""
    try:
        import llama_cpp
        from llama_cpp import _internals
    except ImportError as err:
        return f"llama-cpp-python is not installed: {err}"
    try:
        model = llama.model
        if llama_cpp.llama_model_is_recurrent(model) or llama_cpp.llama_model_is_hybrid(model):
            return "recurrent and hybrid models cannot drop part of a sequence, which reusing a sequence needs"
        limit = int(llama_cpp.llama_max_parallel_sequences())
        if slots > limit:
            return f"this llama.cpp build decodes at most {limit} sequences at once"
        params = llama.context_params
        params.n_seq_max = slots
        params.kv_unified = False
        params.n_ctx = n_ctx * slots
        fresh = _internals.LlamaContext(model=llama._model, params=params, verbose=llama.verbose)
    except (AttributeError, TypeError, ValueError, ctypes.ArgumentError) as err:
        return f"this model or llama-cpp-python build cannot hold several sequences ({err})"
    old, llama._ctx = llama._ctx, fresh
    old.close()  # its KV cells would otherwise stay allocated beside the new ones
    llama.n_tokens = 0
    setattr(llama, PARALLEL_ATTRIBUTE, slots)
    return None


@dataclass
class Slot:
    """One sequence of the context: what its cells hold, the answer running in it, its last use."""

    seq: int
    transcript: Optional[Transcript] = None
    request: Optional["BatchRequest"] = None
    used: float = 0.0


class BatchRequest:
    """One answer on the decoder: the prompt, sampling, and a queue of events for the consumer.

    Events: ``("start", None)`` once admitted to a slot, ``("token", id)`` per sampled token,
    ``("end", finish_reason)``, ``("error", exception)``.
    """

    def __init__(self, conversation_id: str, rendered: "Rendered", max_tokens: int,
                 settings: GenerationSettings, seed: int, cancel: CancelToken, stats: Dict[str, Any],
                 state_limits: Tuple[int, int] = (0, 0)) -> None:
        self.conversation_id = conversation_id
        self.rendered = rendered
        self.max_tokens = max_tokens
        self.settings = settings
        self.seed = seed
        self.cancel = cancel
        self.stats = stats
        #: saved states kept per model (count, bytes) when this request makes a conversation leave
        self.state_limits = state_limits
        self.events: "queue.SimpleQueue[Tuple[str, Any]]" = queue.SimpleQueue()
        self._finished = threading.Event()
        # decoder side
        self.tokens: List[int] = []
        self.next_prompt = 0
        self.pending: Optional[int] = None
        self.generated = 0
        self.sampler: Any = None

    @property
    def finished(self) -> bool:
        """True once the consumer is done with the answer (or cancelled it)."""
        return self._finished.is_set() or self.cancel.cancelled

    def finish(self) -> None:
        """The consumer needs no more tokens; the decoder drops the request before its next step."""
        self._finished.set()

    def stream(self) -> Iterator[int]:
        """Yield the sampled tokens; mark the cancel token started when a slot is given."""
        while True:
            try:
                kind, value = self.events.get(timeout=POLL_SECONDS)
            except queue.Empty:
                if self.finished:
                    return
                continue
            if kind == "token":
                yield value
            elif kind == "start":
                self.cancel.mark_started()
            elif kind == "end":
                self.stats["finish_reason"] = value
                return
            else:
                raise value


class BatchDecoder:
    """The decoder of one model with ``slots`` sequences (module doc): a thread while there is work."""

    def __init__(self, model: "LoadedModel", slots: int) -> None:
        self.model = model
        self.slots = [Slot(seq) for seq in range(slots)]
        #: state cache limits (count, bytes) of the last request admitted, for park()
        self._limits: Tuple[int, int] = (0, 0)
        self._waiting: Deque[BatchRequest] = deque()
        #: guards the waiting line and the thread's start and end
        self._guard = threading.Lock()
        self._thread: Optional[threading.Thread] = None
        self._batch: Any = None

    # -- consumer side -------------------------------------------------------------------------

    def submit(self, request: BatchRequest) -> None:
        """Queue ``request``; it starts when a slot is free, in arrival order."""
        with self._guard:
            self._waiting.append(request)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="llama-batch", daemon=True)
                self._thread.start()

    def forget(self, conversation_id: str) -> None:
        """Stop calling a slot's cells by ``conversation_id`` (its saved state is the caller's to drop)."""
        with self.model.books:
            for slot in self.slots:
                if slot.transcript is not None and slot.transcript.conversation_id == conversation_id:
                    slot.transcript.conversation_id = ""

    def park(self) -> None:
        """Empty the context for one-sequence use (call holding the model's lock): idle slots saved first."""
        for slot in self.slots:
            self._save(slot, self._limits)
            slot.transcript = None
        self.model.lib.llama_memory_clear(self._memory(), True)
        self.model.reset()

    # -- decoder thread ------------------------------------------------------------------------

    def _memory(self) -> Any:
        return self.model.lib.llama_get_memory(self.model.llama.ctx)

    def _run(self) -> None:
        lock = self.model.lock
        lock.acquire()
        try:
            self._batch = self.model.lib.llama_batch_init(self.model.llama.n_batch, 0, 1)
            while self._step():
                if lock.waiting and not any(s.request is not None for s in self.slots):
                    lock.release()  # something else needs the model: let it have its turn
                    lock.acquire()
        except Exception as err:  # noqa: BLE001 - no consumer may wait forever on a dead decoder
            LOG.error(f"llama-cpp: the batch decoder of {self.model.path} failed: {err!r}")
            self._fail_all(SolverUnavailable(f"llama.cpp failed while answering with {self.model.path}: {err}"))
        finally:
            if self._batch is not None:
                self.model.lib.llama_batch_free(self._batch)
                self._batch = None
            lock.release()

    def _step(self) -> bool:
        """Admit, decode one batch, sample; return False (thread ended) when there is no work."""
        with self._guard:
            for slot in self.slots:
                if slot.request is not None and slot.request.finished:
                    self._end(slot, None)
            while self._waiting and self._waiting[0].finished:
                self._waiting.popleft().events.put(("end", "cancelled"))
            admit: List[BatchRequest] = []
            free = [s for s in self.slots if s.request is None]
            while self._waiting and len(admit) < len(free) and not self.model.lock.waiting:
                admit.append(self._waiting.popleft())
            if not admit and not self._waiting and all(s.request is None for s in self.slots):
                self._thread = None
                return False
        for request in admit:
            self._admit(request)
        entries = self._fill_answers()
        if entries and not self._decode(entries):
            return True
        for slot in self.slots:
            if slot.request is not None and slot.request.next_prompt < len(slot.request.tokens):
                if not self._decode(self._fill_prompt(slot)):
                    return True
        return True

    def _pick(self, request: BatchRequest) -> Slot:
        """The slot for ``request``: its conversation's, else an empty one, else the idle one whose
        cells share the longest prefix with the new prompt (the least recently used of equals)."""
        idle = [s for s in self.slots if s.request is None]
        conversation_id = request.conversation_id
        for slot in idle:
            if conversation_id and slot.transcript is not None and slot.transcript.conversation_id == conversation_id:
                return slot
        empty = [s for s in idle if s.transcript is None or not s.transcript.tokens]
        if empty:
            return empty[0]
        prompt = request.rendered.tokens
        return max(idle, key=lambda s: (common_prefix(s.transcript.tokens, prompt), -s.used))

    def _admit(self, request: BatchRequest) -> None:
        model, lib = self.model, self.model.lib
        slot = self._pick(request)
        base = slot.transcript
        restored = False
        self._limits = request.state_limits
        if base is None or base.conversation_id != request.conversation_id:
            # the cells stay: another conversation's prompt often starts the same (the system text)
            self._save(slot, request.state_limits, empty=False)
            with model.books:
                wanted = model.saved.pop(request.conversation_id) if request.conversation_id else None
            if wanted is not None:
                restored = self._restore(slot, wanted)
                base = slot.transcript
        rendered = request.rendered
        shifted = 0
        if base is not None and base.tokens:
            kept = shift_span(model, base, rendered, slot.seq)
            if kept is not None:
                shifted = len(base.tokens) - len(kept.tokens)
                base = kept
        tokens = splice(model, rendered, base) if base is not None and base.tokens else rendered.tokens
        if len(tokens) + request.max_tokens > model.n_ctx:
            tokens = rendered.tokens
        held = base.tokens if base is not None else []
        reuse = reusable(common_prefix(held, tokens), len(tokens))
        if not lib.llama_memory_seq_rm(self._memory(), slot.seq, reuse, -1):
            lib.llama_memory_seq_rm(self._memory(), slot.seq, -1, -1)
            reuse = 0
        slot.transcript = Transcript(request.conversation_id, list(tokens[:reuse]))
        slot.request, slot.used = request, time.monotonic()
        request.tokens, request.next_prompt = list(tokens), reuse
        model.llama.set_seed(request.seed)  # _init_sampler reads the seed from the Llama
        settings = request.settings
        request.sampler = model.llama._init_sampler(
            top_k=settings.top_k, top_p=settings.top_p, temp=settings.temperature,
            repeat_penalty=settings.repeat_penalty)
        request.stats.update({
            "prompt_tokens": len(tokens), "prompt_tokens_evaluated": len(tokens) - reuse,
            "prompt_tokens_reused": reuse, "state_restored": restored, "shifted_out": shifted,
            "spliced": tokens is not rendered.tokens, "slot": slot.seq})
        request.events.put(("start", None))

    def _put(self, n: int, token: int, slot: Slot, logits: bool) -> None:
        batch = self._batch
        batch.token[n] = token
        batch.pos[n] = len(slot.transcript.tokens)
        batch.n_seq_id[n] = 1
        batch.seq_id[n][0] = slot.seq
        batch.logits[n] = logits
        slot.transcript.tokens.append(token)

    def _fill_answers(self) -> List[Tuple[Slot, int]]:
        """Put the last sampled token of every answering sequence in the batch; return (slot, logits index)."""
        entries: List[Tuple[Slot, int]] = []
        for slot in self.slots:
            request = slot.request
            if request is None or request.pending is None:
                continue
            self._put(len(entries), request.pending, slot, True)
            request.pending = None
            entries.append((slot, len(entries)))
        self._batch.n_tokens = len(entries)
        return entries

    def _fill_prompt(self, slot: Slot) -> List[Tuple[Slot, int]]:
        """Put the next chunk of a waiting prompt in the batch, alone.

        A prompt chunk is decoded in a call of its own: llama.cpp splits a batch of several
        sequences into micro-batches with an equal share of each, which would cut this prompt at
        other places than it is cut alone, and the numbers (so a seeded answer) would differ.
        """
        request = slot.request
        end = piece_end(request.next_prompt, len(request.tokens),
                        min(PREFILL_STEP_TOKENS, self.model.llama.n_batch))
        for n, index in enumerate(range(request.next_prompt, end)):
            self._put(n, request.tokens[index], slot, index == len(request.tokens) - 1)
        self._batch.n_tokens = end - request.next_prompt
        request.next_prompt = end
        return [(slot, self._batch.n_tokens - 1)] if end == len(request.tokens) else []

    def _decode(self, entries: List[Tuple[Slot, int]]) -> bool:
        """Decode the batch and sample where ``entries`` say; False when llama.cpp failed (all answers ended)."""
        model = self.model
        status = int(model.lib.llama_decode(model.llama.ctx, self._batch))
        if status != 0:
            error = SolverUnavailable(f"llama.cpp failed while answering with {model.path}: llama_decode "
                                      f"returned {status}")
            for slot in self.slots:
                if slot.request is not None:
                    self._end(slot, error)
                slot.transcript = None
            model.lib.llama_memory_clear(self._memory(), True)
            return False
        for slot, index in entries:
            request = slot.request
            token = request.sampler.sample(model.llama._ctx, index)
            if request.finished:
                continue
            if model.is_eog(token):
                self._end(slot, "stop")
                continue
            request.events.put(("token", token))
            request.generated += 1
            if request.generated >= request.max_tokens:
                self._end(slot, "length")
            else:
                request.pending = token
        return True

    def _end(self, slot: Slot, outcome: Any) -> None:
        """Take the request out of its slot; the slot's transcript keeps what its cells hold."""
        request = slot.request
        slot.request, slot.used = None, time.monotonic()
        if request.sampler is not None:
            request.sampler.close()
            request.sampler = None
        if slot.transcript is not None:
            slot.transcript = transcript_of(request.conversation_id, slot.transcript.tokens, request.rendered,
                                            request.tokens)
        if isinstance(outcome, Exception):
            request.events.put(("error", outcome))
        else:
            request.events.put(("end", outcome or "cancelled"))

    def _fail_all(self, error: Exception) -> None:
        with self._guard:
            for slot in self.slots:
                if slot.request is not None:
                    slot.request.events.put(("error", error))
                    slot.request = None
                slot.transcript = None
            while self._waiting:
                self._waiting.popleft().events.put(("error", error))
            self._thread = None

    # -- saved states --------------------------------------------------------------------------

    def _save(self, slot: Slot, limits: Tuple[int, int], *, empty: bool = True) -> None:
        """Copy a leaving conversation's cells into the model's state cache; ``empty``: then clear the sequence."""
        transcript, model, lib = slot.transcript, self.model, self.model.lib
        if transcript is None or not transcript.tokens:
            return
        ctx = model.llama.ctx
        max_saved, max_bytes = limits
        if transcript.conversation_id and max_saved > 0 and max_bytes > 0:
            blob = state_blob(int(lib.llama_state_seq_get_size(ctx, slot.seq)),
                              lambda buffer, size: lib.llama_state_seq_get_data(ctx, buffer, size, slot.seq))
            if blob is not None:
                state = SavedState(transcript, blob)
                with model.books:
                    model.saved.put(transcript.conversation_id, state, max_entries=max_saved, max_bytes=max_bytes)
        if empty:
            lib.llama_memory_seq_rm(self._memory(), slot.seq, -1, -1)
            slot.transcript = None

    def _restore(self, slot: Slot, saved: SavedState) -> bool:
        lib, ctx = self.model.lib, self.model.llama.ctx
        blob = saved.blob
        lib.llama_memory_seq_rm(self._memory(), slot.seq, -1, -1)
        if int(lib.llama_state_seq_set_data(ctx, blob, len(blob), slot.seq)) != len(blob):
            lib.llama_memory_seq_rm(self._memory(), slot.seq, -1, -1)
            slot.transcript = None
            return False
        slot.transcript = Transcript(saved.transcript.conversation_id, list(saved.transcript.tokens),
                                     saved.transcript.text, saved.transcript.n_text_tokens)
        return True
