"""Answer sources. Built-in solvers are imported lazily so optional backends cost nothing unused."""
from __future__ import annotations

import importlib
from typing import Any, Dict, FrozenSet, Mapping

from .base import Solver, SolverConfigError, SolverContext, SolverError

#: solver id -> "module:Class" inside this package
BUILTIN_SOLVERS: Dict[str, str] = {
    "failure": "failure:FailureSolver",
    "chitchat": "chitchat:ChitChatSolver",
    "llama-cpp": "llamacpp:LlamaCppSolver",
    "openai": "openai_compat:OpenAISolver",
}


def known_solver_ids() -> FrozenSet[str]:
    """Return every id a persona may name: the built-ins plus installed OVOS solver plugins."""
    from .opm import installed_plugin_ids

    return frozenset(BUILTIN_SOLVERS) | installed_plugin_ids()


def solver_class(solver_id: str) -> type:
    """Return the class behind a built-in solver id; raise ``SolverConfigError`` if it cannot load."""
    module_name, class_name = BUILTIN_SOLVERS[solver_id].split(":")
    try:
        module = importlib.import_module(f"{__name__}.{module_name}")
    except ImportError as err:
        raise SolverConfigError(f"solver {solver_id!r} needs a package that is not installed: {err}") from err
    return getattr(module, class_name)


def create_solver(solver_id: str, config: Mapping[str, Any], context: SolverContext) -> Solver:
    """Build the solver ``solver_id`` with its config block; raise a ``SolverError`` on failure."""
    if solver_id in BUILTIN_SOLVERS:
        return solver_class(solver_id)(config, context)
    from .opm import OPMSolver, installed_plugin_ids

    if solver_id in installed_plugin_ids():
        return OPMSolver(solver_id, config, context)
    raise SolverConfigError(f"unknown solver {solver_id!r}")


__all__ = ["BUILTIN_SOLVERS", "Solver", "SolverError", "create_solver", "known_solver_ids", "solver_class"]
