"""Referral indicators (双向转诊指标) for the alliance, its members and the health bureau.

Aggregates only: no query here reads a patient column, so the health bureau may see every figure.
Three statements do the work: a GROUP BY over the referrals sent in the chosen months, the response
time percentiles over the answered ones (`percentile_cont` on PostgreSQL; SQLite has no ordered-set
aggregates, so there one float per answered referral is read and interpolated the same way in
Python), and the lead-hospital discharges completed in those months. On PostgreSQL the last two
run on connections of their own alongside the first, and all three read indexes only (migration
0006: `ix_referrals_sent_kpi` covers the first two); Python only adds the groups up.
bench/referrals.py measures it at 1,000,000 referrals.

Months are calendar months in Asia/Shanghai. Shanghai has kept UTC+8 without daylight saving
since 1991, so on SQLite the month is taken from the UTC time plus eight hours; PostgreSQL compares
with the UTC instants at which the Shanghai months begin.
"""

from __future__ import annotations

import calendar
import math
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from typing import Any, Generic, TypeVar
from zoneinfo import ZoneInfo

from sqlalchemy import DateTime, Float, String, case, exists, func, literal, select, text, type_coerce
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, aliased
from sqlalchemy.sql.elements import ColumnElement

from healthrelay.access import service as access
from healthrelay.accounts.models import Role, User
from healthrelay.core.db import UTCDateTime, utcnow
from healthrelay.core.errors import InvalidInput, field_error
from healthrelay.directory.models import AllianceMembership, MembershipRole, Organisation, OrgKind
from healthrelay.referrals.models import Direction, Referral, ReferralTransition, State, Urgency

LOCAL_TZ = ZoneInfo("Asia/Shanghai")
MAX_MONTHS = 36
READERS = frozenset({Role.ALLIANCE_ADMIN, Role.ORG_ADMIN, Role.HEALTH_BUREAU})
SEE_ALL = frozenset({Role.ALLIANCE_ADMIN, Role.HEALTH_BUREAU})
QUANTILES = (0.5, 0.9)
T = TypeVar("T")


# --- the report ----------------------------------------------------------------------------------

@dataclass
class Counts:
    """Referrals sent in a period, seen from one organisation (or, for totals, from the whole scope)."""

    up_sent: int = 0
    up_received: int = 0
    down_sent: int = 0
    down_received: int = 0


@dataclass
class Answering:
    """How the receivers answered: acceptance and timeliness (see `compute` for the definitions)."""

    answered: int = 0
    accepted: int = 0
    due: int = 0  # answered, or left unanswered past the deadline
    on_time: int = 0

    @property
    def acceptance_rate(self) -> float | None:
        return self.accepted / self.answered if self.answered else None

    @property
    def on_time_share(self) -> float | None:
        return self.on_time / self.due if self.due else None


@dataclass
class ResponseTime:
    """Minutes from sending to the answer (accept or decline), over answered referrals."""

    count: int = 0
    median_minutes: float | None = None
    p90_minutes: float | None = None


@dataclass
class MonthRow:
    month: str  # "2026-05", Asia/Shanghai
    up: int = 0
    down: int = 0
    lead_up_completed: int = 0  # up referrals completed at a lead hospital this month
    lead_sent_down: int = 0  # ... of which the lead hospital sent the patient down

    @property
    def discharge_down_share(self) -> float | None:
        return self.lead_sent_down / self.lead_up_completed if self.lead_up_completed else None


@dataclass
class OrgRow:
    organisation_id: int
    name: str
    name_en: str
    is_lead: bool
    counts: Counts = field(default_factory=Counts)
    by_month: dict[str, Counts] = field(default_factory=dict)
    # As the receiver: how this organisation answered the referrals sent to it.
    answering: Answering = field(default_factory=Answering)

    @property
    def total(self) -> int:
        c = self.counts
        return c.up_sent + c.up_received + c.down_sent + c.down_received


