"""Referral rules and the one state machine; every state change goes through `transition`."""

from __future__ import annotations

import hashlib
import os
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import filetype
from sqlalchemy import case, exists, select, update
from sqlalchemy.orm import Session, aliased

from healthrelay.access import service as access
from healthrelay.accounts.models import Role, User
from healthrelay.audit import service as audit
from healthrelay.core import timers
from healthrelay.core.config import get_settings
from healthrelay.core.db import utcnow
from healthrelay.core.errors import AccessDenied, Conflict, InvalidInput, NotFound, field_error
from healthrelay.directory.models import AllianceMembership, Department, Organisation, Specialty, Team
from healthrelay.directory.service import great_circle_km
from healthrelay.referrals import announce, icd10
from healthrelay.referrals.models import (
    Direction,
    FollowUpTask,
    Referral,
    ReferralAttachment,
    ReferralDeadline,
    ReferralEscalation,
    ReferralTransition,
    State,
    Urgency,
)

CONSENT_KINDS = frozenset({"written", "verbal", "guardian"})
DEFAULT_DEADLINE_MINUTES = {Urgency.GREEN_CHANNEL: 15, Urgency.URGENT: 120, Urgency.ROUTINE: 1440}
CARE_RELATIONSHIP_DAYS_AFTER = 30
ESCALATE_KIND = "referral.escalate"
EXPIRE_KIND = "referral.expire"
DEFAULT_EXPIRE_MINUTES = {Urgency.GREEN_CHANNEL: 120, Urgency.URGENT: 720, Urgency.ROUTINE: 4320}
_SHANGHAI = ZoneInfo("Asia/Shanghai")

# The whole state machine: (from, to) pairs that may happen. Nothing else changes `state`.
TRANSITIONS: dict[tuple[State, State], str] = {
    (State.DRAFT, State.SENT): "send",
    (State.DRAFT, State.CANCELLED): "cancel",
    (State.SENT, State.ACCEPTED): "accept",
    (State.SENT, State.DECLINED): "decline",
    (State.SENT, State.REDIRECTED): "redirect",
    (State.SENT, State.CANCELLED): "cancel",
    (State.SENT, State.EXPIRED): "expire",
    (State.REDIRECTED, State.ACCEPTED): "accept",
    (State.REDIRECTED, State.DECLINED): "decline",
    (State.REDIRECTED, State.REDIRECTED): "redirect",
    (State.REDIRECTED, State.CANCELLED): "cancel",
    (State.REDIRECTED, State.EXPIRED): "expire",
    (State.ACCEPTED, State.ARRIVED): "arrive",
    (State.ACCEPTED, State.CANCELLED): "cancel",
    (State.ARRIVED, State.COMPLETED): "complete",
}
AWAITING_ANSWER = (State.SENT, State.REDIRECTED)
CLOSED = (State.DECLINED, State.COMPLETED, State.CANCELLED, State.EXPIRED)


@dataclass
class ReferralInput:
    """What a sender fills in; checked field by field by `_validate`."""

    patient_id: int
    to_organisation_id: int
    urgency: Urgency = Urgency.ROUTINE
    to_department_id: int | None = None
    to_team_id: int | None = None
    wanted_specialty_id: int | None = None
    reason: str = ""
    diagnosis_code: str = ""
    diagnosis_text: str = ""
    case_summary: str = ""
    vital_signs: dict[str, Any] = field(default_factory=dict)
    medicines: list[Any] = field(default_factory=list)
    consent_kind: str | None = None
    care_plan: dict[str, Any] = field(default_factory=dict)
    # Down referrals: the upward referral that brought the patient here, so the episode stays linked.
    parent_referral_id: int | None = None


def _actor(user: User | None, client_address: str = "") -> audit.Actor:
    return access.actor_of(user, client_address)


def deadline_minutes(db: Session, urgency: Urgency) -> int:
    row = db.get(ReferralDeadline, str(urgency))
    return row.response_minutes if row is not None else DEFAULT_DEADLINE_MINUTES[urgency]


def expire_minutes(db: Session, urgency: Urgency) -> int:
    row = db.get(ReferralDeadline, str(urgency))
    return row.expire_minutes if row is not None else DEFAULT_EXPIRE_MINUTES[urgency]


def _shares_alliance(db: Session, org_a: int, org_b: int) -> bool:
    other = aliased(AllianceMembership)
    return bool(db.execute(select(exists().where(
        AllianceMembership.organisation_id == org_a, other.organisation_id == org_b,
        other.alliance_id == AllianceMembership.alliance_id))).scalar())


