"""JSON API for activity records, new techniques, traineeships and the impact report (under /api/v1/outreach).

Thin: the rules are in activity.py and impact.py. Records name residents by id only; the report has no patient.
"""

from __future__ import annotations

from datetime import date, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, status
from pydantic import BaseModel, ConfigDict, Field

from healthrelay.accounts.models import Role
from healthrelay.audit import service as audit
from healthrelay.core.db import local_today
from healthrelay.core.deps import CurrentActor, CurrentUser, DbSession, client_address
from healthrelay.core.errors import AccessDenied
from healthrelay.core.ids import Id, IdPath, IdQuery
from healthrelay.outreach import activity, impact

router = APIRouter()


class PatientIn(BaseModel):
    patient_id: Id
    outcome: str = Field(default="treated_locally", max_length=20)
    diagnosis_text: str = Field(default="", max_length=300)
    referral_id: Id | None = None


class ProcedureIn(BaseModel):
    name: str = Field(max_length=200)
    role: str = Field(max_length=12)
    patient_id: Id | None = None
    local_practitioner_id: Id | None = None


class ActivityIn(BaseModel):
    patients: list[PatientIn] = Field(default_factory=list, max_length=activity.MAX_ROWS)
    procedures: list[ProcedureIn] = Field(default_factory=list, max_length=activity.MAX_ROWS)
    trainee_ids: list[Id] = Field(default_factory=list, max_length=activity.MAX_ROWS)
    attendees: int = Field(default=0, ge=0, le=activity.MAX_ATTENDEES)
    summary: str = Field(default="", max_length=4000)


class PatientOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    patient_id: int
    booking_id: int | None
    outcome: str
    diagnosis_text: str
    referral_id: int | None


class ProcedureOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    name: str
    role: str
    patient_id: int | None
    local_practitioner_id: int | None


class ActivityOut(BaseModel):
    session_id: int
    session_status: str
    recorded: bool
    attendees: int = 0
    summary: str = ""
    recorded_at: datetime | None = None
    patients: list[PatientOut] = []
    procedures: list[ProcedureOut] = []
    trainee_ids: list[int] = []


def _activity_out(view: activity.ActivityView) -> ActivityOut:
    a = view.activity
    return ActivityOut(session_id=view.session.id, session_status=view.session.status, recorded=a is not None,
                       attendees=a.attendees if a else 0, summary=a.summary if a else "",
                       recorded_at=a.recorded_at if a else None,
                       patients=[PatientOut.model_validate(p.row) for p in view.patients],
                       procedures=[ProcedureOut.model_validate(p.row) for p in view.procedures],
                       trainee_ids=[pid for pid, _ in view.trainees])


@router.post("/sessions/{session_id}/activity", response_model=ActivityOut)
def record(session_id: IdPath, body: ActivityIn, request: Request, db: DbSession, user: CurrentUser) -> ActivityOut:
    """Record what happened (again: a correction that replaces the lists)."""
    address = client_address(request)
    activity.record_activity(
        db, by=user, session_id=session_id, patients=[activity.PatientSeen(**p.model_dump()) for p in body.patients],
        procedures=[activity.ProcedureDone(**p.model_dump()) for p in body.procedures],
        trainee_ids=body.trainee_ids, attendees=body.attendees, summary=body.summary, client_address=address)
    return _activity_out(activity.view_activity(db, by=user, session_id=session_id, client_address=address))


@router.get("/sessions/{session_id}/activity", response_model=ActivityOut)
def read(session_id: IdPath, request: Request, db: DbSession, user: CurrentUser) -> ActivityOut:
    return _activity_out(activity.view_activity(db, by=user, session_id=session_id,
                                                client_address=client_address(request)))


# ---------------------------------------------------------------------------- techniques

class TechniqueIn(BaseModel):
    host_organisation_id: Id
    name: str = Field(max_length=200)
    introduced_on: date
    introduced_by_practitioner_id: Id
    certified_on: date | None = None
    certified_by: str = Field(default="", max_length=200)
    fills_gap: bool = False
    studio_team_id: Id | None = None
    rotation_id: Id | None = None
    session_id: Id | None = None
    department_id: Id | None = None
    description: str = Field(default="", max_length=4000)


class TechniqueOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    id: int
    host_organisation_id: int
    name: str
    introduced_on: date
    introduced_by_practitioner_id: int
    certified_on: date | None
    certified_by: str
    fills_gap: bool
    studio_team_id: int | None
    rotation_id: int | None
    session_id: int | None
    department_id: int | None
    description: str


def _staff(user: Any) -> None:
    if user.role == Role.PATIENT:
        raise AccessDenied("此账号不能查看 / this account may not see this")


