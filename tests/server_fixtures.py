"""Fixtures for the server tests: personas over a loopback OpenAI server, and the server on a thread."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Iterator, List, Optional, Sequence

import pytest

from ovos_skill_persona_fallback.engine import PersonaEngine
from ovos_skill_persona_fallback.memory import ConversationMemory
from ovos_skill_persona_fallback.persona import Persona
from ovos_skill_persona_fallback.solvers.base import GenerationSettings

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from ovos_skill_persona_fallback.server.app import create_app  # noqa: E402
from ovos_skill_persona_fallback.server.auth import KeyRing  # noqa: E402
from ovos_skill_persona_fallback.server.run import ServerThread  # noqa: E402

KEY_A = "sk-test-alpha-0123456789"
KEY_B = "sk-test-bravo-9876543210"
SYSTEM_PROMPT = "You are Echo, a test persona."


def echo_persona(upstream_url: str, name: str = "Echo", **config: Any) -> Persona:
    """A persona whose one solver is the openai solver pointed at ``upstream_url``."""
    block = {"api_url": upstream_url, "model": "upstream-model", "retries": 0, "timeout": 10, **config}
    return Persona(name=name, solvers=("openai",), description=f"{name} over a loopback server",
                   system_prompt=SYSTEM_PROMPT, solver_configs={"openai": block})


def llama_persona(model: Path, name: str = "Tiny", **config: Any) -> Persona:
    """A persona answering with llama-cpp on the tiny generated GGUF."""
    block = {"model": str(model), "n_ctx": 2048, "n_threads": 1, **config}
    return Persona(name=name, solvers=("llama-cpp",), description="tiny random model",
                   system_prompt="You are Tiny.", solver_configs={"llama-cpp": block},
                   generation=GenerationSettings(temperature=0.0, max_tokens=16, seed=7))


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Callable[..., "Served"]]:
    """Return a function that starts the server over the given personas; everything stops after."""
    started: List["Served"] = []

    def start(*personas: Persona, keys: Sequence[str] = (KEY_A, KEY_B), **engine_options: Any) -> "Served":
        memory = ConversationMemory(tmp_path / f"memory-{len(started)}.db")
        engine = PersonaEngine(include_shipped=False, memory=memory, known_solvers=None,
                               default_persona=personas[0].name, **engine_options)
        for persona in personas:
            engine.add_persona(persona)
        thread = ServerThread(create_app(engine, KeyRing(keys))).start()
        served = Served(engine, memory, thread)
        started.append(served)
        return served

    yield start
    for served in started:
        served.thread.stop()
        served.engine.close()


class Served:
    """A running server: its engine, memory and URL."""

    def __init__(self, engine: PersonaEngine, memory: ConversationMemory, thread: ServerThread) -> None:
        self.engine, self.memory, self.thread = engine, memory, thread

    @property
    def url(self) -> str:
        """Base URL without ``/v1``."""
        return self.thread.url

    def openai(self, key: Optional[str] = KEY_A, **options: Any) -> Any:
        """An official ``openai`` SDK client for this server."""
        import openai

        return openai.OpenAI(base_url=f"{self.url}/v1", api_key=key or "none", max_retries=0, **options)
