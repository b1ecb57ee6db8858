"""Mutual recognition of examination and test results (检查检验结果互认), the rules in one place.

- `mark_for`: the HR mark a result carries, from the performing organisation's external quality assessment.
- `find_priors`: a patient's recognisable results of a code from any member (marked, final, still valid).
- `place_order`: a clinician's order; with priors it needs a decision — use the prior (the order is satisfied,
  the price counts as saved) or order again with a reason from the national list.
- `record_external_order`: an order from a member's HIS over HL7; a repeat is placed and flagged, since the HIS
  did not show the doctor the prior.
- `repeats_report`: recognised vs. repeated per organisation and month, in one grouped query.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import and_, func, or_, select
from sqlalchemy.orm import Session

from healthrelay.access import service as access
from healthrelay.accounts.models import Role, User
from healthrelay.audit import service as audit
from healthrelay.core.db import local_month, utcnow
from healthrelay.core.errors import AccessDenied, InvalidInput, NotFound
from healthrelay.directory.models import Organisation
from healthrelay.notifications import live
from healthrelay.patients.models import Patient
from healthrelay.recognition.models import (
    ClinicalOrder,
    EqaRecord,
    RecognitionDecision,
    RecognitionPrice,
    RecognitionValidity,
    ReorderReason,
)
from healthrelay.recognition.schemas import ExternalOrderIn, OrderIn
from healthrelay.results.models import ExamResult, LabResult, ResultCode
from healthrelay.results.service import resolve_code
from healthrelay.teleconsult.reports import hr_mark

LOCAL_TZ = ZoneInfo("Asia/Shanghai")
SCOPES = ("national", "province", "alliance")
# Wider scope wins; "county" is what remote-diagnosis reports have used for the county alliance.
SCOPE_RANK = {"alliance": 1, "county": 1, "province": 2, "national": 3}
DECISIONS = ("use_prior", "reorder")
RECOGNISED, REPEATED, UNREASONED = "recognised", "repeated", "unreasoned"
FINAL_LAB_STATUSES = ("final", "corrected")
ORDER_ROLES = frozenset({Role.CLINICIAN, Role.REMOTE_READER})
REPORT_READERS = frozenset({Role.ALLIANCE_ADMIN, Role.ORG_ADMIN, Role.HEALTH_BUREAU})
REPORT_SEE_ALL = frozenset({Role.ALLIANCE_ADMIN, Role.HEALTH_BUREAU})
EQA_EDITORS = frozenset({Role.ALLIANCE_ADMIN, Role.ORG_ADMIN})
MAX_PRIORS = 20
# A clock on a member's HIS may run a little fast; an order more than this far ahead is a mistake.
MAX_FUTURE = timedelta(hours=1)


def _actor(user: User | None, client_address: str = "") -> audit.Actor:
    return access.actor_of(user, client_address) if user is not None else audit.Actor(username="system")


def _invalid(field: str, code: str, message: str) -> InvalidInput:
    return InvalidInput(message, field_errors=[{"field": field, "code": code, "message": message}])


# --- codes ---------------------------------------------------------------------------------------

# --- rules kept as data --------------------------------------------------------------------------

def _most_specific(db: Session, model: Any, *, code: str, category: str, modality: str) -> Any:
    """The row of a code-or-modality-or-category table that fits best: a code beats a modality beats a category
    beats the blank default row. Every non-blank field of a row must match."""
    rows = db.execute(select(model).where(
        model.code.in_(("", code)), model.category.in_(("", category)), model.modality.in_(("", modality)))).scalars()
    return max(rows, key=lambda r: (4 if r.code else 0) + (2 if r.modality else 0) + (1 if r.category else 0),
               default=None)


DEFAULT_VALIDITY_DAYS = 30


def validity_days(db: Session, info: ResultCode) -> int:
    row = _most_specific(db, RecognitionValidity, code=info.code, category=info.category, modality=info.modality)
    return row.days if row is not None else DEFAULT_VALIDITY_DAYS


def price_fen(db: Session, info: ResultCode) -> int:
    row = _most_specific(db, RecognitionPrice, code=info.code, category=info.category, modality=info.modality)
    return row.price_fen if row is not None else 0


def reorder_reasons(db: Session, *, active_only: bool = True) -> list[ReorderReason]:
    stmt = select(ReorderReason).order_by(ReorderReason.position, ReorderReason.code)
    if active_only:
        stmt = stmt.where(ReorderReason.is_active.is_(True))
    return list(db.execute(stmt).scalars())


# --- the HR mark ---------------------------------------------------------------------------------

def mark_for(db: Session, *, organisation_id: int, code: str, at: datetime) -> str:
    """The widest scope of a passed external quality assessment (室间质评) of the organisation covering the code
    (or its category or modality) for the year of `at` (Shanghai); "" when none.

    Per scope the most specific record decides, so a failed assessment of one test outweighs a passed one of
    its category at the same scope, while a pass at another scope still counts.
    """
    info = resolve_code(db, kind="", code=code)
    canonical = info.code if info is not None else (code or "").strip()
    category = info.category if info is not None else ""
    modality = info.modality if info is not None else ""
    covers = [EqaRecord.code == canonical]
    if category:
        covers.append(and_(EqaRecord.code == "", EqaRecord.modality == "", EqaRecord.category == category))
    if modality:
        covers.append(and_(EqaRecord.code == "", EqaRecord.modality == modality))
    year = at.astimezone(LOCAL_TZ).year
    rows = db.execute(select(EqaRecord).where(EqaRecord.organisation_id == organisation_id, EqaRecord.year == year,
                                              or_(*covers))).scalars()
    best: dict[str, tuple[tuple[int, datetime, int], bool]] = {}
    for r in rows:
        rank = ((4 if r.code else 0) + (2 if r.modality else 0) + (1 if r.category else 0), r.recorded_at, r.id)
        if r.scope not in best or rank > best[r.scope][0]:
            best[r.scope] = (rank, r.passed)
    passed = [scope for scope, (_, ok) in best.items() if ok and scope in SCOPE_RANK]
    return max(passed, key=lambda s: SCOPE_RANK[s], default="")


@dataclass
class EqaInput:
    organisation_id: int
    scope: str
    year: int
    passed: bool
    code: str = ""
    category: str = ""
    modality: str = ""
    program: str = ""


def record_eqa(db: Session, *, by: User, data: EqaInput, client_address: str = "") -> EqaRecord:
    """An organisation's quality-assessment result, entered by its admin (or the alliance admin)."""
    if by.role not in EQA_EDITORS or (by.role == Role.ORG_ADMIN and by.organisation_id != data.organisation_id):
        raise AccessDenied("只有本机构或医共体管理员可以登记室间质评 / only the organisation's or the alliance's "
                           "admin records quality assessments")
    errors = []
    if db.get(Organisation, data.organisation_id) is None:
        errors.append({"field": "organisation_id", "code": "unknown_organisation",
                       "message": "没有该机构 / no such organisation"})
    if data.scope not in SCOPES:
        errors.append({"field": "scope", "code": "unknown_scope",
                       "message": "范围须为 national、province 或 alliance / scope must be national, province or "
                                  "alliance"})
    if not 2000 <= data.year <= 2100:
        errors.append({"field": "year", "code": "bad_year", "message": "年份不正确 / not a plausible year"})
    covered = [v for v in (data.code.strip(), data.category.strip(), data.modality.strip()) if v]
    if len(covered) != 1:
        errors.append({"field": "code", "code": "one_of",
                       "message": "须且只能填写项目代码、类别或检查类型之一 / give exactly one of code, category, "
                                  "modality"})
    code = data.code.strip()
    if code:
        info = resolve_code(db, kind="", code=code)
        if info is None:
            errors.append({"field": "code", "code": "unknown_code", "message": "未知的项目代码 / unknown code"})
        else:
            code = info.code
    category = data.category.strip().lower()
    modality = data.modality.strip().upper()
    if category and db.execute(select(ResultCode.code).where(ResultCode.category == category).limit(1)).first() is None:
        errors.append({"field": "category", "code": "unknown_category",
                       "message": f"没有类别为 {category!r} 的项目 / no code has category {category!r}"})
    if modality and db.execute(select(ResultCode.code).where(ResultCode.modality == modality).limit(1)).first() is None:
        errors.append({"field": "modality", "code": "unknown_modality",
                       "message": f"没有检查类型为 {modality!r} 的项目 / no code has modality {modality!r}"})
    if len(data.program) > 200:
        errors.append({"field": "program", "code": "too_long", "message": "最多 200 字 / at most 200 characters"})
    if errors:
        raise InvalidInput("请检查标红的栏目 / please check the marked fields", field_errors=errors)
    row = EqaRecord(organisation_id=data.organisation_id, code=code, category=category, modality=modality,
                    scope=data.scope, year=data.year, passed=data.passed,
                    program=data.program.strip(), recorded_by_user_id=by.id, recorded_at=utcnow())
    db.add(row)
    db.flush()
    audit.record(db, actor=_actor(by, client_address), action="recognition.eqa_record", resource=f"eqa:{row.id}",
                 detail={"organisation_id": row.organisation_id, "code": row.code, "category": row.category,
                         "modality": row.modality, "scope": row.scope, "year": row.year, "passed": row.passed})
    return row


