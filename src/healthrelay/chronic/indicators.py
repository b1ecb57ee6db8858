"""Chronic disease indicators (慢病管理指标): management, standard-management and control rates, overdue and
lost-to-follow-up counts, by family-doctor team, village, township or county, as of a day or per month.

Aggregates only: no figure here carries a patient's name, so the health bureau may read every one.

The definitions (also in docs/architecture.md, "chronic/"); "as of
day D" is a Shanghai date, and for a past month D is its last day:
- managed(D): enrolments of the condition diagnosed on or before D and enrolled on or before D, active now
  or closed after D.
- control (Simple's definition): the denominator is the managed enrolled at least 90 days before D; of
  them, controlled when the latest blood pressure (hypertension) or fasting glucose (diabetes) taken in the
  90 days ending D (days D-89 … D), from a reading or a follow-up visit, is below target (BP < 140/90,
  < 150/90 from 65 on D; fasting glucose < 7.0); uncontrolled when that latest value is not; no visit when
  nothing was taken in those days. A reading and a visit on the same day: the reading counts (it has a time).
- standard management (规范管理): of the managed enrolled at least 365 days before D, those with at least
  `visits_per_year` face-to-face follow-ups (clinic or home) in the 365 days ending D.
- overdue: next visit due before D and not hidden by a call outcome on D; a present-day figure read from
  the derived columns, so only given for today (None for a day in the past).
- lost to follow-up: enrolled more than `lost_after_days` (365) days before D and no contact (a reading or a
  visit) since D - `lost_after_days`; for today from `last_contact_at`, for a past day from the readings and
  visits themselves.
- management rate: managed / (adult residents, aged 18 or more on D and alive on D, of the group's villages
  in the master patient index × the condition's prevalence).

Everything is one GROUP BY over the enrolments (joined to patients for the age), outer-joined to small
aggregates over the window's rows: each patient's latest value (one MAX over an encoded "time + value" per
reading and visit), each enrolment's face-to-face visits in the year and, for a past day, the patients with
any contact in the year. Each is a hash aggregate over a date range, hash-joined to the enrolments; per-row
correlated lookups were three times slower at county scale (bench/chronic.py). The same Core expression
runs on SQLite and PostgreSQL; only the "minute number" of a timestamp is spelled per dialect.
"""

from __future__ import annotations

import calendar
from collections import defaultdict
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any

from sqlalchemy import BigInteger, and_, case, cast, func, literal, null, or_, select, text
from sqlalchemy.orm import Session
from sqlalchemy.sql.elements import ColumnElement

from healthrelay.accounts.models import Role, User
from healthrelay.chronic import rules as chronic_rules
from healthrelay.chronic.followups import FACE_TO_FACE
from healthrelay.chronic.models import ChronicEnrolment, ChronicFollowUp, ChronicReading
from healthrelay.core.db import local_today
from healthrelay.core.errors import AccessDenied, InvalidInput, NotFound, field_error
from healthrelay.directory.models import Area, AreaLevel, Organisation, Team, TeamKind, TeamMember
from healthrelay.patients.models import Patient

# The UTC instant a Shanghai day begins; for this transaction, hash aggregates in memory and no JIT.
from healthrelay.referrals.kpi import _local_midnight_utc as _midnight_utc
from healthrelay.referrals.kpi import _tune

GROUPS = ("team", "village", "township", "county")
READERS = frozenset({Role.ALLIANCE_ADMIN, Role.HEALTH_BUREAU, Role.ORG_ADMIN, Role.CLINICIAN})
SEE_ALL = frozenset({Role.ALLIANCE_ADMIN, Role.HEALTH_BUREAU})
ADULT_AGE = 18
MAX_MONTHS = 36
MIN_YEAR = 1900
COUNTY_KEY = "county"
UNKNOWN_KEY = "none"


# --- the rows ------------------------------------------------------------------------------------------

def _rate(num: int | float, den: int | float) -> float | None:
    return num / den if den else None


