"""The hash chain under concurrent writers, and what verification reports."""

from __future__ import annotations

import threading

from sqlalchemy import func, select, text

from healthrelay.audit import service as audit
from healthrelay.audit.models import AuditEvent
from healthrelay.core.db import get_sessionmaker


def test_two_threads_appending_at_once_keep_one_valid_chain(db) -> None:
    per_thread = 40
    start = threading.Barrier(2)
    errors: list[BaseException] = []

    def writer(name: str) -> None:
        try:
            start.wait()
            for i in range(per_thread):
                with get_sessionmaker()() as session:
                    audit.record(session, actor=audit.Actor(username=name), action="test.append",
                                 detail={"i": i})
                    session.commit()
        except BaseException as exc:  # noqa: BLE001 - re-raised by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(n,)) for n in ("alpha", "beta")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors, errors
    checked, breaks = audit.verify_chain(db)
    assert (checked, breaks) == (2 * per_thread, [])
    # One chain, no fork: every event links to a different predecessor.
    links = db.execute(select(func.count(func.distinct(AuditEvent.prev_hash)))).scalar_one()
    assert links == 2 * per_thread


def test_events_recorded_in_a_rolled_back_transaction_vanish_without_breaking_the_chain(db) -> None:
    audit.record(db, actor=audit.Actor(username="a"), action="test.kept")
    db.commit()
    audit.record(db, actor=audit.Actor(username="a"), action="test.lost")
    db.rollback()
    audit.record(db, actor=audit.Actor(username="a"), action="test.kept")
    db.commit()
    assert audit.verify_chain(db) == (2, [])


def test_verify_reads_rows_as_stored_not_as_cached(db) -> None:
    """A session that wrote the events must still see an edit made behind its back."""
    events = [audit.record(db, actor=audit.Actor(username="a"), action="test.x") for _ in range(3)]
    db.commit()
    with get_sessionmaker()() as other:
        if other.get_bind().dialect.name == "postgresql":
            other.execute(text("ALTER TABLE audit_events DISABLE TRIGGER audit_events_no_update"))
        else:
            other.execute(text("DROP TRIGGER audit_events_no_update"))
        other.execute(text("UPDATE audit_events SET username = 'mallory' WHERE id = :id"), {"id": events[1].id})
        if other.get_bind().dialect.name == "postgresql":
            other.execute(text("ALTER TABLE audit_events ENABLE TRIGGER audit_events_no_update"))
        other.commit()
    checked, breaks = audit.verify_chain(db)
    assert checked == 3 and [b.event_id for b in breaks] == [events[1].id]
    assert "edited" in breaks[0].problem


def test_search_filters_and_keyset_paging(db) -> None:
    for i in range(5):
        audit.record(db, actor=audit.Actor(username="doc_a", organisation_id=1), action="patient.read",
                     patient_id=100 + i)
    audit.record(db, actor=audit.Actor(username="doc_b", organisation_id=2), action="login.failed",
                 outcome="failed")
    audit.record(db, actor=audit.Actor(username="doc_b", organisation_id=2), action="patient_x.read")
    db.commit()
    assert [e.username for e in audit.search(db, action="login.")] == ["doc_b"]
    # "_" in a prefix is a character, not a LIKE wildcard.
    assert [e.action for e in audit.search(db, action="patient_")] == ["patient_x.read"]
    assert len(audit.search(db, organisation_id=1)) == 5
    first = audit.search(db, username="doc_a", limit=2)
    assert [e.patient_id for e in first] == [104, 103]
    second = audit.search(db, username="doc_a", limit=2, before_id=first[-1].id)
    assert [e.patient_id for e in second] == [102, 101]
