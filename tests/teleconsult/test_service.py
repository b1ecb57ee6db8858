"""Consultation requests: creation rules, the state machine, claims, routing, the worklist, escalation and the
care relationship, against a real database."""

from __future__ import annotations

import re
import threading
from datetime import timedelta

import pytest
from pydicom.uid import generate_uid
from sqlalchemy import func, select, text, update
from sqlalchemy.orm import Session

from healthrelay.access.service import decide
from healthrelay.audit.models import AuditEvent
from healthrelay.core.db import get_sessionmaker, utcnow
from healthrelay.core.errors import AccessDenied, Conflict, InvalidInput, NeedToKnowDenied
from healthrelay.core.timers import Timer
from healthrelay.imaging.models import ImagingInstance, ImagingSeries, ImagingStudy, PatientMatch
from healthrelay.notifications.models import Notification
from healthrelay.teleconsult import flows as flows  # noqa: F401 - registers the escalation handler
from healthrelay.teleconsult import service
from healthrelay.teleconsult.models import (
    ConsultDeadline,
    ConsultKind,
    ConsultRequest,
    ConsultState,
    ConsultTransition,
    Priority,
    ReadingCentre,
    RoutingRule,
)
from tests import factories as f
from tests.conftest import PG_URL
from tests.teleconsult.conftest import (
    Requests,
    TeleWorld,
    make_request,
    move_due_into_past,
    request_input,
)


def _fields(exc: pytest.ExceptionInfo) -> set[str]:
    return {e["field"] for e in exc.value.field_errors}


def _count(db: Session, model: type) -> int:
    return db.execute(select(func.count()).select_from(model)).scalar_one()


def _notes(db: Session, user_id: int, kind: str | None = None) -> list[Notification]:
    q = select(Notification).where(Notification.user_id == user_id)
    if kind is not None:
        q = q.where(Notification.kind == kind)
    return list(db.execute(q.order_by(Notification.id)).scalars())


def _study(db: Session, w: TeleWorld, *, patient_id: int | None = None, accession: str = "", modality: str = "CT",
           organisation_id: int | None = None) -> ImagingStudy:
    study = ImagingStudy(study_instance_uid=generate_uid(), patient_id=patient_id,
                         patient_match=PatientMatch.MATCHED if patient_id else PatientMatch.UNMATCHED,
                         organisation_id=organisation_id or w.town.id, accession_number=accession,
                         modalities_in_study=modality, description="胸部平扫")
    db.add(study)
    db.flush()
    db.add(ImagingSeries(study_id=study.id, series_instance_uid=generate_uid(), modality=modality, series_number=1))
    db.flush()
    return study


# --- creating ----------------------------------------------------------------------------------------

def test_a_request_gets_a_number_a_deadline_from_data_and_the_centre_hears(db: Session, tele: TeleWorld) -> None:
    before = utcnow()
    request = make_request(db, tele, priority=Priority.URGENT)
    assert re.fullmatch(r"YC\d{8}-\d{4}", request.number) and request.number.endswith(f"-{request.id:04d}")
    assert request.state == ConsultState.REQUESTED
    assert timedelta(minutes=119) < request.report_due_at - before <= timedelta(minutes=121)
    assert request.inviting_organisation_id == tele.town.id and request.invited_organisation_id == tele.county.id
    assert request.consent_kind == "written" and request.consent_recorded_by_user_id == tele.requester.id
    assert request.consent_at is not None and request.created_via == "web"
    assert [(t.action, t.to_state) for t in request.transitions] == [("create", "requested")]
    # Every reader of the centre hears, urgently, without the patient's name.
    for reader in (tele.head, tele.senior, tele.trainee):
        [note] = _notes(db, reader.id, "teleconsult.incoming")
        assert note.urgent and request.number in note.title and tele.patient.name not in note.title + note.body
    assert _notes(db, tele.county_doctor.id) == []  # not of the imaging department
    # The escalation clock runs from now to the deadline.
    timer = db.execute(select(Timer).where(Timer.dedupe_key == f"consult:{request.id}:escalate:1")).scalar_one()
    assert timer.due_at == request.report_due_at


