"""OpenAISolver against real HTTP servers on 127.0.0.1: what it sends, what it yields, how it fails."""
import json
import logging
import socket
import threading
import time

import pytest
import requests

from ovos_skill_persona_fallback.solvers import solver_class
from ovos_skill_persona_fallback.solvers.base import (
    CancelToken,
    ChatMessage,
    GenerationSettings,
    Role,
    SolverCancelled,
    SolverConfigError,
    SolverContext,
    SolverError,
    SolverResponseError,
    SolverTimeout,
    SolverUnavailable,
)
from ovos_skill_persona_fallback.solvers.openai_compat import (
    DEFAULT_PROMPT_TEMPLATE,
    OpenAISolver,
    candidate_urls,
    iter_lines,
    iter_sse_events,
    render_prompt,
)

try:  # tests/ as a package or as a plain directory on sys.path
    from .openai_server import (Drop, EndlessStream, JSONReply, SSEStream, chat_chunk, chat_completion,
                                completion_chunk, error_reply, openai_server, sse)
except ImportError:
    from openai_server import (Drop, EndlessStream, JSONReply, SSEStream, chat_chunk,  # noqa: F401
                               chat_completion, completion_chunk, error_reply, openai_server, sse)

KEY = "sk-test-SECRET-4242"
CONTEXT = SolverContext(persona_name="Bob", persona_lang="en")
MESSAGES = [
    ChatMessage(Role.SYSTEM, "You are Bob."),
    ChatMessage(Role.USER, "Hi"),
    ChatMessage(Role.ASSISTANT, "Hello!"),
    ChatMessage(Role.USER, "How are you?"),
]
OK_WIRE = sse(chat_chunk(role="assistant"), chat_chunk("Fine"), chat_chunk(", thanks.", finish_reason="stop"))
OK_TEXT = ["Fine", ", thanks."]


def make(server_or_url, context=CONTEXT, session=None, **config):
    """A solver with small timeouts, no retries unless asked, and a model (so no model discovery:
    test_openai_interop.py covers that)."""
    url = server_or_url if isinstance(server_or_url, str) else server_or_url.url
    block = {"api_url": url, "timeout": {"connect": 1, "read": 2}, "retries": 0, "backoff": 0.01,
             "model": "test-model", **config}
    return OpenAISolver(block, context, session=session)


def collect(solver, messages=MESSAGES, *, cancel=None, conversation_id=""):
    """Drain the stream; return (chunks, error or None)."""
    got = []
    try:
        for text in solver.stream(messages, lang="en", cancel=cancel or CancelToken(),
                                  conversation_id=conversation_id):
            got.append(text)
    except SolverError as err:
        return got, err
    return got, None


def exception_chain(err):
    while err is not None:
        yield err
        err = err.__cause__ or err.__context__


# ------------------------------------------------------------------ what is sent

def test_request_carries_settings_key_model_and_conversation(openai_server):
    openai_server.script(SSEStream(OK_WIRE))
    context = SolverContext("Bob", "en", GenerationSettings(
        temperature=0.3, top_k=20, top_p=0.8, repeat_penalty=1.2, max_tokens=64, seed=7, stop=("\n\n",)))
    solver = make(openai_server, context, key=KEY, model="llama-3", temperature=0.1, stop="END",
                  headers={"X-Extra": "1"})
    cancel = CancelToken()

    assert collect(solver, cancel=cancel, conversation_id="conv-42") == (OK_TEXT, None)

    (request,) = openai_server.requests
    assert request.method == "POST"
    assert request.path == "/chat/completions"
    assert request.header("Authorization") == f"Bearer {KEY}"
    assert request.header("X-Conversation-Id") == "conv-42"
    assert request.header("X-Extra") == "1"
    assert request.body == {
        "model": "llama-3",
        "messages": [{"role": "system", "content": "You are Bob."}, {"role": "user", "content": "Hi"},
                     {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "How are you?"}],
        "stream": True,
        "user": "conv-42",
        "temperature": 0.1,  # the block overrides the persona
        "top_p": 0.8,
        "max_tokens": 64,
        "seed": 7,
        "stop": ["END"],
        "top_k": 20,
        "repeat_penalty": 1.2,  # llama.cpp's name, not frequency_penalty
    }
    assert cancel._callbacks == []  # the cancel hook was unregistered