def list_eqa(db: Session, *, organisation_id: int | None = None, limit: int = 500) -> list[EqaRecord]:
    stmt = select(EqaRecord).order_by(EqaRecord.year.desc(), EqaRecord.organisation_id, EqaRecord.id)
    if organisation_id is not None:
        stmt = stmt.where(EqaRecord.organisation_id == organisation_id)
    return list(db.execute(stmt.limit(limit)).scalars())


RULE_EDITORS = frozenset({Role.ALLIANCE_ADMIN})
MAX_VALIDITY_DAYS = 3650
MAX_PRICE_FEN = 10_000_000


def rule_rows(db: Session, model: Any) -> list[Any]:
    return list(db.execute(select(model).order_by(model.code, model.modality, model.category)).scalars())


def update_rules(db: Session, *, by: User, validity_days: dict[int, int], prices_fen: dict[int, int],
                 client_address: str = "") -> int:
    """The alliance admin changes validity windows and prices; each change audited with old and new value.
    All values are checked before any is written. Returns how many rows changed."""
    if by.role not in RULE_EDITORS:
        raise AccessDenied("只有医共体管理员可以修改互认规则 / only the alliance admin changes recognition rules")
    errors = []
    for rid, days in validity_days.items():
        if not 0 <= days <= MAX_VALIDITY_DAYS:
            errors.append({"field": f"days_{rid}", "code": "out_of_range",
                           "message": f"有效期须在 0–{MAX_VALIDITY_DAYS} 天 / 0 to {MAX_VALIDITY_DAYS} days"})
    for rid, fen in prices_fen.items():
        if not 0 <= fen <= MAX_PRICE_FEN:
            errors.append({"field": f"price_{rid}", "code": "out_of_range",
                           "message": "价格须在 0–100000 元 / 0 to 100000 yuan"})
    validity = {r.id: r for r in db.execute(select(RecognitionValidity).where(
        RecognitionValidity.id.in_(validity_days))).scalars()} if validity_days else {}
    prices = {r.id: r for r in db.execute(select(RecognitionPrice).where(
        RecognitionPrice.id.in_(prices_fen))).scalars()} if prices_fen else {}
    errors += [{"field": f"days_{i}", "code": "unknown_row", "message": "没有该行 / no such row"}
               for i in validity_days if i not in validity]
    errors += [{"field": f"price_{i}", "code": "unknown_row", "message": "没有该行 / no such row"}
               for i in prices_fen if i not in prices]
    if errors:
        raise InvalidInput("请检查标红的栏目 / please check the marked fields", field_errors=errors)
    changes: list[dict[str, Any]] = []
    for rid, days in validity_days.items():
        row = validity[rid]
        if row.days != days:
            changes.append({"table": "recognition_validity", "id": rid, "key": [row.code, row.category, row.modality],
                            "old": row.days, "new": days})
            row.days = days
    for rid, fen in prices_fen.items():
        row = prices[rid]
        if row.price_fen != fen:
            changes.append({"table": "recognition_prices", "id": rid, "key": [row.code, row.category, row.modality],
                            "old": row.price_fen, "new": fen})
            row.price_fen = fen
    if changes:
        db.flush()
        audit.record(db, actor=_actor(by, client_address), action="recognition.rules_changed",
                     detail={"changes": changes})
    return len(changes)


