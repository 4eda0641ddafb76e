"""Each persona's solver chain, built once and shared by its answers.

A chain is built on first use (or by ``warm_up``, which also lets each solver ``prepare``: load
its model, download it). Answers count themselves in and out of the chain they use, so that a
persona replaced by a reload keeps its old chain until its last answer ends, and only then is
the chain closed: reloading never closes a solver that is answering.
"""
from __future__ import annotations

import threading
from typing import Callable, Dict, Iterable, List, Optional

from ovos_utils.log import LOG

from .chain import ChainLink, Deadlines
from .persona import Persona
from .solvers.base import SolverContext, SolverError


class PersonaChains:
    """Chains by persona name: build, share, count users, retire on reload, warm up, close."""

    def __init__(self, solver_factory: Callable) -> None:
        self._solver_factory = solver_factory
        self._lock = threading.RLock()
        self._links: Dict[str, List[ChainLink]] = {}
        #: chains of replaced personas still used by answers in progress, closed when those end
        self._retired: Dict[int, List[ChainLink]] = {}
        self._users: Dict[int, int] = {}

    def links(self, persona: Persona) -> List[ChainLink]:
        """Return the persona's chain, building it on first use."""
        with self._lock:
            links = self._links.get(persona.name)
            if links is None:
                links = [self._build_link(persona, solver_id) for solver_id in persona.solvers]
                self._links[persona.name] = links
            return links

    def acquire(self, persona: Persona) -> List[ChainLink]:
        """Return the persona's chain, counted as used until ``release``."""
        with self._lock:  # one step, so a reload cannot close the chain before it is counted
            links = self.links(persona)
            self._users[id(links)] = self._users.get(id(links), 0) + 1
            return links

    def release(self, links: List[ChainLink]) -> None:
        """An answer is done with ``links``; a replaced chain is closed when its last answer ends."""
        key = id(links)
        with self._lock:
            users = self._users.get(key, 0) - 1
            if users > 0:
                self._users[key] = users
                return
            self._users.pop(key, None)
            retired = self._retired.pop(key, None)
        if retired is not None:
            close_links(retired)

    def retire(self, name: str) -> None:
        """Forget a persona's chain (it was replaced): closed now, or when its answers end."""
        with self._lock:
            links = self._links.pop(name, None)
            if links is None:
                return
            if self._users.get(id(links), 0) > 0:
                self._retired[id(links)] = links
                return
        close_links(links)

    def built(self, persona_name: Optional[str] = None) -> List[ChainLink]:
        """Every built link (of one persona, or of all)."""
        with self._lock:
            return [link for name, chain in self._links.items() if persona_name in (None, name)
                    for link in chain]

    def close(self) -> None:
        """Close every chain (the engine is closing)."""
        with self._lock:
            links = [link for chain in self._links.values() for link in chain]
            self._links.clear()
        close_links(links)

    def warm_up(self, personas: Iterable[Persona]) -> threading.Thread:
        """Build every persona's chain and ``prepare()`` each solver (load models) on one background thread.

        Returns the started daemon thread; failures are logged, never raised (the first question
        then meets the same problem and falls through as usual).
        """
        chosen = list(personas)

        def run() -> None:
            for persona in chosen:
                try:
                    links = self.links(persona)
                except Exception as err:  # a broken persona must not stop warming the others
                    LOG.warning(f"warm-up: persona {persona.name} has no chain: {err!r}")
                    continue
                for link in links:
                    if link.solver is None:
                        continue
                    try:
                        link.solver.prepare()
                    except SolverError as err:  # e.g. the model file is missing: one line, no traceback
                        LOG.warning(f"warm-up: solver {link.solver_id} of persona {persona.name} "
                                    f"could not prepare: {err}")
                    except Exception:  # anything else a backend raises while preparing is only logged
                        LOG.exception(f"warm-up: solver {link.solver_id} of persona {persona.name} "
                                      f"could not prepare")

        thread = threading.Thread(target=run, name="persona-warm-up", daemon=True)
        thread.start()
        return thread

    def _build_link(self, persona: Persona, solver_id: str) -> ChainLink:
        config = persona.solver_config(solver_id)
        context = SolverContext(persona_name=persona.name, persona_lang=persona.lang,
                                generation=persona.generation)
        deadlines = Deadlines.from_config(config)
        try:
            return ChainLink(solver_id, self._solver_factory(solver_id, config, context), deadlines)
        except SolverError as err:
            LOG.warning(f"persona {persona.name}: solver {solver_id} cannot be used: {err}")
            return ChainLink(solver_id, None, deadlines, build_error=err)


def close_links(links: Iterable[ChainLink]) -> None:
    """Close each built solver; one failing does not stop the rest."""
    for link in links:
        if link.solver is not None:
            try:
                link.solver.close()
            except Exception as err:  # closing one solver must not stop closing the rest
                LOG.warning(f"closing solver {link.solver_id} failed: {err!r}")