def test_routine_requests_reach_the_centre_quietly(db: Session, tele: TeleWorld) -> None:
    make_request(db, tele, priority=Priority.ROUTINE)
    [note] = _notes(db, tele.senior.id, "teleconsult.incoming")
    assert not note.urgent


def test_deadlines_are_data_an_alliance_can_change(db: Session, tele: TeleWorld) -> None:
    db.execute(update(ConsultDeadline).where(ConsultDeadline.priority == "routine").values(report_minutes=480))
    db.commit()
    request = make_request(db, tele, priority=Priority.ROUTINE)
    assert timedelta(minutes=479) < request.report_due_at - utcnow() <= timedelta(minutes=480)
    emergency = make_request(db, tele, priority=Priority.EMERGENCY)
    assert timedelta(minutes=29) < emergency.report_due_at - utcnow() <= timedelta(minutes=30)


def test_every_problem_is_named_at_once_and_nothing_is_written(db: Session, tele: TeleWorld) -> None:
    with pytest.raises(InvalidInput) as exc:
        service.create_request(db, by=tele.requester, data=request_input(
            tele, consent_kind="", clinical_question="  ", wanted_grade="professor", wanted_specialty_id=99999))
    assert _fields(exc) == {"consent_kind", "clinical_question", "wanted_grade", "wanted_specialty_id"}
    assert "written consent" in [e for e in exc.value.field_errors if e["field"] == "consent_kind"][0]["message"]
    db.rollback()
    assert _count(db, ConsultRequest) == 0 and _count(db, ConsultTransition) == 0


def test_emergency_may_go_first_with_a_reason_but_nothing_else_may(db: Session, tele: TeleWorld) -> None:
    with pytest.raises(InvalidInput) as exc:
        service.create_request(db, by=tele.requester, data=request_input(
            tele, priority=Priority.URGENT, consent_kind="emergency_waiver", consent_note="昏迷，家属未到"))
    assert _fields(exc) == {"consent_kind"}
    with pytest.raises(InvalidInput) as exc:
        service.create_request(db, by=tele.requester, data=request_input(
            tele, priority=Priority.EMERGENCY, consent_kind="emergency_waiver"))
    assert _fields(exc) == {"consent_note"}
    db.rollback()
    request = make_request(db, tele, priority=Priority.EMERGENCY, consent_kind="emergency_waiver",
                           consent_note="昏迷，家属未到")
    assert request.consent_kind == "emergency_waiver"
    assert request.transitions[0].reason == "昏迷，家属未到"
    with pytest.raises(InvalidInput) as exc:
        service.create_request(db, by=tele.requester, data=request_input(tele, consent_kind="verbal"))
    assert _fields(exc) == {"consent_kind"}


def test_the_centre_must_be_in_the_requesters_alliances_and_read_that_kind(db: Session, tele: TeleWorld) -> None:
    foreign = ReadingCentre(code="FOREIGN", name="邻县影像中心", kind=ConsultKind.IMAGING,
                            organisation_id=tele.outsider.id)
    db.add(foreign)
    db.commit()
    for centre_id, kind, field in ((foreign.id, ConsultKind.IMAGING, "centre_id"), (99999, ConsultKind.IMAGING,
                                   "centre_id"), (tele.ecg_centre.id, ConsultKind.IMAGING, "kind")):
        with pytest.raises(InvalidInput) as exc:
            service.create_request(db, by=tele.requester, data=request_input(tele, centre_id=centre_id, kind=kind))
        assert _fields(exc) == {field}
    # The county cannot invite its own centre: a remote consultation is between two institutions.
    with pytest.raises(InvalidInput) as exc:
        service.create_request(db, by=tele.county_doctor, data=request_input(tele))
    assert _fields(exc) == {"centre_id"}
    ecg = make_request(db, tele, centre_id=tele.ecg_centre.id, kind=ConsultKind.ECG)
    assert ecg.kind == ConsultKind.ECG