def test_no_key_and_no_conversation_id_send_neither(openai_server):
    openai_server.script(SSEStream(OK_WIRE))
    assert collect(make(openai_server)) == (OK_TEXT, None)
    (request,) = openai_server.requests
    assert request.header("Authorization") is None
    assert request.header("X-Conversation-Id") is None
    assert "user" not in request.body and "seed" not in request.body


def test_injected_session_is_used_and_closed(openai_server):
    class RecordingSession(requests.Session):
        posts = 0
        closed = False

        def post(self, *args, **kwargs):
            RecordingSession.posts += 1
            return super().post(*args, **kwargs)

        def close(self):
            RecordingSession.closed = True
            super().close()

    openai_server.script(SSEStream(OK_WIRE))
    solver = make(openai_server, session=RecordingSession())
    assert collect(solver) == (OK_TEXT, None)
    solver.close()
    assert RecordingSession.posts == 1 and RecordingSession.closed


# ------------------------------------------------------------------ SSE variants, end to end

HI = chat_chunk("Hi")
BANG = chat_chunk("!")
SSE_CASES = [
    # id, SSEStream kwargs, expected chunks
    ("with-done", dict(wire=OK_WIRE), OK_TEXT),
    ("no-done-persona-0.4", dict(wire=sse(chat_chunk("Fine"), chat_chunk(", thanks."), done=False)), OK_TEXT),
    ("data-without-space", dict(wire=sse(HI, BANG, space=False)), ["Hi", "!"]),
    ("multi-line-data", dict(wire='data: {"choices": [{"delta":\ndata:  {"content": "Hi"}}]}\n\ndata: [DONE]\n\n'),
     ["Hi"]),
    ("comments-keepalives-fields", dict(wire=(
        ": keep-alive\n\n:\n\nevent: message\nid: 1\nretry: 1000\ndata: " + json.dumps(HI) + "\n\n"
        "data:\n\n: ping\n\ndata: " + json.dumps(BANG) + "\n\ndata: [DONE]\n\n")), ["Hi", "!"]),
    ("finish-reason-with-content", dict(wire=sse(chat_chunk("Bye."), chat_chunk(" Now.", finish_reason="stop"))),
     ["Bye.", " Now."]),
    ("role-only-and-usage-chunks", dict(wire=sse(chat_chunk(role="assistant"), HI, {"choices": [], "usage": {}})),
     ["Hi"]),
    ("crlf", dict(wire=sse(HI, BANG, eol="\r\n")), ["Hi", "!"]),
    ("cr-only", dict(wire=sse(HI, BANG, eol="\r")), ["Hi", "!"]),
    ("bytes-split-crlf-and-utf8", dict(wire=sse(chat_chunk("héllo wörld 👋"), BANG, eol="\r\n"), split=3),
     ["héllo wörld 👋", "!"]),
    ("close-delimited-body", dict(wire=OK_WIRE, chunked=False), OK_TEXT),
    ("no-final-blank-line", dict(wire="data: " + json.dumps(HI) + "\n", chunked=False), ["Hi"]),
    ("json-per-line-without-blank", dict(wire="data: " + json.dumps(HI) + "\ndata: " + json.dumps(BANG) + "\n\n"),
     ["Hi", "!"]),
    ("nothing-after-done-is-read", dict(wire=sse(HI) + sse(BANG, done=False)), ["Hi"]),
    ("byte-order-mark", dict(wire="\ufeff" + sse(HI)), ["Hi"]),
    ("unknown-content-type", dict(wire=sse(HI, done=False), content_type="text/html"), ["Hi"]),
]


@pytest.mark.parametrize("kwargs, expected", [case[1:] for case in SSE_CASES], ids=[case[0] for case in SSE_CASES])
def test_sse_variants(openai_server, kwargs, expected):
    openai_server.script(SSEStream(**kwargs))
    assert collect(make(openai_server)) == (expected, None)


