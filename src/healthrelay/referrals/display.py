"""How referrals read on screen and on paper: names for ids, masked patient names, countdowns.

Shared by the pages and the PDF slip so both say the same thing. Nothing here decides who may see
what: callers have already been through the service's access checks (worklist, get_for, ...).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import select
from sqlalchemy.orm import Session

from healthrelay.accounts.models import User
from healthrelay.directory.models import Department, Organisation, Specialty, Team
from healthrelay.patients.models import Patient
from healthrelay.referrals import service
from healthrelay.referrals.models import Referral, Urgency

LOCAL_TZ = ZoneInfo("Asia/Shanghai")
# Vital signs as the form stores them, in the order a doctor reads them, with their units.
VITALS: tuple[tuple[str, str], ...] = (("bp", "mmHg"), ("hr", "次/分"), ("rr", "次/分"), ("temp", "℃"),
                                       ("spo2", "%"))


def mask_name(name: str) -> str:
    """Lists show 王*英: enough for staff to recognise a patient they expect, not to identify a stranger."""
    name = (name or "").strip()
    if len(name) <= 1:
        return name
    if len(name) == 2:
        return name[0] + "*"
    return name[0] + "*" * (len(name) - 2) + name[-1]


def age_on(born: date | None, today: date | None = None) -> int | None:
    if born is None:
        return None
    today = today or datetime.now(LOCAL_TZ).date()
    return today.year - born.year - ((today.month, today.day) < (born.month, born.day))


def local_today() -> date:
    return datetime.now(LOCAL_TZ).date()


def medicine_text(item: Any) -> str:
    """Medicines arrive as typed lines (pages) or as {"name", "dose"} objects (API); show both alike."""
    if isinstance(item, dict):
        return " ".join(str(item[k]) for k in ("name", "dose", "route", "frequency") if item.get(k))
    return str(item)


def vital_rows(vitals: dict[str, Any] | None) -> list[tuple[str, str]]:
    """(key, value with unit) for the known vital signs first, then anything else the sender gave."""
    vitals = vitals or {}
    rows = [(key, f"{vitals[key]} {unit}") for key, unit in VITALS if vitals.get(key) not in (None, "")]
    known = {key for key, _ in VITALS}
    rows += [(str(k), str(v)) for k, v in vitals.items() if k not in known and v not in (None, "")]
    return rows


@dataclass
class Countdown:
    """The answer deadline as staff read it: overdue by N minutes, or N minutes left."""

    overdue: bool
    minutes: int

    @property
    def hours(self) -> int:
        return self.minutes // 60


def countdown(referral: Referral, now: datetime | None = None) -> Countdown | None:
    if referral.state not in service.AWAITING_ANSWER or referral.response_due_at is None:
        return None
    now = now or datetime.now(tz=LOCAL_TZ)
    seconds = (referral.response_due_at - now).total_seconds()
    if seconds < 0:
        return Countdown(overdue=True, minutes=max(1, int(-seconds // 60)))
    return Countdown(overdue=False, minutes=int(seconds // 60))


def board_order(referral: Referral, now: datetime | None = None) -> tuple[int, int, datetime, int]:
    """Overdue first; at equal overdue state the green channel first; then the nearest deadline."""
    overdue = service.is_overdue(referral, now)
    due = referral.response_due_at or datetime.max.replace(tzinfo=LOCAL_TZ)
    return (0 if overdue else 1, 0 if referral.urgency == Urgency.GREEN_CHANNEL else 1, due, -referral.id)


@dataclass
class Names:
    """Display names for the ids a set of referrals mentions, fetched with one query per kind."""

    organisations: dict[int, str] = field(default_factory=dict)
    departments: dict[int, str] = field(default_factory=dict)
    specialties: dict[int, str] = field(default_factory=dict)
    teams: dict[int, str] = field(default_factory=dict)
    users: dict[int, str] = field(default_factory=dict)
    patients: dict[int, Patient] = field(default_factory=dict)

    @classmethod
    def load(cls, db: Session, referrals: Iterable[Referral], *, organisation_ids: Iterable[int | None] = (),
             department_ids: Iterable[int | None] = (), user_ids: Iterable[int | None] = (),
             patient_ids: Iterable[int | None] = (), team_ids: Iterable[int | None] = ()) -> Names:
        refs = list(referrals)
        orgs = {*organisation_ids, *(r.from_organisation_id for r in refs), *(r.to_organisation_id for r in refs),
                *(r.suggested_alternative_organisation_id for r in refs)}
        depts = {*department_ids, *(r.to_department_id for r in refs)}
        users = {*user_ids, *(r.from_user_id for r in refs), *(r.consent_recorded_by_user_id for r in refs)}
        patients = {*patient_ids, *(r.patient_id for r in refs)}
        teams = {*team_ids, *(r.to_team_id for r in refs)}
        specialties = {r.wanted_specialty_id for r in refs}
        return cls(
            organisations=_names(db, Organisation.id, Organisation.name, orgs),
            departments=_names(db, Department.id, Department.name, depts),
            specialties=_names(db, Specialty.id, Specialty.name, specialties),
            teams=_names(db, Team.id, Team.name, teams),
            users=_names(db, User.id, User.display_name, users),
            patients=_patients(db, patients),
        )

    def org(self, ident: int | None) -> str:
        return self.organisations.get(ident or 0, "")

    def dept(self, ident: int | None) -> str:
        return self.departments.get(ident or 0, "")

    def specialty(self, ident: int | None) -> str:
        return self.specialties.get(ident or 0, "")

    def team(self, ident: int | None) -> str:
        return self.teams.get(ident or 0, "")

    def user(self, ident: int | None) -> str:
        return self.users.get(ident or 0, "")

    def patient(self, ident: int) -> Patient | None:
        return self.patients.get(ident)

    def masked_patient(self, ident: int) -> str:
        p = self.patients.get(ident)
        return mask_name(p.name) if p is not None else f"#{ident}"


def _wanted(ids: Iterable[int | None]) -> list[int]:
    return sorted({i for i in ids if i is not None})


def _names(db: Session, id_col: Any, name_col: Any, ids: Iterable[int | None]) -> dict[int, str]:
    wanted = _wanted(ids)
    found: dict[int, str] = {}
    for start in range(0, len(wanted), 900):  # stays under every backend's bound-parameter limit
        found.update(db.execute(select(id_col, name_col).where(id_col.in_(wanted[start:start + 900]))).all())
    return found


def _patients(db: Session, ids: Iterable[int | None]) -> dict[int, Patient]:
    wanted = _wanted(ids)
    found: dict[int, Patient] = {}
    for start in range(0, len(wanted), 900):
        found.update((p.id, p) for p in db.execute(select(Patient).where(
            Patient.id.in_(wanted[start:start + 900]))).scalars())
    return found
