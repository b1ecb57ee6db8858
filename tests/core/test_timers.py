"""Durable timers: each fires once, failures are kept and retried, several runners never double-fire."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from healthrelay.core import timers
from healthrelay.core.db import get_sessionmaker, utcnow
from healthrelay.core.timers import MAX_ATTEMPTS, Timer
from healthrelay.directory.models import Organisation, OrgKind, OrgLevel


@pytest.fixture
def calls() -> Iterator[list[dict[str, Any]]]:
    """Handlers registered for one test only, recording every call (thread-safe)."""
    seen: list[dict[str, Any]] = []
    lock = threading.Lock()
    failures_left = {"flaky": 1}

    @timers.handler("test.record")
    def _record(db: Session, payload: dict[str, Any]) -> None:
        with lock:
            seen.append(payload)

    @timers.handler("test.fail")
    def _fail(db: Session, payload: dict[str, Any]) -> None:
        with lock:
            seen.append(payload)
        # Work done before the failure must not survive it.
        db.add(Organisation(code=f"HALF{len(seen)}", name="半截", level=OrgLevel.VILLAGE,
                            kind=OrgKind.VILLAGE_CLINIC))
        db.flush()
        raise RuntimeError("printer on fire")

    @timers.handler("test.flaky")
    def _flaky(db: Session, payload: dict[str, Any]) -> None:
        with lock:
            seen.append(payload)
            if failures_left["flaky"]:
                failures_left["flaky"] -= 1
                raise RuntimeError("transient")

    yield seen
    for kind in ("test.record", "test.fail", "test.flaky", "test.hourly"):
        timers._handlers.pop(kind, None)
        timers._recurring.pop(kind, None)


def run(runner: str = "test") -> int:
    return timers.run_due(get_sessionmaker(), runner=runner)


def test_a_due_timer_fires_once_and_a_future_one_waits(db, calls) -> None:
    due = timers.schedule(db, kind="test.record", due_at=utcnow() - timedelta(seconds=1), payload={"n": 1})
    timers.schedule(db, kind="test.record", due_at=utcnow() + timedelta(hours=1), payload={"n": 2})
    db.commit()
    assert run() >= 1
    assert run() == 0
    assert calls == [{"n": 1}]
    db.expire_all()
    fired = db.get(Timer, due.id)
    assert fired.fired_at is not None and fired.fired_by == "test" and fired.attempts == 0


def test_a_failing_handler_keeps_its_error_and_is_retried_up_to_max_attempts(db, calls) -> None:
    timer = timers.schedule(db, kind="test.fail", due_at=utcnow(), payload={"n": 1})
    db.commit()
    run()
    run()
    db.expire_all()
    failed = db.get(Timer, timer.id)
    assert failed.fired_at is None
    assert failed.attempts == MAX_ATTEMPTS
    assert "RuntimeError: printer on fire" in failed.last_error
    assert len(calls) == MAX_ATTEMPTS  # and no more, however often the runner comes by
    assert db.execute(select(Organisation).where(Organisation.name == "半截")).first() is None


def test_a_transient_failure_is_retried_and_then_fires(db, calls) -> None:
    timer = timers.schedule(db, kind="test.flaky", due_at=utcnow(), payload={"n": 7})
    db.commit()
    run()
    db.expire_all()
    done = db.get(Timer, timer.id)
    assert done.fired_at is not None and done.attempts == 1 and "transient" in done.last_error
    assert calls == [{"n": 7}, {"n": 7}]


def test_dedupe_key_makes_scheduling_idempotent(db, calls) -> None:
    first = timers.schedule(db, kind="test.record", due_at=utcnow(), payload={"n": 1}, dedupe_key="referral:42:sla")
    again = timers.schedule(db, kind="test.record", due_at=utcnow(), payload={"n": 2}, dedupe_key="referral:42:sla")
    db.commit()
    assert first is not None and again is None
    assert db.execute(select(func.count()).select_from(Timer).where(Timer.kind == "test.record")).scalar_one() == 1
    run()
    assert calls == [{"n": 1}]


def test_a_cancelled_timer_never_fires(db, calls) -> None:
    timers.schedule(db, kind="test.record", due_at=utcnow(), payload={"n": 1}, dedupe_key="k1")
    db.commit()
    timers.cancel(db, dedupe_key="k1")
    db.commit()
    run()
    assert calls == []


def test_a_recurring_job_is_scheduled_once_per_slot(db, calls) -> None:
    @timers.handler("test.hourly", every=timedelta(hours=1))
    def _hourly(db: Session, payload: dict[str, Any]) -> None:
        calls.append({"hourly": True})

    for _ in range(3):
        run()
    rows = db.execute(select(Timer).where(Timer.kind == "test.hourly")).scalars().all()
    assert len(rows) == 1 and rows[0].fired_at is not None
    assert rows[0].dedupe_key.startswith("recurring:test.hourly:")
    assert calls == [{"hourly": True}]


def test_four_runners_fire_each_of_200_timers_exactly_once(db, calls) -> None:
    """PostgreSQL: FOR UPDATE SKIP LOCKED lets runners work side by side; SQLite: its write lock serialises them."""
    for n in range(200):
        timers.schedule(db, kind="test.record", due_at=utcnow() - timedelta(seconds=1), payload={"n": n})
    db.commit()
    start = threading.Barrier(4)
    errors: list[BaseException] = []
    fired_by_runner: Counter[str] = Counter()

    def runner(name: str) -> None:
        try:
            start.wait()
            while True:
                fired = timers.run_due(get_sessionmaker(), runner=name, limit=10)
                fired_by_runner[name] += fired
                if fired == 0:
                    return
        except BaseException as exc:  # noqa: BLE001 - re-raised by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=runner, args=(f"runner-{i}",)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors, errors
    handled = Counter(call["n"] for call in calls)
    assert len(handled) == 200 and set(handled.values()) == {1}
    fired_rows = db.execute(select(func.count()).select_from(Timer).where(
        Timer.kind == "test.record", Timer.fired_at.is_not(None))).scalar_one()
    assert fired_rows == 200
    assert sum(fired_by_runner.values()) >= 200


def test_two_runners_scheduling_the_same_recurring_slot_both_survive(db) -> None:
    first = get_sessionmaker()()
    timers._ensure_recurring(first)  # runner A has scheduled this slot's jobs but not committed yet
    outcome: dict[str, object] = {}

    def runner_b() -> None:
        try:
            outcome["fired"] = timers.run_due(get_sessionmaker(), runner="B")
        except Exception as exc:  # noqa: BLE001 - reported by the assertion below
            outcome["error"] = exc

    thread = threading.Thread(target=runner_b)
    thread.start()
    time.sleep(0.5)  # B has looked for the slot's timers, found none, and is inserting
    first.commit()
    first.close()
    thread.join(timeout=60)
    assert "error" not in outcome, outcome["error"]
    assert db.execute(select(func.count()).select_from(Timer).where(
        Timer.kind == "maintenance.prune_login_attempts")).scalar_one() == 1


def test_a_timer_scheduled_in_a_rolled_back_transaction_is_gone(db, calls) -> None:
    """Scheduling belongs to the caller's unit of work: a referral that fails leaves no deadline behind."""
    timers.schedule(db, kind="test.record", due_at=utcnow(), payload={"n": 1}, dedupe_key="referral:7:sla")
    db.rollback()
    assert db.execute(select(func.count()).select_from(Timer).where(Timer.kind == "test.record")).scalar_one() == 0
    run()
    assert calls == []
