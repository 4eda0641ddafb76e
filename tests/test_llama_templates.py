"""Chat templates that refuse a system message or demand strict user/assistant alternation.

Gemma-style templates raise "System role not supported", Mistral-Instruct-style ones "Conversation
roles must alternate ..." through ``raise_exception``. The solver must still answer: it merges
the system text into the first user turn (and joins neighbours of one role), remembers that per
model, and the prompt it sends is exactly the template's rendering of the merged chat.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, List

import pytest

import llama_cpp  # noqa: F401  (a missing library is a failure here, not a skip)

from llama_fixtures import ask, make_solver
from tiny_gguf import ALTERNATING_TEMPLATE, CHAT_TEMPLATE, NO_SYSTEM_TEMPLATE, write_tiny_gguf

from ovos_skill_persona_fallback.solvers.base import ChatMessage, Role, SolverConfigError
from ovos_skill_persona_fallback.solvers.llama_prompt import merge_roles

SYSTEM = ChatMessage(Role.SYSTEM, "you are a friendly voice assistant")


@pytest.fixture(scope="module")
def gguf_with(tmp_path_factory: pytest.TempPathFactory):
    """Write (once per template) a tiny GGUF carrying the given chat template."""
    made = {}

    def make(template: str) -> Path:
        if template not in made:
            folder = tmp_path_factory.mktemp("template")
            made[template] = write_tiny_gguf(folder / "model.gguf", n_ctx=2048, chat_template=template)
        return made[template]
    return make


def prompt_text(solver: Any) -> str:
    """The text of the prompt the last answer was generated from (special tokens spelled out)."""
    stats = solver.last_stats
    llama = solver.loaded_model.llama
    return llama.detokenize(llama.input_ids[:stats["prompt_tokens"]].tolist(), special=True).decode()


@pytest.mark.parametrize("template, refusal", [
    (NO_SYSTEM_TEMPLATE, "System role not supported"),
    (ALTERNATING_TEMPLATE, "Conversation roles must alternate"),
], ids=["gemma-style", "mistral-style"])
def test_template_refusing_the_system_role_still_answers(gguf_with, template: str, refusal: str) -> None:
    path = gguf_with(template)
    # the template really refuses: a plain Jinja render of the raw chat raises
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter
    formatter = Jinja2ChatFormatter(template, eos_token="<|end|>", bos_token="<s>")
    with pytest.raises(Exception, match=refusal):
        formatter(messages=[SYSTEM.as_dict(), {"role": "user", "content": "hi"}])

    solver = make_solver(path)
    history = [SYSTEM, ChatMessage(Role.USER, "hello there")]
    first = ask(solver, history, "templates-1")
    assert first and "".join(first).strip()
    assert solver.loaded_model.merge_roles
    expected = formatter(messages=[{"role": "user", "content": f"{SYSTEM.content}\n\nhello there"}]).prompt
    assert prompt_text(solver) == expected
    # the next turn renders the same way, so the cache prefix holds: only the new turn is evaluated
    history += [ChatMessage(Role.ASSISTANT, "".join(first)), ChatMessage(Role.USER, "and tomorrow")]
    ask(solver, history, "templates-1")
    stats = solver.last_stats
    assert stats["prompt_tokens_reused"] > 0
    assert stats["prompt_tokens_evaluated"] < stats["prompt_tokens"] / 2


def test_consecutive_user_messages_are_joined_for_an_alternating_template(gguf_with) -> None:
    solver = make_solver(gguf_with(ALTERNATING_TEMPLATE))
    messages = [SYSTEM, ChatMessage(Role.USER, "first part"), ChatMessage(Role.USER, "second part")]
    assert ask(solver, messages)
    assert list(solver.last_stats["messages"]) == messages  # what was asked, before merging
    assert prompt_text(solver) == (f"<s>[INST] {SYSTEM.content}\n\nfirst part\n\nsecond part [/INST]")


def test_a_template_that_takes_a_system_message_is_not_merged(gguf_with) -> None:
    solver = make_solver(gguf_with(CHAT_TEMPLATE))
    assert ask(solver, [SYSTEM, ChatMessage(Role.USER, "hi")])
    assert not solver.loaded_model.merge_roles
    assert prompt_text(solver).startswith(f"<s><|system|>\n{SYSTEM.content}<|end|>")


def test_a_template_broken_for_other_reasons_is_still_a_config_error(gguf_with) -> None:
    solver = make_solver(gguf_with("{{ bos_token }}{{ raise_exception('this template is broken') }}"))
    with pytest.raises(SolverConfigError, match="this template is broken"):
        ask(solver, [SYSTEM, ChatMessage(Role.USER, "hi")])
    assert not solver.loaded_model.merge_roles


def test_a_template_that_does_not_compile_is_a_config_error_at_load(gguf_with) -> None:
    broken = "{{ bos_token }}{% for message in messages %}{{ message['content'] | no_such_filter }}{% endfor %}"
    solver = make_solver(gguf_with(broken))
    with pytest.raises(SolverConfigError, match="no_such_filter"):
        ask(solver, [SYSTEM, ChatMessage(Role.USER, "hi")])
    assert solver.loaded_model is None


@pytest.mark.parametrize("messages, expected", [
    # system folded into the first user turn
    ([("system", "S"), ("user", "q")], [("user", "S\n\nq")]),
    # a chat opening with the assistant: the system text becomes its own user turn before it
    ([("system", "S"), ("assistant", "a"), ("user", "q")], [("user", "S"), ("assistant", "a"), ("user", "q")]),
    # neighbours of one role joined
    ([("user", "a"), ("user", "b"), ("assistant", "c"), ("assistant", "d")], [("user", "a\n\nb"), ("assistant", "c\n\nd")]),
    # nothing to change
    ([("user", "q")], [("user", "q")]),
])
def test_merge_roles(messages: List[tuple], expected: List[tuple]) -> None:
    def chat(pairs: List[tuple]) -> List[ChatMessage]:
        return [ChatMessage(Role(role), content) for role, content in pairs]
    assert merge_roles(chat(messages)) == chat(expected)
