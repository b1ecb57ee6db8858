"""Referral indicators: known referrals made through the service, moved in time by setting their
timestamps, give exact figures; the page, its exports and who may see them."""

from __future__ import annotations

import io
import json
import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from openpyxl import load_workbook
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from healthrelay.accounts.models import Role, User
from healthrelay.audit.models import AuditEvent
from healthrelay.core.errors import AccessDenied, InvalidInput
from healthrelay.directory.models import Department
from healthrelay.referrals import kpi, service
from healthrelay.referrals.models import Referral, ReferralTransition, Urgency
from tests import factories as f
from tests.referrals.conftest import World, up_input

MARCH, APRIL = "2025-03", "2025-04"


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def retime(db: Session, referral: Referral, *, sent: datetime, answered: int | None = None, due: int,
           closed: timedelta | None = None) -> None:
    """Put a referral's clock where the test wants it: sent at `sent`, answered `answered` minutes
    later, due `due` minutes after sending (as `send` would have set it), closed `closed` later."""
    values: dict[str, object] = {"sent_at": sent, "response_due_at": sent + timedelta(minutes=due)}
    if answered is not None:
        values["answered_at"] = sent + timedelta(minutes=answered)
    if closed is not None:
        values["closed_at"] = sent + closed
    db.execute(update(Referral).where(Referral.id == referral.id).values(**values))
    db.flush()


def up(db: Session, w: World, urgency: Urgency, *, by: User | None = None, **changes: object) -> Referral:
    by = by or w.village_doctor
    draft = service.create_draft(db, by=by, data=up_input(w, urgency=urgency, **changes))
    return service.send(db, by=by, referral_id=draft.id)


def accept(db: Session, w: World, r: Referral) -> Referral:
    return service.accept(db, by=w.county_doctor, referral_id=r.id, appointment_at=at("2025-03-01T01:00:00"))


def treat(db: Session, w: World, r: Referral) -> Referral:
    accept(db, w, r)
    service.mark_arrived(db, by=w.county_doctor, referral_id=r.id)
    return service.complete(db, by=w.county_doctor, referral_id=r.id, outcome="好转出院")


@dataclass
class Known:
    w: World
    town_b_admin: User
    bureau: User
    alliance_admin: User


