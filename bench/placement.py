"""Placement study figures: run time and covered share, optimal (CP-SAT) vs greedy.

1. The demo county (青溪县): its generated roads, today's stations, villages weighted by relative
   population (or, with --database-url of a built demo, last year's calls): k = today's number of
   stations placed freely, and k + 2 keeping today's stations.
2. A region ten times the county (2 x 5 copies of it side by side, their own roads and stations).

    .venv/bin/python bench/placement.py            # full
    .venv/bin/python bench/placement.py --smoke    # small and quick (CI)
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Sequence

from healthrelay.demo import county
from healthrelay.directory.models import Capability, OrgKind, OrgLevel
from healthrelay.emergency.coverage import Site, reach, summarise, travel_matrix
from healthrelay.emergency.placement import candidate_pool, greedy_covering, maximal_covering
from healthrelay.geo.roadgen import Place, county_roads
from healthrelay.geo.service import RoadNetwork

STATION_KINDS = (OrgKind.EMERGENCY_STATION, OrgKind.EMERGENCY_SUBSTATION)
CANDIDATE_KINDS = (*STATION_KINDS, OrgKind.TOWNSHIP_CENTRE, OrgKind.COMMUNITY_CENTRE, OrgKind.GENERAL_HOSPITAL,
                   OrgKind.TCM_HOSPITAL, OrgKind.MATERNAL_CHILD)


def demo_county(shift_km: tuple[float, float] = (0.0, 0.0), tag: str = "") -> tuple[
        list[Place], list[Site], list[Site], list[tuple[Site, float]]]:
    """Places, stations, candidate sites and weighted villages of the demo county, optionally shifted."""
    dlat, dlon = shift_km[1] / 111.0, shift_km[0] / (111.0 * 0.868)
    geo = county.geography()
    regional = {county.township_area_code(t) for t in county.TOWNSHIPS if t.regional}
    kinds = {"county": "seat", "township": "town", "village": "village"}
    places = [Place(key=f"{tag}{a.code}", lat=a.lat + dlat, lon=a.lon + dlon, kind=kinds[a.level],  # type: ignore[arg-type]
                    major=a.code in regional) for a in geo.areas]
    orgs = [o for o in county.organisations() if o.lat is not None and o.level not in (OrgLevel.PROVINCIAL,
                                                                                      OrgLevel.TERTIARY)]
    stations = [Site(f"{tag}{o.code}", o.name, o.lat + dlat, o.lon + dlon) for o in orgs
                if o.kind in STATION_KINDS and Capability.AMBULANCE in o.capabilities]
    candidates = [Site(f"{tag}{o.code}", o.name, o.lat + dlat, o.lon + dlon) for o in orgs
                  if o.kind in CANDIDATE_KINDS]
    area_at = {a.code: a for a in geo.areas}
    villages = [(Site(f"{tag}{v.code}", v.name, area_at[v.code].lat + dlat, area_at[v.code].lon + dlon,
                      urban=v.urban), v.weight) for v in geo.villages]
    return places, stations, candidates, villages


def study(label: str, network: RoadNetwork, stations: Sequence[Site], candidates: Sequence[Site],
          demand: Sequence[tuple[Site, float]], *, time_limit_s: float, repeats: int) -> None:
    sites = candidate_pool(stations, candidates)
    t0 = time.perf_counter()
    minutes = travel_matrix(network, sites, [d for d, _ in demand])
    matrix_s = time.perf_counter() - t0
    today = summarise(reach(network, stations, [d for d, _ in demand]))
    weights = {d.key: w for d, w in demand}
    reaches = reach(network, stations, [d for d, _ in demand])
    today_share = sum(weights[r.key] for r in reaches if r.covered) / sum(weights.values())
    print(f"\n== {label}: {network.node_count:,} road nodes, {network.edge_count:,} edges; {len(stations)} stations, "
          f"{len(sites)} candidate sites, {len(demand)} demand points")
    print(f"   travel-time matrix {len(sites)} x {len(demand)}: {matrix_s * 1000:.0f} ms")
    print(f"   today: {today.covered}/{today.total} villages in time "
          f"(urban {today.urban_covered}/{today.urban_total}, rural {today.rural_covered}/{today.rural_total}); "
          f"weighted share {today_share:.1%}")
    n = len(stations)
    for k, keep in ((n, False), (n + 2, True)):
        fixed = [s.key for s in stations] if keep else []
        args = {"candidates": sites, "demand": demand, "k": k, "minutes": minutes, "fixed": fixed}
        opt_times, greedy_times = [], []
        opt = greedy = None
        for _ in range(repeats):
            opt = maximal_covering(**args, time_limit_s=time_limit_s)
            opt_times.append(opt.wall_time_s)
            greedy = greedy_covering(**args)
            greedy_times.append(greedy.wall_time_s)
        assert opt is not None and greedy is not None
        moved = len(set(opt.chosen) - {s.key for s in stations})
        print(f"   k={k:3d} {'keep today' if keep else 'free      '}: optimal {opt.covered_share:6.1%} "
              f"({opt.status}, median {statistics.median(opt_times):.2f} s, bound {opt.upper_bound_share:.1%}, "
              f"{moved} new sites) | greedy {greedy.covered_share:6.1%} "
              f"(median {statistics.median(greedy_times) * 1000:.0f} ms)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="demo county only, one repeat, short limits")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--time-limit", type=float, default=30.0, help="CP-SAT limit per solve (s)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--database-url", help="use a built demo database (roads, directory, last year's calls)")
    args = parser.parse_args()
    repeats = 1 if args.smoke else args.repeats
    limit = 5.0 if args.smoke else args.time_limit

    if args.database_url:
        from sqlalchemy import create_engine, select
        from sqlalchemy.orm import Session

        from healthrelay.directory.models import Alliance
        from healthrelay.emergency.coverage import call_demand, county_sites
        from healthrelay.geo.service import network_for

        with Session(create_engine(args.database_url)) as db:
            alliance_id = db.scalar(select(Alliance.id).where(Alliance.code == county.ALLIANCE_CODE))
            sites = county_sites(db, alliance_id=alliance_id)
            demand = call_demand(db, sites.villages)
            net = network_for(db)
        print(f"demand basis: {demand.basis} ({demand.calls} calls)")
        study("demo county (database)", net, sites.stations, sites.candidates, demand.points,
              time_limit_s=limit, repeats=repeats)
    else:
        t0 = time.perf_counter()
        places, stations, candidates, villages = demo_county()
        nodes, edges = county_roads(places, seed=args.seed)
        net = RoadNetwork.from_records(nodes, edges)
        print(f"demo county roads generated in {time.perf_counter() - t0:.2f} s")
        study("demo county (villages weighted by population)", net, stations, candidates, villages,
              time_limit_s=limit, repeats=repeats)
    if args.smoke:
        return

    t0 = time.perf_counter()
    all_places: list[Place] = []
    all_stations: list[Site] = []
    all_candidates: list[Site] = []
    all_villages: list[tuple[Site, float]] = []
    for i in range(10):
        shift = (60.0 * (i % 5), 50.0 * (i // 5))
        p, s, c, v = demo_county(shift, tag=f"R{i}-")
        all_places += p
        all_stations += s
        all_candidates += c
        all_villages += v
    nodes, edges = county_roads(all_places, seed=args.seed)
    net = RoadNetwork.from_records(nodes, edges)
    print(f"\n10x region roads generated in {time.perf_counter() - t0:.1f} s")
    study("10x region (10 counties, 2 x 5)", net, all_stations, all_candidates, all_villages,
          time_limit_s=limit, repeats=1)


if __name__ == "__main__":
    main()