@dataclass
class IndicatorRow:
    """One group's figures as of a day; counts are enrolments, rates fractions (None when nothing to divide)."""

    key: str  # team id, area id, "county", or "none" for enrolments without a team or village
    name: str
    managed: int = 0
    adults: int = 0  # residents aged >= 18 in the group's villages
    estimated: float = 0.0  # adults × prevalence
    standard_num: int = 0
    standard_den: int = 0
    control_num: int = 0
    control_den: int = 0
    uncontrolled: int = 0
    no_visit: int = 0
    overdue: int | None = None  # present day only
    lost: int = 0
    latitude: float | None = None
    longitude: float | None = None

    @property
    def management_rate(self) -> float | None:
        return _rate(self.managed, self.estimated)

    @property
    def standard_rate(self) -> float | None:
        return _rate(self.standard_num, self.standard_den)

    @property
    def control_rate(self) -> float | None:
        return _rate(self.control_num, self.control_den)

    def as_dict(self) -> dict[str, Any]:
        return {"key": self.key, "name": self.name, "managed": self.managed, "adults": self.adults,
                "estimated": round(self.estimated, 1), "management_rate": self.management_rate,
                "standard_num": self.standard_num, "standard_den": self.standard_den,
                "standard_rate": self.standard_rate, "control_num": self.control_num,
                "control_den": self.control_den, "control_rate": self.control_rate,
                "uncontrolled": self.uncontrolled, "no_visit": self.no_visit, "overdue": self.overdue,
                "lost": self.lost}


@dataclass
class MonthPoint:
    """A month of the series: figures as of its last day (today for the current month)."""

    month: str  # "2026-05"
    as_of: date
    row: IndicatorRow


@dataclass
class Scope:
    """What a reader may see: every area (None), or some areas and/or teams."""

    area_ids: set[int] | None = None  # the areas (township or village) the reader may pick
    team_ids: set[int] | None = None  # the teams whose figures a clinician sees
    default_area_id: int | None = None
    levels: tuple[str, ...] = GROUPS


# --- days ----------------------------------------------------------------------------------------------

def _birth_cutoff(day: date, age: int) -> date:
    """The latest birth date of someone aged `age` or more on `day` (a 29 February birthday counts on the
    28th in common years, as `rules.age_on` does)."""
    try:
        return day.replace(year=day.year - age)
    except ValueError:
        return date(day.year - age, 2, 28)


def month_end(month: str) -> date:
    """"2026-05" -> 2026-05-31; InvalidInput naming the field otherwise (a month before 1900 too: the windows
    reach a year back and would leave the calendar)."""
    try:
        y, m = (int(part) for part in month.strip().split("-"))
        end = date(y, m, calendar.monthrange(y, m)[1])
    except (ValueError, AttributeError):
        raise InvalidInput("月份须为年月，如 2026-05 / month must be a month such as 2026-05",
                           field_errors=[field_error("month", "YYYY-MM")]) from None
    if y < MIN_YEAR:
        raise InvalidInput(f"月份不能早于 {MIN_YEAR} 年 / the month must not be before {MIN_YEAR}",
                           field_errors=[field_error("month", f"before {MIN_YEAR}")])
    return end


def as_of_for_month(month: str | None, today: date | None = None) -> date:
    """The day a month's figures are taken: its last day, or today for the current month; a future month
    is refused."""
    today = today or local_today()
    if not month or not month.strip():
        return today
    end = month_end(month)
    if end.replace(day=1) > today:
        raise InvalidInput("不能统计未来的月份 / the month must not be in the future",
                           field_errors=[field_error("month", "in the future")])
    return min(end, today)


def last_months(n: int, today: date) -> list[str]:
    y, m = today.year, today.month
    keys = []
    for _ in range(n):
        keys.append(f"{y:04d}-{m:02d}")
        y, m = (y - 1, 12) if m == 1 else (y, m - 1)
    return list(reversed(keys))


# --- dialect helpers -----------------------------------------------------------------------------------