def _check_target(db: Session, *, sender_org_id: int, to_organisation_id: int, to_department_id: int | None,
                  errors: list[dict[str, Any]], org_field: str = "to_organisation_id",
                  dept_field: str = "to_department_id") -> None:
    org = db.get(Organisation, to_organisation_id)
    if org is None:
        errors.append(field_error(org_field, f"没有编号为 {to_organisation_id} 的机构 / unknown organisation"))
        return
    if org.id == sender_org_id:
        errors.append(field_error(org_field, "不能转诊给本机构 / cannot refer to your own organisation"))
    elif not _shares_alliance(db, sender_org_id, org.id):
        errors.append(field_error(org_field, "该机构不在本机构所属的医联体内 / organisation is outside your alliances"))
    if to_department_id is not None:
        dept = db.get(Department, to_department_id)
        if dept is None or dept.organisation_id != org.id:
            errors.append(field_error(dept_field, "该机构没有此科室 / unknown department at that organisation"))


def _validate(db: Session, *, by: User, data: ReferralInput, direction: Direction) -> None:
    """Name every problem at once, before anything is written."""
    errors: list[dict[str, Any]] = []
    if by.organisation_id is None:
        raise AccessDenied("只有机构人员可以转诊 / only staff of an organisation may refer")
    _check_target(db, sender_org_id=by.organisation_id, to_organisation_id=data.to_organisation_id,
                  to_department_id=data.to_department_id, errors=errors)
    if data.to_team_id is not None:
        team = db.get(Team, data.to_team_id)
        if team is None or team.organisation_id != data.to_organisation_id:
            errors.append(field_error("to_team_id", "该机构没有此团队 / unknown team at that organisation"))
    if data.wanted_specialty_id is not None and db.get(Specialty, data.wanted_specialty_id) is None:
        errors.append(field_error("wanted_specialty_id", "未知专科 / unknown specialty"))
    if data.diagnosis_code:
        entry = icd10.describe(data.diagnosis_code)
        if entry is None:
            errors.append(field_error("diagnosis_code", f"未知的 ICD-10 编码“{data.diagnosis_code}”（如 I21.9）/ "
                                      f"unknown ICD-10 code {data.diagnosis_code!r} (e.g. I21.9)"))
        else:
            data.diagnosis_code = entry.code
            data.diagnosis_text = data.diagnosis_text or entry.name_zh or entry.name_en
    if data.consent_kind is not None and data.consent_kind not in CONSENT_KINDS:
        errors.append(field_error("consent_kind", "知情同意方式须为 written/verbal/guardian / unknown consent kind"))
    if direction == Direction.DOWN:
        _validate_care_plan(data.care_plan, errors)
    if data.parent_referral_id is not None:
        parent = db.get(Referral, data.parent_referral_id)
        if parent is None or parent.patient_id != data.patient_id or parent.to_organisation_id != by.organisation_id:
            errors.append(field_error("parent_referral_id", "不是本机构接收的该患者转诊单 / "
                                      "not a referral of this patient to your organisation"))
    if errors:
        raise InvalidInput("转诊信息有误 / the referral has errors: " + "; ".join(e["field"] for e in errors),
                           field_errors=errors)


def _validate_care_plan(plan: dict[str, Any], errors: list[dict[str, Any]]) -> None:
    follow_up = plan.get("follow_up")
    if not isinstance(follow_up, list) or not follow_up:
        errors.append(field_error("care_plan.follow_up",
                                  "下转须有随访计划 / a down referral needs a follow-up schedule"))
        return
    for i, item in enumerate(follow_up):
        ok = isinstance(item, dict) and isinstance(item.get("kind"), str) and item["kind"].strip()
        try:
            date.fromisoformat(str(item.get("due_on"))) if ok else None
        except ValueError:
            ok = False
        if not ok:
            errors.append(field_error(f"care_plan.follow_up.{i}", "须有 due_on（日期）与 kind / needs due_on and kind"))


def _new_number(referral: Referral) -> str:
    day = (referral.created_at or utcnow()).astimezone(_SHANGHAI).strftime("%Y%m%d")
    return f"ZZ{day}-{referral.id:04d}"


def _load(db: Session, referral_id: int) -> Referral:
    referral = db.get(Referral, referral_id)
    if referral is None:
        raise NotFound(f"没有编号为 {referral_id} 的转诊 / no referral {referral_id}")
    return referral


