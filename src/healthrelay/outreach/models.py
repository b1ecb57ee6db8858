"""Outreach tables (请进来、沉下去): studio agreements, aid relationships and rotations, the session calendar,
bookings, what happened at each session, new techniques, trainees and mentors, availability, rosters.

An expert studio is a directory `Team` of kind `expert_studio` (host hospital, home hospital, discipline,
members); this domain adds its agreement periods. A session belongs to one person (an expert or a county
doctor going down) at one host; a weekly extension clinic is an `OutreachSchedule` whose dates become
sessions when it is published. Bookings count against `outreach_sessions.booked_count`, changed only by a
conditional UPDATE, so simultaneous requests never overfill a session on either database.
"""

from __future__ import annotations

from datetime import date, datetime
from typing import Any

from sqlalchemy import JSON, Boolean, Date, Float, ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from healthrelay.core.db import Base, UTCDateTime, utcnow

# Kinds of session. Only clinics take bookings from residents; the others are for staff.
SESSION_KINDS = ("clinic", "teaching_round", "demonstration_operation", "lecture", "case_discussion",
                 "guided_procedure")
BOOKABLE_KINDS = ("clinic",)
# published → done (activity recorded) | cancelled; a roster's proposals are RosterItems until published
SESSION_STATES = ("published", "done", "cancelled")
# booked | waitlisted → cancelled | attended | no_show; a waitlisted booking moves up when a place frees
BOOKING_STATES = ("booked", "waitlisted", "cancelled", "attended", "no_show")
PATIENT_OUTCOMES = ("treated_locally", "follow_up_locally", "referred_up", "admitted_locally")
PROCEDURE_ROLES = ("performed", "guided", "demonstrated")
TRAINEESHIP_KINDS = ("further_training", "mentorship")  # 进修, 导师制