def test_the_patient_goes_through_need_to_know(db: Session, tele: TeleWorld) -> None:
    with pytest.raises(NeedToKnowDenied):
        service.create_request(db, by=tele.town_b_doctor, data=request_input(tele))
    db.rollback()
    assert _count(db, ConsultRequest) == 0
    denied = db.execute(select(AuditEvent).where(AuditEvent.action == "teleconsult.create",
                                                 AuditEvent.outcome == "denied")).scalars().all()
    assert [e.user_id for e in denied] == [tele.town_b_doctor.id]


# --- the centre's answer, the requester's cancel --------------------------------------------------------

def test_accepting_tells_the_requester_and_a_second_accept_is_409_naming_the_state(
        db: Session, tele: TeleWorld) -> None:
    request = make_request(db, tele)
    service.accept(db, by=tele.senior, request_id=request.id)
    db.commit()
    assert request.state == ConsultState.ACCEPTED and request.accepted_by_user_id == tele.senior.id
    [note] = _notes(db, tele.requester.id, "teleconsult.accepted")
    assert request.number in note.title and tele.patient.name not in note.body
    with pytest.raises(Conflict) as exc:
        service.accept(db, by=tele.trainee, request_id=request.id)
    assert "accepted" in exc.value.message and "已接收" in exc.value.message


def test_declining_needs_a_reason_tells_the_requester_and_stops_the_clock(db: Session, tele: TeleWorld) -> None:
    request = make_request(db, tele)
    with pytest.raises(InvalidInput) as exc:
        service.decline(db, by=tele.senior, request_id=request.id, reason=" ")
    assert _fields(exc) == {"reason"}
    with pytest.raises(AccessDenied):
        service.decline(db, by=tele.county_doctor, request_id=request.id, reason="不是本科室")
    service.decline(db, by=tele.senior, request_id=request.id, reason="图像层厚 10 mm，无法诊断，请重扫")
    db.commit()
    assert request.state == ConsultState.DECLINED and request.closed_at is not None
    assert request.decline_reason == "图像层厚 10 mm，无法诊断，请重扫"
    [note] = _notes(db, tele.requester.id, "teleconsult.declined")
    assert "无法诊断" in note.body and note.urgent  # urgent request: the answer is urgent too
    timer = db.execute(select(Timer).where(Timer.dedupe_key == f"consult:{request.id}:escalate:1")).scalar_one()
    assert timer.cancelled_at is not None


def test_only_the_inviting_side_cancels_and_only_before_a_report(db: Session, tele: TeleWorld,
                                                                 requests: Requests) -> None:
    with pytest.raises(AccessDenied):
        service.cancel(db, by=tele.senior, request_id=requests.claimed_senior.id, reason="不做了")
    with pytest.raises(InvalidInput):
        service.cancel(db, by=tele.requester, request_id=requests.claimed_senior.id, reason="")
    # A colleague at the township may cancel too; the reader holding the claim is told.
    service.cancel(db, by=tele.town_colleague, request_id=requests.claimed_senior.id, reason="患者已转院")
    db.commit()
    [note] = _notes(db, tele.senior.id, "teleconsult.cancelled")
    assert "患者已转院" in note.body
    reported = requests.accepted
    service.record_transition(db, reported, action="sign", to_state=ConsultState.REPORTED, by=tele.head)
    db.commit()
    with pytest.raises(Conflict) as exc:
        service.cancel(db, by=tele.requester, request_id=reported.id, reason="晚了")
    assert "reported" in exc.value.message


# --- claims ------------------------------------------------------------------------------------------

