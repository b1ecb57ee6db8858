"""Next month's outreach roster, planned from demand (从需求出发排班).

Demand is what townships send up: upward referrals and specialist teleconsultations of the last N months,
per sending place (a village clinic counts for its township centre) and specialty, as patients a month, less
what the month's published sessions there already offer. Supply is what experts told us (`ExpertAvailability`):
weekdays, dates away, the furthest host by road, sessions a month, places per session, and for a studio's
expert only days its agreement covers. The optimisation core (`solve`, `greedy`) takes plain dataclasses, so the
benchmark runs it without a database; `propose` gathers the data, runs both and stores a draft `RosterPlan` whose
items say what each session is expected to keep local and why. The planner moves, drops or adds items (each
re-checked) and publishes them as clinic sessions, all or nothing.
"""

from __future__ import annotations

import heapq
import math
import time as clock
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Any

import numpy as np
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from healthrelay.accounts.models import User
from healthrelay.core.db import LOCAL_TZ, local_today, take_sqlite_write_lock, utcnow
from healthrelay.core.errors import Conflict, DomainError, InvalidInput, NotFound, field_error
from healthrelay.directory.models import Area, Department, Organisation, OrgLevel, Practitioner, Specialty, Team
from healthrelay.geo import service as geo
from healthrelay.outreach import service
from healthrelay.outreach.models import (
    ExpertAvailability,
    OutreachSession,
    RosterItem,
    RosterPlan,
    StudioAgreement,
)
from healthrelay.referrals.models import Direction, Referral
from healthrelay.teleconsult.models import ConsultRequest, ConsultState

WEEKDAYS_ZH = ("周一", "周二", "周三", "周四", "周五", "周六", "周日")
WEEKDAYS_EN = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
HOST_LEVELS = (OrgLevel.TERTIARY, OrgLevel.SECONDARY, OrgLevel.TOWNSHIP, OrgLevel.COMMUNITY)
LIVE_SESSION = ("draft", "published", "done")
MAX_MONTHS_BACK = 36
MAX_MONTHS_AHEAD = 12


def _err(name: str, zh: str, en: str) -> dict[str, Any]:
    return field_error(name, f"{zh} / {en}")


def _round(x: float) -> int:
    """Half up (Python's round() sends 2.5 to 2)."""
    return int(math.floor(x + 0.5))


# ============================================================================ the optimisation core (no database)

@dataclass(frozen=True)
class ExpertSupply:
    """One person the roster may send: what they treat and where and when they can go."""

    key: int  # practitioner id (any int in the benchmark)
    specialty: int
    capacity: int  # places per session
    max_sessions: int  # sessions left this month
    days: tuple[date, ...]  # free days (weekday, dates away, agreement and existing sessions already applied)
    travel: dict[int, float]  # host key -> road minutes from the base, only hosts within the person's limit


@dataclass
class Problem:
    experts: list[ExpertSupply]
    demand: dict[tuple[int, int], int]  # (host, specialty) -> patients a month not yet served
    per_host_day: int = 2
    min_patients: int = 1  # a session must be expected to keep at least this many patients local
    host_day_taken: dict[tuple[int, date], int] = field(default_factory=dict)  # sessions already there that day
    time_limit: float = 10.0
    workers: int = 2
    seed: int = 1


@dataclass(frozen=True)
class Assignment:
    expert: int
    host: int
    specialty: int
    day: date
    travel: float
    capacity: int


@dataclass
class Solution:
    assignments: list[Assignment]
    covered: dict[tuple[int, int], int]
    solver: str  # cp-sat | greedy | greedy (fallback)
    status: str  # OPTIMAL, FEASIBLE, GREEDY, EMPTY ...
    seconds: float
    bound: float | None = None  # CP-SAT's upper bound on covered patients (None for greedy)

    @property
    def total_covered(self) -> int:
        return sum(self.covered.values())

    @property
    def travel_total(self) -> float:
        return sum(a.travel for a in self.assignments)


@dataclass(frozen=True)
class _Candidate:
    expert: int  # index into problem.experts
    host: int
    day: date
    travel: float


def candidates(problem: Problem) -> list[_Candidate]:
    """Every allowed (expert, host, day): same specialty, demand left there, within reach, the host not full."""
    out: list[_Candidate] = []
    for i, e in enumerate(problem.experts):
        if e.max_sessions <= 0 or e.capacity <= 0:
            continue
        for host, minutes in sorted(e.travel.items()):
            if problem.demand.get((host, e.specialty), 0) < max(1, problem.min_patients):
                continue
            for day in e.days:
                if problem.host_day_taken.get((host, day), 0) < problem.per_host_day:
                    out.append(_Candidate(i, host, day, minutes))
    return out


def _covered(problem: Problem, chosen: Iterable[Assignment]) -> dict[tuple[int, int], int]:
    offered: dict[tuple[int, int], int] = defaultdict(int)
    for a in chosen:
        offered[(a.host, a.specialty)] += a.capacity
    return {k: min(v, problem.demand.get(k, 0)) for k, v in offered.items()}


def greedy(problem: Problem) -> Solution:
    """The baseline: again and again take the (expert, host) that covers most demand still open (ties: less
    travel), on the earliest day both are free. Lazy evaluation: a pair's gain only ever falls."""
    started = clock.perf_counter()
    remaining = dict(problem.demand)
    left = [e.max_sessions for e in problem.experts]
    used_days: list[set[date]] = [set() for _ in problem.experts]
    host_day = dict(problem.host_day_taken)
    heap: list[tuple[int, float, int, int]] = []
    floor = max(1, problem.min_patients)
    for i, e in enumerate(problem.experts):
        if e.max_sessions <= 0 or e.capacity <= 0 or not e.days:
            continue
        for host, minutes in e.travel.items():
            gain = min(e.capacity, remaining.get((host, e.specialty), 0))
            if gain >= floor:
                heap.append((-gain, minutes, i, host))
    heapq.heapify(heap)
    chosen: list[Assignment] = []
    while heap:
        neg, minutes, i, host = heapq.heappop(heap)
        e = problem.experts[i]
        if left[i] <= 0:
            continue
        gain = min(e.capacity, remaining.get((host, e.specialty), 0))
        if gain < floor:
            continue
        if gain < -neg:
            heapq.heappush(heap, (-gain, minutes, i, host))
            continue
        day = next((d for d in e.days if d not in used_days[i]
                    and host_day.get((host, d), 0) < problem.per_host_day), None)
        if day is None:
            continue  # days only fill up: this pair never fits again
        chosen.append(Assignment(e.key, host, e.specialty, day, minutes, e.capacity))
        used_days[i].add(day)
        host_day[(host, day)] = host_day.get((host, day), 0) + 1
        left[i] -= 1
        remaining[(host, e.specialty)] -= gain
        heapq.heappush(heap, (-min(e.capacity, remaining[(host, e.specialty)]), minutes, i, host))
    chosen.sort(key=lambda a: (a.day, a.host, a.expert))
    return Solution(chosen, _covered(problem, chosen), "greedy", "GREEDY", clock.perf_counter() - started)


def _tenths(minutes: float) -> int:
    """Travel as whole tenths of a minute (CP-SAT wants integers; whole minutes would blur ties)."""
    return int(round(minutes * 10))


def _cp_solver(problem: Problem, seconds: float) -> Any:
    from ortools.sat.python import cp_model

    solver = cp_model.CpSolver()
    solver.parameters.max_time_in_seconds = max(0.1, float(seconds))
    solver.parameters.num_workers = max(1, int(problem.workers))
    solver.parameters.random_seed = problem.seed
    return solver


