"""Rendering a chat into prompt tokens with the model's own template, and fitting it into ``n_ctx``.

The prompt is rendered by llama-cpp-python's own chat handler (the model's
``tokenizer.chat_template`` or the configured ``chat_format``), called against a stand-in that
records the prompt text and tokens instead of generating. So the template logic is exactly the
library's, but the solver holds the token list before anything is evaluated, which it needs for
three things: counting tokens to trim the history to ``n_ctx``; splicing (see ``llama_cache``);
and evaluating the prompt itself in small chunks, checking the cancel token between chunks.

Some templates refuse what a persona sends: Gemma-style ones raise "System role not supported",
Mistral-Instruct-style ones "Conversation roles must alternate ...". Those are rendered again with
the system text folded into the first user turn (``merge_roles``), and the model remembers it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, List, Optional, Sequence, Tuple

from ovos_utils.log import LOG

from .base import ChatMessage, Role, SolverConfigError

if TYPE_CHECKING:  # pragma: no cover
    from .llama_models import LoadedModel

#: a question cut to fit the context keeps at least this many of its tokens
MIN_QUESTION_TOKENS = 32


@dataclass
class Rendered:
    """A rendered prompt: its text (as the tokens spell it), its canonical tokens, template stops."""

    text: Optional[bytes]
    tokens: List[int]
    stops: Tuple[str, ...]


@dataclass
class Plan:
    """The messages that fit the context, their rendering, and the answer budget."""

    messages: List[ChatMessage]
    rendered: Rendered
    max_tokens: int
    dropped_messages: int = 0
    question_truncated: bool = False


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


def merge_roles(messages: Sequence[ChatMessage]) -> List[ChatMessage]:
    """Fold system text into the first user turn and join neighbours of the same role.

    For templates that refuse a system message (Gemma style) or insist that user and assistant
    alternate starting with the user (Mistral-Instruct style).
    """
    system = "\n\n".join(m.content for m in messages if m.role is Role.SYSTEM and m.content)
    rest = [m for m in messages if m.role is not Role.SYSTEM]
    if system:
        if rest and rest[0].role is Role.USER:
            rest[0] = ChatMessage(Role.USER, f"{system}\n\n{rest[0].content}")
        else:
            rest.insert(0, ChatMessage(Role.USER, system))
    merged: List[ChatMessage] = []
    for message in rest:
        if merged and merged[-1].role is message.role:
            merged[-1] = ChatMessage(message.role, f"{merged[-1].content}\n\n{message.content}")
        else:
            merged.append(message)
    return merged


def render(model: "LoadedModel", messages: Sequence[ChatMessage], chat_format: Optional[str] = None,
           tools: Optional[Sequence[dict]] = None) -> Rendered:
    """Render ``messages`` (and ``tools``, OpenAI ``tools`` entries) with the model's chat handler.

    A template that raises on the roles (no system role, roles must alternate) is retried once
    with ``merge_roles``; if that works the model remembers it and merges from then on, so every
    turn renders the same way and the KV cache prefix stays stable.
    """
    if model.merge_roles:
        return _render(model, merge_roles(messages), chat_format, tools)
    try:
        return _render(model, messages, chat_format, tools)
    except SolverConfigError as err:
        merged = merge_roles(messages)
        if merged == list(messages):
            raise
        try:
            rendered = _render(model, merged, chat_format, tools)
        except SolverConfigError:
            raise err from None  # the first error says what is wrong with the template
        LOG.info(f"llama-cpp: the chat template of {model.path} refused the roles ({err.__cause__}); "
                 f"the system message is merged into the first user turn from now on")
        model.merge_roles = True
        return rendered


def _render(model: "LoadedModel", messages: Sequence[ChatMessage], chat_format: Optional[str],
            tools: Optional[Sequence[dict]] = None) -> Rendered:
    capture = _PromptCapture(model.llama)
    offered = {"tools": list(tools), "tool_choice": "auto"} if tools else {}
    try:
        type(model.llama).create_chat_completion(capture, messages=[m.as_dict() for m in messages], **offered)
    except _Captured:
        pass
    except _template_errors() as err:
        raise SolverConfigError(f"chat template of {model.path} failed: {err}") from err
    if capture.prompt is None:
        raise SolverConfigError(f"chat format {chat_format!r} of {model.path} is not a text template")
    stops = capture.stop
    stops = (stops,) if isinstance(stops, str) else tuple(stops or ())
    text = None
    if capture.text is not None and capture.tokens == capture.prompt:
        text = capture.text
        bos = model.llama.token_bos()
        if capture.add_bos and capture.prompt[:1] == [bos]:
            text = model.piece(bos) + text
    return Rendered(text, capture.prompt, tuple(s for s in stops if s))


def plan(model: "LoadedModel", messages: Sequence[ChatMessage], max_tokens: int,
         chat_format: Optional[str] = None, tools: Optional[Sequence[dict]] = None) -> Plan:
    """Fit the prompt into ``n_ctx``: drop old turns, then cut the question, then shrink the answer."""
    n_ctx = model.n_ctx
    messages = list(messages)
    result = Plan(messages, render(model, messages, chat_format, tools), max_tokens)

    def over() -> int:
        return len(result.rendered.tokens) + result.max_tokens - n_ctx

    if over() <= 0:
        return result
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
        result.messages = [m for i, m in enumerate(messages) if i not in dropped]
        result.rendered = render(model, result.messages, chat_format, tools)
    result.dropped_messages = len(dropped)
    if result.dropped_messages:
        LOG.debug(f"llama-cpp: dropped {result.dropped_messages} old messages to fit n_ctx={n_ctx}")
    if over() > 0 and 0 <= last_user < len(messages) and messages[last_user].role is Role.USER:
        _cut_question(model, result, messages[last_user], chat_format, tools)
    if over() > 0:
        budget = n_ctx - len(result.rendered.tokens)
        if budget < 1:
            raise SolverConfigError(f"llama-cpp: the prompt alone ({len(result.rendered.tokens)} tokens) "
                                    f"does not fit n_ctx={n_ctx} of {model.path}")
        LOG.warning(f"llama-cpp: answer limited to {budget} tokens (max_tokens={result.max_tokens}) "
                    f"to fit n_ctx={n_ctx}")
        result.max_tokens = budget
    return result


def _cut_question(model: "LoadedModel", result: Plan, question: ChatMessage, chat_format: Optional[str],
                  tools: Optional[Sequence[dict]] = None) -> None:
    """Keep the END of an over-long question: a spoken request usually ends with what is asked."""
    llama = model.llama
    index = max(i for i, m in enumerate(result.messages) if m is question)
    tokens = llama.tokenize(question.content.encode("utf-8"), add_bos=False, special=False)
    floor = min(MIN_QUESTION_TOKENS, len(tokens))
    keep = max(floor, len(tokens) - (len(result.rendered.tokens) + result.max_tokens - model.n_ctx))
    for _ in range(8):  # re-rendering may shift a token or two at the cut; converge
        text = llama.detokenize(tokens[len(tokens) - keep:]).decode("utf-8", errors="ignore").lstrip()
        messages = list(result.messages)
        messages[index] = ChatMessage(Role.USER, text)
        rendered = render(model, messages, chat_format, tools)
        result.messages, result.rendered, result.question_truncated = messages, rendered, True
        excess = len(rendered.tokens) + result.max_tokens - model.n_ctx
        if excess <= 0 or keep <= floor:
            break
        keep = max(floor, keep - excess)
    LOG.warning(f"llama-cpp: question of {len(tokens)} tokens cut to its last {keep} "
                f"to fit n_ctx={model.n_ctx} of {model.path}")