def test_claiming_a_requested_request_accepts_it(db: Session, tele: TeleWorld) -> None:
    request = make_request(db, tele)
    service.claim(db, by=tele.trainee, request_id=request.id)
    db.commit()
    assert request.state == ConsultState.ACCEPTED and request.claimed_by_user_id == tele.trainee.id
    assert request.accepted_by_user_id == tele.trainee.id and request.claimed_at is not None
    assert [(t.action, t.from_state, t.to_state) for t in request.transitions][-1] == ("claim", "requested",
                                                                                       "accepted")
    assert _notes(db, tele.requester.id, "teleconsult.accepted")
    # Claiming it again is harmless; nothing new is recorded.
    service.claim(db, by=tele.trainee, request_id=request.id)
    assert len(request.transitions) == 2


def test_a_claim_held_by_someone_else_blocks_claims_and_reports_by_others(db: Session, tele: TeleWorld,
                                                                         requests: Requests) -> None:
    held = requests.claimed_senior
    with pytest.raises(Conflict) as exc:
        service.claim(db, by=tele.trainee, request_id=held.id)
    assert "钱医师" in exc.value.message
    service.require_claim_holder(db, user=tele.senior, request=held)
    with pytest.raises(AccessDenied) as denied:
        service.require_claim_holder(db, user=tele.trainee, request=held)
    assert "钱医师" in denied.value.message and denied.value.code == "claimed_by_other"
    with pytest.raises(AccessDenied) as denied:
        service.require_claim_holder(db, user=tele.senior, request=requests.accepted)
    assert denied.value.code == "not_claimed"
    with pytest.raises(AccessDenied):
        service.require_claim_holder(db, user=tele.county_doctor, request=held)


def test_only_the_centres_readers_claim(db: Session, tele: TeleWorld, requests: Requests) -> None:
    for outsider in (tele.county_doctor, tele.county_admin, tele.requester, tele.outsider_doctor):
        with pytest.raises(AccessDenied):
            service.claim(db, by=outsider, request_id=requests.accepted.id)
    for closed in (requests.declined, requests.cancelled):
        with pytest.raises(Conflict) as exc:
            service.claim(db, by=tele.senior, request_id=closed.id)
        assert str(closed.state) in exc.value.message


def test_release_puts_it_back_in_the_pool_with_a_reason(db: Session, tele: TeleWorld, requests: Requests) -> None:
    held = requests.claimed_trainee
    with pytest.raises(AccessDenied):
        service.release(db, by=tele.senior, request_id=held.id, reason="我来")
    with pytest.raises(InvalidInput):
        service.release(db, by=tele.trainee, request_id=held.id, reason="")
    service.release(db, by=tele.trainee, request_id=held.id, reason="下夜班，交给白班")
    db.commit()
    assert held.claimed_by_user_id is None and held.state == ConsultState.ACCEPTED
    last = held.transitions[-1]
    assert (last.action, last.reason, last.detail["released_user_id"]) == ("release", "下夜班，交给白班",
                                                                           tele.trainee.id)
    with pytest.raises(Conflict):
        service.release(db, by=tele.head, request_id=held.id, reason="再退一次")
    service.claim(db, by=tele.senior, request_id=held.id)
    # The head may take a claim back from a reader too.
    service.release(db, by=tele.head, request_id=held.id, reason="病例复杂，改由主任阅片")
    assert held.claimed_by_user_id is None


def test_the_head_or_the_medical_affairs_office_reassigns_to_a_reader_of_the_centre(
        db: Session, tele: TeleWorld, requests: Requests) -> None:
    held = requests.claimed_trainee
    with pytest.raises(AccessDenied):
        service.reassign(db, by=tele.senior, request_id=held.id, to_user_id=tele.senior.id)
    with pytest.raises(InvalidInput) as exc:
        service.reassign(db, by=tele.head, request_id=held.id, to_user_id=tele.county_doctor.id)
    assert _fields(exc) == {"to_user_id"}
    service.reassign(db, by=tele.head, request_id=held.id, to_user_id=tele.senior.id, reason="疑难病例")
    db.commit()
    assert held.claimed_by_user_id == tele.senior.id
    assert held.transitions[-1].detail == {"from_user_id": tele.trainee.id, "to_user_id": tele.senior.id}
    [note] = _notes(db, tele.senior.id, "teleconsult.assigned")
    assert held.number in note.title
    # The county's 医务科 may reassign a request still waiting for an answer: it accepts it.
    waiting = requests.requested
    service.reassign(db, by=tele.county_admin, request_id=waiting.id, to_user_id=tele.trainee.id)
    assert waiting.state == ConsultState.ACCEPTED and waiting.claimed_by_user_id == tele.trainee.id


