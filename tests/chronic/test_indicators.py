"""Chronic disease indicators on constructed cohorts with known answers: every enrolment, reading and visit
is written directly with the models, on days counted back from a fixed "today", so each figure can be
worked out by hand; then the indicator page, its exports and who may see them."""

from __future__ import annotations

import io
import itertools
import re
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest
from openpyxl import load_workbook
from sqlalchemy import select
from sqlalchemy.orm import Session

from healthrelay.accounts.models import Role
from healthrelay.audit.models import AuditEvent
from healthrelay.chronic import indicators
from healthrelay.chronic.models import ChronicCondition, ChronicEnrolment, ChronicFollowUp, ChronicReading
from healthrelay.core.db import local_today
from healthrelay.core.errors import AccessDenied, InvalidInput
from healthrelay.directory.models import Area, AreaLevel, Organisation, Team, TeamKind, TeamMember
from healthrelay.patients.models import Patient, Sex
from tests import factories as f

SHANGHAI = ZoneInfo("Asia/Shanghai")
TODAY = date(2026, 6, 15)
_seq = itertools.count(1)


def at(day: date, hour: int = 9) -> datetime:
    """A Shanghai wall-clock time on `day`, as the aware UTC instant the database keeps."""
    return datetime.combine(day, time(hour), tzinfo=SHANGHAI).astimezone(UTC)


def ago(days: int) -> date:
    return TODAY - timedelta(days=days)


@dataclass
class County:
    county: Area
    townships: list[Area]
    villages: list[Area]  # v0, v1 in township 0; v2 in township 1
    centre: Organisation
    centre2: Organisation
    teams: list[Team]  # team 0 serves v0, v1; team 1 serves v2
    admin: object = None
    extras: dict[str, object] = field(default_factory=dict)


def area(db: Session, name: str, level: AreaLevel, parent: Area | None, lat: float = 30.0,
         lon: float = 110.0) -> Area:
    a = Area(code=f"A{next(_seq):05d}", name=name, level=level, parent_id=parent.id if parent else None,
             latitude=lat, longitude=lon)
    db.add(a)
    db.flush()
    return a


@pytest.fixture
def county(db: Session) -> County:
    c = area(db, "测试县", AreaLevel.COUNTY, None)
    t0 = area(db, "东乡", AreaLevel.TOWNSHIP, c)
    t1 = area(db, "西乡", AreaLevel.TOWNSHIP, c)
    v0 = area(db, "甲村", AreaLevel.VILLAGE, t0, 30.1, 110.1)
    v1 = area(db, "乙村", AreaLevel.VILLAGE, t0, 30.2, 110.2)
    v2 = area(db, "丙村", AreaLevel.VILLAGE, t1, 30.3, 110.3)
    centre = f.organisation(db, name="东乡卫生院", area_id=t0.id)
    centre2 = f.organisation(db, name="西乡卫生院", area_id=t1.id)
    teams = []
    for org, villages in ((centre, [v0.id, v1.id]), (centre2, [v2.id])):
        team = Team(code=f"T{next(_seq):05d}", name=f"{org.name}家庭医生团队", kind=TeamKind.FAMILY_DOCTOR,
                    organisation_id=org.id, area_ids=villages)
        db.add(team)
        db.flush()
        teams.append(team)
    db.commit()
    return County(county=c, townships=[t0, t1], villages=[v0, v1, v2], centre=centre, centre2=centre2, teams=teams)


def resident(db: Session, village: Area, *, age: int = 60, name: str | None = None, **extra: object) -> Patient:
    born = TODAY.replace(year=TODAY.year - age) - timedelta(days=30)
    p = Patient(name=name or f"居民{next(_seq)}", pinyin="ju min", pinyin_initials="jm", sex=Sex.FEMALE,
                birth_date=born, area_id=village.id, **extra)
    db.add(p)
    db.flush()
    return p


