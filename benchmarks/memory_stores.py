"""Conversation stores compared: history read and turn write latency, turns/s, SQLite vs PostgreSQL.

Each store is filled with ``--conversations`` conversations (default 10,000; ``--large`` adds a
100,000 run) of ``--turns`` turns each (default 3), written in bulk straight into its tables (the
fill is not timed). Then, on conversations picked at random from the filled ones:

* ``read``: ``history(max_turns=12, max_age_minutes=1440)``, what the engine does before answering;
* ``write``: ``record(max_turns=12, max_age_minutes=1440)``, what it does after: one transaction
  that inserts the turn and prunes the conversation and the persona's expired turns;

``--ops`` of each, one after the other, median and 95th percentile in milliseconds. Then
``--threads`` threads (default 8) each record ``--ops`` / threads turns into their own
conversations at once: the turns/s one process reaches (SQLite serializes writers on one
connection; PostgreSQL runs them in parallel on the pool).

PostgreSQL: ``--db-url`` names a database (its turns, contexts and active_personas tables are
emptied first), else a throwaway server is started from the PostgreSQL binaries the tests use
(tests/pg_server.py; as root it runs as the ``postgres`` user) with ``synchronous_commit=off``,
the durability SQLite's WAL mode with ``synchronous=NORMAL`` gives. Both run on the same machine,
over a local TCP connection for PostgreSQL: the figures compare the stores' own costs, not a
network. About 15 s for the default run on 2 cores; ``--large`` adds about 10 s.
"""
from __future__ import annotations

import argparse
import random
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, List, Optional, Sequence

from .common import TESTS_DIR, machine_load, percentile, positive_int, print_table, quiet_logs

PERSONA = "Bench"
MAX_TURNS = 12
MAX_AGE_MINUTES = 1440
#: the throwaway server syncs its log like SQLite in WAL mode with synchronous=NORMAL (what the
#: SQLite store uses): a crash loses nothing committed, a power cut may lose the last commits
SERVER_SETTINGS = "-c fsync=on -c synchronous_commit=off"


def fill_sqlite(store: Any, conversations: int, turns: int) -> None:
    """Bulk-insert the conversations into the SQLite file, in one transaction."""
    now = time.time()
    rows = ((f"c{c}", PERSONA, now - (turns - t), f"question {t} of {c}", f"answer {t} of {c}")
            for c in range(conversations) for t in range(turns))
    with store._lock:
        conn = store._conn
        conn.execute("BEGIN")
        conn.executemany("INSERT INTO turns (session_id, persona, created_at, question, answer) "
                         "VALUES (?, ?, ?, ?, ?)", rows)
        conn.execute("COMMIT")
        conn.execute("ANALYZE")