def _is_pg(db: Session) -> bool:
    return db.get_bind().dialect.name == "postgresql"


def _stamp(db: Session, column: Any, *, instant: bool) -> ColumnElement[int]:
    """Minutes since 1970 (UTC) of a timestamp, or of the Shanghai midnight that starts a date column: plain
    integer arithmetic, several times cheaper per row than formatting the local time."""
    if _is_pg(db):
        if instant:
            return cast(func.date_part("epoch", column), BigInteger) // 60
        return cast(column - literal(date(1970, 1, 1)), BigInteger) * 1440 - _UTC_OFFSET_MINUTES
    if instant:
        return cast(func.strftime("%s", column), BigInteger) // 60
    return cast((func.julianday(column) - 2440587.5) * 1440, BigInteger) - _UTC_OFFSET_MINUTES


_UTC_OFFSET_MINUTES = 480  # Shanghai is UTC+8 all year (no daylight saving since 1991)


# --- the per-enrolment facts ---------------------------------------------------------------------------

# The latest value in the window is found with one MAX per patient: each reading and visit is encoded as
# ((minute * 10 + source) * SCALE + value), source 1 for a reading, 0 for a visit (at the day's first minute,
# so a reading the same day wins: it has a time). The largest code is the latest value; 15 digits.
_BP_SCALE = 1_000_000  # sbp * 1000 + dbp
_GLUCOSE_SCALE = 100_000  # glucose in 1/1000 mmol/L


def _codes(db: Session, rules: chronic_rules.ConditionRules) -> tuple[ColumnElement[Any], ColumnElement[bool],
                                                                       ColumnElement[Any], ColumnElement[bool]]:
    """The encoded value of a reading and of a visit, and whether each carries the condition's value."""
    R, F = ChronicReading, ChronicFollowUp
    reading_at = _stamp(db, R.measured_at, instant=True) * 10 + 1
    visit_at = _stamp(db, F.visit_on, instant=False) * 10
    if _uses_bp(rules):
        return ((reading_at * _BP_SCALE + R.sbp * 1000 + R.dbp),
                and_(R.kind == "bp", R.sbp.is_not(None), R.dbp.is_not(None)),
                (visit_at * _BP_SCALE + F.sbp * 1000 + F.dbp), and_(F.sbp.is_not(None), F.dbp.is_not(None)))
    return ((reading_at * _GLUCOSE_SCALE + cast(func.round(R.glucose_mmol * 1000), BigInteger)),
            and_(R.kind == "glucose", R.glucose_context == "fasting", R.glucose_mmol.is_not(None)),
            (visit_at * _GLUCOSE_SCALE + cast(func.round(F.fasting_glucose * 1000), BigInteger)),
            F.fasting_glucose.is_not(None))