def enrol(db: Session, w: County, *, village: int = 0, condition: str = "htn", enrolled_days_ago: int = 200,
          age: int = 60, birth_date: date | None = None, team: int | None = None, **extra: object) -> ChronicEnrolment:
    v = w.villages[village]
    p = resident(db, v, age=age)
    if birth_date is not None:
        p.birth_date = birth_date
    team_index = team if team is not None else (0 if village < 2 else 1)
    enrolled = ago(enrolled_days_ago)
    team_row = w.teams[team_index]
    e = ChronicEnrolment(patient_id=p.id, condition_code=condition, organisation_id=team_row.organisation_id,
                         team_id=team_row.id, village_area_id=v.id, diagnosed_on=enrolled - timedelta(days=10),
                         enrolled_at=at(enrolled), **extra)
    db.add(e)
    db.flush()
    return e


def bp(db: Session, e: ChronicEnrolment, days_ago: int, sbp: int, dbp: int) -> None:
    db.add(ChronicReading(patient_id=e.patient_id, organisation_id=e.organisation_id, kind="bp",
                          measured_at=at(ago(days_ago)), sbp=sbp, dbp=dbp))
    db.flush()


def glucose(db: Session, e: ChronicEnrolment, days_ago: int, value: float, context: str = "fasting") -> None:
    db.add(ChronicReading(patient_id=e.patient_id, organisation_id=e.organisation_id, kind="glucose",
                          measured_at=at(ago(days_ago)), glucose_mmol=value, glucose_context=context))
    db.flush()


def visit(db: Session, e: ChronicEnrolment, days_ago: int, *, mode: str = "clinic", sbp: int | None = None,
          dbp: int | None = None, fasting: float | None = None) -> None:
    db.add(ChronicFollowUp(enrolment_id=e.id, patient_id=e.patient_id, condition_code=e.condition_code,
                           organisation_id=e.organisation_id, visit_on=ago(days_ago), mode=mode, sbp=sbp, dbp=dbp,
                           fasting_glucose=fasting, classification="controlled"))
    db.flush()


def compute(db: Session, group_by: str = "county", condition: str = "htn", as_of: date = TODAY,
            **kw: object) -> list[indicators.IndicatorRow]:
    db.commit()
    return indicators.compute(db, condition=condition, as_of=as_of, group_by=group_by, today=TODAY, **kw)


def one(db: Session, **kw: object) -> indicators.IndicatorRow:
    rows = compute(db, **kw)
    assert len(rows) == 1, rows
    return rows[0]


# --- control ------------------------------------------------------------------------------------------

def test_control_rate_four_of_nine(db: Session, county: County) -> None:
    """10 patients: 4 controlled, 3 uncontrolled, 2 without a BP in the last 90 days, 1 enrolled 30 days ago."""
    for _ in range(4):
        bp(db, enrol(db, county), 10, 128, 78)
    for _ in range(3):
        bp(db, enrol(db, county), 20, 152, 96)
    bp(db, enrol(db, county), 91, 120, 70)  # a reading 91 days old does not count
    enrol(db, county)  # nothing at all
    bp(db, enrol(db, county, enrolled_days_ago=30), 5, 120, 70)  # too new for the denominator
    row = one(db)
    assert row.managed == 10
    assert (row.control_num, row.control_den, row.uncontrolled, row.no_visit) == (4, 9, 3, 2)
    assert row.control_rate == pytest.approx(4 / 9)


def test_window_is_the_ninety_days_ending_the_day(db: Session, county: County) -> None:
    bp(db, enrol(db, county), 89, 120, 70)  # day D-89: inside
    bp(db, enrol(db, county), 90, 120, 70)  # day D-90: outside
    bp(db, enrol(db, county), 0, 120, 70)  # today counts
    row = one(db)
    assert (row.control_num, row.no_visit) == (2, 1)


