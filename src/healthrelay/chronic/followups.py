"""Follow-up visits per the national basic public-health specification (高血压/2型糖尿病患者随访服务记录表).

One visit is checked whole before anything is written (every bad field named at once), classified by
`rules.classify_visit`, stored with its blood pressure and glucose also as `chronic_readings` (so control is
read from one place), and moves the enrolment's schedule: controlled → the routine visit in 91 days,
uncontrolled → a review in 14. Uncontrolled at two visits in a row, or a danger value, proposes an upward
referral: a DRAFT to the alliance's lead (county) hospital that the doctor checks and sends from the referral
page, plus a "referral_check" task for the team 14 days on. Nothing is sent automatically.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from healthrelay.access import service as access
from healthrelay.accounts.models import Role, User
from healthrelay.audit import service as audit
from healthrelay.chronic import rules, tasks
from healthrelay.chronic.models import ChronicCondition, ChronicEnrolment, ChronicFollowUp, ChronicReading, ChronicTask
from healthrelay.chronic.service import COMPLICATIONS, MAX_MEDICINES  # the registry card's: one list
from healthrelay.core.db import LOCAL_TZ, local_today, utcnow
from healthrelay.core.errors import AccessDenied, Conflict, InvalidInput, NotFound, field_error
from healthrelay.directory.models import Alliance, AllianceKind, AllianceMembership, MembershipRole
from healthrelay.patients.models import Patient
from healthrelay.referrals import service as referrals
from healthrelay.referrals.models import Direction, Referral, Urgency

RECORD_ROLES = frozenset({Role.CLINICIAN})
FACE_TO_FACE = frozenset({"clinic", "home"})
MODES = {"clinic": ("门诊", "clinic"), "home": ("家庭", "home"), "phone": ("电话", "phone"),
         "online": ("网络", "online")}
# Symptoms on the national forms; "none" is 无症状. Hypertension's list first, then diabetes'.
SYMPTOMS = {
    "none": ("无症状", "no symptoms"),
    "headache_dizziness": ("头痛头晕", "headache, dizziness"),
    "nausea_vomiting": ("恶心呕吐", "nausea, vomiting"),
    "blurred_vision_tinnitus": ("眼花耳鸣", "blurred vision, tinnitus"),
    "dyspnoea": ("呼吸困难", "shortness of breath"),
    "palpitation_chest_tightness": ("心悸胸闷", "palpitations, chest tightness"),
    "nosebleed": ("鼻衄出血不止", "nosebleed that will not stop"),
    "limb_numbness": ("四肢发麻", "numb limbs"),
    "leg_oedema": ("下肢水肿", "swollen legs"),
    "polydipsia": ("多饮", "much thirst"),
    "polyphagia": ("多食", "much hunger"),
    "polyuria": ("多尿", "much urine"),
    "blurred_vision": ("视力模糊", "blurred vision"),
    "infection": ("感染", "infection"),
    "weight_loss": ("体重明显下降", "marked weight loss"),
}
ADHERENCE = {"regular": ("规律", "regular"), "intermittent": ("间断", "intermittent"), "none": ("不服药", "none")}
FOOT_PULSES = {"normal": ("触及正常", "normal"), "weak_left": ("左侧减弱", "weak left"),
               "weak_right": ("右侧减弱", "weak right"), "weak_both": ("双侧减弱", "weak both"),
               "absent": ("消失", "absent")}
HYPOGLYCAEMIA = {"none": ("无", "none"), "occasional": ("偶尔", "occasional"), "frequent": ("频繁", "frequent")}
LEVELS = {"good": ("良好", "good"), "fair": ("一般", "fair"), "poor": ("差", "poor")}
SALT = {"light": ("轻", "light"), "medium": ("中", "medium"), "heavy": ("重", "heavy")}
# Lifestyle: numbers with their plausible range, and choices.
LIFESTYLE_NUMBERS = {"smoking_per_day": (0, 100), "drinking_liang_per_day": (0, 50), "exercise_per_week": (0, 21),
                     "exercise_minutes": (0, 600), "staple_g_per_day": (0, 2000)}
LIFESTYLE_CHOICES = {"salt": SALT, "mood": LEVELS, "compliance": LEVELS}
HBA1C_RANGE = (3.0, 20.0)
TEXT_MAX = 2000


@dataclass
class FollowUpInput:
    """Every field of the visit form; numbers None when not measured."""

    visit_on: date | None = None
    mode: str = "clinic"
    symptoms: list[str] = field(default_factory=list)
    sbp: int | None = None
    dbp: int | None = None
    heart_rate: int | None = None
    weight_kg: float | None = None
    height_cm: float | None = None
    lifestyle: dict[str, Any] = field(default_factory=dict)
    medicines: list[dict[str, Any]] = field(default_factory=list)
    adherence: str = "regular"
    side_effects: str = ""
    fasting_glucose: float | None = None
    hba1c: float | None = None
    foot_pulse: str = ""
    hypoglycaemia: str = ""
    new_complications: list[str] = field(default_factory=list)
    note: str = ""


@dataclass
class FollowUpOutcome:
    """What the doctor is told after saving: the classification, the next visit and any referral proposed."""

    follow_up: ChronicFollowUp
    classification: str
    next_visit_on: date | None
    next_visit_kind: str
    danger: bool
    uncontrolled_streak: int
    referral: Referral | None = None  # the draft proposed (or the open one already proposed) at this visit
    referral_reason: str = ""  # why a referral is proposed; "" when none is
    referral_note: str = ""  # when proposed but no draft could be made (no lead hospital), why
    task: ChronicTask | None = None


# ---------------------------------------------------------------------------- checks

def _check_choice(errors: list[dict[str, Any]], name: str, value: str, allowed: dict[str, Any],
                  *, blank_ok: bool = False) -> None:
    if value == "" and blank_ok:
        return
    if value not in allowed:
        errors.append(field_error(name, f"未知的选项“{value}”，可选：{'、'.join(allowed)} / "
                                        f"unknown value {value!r}; one of {', '.join(allowed)}"))


def _check_lifestyle(errors: list[dict[str, Any]], lifestyle: dict[str, Any]) -> dict[str, Any]:
    clean: dict[str, Any] = {}
    for key, value in (lifestyle or {}).items():
        name = f"lifestyle.{key}"
        if value in (None, ""):
            continue
        if key in LIFESTYLE_NUMBERS:
            low, high = LIFESTYLE_NUMBERS[key]
            try:
                number = float(value)
            except (TypeError, ValueError):
                errors.append(field_error(name, "须为数字 / must be a number"))
                continue
            if not low <= number <= high:
                errors.append(field_error(name, f"应在 {low}-{high} 之间 / must be {low}-{high}"))
                continue
            clean[key] = int(number) if number == int(number) else number
        elif key in LIFESTYLE_CHOICES:
            _check_choice(errors, name, str(value), LIFESTYLE_CHOICES[key])
            clean[key] = str(value)
        else:
            errors.append(field_error(name, f"未知的生活方式项目“{key}” / unknown lifestyle item {key!r}"))
    return clean


def _check_medicines(errors: list[dict[str, Any]], medicines: list[dict[str, Any]]) -> list[dict[str, str]]:
    if len(medicines or []) > MAX_MEDICINES:
        errors.append(field_error("medicines", f"最多 {MAX_MEDICINES} 种药物 / at most {MAX_MEDICINES} medicines"))
        return []
    clean = []
    for i, item in enumerate(medicines or []):
        if not isinstance(item, dict):
            errors.append(field_error(f"medicines.{i}.name", "药物格式有误 / not a medicine"))
            continue
        row = {k: str(item.get(k) or "").strip() for k in ("name", "dose", "frequency")}
        if not any(row.values()):
            continue  # an empty line of the form
        if not row["name"]:
            errors.append(field_error(f"medicines.{i}.name", "请填写药名 / the medicine's name is required"))
        for key, limit in (("name", 100), ("dose", 40), ("frequency", 40)):
            if len(row[key]) > limit:
                errors.append(field_error(f"medicines.{i}.{key}", f"最多 {limit} 个字符 / at most {limit} characters"))
        clean.append(row)
    return clean


def _validate(data: FollowUpInput, enrolment: ChronicEnrolment, cond: rules.ConditionRules,
              today: date) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """(cleaned lifestyle and medicines, field errors): every problem of the form at once."""
    errors: list[dict[str, Any]] = []
    if data.visit_on is None:
        errors.append(field_error("visit_on", "请填写随访日期 / the visit date is required"))
    elif data.visit_on > today:
        errors.append(field_error("visit_on", f"随访日期 {data.visit_on} 晚于今天 {today} / "
                                              f"the visit date {data.visit_on} is in the future"))
    elif data.visit_on < enrolment.diagnosed_on:
        errors.append(field_error("visit_on", f"随访日期早于确诊日期 {enrolment.diagnosed_on} / "
                                              f"the visit is before the diagnosis on {enrolment.diagnosed_on}"))
    _check_choice(errors, "mode", data.mode, MODES)
    for symptom in data.symptoms:
        if symptom not in SYMPTOMS:
            errors.append(field_error("symptoms", f"未知的症状“{symptom}” / unknown symptom {symptom!r}"))
    if "none" in data.symptoms and len(set(data.symptoms)) > 1:
        errors.append(field_error("symptoms", "“无症状”不能与其他症状同时勾选 / \"no symptoms\" with a symptom"))
    bp_errors = rules.check_bp(data.sbp, data.dbp, pulse=data.heart_rate)
    errors += [{**e, "field": "heart_rate"} if e["field"] == "pulse" else e for e in bp_errors]
    errors += rules.check_glucose(data.fasting_glucose, field="fasting_glucose")
    errors += rules.check_body(data.weight_kg, data.height_cm)
    if data.hba1c is not None and not HBA1C_RANGE[0] <= data.hba1c <= HBA1C_RANGE[1]:
        errors.append(field_error("hba1c", f"糖化血红蛋白 {data.hba1c}% 不可能，应在 {HBA1C_RANGE[0]}-"
                                           f"{HBA1C_RANGE[1]} 之间 / an HbA1c of {data.hba1c}% is impossible"))
    if cond.uses_bp and (data.sbp is None or data.dbp is None) and not any(
            e["field"] in ("sbp", "dbp") for e in bp_errors):
        errors.append(field_error("sbp", "高血压随访须测量血压 / a hypertension visit needs the blood pressure"))
    if cond.uses_glucose and data.fasting_glucose is None:
        errors.append(field_error("fasting_glucose", "糖尿病随访须测空腹血糖 / a diabetes visit needs the fasting "
                                                     "glucose"))
    _check_choice(errors, "adherence", data.adherence, ADHERENCE)
    _check_choice(errors, "foot_pulse", data.foot_pulse, FOOT_PULSES, blank_ok=True)
    _check_choice(errors, "hypoglycaemia", data.hypoglycaemia, HYPOGLYCAEMIA, blank_ok=True)
    for code in data.new_complications:
        if code not in COMPLICATIONS:
            errors.append(field_error("new_complications", f"未知的并发症“{code}” / unknown complication {code!r}"))
    for name in ("side_effects", "note"):
        if len(getattr(data, name) or "") > TEXT_MAX:
            errors.append(field_error(name, f"最多 {TEXT_MAX} 个字符 / at most {TEXT_MAX} characters"))
    clean = {"lifestyle": _check_lifestyle(errors, data.lifestyle),
             "medicines": _check_medicines(errors, data.medicines)}
    return clean, errors


# ---------------------------------------------------------------------------- recording

def _enrolment(db: Session, enrolment_id: int) -> ChronicEnrolment:
    row = db.get(ChronicEnrolment, enrolment_id)
    if row is None:
        raise NotFound(f"没有编号为 {enrolment_id} 的慢病管理档案 / no chronic enrolment {enrolment_id}")
    return row


def measured_at(visit_on: date, today: date) -> datetime:
    """When a visit's numbers were taken: now for today's visit, else noon of that day (Shanghai)."""
    if visit_on >= today:
        return utcnow()
    return datetime.combine(visit_on, time(12, 0), tzinfo=LOCAL_TZ)


def _previous_visit(db: Session, enrolment_id: int, visit_on: date) -> ChronicFollowUp | None:
    return db.scalar(select(ChronicFollowUp).where(ChronicFollowUp.enrolment_id == enrolment_id,
                                                   ChronicFollowUp.visit_on <= visit_on)
                     .order_by(ChronicFollowUp.visit_on.desc(), ChronicFollowUp.id.desc()).limit(1))


def _is_latest(db: Session, enrolment_id: int, visit_on: date) -> bool:
    """A visit entered late (from a paper book) after a newer one leaves the schedule to the newer one."""
    later = db.scalar(select(ChronicFollowUp.id).where(ChronicFollowUp.enrolment_id == enrolment_id,
                                                       ChronicFollowUp.visit_on > visit_on).limit(1))
    return later is None


def record_follow_up(db: Session, *, by: User, enrolment_id: int, data: FollowUpInput,
                     client_address: str = "") -> FollowUpOutcome:
    """Check, classify and store one visit; move the enrolment's schedule; propose a referral when due."""
    if by.role not in RECORD_ROLES or by.organisation_id is None:
        raise AccessDenied("只有机构的医生可以记录随访 / only an organisation's clinicians record follow-ups")
    enrolment = _enrolment(db, enrolment_id)
    access.require_patient_access(db, user=by, patient_id=enrolment.patient_id, action="chronic.follow_up.record",
                                  client_address=client_address)
    if enrolment.status != "active":
        raise Conflict(f"该慢病管理档案已结案（{enrolment.status}），不能再记录随访 / the enrolment is closed "
                       f"({enrolment.status}); no follow-ups can be added", code="enrolment_closed")
    cond = rules.rules_for(db, enrolment.condition_code)
    today = local_today()
    clean, errors = _validate(data, enrolment, cond, today)
    if errors:
        raise InvalidInput("随访记录有误：" + "、".join(dict.fromkeys(e["field"] for e in errors))
                           + " / the follow-up has errors", field_errors=errors)
    assert data.visit_on is not None
    patient = db.get(Patient, enrolment.patient_id)
    assert patient is not None
    age = rules.age_on(patient.birth_date, data.visit_on)
    classification, uncontrolled, danger = rules.classify_visit(
        cond, sbp=data.sbp, dbp=data.dbp, fasting_glucose=data.fasting_glucose, age=age,
        side_effects=data.side_effects or "", new_complication=bool(data.new_complications))
    previous = _previous_visit(db, enrolment.id, data.visit_on)
    latest = _is_latest(db, enrolment.id, data.visit_on)
    face_to_face = data.mode in FACE_TO_FACE

    visit = ChronicFollowUp(
        enrolment_id=enrolment.id, patient_id=enrolment.patient_id, condition_code=enrolment.condition_code,
        organisation_id=by.organisation_id, visit_on=data.visit_on, mode=data.mode,
        symptoms=list(dict.fromkeys(data.symptoms)), sbp=data.sbp, dbp=data.dbp, heart_rate=data.heart_rate,
        weight_kg=data.weight_kg, height_cm=data.height_cm, bmi=rules.bmi(data.weight_kg, data.height_cm),
        lifestyle=clean["lifestyle"], medicines=clean["medicines"], adherence=data.adherence,
        side_effects=(data.side_effects or "").strip(), fasting_glucose=data.fasting_glucose, hba1c=data.hba1c,
        foot_pulse=data.foot_pulse, hypoglycaemia=data.hypoglycaemia, classification=classification,
        note=(data.note or "").strip(), recorded_by_user_id=by.id, recorded_at=utcnow())
    db.add(visit)
    at = measured_at(data.visit_on, today)
    _add_readings(db, enrolment, visit, at=at, by=by)

    streak = enrolment.uncontrolled_streak
    if latest:
        streak = streak + 1 if uncontrolled else 0
        _move_schedule(enrolment, cond, visit_on=data.visit_on, uncontrolled=uncontrolled,
                       face_to_face=face_to_face, classification=classification, danger=danger, streak=streak)
    visit.next_visit_on = enrolment.next_visit_due if latest else None
    fresh = [c for c in dict.fromkeys(data.new_complications) if c not in (enrolment.complications or [])]
    if fresh:
        enrolment.complications = [*(enrolment.complications or []), *fresh]
    if clean["medicines"] and latest:
        enrolment.medicines = clean["medicines"]
    db.flush()

    outcome = FollowUpOutcome(follow_up=visit, classification=classification, next_visit_on=visit.next_visit_on,
                              next_visit_kind=enrolment.next_visit_kind if latest else "", danger=danger,
                              uncontrolled_streak=streak)
    if latest and (danger or streak >= 2):
        _propose_referral(db, by=by, enrolment=enrolment, visit=visit, previous=previous, cond=cond, danger=danger,
                          outcome=outcome, client_address=client_address)
    audit.record(db, actor=access.actor_of(by, client_address), action="chronic.follow_up.record",
                 patient_id=enrolment.patient_id, resource=f"chronic_follow_up:{visit.id}",
                 detail={"enrolment_id": enrolment.id, "classification": classification, "mode": data.mode,
                         "visit_on": data.visit_on.isoformat(), "danger": danger, "streak": streak,
                         "referral_id": visit.referral_id, "new_complications": fresh})
    return outcome