# --- priors --------------------------------------------------------------------------------------

@dataclass
class Prior:
    kind: str
    id: int
    code: str
    name: str
    organisation_id: int
    organisation_name: str
    reported_at: datetime
    performed_at: datetime | None
    value: str
    abnormal_flag: str
    recognition_scope: str
    valid_until: datetime
    patient_id: int
    study_instance_uid: str = ""

    @property
    def ref(self) -> str:
        return f"{self.kind}:{self.id}"

    @property
    def recognition_mark(self) -> str:
        return hr_mark(self.recognition_scope)

    @property
    def link(self) -> str:
        return f"/results/{self.kind}/{self.id}"

    @property
    def images_link(self) -> str:
        return f"/imaging/studies/{self.study_instance_uid}/viewer" if self.study_instance_uid else ""

    def as_dict(self) -> dict[str, Any]:
        return {"ref": self.ref, "kind": self.kind, "id": self.id, "code": self.code, "name": self.name,
                "organisation_id": self.organisation_id, "organisation_name": self.organisation_name,
                "reported_at": self.reported_at, "performed_at": self.performed_at, "value": self.value,
                "abnormal_flag": self.abnormal_flag, "recognition_scope": self.recognition_scope,
                "recognition_mark": self.recognition_mark, "valid_until": self.valid_until, "link": self.link,
                "images_link": self.images_link}


def _org_names(db: Session, ids: set[int]) -> dict[int, str]:
    if not ids:
        return {}
    return dict(db.execute(select(Organisation.id, Organisation.name).where(Organisation.id.in_(ids))).all())


def _lab_value(row: LabResult) -> str:
    text = f"{row.value_text} {row.unit}".strip()
    return f"{text} ({row.abnormal_flag})" if row.abnormal_flag and row.abnormal_flag != "N" else text


