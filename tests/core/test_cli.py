"""The `healthrelay` command as an operator runs it, in a subprocess against the test database."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from sqlalchemy import select

from healthrelay.core.timers import Timer

BIN = Path(sys.executable).parent / "healthrelay"


def run_cli(*args: str, database_url: str) -> subprocess.CompletedProcess[str]:
    env = os.environ | {"HEALTHRELAY_DATABASE_URL": database_url}
    return subprocess.run([str(BIN), *args], env=env, capture_output=True, text=True, timeout=120)


def test_migrate_is_idempotent(database_url: str) -> None:
    result = run_cli("migrate", database_url=database_url)
    assert result.returncode == 0, result.stderr
    assert "up to date" in result.stdout


def test_worker_fires_due_recurring_jobs(database_url: str, db) -> None:
    result = run_cli("worker", "--max-loops", "1", "--interval", "0", database_url=database_url)
    assert result.returncode == 0, result.stderr
    fired = db.execute(select(Timer).where(Timer.kind == "maintenance.prune_login_attempts")).scalars().all()
    assert fired and all(t.fired_at is not None and t.fired_by.startswith("worker:") for t in fired)
