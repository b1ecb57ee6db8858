"""Roster benchmark: run time and demand covered, CP-SAT vs the greedy baseline, for one month of outreach.

1. The demo county (青溪县): its 22 township and community centres as hosts, 31 studio experts based at the
   three county hospitals (23 disciplines), synthetic demand per host and specialty.
2. A region ten times the county: 10 copies side by side (2 x 5, 60 km x 50 km apart), 310 experts,
   220 hosts; an expert may cross into a neighbouring county when it is within their furthest travel.

Model only (no database): `healthrelay.outreach.roster.solve` / `greedy` over the same dataclasses
`propose()` builds. Travel is the straight line x 1.3 at 60 km/h (the fallback the product uses outside the
road network). Seeds are fixed, so two runs see the same problem.

    .venv/bin/python bench/roster.py --smoke       # demo county, 2 s limit (CI)
    .venv/bin/python bench/roster.py               # both sizes, 10 s limit (the product's default)
    .venv/bin/python bench/roster.py --time-limit 60
"""

from __future__ import annotations

import argparse
import math
import random
import sys
import time
from collections import defaultdict
from dataclasses import dataclass
from datetime import date, timedelta

from healthrelay.demo import county
from healthrelay.directory.models import OrgKind, OrgLevel
from healthrelay.outreach.roster import ExpertSupply, Problem, Solution, greedy, solve

MONTH = date(2031, 3, 1)  # any month: the bench has no "today"
SPECIALTIES = 23
DETOUR, KMH = 1.3, 60.0


@dataclass
class Place:
    key: int
    name: str
    lat: float
    lon: float


def km(a: Place, b: Place) -> float:
    p1, p2 = math.radians(a.lat), math.radians(b.lat)
    dp, dl = p2 - p1, math.radians(b.lon - a.lon)
    h = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * 6371.0 * math.asin(min(1.0, math.sqrt(h)))


def minutes(a: Place, b: Place) -> float:
    return km(a, b) * DETOUR / KMH * 60.0


def demo_places(shift_km: tuple[float, float] = (0.0, 0.0), offset: int = 0) -> tuple[list[Place], list[Place]]:
    """Hosts (township and community centres) and bases (the county hospitals) of the demo county, shifted."""
    dlat, dlon = shift_km[1] / 111.0, shift_km[0] / (111.0 * 0.868)
    hosts, bases = [], []
    for n, o in enumerate(county.organisations()):
        if o.lat is None or o.lon is None:
            continue
        place = Place(offset + n, o.name, o.lat + dlat, o.lon + dlon)
        if o.kind in (OrgKind.TOWNSHIP_CENTRE, OrgKind.COMMUNITY_CENTRE):
            hosts.append(place)
        elif o.level == OrgLevel.SECONDARY and o.kind in (OrgKind.GENERAL_HOSPITAL, OrgKind.TCM_HOSPITAL,
                                                          OrgKind.MATERNAL_CHILD):
            bases.append(place)
    return hosts, bases


def make_problem(hosts: list[Place], bases: list[list[Place]], *, experts_per_county: int, rng: random.Random,
                 time_limit: float, workers: int = 2) -> Problem:
    """Demand: each host sends up ~1/3 of the specialties, lognormal patients a month (median ≈ 6).
    Supply: each county's experts, every specialty at least once, 1-3 weekdays, 2-6 sessions, 10-25 places,
    60-120 min furthest travel, a few dates away."""
    demand: dict[tuple[int, int], int] = {}
    for h in hosts:
        for s in range(SPECIALTIES):
            if rng.random() < 0.35:
                demand[(h.key, s)] = max(1, round(rng.lognormvariate(1.8, 0.7)))
    days = [MONTH + timedelta(days=n) for n in range(31)]
    experts: list[ExpertSupply] = []
    key = 0
    for county_bases in bases:
        specialties = list(range(SPECIALTIES)) + [rng.randrange(SPECIALTIES) for _ in
                                                  range(experts_per_county - SPECIALTIES)]
        for s in specialties:
            key += 1
            base = rng.choice(county_bases)
            weekdays = set(rng.sample(range(5), rng.randint(1, 3)))
            away = set(rng.sample(days, rng.randint(0, 3)))
            limit = rng.choice((60, 75, 90, 120))
            travel = {h.key: round(minutes(base, h), 1) for h in hosts}
            experts.append(ExpertSupply(
                key=key, specialty=s, capacity=rng.choice((10, 15, 20, 25)), max_sessions=rng.randint(2, 6),
                days=tuple(d for d in days if d.weekday() in weekdays and d not in away),
                travel={h: m for h, m in travel.items() if m <= limit}))
    return Problem(experts=experts, demand=demand, per_host_day=2, time_limit=time_limit, workers=workers, seed=1)