@pytest.mark.parametrize("chunked", [True, False], ids=["chunked", "close-delimited"])
def test_text_arrives_before_the_stream_ends(openai_server, chunked):
    gate = threading.Event()
    openai_server.script(SSEStream(OK_WIRE, pieces=[sse(HI, done=False), sse(BANG)], gate=gate, chunked=chunked))
    safety = threading.Timer(1.0, gate.set)  # a buffering client would otherwise wait for MAX_BUSY_S
    safety.start()
    stream = make(openai_server).stream(MESSAGES, lang="en", cancel=CancelToken())
    started = time.monotonic()
    assert next(stream) == "Hi"
    assert time.monotonic() - started < 0.5  # it came while the server still held the rest back
    gate.set()
    safety.cancel()
    assert list(stream) == ["!"]


# ------------------------------------------------------------------ endpoint discovery

def test_discovery_falls_through_404s_and_remembers_the_path(openai_server):
    openai_server.route("/openai/v1/chat/completions", SSEStream(OK_WIRE))
    solver = make(openai_server, chat_path="/custom/chat")

    assert collect(solver) == (OK_TEXT, None)
    assert openai_server.paths == ["/custom/chat", "/chat/completions", "/v1/chat/completions",
                                   "/openai/v1/chat/completions"]
    openai_server.requests.clear()
    assert collect(solver) == (OK_TEXT, None)
    assert openai_server.paths == ["/openai/v1/chat/completions"]


def test_api_url_ending_in_v1_reaches_persona_server_0_4_at_the_root(openai_server):
    # 0.4 serves /chat/completions, never sends [DONE], and ends the body by closing
    openai_server.route("/chat/completions", SSEStream(sse(HI, BANG, done=False), chunked=False))
    assert collect(make(openai_server.url + "/v1/")) == (["Hi", "!"], None)
    assert openai_server.paths == ["/v1/chat/completions", "/chat/completions"]


def test_404_everywhere_is_a_config_error_naming_the_paths(openai_server):
    got, err = collect(make(openai_server))
    assert got == [] and isinstance(err, SolverConfigError)
    for path in ("/chat/completions", "/v1/chat/completions", "/openai/v1/chat/completions"):
        assert path in str(err)
    assert len(openai_server.requests) == 3


def test_404_for_a_missing_model_stops_discovery(openai_server):
    openai_server.script(error_reply(404, "model 'llama9' not found, try pulling it first"))
    got, err = collect(make(openai_server, model="llama9"))
    assert isinstance(err, SolverUnavailable) and "llama9" in str(err)
    assert len(openai_server.requests) == 1


@pytest.mark.parametrize("api_url, explicit, expected", [
    # bare server: the three known mounts
    ("http://h:8337", None, ["http://h:8337/chat/completions", "http://h:8337/v1/chat/completions",
                             "http://h:8337/openai/v1/chat/completions"]),
    # .../v1: never /v1/v1; the root is tried too
    ("http://h/v1", None, ["http://h/v1/chat/completions", "http://h/chat/completions",
                           "http://h/openai/v1/chat/completions"]),
    # .../openai/v1 (persona server 0.5)
    ("http://h/openai/v1/", None, ["http://h/openai/v1/chat/completions", "http://h/chat/completions",
                                   "http://h/v1/chat/completions"]),
    # reverse-proxy prefix kept
    ("http://h/llm", None, ["http://h/llm/chat/completions", "http://h/llm/v1/chat/completions",
                            "http://h/llm/openai/v1/chat/completions"]),
    # a host named v1 is not a path
    ("http://v1", None, ["http://v1/chat/completions", "http://v1/v1/chat/completions",
                         "http://v1/openai/v1/chat/completions"]),
    # explicit path first, relative to api_url; a full URL as is
    ("http://h/v1", "/my/chat", ["http://h/v1/my/chat", "http://h/v1/chat/completions",
                                 "http://h/chat/completions", "http://h/openai/v1/chat/completions"]),
    ("http://h", "https://o/x", ["https://o/x", "http://h/chat/completions", "http://h/v1/chat/completions",
                                 "http://h/openai/v1/chat/completions"]),
    # query kept (Azure-style api-version)
    ("http://h/v1?api-version=1", None, ["http://h/v1/chat/completions?api-version=1",
                                         "http://h/chat/completions?api-version=1",
                                         "http://h/openai/v1/chat/completions?api-version=1"]),
])
def test_candidate_urls(api_url, explicit, expected):
    assert candidate_urls(api_url, "chat/completions", explicit) == expected