def priors_for(db: Session, *, patient_id: int, info: ResultCode, at: datetime | None = None) -> list[Prior]:
    """Recognisable results of this code for the patient from any member, newest first: marked, final, reported
    no later than `at` and no earlier than the validity window before it. No access check (callers check)."""
    at = at or utcnow()
    days = validity_days(db, info)
    since = at - timedelta(days=days)
    out: list[Prior] = []
    if info.kind == "lab":
        labs = db.execute(select(LabResult).where(
            LabResult.patient_id == patient_id, LabResult.test_code == info.code, LabResult.recognition_scope != "",
            LabResult.status.in_(FINAL_LAB_STATUSES), LabResult.reported_at >= since, LabResult.reported_at <= at)
            .order_by(LabResult.reported_at.desc(), LabResult.id.desc()).limit(MAX_PRIORS)).scalars().all()
        names = _org_names(db, {r.organisation_id for r in labs})
        out = [Prior(kind="lab", id=r.id, code=r.test_code, name=r.test_name or info.name_zh,
                     organisation_id=r.organisation_id, organisation_name=names.get(r.organisation_id, ""),
                     reported_at=r.reported_at, performed_at=r.collected_at, value=_lab_value(r),
                     abnormal_flag=r.abnormal_flag, recognition_scope=r.recognition_scope,
                     valid_until=r.reported_at + timedelta(days=days), patient_id=r.patient_id) for r in labs]
    else:
        exams = db.execute(select(ExamResult).where(
            ExamResult.patient_id == patient_id, ExamResult.exam_code == info.code, ExamResult.recognition_scope != "",
            ExamResult.reported_at >= since, ExamResult.reported_at <= at)
            .order_by(ExamResult.reported_at.desc(), ExamResult.id.desc()).limit(MAX_PRIORS)).scalars().all()
        names = _org_names(db, {r.organisation_id for r in exams})
        out = [Prior(kind="exam", id=r.id, code=r.exam_code, name=r.exam_name or info.name_zh,
                     organisation_id=r.organisation_id, organisation_name=names.get(r.organisation_id, ""),
                     reported_at=r.reported_at, performed_at=r.performed_at, value=r.impression or r.findings[:200],
                     abnormal_flag="", recognition_scope=r.recognition_scope,
                     valid_until=r.reported_at + timedelta(days=days), patient_id=r.patient_id,
                     study_instance_uid=r.study_instance_uid) for r in exams]
    return out


def _require_code(db: Session, code: str) -> ResultCode:
    info = resolve_code(db, kind="", code=code)
    if info is None:
        raise _invalid("code", "unknown_code", f"未知的检查检验项目：{code!r} / unknown test or examination code")
    return info


def find_priors(db: Session, *, user: User, patient_id: int, code: str, client_address: str = "") -> list[Prior]:
    """The priors the order form shows, for a user with a care relationship (audited read)."""
    patient = access.resolve_patient(db, patient_id)
    info = _require_code(db, code)
    access.require_patient_access(db, user=user, patient_id=patient.id, action="recognition.priors",
                                  client_address=client_address)
    return priors_for(db, patient_id=patient.id, info=info)


# --- orders --------------------------------------------------------------------------------------

class DecisionRequired(InvalidInput):
    """The patient has recognisable priors: use one, or order again with a reason. The priors travel along."""

    code = "decision_required"

    def __init__(self, priors: list[Prior]) -> None:
        message = ("该患者已有可互认的结果，请选择采用既往结果或说明理由后重新开具 / "
                   "recognisable results exist: use one, or order again with a reason")
        super().__init__(message, field_errors=[{"field": "decision", "code": "decision_required",
                                                 "message": message}])
        self.priors = priors

    def to_dict(self) -> dict[str, Any]:
        body = super().to_dict()
        body["priors"] = [{k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in p.as_dict().items()}
                          for p in self.priors]
        return body


@dataclass
class OrderOutcome:
    order: ClinicalOrder
    decision: RecognitionDecision | None
    priors: list[Prior] = field(default_factory=list)


def _new_number(order: ClinicalOrder) -> str:
    day = (order.created_at or utcnow()).astimezone(LOCAL_TZ).strftime("%Y%m%d")
    return f"{'JY' if order.kind == 'lab' else 'JC'}{day}-{order.id:04d}"


def _insert_order(db: Session, **fields: Any) -> ClinicalOrder:
    now = utcnow()
    fields.setdefault("ordered_at", now)
    order = ClinicalOrder(number=f"tmp-{uuid.uuid4().hex}", created_at=now, **fields)
    db.add(order)
    db.flush()
    order.number = _new_number(order)
    db.flush()
    return order


def _pick_prior(priors: list[Prior], ref: str) -> Prior | None:
    ref = ref.strip()
    if not ref:
        return priors[0] if priors else None
    return next((p for p in priors if p.ref == ref), None)


