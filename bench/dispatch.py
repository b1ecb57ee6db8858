"""Dispatch recommendation latency: 100 ambulances on a road graph of 10,000+ nodes (target < 100 ms).

    .venv/bin/python bench/dispatch.py            # 10,000-node region, 100 ambulances, 200 calls
    .venv/bin/python bench/dispatch.py --smoke    # 2,000 nodes, 30 ambulances, 30 calls
    ... --nodes 40000 --ambulances 200 --calls 500

Steps: a temporary SQLite database (migrated with the real migrations), a `synthetic_region` network saved
through `geo.service.save_network`, emergency stations and hospitals (PCI, thrombolysis, CT) placed on it,
N ambulances at random points, then `emergency.dispatch.recommend()` timed for random calls of every
category (the whole recommendation: SQL for the call, the available ambulances and the candidate hospitals,
one shortest-path run to the scene for all ambulances, one from the scene to the hospitals, the reasons).
The geo part alone (`RoadNetwork.minutes_to` for the same points) is timed separately, and so is the first
load of the network into memory (once per process, then cached until the road tables change).
Prints median, p95 and p99 in milliseconds.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q
    lo, hi = int(pos), min(int(pos) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def summary(name: str, ms: list[float]) -> str:
    return (f"{name:<34} n={len(ms):>4}  median {statistics.median(ms):7.2f} ms  p95 {percentile(ms, 0.95):7.2f} ms"
            f"  p99 {percentile(ms, 0.99):7.2f} ms  max {max(ms):7.2f} ms")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--nodes", type=int, default=10_000)
    parser.add_argument("--ambulances", type=int, default=100)
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--seed", type=int, default=20261204)
    args = parser.parse_args()
    if args.smoke:
        args.nodes, args.ambulances, args.calls = 2000, 30, 30
    tmp = Path(tempfile.mkdtemp(prefix="hr-dispatch-bench-"))
    url = f"sqlite:///{tmp / 'bench.sqlite3'}"
    os.environ["HEALTHRELAY_DATA_DIR"] = str(tmp)
    os.environ["HEALTHRELAY_DATABASE_URL"] = url
    os.environ["HEALTHRELAY_FAST_PASSWORD_HASH"] = "1"

    from sqlalchemy import func, select

    import healthrelay.models  # noqa: F401
    from healthrelay.core.db import get_sessionmaker, utcnow
    from healthrelay.core.migrate import upgrade
    from healthrelay.directory.models import (
        Capability,
        Organisation,
        OrganisationCapability,
        OrgKind,
        OrgLevel,
    )
    from healthrelay.emergency import dispatch
    from healthrelay.emergency.models import Ambulance, AmbulanceKind, AmbulanceState, CallCategory, EmergencyCall
    from healthrelay.geo.models import RoadNode
    from healthrelay.geo.roadgen import synthetic_region
    from healthrelay.geo.service import forget_cached_networks, network_for, save_network

    rng = random.Random(args.seed)
    began = time.perf_counter()
    upgrade(url)
    db = get_sessionmaker()()
    nodes, edges = synthetic_region(n_nodes=args.nodes, seed=args.seed)
    save_network(db, nodes=nodes, edges=edges)
    db.commit()
    points = [(lat, lon) for lat, lon in db.execute(select(RoadNode.latitude, RoadNode.longitude)).all()]
    print(f"road network: {len(nodes):,} nodes, {len(edges):,} edges (setup {time.perf_counter() - began:.1f}s)")

    def place(name: str, kind: OrgKind, level: OrgLevel, caps: tuple[Capability, ...]) -> Organisation:
        lat, lon = rng.choice(points)
        org = Organisation(code=f"B{rng.randrange(10**9)}", name=name, kind=kind, level=level, latitude=lat,
                           longitude=lon)
        db.add(org)
        db.flush()
        for cap in caps:
            db.add(OrganisationCapability(organisation_id=org.id, capability=cap))
        return org

    stations = [place(f"急救站{i}", OrgKind.EMERGENCY_STATION, OrgLevel.SECONDARY, (Capability.AMBULANCE,))
                for i in range(max(2, args.ambulances // 12))]
    for i in range(3):
        place(f"县医院{i}", OrgKind.GENERAL_HOSPITAL, OrgLevel.SECONDARY,
              (Capability.PCI, Capability.THROMBOLYSIS, Capability.CT))
    for i in range(8):
        place(f"中心卫生院{i}", OrgKind.TOWNSHIP_CENTRE, OrgLevel.TOWNSHIP, (Capability.THROMBOLYSIS,))
    place("妇幼保健院", OrgKind.MATERNAL_CHILD, OrgLevel.SECONDARY, ())
    kinds = (AmbulanceKind.EMERGENCY, AmbulanceKind.TRANSPORT, AmbulanceKind.MOBILE_ICU)
    now = utcnow()
    for i in range(args.ambulances):
        lat, lon = rng.choice(points)
        db.add(Ambulance(code=f"A{i:03d}", kind=rng.choice(kinds), station_organisation_id=rng.choice(stations).id,
                         state=AmbulanceState.AVAILABLE, latitude=lat, longitude=lon, state_changed_at=now,
                         has_ecg_transmitter=rng.random() < 0.3))
    call_ids = []
    categories = list(CallCategory)
    for i in range(args.calls):
        lat, lon = rng.choice(points)
        call = EmergencyCall(number=f"JJB-{i:05d}", category=rng.choice(categories), priority=rng.choice((1, 2, 3)),
                             complaint="bench", latitude=lat + rng.uniform(-0.002, 0.002),
                             longitude=lon + rng.uniform(-0.002, 0.002), urban=False, received_at=now,
                             answered_at=now, onset_at=now - timedelta(minutes=rng.uniform(20, 300)),
                             recommendation={})
        db.add(call)
        db.flush()
        call_ids.append(call.id)
    db.commit()
    available = db.execute(select(func.count()).where(Ambulance.state == "available")).scalar_one()

    forget_cached_networks()
    t = time.perf_counter()
    network = network_for(db)
    load_ms = (time.perf_counter() - t) * 1000
    print(f"network load into memory (first call only): {load_ms:.0f} ms; {available} available ambulances; "
          f"{len(call_ids)} calls")

    dispatch.recommend(db, call_id=call_ids[0])  # warm caches (imports, the network stamp query)
    total_ms, geo_in_ms, geo_ms = [], [], []
    sources = [(a.latitude, a.longitude) for a in db.execute(select(Ambulance)).scalars()]
    for call_id in call_ids:
        t = time.perf_counter()
        rec = dispatch.recommend(db, call_id=call_id)
        total_ms.append((time.perf_counter() - t) * 1000)
        geo_in_ms.append(rec.geo_ms)
        assert rec.estimate == "road_network" and rec.best_ambulance_id is not None
        call = db.get(EmergencyCall, call_id)
        assert call is not None
        t = time.perf_counter()
        network.minutes_to((call.latitude, call.longitude), sources)
        geo_ms.append((time.perf_counter() - t) * 1000)
        db.rollback()  # read-only; keep the session's snapshot fresh like a request would
    print(summary("recommend() end to end", total_ms))
    print(summary("  of which minutes_to (in recommend)", geo_in_ms))
    print(summary("minutes_to alone (100 amb -> scene)", geo_ms))
    target = 100.0
    p95 = percentile(total_ms, 0.95)
    print(f"target p95 < {target:.0f} ms: {'met' if p95 < target else 'MISSED'} ({p95:.1f} ms)")
    db.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