def _history(db: Session, rules: chronic_rules.ConditionRules, day: date) -> tuple[Any, Any, Any]:
    """Three aggregates over one pass each of the visits and readings of the longest window needed (the
    control window, the standard-management year D-364 … D and the lost-to-follow-up period from
    D - lost_after_days, each tunable, so none is assumed to contain the others):
    - visits (eid, pid, n, code, seen): per enrolment, face-to-face visits in the 365 days ending D, the
      latest value of the control window, visits in the lost-to-follow-up period (MATERIALIZED: read twice);
    - visit_values (pid, code, seen): the same per patient (a value taken at any of the patient's visits);
    - readings (pid, code, seen): per patient, the latest reading value of the window, readings in the
      lost-to-follow-up period.
    """
    R, F = ChronicReading, ChronicFollowUp
    window_first = day - timedelta(days=rules.control_window_days - 1)
    year_first = day - timedelta(days=364)
    lost_first = day - timedelta(days=rules.lost_after_days)
    first = min(window_first, year_first, lost_first)
    end = _midnight_utc(day + timedelta(days=1))
    reading_code, reading_has, visit_code, visit_has = _codes(db, rules)
    visits = (select(F.enrolment_id.label("eid"), F.patient_id.label("pid"),
                     func.sum(case((and_(F.mode.in_(sorted(FACE_TO_FACE)), F.visit_on >= year_first), 1),
                                   else_=0)).label("n"),
                     func.max(case((and_(F.visit_on >= window_first, visit_has), visit_code))).label("code"),
                     func.sum(case((F.visit_on >= lost_first, 1), else_=0)).label("seen"))
              .where(F.visit_on >= first, F.visit_on <= day)
              .group_by(F.enrolment_id, F.patient_id)
              .cte("visits").prefix_with("MATERIALIZED"))
    visit_values = (select(visits.c.pid, func.max(visits.c.code).label("code"), func.sum(visits.c.seen).label("seen"))
                    .group_by(visits.c.pid).subquery("visit_values"))
    readings = (select(R.patient_id.label("pid"),
                       func.max(case((and_(R.measured_at >= _midnight_utc(window_first), reading_has), reading_code)))
                       .label("code"),
                       func.sum(case((R.measured_at >= _midnight_utc(lost_first), 1), else_=0)).label("seen"))
                .where(R.measured_at >= _midnight_utc(first), R.measured_at < end)
                .group_by(R.patient_id).subquery("readings_in_year"))
    return visits, visit_values, readings


def _facts(db: Session, rules: chronic_rules.ConditionRules, day: date, *, present: bool
           ) -> tuple[list[ColumnElement[Any]], list[tuple[Any, ColumnElement[bool]]]]:
    """The per-enrolment figures as grouping columns: control status (0 not in the denominator,
    1 controlled, 2 uncontrolled, 3 no value in the window), standard management (0 not in the denominator,
    1 no, 2 yes), lost (0/1), overdue (0/1, or NULL for a past day); and the aggregates to outer join."""
    E, P = ChronicEnrolment, Patient
    window = rules.control_window_days
    control_eligible = E.enrolled_at < _midnight_utc(day - timedelta(days=window - 1))  # date <= D - 90
    year_eligible = E.enrolled_at < _midnight_utc(day - timedelta(days=364))  # date <= D - 365

    visits, visit_values, readings = _history(db, rules, day)
    joins: list[tuple[Any, ColumnElement[bool]]] = [(visits, visits.c.eid == E.id),
                                                     (visit_values, visit_values.c.pid == E.patient_id),
                                                     (readings, readings.c.pid == E.patient_id)]
    code = _greatest(db, func.coalesce(readings.c.code, 0), func.coalesce(visit_values.c.code, 0))
    if _uses_bp(rules):
        value = code % _BP_SCALE
        sbp, dbp = value // 1000, value % 1000
        elderly = P.birth_date <= _birth_cutoff(day, rules.elderly_age)
        target_s = case((elderly, rules.bp_target_elderly[0]), else_=rules.bp_target[0])
        target_d = case((elderly, rules.bp_target_elderly[1]), else_=rules.bp_target[1])
        below: ColumnElement[bool] = and_(sbp < target_s, dbp < target_d)
    else:
        below = code % _GLUCOSE_SCALE < round(rules.fpg_target * 1000)
    status = case((~control_eligible, literal(0)), (code == 0, literal(3)), (below, literal(1)), else_=literal(2))
    standard = case((year_eligible, case((func.coalesce(visits.c.n, 0) >= rules.visits_per_year, literal(2)),
                                         else_=literal(1))), else_=literal(0))

    lost_since = _midnight_utc(day - timedelta(days=rules.lost_after_days))
    lost_eligible = E.enrolled_at < lost_since
    overdue: ColumnElement[Any]
    if present:
        silent = or_(E.last_contact_at.is_(None), E.last_contact_at < lost_since)
        overdue = case((and_(E.next_visit_due < day, or_(E.hidden_until.is_(None), E.hidden_until < day)),
                        literal(1)), else_=literal(0))
    else:
        silent = and_(func.coalesce(readings.c.seen, 0) == 0, func.coalesce(visit_values.c.seen, 0) == 0)
        overdue = null()
    lost = case((and_(lost_eligible, silent), literal(1)), else_=literal(0))
    return [status, standard, lost, overdue], joins