def _check_reason(db: Session, code: str, note: str) -> ReorderReason:
    code = code.strip()
    if not code:
        raise _invalid("reason_code", "reason_required",
                       "重新开具须选择理由 / ordering again needs a reason from the list")
    reason = db.get(ReorderReason, code)
    if reason is None or not reason.is_active:
        raise _invalid("reason_code", "unknown_reason", f"未知的重复检查理由：{code!r} / unknown reason")
    if reason.needs_note and not note.strip():
        raise _invalid("reason_note", "note_required",
                       f"“{reason.name_zh}”须写明具体情况 / “{reason.name_en}” needs a note")
    return reason


def _decision(db: Session, *, order: ClinicalOrder, info: ResultCode, outcome: str, prior: Prior, offered: int,
              by: User | None, reason: ReorderReason | None = None, note: str = "") -> RecognitionDecision:
    row = RecognitionDecision(
        order_id=order.id, organisation_id=order.ordering_organisation_id, outcome=outcome, code=info.code,
        prior_kind=prior.kind, prior_lab_result_id=prior.id if prior.kind == "lab" else None,
        prior_exam_result_id=prior.id if prior.kind == "exam" else None, prior_organisation_id=prior.organisation_id,
        prior_reported_at=prior.reported_at, prior_scope=prior.recognition_scope, priors_offered=offered,
        reason_code=reason.code if reason is not None else None, reason_note=note.strip(),
        price_fen=price_fen(db, info), decided_by_user_id=by.id if by is not None else None, decided_at=utcnow())
    db.add(row)
    db.flush()
    return row


def _announce(db: Session, order: ClinicalOrder, decision: RecognitionDecision | None) -> None:
    """Open pages of the ordering organisation (its repeats page, the patient's orders) refresh; ids only."""
    live.publish(db, topic=f"org:{order.ordering_organisation_id}", event={
        "type": "recognition.changed", "order_id": order.id,
        "outcome": decision.outcome if decision is not None else ""})


def place_order(db: Session, *, by: User, data: OrderIn, source: str = "web",
                client_address: str = "") -> OrderOutcome:
    """A clinician orders a test or examination. Everything is checked before anything is written."""
    if by.role not in ORDER_ROLES or by.organisation_id is None:
        raise AccessDenied("只有临床医师可以开具检查检验 / only clinicians place orders")
    patient = access.resolve_patient(db, data.patient_id)
    info = _require_code(db, data.code)
    decision = data.decision.strip()
    if decision not in ("", *DECISIONS):
        raise _invalid("decision", "unknown_decision", "decision 须为 use_prior 或 reorder / decision must be "
                                                       "use_prior or reorder")
    if data.performing_organisation_id is not None and db.get(Organisation, data.performing_organisation_id) is None:
        raise _invalid("performing_organisation_id", "unknown_organisation", "没有该机构 / no such organisation")
    access.require_patient_access(db, user=by, patient_id=patient.id, action="recognition.order",
                                  client_address=client_address)
    priors = priors_for(db, patient_id=patient.id, info=info)
    prior: Prior | None = None
    reason: ReorderReason | None = None
    if priors and not decision:
        raise DecisionRequired(priors)
    if decision == "use_prior":
        prior = _pick_prior(priors, data.prior_ref)
        if prior is None:
            raise _invalid("prior_ref", "no_such_prior", "所选结果不是该患者可互认的既往结果（可能已过有效期） / "
                                                         "that is not a recognisable prior of this patient (expired?)")
    elif priors:
        prior = _pick_prior(priors, data.prior_ref)
        if prior is None:
            raise _invalid("prior_ref", "no_such_prior", "所选结果不是该患者可互认的既往结果 / "
                                                         "that is not a recognisable prior of this patient")
        reason = _check_reason(db, data.reason_code, data.reason_note)
    order = _insert_order(
        db, patient_id=patient.id, ordering_organisation_id=by.organisation_id, ordered_by_user_id=by.id,
        performing_organisation_id=data.performing_organisation_id, code=info.code, kind=info.kind,
        name=info.name_zh, status="satisfied" if decision == "use_prior" else "placed", source=source,
        clinical_note=data.clinical_note.strip())
    row = None
    if prior is not None:
        row = _decision(db, order=order, info=info, outcome=RECOGNISED if decision == "use_prior" else REPEATED,
                        prior=prior, offered=len(priors), by=by, reason=reason,
                        note=data.reason_note if reason is not None else "")
    audit.record(db, actor=_actor(by, client_address), action="recognition.order", patient_id=patient.id,
                 resource=f"order:{order.id}", detail={
                     "code": info.code, "source": source, "priors": len(priors),
                     "outcome": row.outcome if row is not None else "placed",
                     "prior": prior.ref if prior is not None else "",
                     "reason": reason.code if reason is not None else ""})
    _announce(db, order, row)
    return OrderOutcome(order=order, decision=row, priors=priors)