def _add_readings(db: Session, enrolment: ChronicEnrolment, visit: ChronicFollowUp, *, at: datetime,
                  by: User) -> None:
    """The visit's BP and fasting glucose as readings (source follow_up): control reads readings only."""
    org = by.organisation_id or enrolment.organisation_id
    if visit.sbp is not None and visit.dbp is not None:
        db.add(ChronicReading(patient_id=enrolment.patient_id, organisation_id=org, kind="bp", measured_at=at,
                              sbp=visit.sbp, dbp=visit.dbp, pulse=visit.heart_rate, source="follow_up",
                              recorded_by_user_id=by.id, recorded_at=utcnow()))
        rules.apply_bp(enrolment, sbp=visit.sbp, dbp=visit.dbp, at=at)
    if visit.fasting_glucose is not None:
        db.add(ChronicReading(patient_id=enrolment.patient_id, organisation_id=org, kind="glucose", measured_at=at,
                              glucose_mmol=visit.fasting_glucose, glucose_context="fasting", source="follow_up",
                              recorded_by_user_id=by.id, recorded_at=utcnow()))
        rules.apply_glucose(enrolment, value=visit.fasting_glucose, at=at)
    rules.apply_contact(enrolment, at=at)


def _move_schedule(enrolment: ChronicEnrolment, cond: rules.ConditionRules, *, visit_on: date, uncontrolled: bool,
                   face_to_face: bool, classification: str, danger: bool, streak: int) -> None:
    """The derived columns after the newest visit (the follow-up rules in this module's docstring).

    A phone or online visit classifies but does not replace the face-to-face visit that is due: when it finds
    the patient uncontrolled it brings a review forward, otherwise the schedule stays.
    """
    enrolment.uncontrolled_streak = streak
    enrolment.last_classification = classification
    enrolment.risk_level = rules.risk_after_visit(danger=danger, classification=classification)
    enrolment.hidden_until = None
    if face_to_face:
        enrolment.last_visit_on = max(enrolment.last_visit_on or visit_on, visit_on)
    if uncontrolled:
        review = visit_on + timedelta(days=cond.review_days)
        if face_to_face or enrolment.next_visit_due is None or review < enrolment.next_visit_due:
            enrolment.next_visit_due, enrolment.next_visit_kind = review, "review"
    elif face_to_face or enrolment.next_visit_due is None:
        enrolment.next_visit_due, enrolment.next_visit_kind = visit_on + timedelta(days=cond.routine_days), "routine"