@dataclass
class KpiReport:
    start: date
    end: date
    organisation_id: int | None  # None: every organisation the reader may see
    organisation_name: str
    generated_at: datetime
    months: list[MonthRow]
    up: int = 0
    down: int = 0
    answering: Answering = field(default_factory=Answering)
    response: ResponseTime = field(default_factory=ResponseTime)
    response_by_urgency: dict[str, ResponseTime] = field(default_factory=dict)
    answering_by_urgency: dict[str, Answering] = field(default_factory=dict)
    organisations: list[OrgRow] = field(default_factory=list)
    lead_up_completed: int = 0
    lead_sent_down: int = 0
    has_lead: bool = True  # False when the chosen organisation leads no alliance (no discharge share)

    @property
    def discharge_down_share(self) -> float | None:
        return self.lead_sent_down / self.lead_up_completed if self.lead_up_completed else None

    @property
    def month_keys(self) -> list[str]:
        return [m.month for m in self.months]


# --- periods -------------------------------------------------------------------------------------

def month_keys(start: date, end: date) -> list[str]:
    keys = []
    y, m = start.year, start.month
    while (y, m) <= (end.year, end.month):
        keys.append(f"{y:04d}-{m:02d}")
        y, m = (y + 1, 1) if m == 12 else (y, m + 1)
    return keys


def month_range(first: str, last: str) -> tuple[date, date]:
    """"2026-01", "2026-06" -> 2026-01-01, 2026-06-30 (the page's month picker sends these)."""
    start = _parse_month(first, "start")
    end_first = _parse_month(last, "end")
    return start, end_first.replace(day=calendar.monthrange(end_first.year, end_first.month)[1])


def last_months(n: int, today: date | None = None) -> tuple[date, date]:
    """The last `n` calendar months including the current one, in Shanghai."""
    today = today or utcnow().astimezone(LOCAL_TZ).date()
    y, m = today.year, today.month - (n - 1)
    while m < 1:
        y, m = y - 1, m + 12
    return date(y, m, 1), today.replace(day=calendar.monthrange(today.year, today.month)[1])


def _parse_month(value: str, name: str) -> date:
    try:
        y, m = value.strip().split("-")
        return date(int(y), int(m), 1)
    except (ValueError, AttributeError):
        raise InvalidInput(f"{name} 须为年月，如 2026-05 / {name} must be a month such as 2026-05",
                           field_errors=[field_error(name, "YYYY-MM")]) from None


def _local_midnight_utc(day: date) -> datetime:
    return datetime.combine(day, time(0), tzinfo=LOCAL_TZ).astimezone(UTC)


def _check_period(start: date, end: date) -> None:
    if start > end:
        raise InvalidInput("开始月份不能晚于结束月份 / the start must not be after the end",
                           field_errors=[field_error("start", "after end")])
    if len(month_keys(start, end)) > MAX_MONTHS:
        raise InvalidInput(f"一次最多统计 {MAX_MONTHS} 个月 / at most {MAX_MONTHS} months at a time",
                           field_errors=[field_error("end", f"more than {MAX_MONTHS} months")])


# --- dialect-specific expressions ----------------------------------------------------------------

def _month_bucket(db: Session, column: Any, keys: list[str]) -> tuple[ColumnElement[Any], dict[Any, str]]:
    """An expression naming the Shanghai month of `column`, and how its values map to "YYYY-MM".

    PostgreSQL: `width_bucket` against the UTC instants at which each later month begins, a binary
    search over a handful of timestamps; converting every row to the named zone instead took three
    times as long at 1,000,000 referrals. Rows are already limited to the period, so bucket 0 is the
    first month. SQLite: the UTC time plus eight hours, formatted.
    """
    if db.get_bind().dialect.name == "postgresql":
        bounds = [_local_midnight_utc(date.fromisoformat(k + "-01")) for k in keys[1:]]
        if not bounds:
            return literal(0), {0: keys[0]}
        return (func.width_bucket(column, literal(bounds, ARRAY(DateTime(timezone=True)))),
                dict(enumerate(keys)))
    return func.strftime("%Y-%m", column, "+8 hours"), {k: k for k in keys}


def _seconds(db: Session, later: Any, earlier: Any) -> ColumnElement[Any]:
    if db.get_bind().dialect.name == "postgresql":
        # date_part gives double precision; extract() gives numeric, which sorts several times slower.
        return func.date_part("epoch", later - earlier)
    return (func.julianday(later) - func.julianday(earlier)) * 86400.0