@pytest.fixture
def known(db: Session, world: World) -> Known:
    """Eight up referrals and one down in March–April 2025, plus two that must not count.

    Response minutes: R1 30, R2 150 (late), R3 60, R4 10, R7 130 (late after a redirect), D1 45.
    """
    w = world
    later: list[tuple[Referral, dict[str, object]]] = []  # retimed at the end: care relationships run on real time
    # R1 urgent: accepted after 30 of its 120 minutes; treated, discharged on 12 March and sent down.
    r1 = treat(db, w, up(db, w, Urgency.URGENT))
    later.append((r1, dict(sent=at("2025-03-10T02:00:00"), answered=30, due=120, closed=timedelta(days=2))))
    d1 = service.send_down(db, by=w.county_doctor, data=service.ReferralInput(
        patient_id=w.patient.id, to_organisation_id=w.town_a.id, to_team_id=w.team_a.id, urgency=Urgency.ROUTINE,
        diagnosis_code="I20.0", diagnosis_text="不稳定型心绞痛", consent_kind="verbal", parent_referral_id=r1.id,
        care_plan={"diagnosis": "稳定", "follow_up": [{"due_on": "2025-03-26", "kind": "血压随访"}]}))
    service.accept(db, by=w.village_doctor, referral_id=d1.id)
    later.append((d1, dict(sent=at("2025-03-12T06:00:00"), answered=45, due=1440)))
    # R2 urgent: declined after 150 minutes, 30 late.
    r2 = up(db, w, Urgency.URGENT)
    service.decline(db, by=w.county_doctor, referral_id=r2.id, reason="床位已满",
                    suggested_alternative_organisation_id=w.town_b.id)
    later.append((r2, dict(sent=at("2025-03-11T03:00:00"), answered=150, due=120)))
    # R3 routine: accepted after an hour, completed on 25 March, not sent down.
    r3 = treat(db, w, up(db, w, Urgency.ROUTINE))
    later.append((r3, dict(sent=at("2025-03-20T01:00:00"), answered=60, due=1440, closed=timedelta(days=5))))
    # R4 green channel sent 31 March 17:00 UTC = 1 April 01:00 in Shanghai: an April referral.
    r4 = accept(db, w, up(db, w, Urgency.GREEN_CHANNEL))
    later.append((r4, dict(sent=at("2025-03-31T17:00:00"), answered=10, due=15)))
    # R5 urgent: nobody answered; expired three days later.
    r5 = service.expire(db, referral_id=up(db, w, Urgency.URGENT).id)
    later.append((r5, dict(sent=at("2025-04-05T02:00:00"), due=120, closed=timedelta(days=3))))
    # R6 routine from township B, still waiting long past its deadline.
    other = f.patient(db, name="赵德明", registered_at=w.town_b)
    r6 = up(db, w, Urgency.ROUTINE, by=w.town_b_doctor, patient_id=other.id)
    later.append((r6, dict(sent=at("2025-04-10T02:00:00"), due=1440)))
    # R7 urgent: redirected to neurology after 100 minutes (a fresh 120-minute window from then),
    # accepted at 130: before the reset deadline, but 10 minutes past the one the patient was given.
    neuro = Department(organisation_id=w.county.id, code="SJNK", name="神经内科")
    db.add(neuro)
    db.flush()
    r7 = up(db, w, Urgency.URGENT)
    service.redirect(db, by=w.county_doctor, referral_id=r7.id, to_organisation_id=w.county.id,
                     to_department_id=neuro.id, reason="更适合神经内科")
    accept(db, w, r7)
    sent7 = at("2025-04-12T02:00:00")
    later.append((r7, dict(sent=sent7, answered=130, due=100 + 120)))
    db.execute(update(ReferralTransition).where(ReferralTransition.referral_id == r7.id,
                                                ReferralTransition.to_state == "redirected")
               .values(at=sent7 + timedelta(minutes=100)))
    # R10 urgent: withdrawn by the sender after 10 minutes, inside its window: not judged on time.
    r10 = service.cancel(db, by=w.village_doctor, referral_id=up(db, w, Urgency.URGENT).id, reason="患者拒绝转诊")
    later.append((r10, dict(sent=at("2025-04-15T02:00:00"), due=120, closed=timedelta(minutes=10))))
    # Not counted: a draft withdrawn before sending, and a referral sent in February.
    draft = service.create_draft(db, by=w.village_doctor, data=up_input(w))
    service.cancel(db, by=w.village_doctor, referral_id=draft.id, reason="填错")
    r9 = accept(db, w, up(db, w, Urgency.URGENT))
    later.append((r9, dict(sent=at("2025-02-20T02:00:00"), answered=5, due=120)))
    for referral, times in later:
        retime(db, referral, **times)  # type: ignore[arg-type]

    known = Known(w=w, town_b_admin=f.user(db, role=Role.ORG_ADMIN, organisation=w.town_b, username="admin_b"),
                  bureau=f.user(db, role=Role.HEALTH_BUREAU, username="bureau", with_practitioner=False),
                  alliance_admin=f.user(db, role=Role.ALLIANCE_ADMIN, organisation=w.county, username="alliance"))
    db.commit()
    return known


def compute(db: Session, user: User, first: str = MARCH, last: str = APRIL, **kw: object) -> kpi.KpiReport:
    start, end = kpi.month_range(first, last)
    return kpi.compute(db, user=user, start=start, end=end, **kw)  # type: ignore[arg-type]


def test_counts_by_month_in_shanghai_time(db: Session, known: Known) -> None:
    report = compute(db, known.alliance_admin)
    assert (report.up, report.down) == (8, 1)
    assert [(m.month, m.up, m.down) for m in report.months] == [(MARCH, 3, 1), (APRIL, 5, 0)]
    # 17:00 UTC on 31 March is already April in Shanghai.
    march_only = compute(db, known.alliance_admin, MARCH, MARCH)
    assert (march_only.up, march_only.down) == (3, 1)


def test_acceptance_response_times_and_deadlines(db: Session, known: Known) -> None:
    report = compute(db, known.bureau)
    a = report.answering
    assert (a.answered, a.accepted) == (6, 5)  # R2 declined
    assert a.acceptance_rate == pytest.approx(5 / 6)
    # Due: the six answered, R5 (expired) and R6 (still waiting past its deadline); R10 was withdrawn in time.
    # On time: R1, R3, R4, D1. R7 answered before its reset deadline but late for the patient.
    assert (a.due, a.on_time) == (8, 4)
    assert a.on_time_share == pytest.approx(0.5)
    # Minutes 10, 30, 45, 60, 130, 150: percentile_cont interpolates.
    assert (report.response.count, report.response.median_minutes, report.response.p90_minutes) == (6, 52.5, 140.0)
    by_urgency = report.response_by_urgency
    assert (by_urgency["urgent"].median_minutes, by_urgency["urgent"].p90_minutes) == (130.0, 146.0)
    assert (by_urgency["routine"].median_minutes, by_urgency["routine"].p90_minutes) == (52.5, 58.5)
    assert (by_urgency["green_channel"].count, by_urgency["green_channel"].median_minutes) == (1, 10.0)
    assert report.answering_by_urgency["urgent"].on_time == 1  # R1 only


