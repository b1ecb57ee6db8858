"""Screening rules as an organiser and the on-site doctors meet them: planning, registration through the master
patient index, results that become team tasks and chronic readings, and the event's counts."""

from __future__ import annotations

from datetime import date, timedelta

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from healthrelay.access import service as access
from healthrelay.chronic.models import ChronicReading, ChronicTask
from healthrelay.core.db import local_today, utcnow
from healthrelay.core.errors import AccessDenied, Conflict, InvalidInput
from healthrelay.directory.models import TeamMember
from healthrelay.patients.identity import make_resident_id
from healthrelay.patients.models import Patient
from healthrelay.patients.service import LikelyDuplicates
from healthrelay.screening import service
from healthrelay.screening.models import ScreeningAttendance, ScreeningResult
from tests import factories as f
from tests.screening.conftest import World, plan


def fields_of(exc: pytest.ExceptionInfo) -> set[str]:
    return {e["field"] for e in exc.value.field_errors}


# ---------------------------------------------------------------------------- planning

def test_plan_refuses_bad_dates_unknown_services_and_another_organisations_event(db: Session, world: World) -> None:
    start = utcnow()
    bad = service.EventPlan(kind="party", title=" ", host_organisation_id=world.town.id, starts_at=start,
                            ends_at=start - timedelta(hours=1), services=["bp", "xray_magic"])
    with pytest.raises(InvalidInput) as exc:
        service.plan_event(db, by=world.doctor, plan=bad)
    assert fields_of(exc) == {"kind", "title", "ends_at", "services"}
    assert "xray_magic" in str(exc.value.field_errors)
    good = service.EventPlan(kind="free_clinic", title="义诊", host_organisation_id=world.town.id, starts_at=start,
                             ends_at=start + timedelta(hours=4), services=["bp"])
    with pytest.raises(AccessDenied):
        service.plan_event(db, by=world.outsider, plan=good)
    event = service.plan_event(db, by=world.doctor, plan=good)
    assert event.status == "planned" and event.number.startswith("SC")


def test_an_event_is_opened_then_closed_and_takes_no_registration_when_closed(db: Session, world: World) -> None:
    event = plan(db, world, open_it=False)
    with pytest.raises(Conflict):
        service.quick_register(db, by=world.doctor, event_id=event.id, client_token="tok-planned-1", name="张三",
                               sex="M", birth_date=date(1970, 1, 1))
    service.set_status(db, by=world.doctor, event_id=event.id, status="open")
    service.set_status(db, by=world.doctor, event_id=event.id, status="closed")
    with pytest.raises(Conflict):
        service.set_status(db, by=world.doctor, event_id=event.id, status="open")
    with pytest.raises(AccessDenied):
        service.set_counts(db, by=world.outsider, event_id=event.id, leaflets_given=1, medicines_given=0,
                           medicines_value_fen=0)


# ---------------------------------------------------------------------------- registration

def test_a_resident_on_file_is_found_by_resident_id(db: Session, world: World) -> None:
    event = plan(db, world)
    before = db.scalar(select(func.count()).select_from(Patient))
    row = service.quick_register(db, by=world.doctor, event_id=event.id, client_token="tok-rid-0001",
                                 resident_id=world.resident_id, name="刘桂兰", sex="F", birth_date=None)
    assert row.patient_id == world.resident.id and row.how == "resident_id"
    assert db.scalar(select(func.count()).select_from(Patient)) == before


def test_a_new_resident_is_registered_in_the_index(db: Session, world: World) -> None:
    event = plan(db, world)
    rid = make_resident_id("421023", date(1980, 2, 3), 7, "M")
    row = service.quick_register(db, by=world.doctor, event_id=event.id, client_token="tok-new-00001",
                                 resident_id=rid, name="孙建国", sex="M", birth_date=None, phone="13900001111",
                                 village=world.village.id)
    person = db.get(Patient, row.patient_id)
    assert row.how == "new" and person.name == "孙建国" and person.birth_date == date(1980, 2, 3)
    assert person.area_id == world.village.id


