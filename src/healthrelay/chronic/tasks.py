"""Work for a family-doctor team about one resident (check on a referral, act on a screening finding).

Any domain that finds something the resident's own team must follow up calls `create_task`; the team sees it
on its worklist (`chronic.worklist`). `team_for_patient` is the one answer to "whose resident is this?".
"""

from __future__ import annotations

from datetime import date

from sqlalchemy import select
from sqlalchemy.orm import Session

from healthrelay.accounts.models import User
from healthrelay.chronic.models import ChronicTask, FamilyDoctorContract
from healthrelay.core.errors import InvalidInput, field_error
from healthrelay.directory.models import Team, TeamKind
from healthrelay.patients.models import Patient, TeamPanelEntry

TASK_KINDS = {
    "referral_check": ("转诊后随访核查", "check on a referral"),
    "screening": ("筛查异常随访", "screening finding"),
    "review": ("复查", "review"),
}


def team_for_patient(db: Session, patient_id: int) -> Team | None:
    """The active contract's team, else a family-doctor panel's team, else the team serving the village."""
    signed = db.scalar(select(Team).join(FamilyDoctorContract, FamilyDoctorContract.team_id == Team.id)
                       .where(FamilyDoctorContract.patient_id == patient_id, FamilyDoctorContract.status == "active")
                       .order_by(FamilyDoctorContract.starts_on.desc()).limit(1))
    if signed is not None:
        return signed
    on_panel = db.scalar(select(Team).join(TeamPanelEntry, TeamPanelEntry.team_id == Team.id)
                         .where(TeamPanelEntry.patient_id == patient_id, Team.kind == TeamKind.FAMILY_DOCTOR)
                         .order_by(TeamPanelEntry.since).limit(1))
    if on_panel is not None:
        return on_panel
    patient = db.get(Patient, patient_id)
    if patient is None or patient.area_id is None:
        return None
    # area_ids is a small JSON list per team and there are a few hundred teams: filter in Python.
    for team in db.scalars(select(Team).where(Team.kind == TeamKind.FAMILY_DOCTOR).order_by(Team.id)):
        if patient.area_id in (team.area_ids or []):
            return team
    return None


def create_task(db: Session, *, patient_id: int, kind: str, title: str, due_on: date, by: User | None,
                detail: str = "", team_id: int | None = None, organisation_id: int | None = None,
                enrolment_id: int | None = None, referral_id: int | None = None,
                screening_result_id: int | None = None) -> ChronicTask:
    if kind not in TASK_KINDS:
        raise InvalidInput("未知的任务类别 / unknown task kind", field_errors=[field_error("kind", kind)])
    team = db.get(Team, team_id) if team_id is not None else team_for_patient(db, patient_id)
    if organisation_id is None:
        organisation_id = team.organisation_id if team is not None else (by.organisation_id if by else None)
    if organisation_id is None:
        raise InvalidInput("无法确定负责该任务的机构 / no organisation to give the task to",
                           field_errors=[field_error("organisation_id", "required")])
    task = ChronicTask(patient_id=patient_id, team_id=team.id if team is not None else None,
                       organisation_id=organisation_id, kind=kind, title=title[:300], detail=detail, due_on=due_on,
                       enrolment_id=enrolment_id, referral_id=referral_id, screening_result_id=screening_result_id,
                       created_by_user_id=by.id if by is not None else None)
    db.add(task)
    db.flush()
    return task