def test_share_of_lead_hospital_discharges_sent_down(db: Session, known: Known) -> None:
    report = compute(db, known.alliance_admin)
    march, april = report.months
    assert (march.lead_up_completed, march.lead_sent_down, march.discharge_down_share) == (2, 1, 0.5)
    assert (april.lead_up_completed, april.discharge_down_share) == (0, None)
    assert (report.lead_up_completed, report.lead_sent_down) == (2, 1)


def test_member_rows_count_up_at_the_sender_and_down_at_the_lead(db: Session, known: Known) -> None:
    w = known.w
    report = compute(db, known.alliance_admin)
    rows = {r.organisation_id: r for r in report.organisations}
    assert report.organisations[0].organisation_id == w.county.id and rows[w.county.id].is_lead
    county, town_a, town_b = rows[w.county.id], rows[w.town_a.id], rows[w.town_b.id]
    assert (county.counts.up_sent, county.counts.up_received, county.counts.down_sent) == (0, 8, 1)
    assert (town_a.counts.up_sent, town_a.counts.down_received) == (7, 1)
    assert (town_b.counts.up_sent, town_b.counts.up_received) == (1, 0)
    assert w.outsider.id not in rows  # not a member, no referrals
    assert town_a.by_month[MARCH].up_sent == 3 and town_a.by_month[APRIL].up_sent == 4
    assert town_b.by_month[APRIL].up_sent == 1 and county.by_month[MARCH].down_sent == 1
    # As receiver the county answered R1 R2 R3 R4 R7 (R2 declined; R1 R3 R4 in time) of seven due.
    assert (county.answering.answered, county.answering.accepted, county.answering.on_time) == (5, 4, 3)
    assert county.answering.due == 7
    assert (town_a.answering.answered, town_a.answering.on_time_share) == (1, 1.0)


def test_org_admin_sees_only_their_organisation(db: Session, known: Known) -> None:
    w = known.w
    report = compute(db, known.town_b_admin)
    assert report.organisation_id == w.town_b.id
    assert (report.up, report.down) == (1, 0)
    assert [r.organisation_id for r in report.organisations] == [w.town_b.id]
    assert not report.has_lead and report.discharge_down_share is None
    county = compute(db, w.county_admin)  # the lead hospital: every referral here involves it
    assert (county.up, county.down, county.lead_sent_down) == (8, 1, 1)
    with pytest.raises(AccessDenied):
        compute(db, known.town_b_admin, organisation_id=w.county.id)
    # Alliance admins and the bureau may narrow to one member.
    narrowed = compute(db, known.bureau, organisation_id=w.town_b.id)
    assert (narrowed.up, narrowed.answering.due) == (1, 1)


def test_clinicians_may_not_compute_and_periods_are_checked(db: Session, known: Known) -> None:
    with pytest.raises(AccessDenied):
        compute(db, known.w.county_doctor)
    with pytest.raises(InvalidInput):
        compute(db, known.bureau, APRIL, MARCH)
    with pytest.raises(InvalidInput):
        kpi.compute(db, user=known.bureau, start=date(2020, 1, 1), end=date(2025, 1, 31))


def test_empty_period_has_no_rates(db: Session, known: Known) -> None:
    report = compute(db, known.bureau, "2024-01", "2024-02")
    assert (report.up, report.down, report.answering.acceptance_rate, report.response.median_minutes) == (
        0, 0, None, None)
    assert report.discharge_down_share is None


# --- the page and its exports --------------------------------------------------------------------

PERIOD = {"start": MARCH, "end": APRIL}


