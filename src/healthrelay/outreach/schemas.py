"""Request and response models of the outreach API (sessions, schedules, bookings, studios, aid)."""

from __future__ import annotations

from datetime import date, datetime

from pydantic import BaseModel, ConfigDict, Field

from healthrelay.core.ids import Id


class SessionIn(BaseModel):
    kind: str = Field(max_length=30)
    title: str = Field(max_length=200)
    practitioner_id: Id
    host_organisation_id: Id
    starts_at: datetime
    minutes: int = Field(ge=15, le=720)
    capacity: int = Field(default=0, ge=0, le=500)
    waitlist_limit: int = Field(default=10, ge=0, le=200)
    place: str = Field(default="", max_length=200)
    department_id: Id | None = None
    specialty_id: Id | None = None
    studio_team_id: Id | None = None
    rotation_id: Id | None = None


class ScheduleIn(SessionIn):
    """A weekly session: `starts_at` is not used; weekday, start time and the period make the dates."""

    starts_at: datetime | None = None  # type: ignore[assignment]
    weekday: int = Field(ge=0, le=6)
    start_time: str = Field(pattern=r"^\d{1,2}:\d{2}$")
    starts_on: date
    ends_on: date
    skip_dates: list[date] = Field(default_factory=list, max_length=100)


class SessionOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    number: str
    kind: str
    title: str
    place: str
    practitioner_id: int
    host_organisation_id: int
    specialty_id: int | None
    studio_team_id: int | None
    rotation_id: int | None
    schedule_id: int | None
    roster_id: int | None
    starts_at: datetime
    ends_at: datetime
    capacity: int
    waitlist_limit: int
    booked_count: int
    waitlist_count: int
    status: str
    cancel_reason: str


class ScheduleOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    weekday: int
    start_time: str
    starts_on: date
    ends_on: date
    skip_dates: list[str]
    sessions: list[SessionOut] = []


class PublicSessionOut(BaseModel):
    """What anyone may see of a session: no patient data."""

    id: int
    number: str
    kind: str
    title: str
    host: str
    place: str
    person: str
    person_grade: str
    person_home: str
    specialty: str
    studio: str
    starts_at: datetime
    ends_at: datetime
    bookable: bool
    places_left: int
    waitlist_open: bool


class ReasonIn(BaseModel):
    reason: str = Field(min_length=1, max_length=300)


class SkipIn(ReasonIn):
    day: date


class BookingIn(BaseModel):
    patient_id: Id | None = None
    phone: str = Field(default="", max_length=20)
    note: str = Field(default="", max_length=300)


class BookingOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    number: str
    session_id: int
    patient_id: int
    status: str
    via: str
    created_at: datetime
    promoted_at: datetime | None
    cancelled_at: datetime | None
    waitlist_position: int | None = None


class CancelBookingIn(BaseModel):
    reason: str = Field(default="", max_length=300)


class MarkIn(BaseModel):
    attended: bool


class AgreementIn(BaseModel):
    starts_on: date
    ends_on: date
    signed_on: date | None = None
    sessions_per_month: int = Field(default=0, ge=0, le=200)
    goals: str = Field(default="", max_length=4000)


class AgreementOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    team_id: int
    starts_on: date
    ends_on: date
    signed_on: date | None
    sessions_per_month: int
    goals: str


class AidIn(BaseModel):
    code: str = Field(max_length=40)
    name: str = Field(max_length=200)
    supporting_organisation_id: Id
    supported_organisation_id: Id
    starts_on: date
    ends_on: date
    alliance_id: Id | None = None
    goals: str = Field(default="", max_length=4000)


class AidOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    code: str
    name: str
    supporting_organisation_id: int
    supported_organisation_id: int
    starts_on: date
    ends_on: date


class BatchIn(BaseModel):
    number: int = Field(ge=1, le=999)
    starts_on: date
    ends_on: date
    goals: str = Field(default="", max_length=4000)


class BatchOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    relationship_id: int
    number: int
    starts_on: date
    ends_on: date


class RotationIn(BaseModel):
    practitioner_id: Id
    posted_organisation_id: Id
    starts_on: date
    ends_on: date
    department_id: Id | None = None
    role: str = Field(default="", max_length=60)
    goals: str = Field(default="", max_length=4000)


class RotationOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    batch_id: int
    practitioner_id: int
    posted_organisation_id: int
    starts_on: date
    ends_on: date
    role: str
