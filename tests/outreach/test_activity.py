"""Recording what happened at a session, new techniques and traineeships: rules, pages and API."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from healthrelay.audit.models import AuditEvent
from healthrelay.core.db import local_today
from healthrelay.core.errors import AccessDenied, Conflict, DomainError, InvalidInput
from healthrelay.outreach import activity, booking, service
from healthrelay.outreach.models import (
    ActivityPatient,
    ActivityTrainee,
    NewTechnique,
    OutreachBooking,
    SessionActivity,
    Traineeship,
)
from tests import factories as f
from tests.outreach.conftest import World, clinic, move_to_past, next_weekday

CSRF_RE = re.compile(r'name="csrf_token" value="([^"]+)"')


def booked_past_clinic(db: Session, w: World):  # noqa: ANN201
    """A studio clinic the resident booked, which took place yesterday."""
    s = clinic(db, w, studio=True)
    b = booking.book(db, by=w.resident_user, session_id=s.id)
    db.commit()
    move_to_past(db, s)
    return s, b


def count(db: Session, model: type) -> int:
    return int(db.scalar(select(func.count()).select_from(model)) or 0)


def fields(exc: pytest.ExceptionInfo[DomainError]) -> set[str]:
    return {e["field"] for e in exc.value.field_errors}


def test_recording_marks_the_booked_resident_attended_and_the_session_done(db: Session, world: World) -> None:
    s, b = booked_past_clinic(db, world)
    town_doc = world.town_doctor.practitioner_id
    assert town_doc is not None
    record = activity.record_activity(
        db, by=world.expert, session_id=s.id,
        patients=[activity.PatientSeen(patient_id=world.resident.id, diagnosis_text="高血压 2 级"),
                  activity.PatientSeen(patient_id=world.neighbour.id, outcome="follow_up_locally")],
        procedures=[("PCI 带教", "guided", world.neighbour.id, town_doc)], trainee_ids=[town_doc], attendees=3,
        summary="两名患者")
    db.commit()
    db.refresh(b)
    db.refresh(s)
    assert b.status == "attended" and s.status == "done"
    rows = db.scalars(select(ActivityPatient).where(ActivityPatient.activity_id == record.id))
    seen = {p.patient_id: p for p in rows}
    assert seen[world.resident.id].booking_id == b.id and seen[world.neighbour.id].booking_id is None
    audited = set(db.scalars(select(AuditEvent.patient_id).where(AuditEvent.action == "outreach.activity_patient")))
    assert audited == {world.resident.id, world.neighbour.id}
    # a correction replaces the lists; the resident taken off the list has their booking open again
    activity.record_activity(db, by=world.expert, session_id=s.id,
                             patients=[activity.PatientSeen(patient_id=world.neighbour.id)])
    db.commit()
    db.refresh(b)
    assert b.status == "booked"
    assert count(db, SessionActivity) == 1 and count(db, ActivityPatient) == 1 and count(db, ActivityTrainee) == 0
    assert db.scalar(select(AuditEvent).where(AuditEvent.action == "outreach.activity_corrected")) is not None


def test_bad_rows_are_each_named_and_nothing_is_written(db: Session, world: World) -> None:
    s, b = booked_past_clinic(db, world)
    stranger = f.patient(db, name="钱多多", registered_at=world.other_town)
    db.commit()
    town_doc = world.town_doctor.practitioner_id
    assert town_doc is not None
    with pytest.raises(InvalidInput) as bad:
        activity.record_activity(
            db, by=world.expert, session_id=s.id,
            patients=[activity.PatientSeen(patient_id=world.resident.id),
                      activity.PatientSeen(patient_id=world.neighbour.id, outcome="cured"),
                      activity.PatientSeen(patient_id=stranger.id)],
            procedures=[activity.ProcedureDone(name="胃镜", role="guided")],
            trainee_ids=[town_doc, town_doc])
    assert fields(bad) == {"patients[1].outcome", "patients[2].patient_id", "procedures[0].local_practitioner_id",
                           "trainee_ids[1]"}
    assert str(stranger.id) in next(e["message"] for e in bad.value.field_errors
                                    if e["field"] == "patients[2].patient_id")
    db.rollback()
    db.refresh(b)
    db.refresh(s)
    assert count(db, SessionActivity) == 0 and b.status == "booked" and s.status == "published"


def test_only_a_started_live_session_is_recorded_and_only_by_its_people(db: Session, world: World) -> None:
    future = clinic(db, world, day=next_weekday(2))
    with pytest.raises(Conflict) as early:
        activity.record_activity(db, by=world.county_doctor, session_id=future.id)
    assert early.value.code == "session_not_started" and fields(early) == {"session_id"}
    cancelled = clinic(db, world, day=next_weekday(3))
    service.cancel_session(db, by=world.planner, session_id=cancelled.id, reason="道路塌方")
    db.commit()
    move_to_past(db, cancelled)
    with pytest.raises(Conflict) as gone:
        activity.record_activity(db, by=world.county_doctor, session_id=cancelled.id)
    assert gone.value.code == "session_cancelled"
    s, _ = booked_past_clinic(db, world)
    with pytest.raises(AccessDenied):
        activity.record_activity(db, by=world.town_doctor, session_id=s.id)  # host clinician, not its person
    activity.record_activity(db, by=world.planner, session_id=s.id, attendees=4)  # the planner may
    assert count(db, SessionActivity) == 1


def test_techniques_are_dated_and_certified_in_order(db: Session, world: World) -> None:
    expert = world.expert.practitioner_id
    assert expert is not None
    today = local_today()
    with pytest.raises(InvalidInput) as bad:
        activity.add_technique(db, by=world.expert, host_organisation_id=world.town.id, name="无痛胃镜",
                               introduced_on=today + timedelta(days=3), introduced_by_practitioner_id=expert,
                               certified_on=today + timedelta(days=1), studio_team_id=world.studio.id + 999)
    assert fields(bad) == {"introduced_on", "certified_on", "studio_team_id"}
    with pytest.raises(InvalidInput) as order:
        activity.add_technique(db, by=world.expert, host_organisation_id=world.town.id, name="无痛胃镜",
                               introduced_on=today, introduced_by_practitioner_id=expert,
                               certified_on=today - timedelta(days=1))
    assert fields(order) == {"certified_on"}
    with pytest.raises(AccessDenied):
        activity.add_technique(db, by=world.town_doctor, host_organisation_id=world.town.id, name="无痛胃镜",
                               introduced_on=today, introduced_by_practitioner_id=expert)
    assert count(db, NewTechnique) == 0
    row = activity.add_technique(db, by=world.expert, host_organisation_id=world.town.id, name="无痛胃镜",
                                 introduced_on=today, introduced_by_practitioner_id=expert, fills_gap=True)
    assert [v.technique.id for v in activity.list_techniques(db, host_organisation_id=world.town.id)] == [row.id]


def test_a_mentorship_needs_a_mentor_and_progress_keeps_the_latest_per_goal(db: Session, world: World) -> None:
    town_doc, expert = world.town_doctor.practitioner_id, world.expert.practitioner_id
    assert town_doc is not None and expert is not None
    today = local_today()
    with pytest.raises(InvalidInput) as bad:
        activity.create_traineeship(db, by=world.planner, kind="mentorship", trainee_practitioner_id=town_doc,
                                    home_organisation_id=world.town.id, at_organisation_id=world.county.id,
                                    starts_on=today, ends_on=today - timedelta(days=1), goals=["", " "])
    assert fields(bad) == {"mentor_practitioner_id", "ends_on", "goals"}
    assert count(db, Traineeship) == 0
    t = activity.create_traineeship(db, by=world.expert, kind="mentorship", trainee_practitioner_id=town_doc,
                                    mentor_practitioner_id=expert, home_organisation_id=world.town.id,
                                    at_organisation_id=world.town.id, starts_on=today - timedelta(days=30),
                                    ends_on=today + timedelta(days=300), goals=["心电图判读", "高血压规范用药"])
    activity.add_progress(db, by=world.expert, traineeship_id=t.id, goal_index=0, percent=40,
                          recorded_on=today - timedelta(days=10))
    activity.add_progress(db, by=world.town_doctor, traineeship_id=t.id, goal_index=0, percent=70)
    with pytest.raises(InvalidInput) as wrong:
        activity.add_progress(db, by=world.expert, traineeship_id=t.id, goal_index=2, percent=101,
                              recorded_on=today + timedelta(days=1))
    assert fields(wrong) == {"goal_index", "percent", "recorded_on"}
    with pytest.raises(AccessDenied):
        activity.add_progress(db, by=world.outsider, traineeship_id=t.id, goal_index=1, percent=10)
    [view] = activity.list_traineeships(db, host_organisation_id=world.town.id)
    assert view.latest == [70, None] and view.overall == 35
    activity.close_traineeship(db, by=world.expert, traineeship_id=t.id, status="completed")
    with pytest.raises(Conflict):
        activity.add_progress(db, by=world.expert, traineeship_id=t.id, goal_index=1, percent=10)


def login(client, username: str) -> str:  # noqa: ANN001
    client.cookies.clear()
    token = CSRF_RE.search(client.get("/login").text).group(1)
    response = client.post("/login", data={"username": username, "password": f.PASSWORD, "csrf_token": token,
                                           "next": "/"}, follow_redirects=False)
    assert response.status_code == 303, response.text
    return token


def test_the_record_form_lists_the_booked_and_marks_errors_next_to_fields(
        db: Session, world: World, client) -> None:  # noqa: ANN001
    s, b = booked_past_clinic(db, world)
    login(client, "expert_card")
    page = client.get(f"/outreach/sessions/{s.id}/activity")
    assert page.status_code == 200, page.text
    assert world.resident.name in page.text and world.town_doctor.display_name is not None
    token = CSRF_RE.search(page.text).group(1)
    town_doc = world.town_doctor.practitioner_id
    form = {"csrf_token": token, "booked_count": "1", "walkin_count": "1", "proc_count": "1",
            "b0_patient": str(world.resident.id), "b0_seen": "1", "b0_outcome": "treated_locally",
            "b0_diagnosis": "高血压", "w0_patient": str(world.neighbour.id), "w0_outcome": "referred_up",
            "r0_name": "带教冠脉造影", "r0_role": "guided", "r0_local": "", "attendees": "0", "summary": ""}
    refused = client.post(f"/outreach/sessions/{s.id}/activity", data=form)
    assert refused.status_code == 422
    assert re.search(r'id="r0_local"[^>]*aria-invalid="true"', refused.text)
    assert 'id="r0_local-error"' in refused.text
    assert count(db, SessionActivity) == 0
    form["r0_local"] = str(town_doc)
    form["trainee_ids"] = str(town_doc)
    saved = client.post(f"/outreach/sessions/{s.id}/activity", data=form, follow_redirects=False)
    assert saved.status_code == 303 and saved.headers["location"].startswith(f"/outreach/sessions/{s.id}")
    db.expire_all()
    assert db.get(OutreachBooking, b.id).status == "attended"  # type: ignore[union-attr]
    again = client.get(f"/outreach/sessions/{s.id}/activity")
    assert 'value="带教冠脉造影"' in again.text  # a correction starts from what was recorded
    login(client, "other_doc")
    assert client.get(f"/outreach/sessions/{s.id}/activity").status_code == 403


def test_the_api_records_and_reads_a_session(db: Session, world: World, client) -> None:  # noqa: ANN001
    s, _ = booked_past_clinic(db, world)
    headers = f.bearer(client, "expert_card")
    bad = client.post(f"/api/v1/outreach/sessions/{s.id}/activity", headers=headers,
                      json={"patients": [{"patient_id": world.resident.id, "outcome": "gone"}]})
    assert bad.status_code == 422 and bad.json()["field_errors"][0]["field"] == "patients[0].outcome"
    ok = client.post(f"/api/v1/outreach/sessions/{s.id}/activity", headers=headers,
                     json={"patients": [{"patient_id": world.resident.id}], "attendees": 2, "summary": "门诊"})
    assert ok.status_code == 200, ok.text
    assert ok.json()["session_status"] == "done" and ok.json()["patients"][0]["patient_id"] == world.resident.id
    read = client.get(f"/api/v1/outreach/sessions/{s.id}/activity", headers=headers)
    assert read.status_code == 200 and read.json()["attendees"] == 2
    expert = world.expert.practitioner_id
    tech = client.post("/api/v1/outreach/techniques", headers=headers, json={
        "host_organisation_id": world.town.id, "name": "动态心电图", "introduced_on": local_today().isoformat(),
        "introduced_by_practitioner_id": expert})
    assert tech.status_code == 201, tech.text
    future = client.post("/api/v1/outreach/techniques", headers=headers, json={
        "host_organisation_id": world.town.id, "name": "动态心电图",
        "introduced_on": (local_today() + timedelta(days=5)).isoformat(), "introduced_by_practitioner_id": expert})
    assert future.status_code == 422 and future.json()["field_errors"][0]["field"] == "introduced_on"
    t = client.post("/api/v1/outreach/traineeships", headers=headers, json={
        "kind": "mentorship", "trainee_practitioner_id": world.town_doctor.practitioner_id,
        "mentor_practitioner_id": expert, "home_organisation_id": world.town.id,
        "at_organisation_id": world.town.id, "starts_on": local_today().isoformat(),
        "ends_on": (local_today() + timedelta(days=90)).isoformat(), "goals": ["超声入门"]})
    assert t.status_code == 201, t.text
    p = client.post(f"/api/v1/outreach/traineeships/{t.json()['id']}/progress", headers=headers,
                    json={"goal_index": 0, "percent": 50})
    assert p.status_code == 201
    listed = client.get("/api/v1/outreach/traineeships", headers=headers).json()
    assert listed[0]["latest_percent"] == [50]


def test_technique_and_traineeship_pages(db: Session, world: World, client) -> None:  # noqa: ANN001
    login(client, "planner")
    page = client.get("/outreach/techniques")
    assert page.status_code == 200
    token = CSRF_RE.search(page.text).group(1)
    bad = client.post("/outreach/techniques", data={
        "csrf_token": token, "host_organisation_id": str(world.town.id), "name": "无痛胃镜",
        "introduced_on": (local_today() + timedelta(days=2)).isoformat(),
        "introduced_by_practitioner_id": str(world.expert.practitioner_id)})
    assert bad.status_code == 422 and 'id="introduced_on-error"' in bad.text
    ok = client.post("/outreach/techniques", data={
        "csrf_token": token, "host_organisation_id": str(world.town.id), "name": "无痛胃镜",
        "introduced_on": local_today().isoformat(), "introduced_by_practitioner_id": str(world.expert.practitioner_id),
        "fills_gap": "1"}, follow_redirects=True)
    assert ok.status_code == 200 and "无痛胃镜" in ok.text
    tr = client.post("/outreach/traineeships", data={
        "csrf_token": token, "kind": "further_training",
        "trainee_practitioner_id": str(world.town_doctor.practitioner_id),
        "home_organisation_id": str(world.town.id), "at_organisation_id": str(world.province.id),
        "starts_on": local_today().isoformat(), "ends_on": (local_today() + timedelta(days=180)).isoformat(),
        "goals": "独立完成胃镜\n掌握内镜消毒"}, follow_redirects=True)
    assert tr.status_code == 200 and "掌握内镜消毒" in tr.text
