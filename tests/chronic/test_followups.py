"""Follow-up visits: classification, the schedule, the referral proposed after two uncontrolled visits or a danger
value, bad input named by field with nothing written, and need-to-know."""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from datetime import date, timedelta
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from healthrelay.accounts.models import User
from healthrelay.audit.models import AuditEvent
from healthrelay.chronic import followups
from healthrelay.chronic.followups import FollowUpInput
from healthrelay.chronic.models import ChronicEnrolment, ChronicFollowUp, ChronicReading, ChronicTask
from healthrelay.core.db import local_today, utcnow
from healthrelay.core.errors import Conflict, InvalidInput, NeedToKnowDenied
from healthrelay.directory.models import (
    Alliance,
    AllianceKind,
    AllianceMembership,
    MembershipRole,
    Organisation,
    OrgKind,
    OrgLevel,
    Team,
)
from healthrelay.patients.models import Patient
from healthrelay.referrals.models import Direction, Referral, State, Urgency
from tests import factories as f


@dataclass
class ChronicWorld:
    county: Organisation
    town: Organisation
    team: Team
    doctor: User  # village doctor on the family-doctor team
    colleague: User  # second team member
    outsider: User  # clinician at another township, no care relationship
    patient: Patient  # 58 years old, hypertensive
    diabetic: Patient


@pytest.fixture
def world(db: Session) -> ChronicWorld:
    county = f.organisation(db, name="测试县人民医院", level=OrgLevel.SECONDARY, kind=OrgKind.GENERAL_HOSPITAL)
    town = f.organisation(db, name="东山镇卫生院")
    other = f.organisation(db, name="西河镇卫生院")
    alliance = Alliance(code="YGT-CH", name="测试县医共体", kind=AllianceKind.COUNTY_COMMUNITY)
    db.add(alliance)
    db.flush()
    for org, role in ((county, MembershipRole.LEAD), (town, MembershipRole.MEMBER), (other, MembershipRole.MEMBER)):
        db.add(AllianceMembership(alliance_id=alliance.id, organisation_id=org.id, role=role))
    doctor = f.user(db, organisation=town, username="village_doc")
    colleague = f.user(db, organisation=town, username="team_nurse")
    team = f.family_team(db, organisation=town, members=[doctor, colleague])
    today = local_today()
    patient = f.patient(db, name="张建国", birth_date=date(today.year - 58, 1, 1), phone="13800001111")
    diabetic = f.patient(db, name="李桂兰", birth_date=date(today.year - 60, 1, 1), phone="13800002222")
    for p in (patient, diabetic):
        f.on_panel(db, team=team, patient=p)
    world = ChronicWorld(county=county, town=town, team=team, doctor=doctor, colleague=colleague,
                         outsider=f.user(db, organisation=other, username="other_doc"), patient=patient,
                         diabetic=diabetic)
    db.commit()
    return world


def enrol(db: Session, w: ChronicWorld, *, patient: Patient | None = None, condition: str = "htn",
          diagnosed_on: date | None = None, due: date | None = None, risk: int = 1,
          team: Team | None = None) -> ChronicEnrolment:
    """An enrolment as the registry (H1) makes it; the follow-up rules only read these columns."""
    row = ChronicEnrolment(patient_id=(patient or w.patient).id, condition_code=condition,
                           organisation_id=w.town.id, team_id=(team or w.team).id,
                           diagnosed_on=diagnosed_on or local_today() - timedelta(days=800),
                           enrolled_at=utcnow() - timedelta(days=700), next_visit_due=due, risk_level=risk,
                           complications=[], medicines=[])
    db.add(row)
    db.commit()
    return row


