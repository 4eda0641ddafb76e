"""An API key in a persona file never leaves it: not in logs (any level), exception messages and
tracebacks, bus messages, speech, ``persona.list``, ``persona-fallback validate`` output (valid
and invalid files) or ``persona-fallback ask`` output, even when the server echoes it back in
its error replies.

The key sits in the ``openai`` block's ``key``, in an ``Authorization`` header, or in an
``X-Api-Key`` header. Every captured text is searched for the key, its distinctive suffix and
its two halves, so a key cut in two by a length limit is caught too.
"""
from __future__ import annotations

import gc
import json
import logging
import socket
from pathlib import Path
from typing import Iterable, List, NamedTuple, Tuple

import pytest
from ovos_bus_client.message import Message
from ovos_bus_client.session import Session
from ovos_utils.fakebus import FakeBus
from ovos_utils.log import LOG

from ovos_skill_persona_fallback import SKILL_ID, PersonaFallbackSkill
from ovos_skill_persona_fallback.cli import main as cli_main
from ovos_skill_persona_fallback.engine import PersonaEngine
from ovos_skill_persona_fallback.languages import dialog_lines
from ovos_skill_persona_fallback.memory import ConversationMemory
from openai_server import (JSONReply, SSEStream, chat_chunk, error_body, error_reply,  # noqa: F401
                           openai_server, sse)

# in the full run, not the quick lane (-m "not slow"): the secrets sweep (111 cases)
pytestmark = pytest.mark.slow

KEY = "sk-test-SECRET-7f3a9c"
#: what must never appear: the key, its distinctive suffix, and each half of that suffix
LEAKS = (KEY, "SECRET-7f3a9c", "SECRET", "7f3a9c")
REQUEST = f"ovos.skills.fallback.{SKILL_ID}.request"


def assert_clean(texts: Iterable[str], where: str) -> None:
    for text in texts:
        for leak in LEAKS:
            assert leak not in text, f"{leak!r} leaked into {where}: ...{_around(text, leak)}..."


def _around(text: str, leak: str) -> str:
    at = text.index(leak)
    return text[max(0, at - 120):at + 60]


# ------------------------------------------------------------------ persona files

class Holder(NamedTuple):
    """Where a persona file keeps the key."""

    name: str
    block: dict


HOLDERS = [
    Holder("Keyed", {"key": KEY}),                                       # the openai block's key
    Holder("Bearer", {"headers": {"Authorization": f"Bearer {KEY}"}}),  # a raw Authorization header
    Holder("Header", {"headers": {"X-Api-Key": KEY}}),                  # a vendor key header
]


def persona_file(folder: Path, holder: Holder, api_url: str) -> Path:
    block = {"api_url": api_url, "retries": 0, "timeout": {"connect": 1, "read": 2}, **holder.block}
    path = folder / f"{holder.name.lower()}.json"
    path.write_text(json.dumps({"name": holder.name, "description": "Keeps a key", "solvers": ["openai"],
                                "openai": block}))
    return path


def closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


# ------------------------------------------------------------------ servers echoing the key

def _auth(request) -> str:
    return request.header("authorization") or request.header("x-api-key") or ""


def _token(request) -> str:
    return _auth(request).split()[-1] if _auth(request) else ""


def _all_headers(request) -> str:
    # the credential headers first, so they are whole within any snippet length limit
    first = sorted(request.headers.items(), key=lambda item: item[0] not in ("authorization", "x-api-key"))
    return json.dumps(dict(first))


class Server(NamedTuple):
    """How the server misbehaves (None: nothing listens)."""

    name: str
    behaviour: object


#: the solver cuts a non-JSON error body to this many characters; the padding puts the cut mid-key
SNIPPET_CHARS = 200
PADDING = SNIPPET_CHARS - len(" sk-test-SECRET-7")
SERVERS = [
    Server("down", None),
    Server("401 echoing the header", error_reply(401, lambda r: f"Incorrect API key provided: {_auth(r)}")),
    Server("401 echoing the bare token", error_reply(401, lambda r: f"Incorrect API key provided: {_token(r)}")),
    Server("403 plain text echoing every header", JSONReply(lambda r: f"Forbidden. You sent {_all_headers(r)}",
                                                            status=403, content_type="text/plain")),
    Server("401 plain text, key cut by the snippet limit",
           JSONReply(lambda r: "x" * PADDING + f" {_token(r)} rejected", status=401, content_type="text/plain")),
    Server("500 echoing the header", error_reply(500, lambda r: f"upstream failed for {_auth(r)}")),
    Server("400 echoing the token in an error object with no message",
           JSONReply(lambda r: {"error": {"type": "auth", "param": _token(r)}}, status=400)),
    Server("404 model missing, echoing the token",
           error_reply(404, lambda r: f"model gpt-x not found for key {_token(r)}")),
    Server("200 stream carrying an error event that echoes the header",
           SSEStream(sse(chat_chunk(role="assistant"), error_body(f"bad credentials Bearer {KEY}")))),
]
CASES = [pytest.param(holder, server, id=f"{holder.name}-{server.name}")
         for holder in HOLDERS for server in SERVERS]


