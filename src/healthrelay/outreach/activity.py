"""What actually happened at an outreach session, new techniques at hosts, and trainees (进修、导师制).

An activity record is written by the session's own person or by whoever may manage the session, once the
session has started and unless it was cancelled; writing it marks the session "done". Writing it again is a
correction: the lists are replaced in place and the change is audited. Everything is checked before anything
is written, and every problem is named by row and field (`patients[1].outcome`), so a form can mark each one.

Who may be listed as seen: a resident booked at the session (the booking makes the care relationship, see
flows.py), a resident registered at the host organisation (recording them as seen is the care event the
visit was), or any resident the recorder may already open (access.decide). Anyone else is refused by name:
an expert cannot attach a stranger's record to a session. Each listed resident's access is audited.
A booked resident listed as seen has the booking marked attended; booked residents not listed stay
"booked" (the clinic marks no-shows through booking.mark).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date
from typing import Any

from sqlalchemy import delete, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from healthrelay.access import service as access
from healthrelay.accounts.models import Role, User
from healthrelay.audit import service as audit
from healthrelay.core.db import local_today, take_sqlite_write_lock, utcnow
from healthrelay.core.errors import AccessDenied, Conflict, InvalidInput, NotFound, field_error
from healthrelay.directory.models import Department, Organisation, Post, Practitioner, Team, TeamKind, TeamMember
from healthrelay.outreach.models import (
    PATIENT_OUTCOMES,
    PROCEDURE_ROLES,
    TRAINEESHIP_KINDS,
    ActivityPatient,
    ActivityProcedure,
    ActivityTrainee,
    AidRotation,
    NewTechnique,
    OutreachBooking,
    OutreachSession,
    SessionActivity,
    Traineeship,
    TraineeshipProgress,
)
from healthrelay.outreach.service import get_session, is_planner, may_manage_session, may_staff_session
from healthrelay.patients.models import Patient, PatientRegistration
from healthrelay.referrals.models import Referral

MAX_ROWS = 500  # patients, procedures or trainees in one record
MAX_ATTENDEES = 100_000
MAX_GOALS = 20
MAX_TRAINEESHIP_DAYS = 3 * 366
BOOKING_SEEN_FROM = ("booked", "waitlisted", "no_show")  # a resident listed as seen becomes "attended"


def _err(name: str, zh: str, en: str) -> dict[str, Any]:
    return field_error(name, f"{zh} / {en}")


# ---------------------------------------------------------------------------- input rows

@dataclass
class PatientSeen:
    """One resident seen at the session."""

    patient_id: int
    outcome: str = "treated_locally"
    diagnosis_text: str = ""
    referral_id: int | None = None


@dataclass
class ProcedureDone:
    """An operation or procedure: performed by the visitor, guided (带教, name who was guided) or shown."""

    name: str
    role: str
    patient_id: int | None = None
    local_practitioner_id: int | None = None


def _as_patient(row: PatientSeen | Mapping[str, Any]) -> PatientSeen:
    return row if isinstance(row, PatientSeen) else PatientSeen(**dict(row))


def _as_procedure(row: ProcedureDone | Mapping[str, Any] | Sequence[Any]) -> ProcedureDone:
    if isinstance(row, ProcedureDone):
        return row
    if isinstance(row, Mapping):
        return ProcedureDone(**dict(row))
    return ProcedureDone(*row)


# ---------------------------------------------------------------------------- recording a session

def may_record(user: User, session: OutreachSession) -> bool:
    """The session's own person, or whoever may manage the session (planners, the host's 医务科)."""
    if user.role in (Role.PATIENT, Role.HEALTH_BUREAU):
        return False
    own = user.practitioner_id is not None and user.practitioner_id == session.practitioner_id
    return own or may_manage_session(user, session)


def _check_session_open(session: OutreachSession) -> None:
    if session.status == "cancelled":
        raise Conflict("该安排已取消，不能记录 / the session was cancelled; nothing to record",
                       code="session_cancelled", field_errors=[_err("session_id", "已取消", "cancelled")])
    if session.starts_at > utcnow():
        raise Conflict("该安排尚未开始，开始后才能记录 / the session has not started; record it once it has",
                       code="session_not_started", field_errors=[_err("session_id", "尚未开始", "not started")])


@dataclass
class _Checked:
    patients: list[tuple[PatientSeen, Patient, OutreachBooking | None, str]] = field(default_factory=list)
    procedures: list[ProcedureDone] = field(default_factory=list)
    trainees: list[int] = field(default_factory=list)


def _check_patients(db: Session, by: User, session: OutreachSession, rows: list[PatientSeen],
                    errors: list[dict[str, Any]]) -> list[tuple[PatientSeen, Patient, OutreachBooking | None, str]]:
    bookings = {b.patient_id: b for b in db.scalars(select(OutreachBooking).where(
        OutreachBooking.session_id == session.id, OutreachBooking.status != "cancelled"))}
    out: list[tuple[PatientSeen, Patient, OutreachBooking | None, str]] = []
    seen: dict[int, int] = {}
    for i, row in enumerate(rows):
        name = f"patients[{i}]"
        if row.outcome not in PATIENT_OUTCOMES:
            errors.append(_err(f"{name}.outcome", "去向无效", f"outcome must be one of {', '.join(PATIENT_OUTCOMES)}"))
        if len(row.diagnosis_text or "") > 300:
            errors.append(_err(f"{name}.diagnosis_text", "诊断不超过 300 字", "at most 300 characters"))
        try:
            patient = access.resolve_patient(db, row.patient_id)
        except NotFound:
            errors.append(_err(f"{name}.patient_id", f"没有编号为 {row.patient_id} 的居民",
                               f"no patient with id {row.patient_id}"))
            continue
        if patient.id in seen:
            errors.append(_err(f"{name}.patient_id", f"居民 {patient.id} 与第 {seen[patient.id] + 1} 行重复",
                               f"patient {patient.id} is listed twice (row {seen[patient.id] + 1})"))
            continue
        seen[patient.id] = i
        if row.referral_id is not None:
            referral = db.get(Referral, row.referral_id)
            if referral is None:
                errors.append(_err(f"{name}.referral_id", f"没有编号为 {row.referral_id} 的转诊",
                                   f"no referral {row.referral_id}"))
            elif access.resolve_patient(db, referral.patient_id).id != patient.id:
                errors.append(_err(f"{name}.referral_id", f"转诊 {row.referral_id} 不是该居民的",
                                   f"referral {row.referral_id} is for another patient"))
        booking = bookings.get(patient.id)
        purpose = access.decide(db, user=by, patient_id=patient.id)
        if purpose is None and booking is not None:
            purpose = "outreach_booking"
        if purpose is None and db.scalar(select(PatientRegistration.id).where(
                PatientRegistration.patient_id == patient.id,
                PatientRegistration.organisation_id == session.host_organisation_id).limit(1)) is not None:
            purpose = "outreach_host_registration"
        if purpose is None:
            errors.append(_err(f"{name}.patient_id",
                               f"居民 {patient.id} 未预约本次安排，也未在接诊机构建档；请先在接诊机构登记",
                               f"patient {patient.id} is neither booked at this session nor registered at the "
                               "host; register them at the host first"))
            continue
        out.append((row, patient, booking, purpose))
    return out


def _check_procedures(db: Session, rows: list[ProcedureDone], patient_ids: set[int],
                      errors: list[dict[str, Any]]) -> list[ProcedureDone]:
    for i, row in enumerate(rows):
        name = f"procedures[{i}]"
        row.name = (row.name or "").strip()
        if not row.name or len(row.name) > 200:
            errors.append(_err(f"{name}.name", "请填写手术或操作名称（200 字以内）",
                               "a name of at most 200 characters"))
        if row.role not in PROCEDURE_ROLES:
            errors.append(_err(f"{name}.role", "角色无效", f"role must be one of {', '.join(PROCEDURE_ROLES)}"))
        if row.role == "guided" and row.local_practitioner_id is None:
            errors.append(_err(f"{name}.local_practitioner_id", "带教手术请选择被带教的本地医生",
                               "a guided procedure names the local practitioner guided"))
        if row.local_practitioner_id is not None and db.get(Practitioner, row.local_practitioner_id) is None:
            errors.append(_err(f"{name}.local_practitioner_id", "没有这位医生", "no such practitioner"))
        if row.patient_id is not None:
            try:
                pid = access.resolve_patient(db, row.patient_id).id
            except NotFound:
                pid = None
            if pid is None or pid not in patient_ids:
                errors.append(_err(f"{name}.patient_id", "手术的居民须列在本次就诊名单中",
                                   "the patient operated on must be listed among the patients seen"))
            else:
                row.patient_id = pid
    return rows


def _check_trainees(db: Session, session: OutreachSession, ids: list[int], errors: list[dict[str, Any]]) -> list[int]:
    known = set(db.scalars(select(Practitioner.id).where(Practitioner.id.in_(ids)))) if ids else set()
    out: list[int] = []
    for i, pid in enumerate(ids):
        name = f"trainee_ids[{i}]"
        if pid not in known:
            errors.append(_err(name, f"没有编号为 {pid} 的医生", f"no practitioner {pid}"))
        elif pid in out:
            errors.append(_err(name, f"医生 {pid} 重复", f"practitioner {pid} is listed twice"))
        elif pid == session.practitioner_id:
            errors.append(_err(name, "本次安排的专家不能同时是学员", "the session's own person is not a trainee"))
        else:
            out.append(pid)
    return out


def record_activity(db: Session, *, by: User, session_id: int,
                    patients: Iterable[PatientSeen | Mapping[str, Any]] = (),
                    procedures: Iterable[ProcedureDone | Mapping[str, Any] | Sequence[Any]] = (),
                    trainee_ids: Iterable[int] = (), attendees: int = 0, summary: str = "",
                    client_address: str = "") -> SessionActivity:
    """Record (or correct) what happened at a session; all or nothing, every problem named."""
    take_sqlite_write_lock(db)
    session = get_session(db, session_id)
    if not may_record(by, session):
        raise AccessDenied("只有本次安排的专家或医务科可以记录 / only the session's own person or its planners "
                           "record what happened")
    _check_session_open(session)
    patient_rows = [_as_patient(p) for p in patients]
    procedure_rows = [_as_procedure(p) for p in procedures]
    trainees = list(trainee_ids)
    errors: list[dict[str, Any]] = []
    for fname, rows in (("patients", patient_rows), ("procedures", procedure_rows), ("trainee_ids", trainees)):
        if len(rows) > MAX_ROWS:
            raise InvalidInput(f"一次最多 {MAX_ROWS} 行 / at most {MAX_ROWS} rows",
                               field_errors=[_err(fname, f"最多 {MAX_ROWS} 行", f"at most {MAX_ROWS} rows")])
    if not 0 <= attendees <= MAX_ATTENDEES:
        errors.append(_err("attendees", "人数须在 0 到 100000 之间", "must be 0 to 100000"))
    if len(summary or "") > 4000:
        errors.append(_err("summary", "小结不超过 4000 字", "at most 4000 characters"))
    checked = _Checked()
    checked.patients = _check_patients(db, by, session, patient_rows, errors)
    checked.procedures = _check_procedures(db, procedure_rows, {p.id for _, p, _, _ in checked.patients}, errors)
    checked.trainees = _check_trainees(db, session, trainees, errors)
    if errors:
        raise InvalidInput("活动记录有误 / the activity record has problems", field_errors=errors)
    return _write(db, by=by, session=session, checked=checked, attendees=attendees, summary=(summary or "").strip(),
                  client_address=client_address)


def _write(db: Session, *, by: User, session: OutreachSession, checked: _Checked, attendees: int, summary: str,
           client_address: str) -> SessionActivity:
    actor = access.actor_of(by, client_address)
    activity = db.scalars(select(SessionActivity).where(SessionActivity.session_id == session.id)).first()
    correction = activity is not None
    if activity is None:
        activity = SessionActivity(session_id=session.id, attendees=attendees, summary=summary,
                                   recorded_by_user_id=by.id, recorded_at=utcnow())
        try:
            with db.begin_nested():
                db.add(activity)
        except IntegrityError:  # someone recorded it at this very moment
            raise Conflict("该安排刚被他人记录，请刷新后修改 / someone just recorded this session; reload and "
                           "correct it", code="stale") from None
    else:
        previous = list(db.scalars(select(ActivityPatient.booking_id).where(
            ActivityPatient.activity_id == activity.id, ActivityPatient.booking_id.is_not(None))))
        kept = {b.id for _, _, b, _ in checked.patients if b is not None}
        dropped = [b for b in previous if b is not None and b not in kept]
        if dropped:  # a correction took them off the list: their booking is open again for the clinic to mark
            db.execute(update(OutreachBooking).where(OutreachBooking.id.in_(dropped),
                                                     OutreachBooking.status == "attended")
                       .values(status="booked", marked_at=None))
        for table in (ActivityPatient, ActivityProcedure, ActivityTrainee):
            db.execute(delete(table).where(table.activity_id == activity.id))  # type: ignore[attr-defined]
        activity.attendees, activity.summary = attendees, summary
        activity.recorded_by_user_id, activity.recorded_at = by.id, utcnow()
    now = utcnow()
    t = OutreachSession.__table__
    for row, patient, booking, purpose in checked.patients:
        db.add(ActivityPatient(activity_id=activity.id, patient_id=patient.id,
                               booking_id=booking.id if booking is not None else None,
                               diagnosis_text=(row.diagnosis_text or "").strip(), outcome=row.outcome,
                               referral_id=row.referral_id))
        if booking is not None and booking.status in BOOKING_SEEN_FROM:
            if booking.status == "waitlisted":  # came without a place: no longer waiting for one
                db.execute(update(t).where(t.c.id == session.id, t.c.waitlist_count > 0)
                           .values(waitlist_count=t.c.waitlist_count - 1))
            booking.status, booking.marked_at = "attended", now
        audit.record(db, actor=actor, action="outreach.activity_patient", patient_id=patient.id, purpose=purpose,
                     resource=f"outreach_session:{session.id}")
    for p in checked.procedures:
        db.add(ActivityProcedure(activity_id=activity.id, name=p.name, role=p.role, patient_id=p.patient_id,
                                 local_practitioner_id=p.local_practitioner_id))
    for pid in checked.trainees:
        db.add(ActivityTrainee(activity_id=activity.id, practitioner_id=pid))
    changed = db.execute(update(t).where(t.c.id == session.id, t.c.status.in_(("published", "done")))
                         .values(status="done"))
    if changed.rowcount != 1:  # type: ignore[attr-defined]
        raise Conflict("该安排刚被取消或修改，请刷新 / the session just changed; reload", code="stale")
    db.flush()
    db.refresh(session)
    audit.record(db, actor=actor, action="outreach.activity_corrected" if correction else "outreach.activity_recorded",
                 resource=f"outreach_session:{session.id}",
                 detail={"patients": len(checked.patients), "procedures": len(checked.procedures),
                         "trainees": len(checked.trainees), "attendees": attendees})
    return activity


# ---------------------------------------------------------------------------- reading a record

@dataclass
class PatientLine:
    row: ActivityPatient
    name: str


@dataclass
class ProcedureLine:
    row: ActivityProcedure
    local_practitioner: str


@dataclass
class ActivityView:
    """A session's record with the names its staff see (names only here, never in reports)."""

    session: OutreachSession
    activity: SessionActivity | None
    patients: list[PatientLine]
    procedures: list[ProcedureLine]
    trainees: list[tuple[int, str]]