def visit(days_ago: int = 0, **changes: Any) -> FollowUpInput:
    values: dict[str, Any] = dict(visit_on=local_today() - timedelta(days=days_ago), mode="clinic",
                                  symptoms=["none"], sbp=128, dbp=82, heart_rate=72, weight_kg=70, height_cm=170,
                                  lifestyle={"smoking_per_day": 0, "salt": "light", "exercise_per_week": 5},
                                  medicines=[{"name": "氨氯地平", "dose": "5mg", "frequency": "qd"}],
                                  adherence="regular")
    values.update(changes)
    return FollowUpInput(**values)


def count(db: Session, model: type) -> int:
    return db.scalar(select(func.count()).select_from(model)) or 0


def fields_of(exc: pytest.ExceptionInfo[InvalidInput]) -> set[str]:
    return {e["field"] for e in exc.value.field_errors}


def test_a_controlled_visit_schedules_the_next_in_91_days(db: Session, world: ChronicWorld) -> None:
    e = enrol(db, world, due=local_today() - timedelta(days=10))
    e.hidden_until = local_today() + timedelta(days=3)
    db.commit()
    out = followups.record_follow_up(db, by=world.doctor, enrolment_id=e.id, data=visit(days_ago=2))
    db.commit()
    visit_on = local_today() - timedelta(days=2)
    assert out.classification == "controlled" and out.referral is None and out.task is None
    assert out.next_visit_on == visit_on + timedelta(days=91)
    db.refresh(e)
    assert (e.next_visit_due, e.next_visit_kind, e.last_visit_on) == (visit_on + timedelta(days=91), "routine",
                                                                       visit_on)
    assert (e.last_sbp, e.last_dbp, e.risk_level, e.uncontrolled_streak, e.hidden_until) == (128, 82, 1, 0, None)
    assert e.last_classification == "controlled" and e.medicines[0]["name"] == "氨氯地平"
    row = out.follow_up
    assert row.bmi == 24.2 and row.lifestyle == {"smoking_per_day": 0, "salt": "light", "exercise_per_week": 5}
    readings = db.scalars(select(ChronicReading).where(ChronicReading.patient_id == world.patient.id)).all()
    assert [(r.kind, r.sbp, r.dbp, r.source) for r in readings] == [("bp", 128, 82, "follow_up")]
    assert readings[0].measured_at.astimezone(followups.LOCAL_TZ).date() == visit_on
    assert db.scalar(select(AuditEvent).where(AuditEvent.action == "chronic.follow_up.record")) is not None


def test_two_uncontrolled_visits_propose_a_draft_referral_and_a_check_in_14_days(
        db: Session, world: ChronicWorld) -> None:
    e = enrol(db, world)
    first = followups.record_follow_up(db, by=world.doctor, enrolment_id=e.id, data=visit(days_ago=20, sbp=168,
                                                                                           dbp=102))
    db.commit()
    first_day = local_today() - timedelta(days=20)
    assert first.classification == "uncontrolled" and first.referral is None
    assert (first.next_visit_on, first.next_visit_kind, first.uncontrolled_streak) == (
        first_day + timedelta(days=14), "review", 1)
    assert count(db, Referral) == 0 and count(db, ChronicTask) == 0

    second = followups.record_follow_up(db, by=world.doctor, enrolment_id=e.id, data=visit(days_ago=5, sbp=172,
                                                                                            dbp=104))
    db.commit()
    day = local_today() - timedelta(days=5)
    referral = second.referral
    assert referral is not None and second.uncontrolled_streak == 2
    assert (referral.state, referral.direction, referral.urgency) == (State.DRAFT, Direction.UP, Urgency.ROUTINE)
    assert referral.to_organisation_id == world.county.id and referral.from_organisation_id == world.town.id
    assert "168/102" in referral.reason and "172/104" in referral.reason and "连续两次" in referral.reason
    assert referral.diagnosis_code == "I10" and referral.vital_signs["bp"] == "172/104"
    assert second.follow_up.referral_id == referral.id
    task = second.task
    assert task is not None and (task.kind, task.due_on, task.team_id, task.referral_id, task.status) == (
        "referral_check", day + timedelta(days=14), world.team.id, referral.id, "open")
    db.refresh(e)
    assert (e.next_visit_due, e.risk_level, e.uncontrolled_streak) == (day + timedelta(days=14), 2, 2)

    # A third uncontrolled visit links to the open draft instead of stacking another one.
    third = followups.record_follow_up(db, by=world.doctor, enrolment_id=e.id, data=visit(sbp=170, dbp=100))
    db.commit()
    assert third.referral is not None and third.referral.id == referral.id and third.task is None
    assert count(db, Referral) == 1 and count(db, ChronicTask) == 1