# ---------------------------------------------------------------------------- the referral proposed

def lead_hospital_id(db: Session, organisation_id: int) -> int | None:
    """The lead organisation (county hospital) of an alliance the organisation belongs to, county medical
    community (医共体) first; None when there is none other than the organisation itself."""
    rows = db.execute(
        select(AllianceMembership.organisation_id, Alliance.kind)
        .join(Alliance, Alliance.id == AllianceMembership.alliance_id)
        .where(AllianceMembership.role == MembershipRole.LEAD,
               AllianceMembership.alliance_id.in_(select(AllianceMembership.alliance_id).where(
                   AllianceMembership.organisation_id == organisation_id)),
               AllianceMembership.organisation_id != organisation_id)
        .order_by(AllianceMembership.alliance_id)).all()
    ranked = sorted(rows, key=lambda r: r[1] != AllianceKind.COUNTY_COMMUNITY)
    return ranked[0][0] if ranked else None


def _numbers(visit: ChronicFollowUp, cond: rules.ConditionRules) -> str:
    if cond.uses_glucose and visit.fasting_glucose is not None and not cond.uses_bp:
        return f"{visit.fasting_glucose:g}"
    return f"{visit.sbp}/{visit.dbp}" if visit.sbp is not None else f"{visit.fasting_glucose:g}"