def test_a_likely_duplicate_is_shown_not_created_and_the_user_picks_or_confirms(db: Session, world: World) -> None:
    event = plan(db, world)
    # The resident on file, given without the ID and a birth date a day off: a likely duplicate, not a new record.
    before = db.scalar(select(func.count()).select_from(Patient))
    with pytest.raises(LikelyDuplicates) as exc:
        service.quick_register(db, by=world.doctor, event_id=event.id, client_token="tok-dup-00001", name="刘桂兰",
                               sex="F", birth_date=world.resident.birth_date + timedelta(days=1),
                               village=world.village.id)
    assert world.resident.id in {c.patient_id for c in exc.value.candidates}
    assert db.scalar(select(func.count()).select_from(Patient)) == before
    # The pick comes back with the details the candidates were found for.
    picked = service.quick_register(db, by=world.doctor, event_id=event.id, client_token="tok-dup-00001",
                                    name="刘桂兰", sex="F", birth_date=world.resident.birth_date + timedelta(days=1),
                                    village=world.village.id, patient_id=world.resident.id)
    assert picked.patient_id == world.resident.id and picked.how == "chosen"
    # Another person at the same event, looked at and confirmed different: a new record.
    other = service.quick_register(db, by=world.doctor, event_id=event.id, client_token="tok-dup-00002",
                                   name="刘桂兰", sex="F", birth_date=world.resident.birth_date + timedelta(days=1),
                                   village=world.village.id, confirm_new=True)
    assert other.how == "new" and other.patient_id != world.resident.id
    assert db.scalar(select(func.count()).select_from(Patient)) == before + 1


def test_the_same_client_token_twice_gives_one_attendance(db: Session, world: World) -> None:
    event = plan(db, world)
    args = dict(by=world.doctor, event_id=event.id, client_token="tok-retry-0001", name="周小红", sex="F",
                birth_date=date(1990, 5, 6))
    first = service.quick_register(db, **args)
    db.commit()
    again = service.quick_register(db, **args)
    assert again.id == first.id
    assert db.scalar(select(func.count()).select_from(ScreeningAttendance)) == 1
    assert db.scalar(select(func.count()).select_from(Patient).where(Patient.name == "周小红")) == 1


def test_registration_names_the_missing_fields(db: Session, world: World) -> None:
    event = plan(db, world)
    with pytest.raises(InvalidInput) as exc:
        service.quick_register(db, by=world.doctor, event_id=event.id, client_token="tok-bad-00001", name="",
                               sex="", birth_date=None, resident_id="42102319610412111")
    assert {"name", "sex", "birth_date", "resident_id"} <= fields_of(exc)


# ---------------------------------------------------------------------------- results

def _attend(db: Session, world: World, event_id: int, patient: Patient, token: str) -> ScreeningAttendance:
    return service.quick_register(db, by=world.doctor, event_id=event_id, client_token=token, name=patient.name,
                                  sex=str(patient.sex), birth_date=patient.birth_date, patient_id=patient.id)


def test_an_abnormal_result_makes_a_task_for_the_residents_family_doctor_team(db: Session, world: World) -> None:
    event = plan(db, world)
    attendance = _attend(db, world, event.id, world.resident, "tok-res-00001")
    normal = service.record_result(db, by=world.doctor, attendance_id=attendance.id, service_code="glucose",
                                   values={"value": "5.4", "context": "fasting"})
    assert not normal.abnormal and normal.task_id is None
    high = service.record_result(db, by=world.doctor, attendance_id=attendance.id, service_code="bp",
                                 values={"sbp": "152", "dbp": "94"})
    assert high.abnormal and not high.danger
    task = db.get(ChronicTask, high.task_id)
    assert task.team_id == world.team.id and task.kind == "screening" and task.screening_result_id == high.id
    assert task.due_on == local_today() + timedelta(days=14)
    danger = service.record_result(db, by=world.doctor, attendance_id=attendance.id, service_code="glucose",
                                   values={"value": "17.2", "context": "random"})
    assert danger.danger and db.get(ChronicTask, danger.task_id).due_on == local_today() + timedelta(days=7)
    # Entered again as normal: the finding's open task is cancelled, not left for the team.
    again = service.record_result(db, by=world.doctor, attendance_id=attendance.id, service_code="bp",
                                  values={"sbp": "128", "dbp": "80"})
    assert not again.abnormal and again.task_id is None and task.status == "cancelled"


def test_impossible_values_are_refused_naming_the_field(db: Session, world: World) -> None:
    event = plan(db, world)
    attendance = _attend(db, world, event.id, world.resident, "tok-bad-00002")
    for code, values, wanted in (("bp", {"sbp": "400", "dbp": "80"}, "sbp"), ("bp", {"sbp": "80", "dbp": "120"}, "dbp"),
                                 ("glucose", {"value": "0", "context": "fasting"}, "value"),
                                 ("vision", {"left": "9.9", "right": "5.0"}, "left"),
                                 ("glucose", {"value": "6", "context": "later"}, "context")):
        with pytest.raises(InvalidInput) as exc:
            service.record_result(db, by=world.doctor, attendance_id=attendance.id, service_code=code, values=values)
        assert wanted in fields_of(exc), (code, values)
    with pytest.raises(InvalidInput):
        service.record_result(db, by=world.doctor, attendance_id=attendance.id, service_code="ecg",
                              values={"conclusion": "normal"})  # not offered at this event
    assert db.scalar(select(func.count()).select_from(ScreeningResult)) == 0