def activity_of(db: Session, session_id: int) -> SessionActivity | None:
    return db.scalars(select(SessionActivity).where(SessionActivity.session_id == session_id)).first()


def view_activity(db: Session, *, by: User, session_id: int, client_address: str = "") -> ActivityView:
    """The record for the session's staff; reading it is audited (it names residents)."""
    session = get_session(db, session_id)
    if not (may_record(by, session) or may_staff_session(db, by, session)):
        raise AccessDenied("只有本次安排的人员可以查看活动记录 / only the session's staff see its record")
    activity = activity_of(db, session.id)
    if activity is None:
        return ActivityView(session=session, activity=None, patients=[], procedures=[], trainees=[])
    patients = [PatientLine(row=a, name=name) for a, name in db.execute(
        select(ActivityPatient, Patient.name).join(Patient, Patient.id == ActivityPatient.patient_id)
        .where(ActivityPatient.activity_id == activity.id).order_by(ActivityPatient.id)).all()]
    procs = list(db.scalars(select(ActivityProcedure).where(ActivityProcedure.activity_id == activity.id)
                            .order_by(ActivityProcedure.id)))
    people_ids = {p.local_practitioner_id for p in procs if p.local_practitioner_id}
    trainee_ids = list(db.scalars(select(ActivityTrainee.practitioner_id).where(
        ActivityTrainee.activity_id == activity.id).order_by(ActivityTrainee.id)))
    names = dict(db.execute(select(Practitioner.id, Practitioner.name).where(
        Practitioner.id.in_(people_ids | set(trainee_ids)))).all()) if people_ids or trainee_ids else {}
    audit.record(db, actor=access.actor_of(by, client_address), action="outreach.activity_read",
                 resource=f"outreach_session:{session.id}", detail={"patients": len(patients)})
    return ActivityView(session=session, activity=activity, patients=patients,
                        procedures=[ProcedureLine(row=p, local_practitioner=names.get(p.local_practitioner_id or 0, ""))
                                    for p in procs],
                        trainees=[(pid, names.get(pid, "")) for pid in trainee_ids])