def record_external_order(db: Session, *, data: ExternalOrderIn, by: User | None,
                          hl7_message_id: int | None = None) -> ClinicalOrder:
    """An order from a member's HIS (HL7 ORM^O01 / OML^O21), idempotent on (ordering organisation, placer number).

    A new order with a recognisable prior is placed (the HIS decided) and flagged "repeat without recorded
    reason" for the ordering organisation to look at — unless the message names a reason from the list.
    """
    placer = data.placer_number.strip()
    if not placer:
        raise _invalid("placer_number", "missing_field", "缺少医嘱号（ORC-2） / the placer order number is missing")
    if len(placer) > 40:
        raise _invalid("placer_number", "too_long", "医嘱号过长 / placer order number too long")
    if data.action not in ("new", "cancel"):
        raise _invalid("action", "unsupported_action", f"不支持的医嘱操作：{data.action!r} / unsupported order action")
    if db.get(Organisation, data.ordering_organisation_id) is None:
        raise _invalid("ordering_organisation_id", "unknown_organisation", "没有该机构 / no such organisation")
    existing = db.execute(select(ClinicalOrder).where(
        ClinicalOrder.ordering_organisation_id == data.ordering_organisation_id,
        ClinicalOrder.placer_number == placer)).scalar()
    actor = _actor(by)
    if data.action == "cancel":
        if existing is None:
            raise _invalid("placer_number", "unknown_order",
                           f"没有医嘱号为 {placer} 的医嘱，无法撤销 / no order {placer} to cancel")
        if existing.status != "cancelled":
            existing.status = "cancelled"
            existing.cancelled_at = utcnow()
            existing.cancel_reason = data.reason.strip()[:200]
            db.flush()
            audit.record(db, actor=actor, action="recognition.order_cancel", patient_id=existing.patient_id,
                         resource=f"order:{existing.id}", detail={"placer_number": placer, "source": "hl7",
                                                                   "hl7_message_id": hl7_message_id})
            _announce(db, existing, None)
        return existing
    if existing is not None:
        return existing
    patient = db.get(Patient, data.patient_id)
    if patient is None:
        raise _invalid("patient_id", "unknown_patient", "没有该居民 / unknown patient")
    patient = access.resolve_patient(db, patient.id)
    info = _require_code(db, data.code)
    # HL7 timestamps without an offset are the sender's wall clock: Beijing time.
    ordered_at = data.ordered_at if data.ordered_at.tzinfo else data.ordered_at.replace(tzinfo=LOCAL_TZ)
    if ordered_at > utcnow() + MAX_FUTURE:
        raise _invalid("ordered_at", "in_future", "医嘱时间在未来 / the order time lies in the future")
    if data.performing_organisation_id is not None and db.get(Organisation, data.performing_organisation_id) is None:
        raise _invalid("performing_organisation_id", "unknown_organisation", "没有该机构 / no such organisation")
    priors = priors_for(db, patient_id=patient.id, info=info, at=ordered_at)
    order = _insert_order(
        db, patient_id=patient.id, ordering_organisation_id=data.ordering_organisation_id,
        ordered_by_user_id=None, ordering_provider=data.ordering_provider.strip()[:100],
        performing_organisation_id=data.performing_organisation_id, code=info.code, kind=info.kind,
        name=info.name_zh, placer_number=placer, status="placed", source="hl7",
        clinical_note=data.reason.strip()[:2000], ordered_at=ordered_at, hl7_message_id=hl7_message_id)
    row = None
    if priors:
        named = db.get(ReorderReason, data.reason.strip()) if data.reason.strip() else None
        usable = named is not None and named.is_active and not named.needs_note
        row = _decision(db, order=order, info=info, outcome=REPEATED if usable else UNREASONED, prior=priors[0],
                        offered=len(priors), by=by, reason=named if usable else None,
                        note="" if usable else data.reason)
    audit.record(db, actor=actor, action="recognition.order", patient_id=patient.id, resource=f"order:{order.id}",
                 detail={"code": info.code, "source": "hl7", "placer_number": placer, "priors": len(priors),
                         "outcome": row.outcome if row is not None else "placed", "hl7_message_id": hl7_message_id})
    _announce(db, order, row)
    return order


def resolve_flag(db: Session, *, by: User, order_id: int, reason_code: str, reason_note: str = "",
                 client_address: str = "") -> RecognitionDecision:
    """The ordering organisation records, after the fact, why a flagged HL7 repeat was needed."""
    order = get_order(db, order_id=order_id, user=by, client_address=client_address)
    row = decision_of(db, order)
    if row is None or row.outcome != UNREASONED:
        raise _invalid("order_id", "not_flagged", "该医嘱没有待补理由的重复检查 / this order has no flagged repeat")
    if by.organisation_id != order.ordering_organisation_id or by.role not in (*ORDER_ROLES, Role.ORG_ADMIN):
        raise AccessDenied("只有开单机构的医师或管理员可以补录理由 / only the ordering organisation records the reason")
    reason = _check_reason(db, reason_code, reason_note)
    row.outcome = REPEATED
    row.reason_code = reason.code
    row.reason_note = reason_note.strip()
    row.resolved_by_user_id = by.id
    row.resolved_at = utcnow()
    db.flush()
    audit.record(db, actor=_actor(by, client_address), action="recognition.flag_resolved",
                 patient_id=order.patient_id, resource=f"order:{order.id}", detail={"reason": reason.code})
    _announce(db, order, row)
    return row


