"""Escalation timers fire exactly once with two real `healthrelay worker` processes on one PostgreSQL."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from healthrelay.audit.models import AuditEvent
from healthrelay.core.timers import Timer
from healthrelay.referrals import service
from healthrelay.referrals.models import ReferralEscalation, Urgency
from tests.conftest import PG_URL
from tests.referrals.conftest import World, move_due_into_past, sent_referral

CLI = Path(sys.executable).parent / "healthrelay"
REFERRALS = 50


@pytest.mark.skipif(not PG_URL, reason="needs PostgreSQL: SQLite cannot be shared by several worker processes")
def test_two_workers_escalate_each_overdue_referral_exactly_once(db: Session, world: World) -> None:
    referrals = [sent_referral(db, world, urgency=Urgency.GREEN_CHANNEL) for _ in range(REFERRALS)]
    db.commit()
    for referral in referrals:
        move_due_into_past(db, referral)
    env = {**os.environ, "HEALTHRELAY_DATABASE_URL": PG_URL, "HEALTHRELAY_FAST_PASSWORD_HASH": "1"}
    workers = [subprocess.Popen([str(CLI), "worker", "--max-loops", "15", "--interval", "0.2"], env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT) for _ in range(2)]
    outputs = [w.communicate(timeout=120)[0].decode() for w in workers]
    assert [w.returncode for w in workers] == [0, 0], outputs

    db.expire_all()
    level1 = db.execute(select(Timer).where(Timer.kind == service.ESCALATE_KIND,
                                            Timer.dedupe_key.like("referral:%:escalate:1"))).scalars().all()
    assert len(level1) == REFERRALS
    assert all(t.fired_at is not None and t.attempts == 0 and t.last_error == "" for t in level1)
    assert {t.fired_by.split(":")[0] for t in level1} == {"worker"}
    per_referral = dict(db.execute(select(ReferralEscalation.referral_id, func.count())
                                   .where(ReferralEscalation.level == 1)
                                   .group_by(ReferralEscalation.referral_id)).all())
    assert per_referral == {r.id: 1 for r in referrals}
    audited = db.execute(select(func.count()).where(AuditEvent.action == "referral.escalate.1")).scalar_one()
    assert audited == REFERRALS
    # Each fired level 1 armed exactly one level-2 timer, not yet due.
    level2 = db.execute(select(func.count()).where(Timer.dedupe_key.like("referral:%:escalate:2"),
                                                   Timer.fired_at.is_(None))).scalar_one()
    assert level2 == REFERRALS


@pytest.mark.skipif(not PG_URL, reason="needs PostgreSQL: SQLite cannot be shared by several processes")
def test_two_app_processes_and_a_worker_fire_each_timer_once_and_notify_once(db: Session, world: World) -> None:
    """The production shape: two `healthrelay serve` processes with embedded timers and a worker."""
    import time

    from healthrelay.notifications.models import Notification
    from tests.conftest import free_port

    referrals = [sent_referral(db, world, urgency=Urgency.URGENT) for _ in range(30)]
    db.commit()
    env = {**os.environ, "HEALTHRELAY_DATABASE_URL": PG_URL, "HEALTHRELAY_FAST_PASSWORD_HASH": "1"}
    processes = [subprocess.Popen([str(CLI), "serve", "--host", "127.0.0.1", "--port", str(free_port())], env=env,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for _ in range(2)]
    processes.append(subprocess.Popen([str(CLI), "worker", "--interval", "0.3"], env=env,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    try:
        for referral in referrals:
            move_due_into_past(db, referral)
        deadline = time.monotonic() + 90
        pending = -1
        while time.monotonic() < deadline:
            pending = db.execute(select(func.count()).where(Timer.dedupe_key.like("referral:%:escalate:1"),
                                                            Timer.fired_at.is_(None))).scalar_one()
            db.rollback()
            if pending == 0:
                break
            time.sleep(0.5)
        assert pending == 0, "timers were lost: some never fired"
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            process.wait(timeout=30)
    db.expire_all()
    level1 = db.execute(select(Timer).where(Timer.dedupe_key.like("referral:%:escalate:1"))).scalars().all()
    assert len(level1) == len(referrals) and all(t.attempts == 0 for t in level1)
    assert {t.fired_by.split(":")[0] for t in level1} <= {"web", "worker"}
    per_referral = dict(db.execute(select(ReferralEscalation.referral_id, func.count())
                                   .where(ReferralEscalation.level == 1)
                                   .group_by(ReferralEscalation.referral_id)).all())
    assert per_referral == {r.id: 1 for r in referrals}
    # The department head heard about each escalation once: no doubled notification.
    told = db.execute(select(func.count()).where(Notification.user_id == world.dept_head.id,
                                                 Notification.kind == "referral.escalation.1")).scalar_one()
    assert told == len(referrals)