@pytest.fixture
def every_log(caplog):
    """Every log record at every level (OVOS's LOG filters below its own level, INFO by default)."""
    level = LOG.level
    LOG.set_level("DEBUG")
    caplog.set_level(logging.DEBUG)
    formatter = logging.Formatter("%(name)s %(levelname)s %(message)s")

    def texts() -> List[str]:
        # the formatted record includes the traceback of any exception logged with it
        return [formatter.format(record) for record in caplog.records]

    yield texts
    LOG.set_level(level)


@pytest.fixture
def setup(tmp_path, monkeypatch, openai_server):
    """Return a function writing the persona file for a case and scripting the server."""
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))

    def prepare(holder: Holder, server: Server) -> Path:
        folder = tmp_path / "personas"
        folder.mkdir(exist_ok=True)
        url = closed_port_url() if server.behaviour is None else openai_server.url
        if server.behaviour is not None:
            openai_server.route("/chat/completions", server.behaviour)
        return persona_file(folder, holder, url)

    return prepare


def _engine(path: Path, name: str) -> PersonaEngine:
    return PersonaEngine([path.parent], memory=ConversationMemory(":memory:"), include_shipped=False,
                         default_persona=name)


def _server_saw_the_key(openai_server, server: Server) -> None:
    """The key really went out (else the test would prove nothing)."""
    if server.behaviour is not None:
        assert openai_server.requests and KEY in _all_headers(openai_server.requests[0])


# ------------------------------------------------------------------ engine: failures and tracebacks

@pytest.mark.parametrize("holder,server", CASES)
def test_answer_failures_and_tracebacks_hold_no_key(setup, every_log, capsys, openai_server, holder, server):
    engine = _engine(setup(holder, server), holder.name)
    try:
        answer = engine.ask("hello?", session_id="S")
    finally:
        engine.close()
    _server_saw_the_key(openai_server, server)
    assert answer.sentences == [] and answer.failures, "the server never answers here"
    texts = []
    for failure in answer.failures:
        texts += [failure.describe(), failure.format_traceback(), str(failure.error), repr(failure.error)]
    assert_clean(texts, "Answer.failures")
    assert_clean(every_log(), "the log")
    captured = capsys.readouterr()
    assert_clean([captured.out, captured.err], "stdout/stderr")


# ------------------------------------------------------------------ the skill: bus, speech, logs

def _drive_skill(path: Path, name: str) -> Tuple[List[str], int]:
    """Build the skill on FakeBus, ask through ``persona.list``, ``persona.ask`` and the fallback,
    shut it down; return every message seen on the bus (serialised) and where the fallback began."""
    bus = FakeBus()
    seen: List[str] = []
    bus.on("message", lambda raw: seen.append(raw if isinstance(raw, str) else raw.serialize()))
    skill = PersonaFallbackSkill(bus=bus, skill_id=SKILL_ID, engine=_engine(path, name))
    try:
        context = {"session": Session("S").serialize()}
        bus.emit(Message("persona.list", {}, context))
        asked_reply = bus.wait_for_response(Message("persona.ask", {"utterance": "hello?"}, context),
                                            "persona.ask.error", timeout=10)
        assert asked_reply is not None, "persona.ask was never answered"
        asked = len(seen)
        done = bus.wait_for_response(Message(REQUEST, {"utterances": ["hello?"], "lang": "en-us"}, context),
                                     "ovos.utterance.handled", timeout=10)
        assert done is not None, "the fallback never finished"
    finally:
        skill.default_shutdown()
        skill.engine.close()
    return seen, asked


@pytest.mark.parametrize("holder,server", CASES)
def test_bus_api_and_speech_hold_no_key(setup, every_log, capsys, openai_server, holder, server):
    seen, asked = _drive_skill(setup(holder, server), holder.name)
    # the skill's __del__ shuts it down again: let that happen now, not while a failure is reported
    gc.collect()
    _server_saw_the_key(openai_server, server)
    messages = [Message.deserialize(raw) for raw in seen]
    [listing] = [m for m in messages if m.msg_type == "persona.list.response"]
    assert listing.data == {"personas": [{"name": holder.name, "description": "Keeps a key", "lang": "en-us"}]}
    [error] = [m for m in messages if m.msg_type == "persona.ask.error"]
    assert error.data == {"error": f"{holder.name} could not answer"}
    [spoken] = [m.data["utterance"] for m in messages[asked:] if m.msg_type == "speak"]
    assert spoken in [line.replace("{persona}", holder.name) for line in dialog_lines("en-us", "error")]
    assert_clean(seen, "bus messages")
    assert_clean(every_log(), "the log")
    captured = capsys.readouterr()
    assert_clean([captured.out, captured.err], "stdout/stderr")


