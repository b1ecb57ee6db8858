"""The master patient index's rules, called as the pages and API call them, on a real database."""

from __future__ import annotations

from datetime import date

import pytest
from sqlalchemy import func, select

from healthrelay.access.models import BreakGlassGrant
from healthrelay.access.service import break_glass
from healthrelay.accounts.models import Role, User
from healthrelay.audit.models import AuditEvent
from healthrelay.core.errors import AccessDenied, Conflict, InvalidInput, NeedToKnowDenied
from healthrelay.patients import service
from healthrelay.patients.models import (
    IdentifierType,
    Patient,
    PatientIdentifier,
    PatientMerge,
    PatientRegistration,
    TeamPanelEntry,
)
from healthrelay.patients.schemas import PatientUpdate
from tests import factories as f
from tests.patients.conftest import REGION, new_patient, rid

BORN = date(1956, 3, 8)


def count(db, model) -> int:  # noqa: ANN001
    return db.execute(select(func.count()).select_from(model)).scalar_one()


# --- resident ID and other input checks -------------------------------------------------------

def test_wrong_check_digit_is_refused_and_nothing_written(db, county) -> None:
    good = rid(BORN, "F")
    wrong = good[:17] + ("0" if good[17] != "0" else "1")
    with pytest.raises(InvalidInput) as err:
        service.register(db, by=county.doctor_a, data=new_patient(resident_id=wrong))
    assert err.value.code == "invalid_resident_id"
    assert "校验位" in err.value.message
    assert count(db, Patient) == 0


def test_impossible_birth_date_in_the_id_is_named(db, county) -> None:
    from healthrelay.patients.identity import check_digit

    first17 = f"{REGION}19990230123"
    with pytest.raises(InvalidInput) as err:
        service.register(db, by=county.doctor_a, data=new_patient(resident_id=first17 + check_digit(first17)))
    assert "19990230" in err.value.message


def test_id_must_agree_with_sex_and_birth_date(db, county) -> None:
    with pytest.raises(InvalidInput) as err:
        service.register(db, by=county.doctor_a, data=new_patient(resident_id=rid(BORN, "M")))
    assert err.value.code == "resident_id_mismatch"
    assert {"resident_id", "sex"} <= {fe["field"] for fe in err.value.field_errors}
    with pytest.raises(InvalidInput) as err:
        service.register(db, by=county.doctor_a,
                         data=new_patient(resident_id=rid(date(1956, 3, 9), "F")))
    assert "birth_date" in {fe["field"] for fe in err.value.field_errors}


def test_lower_case_x_check_character_is_accepted_and_stored_upper_case(db, county) -> None:
    number = next(n for seq in range(100) if (n := rid(BORN, "F", seq)).endswith("X"))
    patient = service.register(db, by=county.doctor_a, data=new_patient(resident_id=number.lower()))
    stored = db.execute(select(PatientIdentifier.value).where(PatientIdentifier.patient_id == patient.id)).scalar()
    assert stored == number


def test_every_bad_field_is_named_at_once(db, county) -> None:
    with pytest.raises(InvalidInput) as err:
        service.register(db, by=county.doctor_a, data=new_patient(
            phone="12345", insurance_card="卡号", birth_date=date(2999, 1, 1), area_id=99999))
    fields = {fe["field"] for fe in err.value.field_errors}
    assert {"phone", "insurance_card", "birth_date", "area_id"} <= fields
    assert count(db, Patient) == 0


@pytest.mark.parametrize("phone", ["13912345678", "+86 139 1234 5678", "0710-3456789", "021-12345678"])
def test_mobile_and_landline_numbers_are_accepted(db, county, phone: str) -> None:
    patient = service.register(db, by=county.doctor_a, data=new_patient(phone=phone))
    assert patient.phone.isdigit()


# --- registration and duplicates --------------------------------------------------------------

def test_registration_creates_the_care_relationship_and_record_number(db, county) -> None:
    patient = service.register(db, by=county.doctor_a, data=new_patient(
        resident_id=rid(BORN, "F"), insurance_card="hb1234567", record_number="MZ-0001",
        area_id=county.village_a1.id, grid="三组"))
    db.commit()
    assert patient.pinyin == "wang xiu ying" and patient.pinyin_initials == "wxy"
    assert [r.organisation_id for r in patient.registrations] == [county.town_a.id]
    idents = {(i.type, i.value, i.issuer_organisation_id) for i in patient.identifiers}
    assert (IdentifierType.MEDICAL_RECORD, "MZ-0001", county.town_a.id) in idents
    assert (IdentifierType.INSURANCE_CARD, "HB1234567", None) in idents
    record = service.get(db, user=county.doctor_a, patient_id=patient.id)
    assert record.access_purpose == "registered_here"