def transition(db: Session, *, referral: Referral, to: State, by: User | None, reason: str = "",
               detail: dict[str, Any] | None = None, values: dict[str, Any] | None = None,
               client_address: str = "") -> Referral:
    """Move `referral` to `to` if the table allows it and nobody moved it first; record who, when, why.

    The change is a conditional UPDATE on the state we read, so of two users accepting at once
    exactly one matches a row; the other gets 409 (on PostgreSQL its UPDATE waits for the first).
    """
    db.flush()
    current = referral.state
    if (current, to) not in TRANSITIONS:
        raise Conflict(f"转诊单处于“{current}”状态，不能改为“{to}” / cannot go from {current} to {to}",
                       code="invalid_transition", field_errors=[field_error("state", f"{current} -> {to}")])
    now = utcnow()
    changes = {"state": to, "updated_at": now, **(values or {})}
    if to in CLOSED:
        changes.setdefault("closed_at", now)
    result = db.execute(update(Referral).where(Referral.id == referral.id, Referral.state == current)
                        .values(**changes).execution_options(synchronize_session=False))
    if result.rowcount != 1:
        db.refresh(referral)
        raise Conflict(f"转诊单已被他人处理（现为“{referral.state}”）/ someone else already moved it to "
                       f"{referral.state}; cannot go from {current} to {to}", code="invalid_transition",
                       field_errors=[field_error("state", f"{referral.state} -> {to}")])
    db.refresh(referral)
    db.add(ReferralTransition(referral_id=referral.id, from_state=str(current), to_state=str(to),
                              by_user_id=by.id if by else None, at=now, reason=reason, detail=detail or {}))
    if current in AWAITING_ANSWER and to not in AWAITING_ANSWER or to == State.REDIRECTED:
        _cancel_escalations(db, referral, round_=referral.round - (1 if to == State.REDIRECTED else 0))
    audit.record(db, actor=_actor(by, client_address), action=f"referral.{TRANSITIONS[(current, to)]}",
                 patient_id=referral.patient_id, resource=f"referral:{referral.id}",
                 detail={"from": str(current), "to": str(to)})
    db.flush()
    db.expire(referral, ["transitions"])
    announce.transition(db, referral=referral, from_state=current, by=by)
    return referral


# --- escalation timers ---------------------------------------------------------------------------

def escalation_key(referral: Referral | int, level: int, round_: int = 0) -> str:
    rid = referral if isinstance(referral, int) else referral.id
    return f"referral:{rid}:escalate:{level}" + (f":r{round_}" if round_ else "")


def _schedule_escalation(db: Session, referral: Referral, *, level: int, due_at: datetime) -> None:
    timers.schedule(db, kind=ESCALATE_KIND, due_at=due_at,
                    payload={"referral_id": referral.id, "level": level, "round": referral.round},
                    dedupe_key=escalation_key(referral, level, referral.round))


def _cancel_escalations(db: Session, referral: Referral, *, round_: int) -> None:
    for level in (1, 2):
        timers.cancel(db, dedupe_key=escalation_key(referral, level, round_))
    timers.cancel(db, dedupe_key=expiry_key(referral, round_))


def expiry_key(referral: Referral | int, round_: int = 0) -> str:
    rid = referral if isinstance(referral, int) else referral.id
    return f"referral:{rid}:expire" + (f":r{round_}" if round_ else "")


def _start_clocks(db: Session, referral: Referral, due: datetime) -> None:
    """Arm the escalation at the answer deadline and the expiry after it, for this answering round."""
    _schedule_escalation(db, referral, level=1, due_at=due)
    timers.schedule(db, kind=EXPIRE_KIND, due_at=utcnow() + timedelta(minutes=expire_minutes(db, referral.urgency)),
                    payload={"referral_id": referral.id, "round": referral.round},
                    dedupe_key=expiry_key(referral, referral.round))


def _start_answer_clock(db: Session, referral: Referral) -> datetime:
    return utcnow() + timedelta(minutes=deadline_minutes(db, referral.urgency))


# --- the flows -----------------------------------------------------------------------------------

def create_draft(db: Session, *, by: User, data: ReferralInput, direction: Direction = Direction.UP,
                 client_address: str = "") -> Referral:
    _validate(db, by=by, data=data, direction=direction)
    patient = access.resolve_patient(db, data.patient_id)
    access.require_patient_access(db, user=by, patient_id=patient.id, action="referral.create",
                                  client_address=client_address)
    now = utcnow()
    consent = data.consent_kind is not None
    referral = Referral(
        number=f"tmp-{uuid.uuid4().hex}", direction=direction, urgency=data.urgency, state=State.DRAFT,
        patient_id=patient.id, from_organisation_id=by.organisation_id, from_user_id=by.id,
        to_organisation_id=data.to_organisation_id, to_department_id=data.to_department_id,
        to_team_id=data.to_team_id, wanted_specialty_id=data.wanted_specialty_id, reason=data.reason,
        diagnosis_code=data.diagnosis_code, diagnosis_text=data.diagnosis_text, case_summary=data.case_summary,
        vital_signs=data.vital_signs, medicines=data.medicines, consent_kind=data.consent_kind or "",
        consent_recorded_by_user_id=by.id if consent else None, consent_at=now if consent else None,
        care_plan=data.care_plan, parent_referral_id=data.parent_referral_id, created_at=now, updated_at=now)
    db.add(referral)
    db.flush()
    referral.number = _new_number(referral)
    db.add(ReferralTransition(referral_id=referral.id, from_state="", to_state=str(State.DRAFT), by_user_id=by.id,
                              at=now, reason="created"))
    db.flush()
    return referral