def test_a_controlled_visit_between_resets_the_streak(db: Session, world: ChronicWorld) -> None:
    e = enrol(db, world)
    for days_ago, sbp in ((40, 160), (25, 130), (10, 165)):
        out = followups.record_follow_up(db, by=world.doctor, enrolment_id=e.id, data=visit(days_ago, sbp=sbp))
    db.commit()
    assert out.uncontrolled_streak == 1 and out.referral is None and count(db, Referral) == 0


def test_a_danger_value_on_the_first_visit_proposes_an_urgent_draft(db: Session, world: ChronicWorld) -> None:
    e = enrol(db, world)
    out = followups.record_follow_up(db, by=world.doctor, enrolment_id=e.id, data=visit(sbp=186, dbp=112))
    db.commit()
    assert out.danger and out.classification == "uncontrolled"
    assert out.referral is not None and out.referral.urgency == Urgency.URGENT
    assert "186/112" in out.referral.reason and "危急值" in out.referral.reason
    db.refresh(e)
    assert e.risk_level == 3 and e.next_visit_kind == "review"


def test_diabetes_needs_fasting_glucose_and_a_low_value_is_a_danger(db: Session, world: ChronicWorld) -> None:
    e = enrol(db, world, patient=world.diabetic, condition="t2dm")
    with pytest.raises(InvalidInput) as exc:
        followups.record_follow_up(db, by=world.doctor, enrolment_id=e.id, data=visit(sbp=None, dbp=None))
    assert fields_of(exc) == {"fasting_glucose"}
    db.rollback()
    out = followups.record_follow_up(db, by=world.doctor, enrolment_id=e.id,
                                     data=visit(sbp=None, dbp=None, fasting_glucose=3.6, foot_pulse="weak_left",
                                                hypoglycaemia="occasional", hba1c=7.2))
    db.commit()
    assert out.danger and out.referral is not None and out.referral.diagnosis_code == "E11"
    assert "3.6 mmol/L" in out.referral.reason
    db.refresh(e)
    assert e.last_glucose == 3.6 and e.risk_level == 3
    reading = db.scalar(select(ChronicReading).where(ChronicReading.patient_id == world.diabetic.id))
    assert (reading.kind, reading.glucose_mmol, reading.glucose_context) == ("glucose", 3.6, "fasting")


def test_a_phone_visit_records_and_classifies_but_is_not_face_to_face(db: Session, world: ChronicWorld) -> None:
    due = local_today() + timedelta(days=30)
    e = enrol(db, world, due=due)
    e.last_visit_on = local_today() - timedelta(days=60)
    db.commit()
    out = followups.record_follow_up(db, by=world.doctor, enrolment_id=e.id, data=visit(mode="phone", sbp=132,
                                                                                        dbp=84))
    db.commit()
    assert out.classification == "controlled" and out.follow_up.mode == "phone"
    db.refresh(e)
    # The face-to-face visit still due is not replaced by a call.
    assert e.last_visit_on == local_today() - timedelta(days=60) and e.next_visit_due == due
    # Uncontrolled on the phone brings a review forward.
    followups.record_follow_up(db, by=world.doctor, enrolment_id=e.id, data=visit(mode="phone", sbp=150, dbp=95))
    db.commit()
    db.refresh(e)
    assert e.next_visit_due == local_today() + timedelta(days=14) and e.next_visit_kind == "review"


