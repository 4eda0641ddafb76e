"""Pytest fixtures for the llama.cpp tests; import them into a test module by name."""
from __future__ import annotations

from pathlib import Path

import pytest

from tiny_gguf import write_tiny_gguf


@pytest.fixture(scope="session")
def tiny_gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random-weight llama GGUF written once per test session (never into the repo)."""
    pytest.importorskip("gguf")
    return write_tiny_gguf(tmp_path_factory.mktemp("tiny-llama") / "tiny.gguf", n_ctx=4096)
