"""A separate process for tests/test_crash.py: talks to the engine or the memory, reports on stdout.

Every report is one JSON object per line, flushed at once, so the test knows exactly what had
happened when it killed the process. Commands::

    converse DB URL TURNS     ask TURNS questions of an ``openai`` persona at URL, printing each
                              sentence as it is spoken and each turn once it is over
    hammer DB START           record turns START, START+1, ... forever, printing each once stored
    write DB PREFIX THREADS TURNS
                              wait for "go" on stdin, then THREADS threads each record TURNS
                              turns (session PREFIX-<thread>); print the count and any degradation
                              (DB may be a postgresql:// URL)
"""
from __future__ import annotations

import json
import sys
import threading
from typing import Any, List

from ovos_skill_persona_fallback.engine import PersonaEngine
from ovos_skill_persona_fallback.memory import ConversationMemory, MemoryStore, open_memory
from ovos_skill_persona_fallback.persona import Persona

SESSION = "crash"
PERSONA = "Remote"
#: long enough that a turn spans several database pages, so a torn write would show
HAMMER_ANSWER_REPEAT = 400


def report(**event: Any) -> None:
    sys.stdout.write(json.dumps(event) + "\n")
    sys.stdout.flush()


def question(turn: int) -> str:
    return f"Question number {turn}?"


def hammer_answer(turn: int) -> str:
    return f"answer {turn}. " * HAMMER_ANSWER_REPEAT


def converse(db: str, url: str, turns: int) -> None:
    persona = Persona(name=PERSONA, solvers=("openai",), system_prompt="You are {name}.", solver_configs={
        "openai": {"api_url": url, "model": "remote", "retries": 0, "timeout": {"connect": 2, "read": 30, "first_chunk": 30}}})
    engine = PersonaEngine(include_shipped=False, memory=ConversationMemory(db), default_persona=PERSONA)
    engine.add_persona(persona)
    for turn in range(1, turns + 1):
        for sentence in engine.stream(question(turn), session_id=SESSION):
            report(event="sentence", turn=turn, text=sentence)
        report(event="turn", turn=turn)
    engine.close()


def hammer(db: str, start: int) -> None:
    memory = ConversationMemory(db)
    report(event="ready", degraded=memory.degraded)
    turn = start
    while True:
        memory.record(SESSION, PERSONA, question(turn), hammer_answer(turn), max_turns=1_000_000)
        report(event="stored", turn=turn)
        turn += 1


def write(db: str, prefix: str, threads: int, turns: int) -> None:
    memory: MemoryStore = open_memory(db_url=db) if db.startswith("postgresql://") else ConversationMemory(db)
    report(event="ready", degraded=memory.degraded)
    if sys.stdin.readline().strip() != "go":
        return
    errors: List[str] = []

    def writer(index: int) -> None:
        try:
            for turn in range(turns):
                memory.record(f"{prefix}-{index}", PERSONA, question(turn), f"answer {turn}.",
                              max_turns=turns)
        except Exception as err:  # reported to the test, which fails with it
            errors.append(repr(err))

    workers = [threading.Thread(target=writer, args=(index,)) for index in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    report(event="done", degraded=memory.degraded, errors=errors)
    memory.close()


def main(argv: List[str]) -> None:
    command, args = argv[0], argv[1:]
    if command == "converse":
        converse(args[0], args[1], int(args[2]))
    elif command == "hammer":
        hammer(args[0], int(args[1]))
    elif command == "write":
        write(args[0], args[1], int(args[2]), int(args[3]))
    else:
        raise SystemExit(f"unknown command {command!r}")


if __name__ == "__main__":
    main(sys.argv[1:])
