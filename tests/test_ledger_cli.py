"""``starter.py db upgrade`` and the worker's schema check, as an operator runs them."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from ledger import schema
from tests.conftest import empty_database, on_both_databases

ROOT = Path(__file__).resolve().parent.parent


def run(script: str, *args: str, url: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DEALFLOW_")}
    env["DEALFLOW_DATABASE_URL"] = url
    # Nothing listens here: a worker that got past the ledger check would say so.
    env["DEALFLOW_TEMPORAL_ADDRESS"] = "127.0.0.1:9"
    # A worker outside dev needs its public URL before anything else.
    env["DEALFLOW_PUBLIC_URL"] = "https://deals.example.com"
    return subprocess.run(
        [sys.executable, str(ROOT / script), *args],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip


@on_both_databases
async def test_a_worker_on_an_old_schema_refuses_to_start_until_db_upgrade(
    database: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    url = await empty_database(database, tmp_path, request)
    refused = run("worker.py", url=url)
    assert refused.returncode == 1
    assert refused.stderr.strip().splitlines() == [
        "worker: the ledger schema is at nothing (empty database), this version needs "
        f"{schema.head()}: "
        "run 'python starter.py db upgrade'"
    ]

    upgraded = run("starter.py", "db", "upgrade", url=url)
    assert upgraded.returncode == 0, upgraded.stderr
    assert upgraded.stdout.strip().endswith(f"schema none -> {schema.head()}")
    again = run("starter.py", "db", "upgrade", url=url)
    assert again.stdout.strip().endswith(f"schema {schema.head()}, up to date")

    # Past the ledger, the worker now stops at the (absent) Temporal server instead.
    started = run("worker.py", url=url)
    assert started.returncode == 1
    assert started.stderr.startswith("worker: cannot reach Temporal at 127.0.0.1:9")


def test_db_upgrade_on_an_unreachable_server_is_one_line_and_hides_the_password() -> None:
    result = run("starter.py", "db", "upgrade", url="postgresql://ops:s3cret@127.0.0.1:9/dealflow")
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("dealflow: cannot reach the ledger database")
    assert "s3cret" not in result.stderr + result.stdout