def test_a_new_complication_is_the_classification_and_joins_the_enrolment(db: Session, world: ChronicWorld) -> None:
    e = enrol(db, world)
    out = followups.record_follow_up(db, by=world.doctor, enrolment_id=e.id,
                                     data=visit(new_complications=["stroke"], side_effects="干咳"))
    db.commit()
    assert out.classification == "complication"
    db.refresh(e)
    assert e.complications == ["stroke"] and e.risk_level == 2
    # Controlled pressure: the visit is scheduled routinely though the label is "complication".
    assert e.next_visit_kind == "routine"


def test_future_date_and_impossible_values_are_named_and_nothing_is_written(db: Session, world: ChronicWorld) -> None:
    e = enrol(db, world, due=local_today() - timedelta(days=3))
    bad = visit(visit_on=local_today() + timedelta(days=1), sbp=400, dbp=90, heart_rate=300, weight_kg=0.5,
                fasting_glucose=0, mode="fax", symptoms=["none", "hiccups"], adherence="sometimes",
                foot_pulse="strong", lifestyle={"salt": "lots", "smoking_per_day": -1, "pets": 2},
                medicines=[{"name": "", "dose": "5mg"}], new_complications=["gout"])
    with pytest.raises(InvalidInput) as exc:
        followups.record_follow_up(db, by=world.doctor, enrolment_id=e.id, data=bad)
    assert fields_of(exc) == {"visit_on", "sbp", "heart_rate", "weight_kg", "fasting_glucose", "mode", "symptoms",
                              "adherence", "foot_pulse", "lifestyle.salt", "lifestyle.smoking_per_day",
                              "lifestyle.pets", "medicines.0.name", "new_complications"}
    assert all(" / " in err["message"] for err in exc.value.field_errors)
    db.rollback()
    assert count(db, ChronicFollowUp) == 0 and count(db, ChronicReading) == 0 and count(db, Referral) == 0
    db.refresh(e)
    assert e.last_sbp is None and e.next_visit_due == local_today() - timedelta(days=3)


def test_diastolic_above_systolic_and_missing_bp_for_hypertension(db: Session, world: ChronicWorld) -> None:
    e = enrol(db, world)
    with pytest.raises(InvalidInput) as exc:
        followups.record_follow_up(db, by=world.doctor, enrolment_id=e.id, data=visit(sbp=120, dbp=130))
    assert fields_of(exc) == {"dbp"}
    with pytest.raises(InvalidInput) as exc:
        followups.record_follow_up(db, by=world.doctor, enrolment_id=e.id, data=visit(sbp=None, dbp=None))
    assert fields_of(exc) == {"sbp"}


def test_a_visit_before_the_diagnosis_is_refused(db: Session, world: ChronicWorld) -> None:
    e = enrol(db, world, diagnosed_on=local_today() - timedelta(days=10))
    with pytest.raises(InvalidInput) as exc:
        followups.record_follow_up(db, by=world.doctor, enrolment_id=e.id, data=visit(days_ago=11))
    assert fields_of(exc) == {"visit_on"}
    assert str(local_today() - timedelta(days=10)) in exc.value.field_errors[0]["message"]


def test_a_late_entry_of_an_older_visit_leaves_the_schedule_to_the_newer_one(db: Session, world: ChronicWorld) -> None:
    e = enrol(db, world)
    followups.record_follow_up(db, by=world.doctor, enrolment_id=e.id, data=visit(days_ago=5))
    db.commit()
    db.refresh(e)
    due = e.next_visit_due
    old = followups.record_follow_up(db, by=world.doctor, enrolment_id=e.id, data=visit(days_ago=30, sbp=190,
                                                                                        dbp=100))
    db.commit()
    db.refresh(e)
    assert old.classification == "uncontrolled" and old.referral is None
    assert e.next_visit_due == due and e.last_sbp == 128 and e.uncontrolled_streak == 0