@router.post("/techniques", response_model=TechniqueOut, status_code=status.HTTP_201_CREATED)
def add_technique(body: TechniqueIn, db: DbSession, user: CurrentUser) -> TechniqueOut:
    return TechniqueOut.model_validate(activity.add_technique(db, by=user, **body.model_dump()))


@router.get("/techniques", response_model=list[TechniqueOut])
def techniques(db: DbSession, user: CurrentUser, host_organisation_id: IdQuery | None = None,
               studio_team_id: IdQuery | None = None,
               year: Annotated[int | None, Query(ge=impact.MIN_YEAR, le=9999)] = None) -> list[TechniqueOut]:
    _staff(user)
    rows = activity.list_techniques(db, host_organisation_id=host_organisation_id, studio_team_id=studio_team_id,
                                    year=year)
    return [TechniqueOut.model_validate(r.technique) for r in rows]


# ---------------------------------------------------------------------------- traineeships

class TraineeshipIn(BaseModel):
    kind: str = Field(max_length=20)
    trainee_practitioner_id: Id
    mentor_practitioner_id: Id | None = None
    home_organisation_id: Id
    at_organisation_id: Id
    starts_on: date
    ends_on: date
    goals: list[str] = Field(max_length=activity.MAX_GOALS)
    studio_team_id: Id | None = None
    rotation_id: Id | None = None


class TraineeshipOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    id: int
    kind: str
    trainee_practitioner_id: int
    mentor_practitioner_id: int | None
    home_organisation_id: int
    at_organisation_id: int
    studio_team_id: int | None
    rotation_id: int | None
    starts_on: date
    ends_on: date
    goals: list[str]
    status: str
    latest_percent: list[int | None] = []


class ProgressIn(BaseModel):
    goal_index: int = Field(ge=0, le=1000)
    percent: int = Field(ge=0, le=100)
    recorded_on: date | None = None
    note: str = Field(default="", max_length=2000)


class ProgressOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    id: int
    traineeship_id: int
    goal_index: int
    percent: int
    recorded_on: date
    note: str


class StatusIn(BaseModel):
    status: str = Field(max_length=12)


@router.post("/traineeships", response_model=TraineeshipOut, status_code=status.HTTP_201_CREATED)
def create_traineeship(body: TraineeshipIn, db: DbSession, user: CurrentUser) -> TraineeshipOut:
    return TraineeshipOut.model_validate(activity.create_traineeship(db, by=user, **body.model_dump()))


@router.get("/traineeships", response_model=list[TraineeshipOut])
def traineeships(db: DbSession, user: CurrentUser, studio_team_id: IdQuery | None = None,
                 host_organisation_id: IdQuery | None = None,
                 practitioner_id: IdQuery | None = None) -> list[TraineeshipOut]:
    _staff(user)
    rows = activity.list_traineeships(db, studio_team_id=studio_team_id, host_organisation_id=host_organisation_id,
                                      practitioner_id=practitioner_id)
    return [TraineeshipOut.model_validate(v.traineeship).model_copy(update={"latest_percent": v.latest})
            for v in rows]


@router.post("/traineeships/{traineeship_id}/progress", response_model=ProgressOut,
             status_code=status.HTTP_201_CREATED)
def progress(traineeship_id: IdPath, body: ProgressIn, db: DbSession, user: CurrentUser) -> ProgressOut:
    return ProgressOut.model_validate(activity.add_progress(db, by=user, traineeship_id=traineeship_id,
                                                            **body.model_dump()))


@router.post("/traineeships/{traineeship_id}/status", response_model=TraineeshipOut)
def close(traineeship_id: IdPath, body: StatusIn, db: DbSession, user: CurrentUser) -> TraineeshipOut:
    return TraineeshipOut.model_validate(activity.close_traineeship(db, by=user, traineeship_id=traineeship_id,
                                                                    status=body.status))


# ---------------------------------------------------------------------------- impact

@router.get("/impact")
def impact_report(db: DbSession, user: CurrentUser, actor: CurrentActor,
                  year: Annotated[int | None, Query(ge=impact.MIN_YEAR, le=9999)] = None,
                  all_years: bool = False, group: str = "studio", studio_team_id: IdQuery | None = None,
                  batch_id: IdQuery | None = None, host_organisation_id: IdQuery | None = None) -> dict[str, Any]:
    """The figures as JSON: `year` defaults to this year (`all_years=true` for every year)."""
    studio = impact.check_reader(db, user, studio_team_id)
    report = impact.compute(db, year=None if all_years else (year or local_today().year), group_by=group,
                            studio_team_id=studio, batch_id=batch_id, host_organisation_id=host_organisation_id)
    audit.record(db, actor=actor, action="outreach.impact_view", resource=f"team:{studio}" if studio else "",
                 detail={"group": group, "year": report.filters.year, "output": "api"})
    return impact.report_json(report)
