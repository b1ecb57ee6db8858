"""The impact report on a constructed year with known answers: counts, travel spared and money saved by hand."""

from __future__ import annotations

import io
import re
import zlib
from dataclasses import dataclass
from datetime import timedelta

import pytest
from openpyxl import load_workbook
from sqlalchemy.orm import Session

from healthrelay.accounts.models import Role
from healthrelay.core.db import local_today
from healthrelay.core.errors import AccessDenied, InvalidInput
from healthrelay.outreach import activity, booking, impact, service
from healthrelay.outreach.models import OutreachSession
from tests import factories as f
from tests.outreach.conftest import World, clinic, move_to_past, next_weekday

# the rates seeded by migration 0020
FARE, COMPANIONS, INCOME, COUNTY_EXTRA, PROVINCIAL_EXTRA, DETOUR, KMH = 50.0, 1.0, 2500.0, 3000.0, 45000.0, 1.3, 60.0


@dataclass
class Year:
    clinic: OutreachSession  # studio clinic: the resident (booked) and the neighbour (referred up)
    lecture: OutreachSession  # studio lecture: a third resident
    county_clinic: OutreachSession  # the county doctor's extension clinic (no studio): one resident
    third: object
    year: int


def build_year(db: Session, w: World) -> Year:
    """Two done sessions of the studio with 2 + 1 patients (one referred up), one guided operation, one lecture,
    a technique, a mentored trainee; a done extension clinic of the county doctor; a session not recorded and
    a cancelled one, which count for nothing."""
    day = next_weekday(1)
    studio_clinic = clinic(db, w, day=day, studio=True, hhmm="08:00")
    booking.book(db, by=w.resident_user, session_id=studio_clinic.id)
    db.commit()
    lecture = clinic(db, w, day=day, studio=True, kind="lecture", hhmm="14:00")
    county = clinic(db, w, day=day + timedelta(days=1), hhmm="08:00")
    unrecorded = clinic(db, w, day=day + timedelta(days=2), hhmm="08:00")
    cancelled = clinic(db, w, day=day + timedelta(days=3), hhmm="08:00")
    service.cancel_session(db, by=w.planner, session_id=cancelled.id, reason="专家临时有事")
    db.commit()
    for s, hhmm in ((studio_clinic, "08:00"), (lecture, "14:00"), (county, "08:00"), (unrecorded, "08:00"),
                    (cancelled, "08:00")):
        move_to_past(db, s, days=1, hhmm=hhmm)
    third = f.patient(db, name="孙玉梅", registered_at=w.town)
    db.commit()
    town_doc = w.town_doctor.practitioner_id
    assert town_doc is not None
    activity.record_activity(
        db, by=w.expert, session_id=studio_clinic.id,
        patients=[activity.PatientSeen(patient_id=w.resident.id, outcome="treated_locally", diagnosis_text="高血压"),
                  activity.PatientSeen(patient_id=w.neighbour.id, outcome="referred_up", diagnosis_text="冠心病")],
        procedures=[activity.ProcedureDone(name="冠脉造影", role="guided", patient_id=w.neighbour.id,
                                           local_practitioner_id=town_doc)],
        trainee_ids=[town_doc], attendees=0, summary="门诊 2 人")
    activity.record_activity(
        db, by=w.expert, session_id=lecture.id,
        patients=[activity.PatientSeen(patient_id=third.id, outcome="follow_up_locally")],
        trainee_ids=[town_doc], attendees=25, summary="讲座：高血压规范治疗")
    activity.record_activity(db, by=w.county_doctor, session_id=county.id,
                             patients=[{"patient_id": third.id, "outcome": "treated_locally"}])
    assert w.expert.practitioner_id is not None
    activity.add_technique(db, by=w.planner, host_organisation_id=w.town.id, name="动态血压监测",
                           introduced_on=local_today() - timedelta(days=1),
                           introduced_by_practitioner_id=w.expert.practitioner_id, fills_gap=True,
                           studio_team_id=w.studio.id, certified_by="县医学会")
    activity.create_traineeship(db, by=w.planner, kind="mentorship", trainee_practitioner_id=town_doc,
                                mentor_practitioner_id=w.expert.practitioner_id, home_organisation_id=w.town.id,
                                at_organisation_id=w.town.id, starts_on=local_today() - timedelta(days=1),
                                ends_on=local_today() + timedelta(days=180), goals=["独立完成心电图判读"],
                                studio_team_id=w.studio.id)
    db.commit()
    return Year(clinic=studio_clinic, lecture=lecture, county_clinic=county, third=third,
                year=(local_today() - timedelta(days=1)).year)