def host_staff(db: Session, organisation_id: int, *, limit: int = 500) -> list[Practitioner]:
    """Practitioners with a post at the host: who may be guided or be a trainee there."""
    return list(db.scalars(select(Practitioner).join(Post, Post.practitioner_id == Practitioner.id)
                           .where(Post.organisation_id == organisation_id).distinct()
                           .order_by(Practitioner.name, Practitioner.id).limit(limit)))


# ---------------------------------------------------------------------------- new techniques

def add_technique(db: Session, *, by: User, host_organisation_id: int, name: str, introduced_on: date,
                  introduced_by_practitioner_id: int, certified_on: date | None = None, certified_by: str = "",
                  fills_gap: bool = False, studio_team_id: int | None = None, rotation_id: int | None = None,
                  session_id: int | None = None, department_id: int | None = None,
                  description: str = "") -> NewTechnique:
    """A technique newly done at a host (新技术新项目): dated, with who certified it; planners or the person."""
    if not (is_planner(by) or (by.practitioner_id is not None
                                and by.practitioner_id == introduced_by_practitioner_id)):
        raise AccessDenied("只有医务科或引进该技术的专家可以登记 / only planners or the person who introduced it "
                           "record a new technique")
    errors: list[dict[str, Any]] = []
    today = local_today()
    name = (name or "").strip()
    if not name or len(name) > 200:
        errors.append(_err("name", "请填写技术名称（200 字以内）", "a name of at most 200 characters is required"))
    if db.get(Organisation, host_organisation_id) is None:
        errors.append(_err("host_organisation_id", "没有这个机构", "no such organisation"))
    if db.get(Practitioner, introduced_by_practitioner_id) is None:
        errors.append(_err("introduced_by_practitioner_id", "没有这位医生", "no such practitioner"))
    if introduced_on > today:
        errors.append(_err("introduced_on", "不能是将来的日期", "cannot be in the future"))
    if certified_on is not None:
        if certified_on < introduced_on:
            errors.append(_err("certified_on", "认定日期不能早于开展日期", "cannot be before the date introduced"))
        if certified_on > today:
            errors.append(_err("certified_on", "不能是将来的日期", "cannot be in the future"))
    if len(certified_by or "") > 200:
        errors.append(_err("certified_by", "不超过 200 字", "at most 200 characters"))
    if studio_team_id is not None:
        team = db.get(Team, studio_team_id)
        if team is None or team.kind != TeamKind.EXPERT_STUDIO:
            errors.append(_err("studio_team_id", "没有这个专家工作室", "no such expert studio"))
    if rotation_id is not None and db.get(AidRotation, rotation_id) is None:
        errors.append(_err("rotation_id", "没有这个轮派", "no such rotation"))
    if session_id is not None:
        session = db.get(OutreachSession, session_id)
        if session is None:
            errors.append(_err("session_id", "没有这次安排", "no such session"))
        elif session.host_organisation_id != host_organisation_id:
            errors.append(_err("session_id", "该安排不在这个机构", "that session was at another host"))
    if department_id is not None:
        dept = db.get(Department, department_id)
        if dept is None or dept.organisation_id != host_organisation_id:
            errors.append(_err("department_id", "该科室不属于这个机构", "no such department at the host"))
    if errors:
        raise InvalidInput("新技术登记有误 / the new technique has problems", field_errors=errors)
    row = NewTechnique(host_organisation_id=host_organisation_id, department_id=department_id, name=name,
                       description=(description or "").strip()[:4000], fills_gap=bool(fills_gap),
                       introduced_on=introduced_on, introduced_by_practitioner_id=introduced_by_practitioner_id,
                       certified_on=certified_on, certified_by=(certified_by or "").strip(),
                       studio_team_id=studio_team_id, rotation_id=rotation_id, session_id=session_id,
                       recorded_by_user_id=by.id)
    db.add(row)
    db.flush()
    audit.record(db, actor=access.actor_of(by), action="outreach.technique_added",
                 resource=f"outreach_technique:{row.id}", detail={"host": host_organisation_id})
    return row