def test_homophone_with_same_birth_date_and_village_warns_then_confirming_registers(db, county) -> None:
    first = service.register(db, by=county.doctor_a, data=new_patient(area_id=county.village_a1.id, phone=""))
    db.commit()
    data = new_patient(name="王秀瑛", area_id=county.village_a1.id, phone="")
    with pytest.raises(service.LikelyDuplicates) as err:
        service.register(db, by=county.doctor_a, data=data)
    db.rollback()
    candidate = err.value.candidates[0]
    assert candidate.patient_id == first.id and candidate.score >= 70
    assert {"same_pinyin", "same_birth_date", "same_village"} <= set(candidate.reasons)
    assert err.value.to_dict()["code"] == "likely_duplicates"
    assert count(db, Patient) == 1
    # The warning showed another resident's details: that disclosure is audited.
    assert db.execute(select(AuditEvent).where(AuditEvent.action == "patient.duplicate_warning",
                                               AuditEvent.patient_id == first.id)).scalar() is not None

    second = service.register(db, by=county.doctor_a, data=data, confirm_not_duplicate=True)
    db.commit()
    created = db.execute(select(AuditEvent).where(AuditEvent.action == "patient.create",
                                                  AuditEvent.patient_id == second.id)).scalar_one()
    assert created.detail["confirmed_not_duplicate_of"] == {str(first.id): candidate.score}


def test_same_resident_id_is_refused_naming_the_existing_record(db, county) -> None:
    number = rid(BORN, "F")
    first = service.register(db, by=county.doctor_a, data=new_patient(resident_id=number))
    db.commit()
    with pytest.raises(service.DuplicateIdentifier) as err:
        service.register(db, by=county.doctor_b, data=new_patient(name="王英", resident_id=number),
                         confirm_not_duplicate=True)
    assert err.value.status_code == 409 and err.value.code == "duplicate_resident_id"
    assert err.value.existing_patient_id == first.id
    assert f"#{first.id}" in err.value.message


def test_health_bureau_and_patients_cannot_register(db, county) -> None:
    with pytest.raises(AccessDenied):
        service.register(db, by=county.bureau, data=new_patient())


# --- search -----------------------------------------------------------------------------------

@pytest.fixture
def residents(db, county):  # noqa: ANN001, ANN201
    a = service.register(db, by=county.doctor_a, data=new_patient(
        resident_id=rid(BORN, "F"), phone="13912345678", area_id=county.village_a1.id, insurance_card="HB7654321"))
    b = service.register(db, by=county.doctor_b, data=new_patient(
        name="王晓明", sex="M", birth_date=date(1980, 7, 1), phone="13587650000", area_id=county.village_b1.id))
    c = service.register(db, by=county.doctor_b, data=new_patient(
        name="张伟", sex="M", birth_date=date(1975, 2, 2), phone="13700005678"))
    db.commit()
    return a, b, c


def test_search_by_initials_finds_the_resident(db, county, residents) -> None:
    a, b, _ = residents
    rows = service.search(db, user=county.doctor_a, q="wxy")
    assert [r.id for r in rows] == [a.id]
    assert {r.id for r in service.search(db, user=county.doctor_a, q="wx")} == {a.id, b.id}


def test_search_by_phone_tail_shows_masked_numbers_and_who_may_open(db, county, residents) -> None:
    a, _, c = residents
    rows = service.search(db, user=county.doctor_a, q="5678")
    assert {r.id for r in rows} == {a.id, c.id}
    row_a = next(r for r in rows if r.id == a.id)
    assert row_a.masked_phone == "139****5678" and row_a.masked_id.startswith("421") and "*" in row_a.masked_id
    assert row_a.can_open is True
    assert next(r for r in rows if r.id == c.id).can_open is False  # registered in the other township