def get_order(db: Session, *, order_id: int, user: User, client_address: str = "") -> ClinicalOrder:
    """An order for staff caring for the patient (audited); the ordering organisation's admin may see it too."""
    order = db.get(ClinicalOrder, order_id)
    if order is None:
        raise NotFound(f"没有编号为 {order_id} 的医嘱 / no order {order_id}")
    if user.role == Role.ORG_ADMIN and user.organisation_id == order.ordering_organisation_id:
        audit.record(db, actor=_actor(user, client_address), action="recognition.order_read",
                     patient_id=order.patient_id, purpose="order_admin", resource=f"order:{order.id}")
        return order
    access.require_patient_access(db, user=user, patient_id=order.patient_id, action="recognition.order_read",
                                  client_address=client_address)
    return order


def decision_of(db: Session, order: ClinicalOrder) -> RecognitionDecision | None:
    return db.execute(select(RecognitionDecision).where(RecognitionDecision.order_id == order.id)).scalar()


def orders_of_patient(db: Session, *, user: User, patient_id: int, client_address: str = "",
                      limit: int = 200) -> tuple[Patient, list[tuple[ClinicalOrder, RecognitionDecision | None]]]:
    patient = access.resolve_patient(db, patient_id)
    access.require_patient_access(db, user=user, patient_id=patient.id, action="recognition.orders_list",
                                  client_address=client_address)
    rows = db.execute(select(ClinicalOrder, RecognitionDecision)
                      .outerjoin(RecognitionDecision, RecognitionDecision.order_id == ClinicalOrder.id)
                      .where(ClinicalOrder.patient_id == patient.id)
                      .order_by(ClinicalOrder.ordered_at.desc(), ClinicalOrder.id.desc()).limit(limit)).all()
    return patient, [(o, d) for o, d in rows]


def flagged_orders(db: Session, *, organisation_id: int | None, limit: int = 100) -> list[tuple[str, int, str]]:
    """(order number, order id, code) of HL7 repeats still waiting for a reason; no patient data."""
    stmt = (select(ClinicalOrder.number, ClinicalOrder.id, ClinicalOrder.code)
            .join(RecognitionDecision, RecognitionDecision.order_id == ClinicalOrder.id)
            .where(RecognitionDecision.outcome == UNREASONED, ClinicalOrder.status != "cancelled")
            .order_by(ClinicalOrder.ordered_at.desc()).limit(limit))
    if organisation_id is not None:
        stmt = stmt.where(ClinicalOrder.ordering_organisation_id == organisation_id)
    return [(n, i, c) for n, i, c in db.execute(stmt).all()]


# --- the repeats report --------------------------------------------------------------------------

@dataclass
class RepeatsRow:
    organisation_id: int
    organisation_name: str
    month: str
    recognised: int = 0
    repeated: int = 0
    unreasoned: int = 0
    saved_fen: int = 0
    repeats_by_reason: dict[str, int] = field(default_factory=dict)

    @property
    def decided(self) -> int:
        return self.recognised + self.repeated + self.unreasoned

    @property
    def recognition_rate(self) -> float | None:
        return self.recognised / self.decided if self.decided else None


@dataclass
class RepeatsReport:
    start: date
    end: date  # inclusive, last day of the last month
    organisation_id: int | None
    organisation_name: str
    months: list[str]
    rows: list[RepeatsRow]  # one per organisation and month with any decision
    totals: RepeatsRow
    by_month: list[RepeatsRow]
    reasons: list[ReorderReason]
    generated_at: datetime


DEFAULT_MONTHS = 6


def parse_period(start: str | None, end: str | None) -> tuple[date, date]:
    """Month pickers' "YYYY-MM" values (default: the last six months) as first and last day."""
    from healthrelay.referrals.kpi import last_months, month_range

    default_start, default_end = last_months(DEFAULT_MONTHS)
    first = start.strip() if start and start.strip() else default_start.strftime("%Y-%m")
    last = end.strip() if end and end.strip() else default_end.strftime("%Y-%m")
    return month_range(first, last)


def parse_org(value: str | None) -> int | None:
    if value is None or not value.strip():
        return None
    from healthrelay.recognition.schemas import MAX_ID

    value = value.strip()
    if not (value.isascii() and value.isdigit()) or not 1 <= int(value) <= MAX_ID:
        raise _invalid("organisation", "not_a_number", "organisation 须为机构编号 / organisation must be an id")
    return int(value)