def _require_party(referral: Referral, user: User, *, side: str) -> None:
    org_id = referral.from_organisation_id if side == "from" else referral.to_organisation_id
    if user.organisation_id != org_id:
        who = "转出" if side == "from" else "接收"
        raise AccessDenied(f"只有{who}机构的人员可以执行此操作 / only staff of the {side} organisation may do this")


def record_consent(db: Session, *, by: User, referral_id: int, consent_kind: str,
                   client_address: str = "") -> Referral:
    """Consent taken after the draft was saved (the patient or guardian agreed later), by the sender's staff."""
    referral = _load(db, referral_id)
    _require_party(referral, by, side="from")
    if referral.state != State.DRAFT:
        raise Conflict("只有草稿可以补录知情同意 / consent is recorded on drafts only", code="invalid_transition")
    if consent_kind not in CONSENT_KINDS:
        raise InvalidInput("知情同意方式须为 written/verbal/guardian / unknown consent kind",
                           field_errors=[field_error("consent_kind", "written, verbal or guardian")])
    referral.consent_kind = consent_kind
    referral.consent_recorded_by_user_id = by.id
    referral.consent_at = utcnow()
    db.flush()
    audit.record(db, actor=_actor(by, client_address), action="referral.consent", patient_id=referral.patient_id,
                 resource=f"referral:{referral.id}", detail={"consent_kind": consent_kind})
    return referral


def send(db: Session, *, by: User, referral_id: int, client_address: str = "") -> Referral:
    referral = _load(db, referral_id)
    _require_party(referral, by, side="from")
    if referral.consent_at is None:
        raise InvalidInput("发送前须记录患者知情同意 / record the patient's consent before sending",
                           field_errors=[field_error("consent_kind", "consent missing")])
    due = _start_answer_clock(db, referral)
    transition(db, referral=referral, to=State.SENT, by=by, values={"sent_at": utcnow(), "response_due_at": due},
               client_address=client_address)
    _start_clocks(db, referral, due)
    return referral


def accept(db: Session, *, by: User, referral_id: int, appointment_at: datetime | None = None, bed: str = "",
           client_address: str = "") -> Referral:
    referral = _load(db, referral_id)
    _require_party(referral, by, side="to")
    if referral.direction == Direction.UP and appointment_at is None and not bed.strip():
        raise InvalidInput("接收须给出就诊时间或床位 / give an appointment time or a bed",
                           field_errors=[field_error("appointment_at", "appointment time or bed required")])
    transition(db, referral=referral, to=State.ACCEPTED, by=by, client_address=client_address,
               values={"appointment_at": appointment_at, "bed": bed.strip(), "answered_at": utcnow()},
               detail={"appointment_at": appointment_at.isoformat() if appointment_at else None, "bed": bed})
    if referral.direction == Direction.DOWN:
        _create_follow_up_tasks(db, referral)
    return referral


def decline(db: Session, *, by: User, referral_id: int, reason: str,
            suggested_alternative_organisation_id: int | None = None, client_address: str = "") -> Referral:
    referral = _load(db, referral_id)
    _require_party(referral, by, side="to")
    errors = []
    if not (reason or "").strip():
        errors.append(field_error("reason", "请填写拒绝理由 / a reason is required"))
    if suggested_alternative_organisation_id is None:
        errors.append(field_error("suggested_alternative_organisation_id",
                                  "请建议其他接收机构 / suggest another organisation"))
    elif db.get(Organisation, suggested_alternative_organisation_id) is None:
        errors.append(field_error("suggested_alternative_organisation_id", "未知机构 / unknown organisation"))
    if errors:
        raise InvalidInput("拒绝须有理由并建议其他机构 / a decline needs a reason and an alternative",
                           field_errors=errors)
    return transition(db, referral=referral, to=State.DECLINED, by=by, reason=reason.strip(),
                      client_address=client_address,
                      values={"decline_reason": reason.strip(), "answered_at": utcnow(),
                              "suggested_alternative_organisation_id": suggested_alternative_organisation_id},
                      detail={"suggested_alternative_organisation_id": suggested_alternative_organisation_id})