def _answer_window_seconds(db: Session) -> ColumnElement[Any]:
    """How long the receiver had to answer, measured from the *first* sending.

    `response_due_at` is reset by every redirect, so on its own it would excuse the time the
    first receiver spent before passing the referral on. The patient has been waiting since
    `sent_at`, so we hold every answer to the window of its urgency counted from `sent_at`. The
    window length is the one the referral was actually given: `response_due_at - sent_at` when it
    was never redirected (round 0, the common case, no join), otherwise `response_due_at` minus
    the time of the last redirect transition (the start of the last round). Using the recorded
    times rather than today's `referral_deadlines` keeps old months stable when an alliance
    changes its deadlines.
    """
    last_redirect = (select(func.max(ReferralTransition.at))
                     .where(ReferralTransition.referral_id == Referral.id,
                            ReferralTransition.to_state == str(State.REDIRECTED))
                     .scalar_subquery())
    return case((Referral.round == 0, _seconds(db, Referral.response_due_at, Referral.sent_at)),
                else_=_seconds(db, Referral.response_due_at, last_redirect))


def _flag(condition: ColumnElement[bool]) -> ColumnElement[int]:
    return func.sum(case((condition, 1), else_=0))


def _tune(db: Session) -> None:
    """For this transaction only: sorts of a year's response times fit in memory, and no JIT.

    The aggregates below run once per page view over up to a few hundred thousand rows; with the
    default 4 MB they spill to disk, and JIT compilation alone cost 2-5 s per query at 1,000,000
    referrals (measured, bench/referrals.py) against well under a second of execution.
    """
    if db.get_bind().dialect.name == "postgresql":
        db.execute(text("SET LOCAL work_mem = '64MB'"))
        db.execute(text("SET LOCAL jit = off"))


def _hashed(db: Session, stmt: Any) -> list[Any]:
    """Run the fine GROUP BY as a hash aggregate on PostgreSQL.

    The planner multiplies the distinct counts of month, direction, urgency, sender and receiver as if
    they were independent (about 600,000 groups at 1,000,000 referrals; there are about 20,000) and
    so sorts every row of the period instead of hashing: 2.5 times slower, measured. Sorting is
    switched off for this one statement only.
    """
    if db.get_bind().dialect.name != "postgresql":
        return list(db.execute(stmt))
    db.execute(text("SET LOCAL enable_sort = off"))
    try:
        return list(db.execute(stmt))
    finally:
        db.execute(text("SET LOCAL enable_sort = on"))


# --- access --------------------------------------------------------------------------------------

def _lead_ids(db: Session) -> set[int]:
    """Lead hospitals (牵头医院): organisations that lead at least one alliance."""
    return set(db.execute(select(AllianceMembership.organisation_id)
                          .where(AllianceMembership.role == MembershipRole.LEAD)).scalars())


# --- percentiles ---------------------------------------------------------------------------------