def test_elderly_target_is_150_90(db: Session, county: County) -> None:
    old = enrol(db, county, birth_date=TODAY.replace(year=TODAY.year - 65))  # 65 today
    young = enrol(db, county, birth_date=TODAY.replace(year=TODAY.year - 65) + timedelta(days=1))  # 64
    bp(db, old, 3, 145, 85)
    bp(db, young, 3, 145, 85)
    row = one(db)
    assert (row.control_num, row.uncontrolled) == (1, 1)
    # and 150 is not below 150, nor 90 below 90, even for the old
    bp(db, old, 1, 150, 85)
    assert one(db).control_num == 0
    bp(db, old, 0, 140, 90)
    assert one(db).control_num == 0


def test_latest_of_readings_and_visits_decides(db: Session, county: County) -> None:
    a = enrol(db, county)
    bp(db, a, 40, 160, 100)
    visit(db, a, 10, sbp=130, dbp=80)  # the later visit: controlled
    b = enrol(db, county)
    visit(db, b, 40, sbp=130, dbp=80)
    bp(db, b, 10, 165, 100)  # the later reading: uncontrolled
    c = enrol(db, county)
    bp(db, c, 20, 130, 80)
    visit(db, c, 20, sbp=170, dbp=95)  # the same day: the reading counts
    d = enrol(db, county)
    visit(db, d, 5, mode="phone")  # a phone call without BP gives no value
    row = one(db)
    assert (row.control_num, row.uncontrolled, row.no_visit) == (2, 1, 1)


def test_a_reading_of_the_other_condition_counts_for_the_patient_not_another(db: Session, county: County) -> None:
    a = enrol(db, county)
    enrol(db, county)
    bp(db, a, 3, 120, 70)
    row = one(db)
    assert (row.control_num, row.no_visit) == (1, 1)


def test_diabetes_control_uses_fasting_glucose(db: Session, county: County) -> None:
    a = enrol(db, county, condition="t2dm")
    glucose(db, a, 5, 6.5)
    b = enrol(db, county, condition="t2dm")
    glucose(db, b, 5, 5.0, context="random")  # a random glucose does not decide control
    c = enrol(db, county, condition="t2dm")
    visit(db, c, 3, fasting=7.0)  # 7.0 is not below 7.0
    d = enrol(db, county, condition="t2dm")
    glucose(db, d, 30, 9.1)
    visit(db, d, 3, fasting=6.9)
    bp(db, enrol(db, county), 3, 120, 70)  # a hypertensive patient is not in the diabetes figures
    row = one(db, condition="t2dm")
    assert row.managed == 4
    assert (row.control_num, row.uncontrolled, row.no_visit) == (2, 1, 1)


# --- standard management, lost, overdue ------------------------------------------------------------------

def test_standard_management_needs_four_face_to_face_visits_in_a_year(db: Session, county: County) -> None:
    four = enrol(db, county, enrolled_days_ago=400)
    for d, mode in ((10, "clinic"), (100, "home"), (200, "clinic"), (300, "clinic")):
        visit(db, four, d, mode=mode)
    three = enrol(db, county, enrolled_days_ago=400)
    for d, mode in ((10, "clinic"), (100, "phone"), (200, "clinic"), (300, "home")):
        visit(db, three, d, mode=mode)
    old_visit = enrol(db, county, enrolled_days_ago=400)
    for d in (10, 100, 200, 365):  # 365 days ago is outside the year ending today
        visit(db, old_visit, d)
    new = enrol(db, county, enrolled_days_ago=200)  # not a year yet: outside the denominator
    for d in (10, 50, 100, 150):
        visit(db, new, d)
    row = one(db)
    assert (row.standard_num, row.standard_den) == (1, 3)
    assert row.standard_rate == pytest.approx(1 / 3)