def test_reader_grades(db: Session, tele: TeleWorld, requests: Requests) -> None:
    assert service.is_senior(db, user=tele.senior) and service.is_senior(db, user=tele.head)
    assert not service.is_trainee(db, user=tele.senior)
    assert service.is_trainee(db, user=tele.trainee) and not service.is_senior(db, user=tele.trainee)
    assert not service.is_senior(db, user=tele.county_admin) and not service.is_trainee(db, user=tele.county_admin)
    request = requests.accepted
    assert all(service.is_centre_reader(db, user=u, request=request) for u in (tele.head, tele.senior, tele.trainee))
    assert not any(service.is_centre_reader(db, user=u, request=request)
                   for u in (tele.county_doctor, tele.county_admin, tele.requester, tele.outsider_doctor))


# --- record_transition ---------------------------------------------------------------------------------

def test_record_transition_refuses_moves_outside_the_table_and_stale_states(db: Session, tele: TeleWorld,
                                                                            requests: Requests) -> None:
    with pytest.raises(Conflict) as exc:
        service.record_transition(db, requests.declined, action="accept", to_state=ConsultState.ACCEPTED,
                                  by=tele.senior)
    assert "declined" in exc.value.message
    # Someone else moved the request since it was read: the caller's view is stale.
    stale = requests.claimed_senior
    db.execute(update(ConsultRequest).where(ConsultRequest.id == stale.id)
               .values(state=ConsultState.CANCELLED).execution_options(synchronize_session=False))
    with pytest.raises(Conflict) as exc:
        service.record_transition(db, stale, action="sign", to_state=ConsultState.REPORTED, by=tele.senior)
    assert "cancelled" in exc.value.message
    db.rollback()


def test_reporting_closes_the_request_and_cancels_the_escalation(db: Session, tele: TeleWorld,
                                                                 requests: Requests) -> None:
    request = requests.claimed_senior
    row = service.record_transition(db, request, action="sign", to_state=ConsultState.REPORTED, by=tele.senior,
                                    detail={"report_id": 1})
    db.commit()
    assert (row.from_state, row.to_state, row.by_user_id) == ("accepted", "reported", tele.senior.id)
    assert request.reported_at is not None and request.closed_at is not None
    timer = db.execute(select(Timer).where(Timer.dedupe_key == f"consult:{request.id}:escalate:1")).scalar_one()
    assert timer.cancelled_at is not None
    assert db.execute(select(func.count()).where(AuditEvent.action == "teleconsult.sign",
                                                 AuditEvent.resource == f"consult:{request.id}")).scalar() == 1


# --- worklist ---------------------------------------------------------------------------------------------

def test_worklist_is_by_deadline_overdue_first_emergency_first_at_a_tie(db: Session, tele: TeleWorld,
                                                                         requests: Requests) -> None:
    due = utcnow() + timedelta(minutes=20)
    tie_routine = make_request(db, tele, priority=Priority.ROUTINE)
    tie_emergency = make_request(db, tele, priority=Priority.EMERGENCY)
    for r in (tie_routine, tie_emergency):
        db.execute(update(ConsultRequest).where(ConsultRequest.id == r.id).values(report_due_at=due))
    move_due_into_past(db, requests.requested, minutes=90)  # a routine request, overdue
    rows = service.worklist(db, user=tele.senior)
    ids = [r.id for r in rows]
    assert ids[0] == requests.requested.id
    assert ids.index(tie_emergency.id) + 1 == ids.index(tie_routine.id)
    assert [r.report_due_at for r in rows] == sorted(r.report_due_at for r in rows)
    assert requests.declined.id not in ids and requests.cancelled.id not in ids
    assert set(ids) == {requests.requested.id, requests.accepted.id, requests.claimed_senior.id,
                        requests.claimed_trainee.id, requests.emergency.id, tie_routine.id, tie_emergency.id}
    assert service.is_overdue(rows[0]) and service.minutes_left(rows[0]) <= -90