def test_search_by_name_homophone_id_and_insurance_card(db, county, residents) -> None:
    a, _, _ = residents
    assert [r.id for r in service.search(db, user=county.doctor_b, q="王秀瑛")] == [a.id]
    assert [r.id for r in service.search(db, user=county.doctor_b, q=rid(BORN, "F"))] == [a.id]
    assert [r.id for r in service.search(db, user=county.doctor_b, q="hb7654321")] == [a.id]
    assert [r.id for r in service.search(db, user=county.doctor_b, q="wang xiu")] == [a.id]


def test_search_needs_four_digits_and_is_closed_to_the_health_bureau(db, county, residents) -> None:
    with pytest.raises(InvalidInput):
        service.search(db, user=county.doctor_a, q="567")
    with pytest.raises(AccessDenied):
        service.search(db, user=county.bureau, q="wxy")


def test_search_is_audited_without_the_typed_number(db, county, residents) -> None:
    service.search(db, user=county.doctor_a, q=rid(BORN, "F"))
    db.commit()
    event = db.execute(select(AuditEvent).where(AuditEvent.action == "patient.search")).scalar_one()
    assert event.detail["kind"] == "resident_id" and rid(BORN, "F") not in str(event.detail)


# --- access and masking -----------------------------------------------------------------------

def test_clinician_of_another_township_is_refused_and_the_refusal_audited(db, county, residents) -> None:
    a, _, _ = residents
    with pytest.raises(NeedToKnowDenied):
        service.get(db, user=county.doctor_b, patient_id=a.id)
    db.rollback()
    denied = db.execute(select(AuditEvent).where(AuditEvent.patient_id == a.id, AuditEvent.outcome == "denied",
                                                 AuditEvent.user_id == county.doctor_b.id)).scalar_one()
    assert denied.action == "patient.read"


def test_org_admin_sees_the_full_id_and_a_clinician_sees_it_masked(db, county, residents) -> None:
    a, _, _ = residents
    full = rid(BORN, "F")
    assert service.get(db, user=county.admin_a, patient_id=a.id).resident_id == full
    seen = service.get(db, user=county.doctor_a, patient_id=a.id)
    assert seen.resident_id != full and seen.resident_id == full[:3] + "*" * 11 + full[-4:]
    assert seen.resident_id_masked
    card = next(i for i in seen.identifiers if i.type == IdentifierType.INSURANCE_CARD)
    assert card.masked and card.value != "HB7654321"


def test_the_patient_sees_their_own_full_id(db, county, residents) -> None:
    a, _, _ = residents
    own = f.user(db, role=Role.PATIENT, patient=a, username="resident_a")
    db.commit()
    assert service.get(db, user=own, patient_id=a.id).resident_id == rid(BORN, "F")


# --- update and identifiers ------------------------------------------------------------------

def test_update_checks_like_registration_and_is_audited(db, county, residents) -> None:
    a, _, _ = residents
    with pytest.raises(InvalidInput):
        service.update(db, by=county.doctor_a, patient_id=a.id, data=PatientUpdate(sex="M"))
    db.rollback()
    service.update(db, by=county.doctor_a, patient_id=a.id, data=PatientUpdate(name="王秀瑛", phone="13900001111"))
    db.commit()
    db.refresh(a)
    assert (a.name, a.pinyin, a.phone) == ("王秀瑛", "wang xiu ying", "13900001111")
    event = db.execute(select(AuditEvent).where(AuditEvent.action == "patient.updated")).scalar_one()
    assert set(event.detail["changed"]) == {"name", "phone"}


def test_record_numbers_are_unique_per_organisation(db, county, residents) -> None:
    a, _, _ = residents
    service.add_identifier(db, by=county.doctor_a, patient_id=a.id, kind=IdentifierType.MEDICAL_RECORD,
                           value="ZY-2024-1")
    db.commit()
    other = service.register(db, by=county.doctor_a, data=new_patient(name="刘洋", sex="M", phone=""))
    with pytest.raises(service.DuplicateIdentifier) as err:
        service.add_identifier(db, by=county.doctor_a, patient_id=other.id, kind=IdentifierType.MEDICAL_RECORD,
                               value="ZY-2024-1")
    assert err.value.existing_patient_id == a.id


# --- merge and undo ---------------------------------------------------------------------------

