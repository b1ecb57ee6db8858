"""Duplicate scoring (pure) and candidate lookup against the database."""

from __future__ import annotations

from datetime import date

import pytest
from sqlalchemy import text

from healthrelay.patients import matching
from healthrelay.patients.matching import WARNING_THRESHOLD, make_person, score
from healthrelay.patients.models import IdentifierType, PatientIdentifier
from tests import factories as f

BORN = date(1956, 3, 8)


def person(**kw: object) -> matching.Person:
    fields: dict[str, object] = {"id": 1, "name": "王秀英", "sex": "F", "birth_date": BORN,
                                 "phone": "13912345678", "area_id": 7}
    fields.update(kw)
    return make_person(**fields)  # type: ignore[arg-type]


def test_homophone_name_same_birth_date_and_village_is_a_likely_duplicate() -> None:
    value, reasons = score(person(name="王秀瑛", phone=""), person(id=2))
    assert value >= WARNING_THRESHOLD
    assert {"same_pinyin", "same_birth_date", "same_village"} <= set(reasons)


@pytest.mark.parametrize(("change", "reason"), [
    ({"birth_date": date(1956, 8, 3)}, "birth_day_month_swapped"),
    ({"birth_date": date(1956, 3, 9)}, "birth_date_typo"),
    ({"birth_date": date(1966, 3, 8)}, "birth_date_typo"),
    ({"birth_date": date(1957, 3, 8)}, "birth_date_typo"),
    ({"phone": "13912345670"}, "phone_one_digit_off"),
    ({"phone": ""}, "same_birth_date"),
])
def test_a_single_typing_slip_still_warns(change: dict[str, object], reason: str) -> None:
    value, reasons = score(person(**change), person(id=2))
    assert value >= WARNING_THRESHOLD, (value, reasons)
    assert reason in reasons


def test_same_resident_id_is_certain_and_different_ids_mean_different_people() -> None:
    a = person(resident_id="421122195603081221")
    assert score(a, person(id=2, resident_id="421122195603081221")) == (100, ("same_resident_id",))
    twin_value, twin_reasons = score(a, person(id=2, name="王秀兰", resident_id="421122195603081247"))
    assert twin_value < WARNING_THRESHOLD
    assert "different_resident_id" in twin_reasons


def test_namesakes_born_in_other_years_elsewhere_do_not_warn() -> None:
    value, _ = score(person(birth_date=date(1971, 5, 20), phone="13700001111", area_id=8), person(id=2))
    assert value < WARNING_THRESHOLD


def test_a_lunar_birthday_counts_a_little() -> None:
    value, reasons = score(person(birth_date=date(1956, 4, 14)), person(id=2))
    assert "birth_date_near" in reasons
    assert score(person(), person(id=2))[0] > value >= WARNING_THRESHOLD


def test_other_sex_counts_against() -> None:
    same, _ = score(person(), person(id=2))
    other, reasons = score(person(sex="M"), person(id=2))
    assert other < same and "different_sex" in reasons


def test_pinyin_and_initials() -> None:
    assert matching.pinyin_of("王秀英") == ("wang xiu ying", "wxy")
    assert matching.pinyin_of("阿依古丽·买买提")[1] == "aygl" + "mmt"


def test_in_memory_index_finds_the_homophone_and_skips_excluded_ids() -> None:
    index = matching.BlockingIndex()
    index.add(person(id=1))
    index.add(person(id=2, name="张伟", sex="M", birth_date=date(1980, 1, 1), phone="13800000001", area_id=9))
    query = person(id=None, name="王秀瑛")
    assert [c.patient_id for c in index.find(query)] == [1]
    assert index.find(query, exclude_ids=[1]) == []


def test_find_candidates_uses_the_database(db, county) -> None:
    original = f.patient(db, name="王秀英", birth_date=BORN, phone="13912345678")
    original.area_id = county.village_a1.id
    other = f.patient(db, name="李建国", sex="M", birth_date=date(1950, 1, 1))
    db.flush()
    found = matching.find_candidates(db, name="王秀瑛", birth_date=BORN, sex="F", phone="",
                                     area_id=county.village_a1.id)
    assert [c.patient_id for c in found] == [original.id]
    assert other.id not in {c.patient_id for c in found}
    # Found through initials + birth year although the birth date is one digit off.
    slip = matching.find_candidates(db, name="王秀英", birth_date=date(1956, 3, 18), sex="F",
                                    phone="", area_id=county.village_a1.id)
    assert [c.patient_id for c in slip] == [original.id]
    assert "birth_date_typo" in slip[0].reasons


def test_find_candidates_by_insurance_card_and_ignores_merged_records(db, county) -> None:
    survivor = f.patient(db, name="赵磊", sex="M", birth_date=date(1990, 6, 1))
    merged = f.patient(db, name="赵磊", sex="M", birth_date=date(1990, 6, 1))
    db.add(PatientIdentifier(patient_id=survivor.id, type=IdentifierType.INSURANCE_CARD, value="HB12345678"))
    merged.merged_into_id = survivor.id
    db.flush()
    found = matching.find_candidates(db, name="钱芳", birth_date=date(1970, 1, 1), sex="F",
                                     insurance_card="HB12345678")
    assert [(c.patient_id, c.reasons[0]) for c in found] == [(survivor.id, "same_insurance_card")]
    by_name = matching.find_candidates(db, name="赵磊", birth_date=date(1990, 6, 1), sex="M")
    assert [c.patient_id for c in by_name] == [survivor.id]


def test_blocking_queries_use_indexes_not_a_full_scan(db, county) -> None:
    if db.get_bind().dialect.name != "sqlite":
        pytest.skip("query plans checked on SQLite; PostgreSQL picks sequential scans on tiny tables")
    query = make_person(name="王秀英", sex="F", birth_date=BORN, phone="13912345678",
                        resident_id="421122195603081221", insurance_card="HB1234567")
    for block in matching._block_queries(query):
        compiled = block.compile(db.get_bind(), compile_kwargs={"literal_binds": True})
        plan = " ".join(str(row[-1]) for row in db.execute(text(f"EXPLAIN QUERY PLAN {compiled}")))
        assert "USING" in plan and "SCAN" not in plan.replace("SCAN CONSTANT ROW", ""), plan