def per_patient_fen(w: World, alternative_is_province: bool) -> float:
    """By hand: the round trip from the township to the hospital the patient would have gone to."""
    other = w.province if alternative_is_province else w.county
    km = service.straight_km(w.town, other) * DETOUR
    hours = km / KMH  # no road network in the test database: straight line × detour at the fallback speed
    extra = PROVINCIAL_EXTRA if alternative_is_province else COUNTY_EXTRA
    return (1 + COMPANIONS) * (2 * km * FARE + 2 * hours * INCOME) + extra


def test_the_studio_report_counts_what_was_recorded_and_the_money_by_hand(db: Session, world: World) -> None:
    y = build_year(db, world)
    report = impact.compute(db, year=y.year, group_by="studio")
    rows = {r.key: r for r in report.rows}
    studio = rows[str(world.studio.id)]
    assert studio.name == world.studio.name
    assert studio.sessions == 2 and studio.by_kind["clinic"] == 1 and studio.lectures == 1
    assert (studio.operations, studio.guided, studio.performed) == (1, 1, 0)
    assert (studio.patients_seen, studio.kept_local, studio.referred_up) == (3, 2, 1)
    assert (studio.techniques, studio.gaps_filled) == (1, 1)
    assert (studio.trainees_present, studio.traineeships, studio.mentorships) == (1, 1, 1)
    assert (studio.bookings, studio.no_shows) == (1, 0)
    # two residents kept local spared the trip to the provincial hospital (the studio's home)
    assert studio.money_fen == round(2 * per_patient_fen(world, True))
    km = service.straight_km(world.town, world.province) * DETOUR
    assert studio.travel_km == pytest.approx(2 * 2 * km)
    assert studio.travel_hours == pytest.approx(2 * 2 * km / KMH)
    # the county doctor's clinic is no studio's: the alternative is the county hospital, his primary post
    other = rows[impact.NONE_KEY]
    assert (other.sessions, other.patients_seen, other.kept_local) == (1, 1, 1)
    assert other.money_fen == round(per_patient_fen(world, False))
    total = report.total
    assert total.sessions == 3  # the unrecorded and the cancelled sessions are not "held"
    assert total.patients_seen == 4 and total.kept_local == 3
    assert total.money_fen == round(2 * per_patient_fen(world, True) + per_patient_fen(world, False))
    assert report.monthly_kept_local is not None and sum(report.monthly_kept_local) == 3


def test_filters_by_host_studio_and_year(db: Session, world: World) -> None:
    y = build_year(db, world)
    by_host = impact.compute(db, year=y.year, group_by="host")
    assert [r.key for r in by_host.rows] == [str(world.town.id)]
    assert by_host.rows[0].patients_seen == 4
    only = impact.compute(db, year=y.year, group_by="studio", studio_team_id=world.studio.id)
    assert only.total.sessions == 2 and only.total.techniques == 1
    by_year = impact.compute(db, year=None, group_by="year")
    assert [r.key for r in by_year.rows] == [str(y.year)] and by_year.rows[0].sessions == 3
    empty = impact.compute(db, year=y.year - 5, group_by="studio")
    assert empty.rows == [] and empty.total.sessions == 0
    with pytest.raises(InvalidInput) as bad:
        impact.compute(db, year=y.year, group_by="village")
    assert bad.value.field_errors[0]["field"] == "group"


def test_an_aid_batch_counts_the_sessions_of_its_rotations(db: Session, world: World) -> None:
    rel = service.create_aid_relationship(db, by=world.planner, code="AID-1", name="省医帮扶青溪县",
                                          supporting_organisation_id=world.province.id,
                                          supported_organisation_id=world.county.id,
                                          starts_on=local_today() - timedelta(days=60),
                                          ends_on=local_today() + timedelta(days=300))
    batch = service.add_batch(db, by=world.planner, relationship_id=rel.id, number=1, starts_on=rel.starts_on,
                              ends_on=rel.ends_on)
    assert world.county_doctor.practitioner_id is not None
    rotation = service.add_rotation(db, by=world.planner, batch_id=batch.id,
                                    practitioner_id=world.county_doctor.practitioner_id,
                                    posted_organisation_id=world.town.id, starts_on=rel.starts_on,
                                    ends_on=rel.ends_on)
    s = clinic(db, world)
    s.rotation_id = rotation.id
    move_to_past(db, s)
    activity.record_activity(db, by=world.county_doctor, session_id=s.id,
                             patients=[{"patient_id": world.neighbour.id, "outcome": "treated_locally"}])
    db.commit()
    report = impact.compute(db, year=None, group_by="batch", batch_id=batch.id)
    assert [r.key for r in report.rows] == [str(batch.id)]
    assert report.rows[0].name == "省医帮扶青溪县 第1批" and report.rows[0].patients_seen == 1