def _links(db, *patient_ids: int) -> dict[str, set[tuple[int, int]]]:  # noqa: ANN001
    """Every (row id, patient id) of the link tables, to compare before and after."""
    found: dict[str, set[tuple[int, int]]] = {}
    for model in (PatientRegistration, PatientIdentifier, TeamPanelEntry, BreakGlassGrant):
        found[model.__tablename__] = set(db.execute(select(model.id, model.patient_id).where(
            model.patient_id.in_(patient_ids))).all())
    found["users"] = set(db.execute(select(User.id, User.patient_id).where(User.patient_id.in_(patient_ids))).all())
    return found


@pytest.fixture
def duplicate_pair(db, county):  # noqa: ANN001, ANN201
    """The same woman registered twice: once in township A, once in B and again in A, on one panel twice."""
    survivor = service.register(db, by=county.doctor_a, data=new_patient(
        resident_id=rid(BORN, "F"), area_id=county.village_a1.id))
    merged = service.register(db, by=county.doctor_b, data=new_patient(
        name="王秀瑛", phone="13912345670", insurance_card="HB5550001", area_id=county.village_a1.id),
        confirm_not_duplicate=True)
    db.add(PatientRegistration(patient_id=merged.id, organisation_id=county.town_a.id))
    team = f.family_team(db, organisation=county.town_a, members=[county.doctor_a])
    f.on_panel(db, team=team, patient=survivor)
    f.on_panel(db, team=team, patient=merged)
    f.user(db, role=Role.PATIENT, patient=merged, username="wxy_login")
    db.commit()
    break_glass(db, user=county.doctor_b, patient_id=survivor.id, reason="急诊抢救需要查看既往病史")
    db.commit()
    return survivor, merged


def test_merge_moves_every_reference_and_undo_restores_exactly(db, county, duplicate_pair) -> None:
    survivor, merged = duplicate_pair
    before = _links(db, survivor.id, merged.id)

    record = service.merge(db, by=county.admin_a, survivor_id=survivor.id, merged_id=merged.id,
                           reason="同一人两次建档")
    db.commit()
    after = _links(db, survivor.id, merged.id)
    assert all(pid == survivor.id for rows in after.values() for _, pid in rows), after
    # Registered at township A twice and on the panel twice: the merged side's copies were removed.
    assert {org for org, in db.execute(select(PatientRegistration.organisation_id).where(
        PatientRegistration.patient_id == survivor.id))} == {county.town_a.id, county.town_b.id}
    assert len(after["team_panel_entries"]) == 1
    assert set(record.moved) >= {"patient_registrations.patient_id", "patient_identifiers.patient_id",
                                 "users.patient_id", "deleted:patient_registrations", "deleted:team_panel_entries"}
    db.refresh(merged)
    assert merged.merged_into_id == survivor.id
    # The merged record's insurance card now finds the survivor.
    assert [r.id for r in service.search(db, user=county.doctor_a, q="HB5550001")] == [survivor.id]

    service.undo_merge(db, by=county.admin_a, merge_id=record.id, reason="核实后不是同一人")
    db.commit()
    assert _links(db, survivor.id, merged.id) == before
    db.refresh(merged)
    assert merged.merged_into_id is None
    with pytest.raises(Conflict) as err:
        service.undo_merge(db, by=county.admin_a, merge_id=record.id, reason="再撤销一次")
    assert err.value.code == "already_undone"


def test_a_merged_id_reads_as_the_survivor(db, county, duplicate_pair) -> None:
    survivor, merged = duplicate_pair
    service.merge(db, by=county.alliance_admin, survivor_id=survivor.id, merged_id=merged.id, reason="重复建档")
    db.commit()
    shown = service.get(db, user=county.doctor_a, patient_id=merged.id)
    assert (shown.id, shown.requested_id) == (survivor.id, merged.id)
    assert shown.merges[0].merged_id == merged.id
    # Township B's registration moved with the merge: doctor B now reaches the survivor too.
    assert service.get(db, user=county.doctor_b, patient_id=merged.id).id == survivor.id


def test_merge_needs_an_admin_a_reason_and_compatible_ids(db, county, duplicate_pair) -> None:
    survivor, merged = duplicate_pair
    with pytest.raises(AccessDenied):
        service.merge(db, by=county.doctor_a, survivor_id=survivor.id, merged_id=merged.id, reason="重复建档")
    with pytest.raises(InvalidInput):
        service.merge(db, by=county.admin_a, survivor_id=survivor.id, merged_id=merged.id, reason="  ")
    service.add_identifier(db, by=county.admin_a, patient_id=merged.id, kind=IdentifierType.RESIDENT_ID,
                           value=rid(BORN, "F", seq=47))
    db.commit()
    with pytest.raises(Conflict) as err:
        service.merge(db, by=county.admin_a, survivor_id=survivor.id, merged_id=merged.id, reason="重复建档")
    assert err.value.code == "different_resident_ids"
    assert count(db, PatientMerge) == 0