def record_report_view(db: Session, *, user: User, report: RepeatsReport, output: str,
                       client_address: str = "") -> None:
    """Who looked at or took which figures (no patient data). Call last: it holds the audit lock until commit."""
    audit.record(db, actor=_actor(user, client_address),
                 action="recognition.repeats_view" if output == "page" else "recognition.repeats_export",
                 resource=f"organisation:{report.organisation_id}" if report.organisation_id else "",
                 detail={"start": report.start.isoformat(), "end": report.end.isoformat(), "output": output})


def _local_start(day: date) -> datetime:
    return datetime.combine(day, time(0), tzinfo=LOCAL_TZ).astimezone(UTC)


def _add(target: RepeatsRow, outcome: str, reason: str | None, n: int, fen: int) -> None:
    if outcome == RECOGNISED:
        target.recognised += n
        target.saved_fen += fen
    elif outcome == REPEATED:
        target.repeated += n
    else:
        target.unreasoned += n
    if outcome != RECOGNISED:
        key = reason or "none"
        target.repeats_by_reason[key] = target.repeats_by_reason.get(key, 0) + n


def repeats_report(db: Session, *, user: User, start: date, end: date,
                   organisation_id: int | None = None) -> RepeatsReport:
    """Recognised vs. repeated results per ordering organisation and month (Shanghai), with the money saved
    at the prices copied at decision time; cancelled orders (never performed) do not count. One GROUP BY over
    the indexed decision time; no patient data."""
    from healthrelay.referrals.kpi import month_keys

    if end < start:
        raise _invalid("end", "before_start", "结束月份早于开始月份 / the end month is before the start month")
    if (end.year - start.year) * 12 + end.month - start.month > 36:
        raise _invalid("end", "too_long", "最多 36 个月 / at most 36 months")
    org = access.figures_scope(db, user=user, organisation_id=organisation_id, readers=REPORT_READERS,
                               see_all=REPORT_SEE_ALL, figures="互认统计 / recognition figures")
    month = local_month(db, RecognitionDecision.decided_at).label("month")
    saved = func.coalesce(func.sum(RecognitionDecision.price_fen), 0)
    stmt = (select(RecognitionDecision.organisation_id, month, RecognitionDecision.outcome,
                   RecognitionDecision.reason_code, func.count(), saved)
            .join(ClinicalOrder, ClinicalOrder.id == RecognitionDecision.order_id)
            .where(ClinicalOrder.status != "cancelled", RecognitionDecision.decided_at >= _local_start(start),
                   RecognitionDecision.decided_at < _local_start(end + timedelta(days=1)))
            .group_by(RecognitionDecision.organisation_id, month, RecognitionDecision.outcome,
                      RecognitionDecision.reason_code))
    if org is not None:
        stmt = stmt.where(RecognitionDecision.organisation_id == org.id)
    keys = month_keys(start, end)
    cells: dict[tuple[int, str], RepeatsRow] = {}
    per_month = {k: RepeatsRow(organisation_id=0, organisation_name="", month=k) for k in keys}
    totals = RepeatsRow(organisation_id=org.id if org else 0, organisation_name=org.name if org else "", month="")
    results = db.execute(stmt).all()
    names = _org_names(db, {r[0] for r in results})
    for org_id, m, outcome, reason, n, fen in results:
        cell = cells.setdefault((org_id, m), RepeatsRow(organisation_id=org_id,
                                                        organisation_name=names.get(org_id, ""), month=m))
        for target in (cell, totals, per_month.setdefault(m, RepeatsRow(0, "", m))):
            _add(target, outcome, reason, int(n), int(fen))
    rows = sorted(cells.values(), key=lambda r: (r.month, r.organisation_name, r.organisation_id))
    return RepeatsReport(start=start, end=end, organisation_id=org.id if org else None,
                         organisation_name=org.name if org else "", months=keys, rows=rows, totals=totals,
                         by_month=[per_month[k] for k in keys], reasons=reorder_reasons(db, active_only=False),
                         generated_at=utcnow())


def report_dict(report: RepeatsReport) -> dict[str, Any]:
    def row(r: RepeatsRow) -> dict[str, Any]:
        return {"organisation_id": r.organisation_id, "organisation_name": r.organisation_name, "month": r.month,
                "recognised": r.recognised, "repeated": r.repeated, "unreasoned": r.unreasoned,
                "recognition_rate": r.recognition_rate, "saved_yuan": r.saved_fen / 100,
                "repeats_by_reason": dict(r.repeats_by_reason)}

    t = report.totals
    return {"start": report.start.strftime("%Y-%m"), "end": report.end.strftime("%Y-%m"),
            "organisation_id": report.organisation_id, "recognised": t.recognised, "repeated": t.repeated,
            "unreasoned": t.unreasoned, "recognition_rate": t.recognition_rate, "saved_yuan": t.saved_fen / 100,
            "repeats_by_reason": dict(t.repeats_by_reason), "rows": [row(r) for r in report.rows]}


def yuan(fen: int) -> str:
    return f"¥{fen / 100:,.2f}"

