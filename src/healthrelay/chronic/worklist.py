"""The family-doctor team's day: overdue patients (high risk first), the calls made about them, open tasks.

The overdue list reads only the enrolment's derived columns through `ix_chronic_enrolments_team_due`, so it
stays one indexed query at county scale. A call outcome is data (`call_outcome_rules`): it hides the patient
from the list for its days, or closes the enrolment ("moved", "died"). A death reported on the phone is only
noted: the master patient index is not changed from a call.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, timedelta

from sqlalchemy import case, func, or_, select
from sqlalchemy.orm import Session
from sqlalchemy.sql.elements import ColumnElement

from healthrelay.access import service as access
from healthrelay.accounts.models import Role, User
from healthrelay.audit import service as audit
from healthrelay.chronic.models import CallOutcomeRule, ChronicCall, ChronicEnrolment, ChronicTask
from healthrelay.core.db import local_today, utcnow
from healthrelay.core.errors import AccessDenied, Conflict, InvalidInput, NotFound, field_error
from healthrelay.directory.models import Team, TeamKind, TeamMember
from healthrelay.patients.models import Patient

HIGH_RISK = 2  # risk_level 2 (uncontrolled, adverse reaction, complication) and 3 (danger)
NOTE_MAX = 2000
WORKLIST_ROLES = frozenset({Role.CLINICIAN, Role.ORG_ADMIN})


@dataclass(frozen=True)
class OverdueRow:
    enrolment_id: int
    patient_id: int
    name: str
    phone: str
    birth_date: date
    condition_code: str
    risk_level: int
    next_visit_due: date
    next_visit_kind: str
    days_overdue: int
    last_sbp: int | None
    last_dbp: int | None
    last_bp_at: datetime | None
    last_glucose: float | None
    last_glucose_at: datetime | None
    last_contact_at: datetime | None


@dataclass(frozen=True)
class WorklistCounts:
    overdue: int
    high_risk_overdue: int
    open_tasks: int
    due_this_week: int


@dataclass(frozen=True)
class TaskRow:
    task: ChronicTask
    name: str
    phone: str


def _not_hidden(today: date) -> ColumnElement[bool]:
    return or_(ChronicEnrolment.hidden_until.is_(None), ChronicEnrolment.hidden_until < today)


def overdue_list(db: Session, *, team_id: int, today: date, condition: str | None = None, limit: int = 50,
                 offset: int = 0) -> list[OverdueRow]:
    """The team's active patients whose visit is past due and who are not hidden by a call, high risk first,
    longest overdue next; one query on the team/status/due index joined to patients."""
    e = ChronicEnrolment
    # The page of enrolments first (index range + a sort of the team's overdue rows), then the 50 patients by
    # primary key: joining before the LIMIT lets PostgreSQL hash-join the whole patients table.
    page = (select(e.id, e.patient_id, e.condition_code, e.risk_level, e.next_visit_due, e.next_visit_kind,
                   e.last_sbp, e.last_dbp, e.last_bp_at, e.last_glucose, e.last_glucose_at, e.last_contact_at)
            .where(e.team_id == team_id, e.status == "active", e.next_visit_due < today, _not_hidden(today))
            .order_by(e.risk_level.desc(), e.next_visit_due, e.id).limit(limit).offset(offset))
    if condition:
        page = page.where(e.condition_code == condition)
    sub = page.subquery()
    query = (select(sub, Patient.name, Patient.phone, Patient.birth_date).join(Patient, Patient.id == sub.c.patient_id)
             .order_by(sub.c.risk_level.desc(), sub.c.next_visit_due, sub.c.id))
    return [OverdueRow(enrolment_id=r.id, patient_id=r.patient_id, name=r.name, phone=r.phone or "",
                       birth_date=r.birth_date, condition_code=r.condition_code, risk_level=r.risk_level,
                       next_visit_due=r.next_visit_due, next_visit_kind=r.next_visit_kind,
                       days_overdue=(today - r.next_visit_due).days, last_sbp=r.last_sbp, last_dbp=r.last_dbp,
                       last_bp_at=r.last_bp_at, last_glucose=r.last_glucose, last_glucose_at=r.last_glucose_at,
                       last_contact_at=r.last_contact_at) for r in db.execute(query)]


def team_worklist_counts(db: Session, *, team_id: int, today: date) -> WorklistCounts:
    """The figures at the top of the worklist, each counted within the team's rows of the index."""
    e = ChronicEnrolment
    base = (e.team_id == team_id, e.status == "active", _not_hidden(today))
    overdue, high = db.execute(select(func.count(), func.coalesce(func.sum(
        case((e.risk_level >= HIGH_RISK, 1), else_=0)), 0)).where(*base, e.next_visit_due < today)).one()
    week = db.scalar(select(func.count()).where(*base, e.next_visit_due >= today,
                                                e.next_visit_due <= today + timedelta(days=6)))
    open_ = db.scalar(select(func.count()).select_from(ChronicTask).where(ChronicTask.team_id == team_id,
                                                                           ChronicTask.status == "open"))
    return WorklistCounts(overdue=int(overdue), high_risk_overdue=int(high), open_tasks=int(open_ or 0),
                          due_this_week=int(week or 0))