@dataclass
class TechniqueView:
    technique: NewTechnique
    host: str
    introduced_by: str
    studio: str


def list_techniques(db: Session, *, host_organisation_id: int | None = None, studio_team_id: int | None = None,
                    year: int | None = None, limit: int = 500) -> list[TechniqueView]:
    q = select(NewTechnique, Organisation.name, Practitioner.name).join(
        Organisation, Organisation.id == NewTechnique.host_organisation_id).join(
        Practitioner, Practitioner.id == NewTechnique.introduced_by_practitioner_id)
    if host_organisation_id is not None:
        q = q.where(NewTechnique.host_organisation_id == host_organisation_id)
    if studio_team_id is not None:
        q = q.where(NewTechnique.studio_team_id == studio_team_id)
    if year is not None:
        q = q.where(NewTechnique.introduced_on >= date(year, 1, 1), NewTechnique.introduced_on <= date(year, 12, 31))
    rows = db.execute(q.order_by(NewTechnique.introduced_on.desc(), NewTechnique.id.desc()).limit(limit)).all()
    team_ids = {t.studio_team_id for t, _, _ in rows if t.studio_team_id}
    teams = dict(db.execute(select(Team.id, Team.name).where(Team.id.in_(team_ids))).all()) if team_ids else {}
    return [TechniqueView(technique=t, host=h, introduced_by=p, studio=teams.get(t.studio_team_id or 0, ""))
            for t, h, p in rows]