def _greatest(db: Session, a: ColumnElement[Any], b: ColumnElement[Any]) -> ColumnElement[Any]:
    return func.greatest(a, b) if _is_pg(db) else func.max(a, b)


def _uses_bp(rules: chronic_rules.ConditionRules) -> bool:
    return rules.uses_bp or not rules.uses_glucose


def _managed(condition: str, day: date) -> list[ColumnElement[bool]]:
    E = ChronicEnrolment
    end = _midnight_utc(day + timedelta(days=1))
    return [E.condition_code == condition, E.diagnosed_on <= day, E.enrolled_at < end,
            or_(E.status == "active", E.closed_at >= end)]


def _fill(row: IndicatorRow, status: int, standard: int, lost: int, overdue: int | None, n: int) -> None:
    row.managed += n
    if status:
        row.control_den += n
        row.control_num += n if status == 1 else 0
        row.uncontrolled += n if status == 2 else 0
        row.no_visit += n if status == 3 else 0
    if standard:
        row.standard_den += n
        row.standard_num += n if standard == 2 else 0
    row.lost += n if lost else 0
    if overdue is not None:
        row.overdue = (row.overdue or 0) + (n if overdue else 0)


# --- areas and population ------------------------------------------------------------------------------

@dataclass
class _Areas:
    by_id: dict[int, Area]
    children: dict[int | None, list[int]]

    def villages_under(self, area_id: int) -> set[int]:
        out: set[int] = set()
        stack = [area_id]
        while stack:
            current = stack.pop()
            area = self.by_id.get(current)
            if area is not None and area.level == AreaLevel.VILLAGE:
                out.add(current)
            stack.extend(self.children.get(current, []))
        return out

    def township_of(self, village_id: int | None) -> int | None:
        area = self.by_id.get(village_id) if village_id is not None else None
        return area.parent_id if area is not None else None

    def county(self) -> Area | None:
        roots = [a for a in self.by_id.values() if a.level == AreaLevel.COUNTY]
        return roots[0] if len(roots) == 1 else None


def _areas(db: Session) -> _Areas:
    by_id = {a.id: a for a in db.scalars(select(Area))}
    children: dict[int | None, list[int]] = defaultdict(list)
    for a in by_id.values():
        children[a.parent_id].append(a.id)
    return _Areas(by_id=by_id, children=children)


def adults_by_village(db: Session, *, day: date, villages: set[int] | None = None) -> dict[int, int]:
    """Residents aged 18 or more and alive on `day`, per village, from the master patient index."""
    P = Patient
    stmt = (select(P.area_id, func.count())
            .where(P.area_id.is_not(None), P.merged_into_id.is_(None), P.birth_date <= _birth_cutoff(day, ADULT_AGE),
                   or_(P.deceased_on.is_(None), P.deceased_on > day))
            .group_by(P.area_id))
    if villages is not None:
        stmt = stmt.where(P.area_id.in_(sorted(villages)))
    return {area_id: int(n) for area_id, n in db.execute(stmt)}


# --- compute -------------------------------------------------------------------------------------------

def _check_group(group_by: str) -> None:
    if group_by not in GROUPS:
        raise InvalidInput("分组须为 team、village、township 或 county / level must be team, village, township or "
                           "county", field_errors=[field_error("level", "unknown value")])


@dataclass
class _Request:
    """What a computation needs besides the day, read once (a 12-month series reuses it)."""

    condition: str
    rules: chronic_rules.ConditionRules
    group_by: str
    areas: _Areas
    villages: set[int] | None  # the area's villages (None: every village)
    teams: set[int] | None  # the teams kept (None: every team)
    population_villages: set[int] | None  # where the adults of the management rate live
    area_id: int | None