# ------------------------------------------------------------------ retries

@pytest.mark.parametrize("status", [500, 429, 503])
def test_retry_before_first_text_then_answer(openai_server, status):
    openai_server.script(error_reply(status, "busy"), SSEStream(OK_WIRE))
    assert collect(make(openai_server, retries=2)) == (OK_TEXT, None)
    assert len(openai_server.requests) == 2


def test_retry_after_connection_reset_before_reply(openai_server):
    openai_server.script(Drop(), SSEStream(OK_WIRE))
    assert collect(make(openai_server, retries=1)) == (OK_TEXT, None)
    assert len(openai_server.requests) == 2


@pytest.mark.parametrize("status, kind", [(500, SolverResponseError), (503, SolverUnavailable),
                                          (429, SolverUnavailable)])
def test_retries_exhausted_report_status_and_server_message(openai_server, status, kind):
    openai_server.script(*[error_reply(status, "the GPU is on fire")] * 3)
    started = time.monotonic()
    got, err = collect(make(openai_server, retries=2, backoff=0.05))
    assert got == [] and isinstance(err, kind)
    assert str(status) in str(err) and "the GPU is on fire" in str(err)
    assert len(openai_server.requests) == 3
    assert time.monotonic() - started >= 0.05 + 0.1  # exponential backoff


def test_plain_text_error_body_is_quoted_briefly(openai_server):
    openai_server.script(JSONReply("x" * 500, status=500, content_type="text/plain"))
    got, err = collect(make(openai_server))
    assert isinstance(err, SolverResponseError) and "x" * 200 in str(err) and "x" * 201 not in str(err)


def test_no_retry_after_text_was_yielded(openai_server):
    openai_server.script(SSEStream("", pieces=[sse(HI, done=False)], drop=True))
    openai_server.script(SSEStream(OK_WIRE))  # must stay unused
    got, err = collect(make(openai_server, retries=2))
    assert got == ["Hi"] and isinstance(err, SolverResponseError)
    assert len(openai_server.requests) == 1 and openai_server.pending == 1


def test_bad_request_is_not_retried(openai_server):
    openai_server.script(error_reply(400, "messages: field required"), SSEStream(OK_WIRE))
    got, err = collect(make(openai_server, retries=2))
    assert isinstance(err, SolverResponseError) and "400" in str(err) and "field required" in str(err)
    assert len(openai_server.requests) == 1


# ------------------------------------------------------------------ the key never leaks

def test_401_is_a_config_error_and_the_key_never_appears(openai_server, caplog):
    caplog.set_level(logging.DEBUG)
    echo = error_reply(401, lambda request: f"Incorrect API key provided: {request.header('authorization')}")
    openai_server.script(echo)
    solver = make(openai_server, key=KEY)
    got, err = collect(solver)
    assert got == [] and isinstance(err, SolverConfigError)
    assert "rejected the API key" in str(err) and "401" in str(err) and "***" in str(err)
    for link in exception_chain(err):
        assert KEY not in str(link) and KEY not in repr(link)
    assert KEY not in repr(solver)
    assert "POST" in caplog.text and KEY not in caplog.text  # DEBUG capture was on: urllib3 logged the request


def test_echoed_secrets_are_redacted_in_retry_logs_and_errors(openai_server, caplog):
    caplog.set_level(logging.DEBUG)
    echo = error_reply(500, lambda r: f"bad {r.header('authorization')} and {r.header('x-api-key')}")
    openai_server.script(echo, echo)
    got, err = collect(make(openai_server, key=KEY, headers={"X-Api-Key": "hdr-secret-77"}, retries=1))
    assert isinstance(err, SolverResponseError)
    assert "retry 1/1" in caplog.text
    for text in [str(err), caplog.text]:
        assert KEY not in text and "hdr-secret-77" not in text


