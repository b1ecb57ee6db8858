"""National pathway metrics by centre and month, computed by SQL aggregation from the timestamped nodes.

Each `MetricTarget` row (data) says what to measure. Interval metrics (D2B, DNT, FMC→ECG ...) take the cases
of the month (by the case's opening day in Asia/Shanghai; cancelled cases left out) that have both nodes:
count, mean, median (middle rows by window functions, so the same SQL runs on SQLite and PostgreSQL) and the
number on target. The month meets the target when the mean compares to the target minutes and, where a share
is required (D2B ≤ 90 min in ≥ 75%), when at least that share is on target. Share metrics (ambulance STEMI
patients bypassing ED, with a pre-hospital ECG transmitted) count the population and those with the flag.
Cases that missed are listed per month with their numbers (never names), linked to the case page.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import ColumnElement, and_, case, exists, extract, func, not_, select
from sqlalchemy.orm import Session, aliased

from healthrelay.access import service as access
from healthrelay.accounts.models import Role, User
from healthrelay.audit import service as audit
from healthrelay.core.db import local_month
from healthrelay.core.errors import AccessDenied, InvalidInput, field_error
from healthrelay.directory.models import Organisation
from healthrelay.pathways.models import CaseState, MetricTarget, PathwayCase, PathwayNode
from healthrelay.pathways.service import centre_of, metric_targets
from healthrelay.web.forms import FormProblems

_SHANGHAI = ZoneInfo("Asia/Shanghai")
SEE_ALL = frozenset({Role.ALLIANCE_ADMIN, Role.HEALTH_BUREAU})
STAFF = frozenset({Role.ORG_ADMIN, Role.CLINICIAN, Role.REMOTE_READER, Role.DISPATCHER})
MISSED_PER_MONTH = 50


@dataclass
class MissedCase:
    case_id: int
    number: str
    minutes: float | None = None


@dataclass
class MonthValue:
    month: str  # 2026-11
    cases: int = 0
    mean: float | None = None  # minutes (interval metrics)
    median: float | None = None
    on_target: int = 0  # cases on target, or cases with the flag (share metrics)
    share: float | None = None
    met: bool | None = None  # None: no cases that month
    missed: list[MissedCase] = field(default_factory=list)


@dataclass
class MetricSeries:
    target: MetricTarget
    months: list[MonthValue]

    @property
    def total_cases(self) -> int:
        return sum(m.cases for m in self.months)


def scope_for(user: User, organisation_id: int | None = None) -> int | None:
    """Whose cases: the alliance admin and the health bureau see every hospital (or the one they choose);
    a hospital's staff see their own hospital's."""
    if user.role in SEE_ALL:
        return organisation_id
    if user.role in STAFF and user.organisation_id is not None:
        return user.organisation_id
    raise AccessDenied("您无权查看急救质控指标 / you may not see the pathway metrics")


def month_range(start: date, end: date) -> list[str]:
    """Every month from start's to end's, inclusive, as YYYY-MM."""
    out, y, m = [], start.year, start.month
    while (y, m) <= (end.year, end.month):
        out.append(f"{y:04d}-{m:02d}")
        y, m = (y + 1, 1) if m == 12 else (y, m + 1)
    return out


def bounds(first_month: date, last_month: date) -> tuple[datetime, datetime]:
    """UTC instants of the first day of `first_month` and of the month after `last_month`, Shanghai time."""
    start = datetime(first_month.year, first_month.month, 1, tzinfo=_SHANGHAI)
    after = date(last_month.year + (last_month.month == 12), last_month.month % 12 + 1, 1)
    return start, datetime(after.year, after.month, 1, tzinfo=_SHANGHAI)


def _seconds(dialect: str, start: Any, end: Any) -> ColumnElement[float]:
    """Whole seconds between two stored times (SQLite's julianday arithmetic rounded to the second)."""
    if dialect == "postgresql":
        return func.round(extract("epoch", end - start))
    return func.round((func.julianday(end) - func.julianday(start)) * 86400.0)


def _case_filter(target: MetricTarget, start: datetime, end: datetime,
                 hospital_organisation_id: int | None) -> list[ColumnElement[bool]]:
    conditions: list[ColumnElement[bool]] = [
        PathwayCase.centre == target.centre, PathwayCase.state != CaseState.CANCELLED,
        PathwayCase.opened_at >= start, PathwayCase.opened_at < end]
    if hospital_organisation_id is not None:
        conditions.append(PathwayCase.hospital_organisation_id == hospital_organisation_id)
    return conditions


def _on_target(seconds: Any, target: MetricTarget) -> ColumnElement[bool]:
    limit = float(target.target_minutes or 0) * 60
    return seconds < limit if target.comparison == "lt" else seconds <= limit


def _interval(db: Session, target: MetricTarget, start: datetime, end: datetime,
              hospital_organisation_id: int | None, months: list[str]) -> list[MonthValue]:
    dialect = db.get_bind().dialect.name
    a, b = aliased(PathwayNode), aliased(PathwayNode)
    month = local_month(db, PathwayCase.opened_at).label("month")
    seconds = _seconds(dialect, a.at, b.at).label("seconds")
    rows = (select(month, seconds, PathwayCase.id.label("case_id"), PathwayCase.number.label("number"))
            .join(a, and_(a.case_id == PathwayCase.id, a.node == target.from_node))
            .join(b, and_(b.case_id == PathwayCase.id, b.node == target.to_node))
            .where(*_case_filter(target, start, end, hospital_organisation_id))).subquery()
    ranked = select(rows.c.month, rows.c.seconds,
                    func.row_number().over(partition_by=rows.c.month, order_by=rows.c.seconds).label("rn"),
                    func.count().over(partition_by=rows.c.month).label("n")).subquery()
    on = _on_target(rows.c.seconds, target)
    totals = {r.month: r for r in db.execute(
        select(rows.c.month, func.count().label("cases"), func.avg(rows.c.seconds).label("mean"),
               func.sum(case((on, 1), else_=0)).label("on_target")).group_by(rows.c.month))}
    medians = dict(db.execute(
        select(ranked.c.month, func.avg(ranked.c.seconds))
        .where(ranked.c.rn.in_([(ranked.c.n + 1) // 2, (ranked.c.n + 2) // 2])).group_by(ranked.c.month)).all())
    missed: dict[str, list[MissedCase]] = {}
    for r in db.execute(select(rows.c.month, rows.c.case_id, rows.c.number, rows.c.seconds).where(not_(on))
                        .order_by(rows.c.month, rows.c.seconds.desc(), rows.c.case_id)
                        .limit(MISSED_PER_MONTH * max(1, len(months)))):
        bucket = missed.setdefault(r.month, [])
        if len(bucket) < MISSED_PER_MONTH:
            bucket.append(MissedCase(case_id=r.case_id, number=r.number, minutes=float(r.seconds) / 60))
    out = []
    for m in months:
        row = totals.get(m)
        if row is None or not row.cases:
            out.append(MonthValue(month=m))
            continue
        mean = float(row.mean) / 60
        share = int(row.on_target) / int(row.cases)
        limit = float(target.target_minutes or 0)
        mean_ok = mean < limit if target.comparison == "lt" else mean <= limit
        met = mean_ok and (target.required_share is None or share >= target.required_share)
        out.append(MonthValue(month=m, cases=int(row.cases), mean=mean, median=float(medians[m]) / 60,
                              on_target=int(row.on_target), share=share, met=met, missed=missed.get(m, [])))
    return out


def _population(target: MetricTarget) -> list[ColumnElement[bool]]:
    if target.population == "ambulance_stemi":
        return [PathwayCase.arrival_mode == "ambulance", PathwayCase.diagnosis_code == "stemi"]
    if target.population == "ambulance":
        return [PathwayCase.arrival_mode == "ambulance"]
    return []


def _flag(target: MetricTarget) -> ColumnElement[bool]:
    if target.share_flag == "bypass_ed":
        return PathwayCase.bypass_ed.is_(True)
    if target.share_flag == "prehospital_ecg":
        ecg, door = aliased(PathwayNode), aliased(PathwayNode)
        return exists().where(ecg.case_id == PathwayCase.id, ecg.node == "ecg_transmitted",
                              ~exists().where(door.case_id == ecg.case_id, door.node == "arrival",
                                              door.at < ecg.at).correlate(ecg))
    raise ValueError(f"unknown share flag {target.share_flag!r}")


def _share(db: Session, target: MetricTarget, start: datetime, end: datetime,
           hospital_organisation_id: int | None, months: list[str]) -> list[MonthValue]:
    month = local_month(db, PathwayCase.opened_at).label("month")
    flag = _flag(target)
    where = [*_case_filter(target, start, end, hospital_organisation_id), *_population(target)]
    rows = select(month, PathwayCase.id.label("case_id"), PathwayCase.number.label("number"),
                  case((flag, 1), else_=0).label("flag")).where(*where).subquery()
    totals = {r.month: r for r in db.execute(
        select(rows.c.month, func.count().label("cases"), func.sum(rows.c.flag).label("flagged"))
        .group_by(rows.c.month))}
    missed: dict[str, list[MissedCase]] = {}
    for r in db.execute(select(rows.c.month, rows.c.case_id, rows.c.number).where(rows.c.flag == 0)
                        .order_by(rows.c.month, rows.c.case_id).limit(MISSED_PER_MONTH * max(1, len(months)))):
        bucket = missed.setdefault(r.month, [])
        if len(bucket) < MISSED_PER_MONTH:
            bucket.append(MissedCase(case_id=r.case_id, number=r.number))
    out = []
    for m in months:
        row = totals.get(m)
        if row is None or not row.cases:
            out.append(MonthValue(month=m))
            continue
        share = int(row.flagged) / int(row.cases)
        out.append(MonthValue(month=m, cases=int(row.cases), on_target=int(row.flagged), share=share,
                              met=share >= (target.required_share or 0), missed=missed.get(m, [])))
    return out


def compute(db: Session, *, first_month: date, last_month: date, centre: str | None = None,
            hospital_organisation_id: int | None = None) -> list[MetricSeries]:
    """Every active metric (of one centre, or all) for each month from first_month to last_month."""
    start, end = bounds(first_month, last_month)
    months = month_range(first_month, last_month)
    out = []
    for target in metric_targets(db, centre):
        if target.kind == "interval":
            values = _interval(db, target, start, end, hospital_organisation_id, months)
        else:
            values = _share(db, target, start, end, hospital_organisation_id, months)
        out.append(MetricSeries(target=target, months=values))
    return out


def default_period(today: date | None = None) -> tuple[date, date]:
    """The last twelve months, this one included."""
    today = today or datetime.now(_SHANGHAI).date()
    first = (today.replace(day=1) - timedelta(days=335)).replace(day=1)
    return first, today.replace(day=1)


def target_text(target: MetricTarget) -> str:
    """"≤ 90 分钟, ≥ 75%" — the target as people quote it."""
    parts = []
    if target.kind == "interval" and target.target_minutes is not None:
        parts.append(f"{'<' if target.comparison == 'lt' else '≤'} {target.target_minutes:g} min")
    if target.required_share is not None:
        parts.append(f"≥ {target.required_share * 100:g}%")
    return ", ".join(parts)


def _month_value(value: str, field: str) -> date:
    try:
        return datetime.strptime(value.strip(), "%Y-%m").date()
    except ValueError:
        raise InvalidInput("月份格式应为 年-月 / months read YYYY-MM",
                           field_errors=[field_error(field, "bad month")]) from None


def report_for(db: Session, user: User, *, start: str = "", end: str = "", centre: str = "",
               organisation: str = "") -> dict[str, Any]:
    """The metrics a user asked for (months as YYYY-MM, a centre, a hospital), checked and computed."""
    problems = FormProblems()
    org = problems.opt_int("organisation", organisation)
    problems.raise_if_any()
    scope = scope_for(user, org)
    first, last = default_period()
    if start:
        first = _month_value(start, "start")
    if end:
        last = _month_value(end, "end")
    if last < first:
        raise InvalidInput("结束月份早于开始月份 / the end month is before the start",
                           field_errors=[field_error("end", "before start")])
    if (last.year - first.year) * 12 + last.month - first.month > 35:
        raise InvalidInput("最多查询 36 个月 / at most 36 months", field_errors=[field_error("start", "too long")])
    the_centre = centre_of(centre) if centre else None
    series = compute(db, first_month=first, last_month=last, centre=the_centre, hospital_organisation_id=scope)
    scope_name = db.get(Organisation, scope).name if scope and db.get(Organisation, scope) else ""
    return {"series": series, "first": first, "last": last, "centre": the_centre, "scope": scope,
            "scope_name": scope_name, "months": month_range(first, last)}


def audit_view(db: Session, user: User, report: dict[str, Any], output: str, client_address: str = "") -> None:
    """Figures leaving the building (page, workbook, JSON) are worth a line in the audit, names or not."""
    audit.record(db, actor=access.actor_of(user, client_address), action="pathway.metrics",
                 resource=f"organisation:{report['scope']}" if report["scope"] else "",
                 detail={"first": report["first"].isoformat(), "last": report["last"].isoformat(),
                         "centre": str(report["centre"] or ""), "output": output})