def _solve_counts(problem: Problem, cands: list[_Candidate], hint: Solution | None,
                  seconds: float) -> tuple[str, dict[tuple[int, int], int], float | None]:
    """Stage 1: how many sessions each expert gives at each host (y[e,h]), days left aside.

    Maximise covered patients; then, with covered held at that, least travel. A relaxation of the full model
    (a host's day limits only as a monthly total), small and tight, so it usually proves its optimum at once."""
    from ortools.sat.python import cp_model

    days: dict[tuple[int, int], set[date]] = defaultdict(set)
    for c in cands:
        days[(c.expert, c.host)].add(c.day)
    model = cp_model.CpModel()
    y = {}
    for (i, h), ds in days.items():
        y[(i, h)] = model.NewIntVar(0, min(problem.experts[i].max_sessions, len(ds)), f"y{i}_{h}")
    by_expert: dict[int, list[Any]] = defaultdict(list)
    by_host: dict[int, list[Any]] = defaultdict(list)
    by_cell: dict[tuple[int, int], list[Any]] = defaultdict(list)
    sessions_in_cell: dict[tuple[int, int], list[Any]] = defaultdict(list)
    for (i, h), v in y.items():
        e = problem.experts[i]
        by_expert[i].append(v)
        by_host[h].append(v)
        sessions_in_cell[(h, e.specialty)].append(v)
        # a session never covers more than the cell wants: min(capacity, demand) tightens the relaxation
        by_cell[(h, e.specialty)].append(min(e.capacity, problem.demand[(h, e.specialty)]) * v)
    for i, vs in by_expert.items():
        all_days = set().union(*(days[(i, h)] for h in {h for (j, h) in y if j == i}))
        model.Add(sum(vs) <= min(problem.experts[i].max_sessions, len(all_days)))
    for h, vs in by_host.items():
        host_days = {c.day for c in cands if c.host == h}
        room = sum(problem.per_host_day - problem.host_day_taken.get((h, d), 0) for d in host_days)
        model.Add(sum(vs) <= room)
    covered = {}
    for cell, terms in by_cell.items():
        covered[cell] = model.NewIntVar(0, problem.demand[cell], f"c{cell[0]}_{cell[1]}")
        model.Add(covered[cell] <= sum(terms))
        if problem.min_patients > 1:  # every session there keeps its minimum, on average
            model.Add(covered[cell] >= problem.min_patients * sum(sessions_in_cell[cell]))
    if hint is not None:
        counts: dict[tuple[int, int], int] = defaultdict(int)
        index = {e.key: i for i, e in enumerate(problem.experts)}
        for a in hint.assignments:
            counts[(index[a.expert], a.host)] += 1
        for key, v in y.items():
            model.AddHint(v, counts.get(key, 0))
        for cell, v in covered.items():
            model.AddHint(v, hint.covered.get(cell, 0))
    model.Maximize(sum(covered.values()))
    started = clock.perf_counter()
    solver = _cp_solver(problem, seconds * 2 / 3)
    code = solver.Solve(model)
    if code not in (cp_model.OPTIMAL, cp_model.FEASIBLE):
        return solver.StatusName(code), {}, None
    status, best, bound = solver.StatusName(code), int(round(solver.ObjectiveValue())), solver.BestObjectiveBound()
    first = {k: solver.Value(v) for k, v in y.items()}
    model.Add(sum(covered.values()) >= best)
    model.ClearHints()
    for k, v in y.items():
        model.AddHint(v, first[k])
    tenths = {(c.expert, c.host): _tenths(c.travel) for c in cands}
    model.Minimize(sum(tenths[k] * v for k, v in y.items() if tenths[k]))
    solver = _cp_solver(problem, max(0.2, seconds - (clock.perf_counter() - started)))
    code = solver.Solve(model)
    if code in (cp_model.OPTIMAL, cp_model.FEASIBLE):
        return status, {k: solver.Value(v) for k, v in y.items() if solver.Value(v)}, bound
    return status, {k: v for k, v in first.items() if v}, bound


def _solve_days(problem: Problem, cands: list[_Candidate], *, hint: Solution | None, seconds: float,
                counts: dict[tuple[int, int], int] | None = None) -> tuple[str, list[Assignment], float | None]:
    """The full model over x[e,h,d]; with `counts` (stage 2) only the days are chosen for stage 1's sessions.

    Per expert at most one a day and at most their sessions left; per host at most `per_host_day` a day
    (counting sessions already there); covered[h,s] ≤ demand and ≤ Σ capacity·x; maximise covered, then (with
    a weight that can never trade a patient) less travel."""
    from ortools.sat.python import cp_model

    model = cp_model.CpModel()
    x = [model.NewBoolVar(f"x{n}") for n in range(len(cands))]
    by_expert_day: dict[tuple[int, date], list[int]] = defaultdict(list)
    by_expert: dict[int, list[int]] = defaultdict(list)
    by_pair: dict[tuple[int, int], list[int]] = defaultdict(list)
    by_host_day: dict[tuple[int, date], list[int]] = defaultdict(list)
    by_cell: dict[tuple[int, int], list[int]] = defaultdict(list)
    for n, c in enumerate(cands):
        by_expert_day[(c.expert, c.day)].append(n)
        by_expert[c.expert].append(n)
        by_pair[(c.expert, c.host)].append(n)
        by_host_day[(c.host, c.day)].append(n)
        by_cell[(c.host, problem.experts[c.expert].specialty)].append(n)
    for ns in by_expert_day.values():
        if len(ns) > 1:
            model.AddAtMostOne(x[n] for n in ns)
    for i, ns in by_expert.items():
        cap = problem.experts[i].max_sessions
        if cap < len({cands[n].day for n in ns}):
            model.Add(sum(x[n] for n in ns) <= cap)
    for (host, day), ns in by_host_day.items():
        room = problem.per_host_day - problem.host_day_taken.get((host, day), 0)
        if room < len(ns):
            model.Add(sum(x[n] for n in ns) <= room)
    if counts is not None:
        for pair, ns in by_pair.items():
            model.Add(sum(x[n] for n in ns) == counts.get(pair, 0))
    covered = {}
    for cell, ns in by_cell.items():
        v = model.NewIntVar(0, problem.demand[cell], f"c{cell[0]}_{cell[1]}")
        model.Add(v <= sum(min(problem.experts[cands[n].expert].capacity, problem.demand[cell]) * x[n] for n in ns))
        if problem.min_patients > 1:
            model.Add(v >= problem.min_patients * sum(x[n] for n in ns))
        covered[cell] = v
    travel = [_tenths(c.travel) for c in cands]
    # The most travel any roster could add up to, plus one: one patient always outweighs all the driving.
    worst: dict[int, int] = defaultdict(int)
    for n, c in enumerate(cands):
        worst[c.expert] = max(worst[c.expert], travel[n])
    weight = sum(w * max(0, problem.experts[i].max_sessions) for i, w in worst.items()) + 1
    model.Maximize(weight * sum(covered.values()) - sum(t * x[n] for n, t in enumerate(travel) if t))
    if hint is not None:
        picked = {(a.expert, a.host, a.day) for a in hint.assignments}
        for n, c in enumerate(cands):
            model.AddHint(x[n], (problem.experts[c.expert].key, c.host, c.day) in picked)
        for cell, v in covered.items():
            model.AddHint(v, hint.covered.get(cell, 0))
    solver = _cp_solver(problem, seconds)
    code = solver.Solve(model)
    if code not in (cp_model.OPTIMAL, cp_model.FEASIBLE):
        return solver.StatusName(code), [], None
    chosen = [Assignment(problem.experts[c.expert].key, c.host, problem.experts[c.expert].specialty, c.day,
                         c.travel, problem.experts[c.expert].capacity)
              for n, c in enumerate(cands) if solver.BooleanValue(x[n])]
    return solver.StatusName(code), chosen, math.floor(solver.BestObjectiveBound() / weight + 1e-9)


def solve(problem: Problem, *, hint: Solution | None = None) -> Solution:
    """CP-SAT in two stages: sessions per (expert, host) first (`_solve_counts`), then their days
    (`_solve_days` with the counts fixed). When the days fit, the answer is optimal for the full model whenever
    stage 1 proved its optimum. When they do not (a host's day limit binds), the full model runs with the time
    left, from the hint; greedy is the last resort when the solver finds nothing."""
    started = clock.perf_counter()
    cands = candidates(problem)
    if not cands:
        return Solution([], {}, "cp-sat", "EMPTY", clock.perf_counter() - started, bound=0.0)
    status, counts, bound = _solve_counts(problem, cands, hint, problem.time_limit * 0.6)
    chosen: list[Assignment] = []
    if counts:
        left = max(0.5, problem.time_limit - (clock.perf_counter() - started))
        day_status, chosen, _ = _solve_days(problem, cands, hint=None, seconds=left, counts=counts)
        if not chosen:
            status = f"DAYS_{day_status}"
    if not chosen:
        left = max(0.5, problem.time_limit - (clock.perf_counter() - started))
        status, chosen, full_bound = _solve_days(problem, cands, hint=hint, seconds=left)
        bound = full_bound if bound is None else min(bound, full_bound or bound)
    if not chosen:
        fallback = hint or greedy(problem)
        return Solution(fallback.assignments, fallback.covered, "greedy (fallback)", status,
                        clock.perf_counter() - started, bound=bound)
    chosen.sort(key=lambda a: (a.day, a.host, a.expert))
    return Solution(chosen, _covered(problem, chosen), "cp-sat", status, clock.perf_counter() - started,
                    bound=float(bound) if bound is not None else None)