def _reason(visit: ChronicFollowUp, previous: ChronicFollowUp | None, cond: rules.ConditionRules, *,
            danger: bool, condition: ChronicCondition | None) -> str:
    zh, en = (condition.name, (condition.name_en or condition.code).lower()) if condition else (cond.code, cond.code)
    unit = "mmol/L" if cond.uses_glucose and not cond.uses_bp else "mmHg"
    now = _numbers(visit, cond)
    if danger:
        values = []
        if visit.sbp is not None and visit.dbp is not None and rules.bp_danger(cond, sbp=visit.sbp, dbp=visit.dbp):
            values.append(f"{visit.sbp}/{visit.dbp} mmHg")
        if visit.fasting_glucose is not None and rules.glucose_danger(cond, value=visit.fasting_glucose):
            values.append(f"{visit.fasting_glucose:g} mmol/L")
        shown = "、".join(values)
        return f"{zh}随访测得危急值（{shown}）/ danger value at a {en} follow-up ({', '.join(values)})"
    pair = [_numbers(previous, cond), now] if previous is not None else [now]
    return (f"{zh}随访连续两次控制不满意（{'、'.join(pair)} {unit}）/ uncontrolled at two visits in a row "
            f"({', '.join(pair)} {unit})")


def _open_referral(db: Session, enrolment_id: int) -> Referral | None:
    """An upward referral proposed at an earlier visit that is still in play (draft, sent, accepted...)."""
    return db.scalar(select(Referral).join(ChronicFollowUp, ChronicFollowUp.referral_id == Referral.id)
                     .where(ChronicFollowUp.enrolment_id == enrolment_id, Referral.state.not_in(referrals.CLOSED))
                     .order_by(Referral.id.desc()).limit(1))


