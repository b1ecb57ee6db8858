"""JSON API of the demand-planned roster (under /api/v1/outreach). Thin: the rules live in roster.py."""

from __future__ import annotations

from datetime import date, datetime
from typing import Any

from fastapi import APIRouter, status
from pydantic import BaseModel, ConfigDict, Field

from healthrelay.core.deps import CurrentUser, DbSession
from healthrelay.core.ids import Id, IdPath
from healthrelay.outreach import roster
from healthrelay.outreach.models import RosterPlan

router = APIRouter(tags=["outreach"])


class ProposeIn(BaseModel):
    month: date = Field(description="any day of the month to plan (its first day is used)")
    months_back: int = Field(6, ge=1, le=roster.MAX_MONTHS_BACK)
    host_ids: list[Id] | None = Field(None, max_length=500)
    time_limit: float = Field(10.0, ge=0.5, le=120)
    per_host_day: int = Field(2, ge=1, le=10)
    start_time: str = Field("09:00", max_length=5)
    minutes: int = Field(180, ge=15, le=720)
    min_patients: int | None = Field(None, ge=1, le=100,
                                     description="patients a session must keep local; default: the county's setting")


class MoveIn(BaseModel):
    session_date: date | None = None
    host_organisation_id: Id | None = None
    start_time: str | None = Field(None, max_length=5)


class AddIn(BaseModel):
    practitioner_id: Id
    host_organisation_id: Id
    session_date: date
    start_time: str | None = Field(None, max_length=5)
    minutes: int | None = Field(None, ge=15, le=720)
    capacity: int | None = Field(None, ge=1, le=500)


class ItemOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    practitioner_id: int
    host_organisation_id: int
    specialty_id: int | None
    studio_team_id: int | None
    session_date: date
    start_time: str
    minutes: int
    capacity: int
    travel_minutes: float | None
    expected_local: float
    reason: str
    added_by_planner: bool
    session_id: int | None


class RosterOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    number: str
    month: date
    status: str
    params: dict[str, Any]
    demand: list[dict[str, Any]]
    solver: str
    solve_seconds: float
    demand_total: float
    covered: float
    greedy_covered: float
    created_at: datetime
    published_at: datetime | None
    items: list[ItemOut] = []


def _out(db: DbSession, row: RosterPlan) -> RosterOut:
    items = [ItemOut.model_validate(i) for i in roster.items_of(db, row.id)]
    return RosterOut.model_validate(row).model_copy(update={"items": items})


@router.get("/roster", response_model=list[RosterOut])
def rosters(db: DbSession, user: CurrentUser) -> list[RosterOut]:
    return [RosterOut.model_validate(r) for r in roster.list_rosters(db, by=user)]


@router.post("/roster", response_model=RosterOut, status_code=status.HTTP_201_CREATED)
def propose(body: ProposeIn, db: DbSession, user: CurrentUser) -> RosterOut:
    """Propose next month's roster (CP-SAT, greedy as the baseline); 422/409 say why none can be made."""
    row = roster.propose(db, by=user, **body.model_dump())
    return _out(db, row)


@router.get("/roster/{roster_id}", response_model=RosterOut)
def get(roster_id: IdPath, db: DbSession, user: CurrentUser) -> RosterOut:
    return _out(db, roster.get_roster(db, by=user, roster_id=roster_id))


@router.post("/roster/{roster_id}/items/{item_id}/remove", response_model=RosterOut)
def remove(roster_id: IdPath, item_id: IdPath, db: DbSession, user: CurrentUser) -> RosterOut:
    roster.remove_item(db, by=user, roster_id=roster_id, item_id=item_id)
    return _out(db, roster.get_roster(db, by=user, roster_id=roster_id))


@router.post("/roster/{roster_id}/items/{item_id}/move", response_model=RosterOut)
def move(roster_id: IdPath, item_id: IdPath, body: MoveIn, db: DbSession, user: CurrentUser) -> RosterOut:
    roster.move_item(db, by=user, roster_id=roster_id, item_id=item_id, **body.model_dump())
    return _out(db, roster.get_roster(db, by=user, roster_id=roster_id))


@router.post("/roster/{roster_id}/items", response_model=RosterOut, status_code=status.HTTP_201_CREATED)
def add(roster_id: IdPath, body: AddIn, db: DbSession, user: CurrentUser) -> RosterOut:
    roster.add_item(db, by=user, roster_id=roster_id, **body.model_dump())
    return _out(db, roster.get_roster(db, by=user, roster_id=roster_id))


@router.post("/roster/{roster_id}/publish", response_model=RosterOut)
def publish(roster_id: IdPath, db: DbSession, user: CurrentUser) -> RosterOut:
    """Publish every live item as a clinic session, all or none (409 lists the refusals by item)."""
    row, _ = roster.publish(db, by=user, roster_id=roster_id)
    return _out(db, row)
