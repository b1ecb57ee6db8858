"""Outreach impact (下沉成效): the figures counties publish, computed from the activity records.

Filters: a year (sessions by their local start date, techniques by the day introduced, traineeships by the
day they start; None = every year), a studio, an aid batch (sessions, techniques and traineeships whose
rotation is in the batch) and a host. Rows per group — studio, aid batch, host or year — plus a total row
computed by the same queries without the group (distinct counts are not sums of the rows' counts).

Definitions:
- sessions held: sessions with status "done" (an activity was recorded), by kind (clinic, teaching round,
  demonstration operation, lecture, case discussion, guided procedure); lectures are the lecture sessions.
- operations: procedures recorded at those sessions, by role — performed by the visitor, guided (带教:
  a local doctor operated with the visitor), demonstrated.
- patients seen: patient rows of the activity records (a resident seen at two sessions counts twice);
  kept local: those whose outcome is not "referred_up"; referred up: outcome "referred_up"; referrals:
  distinct referral records linked to patient rows.
- new techniques: techniques introduced in the period (host, studio, rotation as recorded on the technique);
  gaps filled: those marked 填补空白.
- trainees present: distinct local practitioners recorded as trainees at the sessions; traineeships: 进修
  and 导师制 records starting in the period (a host is the trainee's home organisation).
- bookings: bookings at the sessions held that took a place (booked, attended, no-show; not cancelled and
  not left on the waitlist); no-shows: those marked no-show.
- travel spared: for each patient kept local, the round trip from the host to the hospital the patient would
  otherwise have gone to — the studio's home hospital for a studio session, else the primary-post
  organisation of the session's person. Distance: straight line × detour_factor; time: road minutes on the
  county's network, straight line × detour_factor at fallback_kmh beyond it (service.travel_minutes).
  Computed once per (host, alternative) pair. A pair without coordinates counts in "travel unknown" and adds
  nothing.
- money saved (fen, shown in yuan): per patient kept local, (1 + companions) × (2 × km × fare_fen_per_km +
  2 × hours × income_fen_per_hour) + provincial_trip_extra_fen when the alternative is a provincial-level
  organisation, else county_trip_extra_fen; rates from the table outreach_settings.

Every figure is one GROUP BY over the records (SQLAlchemy Core, the same SQL on SQLite and PostgreSQL);
no name of a patient is read.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import date, datetime
from typing import Any

from sqlalchemy import and_, case, func, select
from sqlalchemy.orm import Session
from sqlalchemy.sql.elements import ColumnElement

from healthrelay.accounts.models import Role, User
from healthrelay.core.db import LOCAL_TZ, local_today
from healthrelay.core.errors import AccessDenied, InvalidInput, NotFound, field_error
from healthrelay.directory.models import Organisation, OrgLevel, Post, Team, TeamKind
from healthrelay.outreach import service
from healthrelay.outreach.activity import studios_of
from healthrelay.outreach.models import (
    PROCEDURE_ROLES,
    SESSION_KINDS,
    ActivityPatient,
    ActivityProcedure,
    ActivityTrainee,
    AidBatch,
    AidRelationship,
    AidRotation,
    NewTechnique,
    OutreachBooking,
    OutreachSession,
    SessionActivity,
    Traineeship,
)

GROUPS = ("studio", "batch", "host", "year")
TOTAL_KEY = "total"
NONE_KEY = "none"
GROUP_LABEL = "impact_group_key"
MONTH_LABEL = "impact_month"
MIN_YEAR = 2000
MAX_YEARS = 50
BOOKING_TOOK_PLACE = ("booked", "attended", "no_show")


# ---------------------------------------------------------------------------- the rows

@dataclass
class ImpactRow:
    """One group's figures; money in fen, distance in km and time in hours for patients' round trips."""

    key: str  # team, batch or organisation id, a year, "none" (no studio / no batch) or "total"
    name: str
    sessions: int = 0
    by_kind: dict[str, int] = field(default_factory=lambda: {k: 0 for k in SESSION_KINDS})
    performed: int = 0
    guided: int = 0
    demonstrated: int = 0
    patients_seen: int = 0
    kept_local: int = 0
    referred_up: int = 0
    referrals: int = 0
    techniques: int = 0
    gaps_filled: int = 0
    trainees_present: int = 0
    traineeships: int = 0
    further_training: int = 0
    mentorships: int = 0
    bookings: int = 0
    no_shows: int = 0
    travel_km: float = 0.0
    travel_hours: float = 0.0
    money_fen: int = 0
    travel_unknown: int = 0

    @property
    def lectures(self) -> int:
        return self.by_kind.get("lecture", 0)

    @property
    def operations(self) -> int:
        return self.performed + self.guided + self.demonstrated

    @property
    def money_yuan(self) -> float:
        return self.money_fen / 100

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out.update(lectures=self.lectures, operations=self.operations, money_yuan=self.money_yuan,
                   travel_km=round(self.travel_km, 1), travel_hours=round(self.travel_hours, 1))
        return out


@dataclass
class Filters:
    year: int | None
    studio_team_id: int | None = None
    batch_id: int | None = None
    host_organisation_id: int | None = None


@dataclass
class ImpactReport:
    filters: Filters
    group_by: str
    rows: list[ImpactRow]
    total: ImpactRow
    monthly_kept_local: list[int] | None  # Jan..Dec of the year; None for every year
    rates: dict[str, float]


# ---------------------------------------------------------------------------- who reads

def check_reader(db: Session, user: User, studio_team_id: int | None) -> int | None:
    """Planners and the health bureau read every figure; members of a studio read their studio's.
    Returns the studio filter to apply (a member without one gets their first studio)."""
    if service.is_planner(user) or user.role == Role.HEALTH_BUREAU:
        return studio_team_id
    mine = studios_of(db, user) if user.role not in (Role.PATIENT,) else []
    if not mine:
        raise AccessDenied("只有医务科、卫健局或工作室成员可以查看下沉成效 / only planners, the health bureau and "
                           "studio members see outreach impact")
    if studio_team_id is None:
        return sorted(mine)[0]
    if studio_team_id not in mine:
        raise AccessDenied("只能查看本人所在工作室的成效 / you see your own studio's figures only")
    return studio_team_id


def check_filters(db: Session, f: Filters, group_by: str) -> None:
    errors = []
    if group_by not in GROUPS:
        errors.append(field_error("group", f"分组须为 {', '.join(GROUPS)} 之一 / group must be one of "
                                           f"{', '.join(GROUPS)}"))
    if f.year is not None and not MIN_YEAR <= f.year <= local_today().year + 1:
        errors.append(field_error("year", f"年份须在 {MIN_YEAR} 到明年之间 / year must be {MIN_YEAR} to next year"))
    if errors:
        raise InvalidInput("报表条件有误 / the report's filters have problems", field_errors=errors)
    if f.studio_team_id is not None:
        team = db.get(Team, f.studio_team_id)
        if team is None or team.kind != TeamKind.EXPERT_STUDIO:
            raise NotFound("没有这个专家工作室 / no such expert studio")
    if f.batch_id is not None and db.get(AidBatch, f.batch_id) is None:
        raise NotFound("没有这个帮扶批次 / no such aid batch")
    if f.host_organisation_id is not None and db.get(Organisation, f.host_organisation_id) is None:
        raise NotFound("没有这个机构 / no such organisation")


# ---------------------------------------------------------------------------- the queries

def _year_start(year: int) -> datetime:
    return datetime(year, 1, 1, tzinfo=LOCAL_TZ)


def _years_case(col: Any, years: list[int], *, dates: bool) -> ColumnElement[Any]:
    """The local year of a timestamp or date column, as a CASE over the years asked (portable SQL)."""
    if dates:
        whens = [(and_(col >= date(y, 1, 1), col < date(y + 1, 1, 1)), y) for y in years]
    else:
        whens = [(and_(col >= _year_start(y), col < _year_start(y + 1)), y) for y in years]
    return case(*whens, else_=None)


class _Query:
    """The group key and filters for each source table, for one report."""

    def __init__(self, f: Filters, group_by: str | None, years: list[int]) -> None:
        self.f, self.group_by, self.years = f, group_by, years

    # sessions, and the rows hanging off them
    def session_key(self) -> ColumnElement[Any] | None:
        return {"studio": OutreachSession.studio_team_id, "batch": AidRotation.batch_id,
                "host": OutreachSession.host_organisation_id,
                "year": _years_case(OutreachSession.starts_at, self.years, dates=False),
                None: None}[self.group_by]

    def session_where(self) -> list[ColumnElement[bool]]:
        f = self.f
        out: list[ColumnElement[bool]] = [OutreachSession.status == "done"]
        if f.year is not None:
            out += [OutreachSession.starts_at >= _year_start(f.year),
                    OutreachSession.starts_at < _year_start(f.year + 1)]
        if f.studio_team_id is not None:
            out.append(OutreachSession.studio_team_id == f.studio_team_id)
        if f.batch_id is not None:
            out.append(AidRotation.batch_id == f.batch_id)
        if f.host_organisation_id is not None:
            out.append(OutreachSession.host_organisation_id == f.host_organisation_id)
        return out

    def owned_key(self, table: Any, day_col: Any, host_col: Any) -> ColumnElement[Any] | None:
        """Techniques and traineeships carry their own studio, rotation, host and day."""
        return {"studio": table.studio_team_id, "batch": AidRotation.batch_id, "host": host_col,
                "year": _years_case(day_col, self.years, dates=True), None: None}[self.group_by]

    def owned_where(self, table: Any, day_col: Any, host_col: Any) -> list[ColumnElement[bool]]:
        f = self.f
        out: list[ColumnElement[bool]] = []
        if f.year is not None:
            out += [day_col >= date(f.year, 1, 1), day_col <= date(f.year, 12, 31)]
        if f.studio_team_id is not None:
            out.append(table.studio_team_id == f.studio_team_id)
        if f.batch_id is not None:
            out.append(AidRotation.batch_id == f.batch_id)
        if f.host_organisation_id is not None:
            out.append(host_col == f.host_organisation_id)
        return out


def _grouped(db: Session, key: ColumnElement[Any] | None, cols: list[Any], build: Any,
             extra_group: list[Any] | None = None) -> list[tuple[str, tuple[Any, ...]]]:
    """Run `build(select(...))` grouped by the key (and `extra_group`); rows as (key string, values)."""
    extra_group = extra_group or []
    head = [key.label(GROUP_LABEL)] if key is not None else []
    q = build(select(*head, *extra_group, *cols))
    # GROUP BY the output name: the key is a CASE with bound parameters for "per year", and PostgreSQL
    # (server-side parameters) would not see "CASE … $1" and "CASE … $5" as the same expression.
    group = [*([GROUP_LABEL] if key is not None else []), *extra_group]
    if group:
        q = q.group_by(*group)
    out = []
    for row in db.execute(q).all():
        values = tuple(row)
        if key is None:
            out.append((TOTAL_KEY, values))
        else:
            out.append((NONE_KEY if values[0] is None else str(values[0]), values[1:]))
    return out


def _figures(db: Session, qs: _Query, rates: dict[str, float],
             travel: dict[tuple[int, int], _Trip]) -> dict[str, ImpactRow]:
    rows: dict[str, ImpactRow] = {}

    def row(k: str) -> ImpactRow:
        if k not in rows:
            rows[k] = ImpactRow(key=k, name="")
        return rows[k]

    key = qs.session_key()
    where = qs.session_where()

    def sessions_from(q: Any) -> Any:
        return q.select_from(OutreachSession).outerjoin(
            AidRotation, AidRotation.id == OutreachSession.rotation_id).where(*where)

    def activity_from(table: Any) -> Any:
        def build(q: Any) -> Any:
            return q.select_from(table).join(SessionActivity, SessionActivity.id == table.activity_id).join(
                OutreachSession, OutreachSession.id == SessionActivity.session_id).outerjoin(
                AidRotation, AidRotation.id == OutreachSession.rotation_id).where(*where)
        return build

    for k, (kind, n) in _grouped(db, key, [func.count()], sessions_from, [OutreachSession.kind]):
        r = row(k)
        r.by_kind[kind] = int(n)
        r.sessions += int(n)
    for k, (role, n) in _grouped(db, key, [func.count()], activity_from(ActivityProcedure), [ActivityProcedure.role]):
        if role in PROCEDURE_ROLES:
            setattr(row(k), role, int(n))
    kept = case((ActivityPatient.outcome != "referred_up", 1), else_=0)
    up = case((ActivityPatient.outcome == "referred_up", 1), else_=0)
    for k, (seen, kept_n, up_n, refs) in _grouped(
            db, key, [func.count(ActivityPatient.id), func.sum(kept), func.sum(up),
                      func.count(func.distinct(ActivityPatient.referral_id))], activity_from(ActivityPatient)):
        r = row(k)
        r.patients_seen, r.kept_local = int(seen), int(kept_n or 0)
        r.referred_up, r.referrals = int(up_n or 0), int(refs)
    for k, (n,) in _grouped(db, key, [func.count(func.distinct(ActivityTrainee.practitioner_id))],
                            activity_from(ActivityTrainee)):
        row(k).trainees_present = int(n)

    no_show = case((OutreachBooking.status == "no_show", 1), else_=0)
    for k, (n, ns) in _grouped(db, key, [func.count(OutreachBooking.id), func.sum(no_show)],
                               lambda q: q.select_from(OutreachBooking).join(
                                   OutreachSession, OutreachSession.id == OutreachBooking.session_id).outerjoin(
                                   AidRotation, AidRotation.id == OutreachSession.rotation_id).where(
                                   *where, OutreachBooking.status.in_(BOOKING_TOOK_PLACE))):
        r = row(k)
        r.bookings, r.no_shows = int(n), int(ns or 0)

    # travel: patients kept local per (group, host, alternative)
    alternative = func.coalesce(Team.home_organisation_id, Post.organisation_id)

    def kept_from(q: Any) -> Any:
        return activity_from(ActivityPatient)(q).outerjoin(Team, Team.id == OutreachSession.studio_team_id).outerjoin(
            Post, and_(Post.practitioner_id == OutreachSession.practitioner_id, Post.is_primary.is_(True))).where(
            ActivityPatient.outcome != "referred_up")

    pairs = _grouped(db, key, [func.count(ActivityPatient.id)], kept_from,
                     [OutreachSession.host_organisation_id, alternative.label("impact_alternative")])
    _fill_travel(db, pairs, rates, travel)
    money: dict[str, float] = {}
    for k, (host_id, alt_id, n) in pairs:
        r = row(k)
        trip = travel.get((host_id, alt_id)) if alt_id is not None else None
        if trip is None or trip.km is None or trip.hours is None:
            r.travel_unknown += int(n)
            continue
        r.travel_km += n * 2 * trip.km
        r.travel_hours += n * 2 * trip.hours
        money[k] = money.get(k, 0.0) + n * trip.money_fen

    for table, day_col, host_col in ((NewTechnique, NewTechnique.introduced_on, NewTechnique.host_organisation_id),
                                     (Traineeship, Traineeship.starts_on, Traineeship.home_organisation_id)):
        owned_key = qs.owned_key(table, day_col, host_col)
        owned_where = qs.owned_where(table, day_col, host_col)

        def owned_from(q: Any, table: Any = table, owned_where: Any = owned_where) -> Any:
            return q.select_from(table).outerjoin(AidRotation, AidRotation.id == table.rotation_id).where(*owned_where)

        if table is NewTechnique:
            gap = case((NewTechnique.fills_gap.is_(True), 1), else_=0)
            for k, (n, gaps) in _grouped(db, owned_key, [func.count(NewTechnique.id), func.sum(gap)], owned_from):
                r = row(k)
                r.techniques, r.gaps_filled = int(n), int(gaps or 0)
        else:
            further = case((Traineeship.kind == "further_training", 1), else_=0)
            mentor = case((Traineeship.kind == "mentorship", 1), else_=0)
            for k, (n, ft, ms) in _grouped(db, owned_key, [func.count(Traineeship.id), func.sum(further),
                                                           func.sum(mentor)], owned_from):
                r = row(k)
                r.traineeships, r.further_training, r.mentorships = int(n), int(ft or 0), int(ms or 0)
    for k, fen in money.items():
        rows[k].money_fen = int(round(fen))  # rounded once per group, after summing the pairs
    return rows


@dataclass
class _Trip:
    """One way from a host to the alternative hospital, and what a kept-local patient is spared."""

    km: float | None
    hours: float | None
    money_fen: float  # per patient, round trip, companions and the trip's extra included


def trip(db: Session, host: Organisation, alternative: Organisation, rates: dict[str, float]) -> _Trip:
    """The per-patient saving for one (host, alternative) pair (see the module's definitions)."""
    if host.id == alternative.id:
        return _Trip(km=0.0, hours=0.0, money_fen=0.0)
    minutes = service.travel_minutes(db, host, alternative, settings=rates)
    if minutes is None:
        return _Trip(km=None, hours=None, money_fen=0.0)
    km = service.straight_km(host, alternative) * rates.get("detour_factor", 1.3)
    hours = minutes / 60.0
    people = 1 + rates.get("companions", 1.0)
    extra = rates.get("provincial_trip_extra_fen" if alternative.level == OrgLevel.PROVINCIAL
                      else "county_trip_extra_fen", 0.0)
    money = people * (2 * km * rates.get("fare_fen_per_km", 0.0) + 2 * hours * rates.get("income_fen_per_hour", 0.0))
    return _Trip(km=km, hours=hours, money_fen=money + extra)


def _fill_travel(db: Session, pairs: list[tuple[str, tuple[Any, ...]]], rates: dict[str, float],
                 cache: dict[tuple[int, int], _Trip]) -> None:
    wanted = {(h, a) for _, (h, a, _) in pairs if a is not None and (h, a) not in cache}
    if not wanted:
        return
    ids = {i for pair in wanted for i in pair}
    orgs = {o.id: o for o in db.scalars(select(Organisation).where(Organisation.id.in_(ids)))}
    for h, a in wanted:
        cache[(h, a)] = trip(db, orgs[h], orgs[a], rates)


def _monthly_kept_local(db: Session, qs: _Query, year: int) -> list[int]:
    starts = [datetime(year + (m // 12), m % 12 + 1, 1, tzinfo=LOCAL_TZ) for m in range(13)]
    month = case(*[(and_(OutreachSession.starts_at >= starts[m], OutreachSession.starts_at < starts[m + 1]), m + 1)
                   for m in range(12)], else_=None)
    q = select(month.label(MONTH_LABEL), func.count(ActivityPatient.id)).select_from(ActivityPatient).join(
        SessionActivity, SessionActivity.id == ActivityPatient.activity_id).join(
        OutreachSession, OutreachSession.id == SessionActivity.session_id).outerjoin(
        AidRotation, AidRotation.id == OutreachSession.rotation_id).where(
        *qs.session_where(), ActivityPatient.outcome != "referred_up").group_by(MONTH_LABEL)
    out = [0] * 12
    for m, n in db.execute(q).all():
        if m is not None:
            out[int(m) - 1] = int(n)
    return out


def _years(db: Session, f: Filters) -> list[int]:
    """The years a "per year" report spans: the filter's, else from the first record to the last."""
    if f.year is not None:
        return [f.year]
    first = db.scalar(select(func.min(OutreachSession.starts_at)).where(OutreachSession.status == "done"))
    last = db.scalar(select(func.max(OutreachSession.starts_at)).where(OutreachSession.status == "done"))
    lo = [first.astimezone(LOCAL_TZ).year] if first else []
    hi = [last.astimezone(LOCAL_TZ).year] if last else []
    for col in (NewTechnique.introduced_on, Traineeship.starts_on):
        a, b = db.execute(select(func.min(col), func.max(col))).one()
        lo += [a.year] if a else []
        hi += [b.year] if b else []
    if not lo:
        return [local_today().year]
    start = max(min(lo), max(hi) - MAX_YEARS + 1)
    return list(range(start, max(hi) + 1))


def _names(db: Session, group_by: str, keys: list[str]) -> dict[str, str]:
    ids = [int(k) for k in keys if k.isdigit()]
    if group_by == "year":
        return {k: k for k in keys}
    if not ids:
        return {}
    if group_by == "studio":
        return {str(i): n for i, n in db.execute(select(Team.id, Team.name).where(Team.id.in_(ids))).all()}
    if group_by == "host":
        return {str(i): n for i, n in db.execute(select(Organisation.id, Organisation.name)
                                                 .where(Organisation.id.in_(ids))).all()}
    return {str(i): f"{name} 第{number}批" for i, name, number in db.execute(
        select(AidBatch.id, AidRelationship.name, AidBatch.number).join(
            AidRelationship, AidRelationship.id == AidBatch.relationship_id).where(AidBatch.id.in_(ids))).all()}


def compute(db: Session, *, year: int | None, group_by: str = "studio", studio_team_id: int | None = None,
            batch_id: int | None = None, host_organisation_id: int | None = None) -> ImpactReport:
    """The report: one row per group with a figure, and the total row."""
    f = Filters(year=year, studio_team_id=studio_team_id, batch_id=batch_id,
                host_organisation_id=host_organisation_id)
    check_filters(db, f, group_by)
    rates = service.settings_of(db)
    travel: dict[tuple[int, int], _Trip] = {}
    years = _years(db, f) if group_by == "year" else []
    grouped = _figures(db, _Query(f, group_by, years), rates, travel)
    total = _figures(db, _Query(f, None, []), rates, travel).get(TOTAL_KEY) or ImpactRow(key=TOTAL_KEY, name="")
    total.name = "合计"
    names = _names(db, group_by, list(grouped))
    rows = list(grouped.values())
    for r in rows:
        r.name = names.get(r.key, "")
    rows.sort(key=lambda r: (r.key == NONE_KEY, int(r.key) if group_by == "year" and r.key.isdigit() else 0,
                             r.name, r.key))
    monthly = _monthly_kept_local(db, _Query(f, None, []), year) if year is not None else None
    return ImpactReport(filters=f, group_by=group_by, rows=rows, total=total, monthly_kept_local=monthly,
                        rates=rates)


def report_json(report: ImpactReport) -> dict[str, Any]:
    f = report.filters
    return {"year": f.year, "group": report.group_by, "studio_team_id": f.studio_team_id, "batch_id": f.batch_id,
            "host_organisation_id": f.host_organisation_id, "rows": [r.as_dict() for r in report.rows],
            "total": report.total.as_dict(), "monthly_kept_local": report.monthly_kept_local,
            "rates": report.rates}


def grouping_choices(db: Session) -> dict[str, list[tuple[int, str]]]:
    """Studios, aid batches and hosts a reader may filter by (names of organisations, never of patients)."""
    studios = [(i, n) for i, n in db.execute(select(Team.id, Team.name).where(
        Team.kind == TeamKind.EXPERT_STUDIO).order_by(Team.name).limit(500)).all()]
    batches = [(i, f"{name} 第{number}批") for i, name, number in db.execute(
        select(AidBatch.id, AidRelationship.name, AidBatch.number).join(
            AidRelationship, AidRelationship.id == AidBatch.relationship_id).order_by(
            AidRelationship.name, AidBatch.number).limit(500)).all()]
    host_ids = select(OutreachSession.host_organisation_id).distinct()
    hosts = [(i, n) for i, n in db.execute(select(Organisation.id, Organisation.name).where(
        Organisation.id.in_(host_ids)).order_by(Organisation.name).limit(1000)).all()]
    return {"studio": studios, "batch": batches, "host": hosts}


def rows_by_group(db: Session, **kwargs: Any) -> dict[str, ImpactReport]:
    """Every grouping for the same filters (the Excel export's sheets)."""
    return {g: compute(db, group_by=g, **kwargs) for g in GROUPS}