def fill_postgres(url: str, conversations: int, turns: int) -> None:
    """Bulk-insert the conversations with one server-side INSERT ... SELECT."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("TRUNCATE turns, contexts, active_personas")
        conn.execute(
            "INSERT INTO turns (session_id, persona, created_at, question, answer) "
            "SELECT 'c' || c, %s, extract(epoch from now()) - (%s - t), 'question ' || t || ' of ' || c, "
            "'answer ' || t || ' of ' || c FROM generate_series(0, %s - 1) AS c, generate_series(0, %s - 1) AS t "
            "ORDER BY c, t", (PERSONA, turns, conversations, turns))
        conn.execute("VACUUM ANALYZE turns")


def timed(calls: int, action: Callable[[int], None]) -> List[float]:
    """Run ``action(i)`` ``calls`` times; return each duration in milliseconds."""
    durations = []
    for index in range(calls):
        started = time.perf_counter()
        action(index)
        durations.append((time.perf_counter() - started) * 1000)
    return durations


def turns_per_second(store: Any, threads: int, total: int) -> float:
    """Record ``total`` turns from ``threads`` threads at once; return the turns stored per second."""
    each = max(1, total // threads)
    start = threading.Barrier(threads + 1)

    def writer(index: int) -> None:
        start.wait()
        for turn in range(each):
            store.record(f"w{index}", PERSONA, f"q{turn}", f"a{turn}", max_turns=MAX_TURNS,
                         max_age_minutes=MAX_AGE_MINUTES)

    workers = [threading.Thread(target=writer, args=(i,)) for i in range(threads)]
    for worker in workers:
        worker.start()
    start.wait()
    started = time.perf_counter()
    for worker in workers:
        worker.join()
    return each * threads / (time.perf_counter() - started)


def measure(name: str, store: Any, conversations: int, args: argparse.Namespace) -> Sequence[Any]:
    """One table row: reads and writes on random filled conversations, then parallel writes."""
    rng = random.Random(args.seed)
    picks = [f"c{rng.randrange(conversations)}" for _ in range(args.ops)]
    reads = timed(args.ops, lambda i: store.history(picks[i], PERSONA, max_turns=MAX_TURNS,
                                                    max_age_minutes=MAX_AGE_MINUTES))
    writes = timed(args.ops, lambda i: store.record(picks[i], PERSONA, "one more question", "one more answer",
                                                    max_turns=MAX_TURNS, max_age_minutes=MAX_AGE_MINUTES))
    rate = turns_per_second(store, args.threads, args.ops)
    assert store.outage is None and store.pending == 0, f"{name}: the store was not usable the whole run"
    return (name, f"{conversations:,}", round(percentile(reads, 50), 3), round(percentile(reads, 95), 3),
            round(percentile(writes, 50), 3), round(percentile(writes, 95), 3), round(rate))


@contextmanager
def postgres_url(given: Optional[str]) -> Iterator[str]:
    """The database to measure: the one given, else a fresh one on a throwaway server."""
    if given:
        yield given
        return
    if str(TESTS_DIR) not in sys.path:
        sys.path.insert(0, str(TESTS_DIR))
    from pg_server import PostgresServer, find_bindir  # noqa: E402  (path set just above)

    bindir = find_bindir()
    if bindir is None:
        raise SystemExit("PostgreSQL binaries (initdb, pg_ctl) not found: install PostgreSQL or pass --db-url")
    server = PostgresServer(bindir, settings=SERVER_SETTINGS)
    try:
        yield server.database()
    finally:
        server.close()


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--conversations", type=positive_int, default=10_000, help="conversations (default 10000)")
    parser.add_argument("--large", action="store_true", help="also run with 100,000 conversations")
    parser.add_argument("--turns", type=positive_int, default=3, help="turns per conversation (default 3)")
    parser.add_argument("--ops", type=positive_int, default=1000, help="reads and writes timed (default 1000)")
    parser.add_argument("--threads", type=positive_int, default=8, help="parallel writers (default 8)")
    parser.add_argument("--db-url", help="PostgreSQL database to use (default: a throwaway server)")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args(argv)
    quiet_logs()
    from ovos_skill_persona_fallback.memory import ConversationMemory
    from ovos_skill_persona_fallback.memory.postgres import PostgresMemory

    sizes = [args.conversations] + ([100_000] if args.large and args.conversations != 100_000 else [])
    rows = []
    print(f"{args.turns} turns per conversation, {args.ops} timed reads and writes, {args.threads} writer "
          f"threads; {machine_load()}\n")
    with postgres_url(args.db_url) as url, tempfile.TemporaryDirectory(prefix="persona-bench-") as folder:
        for size in sizes:
            sqlite = ConversationMemory(Path(folder) / f"conv-{size}.db")
            fill_sqlite(sqlite, size, args.turns)
            rows.append(measure("SQLite", sqlite, size, args))
            sqlite.close()
            postgres = PostgresMemory(url, pool_size=args.threads)
            fill_postgres(url, size, args.turns)
            rows.append(measure("PostgreSQL", postgres, size, args))
            postgres.close()
    print_table(["store", "conversations", "read p50 ms", "read p95 ms", "write p50 ms", "write p95 ms",
                 "turns/s"], rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