def test_a_known_hypertensives_bp_becomes_a_chronic_reading(db: Session, world: World) -> None:
    event = plan(db, world)
    attendance = _attend(db, world, event.id, world.hypertensive, "tok-htn-00001")
    result = service.record_result(db, by=world.doctor, attendance_id=attendance.id, service_code="bp",
                                   values={"sbp": "186", "dbp": "100"})
    reading = db.scalar(select(ChronicReading).where(ChronicReading.patient_id == world.hypertensive.id))
    assert reading.source == "screening" and (reading.sbp, reading.dbp) == (186, 100)
    db.refresh(world.enrolment)
    assert (world.enrolment.last_sbp, world.enrolment.last_dbp) == (186, 100)
    assert world.enrolment.risk_level == 3 and result.danger
    # A resident in no registry gets no chronic reading.
    other = _attend(db, world, event.id, world.resident, "tok-htn-00002")
    service.record_result(db, by=world.doctor, attendance_id=other.id, service_code="bp",
                          values={"sbp": "150", "dbp": "90"})
    assert db.scalar(select(func.count()).select_from(ChronicReading)) == 1


def test_event_counts_add_up(db: Session, world: World) -> None:
    event = plan(db, world)
    a = _attend(db, world, event.id, world.resident, "tok-cnt-00001")
    b = _attend(db, world, event.id, world.hypertensive, "tok-cnt-00002")
    service.record_result(db, by=world.doctor, attendance_id=a.id, service_code="bp", values={"sbp": 120, "dbp": 70})
    service.record_result(db, by=world.doctor, attendance_id=b.id, service_code="bp", values={"sbp": 160, "dbp": 95})
    service.record_result(db, by=world.doctor, attendance_id=b.id, service_code="tcm_pulse",
                          values={"constitution": "qixu"})
    service.set_counts(db, by=world.doctor, event_id=event.id, leaflets_given=600, medicines_given=40,
                       medicines_value_fen=128_000)
    counts = service.event_counts(db, event_id=event.id)
    assert (counts.people_served, counts.abnormal_findings, counts.tasks_made) == (2, 1, 1)
    assert counts.by_service == {"bp": 2, "tcm_pulse": 1} and counts.abnormal_by_service == {"bp": 1}
    assert (counts.leaflets_given, counts.medicines_given, counts.medicines_value_fen) == (600, 40, 128_000)


def test_only_the_events_staff_register_and_see_the_people(db: Session, world: World) -> None:
    event = plan(db, world)
    with pytest.raises(AccessDenied):
        service.quick_register(db, by=world.outsider, event_id=event.id, client_token="tok-out-00001", name="张三",
                               sex="M", birth_date=date(1970, 1, 1))
    a = _attend(db, world, event.id, world.resident, "tok-out-00002")
    db.commit()
    with pytest.raises(AccessDenied):
        service.get_attendance(db, user=world.outsider, event_id=event.id, attendance_id=a.id)
    with pytest.raises(AccessDenied):
        service.record_result(db, by=world.outsider, attendance_id=a.id, service_code="bp",
                              values={"sbp": 120, "dbp": 70})
    assert service.visible_events(db, user=world.outsider) == []
    assert [e.id for e in service.visible_events(db, user=world.bureau)] == [event.id]


# ---------------------------------------------------------------------------- review fixes

def test_a_pick_outside_the_candidates_shown_is_refused_and_opens_no_record(db: Session, world: World) -> None:
    event = plan(db, world)
    assert access.decide(db, user=world.doctor, patient_id=world.resident.id) is None
    # A record picked with details that do not find it (or with no details, or an id that does not exist):
    # 422 naming patient_id, alike whether the record exists or not, and nothing written.
    for details in ({"name": "张三", "sex": "M", "birth_date": date(1970, 1, 1)},
                    {"name": "", "sex": "", "birth_date": None}):
        for chosen in (world.resident.id, 10**6):
            with pytest.raises(InvalidInput) as exc:
                service.quick_register(db, by=world.doctor, event_id=event.id, client_token="tok-pick-00001",
                                       patient_id=chosen, **details)
            assert exc.value.status_code == 422 and fields_of(exc) == {"patient_id"}
    assert db.scalar(select(func.count()).select_from(ScreeningAttendance)) == 0
    # So the event's staff gained no care relationship with that resident.
    assert access.decide(db, user=world.doctor, patient_id=world.resident.id) is None
    # The resident ID given is proof enough for the record that holds it.
    row = service.quick_register(db, by=world.doctor, event_id=event.id, client_token="tok-pick-00002",
                                 resident_id=world.resident_id, name="", sex="", birth_date=None,
                                 patient_id=world.resident.id)
    assert row.patient_id == world.resident.id and row.how == "chosen"


