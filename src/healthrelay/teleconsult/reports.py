"""Structured reports of remote readings: drafts, signatures, co-signatures and addenda.

A report is written by the reader holding the request's claim. Signing fixes its content: the
SHA-256 of a canonical JSON of the content, the request number, the signer and the time is stored,
so any later change to the row shows when the hash is recomputed. A trainee's signature makes a
preliminary report that a senior of the same centre co-signs; the hash is then taken again over
the content and both signatures. After that only addenda change what the requester reads, and each
addendum carries its own hash.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from healthrelay.accounts.models import User
from healthrelay.core.db import utcnow
from healthrelay.core.errors import AccessDenied, Conflict, InvalidInput, NotFound, field_error
from healthrelay.notifications import service as notifications
from healthrelay.teleconsult import critical
from healthrelay.teleconsult import service as consult
from healthrelay.teleconsult.models import (
    ConsultKind,
    ConsultRequest,
    ConsultState,
    CriticalResult,
    ReadingCentre,
    Report,
    ReportAddendum,
    ReportState,
)

TEXT_FIELDS = ("technique", "findings", "impression", "recommendation")
TEXT_MAX = 8000
CRITICAL_MAX = 1000
ADDENDUM_MAX = 4000
# Mutual recognition (互认) scopes, widest last; "" means the result carries no mark.
SCOPES = ("", "county", "province", "national")
HR_MARKS = {"county": "县域HR", "alliance": "医共体HR", "province": "省域HR", "national": "全国HR"}
# Diagnostic opinions are not examination results: the recognition mark never applies to them.
_NO_RECOGNITION = frozenset({ConsultKind.SPECIALIST, ConsultKind.MDT})
_LABELS = {"technique": "检查技术 / technique", "findings": "所见 / findings", "impression": "诊断意见 / impression",
           "recommendation": "建议 / recommendation", "critical_finding": "危急值内容 / critical finding",
           "recognition_scope": "互认范围 / recognition scope"}


@dataclass
class ReportInput:
    """What the reader fills in; checked by `_clean`."""

    technique: str = ""
    findings: str = ""
    impression: str = ""
    recommendation: str = ""
    critical: bool = False
    critical_finding: str = ""
    recognition_scope: str = ""
    # Coded content: ECG reports only ({"codes", "measurements", "rhythm_note"}), checked by the ECG domain.
    structured: dict[str, Any] = field(default_factory=dict)


# Called at the end of every `sign` (a trainee's preliminary signature included), in the signing
# transaction: other domains act on what was signed (ecg/flows.py: a STEMI opens the chest-pain pathway).
after_sign: list[Callable[[Session, ConsultRequest, Report, User], None]] = []
# Called once when a report becomes final — a senior's signature or the co-signature of a trainee's — in that
# transaction: what must only ever see a final report (results repository, the HL7 copy to the inviting member).
after_final: list[Callable[[Session, ConsultRequest, Report, User], None]] = []


def hr_mark(scope: str) -> str:
    """The recognition mark as printed (全国HR, 省HR, 医共体HR ...), one table for every domain; empty when the
    result carries none."""
    return HR_MARKS.get(scope, f"{scope} HR" if scope else "")


def _iso(value: datetime | None) -> str | None:
    return value.astimezone(UTC).isoformat(timespec="microseconds") if value is not None else None


def canonical_content(report: Report, *, request_number: str) -> bytes:
    """The bytes the signature hash covers: content, request number, signer and time (and co-signer once there)."""
    body: dict[str, Any] = {
        "request_number": request_number,
        "technique": report.technique, "findings": report.findings, "impression": report.impression,
        "recommendation": report.recommendation, "critical": bool(report.critical),
        "critical_finding": report.critical_finding, "recognition_scope": report.recognition_scope,
        "signed_by_user_id": report.signed_by_user_id, "signed_at": _iso(report.signed_at),
    }
    if report.structured:  # only when there is any, so reports signed before it existed keep their hashes
        body["structured"] = report.structured
    if report.cosigned_by_user_id is not None:
        body["cosigned_by_user_id"] = report.cosigned_by_user_id
        body["cosigned_at"] = _iso(report.cosigned_at)
    return json.dumps(body, sort_keys=True, ensure_ascii=False, separators=(",", ":")).encode()


def content_hash(report: Report, *, request_number: str) -> str:
    return hashlib.sha256(canonical_content(report, request_number=request_number)).hexdigest()


def verify(db: Session, report: Report) -> bool:
    """Recompute the signature hash; False when the stored content no longer matches what was signed."""
    if report.state == ReportState.DRAFT or not report.content_sha256:
        return False
    number = db.execute(select(ConsultRequest.number).where(ConsultRequest.id == report.request_id)).scalar_one()
    return content_hash(report, request_number=number) == report.content_sha256


def addendum_hash(addendum: ReportAddendum, *, report_sha256: str) -> str:
    """An addendum's hash binds its text, signer and time to the signed report it amends."""
    body = {"report_id": addendum.report_id, "report_sha256": report_sha256, "text": addendum.text,
            "signed_by_user_id": addendum.signed_by_user_id, "signed_at": _iso(addendum.signed_at)}
    return hashlib.sha256(json.dumps(body, sort_keys=True, ensure_ascii=False,
                                     separators=(",", ":")).encode()).hexdigest()