def test_lost_to_follow_up(db: Session, county: County) -> None:
    enrol(db, county, enrolled_days_ago=400, last_contact_at=at(ago(370)))  # lost
    enrol(db, county, enrolled_days_ago=400)  # never seen: lost
    enrol(db, county, enrolled_days_ago=400, last_contact_at=at(ago(300)))
    enrol(db, county, enrolled_days_ago=100)  # never seen but enrolled 100 days ago: not yet
    assert one(db).lost == 2


def test_overdue_and_hidden(db: Session, county: County) -> None:
    enrol(db, county, next_visit_due=ago(1))  # overdue
    enrol(db, county, next_visit_due=ago(1), hidden_until=ago(-1))  # hidden until tomorrow
    enrol(db, county, next_visit_due=ago(1), hidden_until=ago(1))  # hidden until yesterday: overdue again
    enrol(db, county, next_visit_due=TODAY)  # due today: not overdue
    enrol(db, county, next_visit_due=ago(5), status="moved", closed_at=at(ago(2)))  # closed: not managed
    row = one(db)
    assert (row.managed, row.overdue) == (4, 2)


# --- management rate and grouping -----------------------------------------------------------------------

def test_management_rate_from_residents_and_prevalence(db: Session, county: County) -> None:
    v0 = county.villages[0]
    for _ in range(20):
        resident(db, v0, age=40)
    for _ in range(3):
        resident(db, v0, age=10)  # children
    resident(db, v0, age=70, deceased_on=ago(10))  # died before today
    survivor = resident(db, v0, age=50)
    resident(db, v0, age=50, merged_into_id=survivor.id)  # a merged duplicate is not a resident
    enrol(db, county, age=60)
    enrol(db, county, age=70)
    rows = {r.key: r for r in compute(db, group_by="village")}
    row = rows[str(v0.id)]
    # 20 + 1 survivor + the 2 enrolled adults
    assert row.adults == 23
    assert row.estimated == pytest.approx(23 * 0.279)
    assert row.management_rate == pytest.approx(2 / (23 * 0.279))
    assert rows[str(county.villages[2].id)].managed == 0  # a village nobody manages still has a row


def test_grouping_by_village_township_team(db: Session, county: County) -> None:
    v0, v1, v2 = county.villages
    bp(db, enrol(db, county, village=0), 3, 120, 70)
    bp(db, enrol(db, county, village=1), 3, 160, 70)
    bp(db, enrol(db, county, village=1), 3, 120, 70)
    bp(db, enrol(db, county, village=2), 3, 120, 70)
    enrol(db, county, village=2, team=0)  # a team-0 patient living in v2
    by_village = {r.key: r for r in compute(db, group_by="village")}
    assert [by_village[str(v.id)].managed for v in (v0, v1, v2)] == [1, 2, 2]
    assert by_village[str(v1.id)].control_num == 1
    by_township = {r.key: r for r in compute(db, group_by="township")}
    t0, t1 = county.townships
    assert (by_township[str(t0.id)].managed, by_township[str(t0.id)].control_num) == (3, 2)
    assert (by_township[str(t1.id)].managed, by_township[str(t1.id)].no_visit) == (2, 1)
    assert by_township[str(t0.id)].name == "东乡"
    by_team = {r.key: r for r in compute(db, group_by="team")}
    assert by_team[str(county.teams[0].id)].managed == 4
    assert by_team[str(county.teams[1].id)].managed == 1
    county_row = one(db)
    assert (county_row.key, county_row.managed, county_row.control_num) == ("county", 5, 3)
    # filters: one township's villages, one team
    only_t1 = compute(db, group_by="village", area_id=t1.id)
    assert [(r.key, r.managed) for r in only_t1] == [(str(v2.id), 2)]
    assert one(db, team_id=county.teams[1].id).managed == 1


