"""The critical-result loop (危急值): flagged at signature, told at once on every channel, escalated by durable
timers to the department head and then the 医务科 until someone acknowledges with the telephone call."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

import pytest
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from healthrelay.accounts.models import Role, User
from healthrelay.audit.models import AuditEvent
from healthrelay.core import timers
from healthrelay.core.db import get_sessionmaker, utcnow
from healthrelay.core.errors import AccessDenied, Conflict, InvalidInput, NotFound
from healthrelay.core.timers import Timer
from healthrelay.directory.models import Department, Post, TitleGrade
from healthrelay.imaging.models import ImagingStudy, Modality
from healthrelay.notifications.models import Notification
from healthrelay.teleconsult import critical, reports, service
from healthrelay.teleconsult.models import (
    ConsultRequest,
    ConsultState,
    CriticalResult,
    CriticalResultEvent,
    CriticalState,
    TeleconsultSetting,
)
from tests.teleconsult.conftest import Requests, TeleWorld, make_request, staff

CRITICAL = reports.ReportInput(
    technique="头颅 CT 平扫 / non-contrast head CT",
    findings="左侧额颞部新月形高密度影，厚约 15 mm，中线右移 8 mm / 15 mm acute subdural haematoma, 8 mm shift",
    impression="左侧急性硬膜下血肿伴脑疝趋势 / acute left subdural haematoma with midline shift",
    critical=True, critical_finding="急性硬膜下血肿，中线移位 8 mm / acute SDH, midline shift 8 mm")


@dataclass
class Town:
    head: User  # head of the requester's department at the township
    admin: User  # the township's 医务科


def town_chain(db: Session, tele: TeleWorld, *, with_head: bool = True, with_admin: bool = True) -> Town | None:
    """The requester works in the township's 全科 (headed by 林主任); the township has a 医务科 admin."""
    dept = Department(organisation_id=tele.town.id, code="QK", name="全科")
    db.add(dept)
    db.flush()
    head = staff(db, organisation=tele.town, username="town_head", display_name="林主任", grade=TitleGrade.CHIEF,
                 department=dept, role=Role.CLINICIAN)
    if with_head:
        dept.head_practitioner_id = head.practitioner_id
    db.execute(update(Post).where(Post.id == tele.requester.post_id).values(department_id=dept.id))
    admin = staff(db, organisation=tele.town, username="town_ywk", display_name="医务科冯", role=Role.ORG_ADMIN,
                  grade=TitleGrade.STAFF) if with_admin else head
    tele.requester.email, tele.requester.mobile = "zheng@town.example", "13900001111"
    tele.requester.wechat_openid = "oWx_zheng_0001"
    db.commit()
    return Town(head=head, admin=admin)


def flag(db: Session, tele: TeleWorld, request: ConsultRequest, *, by: User | None = None) -> CriticalResult:
    reports.sign(db, request_id=request.id, by=by or tele.senior, data=CRITICAL)
    db.commit()
    result = critical.for_request(db, request_id=request.id)
    assert result is not None
    return result


def fire(db: Session, result: CriticalResult) -> list[int]:
    """Let the pending escalation fall due, run timers like a worker, return the levels escalated to."""
    db.execute(update(Timer).where(Timer.dedupe_key.like(f"critical:{result.id}:escalate:%"),
                                   Timer.fired_at.is_(None)).values(due_at=utcnow() - timedelta(seconds=1)))
    db.commit()
    before = {e.id for e in critical.events_of(db, result)}
    timers.run_due(get_sessionmaker(), runner="test")
    db.expire_all()
    return [e.level for e in critical.events_of(db, result) if e.id not in before and e.kind == "escalated"]


def _kinds(db: Session, result: CriticalResult) -> list[str]:
    return [e.kind for e in critical.events_of(db, result)]


def _ack(**changes: object) -> critical.AckInput:
    values: dict[str, object] = dict(call_at=utcnow() - timedelta(minutes=1), call_number="0710-1234567",
                                     call_spoken_to="郑医生（申请医师）", call_read_back=True,
                                     action_taken="已通知家属，联系 120 转县医院神经外科 / transferred to neurosurgery")
    values.update(changes)
    return critical.AckInput(**values)  # type: ignore[arg-type]