def test_403_without_key_says_a_key_is_needed(openai_server):
    openai_server.script(error_reply(403, "forbidden"))
    got, err = collect(make(openai_server))
    assert isinstance(err, SolverConfigError) and "requires an API key" in str(err)


# ------------------------------------------------------------------ timeouts and unreachable servers

def test_slow_first_byte_times_out_without_retry(openai_server):
    openai_server.script(SSEStream(OK_WIRE, delay=3.0), SSEStream(OK_WIRE))
    solver = make(openai_server, timeout={"connect": 1, "read": 0.3}, retries=2)
    started = time.monotonic()
    got, err = collect(solver)
    elapsed = time.monotonic() - started
    assert got == [] and isinstance(err, SolverTimeout)
    assert 0.25 <= elapsed < 0.9
    assert len(openai_server.requests) == 1


def test_silence_after_headers_times_out(openai_server):
    openai_server.script(SSEStream(OK_WIRE, first_delay=3.0))
    started = time.monotonic()
    got, err = collect(make(openai_server, timeout=0.3))
    assert got == [] and isinstance(err, SolverTimeout)
    assert time.monotonic() - started < 0.9


def test_silence_mid_stream_times_out_after_the_text(openai_server):
    openai_server.script(SSEStream(OK_WIRE, pieces=[sse(HI, done=False), sse(BANG)], interval=3.0))
    got, err = collect(make(openai_server, timeout={"read": 0.3}))
    assert got == ["Hi"] and isinstance(err, SolverTimeout)


def test_connection_refused_is_unavailable():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    got, err = collect(make(f"http://127.0.0.1:{port}/v1", retries=1))
    assert got == [] and isinstance(err, SolverUnavailable) and not isinstance(err, SolverTimeout)
    assert "cannot reach" in str(err)


# ------------------------------------------------------------------ completions mode

def test_completions_mode_renders_the_prompt_and_merges_extra_body(openai_server):
    wire = sse(completion_chunk("Fine"), completion_chunk(", thanks.", finish_reason="stop"))
    openai_server.script(SSEStream(wire))
    template = "### System\n{system}\n### Chat\n{history}### {persona} ({lang})\nUser: {question}\nAssistant:"
    solver = make(openai_server.url + "/v1", mode="completions", prompt_template=template,
                  extra_body={"mirostat": 2, "typical_p": 0.9, "temperature": 0.5, "stream": False})
    assert collect(solver) == (OK_TEXT, None)
    (request,) = openai_server.requests
    assert request.path == "/v1/completions"
    assert request.body == {
        "prompt": "### System\nYou are Bob.\n### Chat\nUser: Hi\nAssistant: Hello!\n"
                  "### Bob (en)\nUser: How are you?\nAssistant:",
        "model": "test-model",
        "stream": True,  # extra_body cannot switch streaming off behind the solver's back
        "temperature": 0.5,
        "top_p": 0.95,
        "max_tokens": 256,
        "top_k": 40,
        "repeat_penalty": 1.1,
        "stop": ["\nUser:"],
        "mirostat": 2,
        "typical_p": 0.9,
    }


def test_completions_mode_custom_prompt_key_and_path(openai_server):
    openai_server.script(JSONReply({"choices": [{"text": "ok"}]}, content_type="application/json"))
    solver = make(openai_server, mode="completions", prompt_key="input", completions_path="/gen", stream=False)
    assert collect(solver, [ChatMessage(Role.USER, "Q?")]) == (["ok"], None)
    (request,) = openai_server.requests
    assert request.path == "/gen" and request.body["input"] == "User: Q?\nAssistant:"
    assert request.body["stream"] is False and "prompt" not in request.body


def test_render_prompt_default_template():
    assert render_prompt(DEFAULT_PROMPT_TEMPLATE, MESSAGES) == (
        "You are Bob.\n\nUser: Hi\nAssistant: Hello!\nUser: How are you?\nAssistant:")
    assert render_prompt(DEFAULT_PROMPT_TEMPLATE, [ChatMessage(Role.USER, "{x}")]) == "User: {x}\nAssistant:"