def test_a_team_member_from_another_organisation_runs_the_event_to_the_end(db: Session, world: World) -> None:
    visitor = f.user(db, organisation=world.other_town, username="visiting_doc")
    db.add(TeamMember(team_id=world.team.id, practitioner_id=visitor.practitioner_id))
    db.commit()
    event = plan(db, world)
    assert service.may_run(db, visitor, event)
    row = service.quick_register(db, by=visitor, event_id=event.id, client_token="tok-team-00001",
                                 resident_id=world.resident_id, name="", sex="", birth_date=None)
    result = service.record_result(db, by=visitor, attendance_id=row.id, service_code="bp",
                                   values={"sbp": 120, "dbp": 70})  # not NeedToKnowDenied
    assert result.patient_id == world.resident.id
    assert service.get_attendance(db, user=visitor, event_id=event.id, attendance_id=row.id).id == row.id
    # Another organisation's clinician who is not on the team gains nothing from the attendance.
    assert access.decide(db, user=world.outsider, patient_id=world.resident.id) is None


def test_an_event_team_must_be_the_host_organisations(db: Session, world: World) -> None:
    elsewhere = f.family_team(db, organisation=world.other_town, members=[world.outsider])
    start = utcnow()
    with pytest.raises(InvalidInput) as exc:
        service.plan_event(db, by=world.doctor, plan=service.EventPlan(
            kind="free_clinic", title="义诊", host_organisation_id=world.town.id, starts_at=start,
            ends_at=start + timedelta(hours=4), services=["bp"], team_id=elsewhere.id))
    assert exc.value.status_code == 422 and fields_of(exc) == {"team_id"}


def test_event_numbers_come_from_the_id(db: Session, world: World) -> None:
    first, second = plan(db, world, open_it=False), plan(db, world, open_it=False)
    day = local_today().strftime("%Y%m%d")
    assert first.number == f"SC{day}-{first.id:04d}" and second.number == f"SC{day}-{second.id:04d}"


def test_infinite_and_not_a_number_values_are_refused_naming_the_field(db: Session, world: World) -> None:
    event = plan(db, world, services=["bp", "vision", "bone_density"])
    attendance = _attend(db, world, event.id, world.resident, "tok-inf-00001")
    for code, values, wanted in (("bp", {"sbp": "1e999", "dbp": "80"}, "sbp"),
                                 ("vision", {"left": "nan", "right": "5.0"}, "left"),
                                 ("bone_density", {"t_score": "nan"}, "t_score"),
                                 ("bone_density", {"t_score": "-inf"}, "t_score")):
        with pytest.raises(InvalidInput) as exc:
            service.record_result(db, by=world.doctor, attendance_id=attendance.id, service_code=code, values=values)
        assert exc.value.status_code == 422 and fields_of(exc) == {wanted}, (code, values)
    with pytest.raises(InvalidInput) as exc:  # beyond a PostgreSQL integer
        service.set_counts(db, by=world.doctor, event_id=event.id, leaflets_given=0, medicines_given=0,
                           medicines_value_fen=2**31)
    assert fields_of(exc) == {"medicines_value"}


def test_a_result_entered_again_corrects_its_chronic_reading(db: Session, world: World) -> None:
    event = plan(db, world)
    attendance = _attend(db, world, event.id, world.hypertensive, "tok-again-0001")
    first = service.record_result(db, by=world.doctor, attendance_id=attendance.id, service_code="bp",
                                  values={"sbp": "186", "dbp": "100"})  # mistyped
    again = service.record_result(db, by=world.doctor, attendance_id=attendance.id, service_code="bp",
                                  values={"sbp": "136", "dbp": "84"})
    readings = db.scalars(select(ChronicReading).where(ChronicReading.patient_id == world.hypertensive.id)).all()
    assert [(r.sbp, r.dbp) for r in readings] == [(136, 84)]
    assert again.id == first.id and again.reading_id == readings[0].id
    db.refresh(world.enrolment)
    assert (world.enrolment.last_sbp, world.enrolment.last_dbp) == (136, 84)


def test_the_report_sheet_does_not_run_typed_formulas(db: Session, world: World) -> None:
    import io

    from openpyxl import load_workbook

    start = utcnow()
    event = service.plan_event(db, by=world.doctor, plan=service.EventPlan(
        kind="free_clinic", title="=HYPERLINK(\"http://x\",\"义诊\")", host_organisation_id=world.town.id,
        starts_at=start, ends_at=start + timedelta(hours=4), services=["bp"], place="+1+1"))
    sheet = load_workbook(io.BytesIO(service.report_sheet(db, event_id=event.id))).active
    cells = {row[0].value: row[1] for row in sheet.iter_rows() if row[0].value}
    assert cells["活动 event"].data_type == "s" and cells["活动 event"].value.startswith("'=")
    assert cells["地点 place"].value == "'+1+1"