def test_a_trainees_critical_finding_is_told_at_once_on_every_channel(
        db: Session, tele: TeleWorld, requests: Requests) -> None:
    town_chain(db, tele)
    request = requests.claimed_trainee
    result = flag(db, tele, request, by=tele.trainee)
    db.refresh(request)
    # No waiting for the co-signature: the loop opens at the trainee's signature.
    assert request.state == ConsultState.PRELIMINARY
    assert result.state == CriticalState.OPEN and result.level == 0 and result.notify_user_id == tele.requester.id
    assert result.finding == CRITICAL.critical_finding and result.flagged_by_user_id == tele.trainee.id
    assert result.ack_due_at - result.flagged_at == timedelta(minutes=15)
    note = db.execute(select(Notification).where(Notification.user_id == tele.requester.id,
                                                 Notification.kind == "teleconsult.critical")).scalar_one()
    assert note.urgent and note.link == f"/teleconsult/critical/{result.id}" and request.number in note.title
    notified = [e for e in critical.events_of(db, result) if e.kind == "notified"]
    assert {e.detail["channel"] for e in notified} == {"inbox", "live", "email", "sms", "wechat"}
    assert all(e.detail["user_id"] == tele.requester.id and e.at is not None for e in notified)
    assert _kinds(db, result)[0] == "flagged"
    timer = db.execute(select(Timer).where(Timer.dedupe_key == f"critical:{result.id}:escalate:1")).scalar_one()
    assert timer.due_at == result.ack_due_at
    # The co-signature does not open a second loop.
    reports.cosign(db, request_id=request.id, by=tele.senior)
    db.commit()
    assert db.execute(select(func.count()).select_from(CriticalResult)).scalar() == 1


def test_the_acknowledgement_time_is_data(db: Session, tele: TeleWorld, requests: Requests) -> None:
    db.execute(update(TeleconsultSetting).where(TeleconsultSetting.key == "critical_ack_minutes").values(value=5))
    db.commit()
    result = flag(db, tele, requests.claimed_senior)
    assert result.ack_due_at - result.flagged_at == timedelta(minutes=5)


def test_unacknowledged_it_escalates_to_the_head_then_medical_affairs_again_and_again(
        db: Session, tele: TeleWorld, requests: Requests) -> None:
    town = town_chain(db, tele)
    result = flag(db, tele, requests.claimed_senior)
    timers.run_due(get_sessionmaker(), runner="test")
    assert [e.kind for e in critical.events_of(db, result) if e.kind == "escalated"] == []  # not yet due
    assert fire(db, result) == [1]
    db.refresh(result)
    assert result.level == 1 and result.state == CriticalState.OPEN
    head_note = db.execute(select(Notification).where(Notification.user_id == town.head.id)).scalar_one()
    assert head_note.urgent and "科主任" in head_note.title
    level2 = db.execute(select(Timer).where(Timer.dedupe_key == f"critical:{result.id}:escalate:2")).scalar_one()
    assert timedelta(minutes=14) < level2.due_at - utcnow() <= timedelta(minutes=15)
    assert fire(db, result) == [2]
    assert fire(db, result) == [3]  # the 医务科 hears again every interval
    db.refresh(result)
    assert result.level == 3 and result.state == CriticalState.OPEN  # never closes by itself
    admin_notes = db.execute(select(Notification).where(Notification.user_id == town.admin.id)).scalars().all()
    assert len(admin_notes) == 2 and all(n.urgent for n in admin_notes)
    escalated = [e for e in critical.events_of(db, result) if e.kind == "escalated"]
    assert [e.detail["user_ids"] for e in escalated] == [[town.head.id], [town.admin.id], [town.admin.id]]
    assert db.execute(select(func.count()).where(AuditEvent.action.like("teleconsult.critical.escalate.%"))
                      ).scalar() == 3


def test_without_a_department_head_level_one_is_skipped(db: Session, tele: TeleWorld, requests: Requests) -> None:
    town = town_chain(db, tele, with_head=False)
    result = flag(db, tele, requests.claimed_senior)
    assert fire(db, result) == [2]
    kinds = _kinds(db, result)
    assert "escalation_skipped" in kinds and kinds.index("escalation_skipped") < kinds.index("escalated")
    assert db.execute(select(Notification.user_id).where(Notification.kind == "teleconsult.critical",
                                                         Notification.user_id == town.admin.id)).scalar()


def test_without_a_medical_affairs_office_the_centres_hears_and_may_acknowledge(
        db: Session, tele: TeleWorld, requests: Requests) -> None:
    town_chain(db, tele, with_head=False, with_admin=False)
    result = flag(db, tele, requests.claimed_senior)
    assert fire(db, result) == [2]
    escalated = [e for e in critical.events_of(db, result) if e.kind == "escalated"][0]
    assert escalated.detail["user_ids"] == [tele.county_admin.id]
    assert critical.can_acknowledge(db, user=tele.county_admin, result=result)
    critical.acknowledge(db, critical_id=result.id, by=tele.county_admin, data=_ack())
    db.commit()
    assert result.state == CriticalState.ACKNOWLEDGED