def test_a_month_in_the_past(db: Session, county: County) -> None:
    may_end = date(2026, 5, 31)
    a = enrol(db, county, enrolled_days_ago=300)
    bp(db, a, 20, 120, 70)  # 26 May: in May's window, controlled
    bp(db, a, 5, 170, 100)  # 10 June: after May, uncontrolled today
    enrol(db, county, enrolled_days_ago=10)  # enrolled in June: not managed in May
    enrol(db, county, enrolled_days_ago=300, status="moved", closed_at=at(ago(5)))  # closed in June: counted in May
    lost = enrol(db, county, enrolled_days_ago=800, last_contact_at=at(ago(3)))
    bp(db, lost, 3, 120, 70)  # seen in June only; silent the year before May's end
    may = one(db, as_of=may_end)
    assert may.managed == 3
    assert (may.control_num, may.control_den, may.no_visit) == (1, 3, 2)
    assert may.lost == 1
    assert may.overdue is None  # a present-day figure only
    now = one(db)
    assert now.managed == 3
    assert (now.control_num, now.uncontrolled) == (1, 1)
    assert now.lost == 0 and now.overdue == 0


def test_monthly_series(db: Session, county: County) -> None:
    a = enrol(db, county, enrolled_days_ago=300)
    bp(db, a, 20, 120, 70)  # 26 May
    bp(db, a, 5, 170, 100)  # 10 June
    db.commit()
    series = indicators.monthly(db, condition="htn", months=3, today=TODAY)
    assert [p.month for p in series] == ["2026-04", "2026-05", "2026-06"]
    assert [p.as_of for p in series] == [date(2026, 4, 30), date(2026, 5, 31), TODAY]
    assert [p.row.control_num for p in series] == [0, 1, 0]
    assert [p.row.overdue for p in series] == [None, None, 0]


def test_bad_requests_name_the_field(db: Session, county: County) -> None:
    with pytest.raises(InvalidInput) as bad:
        indicators.compute(db, condition="htn", as_of=TODAY, group_by="province", today=TODAY)
    assert bad.value.field_errors[0]["field"] == "level"
    with pytest.raises(InvalidInput):
        indicators.compute(db, condition="htn", as_of=TODAY + timedelta(days=1), group_by="county", today=TODAY)
    with pytest.raises(InvalidInput) as month:
        indicators.as_of_for_month("2026-13", TODAY)
    assert month.value.field_errors[0]["field"] == "month"
    assert indicators.as_of_for_month("2026-06", TODAY) == TODAY
    assert indicators.as_of_for_month("2024-02", TODAY) == date(2024, 2, 29)


# --- pages -------------------------------------------------------------------------------------------------

CSRF_RE = re.compile(r'name="csrf_token" value="([^"]+)"')


@pytest.fixture
def web(app, client):  # noqa: ANN001, ANN201
    """The app's client; the indicator routes are included by the chronic pages module (H1); until it
    exists they are included here so the pages can be tested on their own."""
    from healthrelay.chronic import indicator_pages

    if not any(getattr(r, "path", "") == "/chronic/indicators" for r in app.routes):
        app.include_router(indicator_pages.router)
    return client


def login(client, username: str) -> None:  # noqa: ANN001
    client.cookies.clear()
    token = CSRF_RE.search(client.get("/login").text).group(1)
    response = client.post("/login", data={"username": username, "password": f.PASSWORD, "csrf_token": token,
                                           "next": "/"}, follow_redirects=False)
    assert response.status_code == 303, response.text


def _page_cohort(db: Session, w: County) -> None:
    today = local_today()
    shift = (today - TODAY).days
    for village, values in ((0, (120, 70)), (0, (160, 100)), (2, (120, 70))):
        e = enrol(db, w, village=village, enrolled_days_ago=200 - shift)
        db.add(ChronicReading(patient_id=e.patient_id, organisation_id=e.organisation_id, kind="bp",
                              measured_at=at(today - timedelta(days=3)), sbp=values[0], dbp=values[1]))
        db.get(Patient, e.patient_id).name = f"患者姓名{e.id}"
    db.commit()