# ------------------------------------------------------------------ the CLI

@pytest.fixture
def keep_log_level():
    """``cli.main`` sets the process's OVOS log level, as a console script does; undo that."""
    level = LOG.level
    yield
    LOG.set_level(level)


@pytest.mark.parametrize("verbose", [[], ["-v"]], ids=["quiet", "verbose"])
@pytest.mark.parametrize("holder,server", CASES)
def test_cli_ask_output_holds_no_key(setup, every_log, capsys, keep_log_level, openai_server, tmp_path,
                                     holder, server, verbose):
    path = setup(holder, server)
    code = cli_main([*verbose, "ask", "--persona", str(path), "--db", str(tmp_path / "cli.db"), "hello?"])
    captured = capsys.readouterr()
    _server_saw_the_key(openai_server, server)
    assert code == 2, captured
    assert f"error: {holder.name} could not answer" in captured.err
    assert "openai:" in captured.err  # the reason is given, minus the key
    assert_clean([captured.out, captured.err], "persona-fallback ask output")
    assert_clean(every_log(), "the log")


INVALID_FILES = {
    # bad in other fields, the key well-formed in its block
    "bad-fields.yaml": f"""\
name: Broken
lang: 42
solvers: [openai, nope]
openai: {{api_url: "http://127.0.0.1:9/v1", key: {KEY}, headers: {{Authorization: Bearer {KEY}}}}}
generation: {{temperature: hot, top_k: -3, max_tokens: 0}}
memory: {{max_turns: many}}
thinking: {{after_seconds: soon, messages: 5}}
""",
    # a YAML error on the very line holding the key
    "bad-yaml.yaml": f"""\
name: BadYaml
solvers: [openai]
openai:
  api_url: http://127.0.0.1:9/v1
  key: {KEY}: extra
    headers: {{X-Api-Key: {KEY}}}
""",
    # a JSON error right after the key
    "bad-json.json": '{"name": "BadJson", "solvers": ["openai"], "openai": {"key": "%s" "api_url": 1}}' % KEY,
    # no name and no solvers, the key in a header
    "no-name.json": json.dumps({"openai": {"headers": {"X-Api-Key": KEY}}, "description": 5}),
    # the openai block is not a mapping but holds the key
    "bad-block.yaml": f"name: BadBlock\nsolvers: [openai]\nopenai: [{KEY}]\n",
}


def keyed_persona_folder(tmp_path: Path) -> Path:
    """A folder of good persona files holding the key in each place, and invalid ones holding it too."""
    folder = tmp_path / "personas"
    folder.mkdir()
    for holder in HOLDERS:
        persona_file(folder, holder, "http://127.0.0.1:9/v1")
    for name, text in INVALID_FILES.items():
        (folder / name).write_text(text)
    return folder


@pytest.mark.parametrize("verbose", [[], ["-v"]], ids=["quiet", "verbose"])
def test_validate_output_holds_no_key(tmp_path, capsys, every_log, keep_log_level, verbose):
    folder = keyed_persona_folder(tmp_path)
    code = cli_main([*verbose, "validate", str(folder)])
    captured = capsys.readouterr()
    assert code == 1
    lines = captured.out.splitlines()
    for holder in HOLDERS:
        assert f"OK {holder.name} ({folder / (holder.name.lower() + '.json')})" in lines
    for name in INVALID_FILES:
        assert any(line.startswith(f"{folder / name}: ") for line in lines), (name, lines)
    assert_clean([captured.out, captured.err], "persona-fallback validate output")
    assert_clean(every_log(), "the log")


def test_persona_list_and_load_problems_hold_no_key(tmp_path, every_log, capsys):
    """Loading a folder with good and bad keyed files: the listing and the logged problems are clean."""
    folder = keyed_persona_folder(tmp_path)
    engine = PersonaEngine([folder], memory=ConversationMemory(":memory:"), include_shipped=False,
                           default_persona="Keyed")
    try:
        assert sorted(engine.personas) == sorted(holder.name for holder in HOLDERS)
        assert len(engine.problems) >= len(INVALID_FILES)
        summaries = [persona.summary() for persona in engine.personas.values()]
        assert_clean(engine.problems + [json.dumps(summaries)], "the persona listing and problems")
    finally:
        engine.close()
    assert_clean(every_log(), "the log")
    captured = capsys.readouterr()
    assert_clean([captured.out, captured.err], "stdout/stderr")