def test_acknowledging_needs_the_whole_call_record(db: Session, tele: TeleWorld, requests: Requests) -> None:
    result = flag(db, tele, requests.claimed_senior)
    with pytest.raises(InvalidInput) as empty:
        critical.acknowledge(db, critical_id=result.id, by=tele.requester, data=critical.AckInput())
    assert [e["field"] for e in empty.value.field_errors] == [
        "call_at", "call_number", "call_spoken_to", "call_read_back", "action_taken"]
    db.rollback()
    with pytest.raises(InvalidInput) as future:
        critical.acknowledge(db, critical_id=result.id, by=tele.requester,
                             data=_ack(call_at=utcnow() + timedelta(hours=1), call_number="call me"))
    assert {e["field"] for e in future.value.field_errors} == {"call_at", "call_number"}
    db.rollback()
    db.refresh(result)
    assert result.state == CriticalState.OPEN and "acknowledged" not in _kinds(db, result)


def test_only_parties_acknowledge(db: Session, tele: TeleWorld, requests: Requests) -> None:
    result = flag(db, tele, requests.claimed_senior)
    for stranger in (tele.outsider_doctor, tele.town_b_doctor):
        with pytest.raises(NotFound):
            critical.acknowledge(db, critical_id=result.id, by=stranger, data=_ack())
        db.rollback()
    # The centre sees the loop but does not acknowledge its own finding.
    with pytest.raises(AccessDenied):
        critical.acknowledge(db, critical_id=result.id, by=tele.trainee, data=_ack())
    db.rollback()


def test_a_colleague_acknowledges_and_the_loop_closes(db: Session, tele: TeleWorld, requests: Requests) -> None:
    town_chain(db, tele)
    result = flag(db, tele, requests.claimed_senior)
    assert fire(db, result) == [1]
    call_at = utcnow() - timedelta(minutes=2)
    done = critical.acknowledge(db, critical_id=result.id, by=tele.town_colleague,
                                data=_ack(call_at=call_at, call_read_back=False))
    db.commit()
    db.refresh(done)
    assert done.state == CriticalState.ACKNOWLEDGED and done.acknowledged_by_user_id == tele.town_colleague.id
    assert done.call_number == "0710-1234567" and done.call_spoken_to == "郑医生（申请医师）"
    assert done.call_read_back is False and done.call_at == call_at and done.action_taken.startswith("已通知家属")
    ack = [e for e in critical.events_of(db, result) if e.kind == "acknowledged"]
    assert len(ack) == 1 and ack[0].by_user_id == tele.town_colleague.id and ack[0].level == 1
    # The centre hears who acknowledged.
    assert db.execute(select(Notification).where(Notification.user_id == tele.senior.id,
                                                 Notification.kind == "teleconsult.critical_acknowledged")).scalar()
    # Escalation stops.
    assert fire(db, result) == []
    assert db.execute(select(Timer.cancelled_at).where(
        Timer.dedupe_key == f"critical:{result.id}:escalate:2")).scalar() is not None
    with pytest.raises(Conflict):
        critical.acknowledge(db, critical_id=result.id, by=tele.requester, data=_ack())


def test_a_routed_request_tells_the_modality_contact_else_the_township_clinicians(
        db: Session, tele: TeleWorld, requests: Requests) -> None:
    routed = requests.claimed_senior
    db.execute(update(ConsultRequest).where(ConsultRequest.id == routed.id).values(requested_by_user_id=None))
    ct = Modality(ae_title="DS_CT01", organisation_id=tele.town.id, modality_type="CT", name="东山 CT",
                  contact_user_id=tele.town_colleague.id)
    db.add(ct)
    db.flush()
    db.add(ImagingStudy(study_instance_uid="1.2.826.0.1.3680043.8.498.1", organisation_id=tele.town.id,
                        modality_id=ct.id, consult_request_id=routed.id, patient_id=tele.patient.id))
    db.commit()
    result = flag(db, tele, routed)
    assert result.notify_user_id == tele.town_colleague.id

    nobody = make_request(db, tele)
    service.claim(db, by=tele.senior, request_id=nobody.id)
    db.execute(update(ConsultRequest).where(ConsultRequest.id == nobody.id).values(requested_by_user_id=None))
    db.commit()
    second = flag(db, tele, nobody)
    told = set(db.execute(select(Notification.user_id).where(
        Notification.resource == f"critical:{second.id}")).scalars())
    assert told == {tele.requester.id, tele.town_colleague.id}


