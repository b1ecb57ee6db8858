"""The clinical rules of chronic disease follow-up, as pure functions over a condition's data row.

Thresholds come from `chronic_conditions.rules` (seeded by migration 0018 from the national basic
public-health specification), so a county tunes them without a release. Everything that adds a reading or a
visit goes through `apply_bp` / `apply_glucose` / `apply_contact`, so the derived columns of an enrolment
(what the worklist and the indicators read) have one definition.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from healthrelay.chronic.models import ChronicCondition, ChronicEnrolment
from healthrelay.core.errors import NotFound, field_error
from healthrelay.referrals.display import age_on as age_on  # age in whole years on a day (re-exported)

CONTROLLED = "controlled"
UNCONTROLLED = "uncontrolled"
ADVERSE_REACTION = "adverse_reaction"
COMPLICATION = "complication"
CLASSIFICATIONS = {
    CONTROLLED: ("控制满意", "controlled"),
    UNCONTROLLED: ("控制不满意", "uncontrolled"),
    ADVERSE_REACTION: ("不良反应", "adverse reaction"),
    COMPLICATION: ("并发症", "complication"),
}

RISK_DANGER, RISK_HIGH, RISK_USUAL = 3, 2, 1

# Plausible ranges: outside them a number is a typing or device error, not a patient.
SBP_RANGE = (50, 300)
DBP_RANGE = (20, 200)
PULSE_RANGE = (20, 250)
GLUCOSE_RANGE = (1.0, 35.0)  # mmol/L; glucometers read about 1.1-33.3
WEIGHT_RANGE = (2.0, 300.0)  # kg
HEIGHT_RANGE = (40.0, 250.0)  # cm


@dataclass(frozen=True)
class ConditionRules:
    code: str
    visits_per_year: int
    review_days: int
    referral_check_days: int
    control_window_days: int
    lost_after_days: int
    elderly_age: int
    danger_sbp: int
    danger_dbp: int
    glucose_high: float
    glucose_low: float
    bp_target: tuple[int, int]
    bp_target_elderly: tuple[int, int]
    fpg_target: float
    prevalence: float
    uses_bp: bool
    uses_glucose: bool

    @property
    def routine_days(self) -> int:
        """Days between routine visits: 4 a year means every 91 days."""
        return 365 // max(self.visits_per_year, 1)

    @classmethod
    def from_row(cls, code: str, rules: dict[str, Any]) -> ConditionRules:
        return cls(
            code=code,
            visits_per_year=int(rules.get("visits_per_year", 4)),
            review_days=int(rules.get("review_days", 14)),
            referral_check_days=int(rules.get("referral_check_days", 14)),
            control_window_days=int(rules.get("control_window_days", 90)),
            lost_after_days=int(rules.get("lost_after_days", 365)),
            elderly_age=int(rules.get("elderly_age", 65)),
            danger_sbp=int(rules.get("danger_sbp", 180)),
            danger_dbp=int(rules.get("danger_dbp", 110)),
            glucose_high=float(rules.get("glucose_high", 16.7)),
            glucose_low=float(rules.get("glucose_low", 3.9)),
            bp_target=tuple(rules.get("bp_target", (140, 90))),  # type: ignore[arg-type]
            bp_target_elderly=tuple(rules.get("bp_target_elderly", (150, 90))),  # type: ignore[arg-type]
            fpg_target=float(rules.get("fpg_target", 7.0)),
            prevalence=float(rules.get("prevalence", 0.0)),
            uses_bp=bool(rules.get("uses_bp", True)),
            uses_glucose=bool(rules.get("uses_glucose", False)),
        )


def rules_for(db: Session, code: str) -> ConditionRules:
    row = db.get(ChronicCondition, code)
    if row is None:
        raise NotFound(f"没有这个慢病登记类别：{code} / no such chronic condition: {code}")
    return ConditionRules.from_row(row.code, row.rules or {})


def all_conditions(db: Session) -> list[ChronicCondition]:
    return list(db.scalars(select(ChronicCondition).where(ChronicCondition.active).order_by(ChronicCondition.code)))


def bp_target(rules: ConditionRules, age: int) -> tuple[int, int]:
    return rules.bp_target_elderly if age >= rules.elderly_age else rules.bp_target


def bp_controlled(rules: ConditionRules, *, sbp: int, dbp: int, age: int) -> bool:
    target_sbp, target_dbp = bp_target(rules, age)
    return sbp < target_sbp and dbp < target_dbp


def bp_danger(rules: ConditionRules, *, sbp: int, dbp: int) -> bool:
    return sbp >= rules.danger_sbp or dbp >= rules.danger_dbp


def glucose_controlled(rules: ConditionRules, *, fasting: float) -> bool:
    return fasting < rules.fpg_target


def glucose_danger(rules: ConditionRules, *, value: float) -> bool:
    return value >= rules.glucose_high or value <= rules.glucose_low


def _out_of(value: float, bounds: tuple[float, float]) -> bool:
    return not bounds[0] <= value <= bounds[1]


def _impossible(field: str, zh: str, en: str, value: float, unit: str, bounds: tuple[float, float]) -> dict[str, Any]:
    low, high = bounds
    return field_error(field, f"{zh} {value} {unit} 不可能，应在 {low}-{high} 之间 / "
                              f"{en} of {value} {unit} is impossible (allowed {low}-{high})")


def check_bp(sbp: int | None, dbp: int | None, *, pulse: int | None = None, prefix: str = "") -> list[dict[str, Any]]:
    """Field errors for an impossible blood pressure (SBP 400, diastolic above systolic...)."""
    errors: list[dict[str, Any]] = []
    if (sbp is None) != (dbp is None):
        errors.append(field_error(f"{prefix}sbp" if sbp is None else f"{prefix}dbp",
                                  "收缩压和舒张压要一起填写 / enter both systolic and diastolic pressure"))
    if sbp is not None and _out_of(sbp, SBP_RANGE):
        errors.append(_impossible(f"{prefix}sbp", "收缩压", "a systolic pressure", sbp, "mmHg", SBP_RANGE))
    if dbp is not None and _out_of(dbp, DBP_RANGE):
        errors.append(_impossible(f"{prefix}dbp", "舒张压", "a diastolic pressure", dbp, "mmHg", DBP_RANGE))
    if sbp is not None and dbp is not None and dbp >= sbp:
        errors.append(field_error(f"{prefix}dbp", f"舒张压 {dbp} 不能高于或等于收缩压 {sbp} / "
                                                  f"diastolic {dbp} cannot be at or above systolic {sbp}"))
    if pulse is not None and _out_of(pulse, PULSE_RANGE):
        errors.append(_impossible(f"{prefix}pulse", "心率", "a pulse", pulse, "/min", PULSE_RANGE))
    return errors


def check_glucose(value: float | None, *, field: str = "glucose") -> list[dict[str, Any]]:
    if value is None or not _out_of(value, GLUCOSE_RANGE):
        return []
    return [_impossible(field, "血糖", "a glucose", value, "mmol/L", GLUCOSE_RANGE)]


def check_body(weight_kg: float | None, height_cm: float | None) -> list[dict[str, Any]]:
    errors = []
    if weight_kg is not None and _out_of(weight_kg, WEIGHT_RANGE):
        errors.append(_impossible("weight_kg", "体重", "a weight", weight_kg, "kg", WEIGHT_RANGE))
    if height_cm is not None and _out_of(height_cm, HEIGHT_RANGE):
        errors.append(_impossible("height_cm", "身高", "a height", height_cm, "cm", HEIGHT_RANGE))
    return errors


def bmi(weight_kg: float | None, height_cm: float | None) -> float | None:
    if not weight_kg or not height_cm:
        return None
    return round(weight_kg / (height_cm / 100) ** 2, 1)


def classify_visit(rules: ConditionRules, *, sbp: int | None, dbp: int | None, fasting_glucose: float | None,
                   age: int, side_effects: str, new_complication: bool) -> tuple[str, bool, bool]:
    """(classification, measurements uncontrolled, danger) of one visit.

    The label follows the national form's priority (complication, adverse reaction, uncontrolled,
    controlled); "measurements uncontrolled" ignores the label, so a patient whose pressure stays high while
    also having side effects still counts towards "uncontrolled twice in a row".
    """
    uncontrolled = danger = False
    if sbp is not None and dbp is not None:
        danger = bp_danger(rules, sbp=sbp, dbp=dbp)
        if rules.uses_bp:
            uncontrolled = not bp_controlled(rules, sbp=sbp, dbp=dbp, age=age)
    if fasting_glucose is not None:
        danger = danger or glucose_danger(rules, value=fasting_glucose)
        if rules.uses_glucose:
            uncontrolled = uncontrolled or not glucose_controlled(rules, fasting=fasting_glucose)
    if new_complication:
        label = COMPLICATION
    elif side_effects.strip():
        label = ADVERSE_REACTION
    elif uncontrolled or danger:
        label = UNCONTROLLED
    else:
        label = CONTROLLED
    return label, uncontrolled or danger, danger


def risk_after_visit(*, danger: bool, classification: str) -> int:
    if danger:
        return RISK_DANGER
    return RISK_USUAL if classification == CONTROLLED else RISK_HIGH


def risk_after_reading(current: int, *, danger: bool) -> int:
    """A reading can raise the risk to danger, never lower it: only a visit judges the patient again."""
    return RISK_DANGER if danger else current


def apply_contact(enrolment: ChronicEnrolment, *, at: datetime) -> None:
    if enrolment.last_contact_at is None or at > enrolment.last_contact_at:
        enrolment.last_contact_at = at


def apply_bp(enrolment: ChronicEnrolment, *, sbp: int, dbp: int, at: datetime) -> None:
    if enrolment.last_bp_at is None or at >= enrolment.last_bp_at:
        enrolment.last_sbp, enrolment.last_dbp, enrolment.last_bp_at = sbp, dbp, at
    apply_contact(enrolment, at=at)


def apply_glucose(enrolment: ChronicEnrolment, *, value: float, at: datetime) -> None:
    if enrolment.last_glucose_at is None or at >= enrolment.last_glucose_at:
        enrolment.last_glucose, enrolment.last_glucose_at = value, at
    apply_contact(enrolment, at=at)
