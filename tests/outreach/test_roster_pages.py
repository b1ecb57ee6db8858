"""The roster pages as the county's planner uses them, and what a clinician gets."""

from __future__ import annotations

import re
from datetime import timedelta

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from healthrelay.core.db import local_today
from healthrelay.outreach import roster
from healthrelay.outreach.models import OutreachSession, RosterPlan
from tests import factories as f
from tests.outreach.test_roster import County, county, next_month  # noqa: F401 - the fixture

CSRF_RE = re.compile(r'name="csrf_token" value="([^"]+)"')


def login(client, username: str) -> str:  # noqa: ANN001
    """Sign in through the login form; returns the CSRF token the roster forms carry."""
    client.cookies.clear()
    token = CSRF_RE.search(client.get("/login").text).group(1)
    response = client.post("/login", data={"username": username, "password": f.PASSWORD, "csrf_token": token,
                                           "next": "/"}, follow_redirects=False)
    assert response.status_code == 303, response.text
    page = client.get("/outreach/roster")
    found = CSRF_RE.search(page.text)
    return found.group(1) if found else ""


def test_planner_proposes_adjusts_and_publishes(client, db: Session, county: County) -> None:  # noqa: ANN001, F811
    c = county
    csrf = login(client, "planner")
    listing = client.get("/outreach/roster")
    assert listing.status_code == 200 and "生成方案" in listing.text
    past = (roster.month_start(local_today()) - timedelta(days=1)).strftime("%Y-%m")
    bad = client.post("/outreach/roster", data={"csrf_token": csrf, "month": past, "months_back": "1",
                                                "time_limit": "5"})
    assert bad.status_code == 422 and "已经过去" in bad.text
    made = client.post("/outreach/roster", data={"csrf_token": csrf, "month": next_month().strftime("%Y-%m"),
                                                 "months_back": "1", "time_limit": "5"}, follow_redirects=False)
    assert made.status_code == 303, made.text
    url = made.headers["location"].split("?")[0]
    page = client.get(url)
    assert page.status_code == 200
    assert "河口乡卫生院" in page.text and "id=\"ro-chart\"" in page.text
    assert re.search(r'id="sum-covered">45<', page.text) and re.search(r'id="sum-greedy">30<', page.text)
    assert "近 1 个月上转心血管内科 15 人" in page.text
    client.cookies.set("lang", "en")
    english = client.get(url)
    assert english.status_code == 200 and "referred 15 Cardiology patients up" in english.text
    client.cookies.set("lang", "zh")
    plan = db.scalars(select(RosterPlan)).one()
    items = roster.items_of(db, plan.id)
    removed = client.post(f"{url}/items/{items[0].id}/remove", data={"csrf_token": csrf}, follow_redirects=False)
    assert removed.status_code == 303
    assert len(roster.items_of(db, plan.id)) == 3
    refused = client.post(f"{url}/items/{items[1].id}/move", data={
        "csrf_token": csrf, "session_date": (next_month() - timedelta(days=1)).isoformat(),
        "host_organisation_id": "", "start_time": ""})
    assert refused.status_code == 422 and "须在" in refused.text
    published = client.post(f"{url}/publish", data={"csrf_token": csrf}, follow_redirects=True)
    assert published.status_code == 200 and "方案已发布" in published.text
    assert db.scalar(select(func.count()).select_from(OutreachSession).where(
        OutreachSession.roster_id == plan.id)) == 3
    again = client.post(f"{url}/publish", data={"csrf_token": csrf})
    assert again.status_code == 409 and "is already published" in again.text
    assert c.w.planner.id == plan.created_by_user_id


def test_clinician_is_refused(client, db: Session, county: County) -> None:  # noqa: ANN001, F811
    plan = roster.propose(db, by=county.w.planner, month=next_month(), months_back=1, time_limit=5)
    db.commit()
    login(client, "town_doc")
    assert client.get("/outreach/roster").status_code == 403
    assert client.get(f"/outreach/roster/{plan.id}").status_code == 403
    assert client.get("/outreach/roster/99999999999").status_code == 422
