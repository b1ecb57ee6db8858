"""The repository's rules as a lab, the HL7 interface and the diagnosis centre meet them."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from healthrelay.audit.models import AuditEvent
from healthrelay.core.db import utcnow
from healthrelay.core.errors import AccessDenied, InvalidInput, NeedToKnowDenied
from healthrelay.recognition.models import EqaRecord
from healthrelay.results import service
from healthrelay.results.models import LabResult
from healthrelay.teleconsult.models import CriticalResult
from tests.results.conftest import ResultsWorld, count_exams, count_labs, exam_in, lab_in


def fields_of(exc: pytest.ExceptionInfo[InvalidInput]) -> dict[str, str]:
    return {e["field"]: e.get("code", "") for e in exc.value.field_errors}


def test_an_unknown_test_code_is_refused_and_nothing_is_stored(db: Session, world: ResultsWorld) -> None:
    with pytest.raises(InvalidInput) as exc:
        service.record_lab_result(db, data=lab_in(world, test_code="XYZ999"), source="hl7", by=None)
    assert fields_of(exc) == {"test_code": "unknown_code"}
    db.rollback()
    assert count_labs(db) == 0


def test_senders_codes_resolve_to_ours(db: Session, world: ResultsWorld) -> None:
    # LOINC and a common LIS alias, in any case, end up under the local code, so trends group them.
    by_loinc = service.record_lab_result(db, data=lab_in(world, test_code="2823-3", value="4.1"), source="hl7",
                                         by=None)
    by_alias = service.record_lab_result(db, data=lab_in(world, test_code="gpt", value="33"), source="hl7", by=None)
    assert (by_loinc.test_code, by_loinc.test_name, by_loinc.unit) == ("K", "钾", "mmol/L")
    assert (by_alias.test_code, by_alias.reference_range) == ("ALT", "9-50")


def test_a_future_report_time_is_refused(db: Session, world: ResultsWorld) -> None:
    with pytest.raises(InvalidInput) as exc:
        service.record_lab_result(db, data=lab_in(world, reported_at=utcnow() + timedelta(hours=2)), source="hl7",
                                  by=None)
    assert fields_of(exc) == {"reported_at": "in_future"}
    with pytest.raises(InvalidInput) as exc:
        service.record_exam_result(db, data=exam_in(world, performed_at=utcnow() + timedelta(days=1),
                                                    reported_at=utcnow()), source="hl7", by=None)
    assert "performed_at" in fields_of(exc)


def test_a_numeric_test_needs_a_number_but_a_qualitative_one_takes_text(db: Session, world: ResultsWorld) -> None:
    with pytest.raises(InvalidInput) as exc:
        service.record_lab_result(db, data=lab_in(world, value="偏高"), source="hl7", by=None)
    assert fields_of(exc) == {"value": "not_numeric"}
    positive = service.record_lab_result(db, data=lab_in(world, test_code="HBSAG", value="阳性"), source="hl7",
                                         by=None)
    negative = service.record_lab_result(db, data=lab_in(world, test_code="HBSAG", value="阴性"), source="hl7",
                                         by=None)
    assert (positive.value_numeric, positive.abnormal_flag) == (None, "A")
    assert negative.abnormal_flag == "N"


def test_unknown_patient_and_organisation_are_named(db: Session, world: ResultsWorld) -> None:
    with pytest.raises(InvalidInput) as exc:
        service.record_lab_result(db, data=lab_in(world, patient_id=999999, organisation_id=888888,
                                                  ordering_organisation_id=777777), source="hl7", by=None)
    assert fields_of(exc) == {"patient_id": "unknown_patient", "organisation_id": "unknown_organisation",
                              "ordering_organisation_id": "unknown_organisation"}


def test_the_same_filler_number_twice_is_stored_once(db: Session, world: ResultsWorld) -> None:
    first = service.record_lab_result(db, data=lab_in(world, filler_number="L20261201-7", value="5.0"),
                                      source="hl7", by=None)
    again = service.record_lab_result(db, data=lab_in(world, filler_number="L20261201-7", value="5.0"),
                                      source="hl7", by=None)
    other_test = service.record_lab_result(db, data=lab_in(world, filler_number="L20261201-7", test_code="K",
                                                           value="4.0"), source="hl7", by=None)
    db.commit()
    assert again.id == first.id and other_test.id != first.id
    assert count_labs(db) == 2


def test_a_filler_number_of_another_patient_is_refused(db: Session, world: ResultsWorld) -> None:
    from tests import factories as f

    other = f.patient(db, name="李建国", registered_at=world.tele.town)
    service.record_lab_result(db, data=lab_in(world, filler_number="F9", value="5.0"), source="hl7", by=None)
    with pytest.raises(InvalidInput) as exc:
        service.record_lab_result(db, data=lab_in(world, patient_id=other.id, filler_number="F9", value="9.0",
                                                  status="corrected"), source="hl7", by=None)
    assert fields_of(exc) == {"filler_number": "filler_number_clash"}
    assert db.execute(select(LabResult.value_text)).scalars().all() == ["5.0"]


def test_a_correction_updates_the_row_and_the_audit_keeps_the_old_value(db: Session, world: ResultsWorld) -> None:
    row = service.record_lab_result(db, data=lab_in(world, filler_number="F1", value="7.9"), source="hl7", by=None)
    db.commit()
    assert row.abnormal_flag == "H"
    corrected = service.record_lab_result(db, data=lab_in(world, filler_number="F1", value="5.9", status="corrected"),
                                          source="hl7", by=None)
    db.commit()
    assert corrected.id == row.id and count_labs(db) == 1
    db.refresh(row)
    assert (row.value_text, row.value_numeric, row.abnormal_flag, row.status) == ("5.9", 5.9, "N", "corrected")
    event = db.execute(select(AuditEvent).where(AuditEvent.action == "results.lab.correct")).scalar_one()
    assert event.detail["old"]["value_text"] == "7.9" and event.detail["new"]["value_text"] == "5.9"
    assert event.resource == f"lab_result:{row.id}"


def test_a_final_result_replaces_its_preliminary_one(db: Session, world: ResultsWorld) -> None:
    row = service.record_lab_result(db, data=lab_in(world, filler_number="F2", value="6.5", status="preliminary"),
                                    source="hl7", by=None)
    final = service.record_lab_result(db, data=lab_in(world, filler_number="F2", value="6.6"), source="hl7", by=None)
    assert final.id == row.id and (row.status, row.value_text) == ("final", "6.6")
    # A plain resend of a final result changes nothing.
    service.record_lab_result(db, data=lab_in(world, filler_number="F2", value="9.9"), source="hl7", by=None)
    assert row.value_text == "6.6"


@pytest.mark.parametrize(("code", "value", "flag"), [
    ("GLU", "7.2", "H"), ("GLU", "3.5", "L"), ("GLU", "5.0", "N"), ("GLU", "6.1", "N"),
    ("TC", "5.2", "H"), ("TC", "4.9", "N"), ("HDL", "0.9", "L"), ("CTNI", "<0.01", "N"), ("INR", "2.5", "H"),
])
def test_the_abnormal_flag_is_computed_from_the_reference_range(db: Session, world: ResultsWorld, code: str,
                                                                value: str, flag: str) -> None:
    row = service.record_lab_result(db, data=lab_in(world, test_code=code, value=value), source="hl7", by=None)
    assert (row.abnormal_flag, row.critical) == (flag, False)


def test_the_senders_reference_range_and_flag_win(db: Session, world: ResultsWorld) -> None:
    own_range = service.record_lab_result(db, data=lab_in(world, value="6.3", reference_range="3.9-6.4"),
                                          source="hl7", by=None)
    own_flag = service.record_lab_result(db, data=lab_in(world, value="5.0", abnormal_flag="h"), source="hl7",
                                         by=None)
    assert own_range.abnormal_flag == "N" and own_flag.abnormal_flag == "H"
    with pytest.raises(InvalidInput) as exc:
        service.record_lab_result(db, data=lab_in(world, abnormal_flag="X"), source="hl7", by=None)
    assert "abnormal_flag" in fields_of(exc)


def test_our_critical_limits_do_not_apply_to_another_unit(db: Session, world: ResultsWorld) -> None:
    # 450 mg/dL is a glucose of 25 mmol/L: we cannot judge it against mmol/L limits, so only the sender's
    # flag could make it critical.
    row = service.record_lab_result(db, data=lab_in(world, value="450", unit="mg/dL"), source="hl7", by=None)
    assert (row.critical, row.unit, row.reference_range) == (False, "mg/dL", "")


def test_an_examination_finds_its_code_from_modality_and_body_part(db: Session, world: ResultsWorld) -> None:
    assert service.exam_code_for(db, modality="CT", body_part="BRAIN") == "CT_HEAD"
    assert service.exam_code_for(db, modality="DX", body_part="CHEST") == "DR_CHEST"
    assert service.exam_code_for(db, modality="CT", body_part="KNEE") == "CT_OTHER"
    assert service.exam_code_for(db, modality="XA", body_part="HEART") == ""
    row = service.record_exam_result(db, data=exam_in(world, exam_code="", modality="US", body_part="abdomen"),
                                     source="hl7", by=None)
    assert (row.exam_code, row.category, row.exam_name) == ("US_ABD", "ultrasound", "腹部超声")
    with pytest.raises(InvalidInput) as exc:
        service.record_exam_result(db, data=exam_in(world, exam_code="PET_WHOLE"), source="hl7", by=None)
    assert fields_of(exc) == {"exam_code": "unknown_code"}


def test_a_resent_examination_is_stored_once(db: Session, world: ResultsWorld) -> None:
    first = service.record_exam_result(db, data=exam_in(world, filler_number="R9"), source="hl7", by=None)
    again = service.record_exam_result(db, data=exam_in(world, filler_number="R9"), source="hl7", by=None)
    changed = service.record_exam_result(db, data=exam_in(world, filler_number="R9", impression="右下肺炎"),
                                         source="hl7", by=None)
    db.commit()
    assert first.id == again.id == changed.id and count_exams(db) == 1
    assert first.impression == "右下肺炎"


def test_the_recognition_mark_comes_from_the_labs_quality_assessment(db: Session, world: ResultsWorld) -> None:
    year = utcnow().year
    db.add(EqaRecord(organisation_id=world.tele.county.id, category="chemistry", scope="province", year=year,
                     passed=True))
    db.add(EqaRecord(organisation_id=world.tele.county.id, modality="CT", scope="national", year=year, passed=True))
    db.flush()
    county = service.record_lab_result(db, data=lab_in(world, organisation_id=world.tele.county.id), source="hl7",
                                       by=None)
    town = service.record_lab_result(db, data=lab_in(world), source="hl7", by=None)
    ct = service.record_exam_result(db, data=exam_in(world, organisation_id=world.tele.county.id, exam_code="CT_CHEST"),
                                    source="hl7", by=None)
    assert (county.recognition_scope, town.recognition_scope, ct.recognition_scope) == ("province", "", "national")


def test_only_the_performing_organisations_staff_enter_results(db: Session, world: ResultsWorld) -> None:
    w = world.tele
    with pytest.raises(AccessDenied):  # a township clinician entering a result as the county lab
        service.record_lab_result(db, data=lab_in(world, organisation_id=w.county.id), source="entered",
                                  by=world.town_lab)
    stranger = service.record_lab_result  # the outsider's own lab, but no care relationship with the patient
    with pytest.raises(NeedToKnowDenied):
        stranger(db, data=lab_in(world, organisation_id=w.outsider.id), source="entered", by=w.outsider_doctor)
    db.rollback()
    row = service.record_lab_result(db, data=lab_in(world), source="entered", by=world.town_lab)
    assert (row.source, row.entered_by_user_id) == ("entered", world.town_lab.id)
    recorded = db.execute(select(AuditEvent).where(AuditEvent.action == "results.lab.record")).scalar_one()
    assert recorded.user_id == world.town_lab.id and recorded.patient_id == w.patient.id


# --- critical values: these call teleconsult.critical.open_for_lab (helper O) -------------------------

@pytest.mark.parametrize(("code", "value", "flag"), [
    ("K", "6.8", "HH"), ("K", "2.5", "LL"), ("GLU", "23.0", "HH"), ("HGB", "45", "LL"), ("PLT", "20", "LL"),
    ("CTNI", "0.52", "HH"), ("INR", "4.6", "HH"),
])
def test_a_value_beyond_its_critical_limit_opens_the_critical_loop(db: Session, world: ResultsWorld, code: str,
                                                                   value: str, flag: str) -> None:
    row = service.record_lab_result(db, data=lab_in(world, test_code=code, value=value), source="hl7", by=None)
    db.commit()
    assert (row.critical, row.abnormal_flag) == (True, flag)
    opened = db.execute(select(CriticalResult).where(CriticalResult.patient_id == world.tele.patient.id)).scalars()
    assert [c.lab_result_id for c in opened] == [row.id]


def test_a_senders_critical_flag_makes_a_result_critical(db: Session, world: ResultsWorld) -> None:
    row = service.record_lab_result(db, data=lab_in(world, value="450", unit="mg/dL", abnormal_flag="HH"),
                                    source="hl7", by=None)
    assert row.critical is True
    assert db.execute(select(LabResult.critical).where(LabResult.id == row.id)).scalar_one() is True


def test_open_results_pages_hear_of_a_new_result_without_names(db: Session, world: ResultsWorld,
                                                               database_url: str) -> None:
    import asyncio
    from concurrent.futures import ThreadPoolExecutor

    from healthrelay.notifications import live

    w = world.tele
    live.ensure_listener(database_url)
    topics = [f"org:{w.county.id}", f"org:{w.town.id}", f"org:{w.town_b.id}", f"org:{w.outsider.id}"]

    async def run() -> list[tuple[str, dict]]:
        sub = live.bus.subscribe(topics)
        try:
            # performed at township B, for a patient registered at the township and the county
            service.record_lab_result(db, data=lab_in(world, organisation_id=w.town_b.id), source="hl7", by=None)
            db.commit()
            got = []
            while True:
                try:
                    got.append(await sub.get(timeout=2))
                except TimeoutError:
                    return got
        finally:
            live.bus.unsubscribe(sub)

    with ThreadPoolExecutor(1) as pool:
        got = pool.submit(asyncio.run, run()).result()
    heard = {topic for topic, event in got if event["type"] == "results.changed"}
    assert heard == {f"org:{w.county.id}", f"org:{w.town.id}", f"org:{w.town_b.id}"}
    assert all(event.get("patient_id") == w.patient.id and "王" not in str(event) for _, event in got)
