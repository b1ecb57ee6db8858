"""Recognition rules as the service applies them: the HR mark, validity windows, priors from any member, the
decision at ordering, HL7 orders, and the repeats report's SQL (run on SQLite and PostgreSQL)."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from healthrelay.core.db import utcnow
from healthrelay.core.errors import AccessDenied, InvalidInput
from healthrelay.recognition import service
from healthrelay.recognition.models import ClinicalOrder, RecognitionDecision
from healthrelay.recognition.schemas import ExternalOrderIn, OrderIn
from tests import factories as f
from tests.recognition.conftest import RecWorld

SHANGHAI = ZoneInfo("Asia/Shanghai")


def _ago(**kw: float) -> datetime:
    return utcnow() - timedelta(**kw)


def _year() -> int:
    return utcnow().astimezone(SHANGHAI).year


def _count(db: Session, model: type) -> int:
    return db.execute(select(func.count()).select_from(model)).scalar_one()


# --- the HR mark ---------------------------------------------------------------------------------

def test_mark_follows_a_passed_assessment_of_the_modality_category_or_code(db: Session, rec: RecWorld) -> None:
    now = utcnow()
    assert service.mark_for(db, organisation_id=rec.town.id, code="CT_HEAD", at=now) == "alliance"
    assert service.mark_for(db, organisation_id=rec.town.id, code="CTHEAD", at=now) == "alliance"  # an alias
    assert service.mark_for(db, organisation_id=rec.town.id, code="ALT", at=now) == "province"  # chemistry
    # No assessment of MR, haematology, or anything at the other township.
    assert service.mark_for(db, organisation_id=rec.town.id, code="MR_HEAD", at=now) == ""
    assert service.mark_for(db, organisation_id=rec.town.id, code="WBC", at=now) == ""
    assert service.mark_for(db, organisation_id=rec.town_b.id, code="CT_HEAD", at=now) == ""


def test_a_failed_assessment_gives_no_mark(db: Session, rec: RecWorld) -> None:
    f.eqa_record(db, organisation=rec.town_b, scope="national", modality="US", passed=False)
    assert service.mark_for(db, organisation_id=rec.town_b.id, code="US_ABD", at=utcnow()) == ""
    # A failed test outweighs its passed category at the same scope ...
    f.eqa_record(db, organisation=rec.town, scope="province", code="ALT", passed=False)
    assert service.mark_for(db, organisation_id=rec.town.id, code="ALT", at=utcnow()) == ""
    assert service.mark_for(db, organisation_id=rec.town.id, code="AST", at=utcnow()) == "province"
    # ... but a pass at another scope still counts.
    f.eqa_record(db, organisation=rec.town, scope="alliance", code="ALT")
    assert service.mark_for(db, organisation_id=rec.town.id, code="ALT", at=utcnow()) == "alliance"


def test_the_assessment_counts_for_its_own_year_only(db: Session, rec: RecWorld) -> None:
    f.eqa_record(db, organisation=rec.town_b, scope="national", modality="DR", year=_year() - 1)
    assert service.mark_for(db, organisation_id=rec.town_b.id, code="DR_CHEST", at=utcnow()) == ""
    last_year = datetime(_year() - 1, 6, 1, tzinfo=UTC)
    assert service.mark_for(db, organisation_id=rec.town_b.id, code="DR_CHEST", at=last_year) == "national"
    # The year is Shanghai's: 1 January 00:30 in Shanghai is still 31 December in UTC.
    new_year = datetime(_year(), 1, 1, 0, 30, tzinfo=SHANGHAI)
    assert service.mark_for(db, organisation_id=rec.town_b.id, code="DR_CHEST", at=new_year) == ""


def test_the_widest_passed_scope_wins(db: Session, rec: RecWorld) -> None:
    f.eqa_record(db, organisation=rec.county, scope="alliance", modality="CT")
    f.eqa_record(db, organisation=rec.county, scope="province", modality="CT")
    assert service.mark_for(db, organisation_id=rec.county.id, code="CT_CHEST", at=utcnow()) == "province"
    f.eqa_record(db, organisation=rec.county, scope="national", code="CT_CHEST")
    assert service.mark_for(db, organisation_id=rec.county.id, code="CT_CHEST", at=utcnow()) == "national"
    assert service.mark_for(db, organisation_id=rec.county.id, code="CT_HEAD", at=utcnow()) == "province"


def test_recording_an_assessment_checks_who_and_what(db: Session, rec: RecWorld) -> None:
    data = service.EqaInput(organisation_id=rec.town_b.id, scope="national", year=_year(), passed=True, code="CTNI")
    with pytest.raises(AccessDenied):
        service.record_eqa(db, by=rec.town_admin, data=data)
    with pytest.raises(InvalidInput) as bad:
        service.record_eqa(db, by=rec.alliance_admin, data=service.EqaInput(
            organisation_id=rec.town_b.id, scope="planet", year=_year(), passed=True, code="NOPE", category="x"))
    assert {e["field"] for e in bad.value.field_errors} == {"scope", "code", "category"}
    with pytest.raises(InvalidInput) as typo:
        service.record_eqa(db, by=rec.alliance_admin, data=service.EqaInput(
            organisation_id=rec.town_b.id, scope="national", year=_year(), passed=True, modality="XR"))
    assert typo.value.field_errors[0]["code"] == "unknown_modality"
    service.record_eqa(db, by=rec.alliance_admin, data=data)
    assert service.mark_for(db, organisation_id=rec.town_b.id, code="TNI", at=utcnow()) == "national"


# --- validity windows and priors ----------------------------------------------------------------

def _codes(priors: list[service.Prior]) -> list[tuple[str, int]]:
    return [(p.kind, p.id) for p in priors]


def test_an_electrolyte_eight_days_old_is_not_offered_a_six_day_one_is(db: Session, rec: RecWorld) -> None:
    old = f.lab_result(db, patient=rec.patient, organisation=rec.town, code="K", value="4.1", reported_at=_ago(days=8))
    fresh = f.lab_result(db, patient=rec.patient, organisation=rec.town, code="K", value="4.3",
                         reported_at=_ago(days=6))
    assert old.recognition_scope == fresh.recognition_scope == "province"
    priors = service.find_priors(db, user=rec.county_doctor, patient_id=rec.patient.id, code="K")
    assert _codes(priors) == [("lab", fresh.id)]
    assert priors[0].organisation_name == "东山镇卫生院" and priors[0].recognition_mark == "省域HR"
    assert priors[0].value == "4.3 mmol/L"


def test_hba1c_59_days_old_is_offered_61_is_not(db: Session, rec: RecWorld) -> None:
    ok = f.lab_result(db, patient=rec.patient, organisation=rec.town, code="HBA1C", value="6.8",
                      reported_at=_ago(days=59))
    f.lab_result(db, patient=rec.patient, organisation=rec.town, code="HBA1C", value="7.2", reported_at=_ago(days=61))
    priors = service.find_priors(db, user=rec.county_doctor, patient_id=rec.patient.id, code="A1C")
    assert _codes(priors) == [("lab", ok.id)]


def test_windows_are_data(db: Session, rec: RecWorld) -> None:
    """A per-code row beats its category (glucose 7 days against chemistry's 30); editing a row changes it."""
    from healthrelay.recognition.models import RecognitionValidity

    f.lab_result(db, patient=rec.patient, organisation=rec.town, code="GLU", value="5.6", reported_at=_ago(days=10))
    alt = f.lab_result(db, patient=rec.patient, organisation=rec.town, code="ALT", value="30",
                       reported_at=_ago(days=25))
    assert service.find_priors(db, user=rec.county_doctor, patient_id=rec.patient.id, code="GLU") == []
    assert _codes(service.find_priors(db, user=rec.county_doctor, patient_id=rec.patient.id, code="ALT")) == [
        ("lab", alt.id)]
    row = db.execute(select(RecognitionValidity).where(RecognitionValidity.category == "chemistry")).scalar_one()
    row.days = 20
    db.flush()
    assert service.find_priors(db, user=rec.county_doctor, patient_id=rec.patient.id, code="ALT") == []


def test_priors_come_from_any_member_marked_final_and_of_this_patient(db: Session, rec: RecWorld) -> None:
    f.eqa_record(db, organisation=rec.outsider, scope="national", modality="CT")
    town = f.exam_result(db, patient=rec.patient, organisation=rec.town, code="CT_HEAD", reported_at=_ago(days=5),
                         impression="头颅CT平扫未见异常", study_instance_uid="1.2.3.4")
    outside = f.exam_result(db, patient=rec.patient, organisation=rec.outsider, code="CT_HEAD",
                            reported_at=_ago(days=2))
    unmarked = f.exam_result(db, patient=rec.patient, organisation=rec.town_b, code="CT_HEAD",
                             reported_at=_ago(days=1))
    f.exam_result(db, patient=rec.other_patient, organisation=rec.town, code="CT_HEAD", reported_at=_ago(days=1))
    f.exam_result(db, patient=rec.patient, organisation=rec.town, code="CT_CHEST", reported_at=_ago(days=1))
    assert unmarked.recognition_scope == ""
    priors = service.find_priors(db, user=rec.county_doctor, patient_id=rec.patient.id, code="CT_HEAD")
    assert _codes(priors) == [("exam", outside.id), ("exam", town.id)]
    assert [p.recognition_mark for p in priors] == ["全国HR", "医共体HR"]
    assert priors[1].value == "头颅CT平扫未见异常"
    assert priors[1].images_link == "/imaging/studies/1.2.3.4/viewer"
    assert priors[1].link == f"/results/exam/{town.id}"


def test_preliminary_results_are_not_offered(db: Session, rec: RecWorld) -> None:
    f.lab_result(db, patient=rec.patient, organisation=rec.town, code="ALT", value="30", reported_at=_ago(days=1),
                 status="preliminary")
    assert service.find_priors(db, user=rec.county_doctor, patient_id=rec.patient.id, code="ALT") == []


def test_priors_need_a_care_relationship(db: Session, rec: RecWorld) -> None:
    from healthrelay.core.errors import NeedToKnowDenied

    with pytest.raises(NeedToKnowDenied):
        service.find_priors(db, user=rec.outsider_doctor, patient_id=rec.patient.id, code="CT_HEAD")


# --- ordering ------------------------------------------------------------------------------------

def _order(rec: RecWorld, **kw: object) -> OrderIn:
    values: dict[str, object] = {"patient_id": rec.patient.id, "code": "CT_HEAD"}
    values.update(kw)
    return OrderIn(**values)  # type: ignore[arg-type]


def test_an_order_without_priors_is_simply_placed(db: Session, rec: RecWorld) -> None:
    outcome = service.place_order(db, by=rec.county_doctor, data=_order(rec))
    assert outcome.order.status == "placed" and outcome.decision is None
    assert outcome.order.number.startswith("JC") and outcome.order.ordering_organisation_id == rec.county.id


def test_with_priors_a_decision_is_needed(db: Session, rec: RecWorld) -> None:
    prior = f.exam_result(db, patient=rec.patient, organisation=rec.town, code="CT_HEAD", reported_at=_ago(days=5))
    with pytest.raises(service.DecisionRequired) as needed:
        service.place_order(db, by=rec.county_doctor, data=_order(rec))
    assert [p.id for p in needed.value.priors] == [prior.id]
    assert needed.value.to_dict()["priors"][0]["recognition_mark"] == "医共体HR"
    with pytest.raises(InvalidInput) as no_reason:
        service.place_order(db, by=rec.county_doctor, data=_order(rec, decision="reorder"))
    assert no_reason.value.field_errors[0]["field"] == "reason_code"
    with pytest.raises(InvalidInput) as no_note:
        service.place_order(db, by=rec.county_doctor, data=_order(rec, decision="reorder",
                                                                  reason_code="physician_judgement"))
    assert no_note.value.field_errors[0]["field"] == "reason_note"
    with pytest.raises(InvalidInput) as unknown:
        service.place_order(db, by=rec.county_doctor, data=_order(rec, decision="reorder", reason_code="boredom"))
    assert unknown.value.field_errors[0]["code"] == "unknown_reason"
    assert _count(db, ClinicalOrder) == 0


def test_reorder_with_a_reason_is_recorded_as_a_repeat_of_that_prior(db: Session, rec: RecWorld) -> None:
    prior = f.exam_result(db, patient=rec.patient, organisation=rec.town, code="CT_HEAD", reported_at=_ago(days=5))
    outcome = service.place_order(db, by=rec.county_doctor, data=_order(
        rec, decision="reorder", reason_code="condition_changed", reason_note="意识障碍加重 / worse consciousness"))
    d = outcome.decision
    assert d is not None and d.outcome == "repeated" and d.prior_exam_result_id == prior.id
    assert d.reason_code == "condition_changed" and d.prior_organisation_id == rec.town.id
    assert outcome.order.status == "placed"


def test_using_the_prior_satisfies_the_order_and_saves_its_price(db: Session, rec: RecWorld) -> None:
    older = f.exam_result(db, patient=rec.patient, organisation=rec.town, code="CT_HEAD", reported_at=_ago(days=9))
    f.exam_result(db, patient=rec.patient, organisation=rec.town, code="CT_HEAD", reported_at=_ago(days=3))
    outcome = service.place_order(db, by=rec.county_doctor, data=_order(rec, decision="use_prior",
                                                                      prior_ref=f"exam:{older.id}"))
    assert outcome.order.status == "satisfied"
    assert outcome.decision is not None and outcome.decision.outcome == "recognised"
    assert outcome.decision.prior_exam_result_id == older.id and outcome.decision.price_fen == 20000
    with pytest.raises(InvalidInput) as wrong:
        service.place_order(db, by=rec.county_doctor, data=_order(rec, decision="use_prior", prior_ref="exam:99999"))
    assert wrong.value.field_errors[0]["field"] == "prior_ref"


def test_unknown_code_and_non_clinicians(db: Session, rec: RecWorld) -> None:
    with pytest.raises(InvalidInput) as bad:
        service.place_order(db, by=rec.county_doctor, data=_order(rec, code="XRAY_OF_SOUL"))
    assert bad.value.field_errors[0] == {"field": "code", "code": "unknown_code",
                                         "message": bad.value.field_errors[0]["message"]}
    with pytest.raises(AccessDenied):
        service.place_order(db, by=rec.county_admin, data=_order(rec))


# --- HL7 orders ----------------------------------------------------------------------------------

def _external(rec: RecWorld, **kw: object) -> ExternalOrderIn:
    values: dict[str, object] = {"patient_id": rec.patient.id, "ordering_organisation_id": rec.county.id,
                                 "code": "CT_HEAD", "placer_number": "HIS-0001", "ordered_at": utcnow(),
                                 "ordering_provider": "张医生"}
    values.update(kw)
    return ExternalOrderIn(**values)  # type: ignore[arg-type]


def test_external_orders_are_idempotent_on_the_placer_number(db: Session, rec: RecWorld) -> None:
    first = service.record_external_order(db, data=_external(rec), by=None, hl7_message_id=7)
    again = service.record_external_order(db, data=_external(rec), by=None, hl7_message_id=8)
    assert again.id == first.id and _count(db, ClinicalOrder) == 1
    assert first.source == "hl7" and first.hl7_message_id == 7 and first.ordering_provider == "张医生"
    # The same placer number at another organisation is another order.
    service.record_external_order(db, data=_external(rec, ordering_organisation_id=rec.town.id), by=None)
    assert _count(db, ClinicalOrder) == 2


def test_external_repeat_is_placed_and_flagged(db: Session, rec: RecWorld) -> None:
    prior = f.exam_result(db, patient=rec.patient, organisation=rec.town, code="CT_HEAD", reported_at=_ago(days=5))
    order = service.record_external_order(db, data=_external(rec), by=None)
    d = service.decision_of(db, order)
    assert order.status == "placed" and d is not None and d.outcome == "unreasoned"
    assert d.prior_exam_result_id == prior.id
    assert service.flagged_orders(db, organisation_id=rec.county.id) == [(order.number, order.id, "CT_HEAD")]
    # The HIS may name a reason from the list.
    named = service.record_external_order(db, data=_external(rec, placer_number="HIS-0002", reason="emergency"),
                                          by=None)
    assert service.decision_of(db, named).outcome == "repeated"  # type: ignore[union-attr]
    # The ordering organisation records the reason for the flagged one afterwards.
    resolved = service.resolve_flag(db, by=rec.county_doctor, order_id=order.id, reason_code="patient_request")
    assert resolved.outcome == "repeated" and resolved.resolved_by_user_id == rec.county_doctor.id
    assert service.flagged_orders(db, organisation_id=rec.county.id) == []


def test_external_order_errors_and_cancel(db: Session, rec: RecWorld) -> None:
    with pytest.raises(InvalidInput) as unknown:
        service.record_external_order(db, data=_external(rec, code="NOT_A_TEST"), by=None)
    assert unknown.value.field_errors[0]["field"] == "code" and unknown.value.field_errors[0]["code"] == "unknown_code"
    with pytest.raises(InvalidInput) as no_order:
        service.record_external_order(db, data=_external(rec, action="cancel", placer_number="HIS-404"), by=None)
    assert no_order.value.field_errors[0]["code"] == "unknown_order"
    with pytest.raises(InvalidInput):
        service.record_external_order(db, data=_external(rec, patient_id=999999), by=None)
    with pytest.raises(InvalidInput):
        service.record_external_order(db, data=_external(rec, ordered_at=utcnow() + timedelta(days=2)), by=None)
    assert _count(db, ClinicalOrder) == 0
    order = service.record_external_order(db, data=_external(rec), by=None)
    cancelled = service.record_external_order(db, data=_external(rec, action="cancel", reason="患者拒绝"), by=None)
    assert cancelled.id == order.id and cancelled.status == "cancelled" and cancelled.cancel_reason == "患者拒绝"


def test_external_priors_are_judged_at_the_order_time(db: Session, rec: RecWorld) -> None:
    f.exam_result(db, patient=rec.patient, organisation=rec.town, code="CT_HEAD", reported_at=_ago(days=1))
    # Ordered three days ago: the CT of yesterday did not exist yet.
    order = service.record_external_order(db, data=_external(rec, ordered_at=_ago(days=3)), by=None)
    assert service.decision_of(db, order) is None


# --- the repeats report --------------------------------------------------------------------------

def _decide(db: Session, rec: RecWorld, *, by: object, decision: str, at: datetime, code: str = "CT_HEAD",
            reason: str = "emergency") -> RecognitionDecision:
    outcome = service.place_order(db, by=by, data=_order(rec, code=code, decision=decision,  # type: ignore[arg-type]
                                                         reason_code=reason if decision == "reorder" else ""))
    assert outcome.decision is not None
    outcome.decision.decided_at = at
    db.flush()
    return outcome.decision


def test_repeats_report_counts_per_organisation_and_shanghai_month(db: Session, rec: RecWorld) -> None:
    f.exam_result(db, patient=rec.patient, organisation=rec.town, code="CT_HEAD", reported_at=_ago(days=2))
    f.lab_result(db, patient=rec.patient, organisation=rec.town, code="ALT", value="30", reported_at=_ago(days=2))
    march = datetime(2026, 3, 10, 4, 0, tzinfo=UTC)
    # 31 March 17:00 UTC is 1 April 01:00 in Shanghai: an April decision.
    april_in_shanghai = datetime(2026, 3, 31, 17, 0, tzinfo=UTC)
    _decide(db, rec, by=rec.county_doctor, decision="use_prior", at=march)
    _decide(db, rec, by=rec.county_doctor, decision="use_prior", at=march, code="ALT")
    _decide(db, rec, by=rec.county_doctor, decision="reorder", at=march)
    _decide(db, rec, by=rec.county_doctor, decision="reorder", at=april_in_shanghai, reason="patient_request")
    _decide(db, rec, by=rec.town_doctor, decision="use_prior", at=april_in_shanghai)
    db.commit()
    report = service.repeats_report(db, user=rec.alliance_admin, start=date(2026, 3, 1), end=date(2026, 4, 30))
    cells = {(r.organisation_name, r.month): r for r in report.rows}
    m = cells[("测试县人民医院", "2026-03")]
    assert (m.recognised, m.repeated, m.unreasoned, m.saved_fen) == (2, 1, 0, 20000 + 500)
    assert m.repeats_by_reason == {"emergency": 1} and m.recognition_rate == pytest.approx(2 / 3)
    a = cells[("测试县人民医院", "2026-04")]
    assert (a.recognised, a.repeated) == (0, 1) and a.repeats_by_reason == {"patient_request": 1}
    assert cells[("东山镇卫生院", "2026-04")].recognised == 1
    assert (report.totals.recognised, report.totals.repeated, report.totals.saved_fen) == (3, 2, 40500)
    assert [(x.month, x.recognised, x.repeated) for x in report.by_month] == [("2026-03", 2, 1), ("2026-04", 1, 1)]
    # March alone leaves April's out; the township's admin sees the township only and no other.
    march_only = service.repeats_report(db, user=rec.bureau, start=date(2026, 3, 1), end=date(2026, 3, 31))
    assert march_only.totals.decided == 3
    own = service.repeats_report(db, user=rec.town_admin, start=date(2026, 3, 1), end=date(2026, 4, 30))
    assert [(r.organisation_id, r.recognised) for r in own.rows] == [(rec.town.id, 1)]
    with pytest.raises(AccessDenied):
        service.repeats_report(db, user=rec.town_admin, start=date(2026, 3, 1), end=date(2026, 4, 30),
                               organisation_id=rec.county.id)
    with pytest.raises(AccessDenied):
        service.repeats_report(db, user=rec.county_doctor, start=date(2026, 3, 1), end=date(2026, 4, 30))


def test_a_cancelled_hl7_repeat_is_neither_flagged_nor_counted(db: Session, rec: RecWorld) -> None:
    f.exam_result(db, patient=rec.patient, organisation=rec.town, code="CT_HEAD", reported_at=_ago(days=5))
    # An HL7 time without an offset is Beijing wall-clock time.
    naive_now = utcnow().astimezone(SHANGHAI).replace(tzinfo=None)
    order = service.record_external_order(db, data=_external(rec, ordered_at=naive_now), by=None)
    assert abs(order.ordered_at - utcnow()) < timedelta(minutes=5)
    first_day = utcnow().astimezone(SHANGHAI).date().replace(day=1)
    report = service.repeats_report(db, user=rec.bureau, start=first_day, end=first_day + timedelta(days=40))
    assert report.totals.unreasoned == 1
    service.record_external_order(db, data=_external(rec, action="cancel"), by=None)
    assert service.flagged_orders(db, organisation_id=None) == []
    report = service.repeats_report(db, user=rec.bureau, start=first_day, end=first_day + timedelta(days=40))
    assert report.totals.decided == 0