def test_worklist_filters(db: Session, tele: TeleWorld, requests: Requests) -> None:
    def ids(**kw: object) -> set[int]:
        return {r.id for r in service.worklist(db, user=tele.senior, **kw)}  # type: ignore[arg-type]

    assert ids(mine=True) == {requests.claimed_senior.id}
    assert ids(unclaimed=True) == {requests.requested.id, requests.accepted.id, requests.emergency.id}
    assert ids(priority=Priority.EMERGENCY) == {requests.emergency.id}
    from_b = make_request(db, tele, by=tele.town_b_doctor, patient_id=f.patient(db, registered_at=tele.town_b).id)
    assert ids(inviting_organisation_id=tele.town_b.id) == {from_b.id}
    assert ids(kind=ConsultKind.ECG) == set()
    ct = _study(db, tele, patient_id=tele.patient.id, modality="CT")
    ct.consult_request_id = requests.accepted.id
    mr = _study(db, tele, patient_id=tele.patient.id, modality="MR")
    mr.consult_request_id = requests.requested.id
    db.commit()
    assert ids(modality="ct") == {requests.accepted.id}
    assert ids(modality="MR") == {requests.requested.id}


def test_worklist_is_for_the_centres_readers_and_managers_and_is_audited(db: Session, tele: TeleWorld,
                                                                          requests: Requests) -> None:
    for outsider in (tele.requester, tele.outsider_doctor):
        with pytest.raises(AccessDenied):
            service.worklist(db, user=outsider)
    # A county clinician outside the imaging department reads only for the ECG centre (no department).
    assert service.worklist(db, user=tele.county_doctor) == []
    with pytest.raises(AccessDenied):
        service.worklist(db, user=tele.county_doctor, centre_id=tele.centre.id)
    assert len(service.worklist(db, user=tele.county_admin)) == 5  # the 医务科 watches it too
    audited = db.execute(select(AuditEvent).where(AuditEvent.action == "teleconsult.worklist")
                         .order_by(AuditEvent.id.desc())).scalars().first()
    assert audited is not None and audited.detail["count"] == 5


def test_worklist_is_served_from_the_partial_index(db: Session, tele: TeleWorld, requests: Requests) -> None:
    query = service.worklist_query(service.WorklistFilter(centre_ids=[tele.centre.id]))
    compiled = query.compile(dialect=db.get_bind().dialect, compile_kwargs={"literal_binds": True})
    if db.get_bind().dialect.name == "postgresql":
        db.execute(text("SET LOCAL enable_seqscan = off"))
        plan = "\n".join(r[0] for r in db.execute(text(f"EXPLAIN {compiled}")))
    else:
        plan = "\n".join(str(r[-1]) for r in db.execute(text(f"EXPLAIN QUERY PLAN {compiled}")))
    assert "ix_consult_open_centre_due" in plan, plan
    db.rollback()


# --- reads and the care relationship ---------------------------------------------------------------------

def test_parties_read_a_request_others_do_not(db: Session, tele: TeleWorld, requests: Requests) -> None:
    request = requests.requested
    for party in (tele.requester, tele.town_colleague, tele.senior, tele.county_admin, tele.county_doctor):
        assert service.get_request_for(db, request_id=request.id, user=party).id == request.id
    for other in (tele.town_b_doctor, tele.outsider_doctor):
        with pytest.raises(AccessDenied):
            service.get_request_for(db, request_id=request.id, user=other)
    reads = db.execute(select(AuditEvent.user_id, AuditEvent.purpose).where(
        AuditEvent.action == "teleconsult.read", AuditEvent.outcome == "ok")).all()
    assert (tele.senior.id, "teleconsult") in reads and (tele.county_admin.id, "teleconsult_admin") in reads