def test_org_admin_needs_access_to_both_records(db, county) -> None:
    mine = service.register(db, by=county.doctor_a, data=new_patient(phone=""))
    theirs = service.register(db, by=county.doctor_b, data=new_patient(phone=""), confirm_not_duplicate=True)
    db.commit()
    with pytest.raises(AccessDenied):
        service.merge(db, by=county.admin_a, survivor_id=mine.id, merged_id=theirs.id, reason="重复建档")


def test_undo_of_an_earlier_merge_waits_for_the_later_one(db, county, duplicate_pair) -> None:
    survivor, merged = duplicate_pair
    third = service.register(db, by=county.doctor_a, data=new_patient(phone=""), confirm_not_duplicate=True)
    db.commit()
    first = service.merge(db, by=county.alliance_admin, survivor_id=survivor.id, merged_id=merged.id,
                          reason="重复建档")
    service.merge(db, by=county.alliance_admin, survivor_id=third.id, merged_id=survivor.id, reason="重复建档")
    db.commit()
    assert service.get(db, user=county.alliance_admin, patient_id=merged.id).id == third.id
    with pytest.raises(Conflict) as err:
        service.undo_merge(db, by=county.alliance_admin, merge_id=first.id, reason="撤销第一次合并")
    assert err.value.code == "undo_later_merge_first"


def test_duplicates_of_a_record_are_listed_for_review(db, county, duplicate_pair) -> None:
    survivor, merged = duplicate_pair
    rows = service.duplicates(db, user=county.admin_a, patient_id=survivor.id)
    assert rows[0].patient_id == merged.id and rows[0].masked_id == ""


def test_undo_restores_set_aside_rows_even_when_their_id_was_reused(db, county, duplicate_pair) -> None:
    survivor, merged = duplicate_pair
    record = service.merge(db, by=county.admin_a, survivor_id=survivor.id, merged_id=merged.id, reason="重复建档")
    db.commit()
    # New work after the merge (SQLite may hand the freed id to the next registration).
    newcomer = service.register(db, by=county.doctor_a, data=new_patient(name="赵四", sex="M", phone=""))
    db.commit()
    service.undo_merge(db, by=county.admin_a, merge_id=record.id, reason="核实后不是同一人")
    db.commit()
    orgs = {o for o, in db.execute(select(PatientRegistration.organisation_id).where(
        PatientRegistration.patient_id == merged.id))}
    assert orgs == {county.town_a.id, county.town_b.id}
    assert [r.organisation_id for r in db.execute(select(PatientRegistration).where(
        PatientRegistration.patient_id == newcomer.id)).scalars()] == [county.town_a.id]


def test_search_queries_walk_the_index_of_the_searched_column(db, county, residents) -> None:
    """A query planner must not walk every live resident for a name or initials search."""
    if db.get_bind().dialect.name != "sqlite":
        pytest.skip("query plans checked on SQLite; PostgreSQL picks sequential scans on tiny tables")
    from sqlalchemy import event

    statements: list[tuple[str, object]] = []

    def capture(conn, cursor, statement, parameters, context, executemany) -> None:  # noqa: ANN001
        if statement.lstrip().startswith("SELECT patients.id") and "LIKE" not in statement:
            statements.append((statement, parameters))

    engine = db.get_bind()
    event.listen(engine, "before_cursor_execute", capture)
    try:
        for q in ("王秀", "王秀英", "wxy", "wang xiu", "13912345678"):
            service.search(db, user=county.doctor_a, q=q)
    finally:
        event.remove(engine, "before_cursor_execute", capture)
    assert len(statements) >= 8
    for statement, parameters in statements:
        plan = " ".join(str(r[-1]) for r in db.connection().exec_driver_sql(
            "EXPLAIN QUERY PLAN " + statement, parameters))  # type: ignore[arg-type]
        assert "SCAN patients" not in plan and "merged_into_id" not in plan and "TEMP B-TREE" not in plan, plan