def _propose_referral(db: Session, *, by: User, enrolment: ChronicEnrolment, visit: ChronicFollowUp,
                      previous: ChronicFollowUp | None, cond: rules.ConditionRules, danger: bool,
                      outcome: FollowUpOutcome, client_address: str) -> None:
    condition = db.get(ChronicCondition, cond.code)  # its names and ICD-10 codes, as the registry holds them
    outcome.referral_reason = _reason(visit, previous, cond, danger=danger, condition=condition)
    existing = _open_referral(db, enrolment.id)
    if existing is not None:
        # Proposed already and not closed: link this visit to it rather than stacking a second draft.
        visit.referral_id = existing.id
        outcome.referral = existing
        outcome.referral_note = ("已有未结束的上转申请，请在该申请上继续处理 / an upward referral proposed earlier is "
                                 "still open; continue with it")
        return
    assert by.organisation_id is not None
    target = lead_hospital_id(db, by.organisation_id)
    referral = None
    if target is None:
        outcome.referral_note = ("本机构不在有牵头医院的医联体内，无法生成上转草稿，请手工转诊 / no lead hospital "
                                 "in your alliances: refer by hand")
    else:
        vitals: dict[str, Any] = {}
        if visit.sbp is not None:
            vitals["bp"] = f"{visit.sbp}/{visit.dbp}"
        if visit.heart_rate is not None:
            vitals["hr"] = visit.heart_rate
        if visit.fasting_glucose is not None:
            vitals["fasting_glucose"] = f"{visit.fasting_glucose:g} mmol/L"
        summary = (f"随访日期 {visit.visit_on}；分类 {rules.CLASSIFICATIONS[visit.classification][0]}"
                   + (f"；上次 {previous.visit_on} {_numbers(previous, cond)}" if previous is not None else "")
                   + (f"；不良反应：{visit.side_effects}" if visit.side_effects else ""))
        data = referrals.ReferralInput(
            patient_id=enrolment.patient_id, to_organisation_id=target,
            urgency=Urgency.URGENT if danger else Urgency.ROUTINE, reason=outcome.referral_reason[:500],
            diagnosis_code=(condition.icd10_prefixes or [""])[0] if condition else "", case_summary=summary,
            vital_signs=vitals, medicines=list(visit.medicines or []))
        referral = referrals.create_draft(db, by=by, data=data, direction=Direction.UP, client_address=client_address)
        visit.referral_id = referral.id
        outcome.referral = referral
    due = visit.visit_on + timedelta(days=cond.referral_check_days)
    title = (f"核查上转申请 {referral.number} / check on upward referral {referral.number}" if referral is not None
             else "核查是否已上转 / check the patient was referred up")
    outcome.task = tasks.create_task(db, patient_id=enrolment.patient_id, kind="referral_check", title=title,
                                     due_on=due, by=by, detail=outcome.referral_reason, team_id=enrolment.team_id,
                                     enrolment_id=enrolment.id, referral_id=referral.id if referral else None)
    db.flush()


