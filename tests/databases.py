"""Real ledger databases for the tests: a SQLite file, and a throwaway PostgreSQL cluster.

The cluster is started once per test session from Debian's ``postgresql`` binaries
(``initdb``/``pg_ctl``, which ``make test`` installs), on a free loopback port; each
test gets a database of its own in it. PostgreSQL refuses to run as root, so as root
the cluster runs as the ``postgres`` user, in a folder that user owns.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from devstack import free_port


def postgres_bin() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not found:
        raise FileNotFoundError(
            "PostgreSQL's initdb is missing: run 'make test' (it installs Debian's postgresql)"
        )
    return Path(found[-1]).parent


@dataclass
class PostgresCluster:
    folder: Path
    port: int

    def url(self, database: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def start(self) -> None:
        """Start the server (again) on its data directory and port; returns once it
        accepts connections."""
        options = f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.folder} -c fsync=off"
        subprocess.run(
            _as_postgres([str(postgres_bin() / "pg_ctl"), "-D", str(self.folder / "data"),
                          "-o", options, "-l", str(self.folder / "log"), "-w", "-t", "60",
                          "start"]),
            check=True, capture_output=True,
        )  # fmt: skip

    def stop(self, mode: str = "fast") -> None:
        """Stop the server (``fast``: its connections are cut, as in an outage); its data
        stays for ``start``."""
        subprocess.run(
            _as_postgres([str(postgres_bin() / "pg_ctl"), "-D", str(self.folder / "data"),
                          "-m", mode, "-w", "stop"]),
            capture_output=True,
        )  # fmt: skip

    async def create_database(self) -> str:
        """A new, empty database in the cluster, for one test."""
        name = f"ledger_{uuid.uuid4().hex[:12]}"
        await self._execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    async def _execute(self, statement: str) -> None:
        import asyncpg

        connection = await asyncpg.connect(self.url("postgres"))
        try:
            await connection.execute(statement)
        finally:
            await connection.close()


def _as_postgres(command: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *command] if os.getuid() == 0 else command


def start_postgres() -> Iterator[PostgresCluster]:
    binaries = postgres_bin()
    # Not under a root-only temp folder: the postgres user must reach it.
    folder = Path(tempfile.mkdtemp(prefix="dealflow-pg-", dir="/tmp"))
    data = folder / "data"
    if os.getuid() == 0:
        user = pwd.getpwnam("postgres")
        os.chown(folder, user.pw_uid, user.pw_gid)
    port = free_port()
    run = {"check": True, "capture_output": True}
    try:
        subprocess.run(
            _as_postgres([str(binaries / "initdb"), "-D", str(data), "-A", "trust",
                          "-U", "postgres", "--no-sync"]),
            **run,
        )  # fmt: skip
        cluster = PostgresCluster(folder, port)
        cluster.start()
        yield cluster
    except subprocess.CalledProcessError as error:
        log = folder / "log"
        detail = log.read_text() if log.exists() else error.stderr.decode()
        raise RuntimeError(f"PostgreSQL did not start: {detail}") from None
    finally:
        PostgresCluster(folder, port).stop("immediate")
        shutil.rmtree(folder, ignore_errors=True)