def _request(db: Session, *, condition: str, group_by: str, area_id: int | None, team_id: int | None,
             team_ids: set[int] | None) -> _Request:
    _check_group(group_by)
    rules = chronic_rules.rules_for(db, condition)
    areas = _areas(db)
    villages: set[int] | None = None
    if area_id is not None:
        if area_id not in areas.by_id:
            raise NotFound(f"没有编号为 {area_id} 的地区 / no area {area_id}")
        villages = areas.villages_under(area_id)
    teams = set(team_ids) if team_ids is not None else None
    if team_id is not None:
        teams = {team_id} if teams is None else teams & {team_id}
    population = villages
    if group_by == "county" and teams is not None:
        # Some teams' figures as one row: the adults are those of the villages the teams serve (counted once),
        # as in the total of the teams' table; not the whole county's.
        served = {int(v) for t in db.scalars(select(Team).where(Team.id.in_(sorted(teams)))) for v in t.area_ids or []}
        population = served if villages is None else served & villages
    return _Request(condition=condition, rules=rules, group_by=group_by, areas=areas, villages=villages, teams=teams,
                    population_villages=population, area_id=area_id)


def compute(db: Session, *, condition: str, as_of: date, group_by: str, area_id: int | None = None,
            team_id: int | None = None, team_ids: set[int] | None = None, today: date | None = None
            ) -> list[IndicatorRow]:
    """The indicators of one condition as of a Shanghai day, one row per group (see the module docstring).

    `area_id` keeps the enrolments living in that area's villages (a township, a village or the county);
    `team_id` / `team_ids` keep those of a team or of some teams (a clinician's; grouped by county, the
    adults are then those of the teams' villages). Overdue counts are given only when `as_of` is today
    (`today` defaults to the Shanghai date).
    """
    today = today or local_today()
    _check_day(as_of, today)
    req = _request(db, condition=condition, group_by=group_by, area_id=area_id, team_id=team_id, team_ids=team_ids)
    _tune(db)
    return _compute(db, req, as_of=as_of, today=today)


def _check_day(as_of: date, today: date) -> None:
    if as_of > today:
        raise InvalidInput("统计日期不能在未来 / the day must not be in the future",
                           field_errors=[field_error("month", "in the future")])


def _compute(db: Session, req: _Request, *, as_of: date, today: date) -> list[IndicatorRow]:
    present = as_of >= today
    rules, group_by, villages, teams = req.rules, req.group_by, req.villages, req.teams
    E = ChronicEnrolment
    if group_by == "team":
        key: ColumnElement[Any] = E.team_id
    elif group_by == "village":
        key = E.village_area_id
    elif group_by == "township":
        key = Area.parent_id
    else:
        key = literal(COUNTY_KEY)
    # Grouped by position (key × status × standard × lost × overdue: a few thousand groups, each expression
    # computed once per row), added up here.
    columns, joins = _facts(db, rules, as_of, present=present)
    stmt = select(key.label("k"), *columns, func.count()).select_from(E).join(Patient, Patient.id == E.patient_id)
    for sub, on in joins:
        stmt = stmt.outerjoin(sub, on)
    stmt = stmt.where(*_managed(req.condition, as_of))
    if group_by == "township":
        stmt = stmt.outerjoin(Area, Area.id == E.village_area_id)
    if villages is not None:
        stmt = stmt.where(E.village_area_id.in_(sorted(villages)) if villages else literal(False))
    if teams is not None:
        stmt = stmt.where(E.team_id.in_(sorted(teams)) if teams else literal(False))
    stmt = stmt.group_by(text("1, 2, 3, 4, 5"))
    rows: dict[str, IndicatorRow] = {}
    for k, status, standard, lost, overdue, n in db.execute(stmt):
        name_key = UNKNOWN_KEY if k is None else str(k)
        row = rows.setdefault(name_key, IndicatorRow(key=name_key, name=""))
        _fill(row, int(status), int(standard), int(lost), None if overdue is None else int(overdue), int(n))

    _complete(db, rows, group_by=group_by, areas=req.areas, villages=villages, teams=teams, area_id=req.area_id)
    population = adults_by_village(db, day=as_of, villages=req.population_villages)
    _name_and_count(db, rows, group_by=group_by, areas=req.areas, population=population, villages=villages,
                    prevalence=rules.prevalence, present=present)
    return sorted(rows.values(), key=lambda r: (r.key == UNKNOWN_KEY, r.name, r.key))