# ---------------------------------------------------------------------------- reading back

def follow_ups_of(db: Session, *, user: User, enrolment_id: int, client_address: str = "",
                  limit: int = 200) -> list[ChronicFollowUp]:
    """An enrolment's visits, newest first (need-to-know, audited)."""
    enrolment = _enrolment(db, enrolment_id)
    access.require_patient_access(db, user=user, patient_id=enrolment.patient_id, action="chronic.follow_up.read",
                                  client_address=client_address)
    return list(db.scalars(select(ChronicFollowUp).where(ChronicFollowUp.enrolment_id == enrolment_id)
                           .order_by(ChronicFollowUp.visit_on.desc(), ChronicFollowUp.id.desc()).limit(limit)))


def enrolment_for_form(db: Session, *, user: User, enrolment_id: int,
                       client_address: str = "") -> tuple[ChronicEnrolment, Patient, ChronicFollowUp | None]:
    """The enrolment, its patient and the last visit (to prefill lifestyle and medicines) for the visit form."""
    enrolment = _enrolment(db, enrolment_id)
    access.require_patient_access(db, user=user, patient_id=enrolment.patient_id, action="chronic.follow_up.form",
                                  client_address=client_address)
    patient = db.get(Patient, enrolment.patient_id)
    assert patient is not None
    last = db.scalar(select(ChronicFollowUp).where(ChronicFollowUp.enrolment_id == enrolment_id)
                     .order_by(ChronicFollowUp.visit_on.desc(), ChronicFollowUp.id.desc()).limit(1))
    return enrolment, patient, last


