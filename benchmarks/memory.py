"""Resident memory of the engine over many sessions: RAM must stay flat, the database may grow.

``--sessions`` sessions (default 10,000) of ``--turns`` questions each (default 3: a greeting and
"how are you" that the chit-chat brain answers, then a question it declines so the failure solver
answers) go through one ``PersonaEngine`` with the shipped personas (Ava: chitchat, failure: no
model, no network) and a file-backed ``ConversationMemory`` in a temp dir, as the skill runs it,
with the engine's default caches and bounds. Each session first selects Ava with ``set_active``
(what "talk to Ava" does), so the bounded active-persona map is exercised too. Every second
session ends with ``engine.end_conversation`` (the user is gone: its turns, context and active
persona are dropped); the others stay remembered. Every session is checked: an ended one must
leave no turns, context or work in progress, a kept one exactly its turns.

Every ``--every`` sessions (default a tenth of them) the script prints the process's resident
memory (VmRSS of /proc/self/status, after a garbage collection), the database size on disk
(file plus its WAL) and the number of stored turns. Stored turns grow by design: conversations
persist, 3 turns for each session not ended (each one bounded by ``max_turns``); the disk grows
with them. Resident memory must not: once the SQLite page cache, the allocator's arenas and the
engine's bounded maps have filled, RSS stays flat.

Target: RSS growth over the second half of the sessions <= ``--max-growth`` MB in total (default
4 MB: SQLite's default page cache alone may take 2 MB as the file grows, plus allocator noise);
it is also shown per 1,000 sessions. The active-persona map is bounded at 10,000 sessions and
holds the ~half not ended, so with the default count it never reaches its bound.
Run time: about 2 ms per session at first on 2 cores, rising as the table grows (the
"ms/session" column): SQLite plans ``ConversationMemory.history``'s query on the (persona,
created_at) index, so each answer's history lookup reads every stored turn of the persona.
About 45 s for the default 10,000 sessions.
"""
from __future__ import annotations

import argparse
import gc
import os
import tempfile
import time
from pathlib import Path
from typing import List, Optional

from .common import machine_load, positive_int, print_ratio, print_table, quiet_logs, ratio_part, rss_mb

PERSONA = "Ava"


def db_size_mb(path: Path) -> float:
    """Database size on disk: the file and its write-ahead log."""
    total = 0
    for suffix in ("", "-wal"):
        try:
            total += os.path.getsize(str(path) + suffix)
        except OSError:
            pass
    return total / 1e6


def questions(session: int, turns: int) -> List[str]:
    """The session's questions: small talk first, then ones only the failure line answers."""
    talk = ["hello", "how are you"]
    asked = talk[:turns]
    asked += [f"what is the capital of country number {session} part {i}" for i in range(turns - len(asked))]
    return asked


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--sessions", type=positive_int, default=10000, help="sessions (default 10000)")
    parser.add_argument("--turns", type=positive_int, default=3, help="questions per session (default 3)")
    parser.add_argument("--every", type=positive_int, default=None, help="report interval (default sessions/10)")
    parser.add_argument("--max-growth", type=float, default=4.0,
                        help="allowed RSS growth in MB over the second half (default 4)")
    args = parser.parse_args(argv)
    every = args.every or max(1, args.sessions // 10)
    quiet_logs()
    from ovos_skill_persona_fallback.engine import PersonaEngine
    from ovos_skill_persona_fallback.memory import ConversationMemory

    with tempfile.TemporaryDirectory(prefix="persona-bench-") as folder:
        db = Path(folder) / "conversations.db"
        memory = ConversationMemory(db)
        engine = PersonaEngine(memory=memory)
        persona = engine.find_persona(PERSONA)
        if persona is None:
            raise SystemExit(f"the shipped persona {PERSONA} is missing: {engine.problems}")
        kept = min(args.turns, engine.memory_limits(persona).max_turns)  # turns a kept session holds
        engine.ask("hello", session_id="warm-up", lang="en-us")
        engine.end_conversation("warm-up")
        gc.collect()
        rows = [[0, 0.0, float("nan"), rss_mb(), db_size_mb(db), memory.count_turns()]]
        rss_at = {0: rows[0][3]}
        wrong: List[str] = []
        started = last = time.perf_counter()
        for session in range(1, args.sessions + 1):
            session_id = f"user-{session}"
            engine.set_active(session_id, PERSONA)
            for question in questions(session, args.turns):
                answer = engine.ask(question, session_id=session_id, lang="en-us")
                if not answer.sentences and len(wrong) < 3:
                    reasons = [failure.describe() for failure in answer.failures]
                    wrong.append(f"{session_id}: {question!r} got no answer: {reasons}")
            if session % 2 == 0:
                engine.end_conversation(session_id)
                if memory.count_turns(session_id) or memory.context(session_id) or engine.is_busy(session_id):
                    wrong.append(f"{session_id}: something was left after end_conversation")
            elif memory.count_turns(session_id) != kept:
                wrong.append(f"{session_id}: {memory.count_turns(session_id)} turns stored, expected {kept}")
            if session % every == 0 or session == args.sessions:
                gc.collect()
                rss = rss_mb()
                rss_at[session] = rss
                now = time.perf_counter()
                rows.append([session, now - started, (now - last) / (session - rows[-1][0]) * 1000, rss,
                             db_size_mb(db), memory.count_turns()])
                last = now
        elapsed = time.perf_counter() - started
        engine.close()

    print(f"{args.sessions} sessions x {args.turns} questions, every second session ended; "
          f"{elapsed:.1f} s ({elapsed / args.sessions * 1000:.2f} ms per session); {machine_load()} at the end")
    print_table(["sessions", "seconds", "ms/session", "RSS MB", "DB MB (file+WAL)", "turns stored"], rows)
    for line in wrong[:5]:
        print(line)
    if not wrong:
        print(f"every ended session left no turns, context or work; every other kept its {kept} turns")
    half = min(rss_at, key=lambda done: abs(done - args.sessions / 2))
    span = args.sessions - half
    growth = rss_at[args.sessions] - rss_at[half]
    per_thousand = growth / span * 1000 if span else float("nan")
    print(f"RSS {rss_at[0]:.1f} MB at start, {rss_at[half]:.1f} MB after {half} sessions, "
          f"{rss_at[args.sessions]:.1f} MB after {args.sessions}: {growth:+.2f} MB over the second half "
          f"({per_thousand:+.3f} MB per 1,000 sessions)")
    met = print_ratio([ratio_part("rss_growth_second_half_mb", growth, "<=", args.max_growth),
                       ("rss_growth_per_1000_sessions_mb={:.3f}".format(per_thousand), True)])
    return 0 if met and not wrong else 1


if __name__ == "__main__":
    raise SystemExit(main())
