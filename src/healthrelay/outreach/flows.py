"""Outreach side effects and hooks: the care relationship a booking or a session visit makes.

A resident booked at (or seen at) a session is in a care relationship with the session's person and with the
host's staff from the booking until 30 days after the session, so the expert can open the record they treat.
The reminder timer lives beside the booking rules (booking.remind).
"""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import exists, or_, select
from sqlalchemy.orm import Session

from healthrelay.access.service import care_relationship_check
from healthrelay.accounts.models import Role, User
from healthrelay.core.db import utcnow
from healthrelay.outreach import booking as booking  # noqa: F401 - registers the reminder timer handler
from healthrelay.outreach.models import ActivityPatient, OutreachBooking, OutreachSession, SessionActivity

AFTER_SESSION_DAYS = 30


@care_relationship_check
def _booked_or_seen_at_outreach(db: Session, user: User, patient_id: int) -> str | None:
    if user.role == Role.PATIENT or (user.practitioner_id is None and user.organisation_id is None):
        return None
    mine = or_(OutreachSession.practitioner_id == user.practitioner_id,
               OutreachSession.host_organisation_id == user.organisation_id)
    recent = OutreachSession.ends_at > utcnow() - timedelta(days=AFTER_SESSION_DAYS)
    booked = exists().where(OutreachBooking.session_id == OutreachSession.id,
                            OutreachBooking.patient_id == patient_id,
                            OutreachBooking.status.in_(("booked", "waitlisted", "attended")), mine, recent)
    seen = exists().where(ActivityPatient.patient_id == patient_id, ActivityPatient.activity_id == SessionActivity.id,
                          SessionActivity.session_id == OutreachSession.id, mine, recent)
    return "outreach_session" if db.execute(select(or_(booked, seen))).scalar() else None