def redirect(db: Session, *, by: User, referral_id: int, to_organisation_id: int, to_department_id: int | None = None,
             reason: str = "", client_address: str = "") -> Referral:
    """The receiver passes the referral on to a better-placed member; the answer clock restarts."""
    referral = _load(db, referral_id)
    _require_party(referral, by, side="to")
    errors: list[dict[str, Any]] = []
    _check_target(db, sender_org_id=referral.from_organisation_id, to_organisation_id=to_organisation_id,
                  to_department_id=to_department_id, errors=errors)
    if to_organisation_id == referral.to_organisation_id and to_department_id == referral.to_department_id:
        errors.append(field_error("to_organisation_id", "与当前接收方相同 / same as the current receiver"))
    if errors:
        raise InvalidInput("转介目标有误 / the new target has errors", field_errors=errors)
    due = _start_answer_clock(db, referral)
    transition(db, referral=referral, to=State.REDIRECTED, by=by, reason=reason, client_address=client_address,
               values={"to_organisation_id": to_organisation_id, "to_department_id": to_department_id,
                       "round": referral.round + 1, "response_due_at": due},
               detail={"from_organisation_id": referral.to_organisation_id,
                       "to_organisation_id": to_organisation_id, "to_department_id": to_department_id})
    _start_clocks(db, referral, due)
    return referral


def mark_arrived(db: Session, *, by: User, referral_id: int, client_address: str = "") -> Referral:
    referral = _load(db, referral_id)
    _require_party(referral, by, side="to")
    return transition(db, referral=referral, to=State.ARRIVED, by=by, client_address=client_address)


def complete(db: Session, *, by: User, referral_id: int, outcome: str, client_address: str = "") -> Referral:
    referral = _load(db, referral_id)
    _require_party(referral, by, side="to")
    if not (outcome or "").strip():
        raise InvalidInput("请填写转归 / the outcome is required", field_errors=[field_error("outcome", "required")])
    return transition(db, referral=referral, to=State.COMPLETED, by=by, reason=outcome.strip(),
                      values={"outcome": outcome.strip()}, client_address=client_address)


def cancel(db: Session, *, by: User, referral_id: int, reason: str, client_address: str = "") -> Referral:
    referral = _load(db, referral_id)
    _require_party(referral, by, side="from")
    if not (reason or "").strip():
        raise InvalidInput("请填写撤销理由 / a reason is required", field_errors=[field_error("reason", "required")])
    return transition(db, referral=referral, to=State.CANCELLED, by=by, reason=reason.strip(),
                      client_address=client_address)


def expire(db: Session, *, referral_id: int, reason: str = "无人答复 / no answer") -> Referral:
    """The system gives up on an unanswered referral (no user); the sender is told to refer elsewhere."""
    return transition(db, referral=_load(db, referral_id), to=State.EXPIRED, by=None, reason=reason)


def send_down(db: Session, *, by: User, data: ReferralInput, client_address: str = "") -> Referral:
    """下转: to the patient's township/community centre or family-doctor team, with a care plan, sent at once."""
    if data.consent_kind is None:
        raise InvalidInput("发送前须记录患者知情同意 / record the patient's consent before sending",
                           field_errors=[field_error("consent_kind", "consent missing")])
    referral = create_draft(db, by=by, data=data, direction=Direction.DOWN, client_address=client_address)
    return send(db, by=by, referral_id=referral.id, client_address=client_address)


def _create_follow_up_tasks(db: Session, referral: Referral) -> None:
    for item in referral.care_plan.get("follow_up", []):
        db.add(FollowUpTask(referral_id=referral.id, organisation_id=referral.to_organisation_id,
                            team_id=referral.to_team_id, patient_id=referral.patient_id,
                            due_on=date.fromisoformat(str(item["due_on"])), kind=str(item["kind"]).strip(),
                            note=str(item.get("note", ""))))
    db.flush()


def history_of(db: Session, referral: Referral) -> list[dict[str, Any]]:
    """The chain of referrals ending at `referral`, oldest first, each with its transitions."""
    chain: list[Referral] = []
    current: Referral | None = referral
    while current is not None and current not in chain:
        chain.append(current)
        current = db.get(Referral, current.parent_referral_id) if current.parent_referral_id else None
    out: list[dict[str, Any]] = []
    seen: set[int] = set()
    for r in reversed(chain):
        # A referral sent back up already carries the episode so far; keep each referral once.
        for item in [*r.history, _summary(r)]:
            if item["referral_id"] not in seen:
                seen.add(item["referral_id"])
                out.append(item)
    return out


def _summary(r: Referral) -> dict[str, Any]:
    return {"referral_id": r.id, "number": r.number, "direction": str(r.direction), "state": str(r.state),
            "from_organisation_id": r.from_organisation_id, "to_organisation_id": r.to_organisation_id,
            "diagnosis_code": r.diagnosis_code, "diagnosis_text": r.diagnosis_text,
            "case_summary": r.case_summary, "care_plan": r.care_plan, "outcome": r.outcome,
            "transitions": [{"from": t.from_state, "to": t.to_state, "at": t.at.isoformat(),
                             "by_user_id": t.by_user_id, "reason": t.reason} for t in r.transitions]}


