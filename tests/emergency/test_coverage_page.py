"""The coverage page as a dispatcher or the health bureau sees it, and the placement study run from it."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from sqlalchemy.orm import Session

from healthrelay.core.db import utcnow
from healthrelay.emergency.coverage import call_demand, county_sites
from healthrelay.emergency.models import CallCategory, EmergencyCall
from tests import factories as f
from tests.emergency.coverage_world import V1, V2, CoverageWorld, build


@pytest.fixture
def world(db: Session) -> CoverageWorld:
    return build(db)


def _login(client, username: str) -> None:  # noqa: ANN001
    client.cookies.clear()
    token = re.search(r'name="csrf_token" value="([^"]+)"', client.get("/login").text).group(1)
    r = client.post("/login", data={"username": username, "password": f.PASSWORD, "csrf_token": token, "next": "/"},
                    follow_redirects=False)
    assert r.status_code == 303


def _table(html: str, table_id: str) -> str:
    match = re.search(rf'id="{table_id}".*?</table>', html, re.S)
    assert match, f"no table {table_id}"
    return match.group(0)


def test_dispatcher_sees_which_villages_are_out_of_reach(client, world: CoverageWorld) -> None:  # noqa: ANN001
    _login(client, "cov_disp")
    r = client.get("/emergency/coverage")
    assert r.status_code == 200, r.text
    uncovered = _table(r.text, "uncovered")
    assert "高山村" in uncovered and "远山乡" in uncovered and "75.8" in uncovered
    assert "柳湾村" not in uncovered and "南街社区" not in uncovered
    assert '<div class="big">1 / 1</div>' in r.text  # the urban community within 10 minutes
    assert '<div class="big">1 / 2</div>' in r.text  # one of two villages within 30
    assert "66.7%" in r.text


def test_the_study_suggests_the_far_health_centre_and_shows_the_gain(client, world: CoverageWorld) -> None:  # noqa: ANN001
    _login(client, "cov_bureau")
    r = client.get("/emergency/coverage", params={"k": 2, "keep": 1})
    assert r.status_code == 200, r.text
    sites = _table(r.text, "suggested-sites")
    assert "远山乡卫生院" in sites and "测试县急救站" in sites
    assert re.search(r'id="share-today">66\.7%', r.text) and re.search(r'id="share-optimal">100\.0%', r.text)
    assert "每个村（社区）计 1" in r.text  # no calls yet: villages weigh 1 each
    assert re.search(r'id="solver-status">最优', r.text)


def test_last_years_calls_weigh_the_study(client, db: Session, world: CoverageWorld) -> None:  # noqa: ANN001
    now = utcnow()
    calls = [(V1, now - timedelta(days=30 * i)) for i in range(1, 6)]  # five calls near 柳湾村 this year
    calls += [(V2, now - timedelta(days=20)), (V2, now - timedelta(days=500)), (V2, now - timedelta(days=600))]
    for n, (point, when) in enumerate(calls):
        db.add(EmergencyCall(number=f"JJ-T{n}", category=CallCategory.OTHER, priority=2, latitude=point[0] + 0.001,
                             longitude=point[1], received_at=when))
    db.commit()
    demand = call_demand(db, county_sites(db, alliance_id=world.alliance.id).villages)
    assert demand.basis == "calls" and demand.calls == 6
    assert {site.name: w for site, w in demand.points} == {"柳湾村": 5.0, "高山村": 1.0}
    _login(client, "cov_disp")
    # One station, placed freely: the one that reaches the five calls (the seat or 东镇) beats 远山乡.
    r = client.get("/emergency/coverage", params={"k": 1})
    sites = _table(r.text, "suggested-sites")
    assert "远山乡卫生院" not in sites
    assert re.search(r'id="share-optimal">83\.3%', r.text)
    assert "6 次呼救" in r.text


@pytest.mark.parametrize(("params", "says"), [
    ({"k": "two"}, "k 须为整数"),
    ({"k": 0}, "站点数须在 1 到"),
    ({"k": 9}, "候选站址不足"),
    ({"k": 0, "keep": 1}, "站点数须在 1 到"),
])
def test_bad_study_requests_get_422_with_the_reason_and_the_page_still_works(
        client, world: CoverageWorld, params: dict, says: str) -> None:  # noqa: ANN001
    _login(client, "cov_disp")
    r = client.get("/emergency/coverage", params=params)
    assert r.status_code == 422
    assert says in r.text
    assert 'id="uncovered"' in r.text and 'id="suggested-sites"' not in r.text  # today's picture stays


def test_only_planners_see_the_page(client, world: CoverageWorld) -> None:  # noqa: ANN001
    _login(client, "cov_doc")
    assert client.get("/emergency/coverage").status_code == 403
    client.cookies.clear()
    r = client.get("/emergency/coverage", follow_redirects=False)
    assert r.status_code in (303, 401)


def test_without_roads_the_page_says_so(client, db: Session, world: CoverageWorld) -> None:  # noqa: ANN001
    from sqlalchemy import delete

    from healthrelay.geo.models import RoadEdge, RoadNode

    db.execute(delete(RoadEdge))
    db.execute(delete(RoadNode))
    db.commit()
    _login(client, "cov_disp")
    r = client.get("/emergency/coverage", params={"k": 2})
    assert r.status_code == 200
    assert "尚未录入道路网" in r.text and 'id="uncovered"' not in r.text