def test_being_party_grants_the_care_relationship_until_30_days_after(db: Session, tele: TeleWorld) -> None:
    patient = f.patient(db, name="李建国", registered_at=tele.town_b)
    db.commit()
    assert decide(db, user=tele.senior, patient_id=patient.id) is None
    request = make_request(db, tele, by=tele.town_b_doctor, patient_id=patient.id)
    assert decide(db, user=tele.senior, patient_id=patient.id) == "teleconsult"
    assert decide(db, user=tele.county_doctor, patient_id=patient.id) == "teleconsult"
    assert decide(db, user=tele.outsider_doctor, patient_id=patient.id) is None
    service.decline(db, by=tele.senior, request_id=request.id, reason="不是本中心业务")
    db.commit()
    assert decide(db, user=tele.senior, patient_id=patient.id) == "teleconsult"
    db.execute(update(ConsultRequest).where(ConsultRequest.id == request.id)
               .values(closed_at=utcnow() - timedelta(days=31)))
    db.commit()
    assert decide(db, user=tele.senior, patient_id=patient.id) is None


# --- routing studies that arrive ----------------------------------------------------------------------------

def test_a_study_with_the_request_number_as_accession_joins_that_request(db: Session, tele: TeleWorld) -> None:
    request = make_request(db, tele)
    other = make_request(db, tele)  # newer, same patient: the accession number wins
    study = _study(db, tele, patient_id=tele.patient.id, accession=request.number)
    assert service.route_study(db, study=study, modality_type="CT", organisation_id=tele.town.id) is request
    db.commit()
    assert study.consult_request_id == request.id
    assert request.transitions[-1].action == "link_study"
    assert request.transitions[-1].detail["how"] == "accession"
    assert other.id != request.id


def test_a_study_for_the_same_patient_joins_the_newest_open_request_without_images(
        db: Session, tele: TeleWorld) -> None:
    older = make_request(db, tele)
    newer = make_request(db, tele)
    first = _study(db, tele, patient_id=tele.patient.id)
    assert service.route_study(db, study=first, modality_type="CT", organisation_id=tele.town.id) is newer
    second = _study(db, tele, patient_id=tele.patient.id)
    assert service.route_study(db, study=second, modality_type="CT", organisation_id=tele.town.id) is older
    # Too old (more than 3 days) or from another organisation: not linked; no rule, so archived only.
    db.execute(update(ConsultRequest).where(ConsultRequest.id.in_([older.id, newer.id]))
               .values(created_at=utcnow() - timedelta(days=4)))
    db.execute(update(ImagingStudy).values(consult_request_id=None))
    third = _study(db, tele, patient_id=tele.patient.id)
    assert service.route_study(db, study=third, modality_type="CT", organisation_id=tele.town.id) is None
    fourth = _study(db, tele, patient_id=tele.patient.id, organisation_id=tele.town_b.id)
    assert service.route_study(db, study=fourth, modality_type="CT", organisation_id=tele.town_b.id) is None
    assert service.route_study(db, study=fourth, modality_type="CT", organisation_id=None) is None


