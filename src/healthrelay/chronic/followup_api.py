"""JSON routes of follow-ups, the team worklist, calls and tasks (mounted under /api/v1 by chronic/api.py).
Thin: every rule lives in chronic/followups.py and chronic/worklist.py."""

from __future__ import annotations

from datetime import date, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, status
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.orm import Session

from healthrelay.accounts.models import User
from healthrelay.chronic import followups, worklist
from healthrelay.chronic.followups import FollowUpInput
from healthrelay.chronic.models import ChronicFollowUp
from healthrelay.chronic.schemas import MAX_ID, MAX_OFFSET, Id, IdPath, IdQuery
from healthrelay.core.deps import CurrentUser, DbSession, client_address
from healthrelay.core.errors import InvalidInput, field_error

router = APIRouter()


class MedicineIn(BaseModel):
    name: str = Field(default="", max_length=100)
    dose: str = Field(default="", max_length=40)
    frequency: str = Field(default="", max_length=40)


class FollowUpIn(BaseModel):
    """One visit of the national follow-up form (随访服务记录表)."""

    enrolment_id: Id
    visit_on: date
    mode: str = "clinic"
    symptoms: list[str] = Field(default_factory=list, max_length=20)
    sbp: int | None = None
    dbp: int | None = None
    heart_rate: int | None = None
    weight_kg: float | None = None
    height_cm: float | None = None
    lifestyle: dict[str, Any] = Field(default_factory=dict)
    medicines: list[MedicineIn] = Field(default_factory=list, max_length=followups.MAX_MEDICINES)
    adherence: str = "regular"
    side_effects: str = ""
    fasting_glucose: float | None = None
    hba1c: float | None = None
    foot_pulse: str = ""
    hypoglycaemia: str = ""
    new_complications: list[str] = Field(default_factory=list, max_length=20)
    note: str = ""


class ReferralProposed(BaseModel):
    id: int
    number: str
    state: str
    urgency: str
    to_organisation_id: int
    reason: str


class FollowUpOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    enrolment_id: int
    patient_id: int
    condition_code: str
    visit_on: date
    mode: str
    symptoms: list[str]
    sbp: int | None
    dbp: int | None
    heart_rate: int | None
    weight_kg: float | None
    height_cm: float | None
    bmi: float | None
    lifestyle: dict[str, Any]
    medicines: list[dict[str, Any]]
    adherence: str
    side_effects: str
    fasting_glucose: float | None
    hba1c: float | None
    foot_pulse: str
    hypoglycaemia: str
    classification: str
    next_visit_on: date | None
    referral_id: int | None
    note: str
    recorded_at: datetime


class FollowUpOutcomeOut(BaseModel):
    follow_up: FollowUpOut
    classification: str
    next_visit_on: date | None
    next_visit_kind: str
    danger: bool
    uncontrolled_streak: int
    referral: ReferralProposed | None
    referral_reason: str
    referral_note: str
    task_id: int | None
    task_due_on: date | None


class TaskOut(BaseModel):
    id: int
    patient_id: int
    name: str
    phone: str
    kind: str
    title: str
    detail: str
    due_on: date
    status: str
    referral_id: int | None
    enrolment_id: int | None
    outcome: str


class WorklistOut(BaseModel):
    team_id: int
    team_name: str
    today: date
    counts: worklist.WorklistCounts
    overdue: list[worklist.OverdueRow]
    tasks: list[TaskOut]


class CallIn(BaseModel):
    enrolment_id: Id
    outcome_code: str = Field(max_length=30)
    note: str = ""


class CallOut(BaseModel):
    id: int
    enrolment_id: int
    outcome_code: str
    hidden_until: date | None
    enrolment_status: str


class TaskDoneIn(BaseModel):
    outcome: str


def input_of(body: FollowUpIn) -> FollowUpInput:
    values = body.model_dump(exclude={"enrolment_id", "medicines"})
    return FollowUpInput(**values, medicines=[m.model_dump() for m in body.medicines])


def task_out(row: worklist.TaskRow) -> TaskOut:
    t = row.task
    return TaskOut(id=t.id, patient_id=t.patient_id, name=row.name, phone=row.phone, kind=t.kind, title=t.title,
                   detail=t.detail, due_on=t.due_on, status=t.status, referral_id=t.referral_id,
                   enrolment_id=t.enrolment_id, outcome=t.outcome)