def check(problem: Problem, solution: Solution) -> list[str]:
    """Every rule the roster promises, re-checked on the answer (the bench fails loudly if one breaks)."""
    by_key = {e.key: e for e in problem.experts}
    wrong = []
    per_expert: dict[int, int] = defaultdict(int)
    per_day: set[tuple[int, date]] = set()
    per_host_day: dict[tuple[int, date], int] = defaultdict(int)
    for a in solution.assignments:
        e = by_key[a.expert]
        per_expert[a.expert] += 1
        if (a.expert, a.day) in per_day:
            wrong.append(f"expert {a.expert} twice on {a.day}")
        per_day.add((a.expert, a.day))
        per_host_day[(a.host, a.day)] += 1
        if a.day not in e.days:
            wrong.append(f"expert {a.expert} not free on {a.day}")
        if a.host not in e.travel or a.specialty != e.specialty:
            wrong.append(f"expert {a.expert} cannot serve host {a.host}")
    wrong += [f"expert {k} over their sessions" for k, n in per_expert.items() if n > by_key[k].max_sessions]
    wrong += [f"host {h} full on {d}" for (h, d), n in per_host_day.items() if n > problem.per_host_day]
    wrong += [f"cell {c} covered beyond demand" for c, n in solution.covered.items() if n > problem.demand.get(c, 0)]
    return wrong


def study(title: str, problem: Problem) -> bool:
    total = sum(problem.demand.values())
    hosts = len({h for h, _ in problem.demand})
    t0 = time.perf_counter()
    base = greedy(problem)
    t_greedy = time.perf_counter() - t0
    t0 = time.perf_counter()
    best = solve(problem, hint=base)
    t_solve = time.perf_counter() - t0
    from healthrelay.outreach.roster import candidates

    n_cand = len(candidates(problem))
    print(f"\n{title}")
    print(f"  experts {len(problem.experts)}, hosts with demand {hosts}, (host, specialty) cells "
          f"{len(problem.demand)}, demand {total} patients/month, candidate (expert, host, day) {n_cand}")
    print(f"  {'method':<10} {'time (s)':>9} {'sessions':>9} {'covered':>8} {'share':>7} {'travel (h)':>11}  status")
    for name, sol, secs in (("greedy", base, t_greedy), (best.solver, best, t_solve)):
        print(f"  {name:<10} {secs:>9.2f} {len(sol.assignments):>9} {sol.total_covered:>8} "
              f"{sol.total_covered / total:>7.1%} {sol.travel_total / 60:>11.1f}  {sol.status}")
    gap = best.total_covered - base.total_covered
    bound = f"; CP-SAT bound {best.bound:.0f}" if best.bound is not None else ""
    print(f"  CP-SAT covers {gap:+d} patients ({gap / max(1, base.total_covered):+.1%}) versus greedy{bound}")
    problems = check(problem, best) + check(problem, base)
    for p in problems[:10]:
        print(f"  CONSTRAINT BROKEN: {p}")
    return not problems


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="demo county only, 2 s limit")
    parser.add_argument("--time-limit", type=float, default=10.0, help="CP-SAT limit per solve (s)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--workers", type=int, default=2, help="CP-SAT workers (the product uses 2)")
    args = parser.parse_args()
    limit = 2.0 if args.smoke else args.time_limit
    ok = True

    rng = random.Random(args.seed)
    hosts, bases = demo_places()
    problem = make_problem(hosts, [bases], experts_per_county=31, rng=rng, time_limit=limit,
                           workers=args.workers)
    ok &= study(f"demo county (青溪县): {len(hosts)} hosts, 31 studio experts, {MONTH:%Y-%m}, limit {limit:g} s, "
                f"{args.workers} workers", problem)
    if not args.smoke:
        rng = random.Random(args.seed)
        all_hosts: list[Place] = []
        all_bases: list[list[Place]] = []
        for i in range(10):
            h, b = demo_places((60.0 * (i % 5), 50.0 * (i // 5)), offset=10_000 * (i + 1))
            all_hosts += h
            all_bases.append(b)
        problem = make_problem(all_hosts, all_bases, experts_per_county=31, rng=rng, time_limit=limit,
                           workers=args.workers)
        ok &= study(f"10x region (10 counties, 2 x 5): {len(all_hosts)} hosts, {len(problem.experts)} experts, "
                    f"limit {limit:g} s, {args.workers} workers", problem)
    if not ok:
        sys.exit(1)


if __name__ == "__main__":
    main()