# ============================================================================ demand from the records

@dataclass
class DemandRow:
    """Why a host needs a specialty: who sent how many up, what is planned already, what is left."""

    host_id: int
    host: str
    specialty_id: int
    specialty: str
    specialty_en: str
    referrals: int = 0
    consults: int = 0
    from_villages: int = 0  # of the above, sent by the host's village clinics
    months: int = 6
    planned_sessions: int = 0
    planned_capacity: int = 0

    @property
    def per_month(self) -> float:
        return (self.referrals + self.consults) / self.months

    @property
    def unmet(self) -> int:
        return max(0, _round(self.per_month) - self.planned_capacity)

    def why(self) -> tuple[str, str]:
        villages_zh = f"（其中村卫生室 {self.from_villages} 人）" if self.from_villages else ""
        villages_en = f" ({self.from_villages} of them from its village clinics)" if self.from_villages else ""
        consult_zh = f"、远程会诊 {self.consults} 例" if self.consults else ""
        consult_en = f" and asked for {self.consults} teleconsultations" if self.consults else ""
        zh = (f"{self.host}近 {self.months} 个月上转{self.specialty} {self.referrals} 人{consult_zh}{villages_zh}"
              f"（约每月 {self.per_month:.1f} 人）；本月已排 {self.planned_sessions} 次"
              f"（{self.planned_capacity} 个号），"
              f"尚缺约 {self.unmet} 人")
        en = (f"{self.host} referred {self.referrals} {self.specialty_en or self.specialty} patients up{consult_en} "
              f"in the last {self.months} months{villages_en} ({self.per_month:.1f}/month); {self.planned_sessions} "
              f"sessions ({self.planned_capacity} places) already planned this month; about {self.unmet} left")
        return zh, en

    def as_json(self) -> dict[str, Any]:
        zh, en = self.why()
        return {"host_id": self.host_id, "host": self.host, "specialty_id": self.specialty_id,
                "specialty": self.specialty, "specialty_en": self.specialty_en, "referrals": self.referrals,
                "consults": self.consults, "from_villages": self.from_villages, "months": self.months,
                "per_month": round(self.per_month, 2), "planned_sessions": self.planned_sessions,
                "planned_capacity": self.planned_capacity, "unmet": self.unmet, "covered": 0, "sessions": 0,
                "why_zh": zh, "why_en": en}


def month_start(day: date) -> date:
    return date(day.year, day.month, 1)


def next_month(first: date) -> date:
    return date(first.year + (first.month == 12), first.month % 12 + 1, 1)