def _complete(db: Session, rows: dict[str, IndicatorRow], *, group_by: str, areas: _Areas,
              villages: set[int] | None, teams: set[int] | None, area_id: int | None) -> None:
    """Groups with no managed patient still get a row: a village nobody manages is itself a finding."""
    keys: list[str] = []
    if group_by == "village":
        keys = [str(v) for v in (villages if villages is not None else
                                 (a.id for a in areas.by_id.values() if a.level == AreaLevel.VILLAGE))]
    elif group_by == "township":
        if villages is not None:
            keys = [str(t) for t in {areas.township_of(v) for v in villages} if t is not None]
        else:
            keys = [str(a.id) for a in areas.by_id.values() if a.level == AreaLevel.TOWNSHIP]
    elif group_by == "team":
        stmt = select(Team.id).where(Team.kind == TeamKind.FAMILY_DOCTOR)
        if teams is not None:
            stmt = stmt.where(Team.id.in_(sorted(teams)))
        found = list(db.scalars(stmt))
        if villages is not None and teams is None:
            served = {t.id for t in db.scalars(select(Team).where(Team.id.in_(found)))
                      if set(t.area_ids or []) & villages}
            found = [t for t in found if t in served]
        keys = [str(t) for t in found]
    else:
        keys = [COUNTY_KEY]
    for k in keys:
        rows.setdefault(k, IndicatorRow(key=k, name=""))


def _name_and_count(db: Session, rows: dict[str, IndicatorRow], *, group_by: str, areas: _Areas,
                    population: dict[int, int], villages: set[int] | None, prevalence: float,
                    present: bool) -> None:
    team_villages: dict[str, list[int]] = {}
    if group_by == "team":
        ids = [int(k) for k in rows if k != UNKNOWN_KEY]
        for team in db.scalars(select(Team).where(Team.id.in_(ids))):
            rows[str(team.id)].name = team.name
            team_villages[str(team.id)] = [int(v) for v in team.area_ids or []]
    for k, row in rows.items():
        if present and row.overdue is None:
            row.overdue = 0
        if k == UNKNOWN_KEY:
            row.name = "（未登记）/ (not recorded)"
            continue
        if group_by == "team":
            served = team_villages.get(k, [])
            row.adults = sum(population.get(v, 0) for v in served)
        elif group_by == "county":
            county = areas.county()
            row.name = county.name if county is not None and villages is None else "合计 / total"
            row.adults = sum(population.values())
        else:
            area = areas.by_id.get(int(k))
            if area is not None:
                row.name, row.latitude, row.longitude = area.name, area.latitude, area.longitude
            if group_by == "village":
                row.adults = population.get(int(k), 0)
            else:
                row.adults = sum(n for v, n in population.items() if areas.township_of(v) == int(k))
        row.estimated = row.adults * prevalence


def total(rows: list[IndicatorRow], *, adults: int, prevalence: float, name: str = "合计 / total") -> IndicatorRow:
    """The rows added up (every count is additive); the population is passed in because teams share
    villages."""
    out = IndicatorRow(key="total", name=name)
    for r in rows:
        out.managed += r.managed
        out.control_num += r.control_num
        out.control_den += r.control_den
        out.uncontrolled += r.uncontrolled
        out.no_visit += r.no_visit
        out.standard_num += r.standard_num
        out.standard_den += r.standard_den
        out.lost += r.lost
        if r.overdue is not None:
            out.overdue = (out.overdue or 0) + r.overdue
    out.adults = adults
    out.estimated = adults * prevalence
    return out