# ---------------------------------------------------------------------------- traineeships and mentors

def _check_goals(goals: Iterable[str], errors: list[dict[str, Any]]) -> list[str]:
    cleaned = [g.strip() for g in goals if g and g.strip()]
    if not cleaned:
        errors.append(_err("goals", "至少填写一个目标", "at least one goal"))
    if len(cleaned) > MAX_GOALS:
        errors.append(_err("goals", f"最多 {MAX_GOALS} 个目标", f"at most {MAX_GOALS} goals"))
    for i, g in enumerate(cleaned):
        if len(g) > 300:
            errors.append(_err(f"goals[{i}]", "每个目标不超过 300 字", "at most 300 characters"))
    return cleaned


def create_traineeship(db: Session, *, by: User, kind: str, trainee_practitioner_id: int,
                       home_organisation_id: int, at_organisation_id: int, starts_on: date, ends_on: date,
                       goals: Iterable[str], mentor_practitioner_id: int | None = None,
                       studio_team_id: int | None = None, rotation_id: int | None = None) -> Traineeship:
    """进修 (further_training) or 导师制 (mentorship, a mentor required); planners or the mentor."""
    if not (is_planner(by) or (by.practitioner_id is not None and mentor_practitioner_id is not None
                                and by.practitioner_id == mentor_practitioner_id)):
        raise AccessDenied("只有医务科或带教老师可以登记进修与导师制 / only planners or the mentor record a "
                           "traineeship")
    errors: list[dict[str, Any]] = []
    if kind not in TRAINEESHIP_KINDS:
        errors.append(_err("kind", "类型无效", f"kind must be one of {', '.join(TRAINEESHIP_KINDS)}"))
    if db.get(Practitioner, trainee_practitioner_id) is None:
        errors.append(_err("trainee_practitioner_id", "没有这位医生", "no such practitioner"))
    if mentor_practitioner_id is None:
        if kind == "mentorship":
            errors.append(_err("mentor_practitioner_id", "导师制须指定导师", "a mentorship needs a mentor"))
    elif db.get(Practitioner, mentor_practitioner_id) is None:
        errors.append(_err("mentor_practitioner_id", "没有这位医生", "no such practitioner"))
    elif mentor_practitioner_id == trainee_practitioner_id:
        errors.append(_err("mentor_practitioner_id", "导师不能是学员本人", "the mentor cannot be the trainee"))
    for fname, org_id in (("home_organisation_id", home_organisation_id), ("at_organisation_id", at_organisation_id)):
        if db.get(Organisation, org_id) is None:
            errors.append(_err(fname, "没有这个机构", "no such organisation"))
    if ends_on < starts_on:
        errors.append(_err("ends_on", "须不早于开始日期", "must not be before the start"))
    elif (ends_on - starts_on).days > MAX_TRAINEESHIP_DAYS:
        errors.append(_err("ends_on", "最长三年", "at most three years"))
    if studio_team_id is not None:
        team = db.get(Team, studio_team_id)
        if team is None or team.kind != TeamKind.EXPERT_STUDIO:
            errors.append(_err("studio_team_id", "没有这个专家工作室", "no such expert studio"))
    if rotation_id is not None and db.get(AidRotation, rotation_id) is None:
        errors.append(_err("rotation_id", "没有这个轮派", "no such rotation"))
    cleaned = _check_goals(goals, errors)
    if errors:
        raise InvalidInput("进修/导师制登记有误 / the traineeship has problems", field_errors=errors)
    row = Traineeship(kind=kind, trainee_practitioner_id=trainee_practitioner_id,
                      mentor_practitioner_id=mentor_practitioner_id, home_organisation_id=home_organisation_id,
                      at_organisation_id=at_organisation_id, studio_team_id=studio_team_id, rotation_id=rotation_id,
                      starts_on=starts_on, ends_on=ends_on, goals=cleaned, status="active", created_by_user_id=by.id)
    db.add(row)
    db.flush()
    audit.record(db, actor=access.actor_of(by), action="outreach.traineeship_created",
                 resource=f"outreach_traineeship:{row.id}", detail={"kind": kind})
    return row