def test_no_care_relationship_no_visit(db: Session, world: ChronicWorld) -> None:
    e = enrol(db, world)
    with pytest.raises(NeedToKnowDenied):
        followups.record_follow_up(db, by=world.outsider, enrolment_id=e.id, data=visit())
    db.rollback()
    assert count(db, ChronicFollowUp) == 0
    with pytest.raises(NeedToKnowDenied):
        followups.follow_ups_of(db, user=world.outsider, enrolment_id=e.id)
    denied = db.scalar(select(AuditEvent).where(AuditEvent.action == "chronic.follow_up.record",
                                                AuditEvent.outcome == "denied"))
    assert denied is not None and denied.patient_id == world.patient.id


def test_a_closed_enrolment_takes_no_visit(db: Session, world: ChronicWorld) -> None:
    e = enrol(db, world)
    e.status = "moved"
    db.commit()
    with pytest.raises(Conflict):
        followups.record_follow_up(db, by=world.doctor, enrolment_id=e.id, data=visit())


def test_visits_read_back_newest_first(db: Session, world: ChronicWorld) -> None:
    e = enrol(db, world)
    for days_ago in (30, 2, 15):
        followups.record_follow_up(db, by=world.doctor, enrolment_id=e.id, data=replace(visit(days_ago)))
    db.commit()
    rows = followups.follow_ups_of(db, user=world.colleague, enrolment_id=e.id)
    assert [r.visit_on for r in rows] == [local_today() - timedelta(days=d) for d in (2, 15, 30)]


# --- pages and JSON ---------------------------------------------------------------------------------------

CSRF_RE = re.compile(r'name="csrf_token" value="([^"]+)"')


def login(client, username: str) -> str:  # noqa: ANN001
    """Sign in through the login form; returns a CSRF token for page forms."""
    client.cookies.clear()
    token = CSRF_RE.search(client.get("/login").text).group(1)
    response = client.post("/login", data={"username": username, "password": f.PASSWORD, "csrf_token": token,
                                           "next": "/"}, follow_redirects=False)
    assert response.status_code == 303, response.text
    return CSRF_RE.search(client.get("/").text).group(1)


def form_data(enrolment: ChronicEnrolment, csrf: str, **changes: Any) -> dict[str, Any]:
    values: dict[str, Any] = {
        "csrf_token": csrf, "enrolment_id": str(enrolment.id), "visit_on": local_today().isoformat(), "mode": "clinic",
        "symptoms": ["headache_dizziness"], "sbp": "168", "dbp": "102", "heart_rate": "80", "weight_kg": "72",
        "height_cm": "168", "smoking_per_day": "5", "salt": "heavy", "med_name": ["硝苯地平缓释片", ""],
        "med_dose": ["20mg", ""], "med_frequency": ["bid", ""], "adherence": "intermittent", "note": ""}
    values.update(changes)
    return values


def test_the_visit_form_is_prefilled_from_the_last_visit(client, db: Session, world: ChronicWorld) -> None:  # noqa: ANN001
    e = enrol(db, world)
    followups.record_follow_up(db, by=world.doctor, enrolment_id=e.id, data=visit(days_ago=90))
    db.commit()
    login(client, "village_doc")
    page = client.get(f"/chronic/follow-ups/new?enrolment={e.id}")
    assert page.status_code == 200, page.text
    assert "高血压患者随访服务记录表" in page.text and "张建国" in page.text
    assert 'value="氨氯地平"' in page.text and 'value="170"' in page.text  # medicines and height carried over
    assert re.search(r'id="visit_on"[^>]*autofocus', page.text)
    assert "头痛头晕" in page.text and "多饮" not in page.text  # the hypertension form's symptoms