def verify_addendum(report: Report, addendum: ReportAddendum) -> bool:
    return addendum_hash(addendum, report_sha256=report.content_sha256) == addendum.content_sha256


# ---------------------------------------------------------------------------- loading

def report_of(db: Session, request_id: int) -> Report | None:
    return db.execute(select(Report).where(Report.request_id == request_id)).scalar()


def centre_organisation_id(db: Session, request: ConsultRequest) -> int:
    centre = db.get(ReadingCentre, request.centre_id)
    return centre.organisation_id if centre is not None else request.invited_organisation_id


def is_centre_side(db: Session, *, user: User, request: ConsultRequest) -> bool:
    """Staff of the reading centre's organisation see drafts; the inviting side sees signed reports only."""
    return user.organisation_id is not None and user.organisation_id in (
        request.invited_organisation_id, centre_organisation_id(db, request))


def visible_report(db: Session, *, user: User, request: ConsultRequest) -> Report | None:
    """The report as this user may read it: the centre sees every state, the requester only a signed one."""
    report = report_of(db, request.id)
    if report is None:
        return None
    if report.state == ReportState.SIGNED or is_centre_side(db, user=user, request=request):
        return report
    return None


def get_for(db: Session, *, request_id: int, user: User,
            client_address: str = "") -> tuple[ConsultRequest, Report | None]:
    """The request (parties only, audited by the teleconsult service) and the report the user may read."""
    request = consult.get_request_for(db, request_id=request_id, user=user, client_address=client_address)
    return request, visible_report(db, user=user, request=request)


def user_name(db: Session, user_id: int | None) -> str:
    if user_id is None:
        return ""
    return db.execute(select(User.display_name).where(User.id == user_id)).scalar() or f"#{user_id}"


# ---------------------------------------------------------------------------- writing

def _clean(db: Session, request: ConsultRequest, data: ReportInput) -> ReportInput:
    errors = []
    values = {f.name: getattr(data, f.name) for f in fields(ReportInput)}
    for name in (*TEXT_FIELDS, "critical_finding"):
        value = values[name]
        if not isinstance(value, str):
            errors.append(field_error(name, f"{_LABELS[name]}须为文本 / must be text"))
            continue
        values[name] = value.replace("\r\n", "\n").strip()
        limit = CRITICAL_MAX if name == "critical_finding" else TEXT_MAX
        if len(values[name]) > limit:
            errors.append(field_error(name, f"{_LABELS[name]}最多 {limit} 字 / at most {limit} characters"))
    scope = (values["recognition_scope"] or "").strip()
    if scope not in SCOPES:
        errors.append(field_error("recognition_scope", "互认范围须为 county、province、national 或留空 / "
                                                       "county, province, national or empty"))
    elif scope and request.kind in _NO_RECOGNITION:
        errors.append(field_error("recognition_scope", "会诊意见不适用检查结果互认标识 / a consultation opinion "
                                                       "carries no recognition mark"))
    values["recognition_scope"] = scope
    values["critical"] = bool(values["critical"])
    if request.kind == ConsultKind.ECG:
        from healthrelay.ecg.service import clean_report_structure

        errors += clean_report_structure(values)
    elif values["structured"]:
        errors.append(field_error("structured", "只有心电报告有结构化内容 / only ECG reports carry coded content"))
        values["structured"] = {}
    if not values["critical"]:
        values["critical_finding"] = ""
    if errors:
        raise InvalidInput("报告内容有误 / the report has errors", field_errors=errors)
    return ReportInput(**values)


def _refuse_if_signed(report: Report | None, number: str) -> None:
    if report is not None and report.state != ReportState.DRAFT:
        raise Conflict(f"报告 {number} 已签名，不能再修改；如需更正请添加补充说明 / the report of {number} is signed "
                       "and cannot change; add an addendum instead", code="report_signed")


