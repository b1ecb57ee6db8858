"""The outreach pages as their users meet them: the public list without a login, a planner's form with its
errors, a resident booking and cancelling, a township doctor booking for a neighbour, and the studio pages."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from healthrelay.outreach.models import OutreachBooking, OutreachSchedule, OutreachSession
from tests.outreach.conftest import World, clinic, login, next_weekday


def test_the_public_list_needs_no_login_and_shows_no_patient(client, db: Session, world: World) -> None:  # noqa: ANN001
    session = clinic(db, world, person=world.expert, studio=True)
    client.cookies.clear()
    page = client.get(f"/outreach/public/{world.town.code}")
    assert page.status_code == 200
    assert world.town.name in page.text and "心血管专家门诊" in page.text
    assert f"/outreach/sessions/{session.id}/book" in page.text and "省人民医院" in page.text
    assert client.get("/outreach/public").status_code == 200 and world.town.name in client.get("/outreach/public").text
    assert client.get("/outreach/public/NOPE").status_code == 404
    api = client.get(f"/api/v1/outreach/public/{world.town.code}").json()
    assert api[0]["places_left"] == 20 and api[0]["bookable"] is True and "patient" not in str(api)
    # The booking link asks for a login first, then comes back.
    went = client.get(f"/outreach/sessions/{session.id}/book", follow_redirects=False)
    assert went.status_code == 303 and went.headers["location"].startswith("/login?next=/outreach/sessions/")


def test_a_planner_publishes_a_weekly_clinic_and_sees_errors_by_field(client, db: Session, world: World) -> None:  # noqa: ANN001
    csrf = login(client, "planner")
    assert client.get("/outreach/plan").status_code == 200
    day = next_weekday(1)
    form = {"csrf_token": csrf, "kind": "clinic", "title": "心内科延伸门诊",
            "practitioner_id": str(world.county_doctor.practitioner_id), "host_organisation_id": str(world.town.id),
            "day": day.isoformat(), "start_time": "08:30", "minutes": "180", "capacity": "0", "waitlist_limit": "5",
            "repeat": "1", "until": (day + timedelta(weeks=3)).isoformat(), "skip": "not-a-date"}
    bad = client.post("/outreach/plan", data=form)
    assert bad.status_code == 422 and 'id="skip-error"' in bad.text
    bad = client.post("/outreach/plan", data={**form, "skip": ""})
    assert bad.status_code == 422 and 'id="capacity-error"' in bad.text
    made = client.post("/outreach/plan", data={**form, "skip": "", "capacity": "15"}, follow_redirects=False)
    assert made.status_code == 303 and "/outreach/schedules/" in made.headers["location"]
    schedule = db.scalars(select(OutreachSchedule)).one()
    assert len(db.scalars(select(OutreachSession).where(OutreachSession.schedule_id == schedule.id)).all()) == 4
    page = client.get(made.headers["location"])
    assert page.status_code == 200 and "XC" in page.text
    # The same person elsewhere at the same time: refused with the reason on the form.
    clash = client.post("/outreach/plan", data={**form, "skip": "", "capacity": "15", "repeat": "",
                                                "host_organisation_id": str(world.county.id)})
    assert clash.status_code == 409 and world.town.name in clash.text
    week = client.get(f"/outreach?week={day.isoformat()}")
    assert week.status_code == 200 and "08:30 专家门诊" in week.text and world.town.name in week.text
    # A township doctor may look but not plan.
    login(client, "town_doc")
    assert client.get("/outreach/plan").status_code == 403
    assert client.get("/outreach").status_code == 200


def test_a_resident_books_from_the_page_sees_it_and_cancels(client, db: Session, world: World) -> None:  # noqa: ANN001
    session = clinic(db, world, capacity=1, waitlist=2)
    csrf = login(client, "liu_guilan")
    form = client.get(f"/outreach/sessions/{session.id}/book")
    assert form.status_code == 200 and "13800001111" in form.text  # the phone on file is offered
    done = client.post(f"/outreach/sessions/{session.id}/book", data={"csrf_token": csrf, "phone": "13800001111"},
                       follow_redirects=False)
    assert done.status_code == 303 and done.headers["location"].startswith("/outreach/my-bookings?done=booked")
    mine = client.get(done.headers["location"])
    assert "预约成功" in mine.text and world.town.name in mine.text
    again = client.post(f"/outreach/sessions/{session.id}/book", data={"csrf_token": csrf})
    assert again.status_code == 409 and "已预约" in again.text
    row = db.scalars(select(OutreachBooking)).one()
    assert client.post(f"/outreach/bookings/{row.id}/cancel", data={"csrf_token": csrf},
                       follow_redirects=False).status_code == 303
    db.refresh(row)
    assert row.status == "cancelled"
    assert client.get("/outreach/plan").status_code == 403
    assert client.get("/outreach").status_code == 403  # residents use the public list


def test_a_township_doctor_books_for_a_neighbour_and_the_expert_sees_the_list(client, db: Session,  # noqa: ANN001
                                                                              world: World) -> None:
    session = clinic(db, world, person=world.expert, studio=True)
    csrf = login(client, "town_doc")
    missing = client.post(f"/outreach/sessions/{session.id}/book", data={"csrf_token": csrf, "patient_id": ""})
    assert missing.status_code == 422
    done = client.post(f"/outreach/sessions/{session.id}/book",
                       data={"csrf_token": csrf, "patient_id": str(world.neighbour.id)}, follow_redirects=False)
    assert done.status_code == 303
    login(client, "expert_card")
    page = client.get(f"/outreach/sessions/{session.id}")
    assert page.status_code == 200 and world.neighbour.name in page.text
    login(client, "other_doc")
    page = client.get(f"/outreach/sessions/{session.id}")
    assert page.status_code == 200 and world.neighbour.name not in page.text


def test_studio_and_aid_pages_and_agreement_form(client, db: Session, world: World) -> None:  # noqa: ANN001
    csrf = login(client, "planner")
    listing = client.get("/outreach/studios")
    assert listing.status_code == 200 and world.studio.name in listing.text
    page = client.get(f"/outreach/studios/{world.studio.id}")
    assert page.status_code == 200 and str(world.agreement.ends_on) in page.text
    bad = client.post(f"/outreach/studios/{world.studio.id}/agreements",
                      data={"csrf_token": csrf, "starts_on": "2031-01-01", "ends_on": "2030-01-01",
                            "sessions_per_month": "4"})
    assert bad.status_code == 422 and 'id="ends_on-error"' in bad.text
    assert client.get("/outreach/aid").status_code == 200
    assert client.get("/outreach/studios/999999").status_code == 404
    assert client.get("/outreach/studios/99999999999").status_code == 422


def test_a_planner_records_an_aid_relationship_its_batch_and_an_expert(client, db: Session,  # noqa: ANN001
                                                                         world: World) -> None:
    from healthrelay.outreach.models import AidBatch, AidRelationship, AidRotation

    csrf = login(client, "planner")
    form = {"csrf_token": csrf, "code": "AID-1", "name": "省人民医院对口帮扶县人民医院",
            "supporting_organisation_id": str(world.province.id), "supported_organisation_id": str(world.county.id),
            "starts_on": "2027-01-01", "ends_on": "2026-01-01"}
    bad = client.post("/outreach/aid", data=form)
    assert bad.status_code == 422 and 'id="ends_on-error"' in bad.text
    assert client.post("/outreach/aid", data={**form, "ends_on": "2029-12-31"},
                       follow_redirects=False).status_code == 303
    rel = db.scalars(select(AidRelationship)).one()
    outside = client.post(f"/outreach/aid/{rel.id}/batches", data={"csrf_token": csrf, "number": "1",
                                                                  "starts_on": "2026-10-01", "ends_on": "2027-03-31"})
    assert outside.status_code == 422 and "2027-01-01" in outside.text
    assert client.post(f"/outreach/aid/{rel.id}/batches", data={
        "csrf_token": csrf, "number": "1", "starts_on": "2027-01-01", "ends_on": "2027-03-31"},
        follow_redirects=False).status_code == 303
    batch = db.scalars(select(AidBatch)).one()
    made = client.post(f"/outreach/batches/{batch.id}/rotations", data={
        "csrf_token": csrf, "practitioner_id": str(world.expert.practitioner_id),
        "posted_organisation_id": str(world.county.id), "starts_on": "2027-01-01", "ends_on": "2027-03-31",
        "role": "挂职科室主任"}, follow_redirects=False)
    assert made.status_code == 303
    page = client.get("/outreach/aid")
    assert "挂职科室主任" in page.text and "省人民医院对口帮扶县人民医院" in page.text
    assert db.scalars(select(AidRotation)).one().role == "挂职科室主任"
    login(client, "town_doc")
    assert client.post("/outreach/aid", data={**form, "csrf_token": login(client, "town_doc")}).status_code == 403