def test_page_shows_figures_chart_data_and_tables(client, known: Known) -> None:  # noqa: ANN001
    headers = f.bearer(client, "alliance")
    page = client.get("/referrals/kpi", params=PERIOD, headers=headers)
    assert page.status_code == 200
    html = page.text
    assert 'data-kpi="up">8<' in html and 'data-kpi="acceptance">83.3%<' in html
    assert 'data-kpi="median">52.5<' in html and 'data-kpi="on-time">50.0%<' in html
    blob = re.search(r'<script type="application/json" id="kpi-chart-data">(.*?)</script>', html, re.S)
    chart = json.loads(blob.group(1))  # type: ignore[union-attr]
    assert (chart["months"], chart["up"], chart["down"]) == ([MARCH, APRIL], [3, 5], [1, 0])
    assert "/vendor/echarts/echarts.min.js" in html and 'id="kpi-months"' in html
    assert "测试县人民医院" in html and "HIS" in html
    assert 'href="/referrals/kpi.xlsx?start=2025-03&amp;end=2025-04"' in html
    data = client.get("/referrals/kpi", params={**PERIOD, "format": "json"}, headers=headers).json()
    assert data["answering"]["acceptance_rate"] == pytest.approx(5 / 6) and data["months"][0]["up"] == 3


def test_bureau_sees_the_page_without_patient_names(client, known: Known) -> None:  # noqa: ANN001
    headers = f.bearer(client, "bureau")
    page = client.get("/referrals/kpi", params=PERIOD, headers=headers)
    assert page.status_code == 200 and 'data-kpi="up">8<' in page.text
    for name in (known.w.patient.name, "赵德明"):
        assert name not in page.text
    pdf = client.get("/referrals/kpi.pdf", params=PERIOD, headers=headers)
    assert pdf.status_code == 200 and pdf.content.startswith(b"%PDF")


def test_roles_and_bad_input_on_the_page(client, known: Known) -> None:  # noqa: ANN001
    doctor = f.bearer(client, "county_doc")
    assert client.get("/referrals/kpi", headers=doctor).status_code == 403
    assert client.get("/referrals/kpi.xlsx", headers=doctor).status_code == 403
    town_b = f.bearer(client, "admin_b")
    mine = client.get("/referrals/kpi", params=PERIOD, headers=town_b)
    assert mine.status_code == 200 and 'data-kpi="up">1<' in mine.text and 'id="kpi-org"' not in mine.text
    other = client.get("/referrals/kpi", params={**PERIOD, "organisation": known.w.county.id}, headers=town_b)
    assert other.status_code == 403
    bureau = f.bearer(client, "bureau")
    for params in ({"start": "2025-13"}, {"start": "March"}, {"start": APRIL, "end": MARCH},
                   {"organisation": "x"}, {"organisation": "999999"}):
        response = client.get("/referrals/kpi", params=params, headers=bureau)
        assert response.status_code in (404, 422), params
    # Default: the last six months in Shanghai, with the picker filled in.
    default = client.get("/referrals/kpi", headers=bureau)
    today = datetime.now(ZoneInfo("Asia/Shanghai")).date()
    year, month0 = divmod(today.year * 12 + today.month - 1 - 5, 12)
    assert default.status_code == 200
    assert f'name="start" value="{year:04d}-{month0 + 1:02d}"' in default.text
    assert f'name="end" value="{today:%Y-%m}"' in default.text


def test_excel_export_has_the_numbers(client, db: Session, known: Known) -> None:  # noqa: ANN001
    response = client.get("/referrals/kpi.xlsx", params=PERIOD, headers=f.bearer(client, "alliance"))
    assert response.status_code == 200 and "attachment" in response.headers["content-disposition"]
    wb = load_workbook(io.BytesIO(response.content))
    summary = {row[0]: row[1] for row in wb["汇总"].iter_rows(values_only=True) if row and row[0]}
    assert summary["上转"] == 8 and summary["下转"] == 1
    assert summary["接收率"] == pytest.approx(5 / 6) and summary["响应时间中位数"] == 52.5
    months = list(wb["按月"].iter_rows(values_only=True))
    assert months[1][:6] == (MARCH, 3, 1, 2, 1, 0.5) and months[2][:3] == (APRIL, 5, 0)
    members = {row[0]: row for row in wb["成员机构"].iter_rows(min_row=2, values_only=True)}
    assert members["测试县人民医院"][1:5] == ("✓", 0, 8, 1)
    assert members["东山镇卫生院"][2] == 7
    by_month = {(r[0], r[1]): r[2:] for r in wb["成员机构按月"].iter_rows(min_row=2, values_only=True)}
    assert by_month[("东山镇卫生院", APRIL)] == (4, 0, 0, 0)
    # Figures leaving the building are on the audit trail, with who took them and for which months.
    event = db.execute(select(AuditEvent).where(AuditEvent.action == "referral.kpi_export")).scalar_one()
    assert (event.username, event.detail["output"], event.detail["start"]) == ("alliance", "xlsx", "2025-03-01")