def _writable(db: Session, *, request_id: int, by: User,
              client_address: str) -> tuple[ConsultRequest, Report | None]:
    request = consult.get_request_for(db, request_id=request_id, user=by, client_address=client_address)
    report = report_of(db, request.id)
    _refuse_if_signed(report, request.number)
    consult.require_claim_holder(db, user=by, request=request)
    if request.state != ConsultState.ACCEPTED:
        raise Conflict(f"申请 {request.number} 当前状态为 {request.state}，不能书写报告 / request {request.number} is "
                       f"{request.state}; no report can be written now", code="wrong_state")
    return request, report


def _apply(report: Report, data: ReportInput) -> None:
    for f in fields(ReportInput):
        setattr(report, f.name, getattr(data, f.name))


def save_draft(db: Session, *, request_id: int, by: User, data: ReportInput, client_address: str = "") -> Report:
    """Create or update the draft; only the claim holder, only while unsigned."""
    request, report = _writable(db, request_id=request_id, by=by, client_address=client_address)
    return _save(db, request=request, report=report, by=by, data=data)


def _save(db: Session, *, request: ConsultRequest, report: Report | None, by: User, data: ReportInput) -> Report:
    clean = _clean(db, request, data)
    if report is None:
        report = Report(request_id=request.id, author_user_id=by.id, created_at=utcnow())
        db.add(report)
    _apply(report, clean)
    report.updated_at = utcnow()
    db.flush()
    return report


def _missing_for_signature(db: Session, request: ConsultRequest, report: Report) -> list[dict[str, Any]]:
    required = ["findings", "impression"]
    if request.kind == ConsultKind.IMAGING:
        required.insert(0, "technique")
    missing = [field_error(name, f"{_LABELS[name]}不能为空 / required") for name in required
               if not (getattr(report, name) or "").strip()]
    if report.critical and not (report.critical_finding or "").strip():
        missing.append(field_error("critical_finding", "已勾选危急值，请写明危急内容 / describe the critical finding"))
    if request.kind == ConsultKind.ECG:
        from healthrelay.ecg.service import missing_for_signature

        missing += missing_for_signature(db, request=request, report=report)
    return missing


def sign(db: Session, *, request_id: int, by: User, data: ReportInput | None = None,
         client_address: str = "") -> Report:
    """Sign the draft (saving `data` first when given): a senior's signature is final, a trainee's preliminary.

    A critical finding opens its loop at this signature, the trainee's included: it must not wait for
    the co-signature.
    """
    request, report = _writable(db, request_id=request_id, by=by, client_address=client_address)
    if data is not None:
        report = _save(db, request=request, report=report, by=by, data=data)
    if report is None:
        report = Report(request_id=request.id, author_user_id=by.id, created_at=utcnow())
    missing = _missing_for_signature(db, request, report)
    if missing:
        names = "、".join(e["field"] for e in missing)
        raise InvalidInput(f"报告不完整，不能签名：{names} / the report is incomplete: {names}", field_errors=missing)
    senior = consult.is_senior(db, user=by)
    if not senior and not consult.is_trainee(db, user=by):
        raise AccessDenied("只有执业医师可以签发报告 / only physicians sign reports", code="not_a_physician")
    if report.id is None:
        db.add(report)
    now = utcnow()
    report.signed_by_user_id = by.id
    report.signed_at = now
    report.updated_at = now
    report.state = ReportState.SIGNED if senior else ReportState.AWAITING_COSIGN
    report.content_sha256 = content_hash(report, request_number=request.number)
    db.flush()
    if senior:
        consult.record_transition(db, request, action="sign", to_state=ConsultState.REPORTED, by=by,
                                  detail={"report_id": report.id, "sha256": report.content_sha256},
                                  client_address=client_address)
    else:
        consult.record_transition(db, request, action="sign_preliminary", to_state=ConsultState.PRELIMINARY, by=by,
                                  detail={"report_id": report.id, "sha256": report.content_sha256},
                                  client_address=client_address)
    if report.critical:
        critical.open_for(db, request=request, report=report, by=by)
    if senior:
        announce_final(db, request=request, report=report)
    else:
        _tell_cosigners(db, request=request, report=report)
    _publish(db, request, report)
    for hook in list(after_sign):
        hook(db, request, report, by)
    if senior:
        for hook in list(after_final):
            hook(db, request, report, by)
    return report