# ---------------------------------------------------------------------------- teams and access

def teams_of_user(db: Session, user: User) -> list[Team]:
    """The family-doctor teams whose worklist the user works: teams the user's practitioner belongs to;
    an organisation's admin: the organisation's teams."""
    query = select(Team).where(Team.kind == TeamKind.FAMILY_DOCTOR).order_by(Team.name, Team.id)
    if user.role == Role.ORG_ADMIN and user.organisation_id is not None:
        return list(db.scalars(query.where(Team.organisation_id == user.organisation_id)))
    if user.role == Role.CLINICIAN and user.practitioner_id is not None:
        return list(db.scalars(query.join(TeamMember, TeamMember.team_id == Team.id)
                               .where(TeamMember.practitioner_id == user.practitioner_id)))
    return []


def require_team(db: Session, *, user: User, team_id: int) -> Team:
    """The team, if the user works its worklist (member, or admin of its organisation)."""
    if user.role not in WORKLIST_ROLES:
        raise AccessDenied("只有家庭医生团队成员可以查看工作清单 / only family-doctor team members see worklists")
    team = db.get(Team, team_id)
    if team is None or team.kind != TeamKind.FAMILY_DOCTOR:
        raise NotFound(f"没有编号为 {team_id} 的家庭医生团队 / no family-doctor team {team_id}")
    if team.id not in {t.id for t in teams_of_user(db, user)}:
        raise AccessDenied("您不是该团队成员 / you are not a member of this team", code="not_team_member")
    return team


@dataclass
class Worklist:
    team: Team
    counts: WorklistCounts
    overdue: list[OverdueRow]
    tasks: list[TaskRow]
    today: date


def team_worklist(db: Session, *, user: User, team_id: int, today: date | None = None, condition: str | None = None,
                  limit: int = 50, offset: int = 0, client_address: str = "") -> Worklist:
    """What the worklist page shows, for a member of the team; the view (names, phones) is audited."""
    team = require_team(db, user=user, team_id=team_id)
    today = today or local_today()
    rows = overdue_list(db, team_id=team.id, today=today, condition=condition, limit=limit, offset=offset)
    found = open_tasks(db, team_id=team.id)
    audit.record(db, actor=access.actor_of(user, client_address), action="chronic.worklist.view",
                 resource=f"team:{team.id}", purpose="team_worklist",
                 detail={"overdue_shown": len(rows), "tasks_shown": len(found), "condition": condition or ""})
    return Worklist(team=team, counts=team_worklist_counts(db, team_id=team.id, today=today), overdue=rows,
                    tasks=found, today=today)


# ---------------------------------------------------------------------------- calls

def enrolment_of(db: Session, enrolment_id: int) -> ChronicEnrolment:
    row = db.get(ChronicEnrolment, enrolment_id)
    if row is None:
        raise NotFound(f"没有编号为 {enrolment_id} 的慢病管理档案 / no chronic enrolment {enrolment_id}")
    return row


def patient_of(db: Session, patient_id: int) -> Patient:
    return access.resolve_patient(db, patient_id)


def outcome_rules(db: Session) -> list[CallOutcomeRule]:
    return list(db.scalars(select(CallOutcomeRule).order_by(CallOutcomeRule.closes_with_status,
                                                            CallOutcomeRule.hide_days.desc())))


