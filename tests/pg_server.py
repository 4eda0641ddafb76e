"""A real PostgreSQL server for the tests: its own data directory, a free port, stopped at the end.

PostgreSQL refuses to run as root, so under root the server runs as the ``postgres`` user (the
data directory is created for it). A machine without the server binaries FAILS these tests with
a message saying what to install: the shared-memory feature must not pass untested.
"""
from __future__ import annotations

import glob
import itertools
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path
from typing import Iterator, List, Optional

import pytest

PASSWORD = "pg-Secret-7f3a"
USER = "persona"
START_TIMEOUT_S = 60


def find_bindir() -> Optional[Path]:
    """The folder holding initdb and pg_ctl (PostgreSQL 15 preferred), or None."""
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: ("/15/" not in p, p))
    on_path = shutil.which("pg_ctl")
    if on_path:
        candidates.append(str(Path(os.path.realpath(on_path)).parent))
    for folder in candidates:
        if (Path(folder) / "initdb").exists() and (Path(folder) / "pg_ctl").exists():
            return Path(folder)
    return None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class PostgresServer:
    """One throwaway cluster; ``database()`` hands out a fresh, empty database each call."""

    _names = itertools.count(1)

    def __init__(self, bindir: Path, settings: str = "-c fsync=off") -> None:
        self.bindir = bindir
        #: server settings: the tests trade durability on power loss for speed
        self.settings = settings
        self.root = Path(tempfile.mkdtemp(prefix="persona-pg-"))
        self.data = self.root / "data"
        self.port = free_port()
        self.as_postgres = os.geteuid() == 0
        if self.as_postgres:
            account = pwd.getpwnam("postgres")
            os.chown(self.root, account.pw_uid, account.pw_gid)
        os.chmod(self.root, 0o755)
        (self.root / "pw").write_text(PASSWORD)
        os.chmod(self.root / "pw", 0o644)
        self._run("initdb", "-D", str(self.data), "-U", USER, "--pwfile", str(self.root / "pw"),
                  "--auth-local=trust", "--auth-host=scram-sha-256", "-E", "UTF8", "--no-sync")
        self.start()

    def _command(self, tool: str, *args: str) -> List[str]:
        command = [str(self.bindir / tool), *args]
        return ["runuser", "-u", "postgres", "--", *command] if self.as_postgres else command

    def _run(self, tool: str, *args: str) -> str:
        done = subprocess.run(self._command(tool, *args), capture_output=True, text=True, timeout=START_TIMEOUT_S)
        if done.returncode != 0:
            log = (self.root / "log").read_text() if (self.root / "log").exists() else ""
            raise RuntimeError(f"{tool} failed ({done.returncode}): {done.stdout}{done.stderr}{log[-2000:]}")
        return done.stdout

    def start(self) -> None:
        """Start (or restart) the server on the same port and data."""
        options = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c max_connections=200 {self.settings}"
        self._run("pg_ctl", "-D", str(self.data), "-o", options, "-l", str(self.root / "log"), "-w",
                  "-t", str(START_TIMEOUT_S), "start")

    def kill(self) -> None:
        """Stop at once, as a crash would (no checkpoint, clients cut off)."""
        self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")

    def url(self, database: str = "postgres", password: str = PASSWORD) -> str:
        return f"postgresql://{USER}:{password}@127.0.0.1:{self.port}/{database}"

    def database(self) -> str:
        """Create a fresh database and return its URL."""
        import psycopg

        name = f"t{next(self._names)}"
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name} STRATEGY FILE_COPY")  # quicker than WAL_LOG for tiny ones
        return self.url(name)

    def close(self) -> None:
        try:
            self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")
        except RuntimeError:
            pass  # already stopped (a test killed it last)
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """A PostgreSQL server for the whole run; missing binaries fail the test (never skip)."""
    bindir = find_bindir()
    if bindir is None:
        pytest.fail("PostgreSQL server binaries (initdb, pg_ctl) not found: install PostgreSQL 15 "
                    "(apt-get install postgresql-15) to run the shared-memory tests", pytrace=False)
    server = PostgresServer(bindir)
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def pg_url(postgres_server: PostgresServer) -> str:
    """The URL of a fresh, empty database on the test server."""
    return postgres_server.database()
