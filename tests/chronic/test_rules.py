"""The clinical thresholds of chronic/rules.py at their edges, read from the conditions migration 0018 seeds."""

from __future__ import annotations

from datetime import date

import pytest
from sqlalchemy.orm import Session

from healthrelay.chronic import rules
from healthrelay.core.errors import NotFound


@pytest.fixture
def htn(db: Session) -> rules.ConditionRules:
    return rules.rules_for(db, "htn")


@pytest.fixture
def t2dm(db: Session) -> rules.ConditionRules:
    return rules.rules_for(db, "t2dm")


def fields(errors: list[dict]) -> set[str]:
    return {e["field"] for e in errors}


def test_seeded_rules_follow_the_national_specification(htn: rules.ConditionRules,
                                                         t2dm: rules.ConditionRules) -> None:
    assert htn.routine_days == 91 and htn.review_days == 14 and htn.referral_check_days == 14
    assert htn.uses_bp and not htn.uses_glucose
    assert t2dm.uses_glucose and not t2dm.uses_bp


def test_an_unknown_condition_is_not_found(db: Session) -> None:
    with pytest.raises(NotFound):
        rules.rules_for(db, "copd")


def test_139_89_is_controlled_and_140_90_is_not(htn: rules.ConditionRules) -> None:
    assert rules.bp_controlled(htn, sbp=139, dbp=89, age=50)
    assert not rules.bp_controlled(htn, sbp=140, dbp=89, age=50)
    assert not rules.bp_controlled(htn, sbp=139, dbp=90, age=50)


def test_the_elderly_target_starts_on_the_65th_birthday(htn: rules.ConditionRules) -> None:
    born = date(1961, 6, 15)
    assert rules.age_on(born, date(2026, 6, 14)) == 64
    assert rules.age_on(born, date(2026, 6, 15)) == 65
    day_before = rules.age_on(born, date(2026, 6, 14))
    birthday = rules.age_on(born, date(2026, 6, 15))
    assert not rules.bp_controlled(htn, sbp=145, dbp=85, age=day_before)
    assert rules.bp_controlled(htn, sbp=145, dbp=85, age=birthday)
    assert rules.bp_controlled(htn, sbp=149, dbp=89, age=birthday)
    assert not rules.bp_controlled(htn, sbp=150, dbp=89, age=birthday)


def test_danger_is_sbp_180_or_dbp_110(htn: rules.ConditionRules) -> None:
    assert not rules.bp_danger(htn, sbp=179, dbp=109)
    assert rules.bp_danger(htn, sbp=180, dbp=90)
    assert rules.bp_danger(htn, sbp=150, dbp=110)


def test_glucose_danger_at_16_7_and_3_9(t2dm: rules.ConditionRules) -> None:
    assert rules.glucose_danger(t2dm, value=16.7)
    assert not rules.glucose_danger(t2dm, value=16.6)
    assert rules.glucose_danger(t2dm, value=3.9)
    assert not rules.glucose_danger(t2dm, value=4.0)
    assert rules.glucose_controlled(t2dm, fasting=6.9)
    assert not rules.glucose_controlled(t2dm, fasting=7.0)


def test_impossible_readings_are_named_by_field() -> None:
    assert fields(rules.check_bp(400, 90)) == {"sbp"}
    assert fields(rules.check_bp(120, 130)) == {"dbp"}  # diastolic above systolic
    assert fields(rules.check_bp(120, 120)) == {"dbp"}
    assert fields(rules.check_bp(120, None)) == {"dbp"}
    assert fields(rules.check_bp(120, 80, pulse=300)) == {"pulse"}
    assert rules.check_bp(300, 200) == []
    assert fields(rules.check_glucose(0)) == {"glucose"}
    assert fields(rules.check_glucose(0, field="fasting_glucose")) == {"fasting_glucose"}
    assert rules.check_glucose(1.0) == [] and rules.check_glucose(35.0) == []
    assert fields(rules.check_body(500, 30)) == {"weight_kg", "height_cm"}
    message = rules.check_bp(400, 90)[0]["message"]
    assert "400" in message and " / " in message  # bilingual, says what was typed


def test_classification_priority_and_uncontrolled_measurements(htn: rules.ConditionRules) -> None:
    args = dict(fasting_glucose=None, age=50)
    assert rules.classify_visit(htn, sbp=130, dbp=80, side_effects="", new_complication=False, **args) == (
        "controlled", False, False)
    assert rules.classify_visit(htn, sbp=150, dbp=80, side_effects="", new_complication=False, **args) == (
        "uncontrolled", True, False)
    # The label says adverse reaction, but the pressure is still counted as uncontrolled.
    assert rules.classify_visit(htn, sbp=150, dbp=80, side_effects="干咳", new_complication=False, **args) == (
        "adverse_reaction", True, False)
    assert rules.classify_visit(htn, sbp=185, dbp=100, side_effects="干咳", new_complication=True, **args) == (
        "complication", True, True)


def test_risk_after_a_visit_and_a_reading() -> None:
    assert rules.risk_after_visit(danger=True, classification="uncontrolled") == 3
    assert rules.risk_after_visit(danger=False, classification="adverse_reaction") == 2
    assert rules.risk_after_visit(danger=False, classification="controlled") == 1
    assert rules.risk_after_reading(1, danger=True) == 3
    assert rules.risk_after_reading(2, danger=False) == 2  # a reading never lowers it


def test_bmi() -> None:
    assert rules.bmi(70, 175) == 22.9
    assert rules.bmi(None, 175) is None