def test_who_reads_the_report(db: Session, world: World) -> None:
    bureau = f.user(db, role=Role.HEALTH_BUREAU, username="bureau", with_practitioner=False)
    db.commit()
    assert impact.check_reader(db, world.planner, None) is None
    assert impact.check_reader(db, bureau, None) is None
    assert impact.check_reader(db, world.expert, None) == world.studio.id  # a member: their studio
    with pytest.raises(AccessDenied):
        impact.check_reader(db, world.town_doctor, None)
    with pytest.raises(AccessDenied):
        impact.check_reader(db, world.expert, world.studio.id + 1000)


def test_exports_open_and_carry_the_figures(db: Session, world: World, client) -> None:  # noqa: ANN001
    y = build_year(db, world)
    headers = f.bearer(client, "planner")
    xlsx = client.get(f"/outreach/impact.xlsx?year={y.year}", headers=headers)
    assert xlsx.status_code == 200, xlsx.text
    book = load_workbook(io.BytesIO(xlsx.content))
    assert len(book.sheetnames) == 5  # studio, batch, host, year + definitions
    sheet = book.worksheets[0]
    header = [c.value for c in sheet[1]]
    rows = {r[0]: r for r in sheet.iter_rows(min_row=2, values_only=True)}
    studio = rows[world.studio.name]
    assert studio[header.index("就诊人次")] == 3
    assert studio[header.index("留在本地人次")] == 2
    assert studio[header.index("节省费用（元）")] == pytest.approx(round(2 * per_patient_fen(world, True)) / 100)
    pdf = client.get(f"/outreach/impact.pdf?year={y.year}", headers=headers)
    assert pdf.status_code == 200 and pdf.content.startswith(b"%PDF")
    assert any("Noto-Sans-CJK" in name for name in pdf_fonts(pdf.content))  # the Chinese is set, not boxes
    data = client.get(f"/api/v1/outreach/impact?year={y.year}&group=host", headers=headers)
    assert data.status_code == 200 and data.json()["total"]["patients_seen"] == 4
    assert world.resident.name not in data.text


def test_impact_pages_for_planner_bureau_and_members_but_not_a_clinician_elsewhere(
        db: Session, world: World, client) -> None:  # noqa: ANN001
    y = build_year(db, world)
    f.user(db, role=Role.HEALTH_BUREAU, username="bureau", with_practitioner=False)
    db.commit()
    for username in ("planner", "bureau"):
        page = client.get(f"/outreach/impact?year={y.year}", headers=f.bearer(client, username))
        assert page.status_code == 200, page.text
        assert world.studio.name in page.text
        for name in (world.resident.name, world.neighbour.name, "孙玉梅"):
            assert name not in page.text  # no patient names in the report
    studio_page = client.get(f"/outreach/studios/{world.studio.id}/impact?year={y.year}",
                             headers=f.bearer(client, "expert_card"))
    assert studio_page.status_code == 200
    assert client.get("/outreach/impact", headers=f.bearer(client, "other_doc")).status_code == 403
    assert client.get("/outreach/impact.xlsx", headers=f.bearer(client, "other_doc")).status_code == 403
    bad = client.get("/outreach/impact?year=abc", headers=f.bearer(client, "planner"))
    assert bad.status_code == 422 and "year" in bad.text


def pdf_fonts(pdf: bytes) -> set[str]:
    """The fonts a PDF embeds (WeasyPrint keeps them in compressed object streams)."""
    names: set[str] = set()
    for m in re.finditer(rb"stream\r?\n", pdf):
        end = pdf.find(b"endstream", m.end())
        try:
            body = zlib.decompress(pdf[m.end():end])
        except zlib.error:
            continue
        names.update(n.decode("latin-1") for n in re.findall(rb"/BaseFont\s*/([^\s/>]+)", body))
    return names