def send_back_up(db: Session, *, by: User, down_referral_id: int, reason: str, urgency: Urgency = Urgency.URGENT,
                 consent_kind: str = "verbal", to_department_id: int | None = None,
                 client_address: str = "") -> Referral:
    """A worsening patient goes back up in one step, to the hospital that sent them down, history attached."""
    down = _load(db, down_referral_id)
    if down.direction != Direction.DOWN:
        raise InvalidInput("只有下转单可以回转 / only a down referral can be sent back up",
                           field_errors=[field_error("down_referral_id", "not a down referral")])
    _require_party(down, by, side="to")
    if down.state not in (State.ACCEPTED, State.ARRIVED, State.COMPLETED):
        raise Conflict(f"下转单处于“{down.state}”状态，不能回转 / cannot send back up from {down.state}",
                       code="invalid_transition", field_errors=[field_error("state", f"{down.state} -> up")])
    if not (reason or "").strip():
        raise InvalidInput("请填写回转理由 / a reason is required", field_errors=[field_error("reason", "required")])
    plan = down.care_plan or {}
    data = ReferralInput(
        patient_id=down.patient_id, to_organisation_id=down.from_organisation_id, urgency=urgency,
        to_department_id=to_department_id, reason=reason.strip(), diagnosis_code=down.diagnosis_code,
        diagnosis_text=down.diagnosis_text, case_summary=down.case_summary,
        medicines=list(plan.get("medicines", down.medicines) or []), consent_kind=consent_kind)
    up = create_draft(db, by=by, data=data, direction=Direction.UP, client_address=client_address)
    up.parent_referral_id = down.id
    up.history = history_of(db, down)
    db.flush()
    return send(db, by=by, referral_id=up.id, client_address=client_address)


# --- reads ---------------------------------------------------------------------------------------

def get_for(db: Session, *, user: User, referral_id: int, client_address: str = "") -> Referral:
    referral = _load(db, referral_id)
    access.require_patient_access(db, user=user, patient_id=referral.patient_id, action="referral.read",
                                  client_address=client_address)
    return referral


def worklist(db: Session, *, user: User, direction: Direction | None = None,
             state: State | Sequence[State] | None = None, to_organisation_id: int | None = None,
             to_department_id: int | None = None, from_organisation_id: int | None = None, limit: int = 100,
             newest_first: bool = False, client_address: str = "") -> list[Referral]:
    """Referrals to or from the user's organisation (everything for alliance admins), overdue first
    (or newest first, for lists of what one sent)."""
    q = select(Referral)
    if user.role != Role.ALLIANCE_ADMIN:
        if user.organisation_id is None:
            raise AccessDenied("只有机构人员可以查看转诊 / only staff of an organisation see referrals")
        q = q.where((Referral.to_organisation_id == user.organisation_id)
                    | (Referral.from_organisation_id == user.organisation_id))
    if direction is not None:
        q = q.where(Referral.direction == direction)
    if isinstance(state, State):
        q = q.where(Referral.state == state)
    elif state is not None:
        q = q.where(Referral.state.in_(list(state)))
    if to_organisation_id is not None:
        q = q.where(Referral.to_organisation_id == to_organisation_id)
    if to_department_id is not None:
        q = q.where(Referral.to_department_id == to_department_id)
    if from_organisation_id is not None:
        q = q.where(Referral.from_organisation_id == from_organisation_id)
    waiting_only = state is not None and set([state] if isinstance(state, State) else state) <= set(AWAITING_ANSWER)
    if newest_first:
        order: tuple[Any, ...] = (Referral.created_at.desc(), Referral.id.desc())
    elif waiting_only:
        # Every row has a deadline and the overdue ones have the earliest: the deadline order is
        # "overdue first", and the partial indexes on (receiver, response_due_at) serve it up to the limit.
        order = (Referral.response_due_at, Referral.id.desc())
    else:
        overdue = case((Referral.state.in_(AWAITING_ANSWER) & (Referral.response_due_at < utcnow()), 0), else_=1)
        # Same order on both databases: drafts (no deadline) after everything with one.
        order = (overdue, Referral.response_due_at.is_(None), Referral.response_due_at, Referral.id.desc())
    rows = list(db.execute(q.order_by(*order).limit(limit)).scalars())
    audit.record(db, actor=_actor(user, client_address), action="referral.list",
                 detail={"count": len(rows), "referral_ids": [r.id for r in rows][:100]})
    return rows


def referrals_of_patient(db: Session, *, user: User, patient_id: int, client_address: str = "") -> list[Referral]:
    """The patient's whole referral history, oldest first; other organisations' unsent drafts stay private."""
    patient = access.resolve_patient(db, patient_id)
    access.require_patient_access(db, user=user, patient_id=patient.id, action="referral.timeline",
                                  client_address=client_address)
    q = select(Referral).where(Referral.patient_id == patient.id)
    q = q.where((Referral.state != State.DRAFT) | (Referral.from_organisation_id == user.organisation_id))
    return list(db.execute(q.order_by(Referral.created_at, Referral.id)).scalars())


