"""1030 coverage on a tiny constructed county whose travel times are known by hand (tests/geo/conftest.py)."""

from __future__ import annotations

import numpy as np
import pytest
from sqlalchemy.orm import Session

from healthrelay.emergency.coverage import Site, reach, summarise, travel_matrix
from healthrelay.geo.service import network_for, save_network
from tests.geo.conftest import A, B, C, D, F, tiny_edges, tiny_nodes


def _site(key: str, point: tuple[float, float], *, urban: bool = False) -> Site:
    return Site(key=key, name=f"{key}村", lat=point[0], lon=point[1], urban=urban)


@pytest.fixture
def tiny(db: Session) -> None:
    save_network(db, nodes=tiny_nodes(), edges=tiny_edges())
    db.commit()


VILLAGES = [_site("B", B), _site("C", C, urban=True), _site("F", F), _site("D", D)]


def test_one_station_reaches_the_countryside_but_not_the_town_in_ten_minutes(db: Session, tiny: None) -> None:
    result = {r.key: r for r in reach(network_for(db), [_site("stA", A)], VILLAGES)}
    assert result["B"].best_minutes == pytest.approx(6.0) and result["B"].covered and result["B"].limit_minutes == 30
    # C is in town: 12 minutes is over the 10-minute limit.
    assert result["C"].best_minutes == pytest.approx(12.0) and not result["C"].covered
    assert result["C"].limit_minutes == 10
    assert result["F"].best_minutes == pytest.approx(14.0) and result["F"].covered
    # D is on an island: no road, no station, not covered.
    assert result["D"].best_minutes is None and result["D"].best_station is None and not result["D"].covered
    s = summarise(list(result.values()))
    assert (s.urban_total, s.urban_covered, s.rural_total, s.rural_covered) == (1, 0, 3, 2)
    assert s.share == pytest.approx(0.5)


def test_a_second_station_in_town_fixes_the_town_and_is_named_as_best(db: Session, tiny: None) -> None:
    result = {r.key: r for r in reach(network_for(db), [_site("stA", A), _site("stC", C)], VILLAGES)}
    assert result["C"].covered and result["C"].best_station == "stC" and result["C"].best_minutes == 0
    assert result["B"].best_minutes == pytest.approx(6.0)  # 6 min from either station
    assert result["F"].best_minutes == pytest.approx(2.0)  # C → F on the one-way street
    # Stricter limits are honoured.
    strict = {r.key: r for r in reach(network_for(db), [_site("stA", A)], VILLAGES, rural_minutes=5)}
    assert not strict["B"].covered


def test_no_stations_means_nothing_is_covered_and_the_matrix_marks_unreachable(db: Session, tiny: None) -> None:
    assert not any(r.covered for r in reach(network_for(db), [], VILLAGES))
    assert reach(network_for(db), [_site("stA", A)], []) == []
    m = travel_matrix(network_for(db), [_site("stA", A), _site("stF", F)], VILLAGES)
    assert m.shape == (2, 4)
    assert m[0, :3] == pytest.approx([6.0, 12.0, 14.0])
    assert np.isinf(m[1, :]).tolist() == [True, True, False, True]  # from F only F itself (0 min)
