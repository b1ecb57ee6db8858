"""Maximal covering: the exact optimum on instances where it is known, beating greedy on a trap; bad requests
refused with the reason."""

from __future__ import annotations

import itertools
import random

import numpy as np
import pytest

from healthrelay.core.errors import InvalidInput
from healthrelay.emergency.coverage import Site
from healthrelay.emergency.placement import greedy_covering, maximal_covering

NEAR, FAR = 5.0, 100.0


def _sites(prefix: str, n: int, *, urban: bool = False) -> list[Site]:
    return [Site(key=f"{prefix}{i}", name=f"{prefix}{i}", lat=30.0, lon=110.0, urban=urban) for i in range(n)]


def _trap() -> tuple[list[Site], list[tuple[Site, float]], np.ndarray]:
    """C0 covers d0-d3, C1 covers d0,d1,d4, C2 covers d2,d3,d5: greedy takes C0 first and is stuck at 5 of 6."""
    candidates = _sites("C", 3)
    demand = [(d, 1.0) for d in _sites("d", 6)]
    covers = {0: (0, 1, 2, 3), 1: (0, 1, 4), 2: (2, 3, 5)}
    minutes = np.full((3, 6), FAR)
    for j, ds in covers.items():
        minutes[j, list(ds)] = NEAR
    return candidates, demand, minutes


def test_optimum_beats_greedy_on_the_trap_instance() -> None:
    candidates, demand, minutes = _trap()
    best = maximal_covering(candidates=candidates, demand=demand, k=2, minutes=minutes)
    assert best.status == "optimal" and best.method == "scip"
    assert best.chosen == ["C1", "C2"] and best.covered_share == pytest.approx(1.0)
    assert best.upper_bound_share == pytest.approx(1.0)
    assert all(d.covered for d in best.per_demand)
    greedy = greedy_covering(candidates=candidates, demand=demand, k=2, minutes=minutes)
    assert "C0" in greedy.chosen
    assert greedy.covered_share == pytest.approx(5 / 6)


def test_kept_stations_are_kept_even_when_that_costs_coverage() -> None:
    candidates, demand, minutes = _trap()
    kept = maximal_covering(candidates=candidates, demand=demand, k=2, minutes=minutes, fixed=["C0"])
    assert "C0" in kept.chosen and len(kept.chosen) == 2
    assert kept.covered_weight == pytest.approx(5.0)


def test_weights_and_urban_limits_decide() -> None:
    # One station: A reaches the heavy rural village in 25 min, B reaches two light urban ones in 8 min.
    candidates = _sites("S", 2)
    heavy = Site("heavy", "大村", 30, 110)
    towns = [Site("t1", "街1", 30, 110, urban=True), Site("t2", "街2", 30, 110, urban=True)]
    minutes = np.array([[25.0, 12.0, 12.0], [40.0, 8.0, 8.0]])
    r = maximal_covering(candidates=candidates, demand=[(heavy, 5.0), (towns[0], 2.0), (towns[1], 2.0)], k=1,
                         minutes=minutes)
    assert r.chosen == ["S0"] and r.covered_weight == pytest.approx(5.0)
    [h, t1, _] = r.per_demand
    assert h.covered and h.by == "S0" and h.best_minutes == 25.0
    assert not t1.covered and t1.best_minutes == 12.0  # urban: 12 > 10
    r = maximal_covering(candidates=candidates, demand=[(heavy, 3.0), (towns[0], 2.0), (towns[1], 2.0)], k=1,
                         minutes=minutes)
    assert r.chosen == ["S1"] and r.covered_share == pytest.approx(4 / 7)


def test_matches_brute_force_on_random_instances() -> None:
    rng = random.Random(11)
    for _ in range(5):
        n_cand, n_dem, k = 10, 25, 3
        minutes = np.array([[rng.uniform(0, 60) for _ in range(n_dem)] for _ in range(n_cand)])
        minutes[rng.randrange(n_cand), rng.randrange(n_dem)] = np.inf  # an unreachable pair
        candidates = _sites("C", n_cand)
        demand = [(d, rng.choice((1.0, 2.0, 3.5))) for d in _sites("d", n_dem)]
        weights = np.array([w for _, w in demand])
        covers = minutes <= 30
        brute = max(weights[covers[list(c)].any(axis=0)].sum() for c in itertools.combinations(range(n_cand), k))
        r = maximal_covering(candidates=candidates, demand=demand, k=k, minutes=minutes)
        assert r.status == "optimal"
        assert r.covered_weight == pytest.approx(brute)
        g = greedy_covering(candidates=candidates, demand=demand, k=k, minutes=minutes)
        assert g.covered_weight <= r.covered_weight + 1e-9 and len(g.chosen) == k


def test_demand_no_site_reaches_stays_uncovered() -> None:
    candidates = _sites("C", 2)
    demand = [(Site("lost", "孤村", 30, 110), 10.0), (Site("ok", "近村", 30, 110), 1.0)]
    minutes = np.array([[np.inf, 3.0], [np.nan, 50.0]])
    r = maximal_covering(candidates=candidates, demand=demand, k=1, minutes=minutes)
    assert r.chosen == ["C0"] and r.covered_share == pytest.approx(1 / 11)
    assert r.per_demand[0].best_minutes is None and r.per_demand[0].by is None


@pytest.mark.parametrize(("changes", "field"), [
    ({"k": 0}, "k"),
    ({"k": -1}, "k"),
    ({"k": 4}, "k"),  # only 3 candidates
    ({"k": 1, "fixed": ["C1", "C2"]}, "k"),
    ({"fixed": ["C9"]}, "fixed"),
    ({"candidates": []}, "candidates"),
    ({"demand": []}, "demand"),
    ({"minutes": np.zeros((2, 6))}, "minutes"),
    ({"limit_rural": 0}, "limit_rural"),
    ({"time_limit_s": 0}, "time_limit_s"),
])
def test_impossible_requests_are_refused_with_the_reason(changes: dict, field: str) -> None:
    candidates, demand, minutes = _trap()
    args = {"candidates": candidates, "demand": demand, "k": 2, "minutes": minutes, **changes}
    with pytest.raises(InvalidInput) as err:
        maximal_covering(**args)
    assert field in [e["field"] for e in err.value.field_errors]


def test_negative_weights_are_refused() -> None:
    candidates, demand, minutes = _trap()
    demand[0] = (demand[0][0], -1.0)
    with pytest.raises(InvalidInput):
        greedy_covering(candidates=candidates, demand=demand, k=2, minutes=minutes)
