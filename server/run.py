"""Starting and stopping the server: uvicorn in the foreground (the CLI) or on a thread (tests, benchmarks).

On Ctrl-C / SIGTERM the answers in progress are cancelled first (each stores what it delivered
as an interrupted turn), then uvicorn finishes the open responses and the engine is closed, so
no completed turn is lost.
"""
from __future__ import annotations

import threading
import time
from types import FrameType
from typing import Optional

import uvicorn
from fastapi import FastAPI

from .runs import RunRegistry

#: seconds uvicorn waits for open responses after a stop signal before it closes them
GRACEFUL_SECONDS = 5


class PersonaServer(uvicorn.Server):
    """uvicorn's server, cancelling the in-flight answers as soon as it is told to stop."""

    def __init__(self, app: FastAPI, host: str, port: int, log_level: str = "warning") -> None:
        config = uvicorn.Config(app, host=host, port=port, log_level=log_level, access_log=False,
                                timeout_graceful_shutdown=GRACEFUL_SECONDS, lifespan="on")
        super().__init__(config)
        self.registry: RunRegistry = app.state.registry

    def handle_exit(self, sig: int, frame: Optional[FrameType]) -> None:
        """Cancel every answer in progress, then stop as uvicorn does."""
        self.registry.cancel_all()
        super().handle_exit(sig, frame)

    @property
    def port(self) -> int:
        """The port actually bound (useful with port 0)."""
        for server in getattr(self, "servers", []):
            for sock in server.sockets:
                return int(sock.getsockname()[1])
        return self.config.port


class ServerThread:
    """Runs a ``PersonaServer`` on a thread until ``stop()``; for tests and benchmarks."""

    def __init__(self, app: FastAPI, host: str = "127.0.0.1", port: int = 0) -> None:
        self.server = PersonaServer(app, host, port)
        self._thread = threading.Thread(target=self.server.run, name="persona-server", daemon=True)

    def start(self, timeout: float = 30.0) -> "ServerThread":
        """Start and wait until it listens."""
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the persona server did not start")
            time.sleep(0.01)
        return self

    @property
    def url(self) -> str:
        """The server's base URL."""
        return f"http://{self.server.config.host}:{self.server.port}"

    def stop(self, timeout: float = 15.0) -> None:
        """Stop as a SIGTERM would, and wait."""
        self.server.registry.cancel_all()
        self.server.should_exit = True
        self._thread.join(timeout)