def record_call(db: Session, *, by: User, enrolment_id: int, outcome_code: str, note: str = "",
                client_address: str = "", today: date | None = None) -> ChronicCall:
    """Record a worklist call; its outcome hides the patient for the rule's days or closes the enrolment."""
    if by.role not in WORKLIST_ROLES:
        raise AccessDenied("只有家庭医生团队成员可以记录电话随访 / only team members record calls")
    enrolment = enrolment_of(db, enrolment_id)
    access.require_patient_access(db, user=by, patient_id=enrolment.patient_id, action="chronic.call.record",
                                  client_address=client_address)
    errors = []
    rule = db.get(CallOutcomeRule, outcome_code or "")
    if rule is None:
        errors.append(field_error("outcome_code", f"未知的电话结果“{outcome_code}” / unknown call outcome "
                                                  f"{outcome_code!r}"))
    note = (note or "").strip()
    if len(note) > NOTE_MAX:
        errors.append(field_error("note", f"最多 {NOTE_MAX} 个字符 / at most {NOTE_MAX} characters"))
    if errors:
        raise InvalidInput("电话随访记录有误 / the call has errors", field_errors=errors)
    assert rule is not None
    if enrolment.status != "active":
        raise Conflict(f"该慢病管理档案已结案（{enrolment.status}） / the enrolment is already closed "
                       f"({enrolment.status})", code="enrolment_closed")
    today = today or local_today()
    now = utcnow()
    hidden = today + timedelta(days=rule.hide_days) if rule.hide_days > 0 else None
    call = ChronicCall(enrolment_id=enrolment.id, patient_id=enrolment.patient_id, team_id=enrolment.team_id,
                       outcome_code=rule.code, hidden_until=hidden, note=note, called_at=now, called_by_user_id=by.id)
    db.add(call)
    if hidden is not None:
        enrolment.hidden_until = hidden
    if rule.closes_with_status:
        enrolment.status = rule.closes_with_status
        enrolment.closed_at = now
        reason = f"电话随访：{rule.name} / call: {rule.name_en}" + (f"；{note}" if note else "")
        enrolment.closed_reason = reason[:200]
    db.flush()
    audit.record(db, actor=access.actor_of(by, client_address), action="chronic.call.record",
                 patient_id=enrolment.patient_id, resource=f"chronic_call:{call.id}",
                 detail={"enrolment_id": enrolment.id, "outcome": rule.code,
                         "hidden_until": hidden.isoformat() if hidden else None,
                         "closed_with": rule.closes_with_status})
    return call


# ---------------------------------------------------------------------------- tasks

def open_tasks(db: Session, *, team_id: int, kind: str | None = None, limit: int = 100,
               offset: int = 0) -> list[TaskRow]:
    """The team's open tasks, soonest due first, with the resident's name and phone."""
    query = (select(ChronicTask, Patient.name, Patient.phone).join(Patient, Patient.id == ChronicTask.patient_id)
             .where(ChronicTask.team_id == team_id, ChronicTask.status == "open")
             .order_by(ChronicTask.due_on, ChronicTask.id).limit(limit).offset(offset))
    if kind:
        query = query.where(ChronicTask.kind == kind)
    return [TaskRow(task=t, name=name, phone=phone or "") for t, name, phone in db.execute(query)]


def complete_task(db: Session, *, by: User, task_id: int, outcome: str, client_address: str = "") -> ChronicTask:
    """Mark a team task done with what was found or done; a member of the team (or its admin) does it."""
    task = db.get(ChronicTask, task_id)
    if task is None:
        raise NotFound(f"没有编号为 {task_id} 的任务 / no task {task_id}")
    if task.team_id is not None:
        require_team(db, user=by, team_id=task.team_id)
    elif by.role not in WORKLIST_ROLES or by.organisation_id != task.organisation_id:
        raise AccessDenied("只有负责机构的人员可以处理该任务 / only the responsible organisation's staff do this task")
    access.require_patient_access(db, user=by, patient_id=task.patient_id, action="chronic.task.done",
                                  client_address=client_address)
    outcome = (outcome or "").strip()
    if not outcome:
        raise InvalidInput("请填写处理结果 / say what was done", field_errors=[
            field_error("outcome", "请填写处理结果 / the outcome is required")])
    if len(outcome) > NOTE_MAX:
        raise InvalidInput("处理结果过长 / the outcome is too long", field_errors=[
            field_error("outcome", f"最多 {NOTE_MAX} 个字符 / at most {NOTE_MAX} characters")])
    if task.status != "open":
        raise Conflict(f"该任务已处理（{task.status}） / the task is already {task.status}", code="task_closed")
    task.status, task.done_at, task.done_by_user_id, task.outcome = "done", utcnow(), by.id, outcome
    db.flush()
    audit.record(db, actor=access.actor_of(by, client_address), action="chronic.task.done",
                 patient_id=task.patient_id, resource=f"chronic_task:{task.id}",
                 detail={"kind": task.kind, "referral_id": task.referral_id})
    return task