# ------------------------------------------------------------------ servers that cannot stream

def test_json_reply_to_a_streaming_request(openai_server):
    openai_server.script(JSONReply(chat_completion("Whole answer.")))
    assert collect(make(openai_server)) == (["Whole answer."], None)
    assert openai_server.requests[0].body["stream"] is True


def test_stream_unsupported_400_retries_once_without_stream_and_remembers(openai_server):
    openai_server.script(error_reply(400, "Streaming is not supported by this backend"),
                         JSONReply(chat_completion("Whole.")), JSONReply(chat_completion("Again.")))
    solver = make(openai_server)
    assert collect(solver) == (["Whole."], None)
    assert [r.body["stream"] for r in openai_server.requests] == [True, False]
    assert collect(solver) == (["Again."], None)
    assert [r.body["stream"] for r in openai_server.requests] == [True, False, False]


def test_stream_false_config(openai_server):
    openai_server.script(JSONReply(chat_completion("Whole.")))
    assert collect(make(openai_server, stream=False)) == (["Whole."], None)
    assert openai_server.requests[0].body["stream"] is False


def test_strict_server_rejecting_top_k_gets_them_dropped(openai_server):
    openai_server.script(error_reply(400, "Unrecognized request argument supplied: top_k"), SSEStream(OK_WIRE))
    assert collect(make(openai_server)) == (OK_TEXT, None)
    first, second = (r.body for r in openai_server.requests)
    assert "top_k" in first and "top_k" not in second and "repeat_penalty" not in second


def test_top_k_asked_for_in_extra_body_is_kept_and_the_error_reported(openai_server):
    openai_server.route("/chat/completions", error_reply(400, "Unrecognized request argument supplied: top_k"))
    got, err = collect(make(openai_server, extra_body={"top_k": 5}))
    assert isinstance(err, SolverResponseError) and "top_k" in str(err)
    assert len(openai_server.requests) == 1


# ------------------------------------------------------------------ broken streams

def test_error_event_mid_stream(openai_server):
    openai_server.script(SSEStream(sse(HI, {"error": {"message": "model crashed", "type": "server_error"}})))
    got, err = collect(make(openai_server, retries=2))
    assert got == ["Hi"] and isinstance(err, SolverResponseError) and "model crashed" in str(err)


def test_invalid_json_event(openai_server):
    openai_server.script(SSEStream(sse(HI, "{not json")))
    got, err = collect(make(openai_server))
    assert got == ["Hi"] and isinstance(err, SolverResponseError) and "not json" in str(err)


@pytest.mark.parametrize("chunked", [True, False], ids=["chunked-cut", "close-delimited-cut"])
def test_truncated_stream(openai_server, chunked):
    cut = 'data: {"choices": [{"delta": {"con'
    openai_server.script(SSEStream("", pieces=[sse(HI, done=False), cut], chunked=chunked, drop=chunked))
    got, err = collect(make(openai_server))
    assert got == ["Hi"] and isinstance(err, SolverResponseError)


# ------------------------------------------------------------------ cancel

@pytest.mark.parametrize("interval, chunked", [(0.02, True), (0.02, False), (0.6, True)],
                         ids=["chunked", "close-delimited", "blocked-read"])
def test_cancel_closes_the_stream_promptly(openai_server, interval, chunked):
    endless = EndlessStream(interval=interval, chunked=chunked)
    openai_server.script(endless)
    solver = make(openai_server, timeout={"connect": 1, "read": 5})
    cancel = CancelToken()
    got, outcome, first = [], {}, threading.Event()

    def consume():
        try:
            for text in solver.stream(MESSAGES, lang="en", cancel=cancel):
                got.append(text)
                first.set()
        except SolverError as err:
            outcome["error"] = err
        outcome["ended_at"] = time.monotonic()

    thread = threading.Thread(target=consume, daemon=True)
    thread.start()
    assert first.wait(2)
    time.sleep(0.05)
    seen = len(got)
    cancelled_at = time.monotonic()
    cancel.cancel()
    thread.join(2)
    assert not thread.is_alive()
    assert isinstance(outcome["error"], SolverCancelled)
    assert outcome["ended_at"] - cancelled_at < 0.1
    assert len(got) <= seen + 1  # at most the token already on its way out
    if interval < 0.1:  # the server writes often enough to notice the disconnect at once
        assert endless.disconnected.wait(1)
        assert endless.disconnected_at - cancelled_at < 0.2