def _months_before(first: date, n: int) -> date:
    index = first.year * 12 + first.month - 1 - n
    return date(index // 12, index % 12 + 1, 1)


def _local_midnight(day: date) -> datetime:
    return service.local_dt(day, "00:00")


def host_of(db: Session, org_ids: Iterable[int]) -> dict[int, int]:
    """Sending organisation -> the host an expert would visit: itself, or for a village clinic its township
    centre (the clinic's parent, else the township centre of the township area the village lies in).
    Provincial hospitals and unplaceable villages are left out."""
    ids = set(org_ids)
    if not ids:
        return {}
    orgs = {o.id: o for o in db.scalars(select(Organisation).where(Organisation.id.in_(ids)))}
    out: dict[int, int] = {}
    villages = []
    for o in orgs.values():
        if o.level in HOST_LEVELS:
            out[o.id] = o.id
        elif o.level == OrgLevel.VILLAGE:
            villages.append(o)
    if not villages:
        return out
    parent_ids = {v.parent_id for v in villages if v.parent_id}
    parents = {o.id: o for o in db.scalars(select(Organisation).where(Organisation.id.in_(parent_ids)))} \
        if parent_ids else {}
    area_ids = {v.area_id for v in villages if v.area_id}
    area_parent = dict(db.execute(select(Area.id, Area.parent_id).where(Area.id.in_(area_ids))).all()) \
        if area_ids else {}
    town_areas = {a for a in area_parent.values() if a}
    centre_of_area = {}
    if town_areas:
        for org_id, area_id in db.execute(select(Organisation.id, Organisation.area_id).where(
                Organisation.area_id.in_(town_areas), Organisation.level.in_((OrgLevel.TOWNSHIP, OrgLevel.COMMUNITY)))
                .order_by(Organisation.id)).all():
            centre_of_area.setdefault(area_id, org_id)
    for v in villages:
        parent = parents.get(v.parent_id or 0)
        if parent is not None and parent.level in (OrgLevel.TOWNSHIP, OrgLevel.COMMUNITY):
            out[v.id] = parent.id
        elif v.area_id and area_parent.get(v.area_id) in centre_of_area:
            out[v.id] = centre_of_area[area_parent[v.area_id]]
    return out


def gather_demand(db: Session, *, month: date, months_back: int, host_ids: set[int] | None = None,
                  now: datetime | None = None) -> list[DemandRow]:
    """Demand per (host, specialty) from the last `months_back` months up to now, with the month's plan."""
    now = now or utcnow()
    today = now.astimezone(LOCAL_TZ).date()
    back = _months_before(month_start(today), months_back)
    since = _local_midnight(date(back.year, back.month, min(today.day, (next_month(back) - timedelta(days=1)).day)))
    spec = func.coalesce(Referral.wanted_specialty_id, Department.specialty_id)
    counts: dict[tuple[int, int], list[int]] = defaultdict(lambda: [0, 0])
    for org_id, spec_id, n in db.execute(
            select(Referral.from_organisation_id, spec, func.count()).outerjoin(
                Department, Department.id == Referral.to_department_id).where(
                Referral.direction == Direction.UP, Referral.sent_at.is_not(None), Referral.sent_at >= since,
                Referral.sent_at <= now, spec.is_not(None)).group_by(Referral.from_organisation_id, spec)).all():
        counts[(org_id, spec_id)][0] += n
    for org_id, spec_id, n in db.execute(
            select(ConsultRequest.inviting_organisation_id, ConsultRequest.wanted_specialty_id, func.count()).where(
                ConsultRequest.wanted_specialty_id.is_not(None), ConsultRequest.created_at >= since,
                ConsultRequest.created_at <= now, ConsultRequest.state != ConsultState.CANCELLED).group_by(
                ConsultRequest.inviting_organisation_id, ConsultRequest.wanted_specialty_id)).all():
        counts[(org_id, spec_id)][1] += n
    hosts = host_of(db, {o for o, _ in counts})
    rows: dict[tuple[int, int], DemandRow] = {}
    for (org_id, spec_id), (refs, cons) in counts.items():
        host = hosts.get(org_id)
        if host is None or (host_ids is not None and host not in host_ids):
            continue
        row = rows.get((host, spec_id))
        if row is None:
            row = rows[(host, spec_id)] = DemandRow(host, "", spec_id, "", "", months=months_back)
        row.referrals += refs
        row.consults += cons
        if host != org_id:
            row.from_villages += refs + cons
    if not rows:
        return []
    names = dict(db.execute(select(Organisation.id, Organisation.name).where(
        Organisation.id.in_({h for h, _ in rows}))).all())
    specs = {s.id: s for s in db.scalars(select(Specialty).where(Specialty.id.in_({s for _, s in rows})))}
    start, end = _local_midnight(month), _local_midnight(next_month(month))
    for host, spec_id, n, places in db.execute(
            select(OutreachSession.host_organisation_id, OutreachSession.specialty_id, func.count(),
                   func.coalesce(func.sum(OutreachSession.capacity), 0)).where(
                OutreachSession.status.in_(("published", "done")), OutreachSession.starts_at >= start,
                OutreachSession.starts_at < end, OutreachSession.host_organisation_id.in_({h for h, _ in rows}))
            .group_by(OutreachSession.host_organisation_id, OutreachSession.specialty_id)).all():
        if (host, spec_id) in rows:
            rows[(host, spec_id)].planned_sessions = int(n)
            rows[(host, spec_id)].planned_capacity = int(places)
    for (host, spec_id), row in rows.items():
        row.host = names.get(host, "")
        row.specialty = specs[spec_id].name if spec_id in specs else ""
        row.specialty_en = specs[spec_id].name_en if spec_id in specs else ""
    return sorted(rows.values(), key=lambda r: (-r.per_month, r.host, r.specialty_id))


# ============================================================================ supply from availability

def _fallback_minutes(a: Organisation, b: Organisation, settings: dict[str, float]) -> float:
    return service.straight_km(a, b) * settings.get("detour_factor", 1.3) / settings.get("fallback_kmh", 60.0) * 60


def travel_matrix(db: Session, bases: Sequence[Organisation], hosts: Sequence[Organisation], *,
                  settings: dict[str, float]) -> dict[tuple[int, int], float | None]:
    """Road minutes base -> host for every pair, as service.travel_minutes would give them, with one
    Dijkstra per distinct base for the pairs inside the county's road network."""
    out: dict[tuple[int, int], float | None] = {}
    located = [h for h in hosts if h.latitude is not None and h.longitude is not None]
    in_net_bases = [b for b in bases if b.latitude is not None and b.longitude is not None
                    and b.level != OrgLevel.PROVINCIAL]
    in_net_hosts = [h for h in located if h.level != OrgLevel.PROVINCIAL]
    road: dict[tuple[int, int], float] = {}
    if in_net_bases and in_net_hosts:
        try:
            network = geo.network_for(db)
            if network.node_count:
                m = network.minutes_matrix([(b.latitude, b.longitude) for b in in_net_bases],  # type: ignore[misc]
                                           [(h.latitude, h.longitude) for h in in_net_hosts])  # type: ignore[misc]
                for i, b in enumerate(in_net_bases):
                    for j, h in enumerate(in_net_hosts):
                        if np.isfinite(m[i, j]):
                            road[(b.id, h.id)] = float(m[i, j])
        except (ValueError, IndexError):
            road = {}
    for b in bases:
        for h in hosts:
            if b.id == h.id:
                out[(b.id, h.id)] = 0.0
            elif None in (b.latitude, b.longitude, h.latitude, h.longitude):
                out[(b.id, h.id)] = None
            else:
                out[(b.id, h.id)] = road.get((b.id, h.id), _fallback_minutes(b, h, settings))
    return out


@dataclass
class Supply:
    """What propose() knows about each person, for the problem and for the reasons it writes."""

    availability: ExpertAvailability
    name: str
    base: Organisation
    specialty_id: int | None
    days: list[date]
    sessions_left: int
    travel: dict[int, float | None]  # host -> minutes (every demanded host, reachable or not)


def _month_days(month: date, today: date) -> list[date]:
    days = []
    day = month
    while day < next_month(month):
        if day > today:
            days.append(day)
        day += timedelta(days=1)
    return days


def _agreements(db: Session, team_ids: set[int]) -> dict[int, list[StudioAgreement]]:
    out: dict[int, list[StudioAgreement]] = defaultdict(list)
    if team_ids:
        for a in db.scalars(select(StudioAgreement).where(StudioAgreement.team_id.in_(team_ids))):
            out[a.team_id].append(a)
    return out


def _covered_by_agreement(agreements: list[StudioAgreement], day: date) -> bool:
    return any(a.starts_on <= day <= a.ends_on for a in agreements)


def _busy_days(db: Session, person_ids: set[int], month: date) -> tuple[dict[int, set[date]], dict[int, int],
                                                                          dict[tuple[int, date], int]]:
    """Days each person already has a session (any host), their sessions this month, sessions per host-day."""
    days: dict[int, set[date]] = defaultdict(set)
    per_person: dict[int, int] = defaultdict(int)
    host_day: dict[tuple[int, date], int] = defaultdict(int)
    start, end = _local_midnight(month), _local_midnight(next_month(month))
    for pid, host, starts_at in db.execute(select(
            OutreachSession.practitioner_id, OutreachSession.host_organisation_id, OutreachSession.starts_at).where(
            OutreachSession.status.in_(LIVE_SESSION), OutreachSession.starts_at >= start - timedelta(days=1),
            OutreachSession.starts_at < end + timedelta(days=1))).all():
        local = starts_at.astimezone(LOCAL_TZ).date()
        host_day[(host, local)] += 1
        if pid in person_ids:
            days[pid].add(local)
            if month <= local < next_month(month):
                per_person[pid] += 1
    return days, per_person, host_day


def _studio_members(db: Session, team_ids: set[int]) -> dict[int, set[int]]:
    from healthrelay.directory.models import TeamMember

    out: dict[int, set[int]] = defaultdict(set)
    if team_ids:
        for team_id, pid in db.execute(select(TeamMember.team_id, TeamMember.practitioner_id).where(
                TeamMember.team_id.in_(team_ids))).all():
            out[team_id].add(pid)
    return out


@dataclass
class Diagnosis:
    """How many people are left after each filter: the first zero is what makes the roster impossible."""

    rows: int = 0
    with_specialty: int = 0
    studio_ok: int = 0
    with_sessions: int = 0
    with_free_day: int = 0
    specialty_demanded: int = 0
    host_in_reach: int = 0
    free_host_day: int = 0

    def explain(self, *, month: date) -> Conflict | None:
        steps = [
            ("rows", "no_availability", "没有任何专家登记出诊意向（出诊日、最远车程、每月次数）",
             "no expert has recorded their availability (weekdays, furthest travel, sessions a month)"),
            ("with_specialty", "no_specialty", "登记了出诊意向的专家都没有专科（本人或工作室）",
             "no available expert has a specialty (their own or their studio's)"),
            ("studio_ok", "not_studio_member", "工作室专家均不是所登记工作室的成员",
             "every studio expert is not a member of the studio they are listed under"),
            ("with_sessions", "no_sessions_allowed", f"{month:%Y-%m} 所有专家每月可出诊次数均为 0 或已排满",
             f"every expert's sessions a month is 0 or already used up in {month:%Y-%m}"),
            ("with_free_day", "no_free_day",
             f"{month:%Y-%m} 没有专家有空：出诊日、请假日期、工作室协议期或已有安排把每一天都排除了",
             f"no expert is free in {month:%Y-%m}: weekdays, dates away, studio agreement periods or existing "
             "sessions rule out every day"),
            ("specialty_demanded", "no_matching_specialty", "有空的专家的专科都没有未满足的需求",
             "no free expert's specialty has unmet demand"),
            ("host_in_reach", "no_host_in_reach", "有需求的机构都超出专家的最远车程（或没有坐标）",
             "every host with demand is beyond the experts' furthest travel (or has no coordinates)"),
            ("free_host_day", "hosts_full", "有需求的机构在专家有空的日子已排满（每日场次上限）",
             "the hosts with demand are full (sessions a day) on the days the experts are free"),
        ]
        for attr, code, zh, en in steps:
            if getattr(self, attr) == 0:
                return Conflict(f"无法排班：{zh} / cannot plan a roster: {en}", code=code,
                                field_errors=[_err("month", zh, en)])
        return None


def _weekday_text(weekdays: Sequence[int]) -> tuple[str, str]:
    ds = sorted(set(weekdays))
    return "、".join(WEEKDAYS_ZH[d] for d in ds if 0 <= d <= 6), ", ".join(WEEKDAYS_EN[d] for d in ds if 0 <= d <= 6)


# ============================================================================ propose

def _check_params(db: Session, *, month: date, months_back: int, host_ids: Sequence[int] | None, time_limit: float,
                  per_host_day: int, start_time: str, minutes: int) -> tuple[date, set[int] | None, str]:
    errors = []
    first = month_start(month)
    this_month = month_start(local_today())
    if first < this_month:
        errors.append(_err("month", f"{first:%Y-%m} 已经过去", f"{first:%Y-%m} is in the past"))
    elif first > _months_before(this_month, -MAX_MONTHS_AHEAD):
        errors.append(_err("month", f"最多提前 {MAX_MONTHS_AHEAD} 个月排班",
                           f"at most {MAX_MONTHS_AHEAD} months ahead"))
    if not 1 <= months_back <= MAX_MONTHS_BACK:
        errors.append(_err("months_back", f"须在 1 到 {MAX_MONTHS_BACK} 之间", f"must be 1 to {MAX_MONTHS_BACK}"))
    if not 0.5 <= time_limit <= 120:
        errors.append(_err("time_limit", "求解时限须在 0.5 到 120 秒之间", "the time limit must be 0.5 to 120 s"))
    if not 1 <= per_host_day <= 10:
        errors.append(_err("per_host_day", "每个机构每天 1 到 10 场", "1 to 10 sessions a host a day"))
    if not 15 <= minutes <= service.MAX_SESSION_MINUTES:
        errors.append(_err("minutes", "时长须在 15 到 720 分钟之间", "length must be 15 to 720 minutes"))
    try:
        hhmm = service.check_hhmm(start_time)
    except InvalidInput as exc:
        errors += exc.field_errors
        hhmm = "09:00"
    hosts: set[int] | None = None
    if host_ids:
        hosts = set(host_ids)
        found = dict(db.execute(select(Organisation.id, Organisation.level).where(Organisation.id.in_(hosts))).all())
        unknown = sorted(hosts - set(found))
        not_host = sorted(h for h, level in found.items() if level not in HOST_LEVELS)
        if unknown:
            errors.append(_err("host_ids", f"没有这些机构：{', '.join(map(str, unknown))}",
                               f"no such organisation: {', '.join(map(str, unknown))}"))
        if not_host:
            errors.append(_err("host_ids", f"这些机构不接待下沉（省级医院或村卫生室）：{', '.join(map(str, not_host))}",
                               f"not outreach hosts (provincial hospital or village clinic): "
                               f"{', '.join(map(str, not_host))}"))
    if errors:
        raise InvalidInput("排班条件有误 / the roster request has problems", field_errors=errors)
    return first, hosts, hhmm


def _supplies(db: Session, *, month: date, demand: list[DemandRow], settings: dict[str, float],
              diag: Diagnosis) -> tuple[list[Supply], dict[tuple[int, date], int]]:
    today = local_today()
    rows = list(db.scalars(select(ExpertAvailability).order_by(ExpertAvailability.id)))
    diag.rows = len(rows)
    if not rows:
        return [], {}
    team_ids = {r.studio_team_id for r in rows if r.studio_team_id}
    teams = {t.id: t for t in db.scalars(select(Team).where(Team.id.in_(team_ids)))} if team_ids else {}
    agreements = _agreements(db, team_ids)
    members = _studio_members(db, team_ids)
    person_ids = {r.practitioner_id for r in rows}
    names = dict(db.execute(select(Practitioner.id, Practitioner.name).where(Practitioner.id.in_(person_ids))).all())
    bases = {o.id: o for o in db.scalars(select(Organisation).where(
        Organisation.id.in_({r.base_organisation_id for r in rows})))}
    busy, used, host_day = _busy_days(db, person_ids, month)
    demanded = {r.host_id for r in demand if r.unmet > 0}
    hosts = list(db.scalars(select(Organisation).where(Organisation.id.in_(demanded)))) if demanded else []
    travel = travel_matrix(db, list(bases.values()), hosts, settings=settings)
    spec_hosts: dict[int, set[int]] = defaultdict(set)
    for r in demand:
        if r.unmet > 0:
            spec_hosts[r.specialty_id].add(r.host_id)
    month_days = _month_days(month, today)
    out: list[Supply] = []
    for r in rows:
        team = teams.get(r.studio_team_id or 0)
        spec = r.specialty_id or (team.specialty_id if team else None)
        if spec is None:
            continue
        diag.with_specialty += 1
        if r.studio_team_id and (team is None or r.practitioner_id not in members.get(team.id, set())):
            continue
        diag.studio_ok += 1
        left = r.max_sessions_per_month - used.get(r.practitioner_id, 0)
        if left <= 0:
            continue
        diag.with_sessions += 1
        away = set(r.unavailable_dates or [])
        days = [d for d in month_days if d.weekday() in (r.weekdays or []) and d.isoformat() not in away
                and d not in busy.get(r.practitioner_id, set())
                and (not r.studio_team_id or _covered_by_agreement(agreements.get(r.studio_team_id, []), d))]
        if not days:
            continue
        diag.with_free_day += 1
        if not spec_hosts.get(spec):
            continue
        diag.specialty_demanded += 1
        minutes = {h: travel.get((r.base_organisation_id, h)) for h in spec_hosts[spec]}
        reach = [h for h, m in minutes.items() if m is not None and m <= r.max_travel_minutes]
        if not reach:
            continue
        diag.host_in_reach += 1
        out.append(Supply(availability=r, name=names.get(r.practitioner_id, ""), base=bases[r.base_organisation_id],
                          specialty_id=spec, days=days, sessions_left=left, travel=minutes))
    return out, dict(host_day)


def _problem(supplies: list[Supply], demand: list[DemandRow], host_day: dict[tuple[int, date], int], *,
             per_host_day: int, time_limit: float, min_patients: int = 1) -> Problem:
    experts = [ExpertSupply(key=s.availability.practitioner_id, specialty=s.specialty_id or 0,
                            capacity=s.availability.session_capacity, max_sessions=s.sessions_left,
                            days=tuple(s.days),
                            travel={h: m for h, m in s.travel.items()
                                    if m is not None and m <= s.availability.max_travel_minutes})
               for s in supplies]
    return Problem(experts=experts, demand={(r.host_id, r.specialty_id): r.unmet for r in demand if r.unmet > 0},
                   per_host_day=per_host_day, host_day_taken=host_day, time_limit=time_limit,
                   min_patients=min_patients)


def _item_reason(*, demand: dict[str, Any] | None, person: str, base: str, host: str, travel: float | None,
                 max_travel: int, weekdays: Sequence[int], day: date, expected: float, share_of: int,
                 by_planner: bool) -> str:
    wd_zh, wd_en = _weekday_text(weekdays)
    if demand is not None:
        need_zh, need_en = demand["why_zh"], demand["why_en"]
    else:
        need_zh, need_en = f"{host}近期没有该专科的上转记录", f"{host} has sent no patients of this specialty up lately"
    trip_zh = f"{person}自{base}到此车程约 {travel:.0f} 分钟（上限 {max_travel} 分钟）" if travel is not None \
        else f"{person}自{base}出发，车程未知"
    trip_en = f"{person} drives about {travel:.0f} min from {base} (limit {max_travel} min)" if travel is not None \
        else f"{person} starts from {base}; road time unknown"
    shared_zh = f"，与本月另外 {share_of - 1} 次同专科安排分担" if share_of > 1 else ""
    shared_en = f", shared with {share_of - 1} other session(s) of the specialty there" if share_of > 1 else ""
    hand_zh, hand_en = ("（医务科手工添加）", " (added by the planner)") if by_planner else ("", "")
    zh = (f"{need_zh}。{trip_zh}；每{wd_zh}可出诊，{day.isoformat()}（{WEEKDAYS_ZH[day.weekday()]}）无其他安排。"
          f"预计本次可让约 {expected:.1f} 人留在当地就诊{shared_zh}{hand_zh}。")
    en = (f"{need_en}. {trip_en}; free on {wd_en}, nothing else on {day.isoformat()} "
          f"({WEEKDAYS_EN[day.weekday()]}). Expected to keep about {expected:.1f} patients local{shared_en}{hand_en}.")
    return f"{zh}\n{en}"


def default_min_patients(db: Session) -> int:
    return int(service.settings_of(db).get("roster_min_patients", 3))


def propose(db: Session, *, by: User, month: date, months_back: int = 6, host_ids: Sequence[int] | None = None,
            time_limit: float = 10.0, per_host_day: int = 2, start_time: str = "09:00", minutes: int = 180,
            min_patients: int | None = None, now: datetime | None = None) -> RosterPlan:
    """Plan `month` from the last `months_back` months of demand; stores a draft roster and its items.

    Refused before anything is written when the request is bad (422 naming the field) or when no roster is
    possible (409 naming the constraint that rules everything out). A session is proposed only where it is
    expected to keep at least `min_patients` patients a month local: a whole morning of an expert for one patient
    is not worth the trip; unless asked, the county's `roster_min_patients` (outreach_settings) decides."""
    service.require_planner(by)
    if min_patients is None:
        min_patients = default_min_patients(db)
    if not 1 <= min_patients <= 100:
        raise InvalidInput("每场至少留住的患者数须在 1 到 100 之间 / patients a session must keep: 1 to 100",
                           field_errors=[_err("min_patients", "1–100", "1 to 100")])
    first, hosts, hhmm = _check_params(db, month=month, months_back=months_back, host_ids=host_ids,
                                       time_limit=time_limit, per_host_day=per_host_day, start_time=start_time,
                                       minutes=minutes)
    demand = gather_demand(db, month=first, months_back=months_back, host_ids=hosts, now=now)
    if not demand:
        where = "所选机构" if hosts else "各机构"
        raise InvalidInput(f"近 {months_back} 个月{where}没有按专科的上转或远程会诊记录，无从排班 / "
                           f"no upward referral or consultation with a specialty in the last {months_back} months"
                           f"{' from the hosts chosen' if hosts else ''}: nothing to plan from",
                           field_errors=[_err("months_back", "这段时间没有需求记录",
                                              "no demand recorded in that period")])
    if not any(r.unmet for r in demand):
        raise Conflict(f"{first:%Y-%m} 已发布的安排已覆盖全部需求 / the sessions already published for {first:%Y-%m} "
                       "cover all the demand", code="demand_covered",
                       field_errors=[_err("month", "需求已被已有安排覆盖", "already covered")])
    if not any(r.unmet >= min_patients for r in demand):
        top = max(demand, key=lambda r: r.unmet)
        raise Conflict(f"各机构各专科每月未满足的需求都不足 {min_patients} 人（最多 {top.unmet} 人），"
                       f"不值得专家跑一趟；可降低“每场至少留住”或拉长统计月数 / no host and specialty has "
                       f"{min_patients} or more patients a month left to serve (the most is {top.unmet}); lower the "
                       "minimum or look further back", code="demand_too_small",
                       field_errors=[_err("min_patients", f"最多 {top.unmet} 人/月",
                                          f"the most is {top.unmet} a month")])
    settings = service.settings_of(db)
    diag = Diagnosis()
    supplies, host_day = _supplies(db, month=first, demand=demand, settings=settings, diag=diag)
    problem = _problem(supplies, demand, host_day, per_host_day=per_host_day, time_limit=time_limit,
                       min_patients=min_patients)
    cands = candidates(problem)
    diag.free_host_day = len(cands)
    refusal = diag.explain(month=first)
    if refusal is not None:
        raise refusal
    base = greedy(problem)
    best = solve(problem, hint=base)
    if best.total_covered < base.total_covered:  # a time limit too short to beat the hint
        best = Solution(base.assignments, base.covered, "greedy (fallback)", best.status, best.seconds, best.bound)
    roster = RosterPlan(
        number=service.temporary_number(), month=first, status="draft",
        params={"month": first.isoformat(), "months_back": months_back, "host_ids": sorted(hosts) if hosts else None,
                "time_limit": time_limit, "per_host_day": per_host_day, "start_time": hhmm, "minutes": minutes,
                "min_patients": min_patients,
                "experts": len(problem.experts), "candidates": len(cands), "status": best.status,
                "bound": best.bound, "greedy_seconds": round(base.seconds, 3),
                "greedy_sessions": len(base.assignments), "travel_minutes": round(best.travel_total, 1),
                "greedy_travel_minutes": round(base.travel_total, 1)},
        demand=[r.as_json() for r in demand], solver=best.solver, solve_seconds=round(best.seconds, 3),
        demand_total=float(sum(r.unmet for r in demand)), covered=float(best.total_covered),
        greedy_covered=float(base.total_covered), created_by_user_id=by.id)
    db.add(roster)
    db.flush()
    roster.number = f"PB{first:%Y%m}-{roster.id:02d}"
    by_person = {s.availability.practitioner_id: s for s in supplies}
    for a in best.assignments:
        s = by_person[a.expert]
        db.add(RosterItem(roster_id=roster.id, practitioner_id=a.expert, host_organisation_id=a.host,
                          specialty_id=a.specialty, studio_team_id=s.availability.studio_team_id, session_date=a.day,
                          start_time=hhmm, minutes=minutes, capacity=a.capacity, travel_minutes=round(a.travel, 1)))
    db.flush()
    refresh(db, roster)
    service.record_audit(db, by, "outreach.roster_proposed", resource=f"outreach_roster:{roster.id}",
                         number=roster.number, items=len(best.assignments), covered=roster.covered)
    return roster


# ============================================================================ reading and keeping figures right

def get_roster(db: Session, *, by: User, roster_id: int) -> RosterPlan:
    service.require_planner(by)
    roster = db.get(RosterPlan, roster_id)
    if roster is None:
        raise NotFound("没有这个排班方案 / no such roster")
    return roster


def items_of(db: Session, roster_id: int, *, include_removed: bool = False) -> list[RosterItem]:
    q = select(RosterItem).where(RosterItem.roster_id == roster_id)
    if not include_removed:
        q = q.where(RosterItem.removed.is_(False))
    return list(db.scalars(q.order_by(RosterItem.session_date, RosterItem.host_organisation_id,
                                      RosterItem.start_time, RosterItem.id)))


def list_rosters(db: Session, *, by: User, limit: int = 50) -> list[RosterPlan]:
    service.require_planner(by)
    return list(db.scalars(select(RosterPlan).order_by(RosterPlan.month.desc(), RosterPlan.id.desc()).limit(limit)))


def refresh(db: Session, roster: RosterPlan) -> None:
    """Share each (host, specialty)'s covered demand among its live items by places, rewrite their reasons and
    the roster's covered figure (after a proposal, a move, a removal or an addition)."""
    items = items_of(db, roster.id)
    demand = {(d["host_id"], d["specialty_id"]): d for d in roster.demand}
    offered: dict[tuple[int, int], int] = defaultdict(int)
    count: dict[tuple[int, int], int] = defaultdict(int)
    for it in items:
        offered[(it.host_organisation_id, it.specialty_id or 0)] += it.capacity
        count[(it.host_organisation_id, it.specialty_id or 0)] += 1
    covered = {k: min(v, demand[k]["unmet"]) if k in demand else 0 for k, v in offered.items()}
    new_demand = []
    for key, d in demand.items():
        new_demand.append({**d, "covered": covered.get(key, 0), "sessions": count.get(key, 0)})
    roster.demand = new_demand
    roster.covered = float(sum(covered.values()))
    if not items:
        return
    people = {it.practitioner_id for it in items}
    avail = {a.practitioner_id: a for a in db.scalars(select(ExpertAvailability).where(
        ExpertAvailability.practitioner_id.in_(people)))}
    names = dict(db.execute(select(Practitioner.id, Practitioner.name).where(Practitioner.id.in_(people))).all())
    org_ids = {it.host_organisation_id for it in items} | {a.base_organisation_id for a in avail.values()}
    orgs = dict(db.execute(select(Organisation.id, Organisation.name).where(Organisation.id.in_(org_ids))).all())
    fresh = {(d["host_id"], d["specialty_id"]): d for d in new_demand}
    for it in items:
        key = (it.host_organisation_id, it.specialty_id or 0)
        it.expected_local = round(covered.get(key, 0) * it.capacity / offered[key], 2) if offered[key] else 0.0
        a = avail.get(it.practitioner_id)
        it.reason = _item_reason(
            demand=fresh.get(key), person=names.get(it.practitioner_id, ""),
            base=orgs.get(a.base_organisation_id, "") if a else "", host=orgs.get(it.host_organisation_id, ""),
            travel=it.travel_minutes, max_travel=a.max_travel_minutes if a else 0,
            weekdays=a.weekdays if a else [], day=it.session_date, expected=it.expected_local,
            share_of=count[key], by_planner=it.added_by_planner)
    db.flush()


# ============================================================================ the planner's adjustments

def _draft(db: Session, *, by: User, roster_id: int) -> RosterPlan:
    roster = get_roster(db, by=by, roster_id=roster_id)
    if roster.status != "draft":
        raise Conflict(f"排班方案 {roster.number} 已发布，不能再修改 / roster {roster.number} is published and can no "
                       "longer change", code="roster_published")
    return roster


def _item(db: Session, roster: RosterPlan, item_id: int) -> RosterItem:
    item = db.get(RosterItem, item_id)
    if item is None or item.roster_id != roster.id or item.removed:
        raise NotFound("方案中没有这一项 / no such item in this roster")
    return item


def _check_item(db: Session, roster: RosterPlan, *, practitioner_id: int, host_id: int, day: date, hhmm: str,
                minutes: int, capacity: int, exclude_item: int | None = None) -> tuple[ExpertAvailability, float,
                                                                                      int | None]:
    """Everything propose() would have required of this (person, host, day), each refusal naming its reason.
    Returns the availability, the road minutes and the specialty."""
    errors = []
    avail = db.scalars(select(ExpertAvailability).where(ExpertAvailability.practitioner_id == practitioner_id)).first()
    person = db.get(Practitioner, practitioner_id)
    host = db.get(Organisation, host_id)
    if person is None:
        errors.append(_err("practitioner_id", "没有这位医生", "no such practitioner"))
    elif avail is None:
        errors.append(_err("practitioner_id", f"{person.name} 没有登记出诊意向", f"{person.name} has no availability "
                           "recorded"))
    if host is None:
        errors.append(_err("host_organisation_id", "没有这个机构", "no such organisation"))
    elif host.level not in HOST_LEVELS:
        errors.append(_err("host_organisation_id", "该机构不接待下沉（省级医院或村卫生室）",
                           "not an outreach host (provincial hospital or village clinic)"))
    if not roster.month <= day < next_month(roster.month):
        errors.append(_err("session_date", f"须在 {roster.month:%Y-%m} 内", f"must fall in {roster.month:%Y-%m}"))
    elif service.local_dt(day, hhmm) <= utcnow():
        errors.append(_err("session_date", "不能安排在过去", "cannot be in the past"))
    if not 1 <= capacity <= service.MAX_CAPACITY:
        errors.append(_err("capacity", "号源须在 1 到 500 之间", "1 to 500 places"))
    if not 15 <= minutes <= service.MAX_SESSION_MINUTES:
        errors.append(_err("minutes", "时长须在 15 到 720 分钟之间", "length must be 15 to 720 minutes"))
    if errors or avail is None or host is None or person is None:
        raise InvalidInput("这一安排有误 / this session has problems", field_errors=errors)
    name = person.name
    team = db.get(Team, avail.studio_team_id) if avail.studio_team_id else None
    specialty = avail.specialty_id or (team.specialty_id if team else None)
    if day.weekday() not in (avail.weekdays or []):
        wd_zh, wd_en = _weekday_text(avail.weekdays or [])
        errors.append(_err("session_date",
                           f"{name} 只在{wd_zh or '（未登记）'}出诊，{day} 是{WEEKDAYS_ZH[day.weekday()]}",
                           f"{name} is free only on {wd_en or '(none)'}; {day} is a {WEEKDAYS_EN[day.weekday()]}"))
    if day.isoformat() in (avail.unavailable_dates or []):
        errors.append(_err("session_date", f"{name} 登记 {day} 不能出诊", f"{name} is away on {day}"))
    if team is not None and service.agreement_covering(db, team.id, day) is None:
        periods = "；".join(f"{a.starts_on} 至 {a.ends_on}" for a in service.agreements_of(db, team.id)) or "无"
        errors.append(_err("session_date", f"{day} 不在{team.name}的协议期内（{periods}）",
                           f"{day} is outside {team.name}'s agreement period(s): {periods}"))
    base = db.get(Organisation, avail.base_organisation_id)
    travel = service.travel_minutes(db, base, host) if base is not None else None
    if travel is None:
        errors.append(_err("host_organisation_id", f"无法估算{name}到{host.name}的车程（缺少坐标）",
                           f"cannot tell the road time from {name}'s base to {host.name} (no coordinates)"))
    elif travel > avail.max_travel_minutes:
        errors.append(_err("host_organisation_id",
                           f"{host.name} 距{name}约 {travel:.0f} 分钟车程，超过其上限 {avail.max_travel_minutes} 分钟",
                           f"{host.name} is about {travel:.0f} min by road from {name}, beyond their limit of "
                           f"{avail.max_travel_minutes} min"))
    if errors:
        raise InvalidInput(f"{name} 不能这样安排 / {name} cannot take this session", field_errors=errors)
    assert travel is not None
    others = [it for it in items_of(db, roster.id) if it.id != exclude_item]
    same_day = next((it for it in others if it.practitioner_id == practitioner_id and it.session_date == day), None)
    if same_day is not None:
        raise Conflict(f"{name} 在本方案中 {day} 已有一次安排（第 {same_day.id} 项）/ {name} already has item "
                       f"{same_day.id} in this roster on {day}", code="person_busy",
                       field_errors=[_err("session_date", "当天已有安排", "already planned that day")])
    start = service.local_dt(day, hhmm)
    conflicts = service.conflicts_for(db, practitioner_id=practitioner_id, host=host,
                                      windows=[(start, start + timedelta(minutes=minutes))])
    if conflicts:
        text = "；".join(c.message() for c in conflicts)
        raise Conflict(f"{name} 这段时间另有安排 / {name} is elsewhere then: {text}", code="person_busy",
                       field_errors=[_err("session_date", c.message(), "conflict") for c in conflicts])
    start_utc, end_utc = _local_midnight(roster.month), _local_midnight(next_month(roster.month))
    existing = db.scalar(select(func.count()).select_from(OutreachSession).where(
        OutreachSession.practitioner_id == practitioner_id, OutreachSession.status.in_(LIVE_SESSION),
        OutreachSession.starts_at >= start_utc, OutreachSession.starts_at < end_utc)) or 0
    mine = sum(1 for it in others if it.practitioner_id == practitioner_id)
    if existing + mine + 1 > avail.max_sessions_per_month:
        raise Conflict(f"{name} 每月最多 {avail.max_sessions_per_month} 次，本月已有 {existing} 次、方案中 {mine} 次 / "
                       f"{name} takes at most {avail.max_sessions_per_month} sessions a month: {existing} published "
                       f"and {mine} in this roster", code="max_sessions",
                       field_errors=[_err("practitioner_id", "超过每月次数", "over the monthly limit")])
    per_host_day = int(roster.params.get("per_host_day", 2))
    at_host = sum(1 for it in others if it.host_organisation_id == host_id and it.session_date == day)
    at_host += db.scalar(select(func.count()).select_from(OutreachSession).where(
        OutreachSession.host_organisation_id == host_id, OutreachSession.status.in_(LIVE_SESSION),
        OutreachSession.starts_at >= _local_midnight(day),
        OutreachSession.starts_at < _local_midnight(day + timedelta(days=1)))) or 0
    if at_host >= per_host_day:
        raise Conflict(f"{host.name} {day} 已有 {at_host} 场，达到每日上限 {per_host_day} / {host.name} already has "
                       f"{at_host} sessions on {day}, the limit a day is {per_host_day}", code="host_full",
                       field_errors=[_err("session_date", "该机构当天已满", "the host is full that day")])
    return avail, travel, specialty


def move_item(db: Session, *, by: User, roster_id: int, item_id: int, session_date: date | None = None,
              host_organisation_id: int | None = None, start_time: str | None = None) -> RosterItem:
    """Move one proposed session to another day, host or time; re-checked like a new one."""
    roster = _draft(db, by=by, roster_id=roster_id)
    item = _item(db, roster, item_id)
    day = session_date or item.session_date
    host = host_organisation_id or item.host_organisation_id
    hhmm = service.check_hhmm(start_time) if start_time else item.start_time
    _, travel, _ = _check_item(db, roster, practitioner_id=item.practitioner_id, host_id=host, day=day, hhmm=hhmm,
                               minutes=item.minutes, capacity=item.capacity, exclude_item=item.id)
    before = (item.session_date.isoformat(), item.host_organisation_id, item.start_time)
    item.session_date, item.host_organisation_id, item.start_time = day, host, hhmm
    item.travel_minutes = round(travel, 1)
    db.flush()
    refresh(db, roster)
    service.record_audit(db, by, "outreach.roster_item_moved", resource=f"outreach_roster:{roster.id}",
                         item_id=item.id, before=list(before), after=[day.isoformat(), host, hhmm])
    return item


def remove_item(db: Session, *, by: User, roster_id: int, item_id: int) -> RosterItem:
    roster = _draft(db, by=by, roster_id=roster_id)
    item = _item(db, roster, item_id)
    item.removed = True
    db.flush()
    refresh(db, roster)
    service.record_audit(db, by, "outreach.roster_item_removed", resource=f"outreach_roster:{roster.id}",
                         item_id=item.id)
    return item


def add_item(db: Session, *, by: User, roster_id: int, practitioner_id: int, host_organisation_id: int,
             session_date: date, start_time: str | None = None, minutes: int | None = None,
             capacity: int | None = None) -> RosterItem:
    """The planner adds a session by hand (someone propose() did not pick); checked like the proposed ones."""
    roster = _draft(db, by=by, roster_id=roster_id)
    hhmm = service.check_hhmm(start_time or roster.params.get("start_time", "09:00"))
    length = minutes or int(roster.params.get("minutes", 180))
    avail = db.scalars(select(ExpertAvailability).where(ExpertAvailability.practitioner_id == practitioner_id)).first()
    places = capacity or (avail.session_capacity if avail else 20)
    avail, travel, specialty = _check_item(db, roster, practitioner_id=practitioner_id, host_id=host_organisation_id,
                                           day=session_date, hhmm=hhmm, minutes=length, capacity=places)
    item = RosterItem(roster_id=roster.id, practitioner_id=practitioner_id, host_organisation_id=host_organisation_id,
                      specialty_id=specialty, studio_team_id=avail.studio_team_id, session_date=session_date,
                      start_time=hhmm, minutes=length, capacity=places, travel_minutes=round(travel, 1),
                      added_by_planner=True)
    db.add(item)
    db.flush()
    refresh(db, roster)
    service.record_audit(db, by, "outreach.roster_item_added", resource=f"outreach_roster:{roster.id}", item_id=item.id)
    return item


# ============================================================================ publish

def publish(db: Session, *, by: User, roster_id: int) -> tuple[RosterPlan, list[OutreachSession]]:
    """Make every live item a published clinic session, or none: each refusal is listed by item."""
    roster = get_roster(db, by=by, roster_id=roster_id)
    if roster.status != "draft":
        raise Conflict(f"排班方案 {roster.number} 已发布 / roster {roster.number} is already published",
                       code="roster_published")
    items = items_of(db, roster.id)
    if not items:
        raise InvalidInput("方案中没有安排可发布 / the roster has no session to publish",
                           field_errors=[_err("items", "全部已删除", "every item was removed")])
    specs = dict(db.execute(select(Specialty.id, Specialty.name).where(
        Specialty.id.in_({it.specialty_id for it in items if it.specialty_id}))).all())
    take_sqlite_write_lock(db)
    problems: list[dict[str, Any]] = []
    created: list[OutreachSession] = []
    savepoint = db.begin_nested()
    changed = db.execute(RosterPlan.__table__.update().where(
        RosterPlan.id == roster.id, RosterPlan.status == "draft").values(
        status="published", published_at=utcnow(), published_by_user_id=by.id))
    if changed.rowcount != 1:  # type: ignore[attr-defined]
        savepoint.rollback()
        raise Conflict(f"排班方案 {roster.number} 刚被他人发布 / roster {roster.number} was just published",
                       code="roster_published")
    for it in items:
        plan = service.SessionPlan(
            kind="clinic", title=f"{specs.get(it.specialty_id or 0, '')}专家门诊".strip(),
            practitioner_id=it.practitioner_id, host_organisation_id=it.host_organisation_id,
            starts_at=service.local_dt(it.session_date, it.start_time), minutes=it.minutes, capacity=it.capacity,
            specialty_id=it.specialty_id, studio_team_id=it.studio_team_id)
        try:
            session = service.create_session(db, by=by, plan=plan, roster_id=roster.id)
        except DomainError as exc:
            detail = "；".join(str(e.get("message", "")) for e in exc.field_errors) or exc.message
            problems.append(_err(f"items[{it.id}]", f"第 {it.id} 项（{it.session_date}）：{exc.message}",
                                 f"item {it.id} ({it.session_date}): {detail}"))
            continue
        it.session_id = session.id
        created.append(session)
    if problems:
        savepoint.rollback()
        db.expire(roster)
        raise Conflict(f"有 {len(problems)} 项不能发布，整个方案均未发布 / {len(problems)} item(s) cannot be "
                       "published, so nothing was: " + "；".join(p["message"] for p in problems[:10]),
                       code="roster_conflicts", field_errors=problems)
    savepoint.commit()
    db.refresh(roster)
    service.record_audit(db, by, "outreach.roster_published", resource=f"outreach_roster:{roster.id}",
                         sessions=len(created))
    return roster, created


# ============================================================================ the page's view

@dataclass
class ItemView:
    item: RosterItem
    person: str
    host: str
    specialty: str
    studio: str


@dataclass
class RosterView:
    roster: RosterPlan
    items: list[ItemView]
    days: list[tuple[date, list[ItemView]]]
    hosts: list[tuple[int, str]]  # hosts with demand or items, for the chart and the move form
    chart: dict[str, list[Any]]  # per host: demand and covered
    people: list[tuple[int, str]]  # who may be added (has availability)
    gap: float  # covered by the solver minus greedy


def roster_view(db: Session, *, by: User, roster_id: int) -> RosterView:
    roster = get_roster(db, by=by, roster_id=roster_id)
    items = items_of(db, roster.id)
    person_ids = {it.practitioner_id for it in items}
    avail_people = dict(db.execute(select(Practitioner.id, Practitioner.name).join(
        ExpertAvailability, ExpertAvailability.practitioner_id == Practitioner.id).order_by(Practitioner.name)
        .limit(1000)).all())
    names = dict(db.execute(select(Practitioner.id, Practitioner.name).where(
        Practitioner.id.in_(person_ids))).all()) if person_ids else {}
    host_ids = {it.host_organisation_id for it in items} | {d["host_id"] for d in roster.demand}
    orgs = dict(db.execute(select(Organisation.id, Organisation.name).where(Organisation.id.in_(host_ids))).all()) \
        if host_ids else {}
    spec_ids = {it.specialty_id for it in items if it.specialty_id}
    specs = dict(db.execute(select(Specialty.id, Specialty.name).where(Specialty.id.in_(spec_ids))).all()) \
        if spec_ids else {}
    team_ids = {it.studio_team_id for it in items if it.studio_team_id}
    teams = dict(db.execute(select(Team.id, Team.name).where(Team.id.in_(team_ids))).all()) if team_ids else {}
    views = [ItemView(it, names.get(it.practitioner_id, ""), orgs.get(it.host_organisation_id, ""),
                      specs.get(it.specialty_id or 0, ""), teams.get(it.studio_team_id or 0, "")) for it in items]
    by_day: dict[date, list[ItemView]] = defaultdict(list)
    for v in views:
        by_day[v.item.session_date].append(v)
    per_host: dict[int, list[float]] = defaultdict(lambda: [0.0, 0.0])
    for d in roster.demand:
        per_host[d["host_id"]][0] += d["unmet"]
        per_host[d["host_id"]][1] += d.get("covered", 0)
    order = sorted(per_host, key=lambda h: (-per_host[h][0], orgs.get(h, "")))
    chart = {"hosts": [orgs.get(h, str(h)) for h in order], "demand": [per_host[h][0] for h in order],
             "covered": [per_host[h][1] for h in order]}
    return RosterView(roster=roster, items=views, days=sorted(by_day.items()),
                      hosts=sorted(((h, orgs.get(h, "")) for h in host_ids), key=lambda x: x[1]), chart=chart,
                      people=sorted(avail_people.items(), key=lambda x: x[1]),
                      gap=roster.covered - roster.greedy_covered)