def test_bureau_sees_figures_without_names(db: Session, county: County, web) -> None:  # noqa: ANN001
    _page_cohort(db, county)
    f.user(db, role=Role.HEALTH_BUREAU, username="bureau", with_practitioner=False)
    db.commit()
    login(web, "bureau")
    page = web.get("/chronic/indicators?condition=htn&level=township")
    assert page.status_code == 200, page.text
    t0 = county.townships[0]
    row = re.search(rf'<tr[^>]*data-key="{t0.id}".*?</tr>', page.text, re.S)
    assert row is not None
    control = re.search(r'data-indicator="control_rate"[^>]*>([^<]*)<', row.group(0))
    assert control is not None and control.group(1).strip() == "50.0%"
    drill = re.findall(r'href="/chronic/indicators\?([^"]*)"', row.group(0))
    assert any("level=village" in q and f"area={t0.id}" in q for q in drill)  # down to the villages
    assert "患者姓名" not in page.text
    bad = web.get("/chronic/indicators?condition=htn&month=2026-13")
    assert bad.status_code == 422 and "month" in bad.text
    village = web.get(f"/chronic/indicators?condition=htn&level=village&area={t0.id}")
    assert village.status_code == 200
    assert f'data-key="{county.villages[0].id}"' in village.text
    assert f'data-key="{county.villages[2].id}"' not in village.text
    grid = web.get(f"/chronic/grid?condition=htn&township={t0.id}")
    assert grid.status_code == 200
    assert "甲村" in grid.text and "丙村" not in grid.text and "患者姓名" not in grid.text
    series = web.get("/chronic/indicators/series.json?condition=htn&level=county")
    assert series.status_code == 200
    assert len(series.json()["months"]) == 12
    assert db.scalar(select(AuditEvent).where(AuditEvent.action == "chronic.indicators_view")) is not None


def test_exports_have_the_numbers(db: Session, county: County, web) -> None:  # noqa: ANN001
    _page_cohort(db, county)
    f.user(db, role=Role.ALLIANCE_ADMIN, username="alliance", with_practitioner=False)
    db.commit()
    login(web, "alliance")
    xlsx = web.get("/chronic/indicators.xlsx?condition=htn&level=village")
    assert xlsx.status_code == 200
    sheet = load_workbook(io.BytesIO(xlsx.content)).active
    rows = {r[0]: r for r in sheet.iter_rows(values_only=True)}
    assert rows["甲村"][2] == 2  # managed
    header = next(sheet.iter_rows(values_only=True))
    control_col = next(i for i, h in enumerate(header) if h and "控制率" in str(h))
    assert rows["甲村"][control_col] == pytest.approx(0.5)
    pdf = web.get("/chronic/indicators.pdf?condition=htn&level=village")
    assert pdf.status_code == 200
    assert pdf.content.startswith(b"%PDF")


def test_who_may_see_which_figures(db: Session, county: County, web) -> None:  # noqa: ANN001
    _page_cohort(db, county)
    doctor = f.user(db, role=Role.CLINICIAN, username="doc.west", organisation=county.centre2)
    db.add(TeamMember(team_id=county.teams[1].id, practitioner_id=doctor.practitioner_id))
    f.user(db, role=Role.ORG_ADMIN, username="admin.east", organisation=county.centre, with_practitioner=False)
    f.user(db, role=Role.CLINICIAN, username="doc.none", organisation=county.centre)
    db.commit()
    login(web, "doc.west")
    own = web.get("/chronic/indicators?condition=htn")
    assert own.status_code == 200
    assert f'data-key="{county.teams[1].id}"' in own.text
    assert f'data-key="{county.teams[0].id}"' not in own.text
    assert web.get(f"/chronic/indicators?condition=htn&level=team&area={county.townships[0].id}").status_code == 403
    assert web.get("/chronic/indicators?condition=htn&level=county").status_code == 403
    login(web, "admin.east")
    east = web.get("/chronic/indicators?condition=htn")
    assert east.status_code == 200 and f'data-key="{county.villages[0].id}"' in east.text
    assert web.get(f"/chronic/indicators?condition=htn&level=village&area={county.townships[1].id}"
                   ).status_code == 403
    login(web, "doc.none")
    assert web.get("/chronic/indicators?condition=htn").status_code == 403