def test_an_unasked_study_creates_a_request_by_the_most_specific_rule(db: Session, tele: TeleWorld) -> None:
    any_rule = RoutingRule(modality_type="", centre_id=tele.centre.id, priority=Priority.ROUTINE, position=1)
    ct_from_town = RoutingRule(modality_type="CT", from_organisation_id=tele.town.id, centre_id=tele.centre.id,
                               priority=Priority.URGENT, position=50)
    ecg_rule = RoutingRule(modality_type="ECG", centre_id=tele.ecg_centre.id, priority=Priority.URGENT)
    db.add_all([any_rule, ct_from_town, ecg_rule])
    db.commit()
    study = _study(db, tele, patient_id=None)  # an unmatched patient is still read
    db.add(ImagingInstance(study_id=study.id, series_id=study.series[0].id, sop_instance_uid=generate_uid(),
                           sop_class_uid="1.2.840.10008.5.1.4.1.1.2", transfer_syntax_uid="1.2.840.10008.1.2.1",
                           storage_key="x", size_bytes=1, sha256="0" * 64, received_via="stow"))
    request = service.route_study(db, study=study, modality_type="CT", organisation_id=tele.town.id)
    db.commit()
    assert request is not None and request.priority == Priority.URGENT and request.centre_id == tele.centre.id
    assert (request.created_via, request.consent_kind, request.patient_id) == ("stow", "on_file", None)
    assert study.consult_request_id == request.id and request.state == ConsultState.REQUESTED
    assert request.transitions[0].detail["rule_id"] == ct_from_town.id
    assert _notes(db, tele.senior.id, "teleconsult.incoming")[0].urgent
    dr = _study(db, tele, patient_id=None, modality="DX")
    routine = service.route_study(db, study=dr, modality_type="DX", organisation_id=tele.town_b.id)
    assert routine is not None and routine.priority == Priority.ROUTINE and routine.created_via == "stow"
    assert routine.inviting_organisation_id == tele.town_b.id
    ecg = _study(db, tele, patient_id=None, modality="ECG")
    via_ecg = service.route_study(db, study=ecg, modality_type="ECG", organisation_id=tele.town.id)
    assert via_ecg is not None and via_ecg.kind == ConsultKind.ECG
    for rule in (any_rule, ct_from_town, ecg_rule):
        rule.is_active = False
    db.commit()
    nothing = _study(db, tele, patient_id=None)
    assert service.route_study(db, study=nothing, modality_type="CT", organisation_id=tele.town.id) is None


# --- two readers claim at once ---------------------------------------------------------------------------

def _claim_at_once(request_id: int, usernames: tuple[str, ...]) -> dict[str, str]:
    """Each reader claims in a session of their own, released together by a barrier: "won" or the 409 message."""
    from healthrelay.accounts.models import User

    barrier = threading.Barrier(len(usernames))
    outcomes: dict[str, str] = {}

    def attempt(username: str) -> None:
        with get_sessionmaker()() as s:
            reader = s.execute(select(User).where(User.username == username)).scalar_one()
            barrier.wait()
            try:
                service.claim(s, by=reader, request_id=request_id)
                s.commit()
                outcomes[username] = "won"
            except Conflict as exc:
                s.rollback()
                outcomes[username] = exc.message

    threads = [threading.Thread(target=attempt, args=(u,)) for u in usernames]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    return outcomes


@pytest.mark.skipif(not PG_URL, reason="a real race needs PostgreSQL's row locks and concurrent sessions")
def test_two_readers_claiming_at_once_first_claim_wins(db: Session, tele: TeleWorld) -> None:
    names = {"yx_senior": ("钱医师", tele.senior.id), "yx_trainee": ("孙医师", tele.trainee.id)}
    for _ in range(5):
        request = make_request(db, tele)
        outcomes = _claim_at_once(request.id, tuple(names))
        winners = [u for u, o in outcomes.items() if o == "won"]
        assert len(winners) == 1, outcomes
        [loser] = set(names) - set(winners)
        assert names[winners[0]][0] in outcomes[loser]  # the loser is told who holds it
        db.expire_all()
        fresh = db.get(ConsultRequest, request.id)
        assert fresh is not None and fresh.claimed_by_user_id == names[winners[0]][1]
        claims = db.execute(select(func.count()).where(ConsultTransition.request_id == request.id,
                                                       ConsultTransition.action == "claim")).scalar()
        assert claims == 1