def cosign(db: Session, *, request_id: int, by: User, client_address: str = "") -> Report:
    """A senior of the same centre, not the author, makes a trainee's report final."""
    request = consult.get_request_for(db, request_id=request_id, user=by, client_address=client_address)
    report = report_of(db, request.id)
    if report is None or report.state != ReportState.AWAITING_COSIGN:
        state = report.state if report is not None else "none"
        raise Conflict(f"申请 {request.number} 的报告不在待审核状态（{state}）/ the report of {request.number} is not "
                       f"waiting for a co-signature ({state})", code="not_awaiting_cosign")
    if by.id in (report.author_user_id, report.signed_by_user_id):
        raise AccessDenied("不能审核自己书写的报告，请由其他上级医师审核 / you cannot co-sign your own report; "
                           "another senior must", code="own_report")
    if not consult.is_centre_reader(db, user=by, request=request):
        raise AccessDenied("只有本诊断中心的医师可以审核 / only readers of this centre co-sign",
                           code="not_centre_reader")
    if not consult.is_senior(db, user=by):
        raise AccessDenied("只有主治及以上医师可以审核签发 / only attending physicians or above co-sign",
                           code="not_senior")
    now = utcnow()
    report.cosigned_by_user_id = by.id
    report.cosigned_at = now
    report.updated_at = now
    report.state = ReportState.SIGNED
    report.content_sha256 = content_hash(report, request_number=request.number)
    db.flush()
    consult.record_transition(db, request, action="cosign", to_state=ConsultState.REPORTED, by=by,
                              detail={"report_id": report.id, "sha256": report.content_sha256},
                              client_address=client_address)
    announce_final(db, request=request, report=report)
    _publish(db, request, report)
    for hook in list(after_final):
        hook(db, request, report, by)
    return report


def can_add_addendum(db: Session, *, user: User, request: ConsultRequest, report: Report | None) -> bool:
    """The signers, or a senior reader of the centre, may amend a signed report."""
    if report is None or report.state != ReportState.SIGNED:
        return False
    if user.id in (report.signed_by_user_id, report.cosigned_by_user_id):
        return True
    return consult.is_centre_reader(db, user=user, request=request) and consult.is_senior(db, user=user)


def add_addendum(db: Session, *, request_id: int, by: User, text: str, client_address: str = "") -> ReportAddendum:
    """Amend a signed report without touching it: the addendum is signed and hashed on its own."""
    request = consult.get_request_for(db, request_id=request_id, user=by, client_address=client_address)
    report = report_of(db, request.id)
    if report is None or report.state != ReportState.SIGNED:
        raise Conflict("只有已签发的报告可以添加补充说明；草稿请直接修改 / only a signed report takes addenda; "
                       "edit a draft directly", code="not_signed")
    text = (text or "").replace("\r\n", "\n").strip()
    if not text or len(text) > ADDENDUM_MAX:
        raise InvalidInput("补充说明须为 1-4000 字 / the addendum needs 1-4000 characters",
                           field_errors=[field_error("text", "1-4000 characters")])
    if not can_add_addendum(db, user=by, request=request, report=report):
        raise AccessDenied("只有签名医师或本中心上级医师可以添加补充说明 / only the signers or a senior reader of the "
                           "centre add addenda", code="not_allowed")
    addendum = ReportAddendum(report_id=report.id, text=text, signed_by_user_id=by.id, signed_at=utcnow(),
                              content_sha256="")
    addendum.content_sha256 = addendum_hash(addendum, report_sha256=report.content_sha256)
    db.add(addendum)
    db.flush()
    consult.record_transition(db, request, action="addendum", to_state=None, by=by,
                              detail={"report_id": report.id, "addendum_id": addendum.id,
                                      "sha256": addendum.content_sha256}, client_address=client_address)
    recipients = [u for u in requester_recipients(db, request) if u != by.id]
    if recipients:
        notifications.send(db, user_ids=recipients, kind="teleconsult.addendum",
                           title=f"远程诊断报告有补充说明：{request.number} / addendum to the report",
                           body=text[:200], link=request_link(request), resource=resource_of(request))
    _publish(db, request, report)
    return addendum


# ---------------------------------------------------------------------------- who hears

def request_link(request: ConsultRequest) -> str:
    return f"/teleconsult/{request.id}"


def resource_of(request: ConsultRequest) -> str:
    return f"consult:{request.id}"


def requester_recipients(db: Session, request: ConsultRequest) -> list[int]:
    """The requesting doctor; for a request nobody asked for (created by routing), the modality's contact
    user, else the inviting organisation's clinicians."""
    return critical.first_recipients(db, request)


def announce_final(db: Session, *, request: ConsultRequest, report: Report) -> None:
    """The requester hears the moment the report is final (inbox, e-mail) and their open page refreshes."""
    recipients = requester_recipients(db, request)
    if recipients:
        mark = hr_mark(report.recognition_scope)
        notifications.send(
            db, user_ids=recipients, kind="teleconsult.reported",
            title=f"远程诊断报告已签发：{request.number} / the report is signed",
            body=f"诊断意见：{report.impression[:120]}" + (f"（{mark}）" if mark else ""),
            link=request_link(request), resource=resource_of(request))