def test_scope_for_refuses_patients(db: Session, county: County) -> None:
    patient_user = f.user(db, role=Role.PATIENT, patient=resident(db, county.villages[0]))
    with pytest.raises(AccessDenied):
        indicators.scope_for(db, user=patient_user)


def test_a_short_lost_to_follow_up_period_does_not_cut_the_other_windows(db: Session, county: County) -> None:
    """A county may set lost_after_days below 365 (or 90): the standard-management year and the control
    window still reach back their full length, and "lost" still looks only at its own period."""
    htn = db.get(ChronicCondition, "htn")
    htn.rules = {**htn.rules, "lost_after_days": 60}
    as_of = ago(1)  # a past day: lost is read from the readings and visits themselves

    def before(days: int) -> int:
        return days + 1

    kept = enrol(db, county, enrolled_days_ago=400)
    for d in (10, 100, 200, 300):
        visit(db, kept, before(d))
    bp(db, kept, before(80), 120, 70)  # in the 90-day window, before the 60-day period
    silent = enrol(db, county, enrolled_days_ago=400)
    visit(db, silent, before(300))
    bp(db, silent, before(80), 170, 100)
    row = one(db, as_of=as_of)
    assert (row.standard_num, row.standard_den) == (1, 2)
    assert (row.control_num, row.control_den, row.uncontrolled, row.no_visit) == (1, 2, 1, 0)
    assert row.lost == 1  # `silent`: nothing in the 60 days ending the day


def test_the_monthly_chart_of_some_teams_counts_the_adults_of_their_villages(db: Session, county: County) -> None:
    """The 12-month chart of a clinician (their teams) divides by the adults of the teams' villages, as the
    table does, not by the whole county's."""
    for _ in range(10):
        resident(db, county.villages[0], age=40)  # team 0's village
    for _ in range(4):
        resident(db, county.villages[2], age=40)  # team 1's village
    enrol(db, county, village=2)  # one more adult of v2, managed by team 1
    team = county.teams[1].id
    table = compute(db, group_by="team", team_ids={team})
    series = indicators.monthly(db, condition="htn", months=2, team_ids={team}, today=TODAY)
    assert table[0].adults == 5
    assert [p.row.adults for p in series] == [5, 5]
    assert series[-1].row.managed == table[0].managed == 1
    assert series[-1].row.management_rate == pytest.approx(table[0].management_rate)


def test_a_month_before_1900_or_an_area_past_an_integer_is_refused_by_field(db: Session, county: County,
                                                                            web) -> None:  # noqa: ANN001
    with pytest.raises(InvalidInput) as old:
        indicators.as_of_for_month("0001-01", TODAY)
    assert old.value.field_errors[0]["field"] == "month"
    f.user(db, role=Role.HEALTH_BUREAU, username="bureau", with_practitioner=False)
    db.commit()
    login(web, "bureau")
    for url, name in (("/chronic/indicators?condition=htn&month=0001-01", "month"),
                      ("/chronic/indicators?condition=htn&month=1899-12", "month"),
                      (f"/chronic/indicators?condition=htn&area={10**20}", "area"),
                      ("/chronic/indicators?condition=htn&area=²", "area"),
                      (f"/chronic/grid?condition=htn&township={10**20}", "area"),
                      (f"/chronic/indicators/series.json?condition=htn&area={10**20}", "area")):
        response = web.get(url)
        assert response.status_code == 422 and name in response.text, (url, response.status_code)