def follow_up_tasks(db: Session, *, user: User, organisation_id: int, open_only: bool = True,
                    client_address: str = "") -> list[FollowUpTask]:
    if user.role != Role.ALLIANCE_ADMIN and user.organisation_id != organisation_id:
        raise AccessDenied("只能查看本机构的随访任务 / you see your own organisation's tasks only")
    q = select(FollowUpTask).where(FollowUpTask.organisation_id == organisation_id)
    if open_only:
        q = q.where(FollowUpTask.done_at.is_(None))
    rows = list(db.execute(q.order_by(FollowUpTask.due_on, FollowUpTask.id)).scalars())
    audit.record(db, actor=_actor(user, client_address), action="referral.follow_up_list",
                 resource=f"organisation:{organisation_id}",
                 detail={"count": len(rows), "patient_ids": sorted({t.patient_id for t in rows})[:100]})
    return rows


def is_overdue(referral: Referral, now: datetime | None = None) -> bool:
    return (referral.state in AWAITING_ANSWER and referral.response_due_at is not None
            and referral.response_due_at < (now or utcnow()))


# --- care relationship ---------------------------------------------------------------------------

@access.care_relationship_check
def _party_to_referral(db: Session, user: User, patient_id: int) -> str | None:
    """Staff of either end of a referral care for its patient while it runs and 30 days after."""
    if user.organisation_id is None:
        return None
    since = utcnow() - timedelta(days=CARE_RELATIONSHIP_DAYS_AFTER)
    org = user.organisation_id
    found = db.execute(select(exists().where(
        Referral.patient_id == patient_id,
        (Referral.from_organisation_id == org)
        | ((Referral.to_organisation_id == org) & (Referral.state != State.DRAFT)),
        Referral.closed_at.is_(None) | (Referral.closed_at >= since),
    ))).scalar()
    return "referral" if found else None



# --- attachments ---------------------------------------------------------------------------------

# What may be attached: results and documents a township can produce. Checked by content, not by name.
ATTACHMENT_TYPES = {
    "application/pdf": "PDF", "image/jpeg": "JPEG", "image/png": "PNG", "image/webp": "WebP",
    "application/dicom": "DICOM",
}


def _sniff(content: bytes) -> str | None:
    if len(content) > 132 and content[128:132] == b"DICM":
        return "application/dicom"
    kind = filetype.guess(content)
    return kind.mime if kind is not None else None


def _attachment_path(sha256: str) -> Path:
    return get_settings().data_dir / "attachments" / sha256[:2] / sha256


def add_attachment(db: Session, *, by: User, referral_id: int, filename: str, content: bytes,
                   description: str = "", client_address: str = "") -> ReferralAttachment:
    """Keep a result or document with the referral; the file is fsync'd before the row is written."""
    referral = _load(db, referral_id)
    if by.organisation_id not in (referral.from_organisation_id, referral.to_organisation_id):
        raise AccessDenied("只有转诊双方可以添加附件 / only the two ends of a referral may attach files")
    if referral.state in CLOSED:
        raise Conflict(f"转诊单已结束（{referral.state}），不能再添加附件 / the referral is closed",
                       code="referral_closed")
    limit = get_settings().attachment_max_bytes
    name = Path(filename or "").name.strip()[:200]
    mime = _sniff(content) if content else None
    errors = []
    if not name:
        errors.append(field_error("file", "缺少文件名 / the file has no name"))
    if not content:
        errors.append(field_error("file", "文件是空的 / the file is empty"))
    elif len(content) > limit:
        errors.append(field_error("file", f"文件超过 {limit // (1024 * 1024)} MB 上限 / file is over the "
                                  f"{limit // (1024 * 1024)} MB limit"))
    elif mime not in ATTACHMENT_TYPES:
        allowed = "、".join(ATTACHMENT_TYPES.values())
        errors.append(field_error("file", f"不支持的文件类型（仅限 {allowed}）/ file type not allowed "
                                  f"(only {', '.join(ATTACHMENT_TYPES.values())})"))
    if errors:
        raise InvalidInput(f"附件“{name}”无法接收 / attachment {name!r} refused: " + errors[0]["message"],
                           field_errors=errors)
    digest = hashlib.sha256(content).hexdigest()
    path = _attachment_path(digest)
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{uuid.uuid4().hex}.tmp")
        with open(tmp, "wb") as fh:
            fh.write(content)
            fh.flush()
            os.fsync(fh.fileno())
        tmp.replace(path)
    row = ReferralAttachment(referral_id=referral.id, filename=name, content_type=str(mime),
                             size_bytes=len(content), sha256=digest, description=description.strip()[:200],
                             uploaded_by_user_id=by.id, uploaded_at=utcnow())
    db.add(row)
    db.flush()
    audit.record(db, actor=_actor(by, client_address), action="referral.attach", patient_id=referral.patient_id,
                 resource=f"referral:{referral.id}", detail={"attachment_id": row.id, "size": len(content)})
    return row