def get_traineeship(db: Session, traineeship_id: int) -> Traineeship:
    row = db.get(Traineeship, traineeship_id)
    if row is None:
        raise NotFound("没有这个进修/导师制记录 / no such traineeship")
    return row


def _may_follow(user: User, row: Traineeship) -> bool:
    """Planners, the mentor and the trainee record progress."""
    if is_planner(user):
        return True
    return user.practitioner_id is not None and user.practitioner_id in (row.mentor_practitioner_id,
                                                                         row.trainee_practitioner_id)


def add_progress(db: Session, *, by: User, traineeship_id: int, goal_index: int, percent: int,
                 recorded_on: date | None = None, note: str = "") -> TraineeshipProgress:
    """A dated note against one goal; the date within the period, or today, never ahead."""
    row = get_traineeship(db, traineeship_id)
    if not _may_follow(by, row):
        raise AccessDenied("只有医务科、导师或学员本人可以记录进度 / only planners, the mentor or the trainee record "
                           "progress")
    if row.status != "active":
        raise Conflict(f"该记录已{'结业' if row.status == 'completed' else '退出'} / the traineeship is {row.status}",
                       code="traineeship_closed")
    today = local_today()
    day = recorded_on or today
    errors: list[dict[str, Any]] = []
    if not 0 <= goal_index < len(row.goals):
        errors.append(_err("goal_index", f"目标序号须在 0 到 {len(row.goals) - 1} 之间",
                           f"goal index must be 0 to {len(row.goals) - 1}"))
    if not 0 <= percent <= 100:
        errors.append(_err("percent", "进度须在 0 到 100 之间", "percent must be 0 to 100"))
    if day > today:
        errors.append(_err("recorded_on", "不能是将来的日期", "cannot be in the future"))
    elif day != today and not row.starts_on <= day <= row.ends_on:
        errors.append(_err("recorded_on", f"须在 {row.starts_on} 至 {row.ends_on} 之间或今天",
                           f"must fall in {row.starts_on} to {row.ends_on}, or be today"))
    if len(note or "") > 2000:
        errors.append(_err("note", "不超过 2000 字", "at most 2000 characters"))
    if errors:
        raise InvalidInput("进度有误 / the progress note has problems", field_errors=errors)
    progress = TraineeshipProgress(traineeship_id=row.id, goal_index=goal_index, percent=percent,
                                   note=(note or "").strip(), recorded_on=day, recorded_by_user_id=by.id)
    db.add(progress)
    db.flush()
    audit.record(db, actor=access.actor_of(by), action="outreach.traineeship_progress",
                 resource=f"outreach_traineeship:{row.id}", detail={"goal": goal_index, "percent": percent})
    return progress