def test_the_report_of_critical_results_and_their_times(db: Session, tele: TeleWorld) -> None:
    made = []
    for _ in range(4):
        req = make_request(db, tele)
        service.claim(db, by=tele.senior, request_id=req.id)
        made.append(flag(db, tele, req))
    fast, slow, still_open, long_ago = made
    for result, minutes in ((fast, 10), (slow, 30)):
        critical.acknowledge(db, critical_id=result.id, by=tele.requester, data=_ack())
        db.execute(update(CriticalResult).where(CriticalResult.id == result.id).values(
            acknowledged_at=result.flagged_at + timedelta(minutes=minutes)))
    db.execute(update(CriticalResult).where(CriticalResult.id == still_open.id).values(
        ack_due_at=utcnow() - timedelta(minutes=5)))
    db.execute(update(CriticalResult).where(CriticalResult.id == long_ago.id).values(
        flagged_at=utcnow() - timedelta(days=40)))
    db.commit()
    start, end = critical.default_period()
    rows, summary = critical.report(db, user=tele.county_admin, start=start, end=end)
    assert [r.result.id for r in rows][0] == still_open.id and rows[0].overdue
    assert {r.result.id for r in rows} == {fast.id, slow.id, still_open.id}
    assert (summary.total, summary.open, summary.overdue, summary.acknowledged) == (3, 1, 1, 2)
    assert summary.median_minutes == pytest.approx(20) and summary.p90_minutes == pytest.approx(28)
    by_id = {r.result.id: r for r in rows}
    assert by_id[fast.id].minutes_to_ack == pytest.approx(10) and by_id[fast.id].first_notified_at is not None
    assert by_id[fast.id].inviting == tele.town.name
    # Each organisation sees its own; strangers see nothing.
    assert len(critical.report(db, user=tele.requester, start=start, end=end)[0]) == 3
    assert critical.report(db, user=tele.town_b_doctor, start=start, end=end)[0] == []
    assert critical.report(db, user=tele.outsider_doctor, start=start, end=end,
                           organisation_id=tele.town.id)[0] == []
    with pytest.raises(InvalidInput):
        critical.report(db, user=tele.county_admin, start=end, end=start)


def test_percentiles() -> None:
    assert critical.percentile([], 90) is None
    assert critical.percentile([7.0], 90) == 7.0
    assert critical.percentile([1, 2, 3, 4, 5, 6, 7, 8, 9, 10], 90) == pytest.approx(9.1)


def test_every_step_is_timestamped_in_order(db: Session, tele: TeleWorld, requests: Requests) -> None:
    town_chain(db, tele)
    result = flag(db, tele, requests.claimed_senior)
    fire(db, result)
    fire(db, result)
    critical.acknowledge(db, critical_id=result.id, by=tele.requester, data=_ack())
    db.commit()
    events = db.execute(select(CriticalResultEvent).where(CriticalResultEvent.critical_result_id == result.id)
                        .order_by(CriticalResultEvent.id)).scalars().all()
    kinds = [e.kind for e in events]
    assert kinds[0] == "flagged" and kinds[-1] == "acknowledged"
    assert [(e.kind, e.level) for e in events if e.kind == "escalated"] == [("escalated", 1), ("escalated", 2)]
    assert all(a.at <= b.at for a, b in zip(events, events[1:], strict=False))


def test_two_people_acknowledging_at_once_make_one_acknowledgement(db: Session, tele: TeleWorld,
                                                                   requests: Requests) -> None:
    import threading

    result = flag(db, tele, requests.claimed_senior)
    barrier = threading.Barrier(2)
    outcomes: dict[str, str] = {}

    def attempt(username: str) -> None:
        with get_sessionmaker()() as s:
            who = s.execute(select(User).where(User.username == username)).scalar_one()
            barrier.wait()
            try:
                critical.acknowledge(s, critical_id=result.id, by=who, data=_ack(call_spoken_to=username))
                s.commit()
                outcomes[username] = "won"
            except Conflict:
                s.rollback()
                outcomes[username] = "conflict"

    threads = [threading.Thread(target=attempt, args=(u,)) for u in ("town_doc", "town_doc2")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert sorted(outcomes.values()) == ["conflict", "won"]
    db.expire_all()
    acknowledged = [e for e in critical.events_of(db, result) if e.kind == "acknowledged"]
    winner = next(u for u, o in outcomes.items() if o == "won")
    assert len(acknowledged) == 1 and db.get(CriticalResult, result.id).call_spoken_to == winner