def percentile(sorted_values: Sequence[float], q: float) -> float | None:
    """Linear interpolation between closest ranks: the same answer as PostgreSQL's percentile_cont."""
    if not sorted_values:
        return None
    pos = (len(sorted_values) - 1) * q
    lo = math.floor(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def _response_time(count: int, quantiles: Sequence[float | None] | None) -> ResponseTime:
    if not count or not quantiles:
        return ResponseTime(count=count)
    median, p90 = (None if v is None else round(float(v), 1) for v in quantiles)
    return ResponseTime(count=count, median_minutes=median, p90_minutes=p90)


# --- compute -------------------------------------------------------------------------------------

def compute(db: Session, *, user: User, start: date, end: date, organisation_id: int | None = None,
            now: datetime | None = None) -> KpiReport:
    """The referral indicators for the months from `start` to `end` (inclusive, Asia/Shanghai days).

    Definitions (all over referrals *sent* in the period, by the month they were sent, unless said):
    - up/down by member and month: an up referral counts as sent at its sender and received at its
      (current) receiver; likewise down, where the sender is usually the lead hospital.
    - acceptance rate: accepted (accepted, arrived, completed, or cancelled after acceptance) over
      answered (accepted or declined; `answered_at` is set exactly by those two).
    - response time: `answered_at - sent_at` in minutes for answered referrals, median and 90th
      percentile, overall and per urgency. A redirect does not restart
      it: the patient waits from the first sending.
    - answered within the deadline: answered no later than the window of its urgency after the first
      sending (see `_answer_window_seconds`), over the referrals that were answered or whose window
      ran out unanswered (expired, cancelled late, still waiting past it); referrals still inside
      their window, or withdrawn inside it, are not yet judged.
    - share of lead-hospital discharges sent down: of the up referrals completed at a lead hospital
      in the month (by `closed_at`), the share for which that hospital sent a down referral with
      the up referral as its parent. Counting parents, not down referrals, keeps it a share (a
      patient sent down twice counts once) and ties it to the month of discharge. It stands in
      for the discharge ratio until the HIS discharge feed exists.

    With `organisation_id` (and always for an org_admin) only referrals that organisation sent or
    received count, and the discharge share is that hospital's own (none if it leads no alliance).
    """
    _check_period(start, end)
    org = access.figures_scope(db, user=user, organisation_id=organisation_id, readers=READERS, see_all=SEE_ALL,
                               figures="转诊指标 / referral indicators")
    _tune(db)
    now = now or utcnow()
    keys = month_keys(start, end)
    lo, hi = _local_midnight_utc(start), _local_midnight_utc(end + timedelta(days=1))
    leads = _lead_ids(db)
    scope_id = org.id if org is not None else None

    sent_in_range = [Referral.sent_at >= lo, Referral.sent_at < hi]
    if scope_id is not None:
        sent_in_range.append((Referral.from_organisation_id == scope_id) | (Referral.to_organisation_id == scope_id))

    months = {k: MonthRow(month=k) for k in keys}
    report = KpiReport(start=start, end=end, organisation_id=scope_id, organisation_name=org.name if org else "",
                       generated_at=now, months=list(months.values()),
                       has_lead=scope_id is None or scope_id in leads)
    # 2. Response-time percentiles and 3. lead-hospital discharges run on connections of their own
    # while 1. counts and answering (grouped finely enough to add up along every dimension shown)
    # run here.
    side: list[tuple[Callable[..., Any], tuple[Any, ...]]] = [(_response_times, (sent_in_range,))]
    if report.has_lead and leads:
        side.append((_discharges, (keys, lo, hi, sorted(leads) if scope_id is None else [scope_id])))
    with _alongside(db, *side) as results:
        rows = _tally(db, report, months, keys, sent_in_range, now=now, leads=leads)
    report.response, per_urgency = results[0].result()
    report.response_by_urgency = {str(u): per_urgency.get(str(u), ResponseTime()) for u in Urgency}
    for key, (completed, sent_down) in (results[1].result() if len(results) > 1 else {}).items():
        report.lead_up_completed += completed
        report.lead_sent_down += sent_down
        months[key].lead_up_completed, months[key].lead_sent_down = completed, sent_down

    _name_rows(db, rows, scope_id, keys)
    report.organisations = _ordered(rows.values())
    return report


class _Later(Generic[T]):
    """The same interface as a Future, computed on the caller's session when asked."""

    def __init__(self, fn: Callable[[], T]) -> None:
        self._fn = fn

    def result(self) -> T:
        return self._fn()


@contextmanager
def _alongside(db: Session, *calls: tuple[Callable[..., Any], tuple[Any, ...]]
               ) -> Iterator[list[Future[Any] | _Later[Any]]]:
    """Run each `fn(session, *args)` on a PostgreSQL connection of its own while the block runs.

    The percentiles are ordered-set aggregates, which PostgreSQL never splits across parallel
    workers, and the GROUP BY beside them is planned serially too; on two cores the statements
    together take about as long as the slowest instead of their sum (bench/referrals.py). The other
    connections see committed data only, which is all a page view has. SQLite, or a session bound
    to one connection, runs them on the caller's session afterwards instead.
    """
    bind = db.get_bind()
    if bind.dialect.name != "postgresql" or not isinstance(bind, Engine):
        yield [_Later(lambda fn=fn, args=args: fn(db, *args)) for fn, args in calls]
        return

    def run(fn: Callable[..., Any], args: tuple[Any, ...]) -> Any:
        with Session(bind=bind) as side:
            _tune(side)
            return fn(side, *args)

    with ThreadPoolExecutor(max_workers=len(calls), thread_name_prefix="kpi") as pool:  # leaving waits
        yield [pool.submit(run, fn, args) for fn, args in calls]


def _tally(db: Session, report: KpiReport, months: dict[str, MonthRow], keys: list[str],
           sent_in_range: list[ColumnElement[bool]], *, now: datetime, leads: set[int]) -> dict[int, OrgRow]:
    """One GROUP BY (month, direction, urgency, sender, receiver) over the period, added up in plain
    lists (about 20,000 groups a year at 1,000,000 referrals), then turned into the report's rows."""
    window = _answer_window_seconds(db)
    answered = Referral.answered_at.is_not(None)
    answer_seconds = _seconds(db, Referral.answered_at, Referral.sent_at)
    until = func.coalesce(Referral.closed_at, literal(now, UTCDateTime()))
    on_time = case((Referral.round == 0, answered & (Referral.answered_at <= Referral.response_due_at)),
                   else_=answered & (answer_seconds <= window))
    due = case((Referral.round == 0, answered | (until > Referral.response_due_at)),
               else_=answered | (_seconds(db, until, Referral.sent_at) > window))
    bucket, month_of = _month_bucket(db, Referral.sent_at, keys)
    month = bucket.label("month")
    direction, urgency = type_coerce(Referral.direction, String), type_coerce(Referral.urgency, String)
    stmt = (select(month, direction, urgency, Referral.from_organisation_id, Referral.to_organisation_id,
                   func.count(), _flag(answered), _flag(answered & (Referral.state != State.DECLINED)), _flag(due),
                   _flag(on_time))
            .where(*sent_in_range)
            .group_by(month, Referral.direction, Referral.urgency, Referral.from_organisation_id,
                      Referral.to_organisation_id))
    up_down = {k: [0, 0] for k in keys}
    sent: dict[tuple[int, str], list[int]] = defaultdict(lambda: [0, 0])
    received: dict[tuple[int, str], list[int]] = defaultdict(lambda: [0, 0])
    total = [0, 0, 0, 0]
    per_urgency = {str(u): [0, 0, 0, 0] for u in Urgency}
    per_receiver: dict[int, list[int]] = defaultdict(lambda: [0, 0, 0, 0])
    for value, way, urg, sender, receiver, n, answered_n, accepted_n, due_n, on_time_n in _hashed(db, stmt):
        key, d = month_of.get(value, ""), 0 if way == "up" else 1
        if key in up_down:  # always, unless a clock sits exactly on a boundary
            up_down[key][d] += n
        sent[(sender, key)][d] += n
        received[(receiver, key)][d] += n
        answered_n, accepted_n, due_n, on_time_n = answered_n or 0, accepted_n or 0, due_n or 0, on_time_n or 0
        for acc in (total, per_urgency[urg], per_receiver[receiver]):
            acc[0] += answered_n
            acc[1] += accepted_n
            acc[2] += due_n
            acc[3] += on_time_n

    for k, (up, down) in up_down.items():
        months[k].up, months[k].down = up, down
    report.up = sum(v[0] for v in up_down.values())
    report.down = sum(v[1] for v in up_down.values())
    report.answering = Answering(*total)
    report.answering_by_urgency = {u: Answering(*v) for u, v in per_urgency.items()}
    rows: dict[int, OrgRow] = {}

    def org_row(org_id: int) -> OrgRow:
        row = rows.get(org_id)
        if row is None:
            row = rows[org_id] = OrgRow(organisation_id=org_id, name="", name_en="", is_lead=org_id in leads,
                                        by_month={k: Counts() for k in keys})
        return row

    for (org_id, key), (up, down) in sent.items():
        row = org_row(org_id)
        row.counts.up_sent += up
        row.counts.down_sent += down
        if key in row.by_month:
            row.by_month[key].up_sent, row.by_month[key].down_sent = up, down
    for (org_id, key), (up, down) in received.items():
        row = org_row(org_id)
        row.counts.up_received += up
        row.counts.down_received += down
        if key in row.by_month:
            row.by_month[key].up_received, row.by_month[key].down_received = up, down
    for org_id, v in per_receiver.items():
        org_row(org_id).answering = Answering(*v)
    return rows


def _response_times(db: Session, sent_in_range: list[ColumnElement[bool]]
                    ) -> tuple[ResponseTime, dict[str, ResponseTime]]:
    """Median and 90th percentile of the answer time in minutes, overall and per urgency.

    PostgreSQL: `percentile_cont` with one FILTER per urgency in a single pass (grouping sets made
    the server sort the whole range once more per set). SQLite: one float per answered referral in
    the range, interpolated in Python exactly as percentile_cont does.
    """
    minutes = _seconds(db, Referral.answered_at, Referral.sent_at) / 60.0
    where = [*sent_in_range, Referral.answered_at.is_not(None)]
    urgencies = [str(u) for u in Urgency]
    if db.get_bind().dialect.name == "postgresql":
        def quantiles(*condition: ColumnElement[bool]) -> Any:
            agg = func.percentile_cont(literal(list(QUANTILES), ARRAY(Float))).within_group(minutes)
            return agg.filter(*condition) if condition else agg

        columns = [func.count(), quantiles()]
        for u in urgencies:
            columns += [func.count().filter(Referral.urgency == u), quantiles(Referral.urgency == u)]
        row = db.execute(select(*columns).where(*where)).one()
        per_urgency = {u: _response_time(row[2 + 2 * i], row[3 + 2 * i]) for i, u in enumerate(urgencies)}
        return _response_time(row[0], row[1]), per_urgency
    values: list[float] = []
    by_urgency: dict[str, list[float]] = defaultdict(list)
    for urgency, value in db.execute(select(Referral.urgency, minutes).where(*where)):
        values.append(value)
        by_urgency[str(urgency)].append(value)

    def summarise(vs: list[float]) -> ResponseTime:
        vs.sort()
        return _response_time(len(vs), [percentile(vs, q) for q in QUANTILES])

    return summarise(values), {u: summarise(by_urgency[u]) for u in urgencies}


def _discharges(db: Session, keys: list[str], lo: datetime, hi: datetime, leads: list[int]
                ) -> dict[str, tuple[int, int]]:
    """Per month: up referrals completed at a lead hospital, and how many of them it sent down."""
    down = aliased(Referral)
    sent_down = exists().where(down.parent_referral_id == Referral.id, down.direction == Direction.DOWN,
                               down.from_organisation_id == Referral.to_organisation_id,
                               down.sent_at.is_not(None))
    bucket, month_of = _month_bucket(db, Referral.closed_at, keys)
    month = bucket.label("month")
    stmt = (select(month, func.count(), _flag(sent_down))
            .where(Referral.state == State.COMPLETED, Referral.direction == Direction.UP,
                   Referral.closed_at >= lo, Referral.closed_at < hi, Referral.to_organisation_id.in_(leads))
            .group_by(month))
    return {month_of[value]: (n, int(sent or 0)) for value, n, sent in db.execute(stmt) if value in month_of}


def _name_rows(db: Session, rows: dict[int, OrgRow], scope_id: int | None, keys: list[str]) -> None:
    """Name the organisations with referrals; with no filter, list silent alliance members too (a
    member that never refers is itself a finding)."""
    if scope_id is not None:
        for org_id in [k for k in rows if k != scope_id]:
            del rows[org_id]
        if scope_id not in rows:
            rows[scope_id] = OrgRow(organisation_id=scope_id, name="", name_en="", is_lead=False,
                                    by_month={k: Counts() for k in keys})
        ids: set[int] = {scope_id}
        members: set[int] = set()
    else:
        members = set(db.execute(select(AllianceMembership.organisation_id).distinct()).scalars())
        ids = set(rows) | members
    leads = _lead_ids(db)
    for org_id, name, name_en, kind in db.execute(
            select(Organisation.id, Organisation.name, Organisation.name_en, Organisation.kind)
            .where(Organisation.id.in_(sorted(ids)))):
        if org_id not in rows:
            if kind == OrgKind.HEALTH_BUREAU:
                continue
            rows[org_id] = OrgRow(organisation_id=org_id, name="", name_en="", is_lead=False,
                                  by_month={k: Counts() for k in keys})
        row = rows[org_id]
        row.name, row.name_en, row.is_lead = name, name_en, org_id in leads


def _ordered(rows: Iterable[OrgRow]) -> list[OrgRow]:
    """Lead hospitals first, then the busiest members, then by name."""
    return sorted(rows, key=lambda r: (not r.is_lead, -r.total, r.name, r.organisation_id))