def close_traineeship(db: Session, *, by: User, traineeship_id: int, status: str) -> Traineeship:
    """Complete (结业) or withdraw from an active traineeship."""
    row = get_traineeship(db, traineeship_id)
    if not (is_planner(by) or (by.practitioner_id is not None and by.practitioner_id == row.mentor_practitioner_id)):
        raise AccessDenied("只有医务科或导师可以结束 / only planners or the mentor close a traineeship")
    if status not in ("completed", "withdrawn"):
        raise InvalidInput("状态须为 completed 或 withdrawn / status must be completed or withdrawn",
                           field_errors=[_err("status", "无效", "invalid")])
    changed = db.execute(update(Traineeship).where(Traineeship.id == row.id, Traineeship.status == "active")
                         .values(status=status))
    if changed.rowcount != 1:  # type: ignore[attr-defined]
        raise Conflict(f"该记录已是 {row.status} / the traineeship is already {row.status}", code="traineeship_closed")
    db.refresh(row)
    audit.record(db, actor=access.actor_of(by), action=f"outreach.traineeship_{status}",
                 resource=f"outreach_traineeship:{row.id}")
    return row


@dataclass
class TraineeshipView:
    traineeship: Traineeship
    trainee: str
    mentor: str
    home: str
    at: str
    latest: list[int | None]  # the latest percent per goal, None before any note

    @property
    def overall(self) -> int:
        """The mean of the goals' latest percents (a goal with no note counts 0)."""
        return round(sum(p or 0 for p in self.latest) / len(self.latest)) if self.latest else 0


