"""Need-to-know, decided in the service layer with real users of different organisations."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
from sqlalchemy import select

from healthrelay.access import service
from healthrelay.access.models import BreakGlassGrant
from healthrelay.accounts.models import Role
from healthrelay.audit.models import AuditEvent
from healthrelay.audit.service import verify_chain
from healthrelay.core.db import get_sessionmaker, utcnow
from healthrelay.core.errors import AccessDenied, InvalidInput, NeedToKnowDenied
from tests import factories as f


@pytest.fixture
def county(db):  # noqa: ANN001, ANN201
    """Two township centres, a doctor at each, a resident registered at each; committed."""

    class County:
        a = f.organisation(db, name="青山镇卫生院")
        b = f.organisation(db, name="白水镇卫生院")
        doctor_a = f.user(db, organisation=a, username="doc_a")
        doctor_b = f.user(db, organisation=b, username="doc_b")
        resident_a = f.patient(db, name="张三", registered_at=a)
        resident_b = f.patient(db, name="李四", registered_at=b)

    db.commit()
    return County


def audit_rows(db, **where: object) -> list[AuditEvent]:  # noqa: ANN001
    db.expire_all()
    q = select(AuditEvent).order_by(AuditEvent.id)
    for column, value in where.items():
        q = q.where(getattr(AuditEvent, column) == value)
    return list(db.execute(q).scalars())


def read(db, user, patient):  # noqa: ANN001, ANN201
    return service.require_patient_access(db, user=user, patient_id=patient.id, action="patient.read",
                                          client_address="10.1.2.3")


def test_clinician_sees_a_resident_registered_at_their_organisation(db, county) -> None:
    grant = read(db, county.doctor_a, county.resident_a)
    db.commit()
    assert grant.purpose == "registered_here"
    [row] = audit_rows(db, action="patient.read")
    assert (row.username, row.patient_id, row.outcome, row.purpose, row.client_address) == (
        "doc_a", county.resident_a.id, "ok", "registered_here", "10.1.2.3")
    assert row.organisation_id == county.a.id and row.role == "clinician"


def test_clinician_is_refused_another_townships_resident_and_the_refusal_is_audited(db, county) -> None:
    with pytest.raises(NeedToKnowDenied) as refused:
        read(db, county.doctor_a, county.resident_b)
    assert refused.value.code == "no_care_relationship" and refused.value.status_code == 403
    assert refused.value.patient_id == county.resident_b.id
    db.rollback()  # as the request would: the refusal was committed on its own
    [row] = audit_rows(db, action="patient.read")
    assert (row.username, row.patient_id, row.outcome) == ("doc_a", county.resident_b.id, "denied")


def test_family_doctor_team_panel_is_a_care_relationship(db, county) -> None:
    team = f.family_team(db, organisation=county.a, members=[county.doctor_a])
    f.on_panel(db, team=team, patient=county.resident_b)
    db.commit()
    assert read(db, county.doctor_a, county.resident_b).purpose == "team_panel"
    # Another doctor at the same centre who is not on that team still has no relationship.
    colleague = f.user(db, organisation=county.a, username="doc_a2")
    db.commit()
    with pytest.raises(NeedToKnowDenied):
        read(db, colleague, county.resident_b)


def test_break_glass_needs_a_real_reason(db, county) -> None:
    with pytest.raises(InvalidInput) as short:
        service.break_glass(db, user=county.doctor_a, patient_id=county.resident_b.id, reason="急诊 ")
    assert short.value.status_code == 422
    assert [e["field"] for e in short.value.field_errors] == ["reason"]
    assert db.execute(select(BreakGlassGrant)).first() is None


def test_break_glass_opens_access_for_a_limited_time_and_is_flagged(db, county) -> None:
    grant = service.break_glass(db, user=county.doctor_a, patient_id=county.resident_b.id,
                                reason="患者昏迷送至本院急诊，需查看既往病史和过敏史", client_address="10.1.2.3")
    db.commit()
    assert grant.reviewed_at is None
    assert timedelta(minutes=119) < grant.expires_at - utcnow() <= timedelta(minutes=120)
    assert read(db, county.doctor_a, county.resident_b).purpose == "break_glass"
    db.commit()
    [opened] = audit_rows(db, action="access.break_glass")
    assert opened.purpose == "break_glass" and "昏迷" in opened.detail["reason"]
    [used] = audit_rows(db, action="patient.read", patient_id=county.resident_b.id)
    assert used.purpose == "break_glass" and used.outcome == "ok"
    assert [g.id for g in service.list_unreviewed_break_glass(db)] == [grant.id]
    # The grant is personal: a colleague gets nothing from it.
    colleague = f.user(db, organisation=county.a, username="doc_a2")
    db.commit()
    with pytest.raises(NeedToKnowDenied):
        read(db, colleague, county.resident_b)


def test_expired_break_glass_no_longer_opens_the_record(db, county) -> None:
    grant = service.break_glass(db, user=county.doctor_a, patient_id=county.resident_b.id,
                                reason="夜间急诊，患者无法陈述病史")
    grant.expires_at = utcnow() - timedelta(seconds=1)
    db.commit()
    with pytest.raises(NeedToKnowDenied):
        read(db, county.doctor_a, county.resident_b)


def test_health_bureau_never_sees_a_named_record(db, county) -> None:
    bureau = f.user(db, role=Role.HEALTH_BUREAU, organisation=county.a, username="bureau")
    db.commit()
    for resident in (county.resident_a, county.resident_b):
        with pytest.raises(AccessDenied) as refused:
            read(db, bureau, resident)
        assert not isinstance(refused.value, NeedToKnowDenied)
    with pytest.raises(AccessDenied):
        service.break_glass(db, user=bureau, patient_id=county.resident_b.id, reason="想看一下这个人的病历资料")
    db.rollback()
    assert [r.outcome for r in audit_rows(db, username="bureau")] == ["denied", "denied"]


def test_a_patient_account_sees_only_its_own_record(db, county) -> None:
    me = f.user(db, role=Role.PATIENT, patient=county.resident_a, username="zhangsan")
    db.commit()
    assert read(db, me, county.resident_a).purpose == "own_record"
    with pytest.raises(AccessDenied):
        read(db, me, county.resident_b)
    with pytest.raises(AccessDenied):
        service.break_glass(db, user=me, patient_id=county.resident_b.id, reason="我想看看邻居的病历记录")


def test_org_admin_sees_residents_registered_at_their_organisation_only(db, county) -> None:
    admin = f.user(db, role=Role.ORG_ADMIN, organisation=county.a, username="admin_a")
    db.commit()
    assert read(db, admin, county.resident_a).purpose == "registered_here"
    with pytest.raises(AccessDenied):
        read(db, admin, county.resident_b)


def test_reviewing_break_glass(db, county) -> None:
    grant = service.break_glass(db, user=county.doctor_a, patient_id=county.resident_b.id,
                                reason="转诊前需核对既往检查结果")
    admin_a = f.user(db, role=Role.ORG_ADMIN, organisation=county.a, username="admin_a")
    admin_b = f.user(db, role=Role.ORG_ADMIN, organisation=county.b, username="admin_b")
    db.commit()
    assert service.list_unreviewed_break_glass(db, organisation_id=county.b.id) == []
    with pytest.raises(AccessDenied):
        service.review_break_glass(db, grant_id=grant.id, reviewer=admin_b, outcome="justified", note="")
    with pytest.raises(AccessDenied):
        service.review_break_glass(db, grant_id=grant.id, reviewer=county.doctor_b, outcome="justified", note="")
    with pytest.raises(InvalidInput):
        service.review_break_glass(db, grant_id=grant.id, reviewer=admin_a, outcome="fine", note="")
    service.review_break_glass(db, grant_id=grant.id, reviewer=admin_a, outcome="unjustified", note="未见急诊记录")
    db.commit()
    assert service.list_unreviewed_break_glass(db) == []
    [reviewed] = service.list_recently_reviewed_break_glass(db, organisation_id=county.a.id)
    assert (reviewed.review_outcome, reviewed.reviewed_by_user_id) == ("unjustified", admin_a.id)


def test_a_refusal_after_an_allowed_read_in_one_transaction_does_not_hang(db, county) -> None:
    """A request that read one patient holds the audit append lock; refusing the next must not wait
    for that request to end (PostgreSQL would wait forever, SQLite until its busy timeout)."""
    outcome: dict[str, object] = {}

    def request() -> None:
        session = get_sessionmaker()()
        try:
            doctor = session.get(type(county.doctor_a), county.doctor_a.id)
            read(session, doctor, county.resident_a)
            try:
                read(session, doctor, county.resident_b)
            except NeedToKnowDenied as exc:
                outcome["refused"] = exc
            session.rollback()
        except Exception as exc:  # noqa: BLE001 - reported by the assertion below
            outcome["error"] = exc
        finally:
            session.close()

    worker = threading.Thread(target=request, daemon=True)
    worker.start()
    worker.join(timeout=20)
    assert not worker.is_alive(), "the refusal waited on the request's own audit lock"
    assert "error" not in outcome and "refused" in outcome
    rows = audit_rows(db, action="patient.read")
    # The allowed read rolled back with its request; the refusal was kept.
    assert [(r.patient_id, r.outcome) for r in rows] == [(county.resident_b.id, "denied")]
    assert verify_chain(db) == (1, [])