def test_two_uncontrolled_visits_on_the_form_lead_to_the_draft_link(client, db: Session,  # noqa: ANN001
                                                                    world: ChronicWorld) -> None:
    e = enrol(db, world)
    followups.record_follow_up(db, by=world.doctor, enrolment_id=e.id, data=visit(days_ago=14, sbp=165, dbp=100))
    db.commit()
    csrf = login(client, "village_doc")
    response = client.post("/chronic/follow-ups/new", data=form_data(e, csrf), follow_redirects=False)
    assert response.status_code == 303, response.text
    page = client.get(response.headers["location"])
    referral = db.scalar(select(Referral))
    assert referral is not None and referral.state == State.DRAFT
    assert "已生成上转申请草稿，请核对后发送" in page.text and f'href="/referrals/{referral.id}"' in page.text
    assert "控制不满意" in page.text and (local_today() + timedelta(days=14)).isoformat() in page.text
    saved = db.scalar(select(ChronicFollowUp).order_by(ChronicFollowUp.id.desc()))
    assert saved.medicines == [{"name": "硝苯地平缓释片", "dose": "20mg", "frequency": "bid"}]
    assert saved.lifestyle == {"smoking_per_day": 5, "salt": "heavy"} and saved.symptoms == ["headache_dizziness"]


def test_the_form_names_every_bad_field_and_keeps_what_was_typed(client, db: Session,  # noqa: ANN001
                                                                 world: ChronicWorld) -> None:
    e = enrol(db, world)
    csrf = login(client, "village_doc")
    tomorrow = (local_today() + timedelta(days=1)).isoformat()
    response = client.post("/chronic/follow-ups/new", data=form_data(e, csrf, visit_on=tomorrow, sbp="abc",
                                                                     dbp="130", weight_kg="900"))
    assert response.status_code == 422
    for name in ("visit_on", "sbp", "weight_kg"):
        assert re.search(rf'id="{name}"[^>]*aria-invalid="true"', response.text), name
    assert "须为数字" in response.text and "晚于今天" in response.text
    assert re.search(r'id="visit_on"[^>]*autofocus', response.text)
    assert 'value="硝苯地平缓释片"' in response.text and 'value="900"' in response.text
    assert count(db, ChronicFollowUp) == 0 and count(db, ChronicReading) == 0


def test_the_form_refuses_an_outsider(client, db: Session, world: ChronicWorld) -> None:  # noqa: ANN001
    e = enrol(db, world)
    login(client, "other_doc")
    assert client.get(f"/chronic/follow-ups/new?enrolment={e.id}").status_code == 403


def test_json_follow_up(client, db: Session, world: ChronicWorld) -> None:  # noqa: ANN001
    e = enrol(db, world)
    headers = f.bearer(client, "village_doc")
    body = {"enrolment_id": e.id, "visit_on": local_today().isoformat(), "sbp": 186, "dbp": 112,
            "symptoms": ["headache_dizziness"], "medicines": [{"name": "氨氯地平", "dose": "5mg"}]}
    response = client.post("/api/v1/chronic/follow-ups", json=body, headers=headers)
    assert response.status_code == 201, response.text
    out = response.json()
    assert out["classification"] == "uncontrolled" and out["danger"] is True
    assert out["referral"]["urgency"] == "urgent" and out["referral"]["state"] == "draft"
    assert out["task_due_on"] == (local_today() + timedelta(days=14)).isoformat()
    bad = client.post("/api/v1/chronic/follow-ups", json={**body, "sbp": 400, "visit_on": "2099-01-01"},
                      headers=headers)
    assert bad.status_code == 422 and {e["field"] for e in bad.json()["field_errors"]} == {"sbp", "visit_on"}
    listed = client.get(f"/api/v1/chronic/follow-ups?enrolment={e.id}", headers=headers)
    assert [v["sbp"] for v in listed.json()] == [186]
    other = client.post("/api/v1/chronic/follow-ups", json=body, headers=f.bearer(client, "other_doc"))
    assert other.status_code == 403 and other.json()["code"] == "no_care_relationship"
