"""Bad input generated from the server's own OpenAPI schema (schemathesis): every operation, valid
and invalid bodies, paths and headers, thousands of cases against the running server; none may be
answered 5xx, and every refusal is an OpenAI-shaped (or, under /api, Ollama-shaped) error."""
from __future__ import annotations

from typing import Iterator

import pytest
import requests

schemathesis = pytest.importorskip("schemathesis")
pytest.importorskip("fastapi")

from hypothesis import HealthCheck, settings  # noqa: E402

from ovos_skill_persona_fallback.engine import PersonaEngine  # noqa: E402
from ovos_skill_persona_fallback.memory import ConversationMemory  # noqa: E402
from ovos_skill_persona_fallback.server.app import create_app  # noqa: E402
from ovos_skill_persona_fallback.server.auth import KeyRing  # noqa: E402
from ovos_skill_persona_fallback.server.run import ServerThread  # noqa: E402

KEY = "sk-fuzz-0123456789"
#: examples per operation; about a dozen operations make it thousands in all
EXAMPLES = 300

# the schema is the app's own; it does not depend on the personas, so a bare engine describes it
_schema_engine = PersonaEngine(include_shipped=False, memory=ConversationMemory(":memory:"), known_solvers=None)
schema = schemathesis.openapi.from_dict(create_app(_schema_engine).openapi())
_schema_engine.close()


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The server over the shipped offline persona (instant answers), for the whole module."""
    engine = PersonaEngine(memory=ConversationMemory(tmp_path_factory.mktemp("fuzz") / "memory.db"),
                           max_concurrent=4, max_waiting=64)
    thread = ServerThread(create_app(engine, KeyRing([KEY]))).start()
    yield thread.url
    thread.stop()
    engine.close()


@pytest.fixture(scope="module")
def http() -> Iterator[requests.Session]:
    with requests.Session() as session:
        yield session


@pytest.mark.slow
@schema.parametrize()
@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True,
          database=None)
def test_no_generated_request_gets_a_server_error(case, fuzz_server, http):
    response = case.call(base_url=fuzz_server, session=http, headers={"Authorization": f"Bearer {KEY}"},
                         timeout=30)
    assert response.status_code < 500, (case.method, case.path, response.status_code, response.text[:300])
    if response.status_code >= 400:
        error = response.json()["error"]
        if case.path.startswith("/api/"):
            assert isinstance(error, str) and error
        else:
            assert isinstance(error["message"], str) and error["message"] and "type" in error and "code" in error
    assert KEY not in response.text