def pick_team(db: Session, user: User, team: int | None) -> int:
    """The team asked for, or the user's only team; several teams and none asked for is a question back."""
    if team is not None:
        return team
    teams = worklist.teams_of_user(db, user)
    if len(teams) == 1:
        return teams[0].id
    raise InvalidInput("请选择团队 / choose a team", field_errors=[field_error(
        "team", "您属于多个团队，请指定 team / you are in several teams: give team" if teams
        else "您不属于任何家庭医生团队 / you are in no family-doctor team")])


@router.post("/chronic/follow-ups", response_model=FollowUpOutcomeOut, status_code=status.HTTP_201_CREATED)
def create_follow_up(body: FollowUpIn, request: Request, db: DbSession, user: CurrentUser) -> FollowUpOutcomeOut:
    """Record a follow-up visit; the answer says the classification, the next visit and any referral proposed."""
    out = followups.record_follow_up(db, by=user, enrolment_id=body.enrolment_id, data=input_of(body),
                                     client_address=client_address(request))
    referral = out.referral
    return FollowUpOutcomeOut(
        follow_up=FollowUpOut.model_validate(out.follow_up), classification=out.classification,
        next_visit_on=out.next_visit_on, next_visit_kind=out.next_visit_kind, danger=out.danger,
        uncontrolled_streak=out.uncontrolled_streak,
        referral=ReferralProposed(id=referral.id, number=referral.number, state=str(referral.state),
                                  urgency=str(referral.urgency), to_organisation_id=referral.to_organisation_id,
                                  reason=referral.reason) if referral is not None else None,
        referral_reason=out.referral_reason, referral_note=out.referral_note,
        task_id=out.task.id if out.task else None, task_due_on=out.task.due_on if out.task else None)


@router.get("/chronic/follow-ups", response_model=list[FollowUpOut])
def list_follow_ups(request: Request, db: DbSession, user: CurrentUser,
                    enrolment: IdQuery) -> list[ChronicFollowUp]:
    """An enrolment's visits, newest first (need-to-know)."""
    return followups.follow_ups_of(db, user=user, enrolment_id=enrolment, client_address=client_address(request))


@router.get("/chronic/worklist", response_model=WorklistOut)
def get_worklist(request: Request, db: DbSession, user: CurrentUser,
                 team: Annotated[int | None, Query(ge=1, le=MAX_ID)] = None,
                 condition: Annotated[str, Query(max_length=20)] = "",
                 limit: Annotated[int, Query(ge=1, le=500)] = 50,
                 offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0) -> WorklistOut:
    """The team's overdue patients (high risk first), open tasks and counts."""
    found = worklist.team_worklist(db, user=user, team_id=pick_team(db, user, team), condition=condition or None,
                                   limit=limit, offset=offset, client_address=client_address(request))
    return WorklistOut(team_id=found.team.id, team_name=found.team.name, today=found.today,
                       counts=found.counts, overdue=found.overdue,
                       tasks=[task_out(r) for r in found.tasks])


@router.post("/chronic/calls", response_model=CallOut, status_code=status.HTTP_201_CREATED)
def create_call(body: CallIn, request: Request, db: DbSession, user: CurrentUser) -> CallOut:
    """Record a worklist call; its outcome hides the patient for a while or closes the enrolment."""
    call = worklist.record_call(db, by=user, enrolment_id=body.enrolment_id, outcome_code=body.outcome_code,
                                note=body.note, client_address=client_address(request))
    enrolment = worklist.enrolment_of(db, call.enrolment_id)
    return CallOut(id=call.id, enrolment_id=call.enrolment_id, outcome_code=call.outcome_code,
                   hidden_until=call.hidden_until, enrolment_status=enrolment.status)


@router.post("/chronic/tasks/{task_id}/done", response_model=TaskOut)
def task_done(task_id: IdPath, body: TaskDoneIn, request: Request, db: DbSession, user: CurrentUser) -> TaskOut:
    """Mark a team task done with its outcome."""
    task = worklist.complete_task(db, by=user, task_id=task_id, outcome=body.outcome,
                                  client_address=client_address(request))
    patient = worklist.patient_of(db, task.patient_id)
    return task_out(worklist.TaskRow(task=task, name=patient.name, phone=patient.phone or ""))