def _tell_cosigners(db: Session, *, request: ConsultRequest, report: Report) -> None:
    """The centre's seniors learn that a preliminary report waits for them."""
    centre = db.get(ReadingCentre, request.centre_id)
    readers = consult.readers_of(db, centre) if centre is not None else []
    seniors = [u.id for u in readers if u.id != report.signed_by_user_id and consult.is_senior(db, user=u)][:50]
    if seniors:
        notifications.send(db, user_ids=seniors, kind="teleconsult.cosign",
                           title=f"待审核报告：{request.number} / a preliminary report waits for co-signature",
                           body=f"书写医师：{user_name(db, report.signed_by_user_id)}",
                           link=f"/teleconsult/{request.id}/report", resource=resource_of(request))


def _publish(db: Session, request: ConsultRequest, report: Report) -> None:
    """Open pages of both sides (and the requester's own) refresh the report panel."""
    event = {"type": "teleconsult.report", "request_id": request.id, "state": str(request.state),
             "report_state": str(report.state)}
    topics = {notifications.org_topic(request.inviting_organisation_id),
              notifications.org_topic(centre_organisation_id(db, request))}
    topics.update(notifications.user_topic(u) for u in requester_recipients(db, request))
    for topic in sorted(topics):
        notifications.publish(db, topic=topic, event=event)


# ---------------------------------------------------------------------------- views

@dataclass
class ReportView:
    """Everything the report panel, the editor and the PDF show, computed once."""

    request: ConsultRequest
    report: Report | None
    critical: CriticalResult | None
    hash_ok: bool
    mark: str
    names: dict[int, str]
    addenda: list[tuple[ReportAddendum, bool]]
    can_edit: bool
    can_cosign: bool
    can_add_addendum: bool
    can_acknowledge: bool
    centre_side: bool

    def name(self, user_id: int | None) -> str:
        return self.names.get(user_id or 0, "")


def _names(db: Session, ids: Iterable[int | None]) -> dict[int, str]:
    wanted = sorted({i for i in ids if i})
    if not wanted:
        return {}
    return dict(db.execute(select(User.id, User.display_name).where(User.id.in_(wanted))).all())


def view_for(db: Session, *, request: ConsultRequest, user: User) -> ReportView:
    """The panel's view of a request the caller has already been allowed to see."""
    centre_side = is_centre_side(db, user=user, request=request)
    report = visible_report(db, user=user, request=request)
    crit = critical.for_request(db, request_id=request.id)
    addenda = list(report.addenda) if report is not None else []
    ids: list[int | None] = [request.claimed_by_user_id, request.requested_by_user_id]
    if report is not None:
        ids += [report.author_user_id, report.signed_by_user_id, report.cosigned_by_user_id]
        ids += [a.signed_by_user_id for a in addenda]
    if crit is not None:
        ids += [crit.flagged_by_user_id, crit.acknowledged_by_user_id, crit.notify_user_id]
    editable = (request.state == ConsultState.ACCEPTED and request.claimed_by_user_id == user.id
                and (report is None or report.state == ReportState.DRAFT))
    cosignable = (report is not None and report.state == ReportState.AWAITING_COSIGN
                  and user.id not in (report.author_user_id, report.signed_by_user_id)
                  and consult.is_centre_reader(db, user=user, request=request) and consult.is_senior(db, user=user))
    return ReportView(
        request=request, report=report, critical=crit,
        hash_ok=verify(db, report) if report is not None and report.state != ReportState.DRAFT else False,
        mark=hr_mark(report.recognition_scope) if report is not None else "",
        names=_names(db, ids), addenda=[(a, verify_addendum(report, a)) for a in addenda] if report else [],
        can_edit=editable, can_cosign=cosignable,
        can_add_addendum=can_add_addendum(db, user=user, request=request, report=report),
        can_acknowledge=crit is not None and critical.can_acknowledge(db, user=user, result=crit),
        centre_side=centre_side)


def require_report(db: Session, *, request_id: int, user: User, client_address: str = "") -> ReportView:
    """For the PDF: a report the user may read, or 404."""
    request, report = get_for(db, request_id=request_id, user=user, client_address=client_address)
    if report is None or report.state == ReportState.DRAFT:
        raise NotFound(f"申请 {request.number} 尚无已签名的报告 / request {request.number} has no signed report yet")
    return view_for(db, request=request, user=user)