def monthly(db: Session, *, condition: str, months: int, area_id: int | None = None, team_id: int | None = None,
            team_ids: set[int] | None = None, today: date | None = None) -> list[MonthPoint]:
    """The scope's figures per month for the last `months` months (the current one as of today)."""
    if not 1 <= months <= MAX_MONTHS:
        raise InvalidInput(f"月数须在 1 到 {MAX_MONTHS} 之间 / months must be 1 to {MAX_MONTHS}",
                           field_errors=[field_error("months", "out of range")])
    today = today or local_today()
    req = _request(db, condition=condition, group_by="county", area_id=area_id, team_id=team_id, team_ids=team_ids)
    _tune(db)
    out = []
    for key in last_months(months, today):
        day = min(month_end(key), today)
        rows = _compute(db, req, as_of=day, today=today)
        out.append(MonthPoint(month=key, as_of=day, row=rows[0]))
    return out


# --- who sees what -------------------------------------------------------------------------------------

def _user_teams(db: Session, user: User) -> set[int]:
    if user.practitioner_id is None:
        return set()
    return set(db.scalars(select(TeamMember.team_id).join(Team, Team.id == TeamMember.team_id)
                          .where(TeamMember.practitioner_id == user.practitioner_id,
                                 Team.kind == TeamKind.FAMILY_DOCTOR)))


def scope_for(db: Session, *, user: User) -> Scope:
    """The figures a reader may see: the health bureau and the alliance admin all; an organisation's admin
    its area's (a township centre: its township) and its teams'; a clinician their teams' only."""
    if user.role not in READERS:
        raise AccessDenied("您的角色无权查看慢病指标 / your role may not see chronic disease indicators")
    if user.role in SEE_ALL:
        return Scope()
    areas = _areas(db)
    if user.role == Role.ORG_ADMIN:
        org = db.get(Organisation, user.organisation_id) if user.organisation_id is not None else None
        if org is None or org.area_id is None:
            raise AccessDenied("只有有辖区的机构管理员可以查看慢病指标 / only the admin of an organisation with an "
                               "area sees its chronic disease indicators")
        allowed = {org.area_id} | _descendants(areas, org.area_id)
        teams = set(db.scalars(select(Team.id).where(Team.organisation_id == org.id,
                                                     Team.kind == TeamKind.FAMILY_DOCTOR)))
        level = areas.by_id[org.area_id].level if org.area_id in areas.by_id else AreaLevel.TOWNSHIP
        levels = ("team", "village") if level != AreaLevel.COUNTY else GROUPS
        return Scope(area_ids=allowed, team_ids=None if level == AreaLevel.COUNTY else teams,
                     default_area_id=org.area_id, levels=levels)
    teams = _user_teams(db, user)
    if not teams:
        raise AccessDenied("您不在任何家庭医生团队中 / you are not on a family-doctor team")
    served = {int(v) for t in db.scalars(select(Team).where(Team.id.in_(sorted(teams)))) for v in t.area_ids or []}
    townships = {areas.township_of(v) for v in served}
    return Scope(area_ids=served | {t for t in townships if t is not None}, team_ids=teams, levels=("team",))


def _descendants(areas: _Areas, area_id: int) -> set[int]:
    out: set[int] = set()
    stack = list(areas.children.get(area_id, []))
    while stack:
        current = stack.pop()
        out.add(current)
        stack.extend(areas.children.get(current, []))
    return out


def check_request(scope: Scope, *, level: str, area_id: int | None) -> None:
    """Refuse a level or an area outside the reader's scope (AccessDenied naming the figures)."""
    _check_group(level)
    if level not in scope.levels:
        raise AccessDenied("无权查看该层级的慢病指标 / you may not see chronic disease indicators at this level")
    if area_id is not None and scope.area_ids is not None and area_id not in scope.area_ids:
        raise AccessDenied("只能查看本辖区的慢病指标 / you see your own area's chronic disease indicators only")