def read_attachment(db: Session, *, user: User, attachment_id: int,
                    client_address: str = "") -> tuple[ReferralAttachment, bytes]:
    row = db.get(ReferralAttachment, attachment_id)
    if row is None:
        raise NotFound(f"没有编号为 {attachment_id} 的附件 / no attachment {attachment_id}")
    get_for(db, user=user, referral_id=row.referral_id, client_address=client_address)
    path = _attachment_path(row.sha256)
    if not path.exists():
        raise NotFound("附件文件已丢失，请联系管理员 / the attachment's file is missing; tell an administrator")
    return row, path.read_bytes()


def attachments_of(db: Session, referral: Referral) -> list[ReferralAttachment]:
    return list(db.execute(select(ReferralAttachment).where(ReferralAttachment.referral_id == referral.id)
                           .order_by(ReferralAttachment.id)).scalars())


def escalations_of(db: Session, referral: Referral) -> list[ReferralEscalation]:
    return list(db.execute(select(ReferralEscalation).where(ReferralEscalation.referral_id == referral.id)
                           .order_by(ReferralEscalation.round, ReferralEscalation.level)).scalars())


# --- suggested targets ---------------------------------------------------------------------------

@dataclass
class TargetSuggestion:
    organisation: Organisation
    departments: list[Department]
    distance_km: float | None
    reasons: list[str]


_LEVEL_RANK = {"secondary": 0, "tertiary": 1, "provincial": 2}


def suggest_targets(db: Session, *, user: User, patient_id: int, specialty_id: int | None = None,
                    capability: str | None = None, limit: int = 6) -> list[TargetSuggestion]:
    """Hospitals of the sender's alliances that can take the patient: right department first, then nearest.

    County (secondary) hospitals come before tertiary and provincial ones at equal fit, because
    基层首诊 means the county is the next step up and the province the one after.
    """
    if user.organisation_id is None:
        raise AccessDenied("只有机构人员可以转诊 / only staff of an organisation may refer")
    access.require_patient_access(db, user=user, patient_id=patient_id, action="referral.suggest")
    sender = db.get(Organisation, user.organisation_id)
    other = aliased(AllianceMembership)
    candidates = db.execute(
        select(Organisation).distinct().join(other, other.organisation_id == Organisation.id)
        .join(AllianceMembership, AllianceMembership.alliance_id == other.alliance_id)
        .where(AllianceMembership.organisation_id == user.organisation_id, Organisation.id != user.organisation_id,
               Organisation.level.in_(list(_LEVEL_RANK)))).scalars().all()
    out: list[tuple[tuple[Any, ...], TargetSuggestion]] = []
    for org in candidates:
        depts = [d for d in org.departments if specialty_id is None or d.specialty_id == specialty_id]
        caps = {str(c.capability) for c in org.capabilities}
        reasons: list[str] = []
        if specialty_id is not None:
            if not depts:
                continue
            reasons.append("有对应专科 / has the specialty")
        if capability is not None:
            if capability not in caps:
                continue
            reasons.append(f"具备 {capability} / offers {capability}")
        distance = None
        if sender is not None and None not in (sender.latitude, sender.longitude, org.latitude, org.longitude):
            distance = round(great_circle_km(sender.latitude, sender.longitude,  # type: ignore[arg-type]
                                             org.latitude, org.longitude), 1)  # type: ignore[arg-type]
            reasons.append(f"距离 {distance} km / {distance} km away")
        key = (_LEVEL_RANK.get(str(org.level), 9), distance if distance is not None else 1e9, org.id)
        out.append((key, TargetSuggestion(organisation=org, departments=depts, distance_km=distance,
                                          reasons=reasons)))
    return [s for _, s in sorted(out, key=lambda pair: pair[0])[:limit]]


# --- follow-up tasks -----------------------------------------------------------------------------

def complete_follow_up(db: Session, *, by: User, task_id: int, note: str = "",
                       client_address: str = "") -> FollowUpTask:
    task = db.get(FollowUpTask, task_id)
    if task is None:
        raise NotFound(f"没有编号为 {task_id} 的随访任务 / no follow-up task {task_id}")
    if by.organisation_id != task.organisation_id:
        raise AccessDenied("只能完成本机构的随访任务 / only the receiving organisation completes its tasks")
    if task.done_at is not None:
        raise Conflict("该随访任务已完成 / this follow-up task is already done", code="already_done")
    task.done_at = utcnow()
    if note.strip():
        task.note = (task.note + "\n" if task.note else "") + note.strip()
    db.flush()
    audit.record(db, actor=_actor(by, client_address), action="referral.follow_up_done", patient_id=task.patient_id,
                 resource=f"referral:{task.referral_id}", detail={"task_id": task.id})
    return task