def test_cancelled_before_start_sends_nothing(openai_server):
    cancel = CancelToken()
    cancel.cancel()
    got, err = collect(make(openai_server), cancel=cancel)
    assert isinstance(err, SolverCancelled) and openai_server.requests == []


def test_cancel_during_backoff_ends_at_once(openai_server):
    openai_server.script(error_reply(500, "busy"), SSEStream(OK_WIRE))
    solver = make(openai_server, retries=2, backoff=5)
    cancel = CancelToken()
    threading.Timer(0.2, cancel.cancel).start()
    started = time.monotonic()
    got, err = collect(solver, cancel=cancel)
    assert isinstance(err, SolverCancelled) and time.monotonic() - started < 0.6
    assert len(openai_server.requests) == 1


# ------------------------------------------------------------------ pure parsing

@pytest.mark.parametrize("chunks, expected", [
    ([b"a\nb\r\nc\rd"], ["a", "b", "c", "d"]),
    ([b"a\r", b"\nb\n"], ["a", "b"]),  # CRLF split across chunks is one line end
    ([b"a\r", b"b\n"], ["a", "b"]),
    ([b"\n\n"], ["", ""]),
    ([b"\xef\xbb\xbfx\n"], ["x"]),
    ([b"\xc3", b"\xa9\n"], ["é"]),
])
def test_iter_lines(chunks, expected):
    assert list(iter_lines(chunks)) == expected


def test_iter_lines_refuses_endless_lines():
    with pytest.raises(SolverResponseError):
        list(iter_lines([b"x" * 100] * 20, max_line=1000))


@pytest.mark.parametrize("lines, expected", [
    (["data: a", "", "data:b", ""], ["a", "b"]),
    (["data: a", "data: b", ""], ["a\nb"]),
    (["data:  two spaces", ""], [" two spaces"]),
    ([": comment", "event: x", "id: 3", "retry: 10", "", "data", ""], [""]),
    (["id: 1", ""], []),  # no data, no event
    (["data: tail"], ["tail"]),  # lenient at end of stream
])
def test_iter_sse_events(lines, expected):
    assert list(iter_sse_events(lines)) == expected


# ------------------------------------------------------------------ config

@pytest.mark.parametrize("config", [
    {},
    {"api_url": "ftp://h"},
    {"api_url": "http://"},
    {"api_url": "http://h", "mode": "edit"},
    {"api_url": "http://h", "timeout": -1},
    {"api_url": "http://h", "timeout": "5"},
    {"api_url": "http://h", "timeout": {"connect": 0}},
    {"api_url": "http://h", "timeout": {"write": 1}},
    {"api_url": "http://h", "retries": -1},
    {"api_url": "http://h", "backoff": "x"},
    {"api_url": "http://h", "stream": "yes"},
    {"api_url": "http://h", "headers": ["x"]},
    {"api_url": "http://h", "headers": {"X": 1}},
    {"api_url": "http://h", "extra_body": {"x": object()}},
    {"api_url": "http://h", "prompt_template": "{nope}"},
    {"api_url": "http://h", "key": 123},
])
def test_bad_config_is_rejected(config):
    with pytest.raises(SolverConfigError):
        OpenAISolver(config, CONTEXT)


def test_registry_and_capabilities():
    assert solver_class("openai") is OpenAISolver
    solver = OpenAISolver({"api_url": "http://h/v1", "key": KEY}, CONTEXT)
    assert solver.solver_id == "openai" and solver.supports_history
    assert KEY not in repr(solver) and "http://h/v1" in repr(solver)
    assert (solver.connect_timeout, solver.read_timeout) == (5.0, 30.0)
    solver.close()
