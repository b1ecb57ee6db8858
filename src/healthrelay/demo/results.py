"""Demo shared results and mutual recognition: the members' HL7 senders, their external quality assessment
records, half a year of lab results and examination reports from every member, and the county's orders with
what was done about recognisable priors.

`hl7_senders()` is a pure definition (usable before the database exists, for `healthrelay demo-accounts
--json`). The showcase is one resident: 石门镇 scanned their head five days ago (a CT with the alliance's HR
mark) and they are registered at the county hospital too, so a county doctor ordering a head CT sees that
result first. History goes in with bulk inserts; the showcase and one critical potassium go through the real
services, so they carry audit, recognition mark and the critical-result loop.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import cache
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import insert, select, update
from sqlalchemy.orm import Session

from healthrelay.accounts.models import Role, User
from healthrelay.demo import county
from healthrelay.directory.models import Capability, Organisation, OrgLevel
from healthrelay.hl7 import service as hl7
from healthrelay.patients.models import Patient, PatientRegistration
from healthrelay.recognition import service as recognition
from healthrelay.recognition.models import ClinicalOrder, EqaRecord, RecognitionDecision, ReorderReason
from healthrelay.results import service as results
from healthrelay.results.models import ExamResult, LabResult, ResultCode
from healthrelay.results.schemas import ExamResultIn, LabResultIn

_SHANGHAI = ZoneInfo("Asia/Shanghai")
SHOWCASE_LOGIN = "patient.shimen"  # the resident whose township CT the county doctor sees
SHOWCASE_DAYS_AGO = 5
HISTORY_DAYS = 180

# What the labs measure, with a plausible centre and spread of values (unit as in result_codes).
_LAB_DRAWS: dict[str, tuple[float, float, int]] = {
    "GLU": (6.2, 1.6, 1), "HBA1C": (6.8, 1.0, 1), "K": (4.2, 0.45, 2), "NA": (140.0, 3.0, 0),
    "CREA": (82.0, 22.0, 0), "ALT": (28.0, 14.0, 0), "TC": (4.9, 0.9, 2), "HGB": (128.0, 16.0, 0),
    "WBC": (6.6, 1.8, 1), "PLT": (215.0, 55.0, 0),
}
_PANELS = (("GLU", "HBA1C"), ("K", "NA", "CREA"), ("ALT", "CREA", "TC"), ("HGB", "WBC", "PLT"), ("GLU", "K", "NA"))
_EXAMS: dict[str, tuple[str, str]] = {
    "CT_HEAD": ("颅脑实质未见明显异常密度影，脑室系统无扩大，中线结构居中。", "颅脑CT平扫未见明显异常。"),
    "CT_CHEST": ("双肺纹理清晰，右肺下叶见一约4mm磨玻璃小结节，纵隔淋巴结不大。", "右肺下叶微小结节，建议年度随访。"),
    "DR_CHEST": ("双肺纹理增粗，心影不大，双膈面光整。", "支气管炎性改变可能。"),
    "US_ABD": ("肝实质回声细密增强，胆囊壁光滑，胰脾未见异常。", "脂肪肝（轻度）。"),
}
# Repeat reasons drawn for the history (the national list is seeded by migration 0015).
_CHANGED_NOTE = "复查以评估病情变化 / repeated to follow the change"
_REASON_WEIGHTS = {"condition_changed": 40, "major_decision": 20, "emergency": 15, "patient_request": 10,
                   "physician_judgement": 10, "too_old": 5}


@dataclass(frozen=True)
class SenderDef:
    facility: str  # MSH-4
    application: str  # MSH-3
    org_code: str
    note: str


def hl7_senders() -> tuple[SenderDef, ...]:
    """Every county member with a lab sends results: the county hospitals' HIS/LIS and the centres' own systems
    (older township systems still send GB 18030; MSH-18 says which)."""
    senders = []
    for org in county.organisations():
        if Capability.LAB not in org.capabilities or org.level not in (OrgLevel.SECONDARY, OrgLevel.COMMUNITY,
                                                                        OrgLevel.TOWNSHIP):
            continue
        township = org.level == OrgLevel.TOWNSHIP
        senders.append(SenderDef(facility=org.code.replace("-", ""), application="HIS" if township else "LIS",
                                 org_code=org.code,
                                 note="乡镇卫生院 HIS（GB18030）/ township HIS (GB 18030)" if township
                                 else "医院 LIS（UTF-8）/ hospital LIS (UTF-8)"))
    return tuple(senders)


def _eqa_rows(org_ids: dict[str, int], year: int) -> list[dict[str, Any]]:
    """The county hospital passed the national programmes; township labs the alliance's; one township failed
    chemistry this year (its results carry no mark, and its patients' tests are repeated for a good reason)."""
    rows: list[dict[str, Any]] = []

    def add(code: str, *, category: str = "", modality: str = "", scope: str, passed: bool = True,
            program: str) -> None:
        for y in (year - 1, year):
            rows.append({"organisation_id": org_ids[code], "code": "", "category": category, "modality": modality,
                         "scope": scope, "year": y, "passed": passed if y == year else True, "program": program})

    for category in ("chemistry", "electrolyte", "hba1c", "haematology", "cardiac", "coagulation"):
        add(county.COUNTY_HOSPITAL, category=category, scope="national", program="国家卫健委临检中心室间质评")
    for modality in ("CT", "MR", "DR", "US", "ECG"):
        add(county.COUNTY_HOSPITAL, modality=modality, scope="province", program="省医学影像质控中心")
    for org in county.organisations():
        if org.level != OrgLevel.TOWNSHIP or Capability.LAB not in org.capabilities:
            continue
        failed = org.code == "QX-C05"
        for category in ("chemistry", "electrolyte", "haematology"):
            add(org.code, category=category, scope="alliance", passed=not (failed and category == "chemistry"),
                program="青溪县医共体检验质控中心")
        for modality, capability in (("CT", Capability.CT), ("DR", Capability.DR), ("US", Capability.ULTRASOUND)):
            if capability in org.capabilities:
                add(org.code, modality=modality, scope="alliance", program="青溪县医共体影像质控中心")
    return rows


def _flag(value: float, code: ResultCode) -> str:
    low, _, high = code.reference_range.partition("-")
    try:
        if value < float(low):
            return "L"
        if value > float(high):
            return "H"
    except ValueError:
        return ""
    return "N"


def build_demo_results(db: Session, *, seed: int, now: datetime) -> dict[str, int]:
    rng = random.Random(f"{seed}:results")
    orgs = {o.code: o.id for o in db.execute(select(Organisation)).scalars()}
    for sender in hl7_senders():  # each with its own interface account (what the audit names for its writes)
        hl7.register_sender(db, facility=sender.facility, application=sender.application, note=sender.note,
                            organisation_id=orgs[sender.org_code], by=None)
    eqa = _eqa_rows(orgs, now.year)
    db.execute(insert(EqaRecord), [dict(row, recorded_at=now) for row in eqa])
    codes = {c.code: c for c in db.execute(select(ResultCode)).scalars()}

    @cache
    def mark(org_id: int, code: str, year: int) -> str:
        return recognition.mark_for(db, organisation_id=org_id, code=code, at=datetime(year, 6, 30, tzinfo=now.tzinfo))

    labs = [o for o in county.organisations() if Capability.LAB in o.capabilities
            and o.level in (OrgLevel.SECONDARY, OrgLevel.COMMUNITY, OrgLevel.TOWNSHIP)]
    registered = db.execute(select(PatientRegistration.patient_id, PatientRegistration.organisation_id)
                            .join(Patient, Patient.id == PatientRegistration.patient_id)
                            .where(Patient.merged_into_id.is_(None))).all()
    by_org: dict[int, list[int]] = {}
    for patient_id, org_id in registered:
        by_org.setdefault(org_id, []).append(patient_id)
    county_id = orgs[county.COUNTY_HOSPITAL]
    lab_rows: list[dict[str, Any]] = []
    exam_rows: list[dict[str, Any]] = []
    people: list[tuple[int, int]] = []  # (patient, their lab)
    for org in labs:
        pool = sorted(by_org.get(orgs[org.code], []))
        for patient_id in rng.sample(pool, min(len(pool), 12 if org.level == OrgLevel.TOWNSHIP else 25)):
            people.append((patient_id, orgs[org.code]))
    for patient_id, lab_id in people:
        for _ in range(rng.randint(1, 4)):
            reported = now - timedelta(days=rng.uniform(1, HISTORY_DAYS), minutes=rng.randint(0, 600))
            at_lab = lab_id if rng.random() < 0.75 else county_id
            for code in rng.choice(_PANELS):
                centre, spread, digits = _LAB_DRAWS[code]
                value = round(max(0.1, rng.gauss(centre, spread)), digits)
                rc = codes[code]
                lab_rows.append({
                    "patient_id": patient_id, "organisation_id": at_lab, "ordering_organisation_id": at_lab,
                    "test_code": code, "test_name": rc.name_zh, "value_text": f"{value:g}", "value_numeric": value,
                    "unit": rc.unit, "reference_range": rc.reference_range, "abnormal_flag": _flag(value, rc),
                    "specimen": "血清" if rc.category != "haematology" else "全血",
                    "collected_at": reported - timedelta(hours=2), "reported_at": reported, "status": "final",
                    "critical": False, "recognition_scope": mark(at_lab, code, reported.year),
                    "source": "hl7" if at_lab != county_id else "entered", "created_at": reported})
        if rng.random() < 0.35:
            exam = rng.choice(sorted(_EXAMS))
            rc = codes[exam]
            performed = now - timedelta(days=rng.uniform(6, HISTORY_DAYS))
            findings, impression = _EXAMS[exam]
            exam_rows.append({
                "patient_id": patient_id, "organisation_id": lab_id, "ordering_organisation_id": lab_id,
                "exam_code": exam, "exam_name": rc.name_zh, "category": rc.category, "modality": rc.modality,
                "body_part": rc.body_part, "performed_at": performed, "reported_at": performed + timedelta(hours=3),
                "findings": findings, "impression": impression,
                "recognition_scope": mark(lab_id, exam, performed.year), "critical": False, "source": "hl7",
                "created_at": performed})
    for start in range(0, len(lab_rows), 2000):
        db.execute(insert(LabResult), lab_rows[start:start + 2000])
    if exam_rows:
        db.execute(insert(ExamResult), exam_rows)
    orders, decisions = _orders_history(db, rng, now=now, county_id=county_id, codes=codes)
    _showcase(db, now=now, orgs=orgs)
    return {"hl7_senders": len(hl7_senders()), "eqa_records": len(eqa), "lab_results": len(lab_rows) + 1,
            "exam_results": len(exam_rows) + 1, "orders": orders, "recognition_decisions": decisions}


def _orders_history(db: Session, rng: random.Random, *, now: datetime, county_id: int,
                    codes: dict[str, ResultCode]) -> tuple[int, int]:
    """Half a year of county orders for patients who had recognisable results elsewhere: most answered by the
    prior result, some repeated with a reason, a few sent by the HIS without one."""
    priors: list[tuple[str, int, int, str, datetime, int, str]] = []  # kind, row id, patient, code, at, org, scope
    for row in db.execute(select(LabResult.id, LabResult.patient_id, LabResult.test_code, LabResult.reported_at,
                                 LabResult.organisation_id, LabResult.recognition_scope)
                          .where(LabResult.recognition_scope != "", LabResult.organisation_id != county_id)
                          .order_by(LabResult.id)):
        priors.append(("lab", row.id, row.patient_id, row.test_code, row.reported_at, row.organisation_id,
                       row.recognition_scope))
    for row in db.execute(select(ExamResult.id, ExamResult.patient_id, ExamResult.exam_code, ExamResult.performed_at,
                                 ExamResult.organisation_id, ExamResult.recognition_scope)
                          .where(ExamResult.recognition_scope != "").order_by(ExamResult.id)):
        priors.append(("exam", row.id, row.patient_id, row.exam_code, row.performed_at, row.organisation_id,
                       row.recognition_scope))
    reasons = [r for r in db.execute(select(ReorderReason.code).where(ReorderReason.is_active.is_(True))).scalars()
               if r in _REASON_WEIGHTS]
    weights = [_REASON_WEIGHTS[r] for r in reasons]
    users = list(db.execute(select(User.id).where(User.organisation_id == county_id, User.role == Role.CLINICIAN,
                                                  User.practitioner_id.is_not(None)).order_by(User.id)).scalars())
    order_rows: list[dict[str, Any]] = []
    decision_rows: list[tuple[int, dict[str, Any]]] = []
    per_day: dict[str, int] = {}
    for kind, row_id, patient_id, code, at, org_id, scope in rng.sample(priors, min(len(priors), 420)):
        ordered = at + timedelta(days=rng.uniform(0.5, 6))
        if ordered >= now - timedelta(hours=1):
            continue
        day = ordered.astimezone(_SHANGHAI).strftime("%Y%m%d")
        per_day[day] = per_day.get(day, 0) + 1
        draw = rng.random()
        outcome = "recognised" if draw < 0.7 else "repeated" if draw < 0.95 else "unreasoned"
        source = "hl7" if outcome == "unreasoned" else "web"
        reason = rng.choices(reasons, weights)[0] if outcome == "repeated" and reasons else None
        order_rows.append({
            "number": f"tmp-{len(order_rows)}", "patient_id": patient_id, "ordering_organisation_id": county_id,
            "ordered_by_user_id": rng.choice(users) if users and source == "web" else None,
            "ordering_provider": "", "performing_organisation_id": county_id, "code": code, "kind": kind,
            "name": codes[code].name_zh, "placer_number": f"QXPH{day}{per_day[day]:05d}" if source == "hl7" else "",
            "status": "satisfied" if outcome == "recognised" else "placed", "source": source,
            "clinical_note": "", "ordered_at": ordered, "created_at": ordered, "cancel_reason": ""})
        decision_rows.append((len(order_rows) - 1, {
            "organisation_id": county_id, "outcome": outcome, "code": code, "prior_kind": kind,
            "prior_lab_result_id": row_id if kind == "lab" else None,
            "prior_exam_result_id": row_id if kind == "exam" else None, "prior_organisation_id": org_id,
            "prior_reported_at": at, "prior_scope": scope, "priors_offered": 1, "reason_code": reason,
            "reason_note": _CHANGED_NOTE if reason in ("condition_changed", "physician_judgement") else "",
            "price_fen": recognition.price_fen(db, codes[code]),
            "decided_by_user_id": order_rows[-1]["ordered_by_user_id"], "decided_at": ordered}))
    if not order_rows:
        return 0, 0
    ids = list(db.execute(insert(ClinicalOrder).returning(ClinicalOrder.id, sort_by_parameter_order=True),
                          order_rows).scalars())
    # Numbered as the service numbers them (JY/JC + local day + id).
    db.execute(update(ClinicalOrder), [
        {"id": i, "number": f"{'JY' if row['kind'] == 'lab' else 'JC'}"
                            f"{row['ordered_at'].astimezone(_SHANGHAI):%Y%m%d}-{i:04d}"}
        for i, row in zip(ids, order_rows, strict=True)])
    db.execute(insert(RecognitionDecision), [dict(d, order_id=ids[i]) for i, d in decision_rows])
    return len(order_rows), len(decision_rows)


def _showcase(db: Session, *, now: datetime, orgs: dict[str, int]) -> None:
    """patient.shimen's head CT at 石门镇 five days ago, registered at the county hospital too; and a critical
    potassium from a township lab for the county to acknowledge."""
    user = db.execute(select(User).where(User.username == SHOWCASE_LOGIN)).scalar_one()
    patient_id = user.patient_id
    shimen, county_id = orgs["QX-C03"], orgs[county.COUNTY_HOSPITAL]
    at_county = select(PatientRegistration.id).where(PatientRegistration.patient_id == patient_id,
                                                     PatientRegistration.organisation_id == county_id)
    if db.execute(at_county).first() is None:
        db.add(PatientRegistration(patient_id=patient_id, organisation_id=county_id))
        db.flush()
    performed = now - timedelta(days=SHOWCASE_DAYS_AGO, hours=2)
    findings, impression = _EXAMS["CT_HEAD"]
    results.record_exam_result(db, data=ExamResultIn(
        patient_id=patient_id, organisation_id=shimen, exam_code="CT_HEAD", performed_at=performed,
        reported_at=performed + timedelta(hours=1), findings=findings, impression=impression,
        filler_number="SM-CT-0001", ordering_organisation_id=shimen), source="hl7", by=None)
    results.record_lab_result(db, data=LabResultIn(
        patient_id=patient_id, organisation_id=shimen, test_code="K", value="2.6", unit="mmol/L",
        reference_range="3.5-5.3", abnormal_flag="LL", specimen="血清", reported_at=now - timedelta(minutes=20),
        collected_at=now - timedelta(minutes=70), filler_number="SM-LAB-0001", ordering_organisation_id=shimen),
        source="hl7", by=None)