@dataclass
class FollowUpView:
    """One visit with what it led to, for the page shown after saving."""

    follow_up: ChronicFollowUp
    enrolment: ChronicEnrolment
    patient: Patient
    referral: Referral | None
    task: ChronicTask | None


def follow_up_for(db: Session, *, user: User, follow_up_id: int, client_address: str = "") -> FollowUpView:
    """A visit, its enrolment and patient, the referral proposed and the check task (need-to-know, audited)."""
    visit = db.get(ChronicFollowUp, follow_up_id)
    if visit is None:
        raise NotFound(f"没有编号为 {follow_up_id} 的随访记录 / no follow-up {follow_up_id}")
    access.require_patient_access(db, user=user, patient_id=visit.patient_id, action="chronic.follow_up.read",
                                  client_address=client_address)
    enrolment = _enrolment(db, visit.enrolment_id)
    patient = access.resolve_patient(db, visit.patient_id)
    referral = db.get(Referral, visit.referral_id) if visit.referral_id is not None else None
    task = None
    if referral is not None:
        task = db.scalar(select(ChronicTask).where(ChronicTask.referral_id == referral.id,
                                                   ChronicTask.kind == "referral_check")
                         .order_by(ChronicTask.id).limit(1))
    return FollowUpView(follow_up=visit, enrolment=enrolment, patient=patient, referral=referral, task=task)


def validation_errors(db: Session, *, enrolment_id: int, data: FollowUpInput) -> list[dict[str, Any]]:
    """The field errors `record_follow_up` would name, without writing: a form that could not even parse some
    numbers still shows every other problem at once."""
    enrolment = _enrolment(db, enrolment_id)
    return _validate(data, enrolment, rules.rules_for(db, enrolment.condition_code), local_today())[1]