class StudioAgreement(Base):
    """The period a studio's agreement runs (聘任协议); sessions of the studio must fall inside one."""

    __tablename__ = "outreach_studio_agreements"
    __table_args__ = (Index("ix_outreach_agreements_team", "team_id", "starts_on"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    team_id: Mapped[int] = mapped_column(ForeignKey("teams.id", ondelete="CASCADE"))
    starts_on: Mapped[date] = mapped_column(Date)
    ends_on: Mapped[date] = mapped_column(Date)
    signed_on: Mapped[date | None] = mapped_column(Date)
    sessions_per_month: Mapped[int] = mapped_column(Integer, default=0)  # what the agreement promises
    goals: Mapped[str] = mapped_column(Text, default="")
    created_by_user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class AidRelationship(Base):
    """对口帮扶: a supporting hospital helps a supported one over a period, in batches of rotations."""

    __tablename__ = "outreach_aid_relationships"

    id: Mapped[int] = mapped_column(primary_key=True)
    code: Mapped[str] = mapped_column(String(40), unique=True)
    name: Mapped[str] = mapped_column(String(200))
    supporting_organisation_id: Mapped[int] = mapped_column(ForeignKey("organisations.id"), index=True)
    supported_organisation_id: Mapped[int] = mapped_column(ForeignKey("organisations.id"), index=True)
    alliance_id: Mapped[int | None] = mapped_column(ForeignKey("alliances.id"))
    starts_on: Mapped[date] = mapped_column(Date)
    ends_on: Mapped[date] = mapped_column(Date)
    goals: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class AidBatch(Base):
    """One batch (第N批) of an aid relationship: experts sent together for a period (often three months)."""

    __tablename__ = "outreach_aid_batches"
    __table_args__ = (UniqueConstraint("relationship_id", "number", name="uq_outreach_aid_batch_number"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    relationship_id: Mapped[int] = mapped_column(ForeignKey("outreach_aid_relationships.id", ondelete="CASCADE"),
                                                 index=True)
    number: Mapped[int] = mapped_column(Integer)
    starts_on: Mapped[date] = mapped_column(Date)
    ends_on: Mapped[date] = mapped_column(Date)
    goals: Mapped[str] = mapped_column(Text, default="")


class AidRotation(Base):
    """One expert of a batch: who, from when to when, where posted, with what goals."""

    __tablename__ = "outreach_aid_rotations"
    __table_args__ = (Index("ix_outreach_rotations_practitioner", "practitioner_id", "starts_on"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    batch_id: Mapped[int] = mapped_column(ForeignKey("outreach_aid_batches.id", ondelete="CASCADE"), index=True)
    practitioner_id: Mapped[int] = mapped_column(ForeignKey("practitioners.id"))
    posted_organisation_id: Mapped[int] = mapped_column(ForeignKey("organisations.id"), index=True)
    department_id: Mapped[int | None] = mapped_column(ForeignKey("departments.id"))
    starts_on: Mapped[date] = mapped_column(Date)
    ends_on: Mapped[date] = mapped_column(Date)
    role: Mapped[str] = mapped_column(String(60), default="")  # e.g. 科室主任 (discipline lead)
    goals: Mapped[str] = mapped_column(Text, default="")


class OutreachSchedule(Base):
    """A recurring session (every Tuesday at a township), with dates skipped; its sessions are rows."""

    __tablename__ = "outreach_schedules"

    id: Mapped[int] = mapped_column(primary_key=True)
    practitioner_id: Mapped[int] = mapped_column(ForeignKey("practitioners.id"), index=True)
    host_organisation_id: Mapped[int] = mapped_column(ForeignKey("organisations.id"), index=True)
    department_id: Mapped[int | None] = mapped_column(ForeignKey("departments.id"))
    specialty_id: Mapped[int | None] = mapped_column(ForeignKey("specialties.id"))
    studio_team_id: Mapped[int | None] = mapped_column(ForeignKey("teams.id"))
    rotation_id: Mapped[int | None] = mapped_column(ForeignKey("outreach_aid_rotations.id"))
    kind: Mapped[str] = mapped_column(String(30))
    title: Mapped[str] = mapped_column(String(200))
    place: Mapped[str] = mapped_column(String(200), default="")
    weekday: Mapped[int] = mapped_column(Integer)  # 0 = Monday
    start_time: Mapped[str] = mapped_column(String(5))  # HH:MM, local time
    minutes: Mapped[int] = mapped_column(Integer)
    capacity: Mapped[int] = mapped_column(Integer)
    waitlist_limit: Mapped[int] = mapped_column(Integer, default=10)
    starts_on: Mapped[date] = mapped_column(Date)
    ends_on: Mapped[date] = mapped_column(Date)
    skip_dates: Mapped[list[str]] = mapped_column(JSON, default=list)  # ISO dates with no session
    created_by_user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class OutreachSession(Base):
    """One session: who, where, what kind, when, how many places. `booked_count` and `waitlist_count` are
    maintained by conditional UPDATEs in booking.py (never read-modify-write)."""

    __tablename__ = "outreach_sessions"
    __table_args__ = (
        Index("ix_outreach_sessions_person_start", "practitioner_id", "starts_at"),
        Index("ix_outreach_sessions_host_start", "host_organisation_id", "starts_at"),
        Index("ix_outreach_sessions_studio_start", "studio_team_id", "starts_at"),
        Index("ix_outreach_sessions_status_start", "status", "starts_at"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    number: Mapped[str] = mapped_column(String(30), unique=True)  # XC20261205-0001
    kind: Mapped[str] = mapped_column(String(30))
    title: Mapped[str] = mapped_column(String(200))
    place: Mapped[str] = mapped_column(String(200), default="")
    practitioner_id: Mapped[int] = mapped_column(ForeignKey("practitioners.id"))
    host_organisation_id: Mapped[int] = mapped_column(ForeignKey("organisations.id"))
    department_id: Mapped[int | None] = mapped_column(ForeignKey("departments.id"))
    specialty_id: Mapped[int | None] = mapped_column(ForeignKey("specialties.id"))
    studio_team_id: Mapped[int | None] = mapped_column(ForeignKey("teams.id"))
    rotation_id: Mapped[int | None] = mapped_column(ForeignKey("outreach_aid_rotations.id"))
    schedule_id: Mapped[int | None] = mapped_column(ForeignKey("outreach_schedules.id"), index=True)
    roster_id: Mapped[int | None] = mapped_column(ForeignKey("outreach_rosters.id"))
    starts_at: Mapped[datetime] = mapped_column(UTCDateTime)
    ends_at: Mapped[datetime] = mapped_column(UTCDateTime)
    capacity: Mapped[int] = mapped_column(Integer, default=0)
    waitlist_limit: Mapped[int] = mapped_column(Integer, default=10)
    booked_count: Mapped[int] = mapped_column(Integer, default=0)
    waitlist_count: Mapped[int] = mapped_column(Integer, default=0)
    status: Mapped[str] = mapped_column(String(12), default="published")
    cancel_reason: Mapped[str] = mapped_column(String(300), default="")
    created_by_user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    published_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    cancelled_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class OutreachBooking(Base):
    """A resident's place (or waitlist entry) at a clinic session; at most one row per resident and session."""

    __tablename__ = "outreach_bookings"
    __table_args__ = (
        UniqueConstraint("session_id", "patient_id", name="uq_outreach_booking_session_patient"),
        Index("ix_outreach_bookings_session_status", "session_id", "status", "created_at"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    number: Mapped[str] = mapped_column(String(30), unique=True)  # YY20261205-0001
    session_id: Mapped[int] = mapped_column(ForeignKey("outreach_sessions.id", ondelete="CASCADE"))
    patient_id: Mapped[int] = mapped_column(ForeignKey("patients.id"), index=True)
    status: Mapped[str] = mapped_column(String(12))
    booked_by_user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    via: Mapped[str] = mapped_column(String(12), default="self")  # self | clinic
    phone: Mapped[str] = mapped_column(String(20), default="")  # where reminders go
    note: Mapped[str] = mapped_column(String(300), default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    promoted_at: Mapped[datetime | None] = mapped_column(UTCDateTime)  # moved up from the waitlist
    cancelled_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    cancel_reason: Mapped[str] = mapped_column(String(300), default="")
    marked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)  # attended / no-show recorded
    reminded_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class SessionActivity(Base):
    """What actually happened at a session (one record per session, corrected in place by its recorder)."""

    __tablename__ = "outreach_activities"

    id: Mapped[int] = mapped_column(primary_key=True)
    session_id: Mapped[int] = mapped_column(ForeignKey("outreach_sessions.id", ondelete="CASCADE"), unique=True)
    attendees: Mapped[int] = mapped_column(Integer, default=0)  # people at a lecture or round beyond trainees
    summary: Mapped[str] = mapped_column(Text, default="")
    recorded_by_user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    recorded_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class ActivityPatient(Base):
    """A patient seen at a session, linked to the master patient index."""

    __tablename__ = "outreach_activity_patients"
    __table_args__ = (UniqueConstraint("activity_id", "patient_id", name="uq_outreach_activity_patient"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    activity_id: Mapped[int] = mapped_column(ForeignKey("outreach_activities.id", ondelete="CASCADE"), index=True)
    patient_id: Mapped[int] = mapped_column(ForeignKey("patients.id"), index=True)
    booking_id: Mapped[int | None] = mapped_column(ForeignKey("outreach_bookings.id"))
    diagnosis_text: Mapped[str] = mapped_column(String(300), default="")
    outcome: Mapped[str] = mapped_column(String(20), default="treated_locally")
    referral_id: Mapped[int | None] = mapped_column(ForeignKey("referrals.id"))


class ActivityProcedure(Base):
    """An operation or procedure at a session: done by the expert, guided (带教) or demonstrated."""

    __tablename__ = "outreach_activity_procedures"

    id: Mapped[int] = mapped_column(primary_key=True)
    activity_id: Mapped[int] = mapped_column(ForeignKey("outreach_activities.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(200))
    role: Mapped[str] = mapped_column(String(12))
    patient_id: Mapped[int | None] = mapped_column(ForeignKey("patients.id"), index=True)
    local_practitioner_id: Mapped[int | None] = mapped_column(ForeignKey("practitioners.id"))  # who was guided


class ActivityTrainee(Base):
    """A local practitioner present to learn (查房、带教、讲座)."""

    __tablename__ = "outreach_activity_trainees"
    __table_args__ = (UniqueConstraint("activity_id", "practitioner_id", name="uq_outreach_activity_trainee"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    activity_id: Mapped[int] = mapped_column(ForeignKey("outreach_activities.id", ondelete="CASCADE"), index=True)
    practitioner_id: Mapped[int] = mapped_column(ForeignKey("practitioners.id"), index=True)


class NewTechnique(Base):
    """A technique newly performed at the host (新技术新项目), with who certified it and when."""

    __tablename__ = "outreach_new_techniques"
    __table_args__ = (Index("ix_outreach_techniques_host_date", "host_organisation_id", "introduced_on"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    host_organisation_id: Mapped[int] = mapped_column(ForeignKey("organisations.id"))
    department_id: Mapped[int | None] = mapped_column(ForeignKey("departments.id"))
    name: Mapped[str] = mapped_column(String(200))
    description: Mapped[str] = mapped_column(Text, default="")
    fills_gap: Mapped[bool] = mapped_column(Boolean, default=False)  # 填补空白: first time in the county
    introduced_on: Mapped[date] = mapped_column(Date)
    introduced_by_practitioner_id: Mapped[int] = mapped_column(ForeignKey("practitioners.id"))
    certified_on: Mapped[date | None] = mapped_column(Date)
    certified_by: Mapped[str] = mapped_column(String(200), default="")  # the committee or person who approved it
    studio_team_id: Mapped[int | None] = mapped_column(ForeignKey("teams.id"), index=True)
    rotation_id: Mapped[int | None] = mapped_column(ForeignKey("outreach_aid_rotations.id"), index=True)
    session_id: Mapped[int | None] = mapped_column(ForeignKey("outreach_sessions.id"))
    recorded_by_user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Traineeship(Base):
    """进修 (a local doctor trains at the helping hospital) or 导师制 (a mentor pair), with goals."""

    __tablename__ = "outreach_traineeships"

    id: Mapped[int] = mapped_column(primary_key=True)
    kind: Mapped[str] = mapped_column(String(20))
    trainee_practitioner_id: Mapped[int] = mapped_column(ForeignKey("practitioners.id"), index=True)
    mentor_practitioner_id: Mapped[int | None] = mapped_column(ForeignKey("practitioners.id"), index=True)
    home_organisation_id: Mapped[int] = mapped_column(ForeignKey("organisations.id"), index=True)  # trainee's
    at_organisation_id: Mapped[int] = mapped_column(ForeignKey("organisations.id"))  # where the training is
    studio_team_id: Mapped[int | None] = mapped_column(ForeignKey("teams.id"), index=True)
    rotation_id: Mapped[int | None] = mapped_column(ForeignKey("outreach_aid_rotations.id"), index=True)
    starts_on: Mapped[date] = mapped_column(Date)
    ends_on: Mapped[date] = mapped_column(Date)
    goals: Mapped[list[str]] = mapped_column(JSON, default=list)
    status: Mapped[str] = mapped_column(String(12), default="active")  # active | completed | withdrawn
    created_by_user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class TraineeshipProgress(Base):
    """A dated progress note against one goal of a traineeship (percent reached)."""

    __tablename__ = "outreach_traineeship_progress"

    id: Mapped[int] = mapped_column(primary_key=True)
    traineeship_id: Mapped[int] = mapped_column(ForeignKey("outreach_traineeships.id", ondelete="CASCADE"),
                                                index=True)
    goal_index: Mapped[int] = mapped_column(Integer)
    percent: Mapped[int] = mapped_column(Integer)
    note: Mapped[str] = mapped_column(Text, default="")
    recorded_on: Mapped[date] = mapped_column(Date)
    recorded_by_user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))


class ExpertAvailability(Base):
    """What a roster may ask of a person: weekdays, the furthest host by road, sessions a month."""

    __tablename__ = "outreach_availability"

    id: Mapped[int] = mapped_column(primary_key=True)
    practitioner_id: Mapped[int] = mapped_column(ForeignKey("practitioners.id"), unique=True)
    studio_team_id: Mapped[int | None] = mapped_column(ForeignKey("teams.id"))
    specialty_id: Mapped[int | None] = mapped_column(ForeignKey("specialties.id"))
    base_organisation_id: Mapped[int] = mapped_column(ForeignKey("organisations.id"))  # where trips start
    weekdays: Mapped[list[int]] = mapped_column(JSON, default=list)  # 0 = Monday
    unavailable_dates: Mapped[list[str]] = mapped_column(JSON, default=list)
    max_travel_minutes: Mapped[int] = mapped_column(Integer, default=90)
    max_sessions_per_month: Mapped[int] = mapped_column(Integer, default=4)
    session_capacity: Mapped[int] = mapped_column(Integer, default=20)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class OutreachSetting(Base):
    """Rates a county tunes for the impact report (seeded by migration 0020): fares, lost income, costs."""

    __tablename__ = "outreach_settings"

    key: Mapped[str] = mapped_column(String(40), primary_key=True)
    value: Mapped[float] = mapped_column(Float)
    note: Mapped[str] = mapped_column(String(300), default="")


class RosterPlan(Base):
    """A proposed month of outreach, with what the solver was asked and what it found."""

    __tablename__ = "outreach_rosters"

    id: Mapped[int] = mapped_column(primary_key=True)
    number: Mapped[str] = mapped_column(String(30), unique=True)  # PB202701-01
    month: Mapped[date] = mapped_column(Date)  # the first day of the month planned
    status: Mapped[str] = mapped_column(String(12), default="draft")  # draft | published
    params: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    demand: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)  # per host and specialty, why
    solver: Mapped[str] = mapped_column(String(30), default="")
    solve_seconds: Mapped[float] = mapped_column(Float, default=0.0)
    demand_total: Mapped[float] = mapped_column(Float, default=0.0)
    covered: Mapped[float] = mapped_column(Float, default=0.0)
    greedy_covered: Mapped[float] = mapped_column(Float, default=0.0)
    created_by_user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    published_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    published_by_user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))


class RosterItem(Base):
    """One proposed session of a roster; the planner may move or drop it before publishing."""

    __tablename__ = "outreach_roster_items"

    id: Mapped[int] = mapped_column(primary_key=True)
    roster_id: Mapped[int] = mapped_column(ForeignKey("outreach_rosters.id", ondelete="CASCADE"), index=True)
    practitioner_id: Mapped[int] = mapped_column(ForeignKey("practitioners.id"))
    host_organisation_id: Mapped[int] = mapped_column(ForeignKey("organisations.id"))
    specialty_id: Mapped[int | None] = mapped_column(ForeignKey("specialties.id"))
    studio_team_id: Mapped[int | None] = mapped_column(ForeignKey("teams.id"))
    session_date: Mapped[date] = mapped_column(Date)
    start_time: Mapped[str] = mapped_column(String(5), default="09:00")
    minutes: Mapped[int] = mapped_column(Integer, default=180)
    capacity: Mapped[int] = mapped_column(Integer, default=20)
    travel_minutes: Mapped[float | None] = mapped_column(Float)
    expected_local: Mapped[float] = mapped_column(Float, default=0.0)  # patients expected to stay local
    reason: Mapped[str] = mapped_column(Text, default="")
    removed: Mapped[bool] = mapped_column(Boolean, default=False)
    added_by_planner: Mapped[bool] = mapped_column(Boolean, default=False)
    session_id: Mapped[int | None] = mapped_column(ForeignKey("outreach_sessions.id"))