def list_traineeships(db: Session, *, studio_team_id: int | None = None, host_organisation_id: int | None = None,
                      practitioner_id: int | None = None, limit: int = 500) -> list[TraineeshipView]:
    """By studio, by host (the trainee's home or where they train) or by person (trainee or mentor)."""
    q = select(Traineeship)
    if studio_team_id is not None:
        q = q.where(Traineeship.studio_team_id == studio_team_id)
    if host_organisation_id is not None:
        q = q.where((Traineeship.home_organisation_id == host_organisation_id)
                    | (Traineeship.at_organisation_id == host_organisation_id))
    if practitioner_id is not None:
        q = q.where((Traineeship.trainee_practitioner_id == practitioner_id)
                    | (Traineeship.mentor_practitioner_id == practitioner_id))
    rows = list(db.scalars(q.order_by(Traineeship.starts_on.desc(), Traineeship.id.desc()).limit(limit)))
    if not rows:
        return []
    ids = [r.id for r in rows]
    latest: dict[tuple[int, int], int] = {}
    for tid, goal, pct in db.execute(select(TraineeshipProgress.traineeship_id, TraineeshipProgress.goal_index,
                                            TraineeshipProgress.percent)
                                     .where(TraineeshipProgress.traineeship_id.in_(ids))
                                     .order_by(TraineeshipProgress.recorded_on, TraineeshipProgress.id)).all():
        latest[(tid, goal)] = pct  # ordered by date: the last one read is the latest
    people = {p for r in rows for p in (r.trainee_practitioner_id, r.mentor_practitioner_id) if p}
    names = dict(db.execute(select(Practitioner.id, Practitioner.name).where(Practitioner.id.in_(people))).all())
    orgs_ids = {o for r in rows for o in (r.home_organisation_id, r.at_organisation_id)}
    orgs = dict(db.execute(select(Organisation.id, Organisation.name).where(Organisation.id.in_(orgs_ids))).all())
    return [TraineeshipView(traineeship=r, trainee=names.get(r.trainee_practitioner_id, ""),
                            mentor=names.get(r.mentor_practitioner_id or 0, ""),
                            home=orgs.get(r.home_organisation_id, ""), at=orgs.get(r.at_organisation_id, ""),
                            latest=[latest.get((r.id, i)) for i in range(len(r.goals))]) for r in rows]


def studios_of(db: Session, user: User) -> list[int]:
    """The expert studios the user is a member of."""
    if user.practitioner_id is None:
        return []
    return list(db.scalars(select(TeamMember.team_id).join(Team, Team.id == TeamMember.team_id).where(
        TeamMember.practitioner_id == user.practitioner_id, Team.kind == TeamKind.EXPERT_STUDIO)))
