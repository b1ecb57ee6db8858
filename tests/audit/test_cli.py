"""`healthrelay audit verify`, run as an operator runs it, catches edited and removed rows."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from sqlalchemy import text
from sqlalchemy.orm import Session

from healthrelay.audit import service as audit
from healthrelay.audit.models import AuditEvent

BIN = Path(sys.executable).parent / "healthrelay"


def verify_cli(database_url: str) -> subprocess.CompletedProcess[str]:
    env = os.environ | {"HEALTHRELAY_DATABASE_URL": database_url}
    return subprocess.run([str(BIN), "audit", "verify"], env=env, capture_output=True, text=True, timeout=120)


def write_events(db: Session, count: int) -> list[int]:
    ids = [audit.record(db, actor=audit.Actor(user_id=7, username="doc_a", role="clinician", organisation_id=3,
                                              client_address="10.0.0.5"),
                        action="patient.read", patient_id=100 + i, purpose="registered_here").id
           for i in range(count)]
    db.commit()
    return ids


def tamper(db: Session, statement: str, **params: object) -> None:
    """What an intruder with the database owner's rights could do: switch the guard off, then edit."""
    postgres = db.get_bind().dialect.name == "postgresql"
    if postgres:
        db.execute(text("ALTER TABLE audit_events DISABLE TRIGGER audit_events_no_update"))
    else:
        db.execute(text("DROP TRIGGER IF EXISTS audit_events_no_update"))
        db.execute(text("DROP TRIGGER IF EXISTS audit_events_no_delete"))
    try:
        db.execute(text(statement), params)
    finally:
        if postgres:  # the PostgreSQL test database is reused by later tests
            db.execute(text("ALTER TABLE audit_events ENABLE TRIGGER audit_events_no_update"))
        db.commit()


def test_an_intact_trail_verifies(database_url: str, db: Session) -> None:
    write_events(db, 12)
    result = verify_cli(database_url)
    assert result.returncode == 0, result.stderr
    assert "intact: 12 events" in result.stdout


def test_an_edited_row_is_named(database_url: str, db: Session) -> None:
    ids = write_events(db, 6)
    tamper(db, "UPDATE audit_events SET patient_id = 999 WHERE id = :id", id=ids[2])
    result = verify_cli(database_url)
    assert result.returncode == 1
    assert f"BROKEN at audit event {ids[2]}: content does not match" in result.stderr
    assert "audit chain BROKEN: 1 problem(s) in 6 events" in result.stderr


def test_an_edit_that_also_rewrites_the_rows_hash_is_still_caught(database_url: str, db: Session) -> None:
    """Recomputing the edited row's own hash breaks the next row's link instead."""
    ids = write_events(db, 5)
    stored = db.get(AuditEvent, ids[1])
    forged = AuditEvent(**{c.key: getattr(stored, c.key) for c in AuditEvent.__table__.columns})
    forged.username = "someone_else"
    tamper(db, "UPDATE audit_events SET username = 'someone_else', row_hash = :h WHERE id = :id",
           h=audit.compute_hash(forged), id=ids[1])
    result = verify_cli(database_url)
    assert result.returncode == 1
    assert f"BROKEN at audit event {ids[2]}: previous-hash link broken" in result.stderr


def test_a_deleted_middle_row_is_named(database_url: str, db: Session) -> None:
    ids = write_events(db, 6)
    tamper(db, "DELETE FROM audit_events WHERE id = :id", id=ids[3])
    result = verify_cli(database_url)
    assert result.returncode == 1
    # The row after the gap no longer links to its predecessor.
    assert f"BROKEN at audit event {ids[4]}: previous-hash link broken" in result.stderr
    assert "in 5 events" in result.stderr


def test_a_plain_update_or_delete_is_refused_by_the_database(database_url: str, db: Session) -> None:
    ids = write_events(db, 3)
    for statement in ("UPDATE audit_events SET username = 'x' WHERE id = :id",
                      "DELETE FROM audit_events WHERE id = :id"):
        try:
            db.execute(text(statement), {"id": ids[1]})
        except Exception as exc:  # noqa: BLE001 - the refusal is what we want
            assert "append-only" in str(exc)
            db.rollback()
        else:
            raise AssertionError(f"the database accepted: {statement}")
    assert verify_cli(database_url).returncode == 0
