"""JSON API of reports and critical results (included by teleconsult/api.py, mounted under /api/v1).

Thin: the rules live in reports.py and critical.py.
"""

from __future__ import annotations

from datetime import date, datetime
from typing import Annotated

from fastapi import APIRouter, Query, Request, status
from pydantic import BaseModel, ConfigDict, Field

from healthrelay.core.deps import CurrentUser, DbSession, client_address
from healthrelay.core.errors import NotFound
from healthrelay.teleconsult import critical, reports
from healthrelay.teleconsult.models import CriticalResult, Report, ReportAddendum

router = APIRouter(prefix="/teleconsult")


# ---------------------------------------------------------------------------- schemas

class ReportIn(BaseModel):
    """The structured fields; every field optional, so a draft can be saved half-written."""

    model_config = ConfigDict(extra="forbid")

    technique: str = Field("", max_length=reports.TEXT_MAX)
    findings: str = Field("", max_length=reports.TEXT_MAX)
    impression: str = Field("", max_length=reports.TEXT_MAX)
    recommendation: str = Field("", max_length=reports.TEXT_MAX)
    critical: bool = False
    critical_finding: str = Field("", max_length=reports.CRITICAL_MAX)
    recognition_scope: str = Field("", max_length=20, description="county | province | national | empty")

    def to_input(self) -> reports.ReportInput:
        return reports.ReportInput(**self.model_dump())


class AddendumIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    text: str = Field(..., max_length=reports.ADDENDUM_MAX)


class AddendumOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    text: str
    signed_by_user_id: int
    signed_at: datetime
    content_sha256: str
    hash_ok: bool = False


class ReportOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    request_id: int
    request_number: str = ""
    state: str
    author_user_id: int
    technique: str
    findings: str
    impression: str
    recommendation: str
    critical: bool
    critical_finding: str
    recognition_scope: str
    recognition_mark: str = ""
    signed_by_user_id: int | None
    signed_at: datetime | None
    cosigned_by_user_id: int | None
    cosigned_at: datetime | None
    content_sha256: str
    hash_ok: bool = False
    addenda: list[AddendumOut] = []
    critical_result_id: int | None = None


class AckIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    call_at: datetime | None = Field(None, description="when the call took place (no zone: Asia/Shanghai)")
    call_number: str = Field("", max_length=40)
    call_spoken_to: str = Field("", max_length=100)
    call_read_back: bool | None = Field(None, description="did the person read the result back?")
    action_taken: str = Field("", max_length=2000)


class EventOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    kind: str
    level: int
    at: datetime
    by_user_id: int | None
    detail: dict


class CriticalOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    request_id: int | None
    lab_result_id: int | None = None
    request_number: str = ""
    state: str
    finding: str
    flagged_by_user_id: int | None
    flagged_at: datetime
    notify_user_id: int | None
    ack_due_at: datetime
    level: int
    acknowledged_by_user_id: int | None
    acknowledged_at: datetime | None
    call_at: datetime | None
    call_number: str
    call_spoken_to: str
    call_read_back: bool
    action_taken: str
    minutes_to_ack: float | None = None
    overdue: bool = False
    events: list[EventOut] = []


class CriticalSummaryOut(BaseModel):
    total: int
    open: int
    overdue: int
    acknowledged: int
    median_minutes: float | None
    p90_minutes: float | None
    max_level: int


class CriticalListOut(BaseModel):
    start: date
    end: date
    summary: CriticalSummaryOut
    items: list[CriticalOut]


# ---------------------------------------------------------------------------- helpers

def _report_out(db: DbSession, report: Report, number: str) -> ReportOut:
    crit = critical.for_request(db, request_id=report.request_id)
    addenda = [AddendumOut.model_validate(a).model_copy(update={"hash_ok": reports.verify_addendum(report, a)})
               for a in report.addenda]
    return ReportOut.model_validate(report).model_copy(update={
        "request_number": number, "recognition_mark": reports.hr_mark(report.recognition_scope),
        "hash_ok": reports.verify(db, report), "addenda": addenda,
        "critical_result_id": crit.id if crit is not None else None})


def _critical_out(result: CriticalResult, number: str, *, events: bool = False,
                  minutes: float | None = None, overdue: bool = False) -> CriticalOut:
    out = CriticalOut.model_validate(result).model_copy(update={
        "request_number": number, "minutes_to_ack": minutes, "overdue": overdue})
    if events:
        out = out.model_copy(update={"events": [EventOut.model_validate(e) for e in result.events]})
    return out


def _number(db: DbSession, request_id: int) -> str:
    from healthrelay.teleconsult.models import ConsultRequest

    req = db.get(ConsultRequest, request_id)
    return req.number if req is not None else ""


# ---------------------------------------------------------------------------- reports

@router.get("/requests/{request_id}/report", response_model=ReportOut)
def get_report(request_id: int, request: Request, db: DbSession, user: CurrentUser) -> ReportOut:
    """The report; the requesting side sees it once it is signed, the centre sees drafts too."""
    consult, report = reports.get_for(db, request_id=request_id, user=user, client_address=client_address(request))
    if report is None:
        raise NotFound(f"申请 {consult.number} 尚无可查看的报告 / request {consult.number} has no report to show yet")
    return _report_out(db, report, consult.number)


@router.put("/requests/{request_id}/report", response_model=ReportOut)
def put_draft(request_id: int, body: ReportIn, request: Request, db: DbSession, user: CurrentUser) -> ReportOut:
    report = reports.save_draft(db, request_id=request_id, by=user, data=body.to_input(),
                                client_address=client_address(request))
    return _report_out(db, report, _number(db, request_id))


@router.post("/requests/{request_id}/report/sign", response_model=ReportOut)
def sign(request_id: int, request: Request, db: DbSession, user: CurrentUser,
         body: ReportIn | None = None) -> ReportOut:
    """Sign the draft; a body saves those fields first. A trainee's signature waits for a co-signature."""
    report = reports.sign(db, request_id=request_id, by=user, data=body.to_input() if body is not None else None,
                          client_address=client_address(request))
    return _report_out(db, report, _number(db, request_id))


@router.post("/requests/{request_id}/report/cosign", response_model=ReportOut)
def cosign(request_id: int, request: Request, db: DbSession, user: CurrentUser) -> ReportOut:
    report = reports.cosign(db, request_id=request_id, by=user, client_address=client_address(request))
    return _report_out(db, report, _number(db, request_id))


@router.post("/requests/{request_id}/report/addenda", response_model=AddendumOut,
             status_code=status.HTTP_201_CREATED)
def add_addendum(request_id: int, body: AddendumIn, request: Request, db: DbSession,
                 user: CurrentUser) -> AddendumOut:
    addendum: ReportAddendum = reports.add_addendum(db, request_id=request_id, by=user, text=body.text,
                                                    client_address=client_address(request))
    return AddendumOut.model_validate(addendum).model_copy(update={"hash_ok": True})


# ---------------------------------------------------------------------------- critical results

@router.get("/critical", response_model=CriticalListOut)
def list_critical(db: DbSession, user: CurrentUser, start: date | None = None, end: date | None = None,
                  organisation: int | None = None,
                  limit: Annotated[int, Query(ge=1, le=5000)] = 500) -> CriticalListOut:
    """Critical results flagged in the period (default the last 30 days), open ones first."""
    first, last = critical.default_period()
    first, last = start or first, end or last
    rows, summary = critical.report(db, user=user, start=first, end=last, organisation_id=organisation, limit=limit)
    critical.audit_view(db, user=user, output="json", count=len(rows))
    return CriticalListOut(start=first, end=last, summary=CriticalSummaryOut(**summary.__dict__),
                           items=[_critical_out(r.result, r.number, minutes=r.minutes_to_ack, overdue=r.overdue)
                                  for r in rows])


@router.get("/critical/{critical_id}", response_model=CriticalOut)
def get_critical(critical_id: int, request: Request, db: DbSession, user: CurrentUser) -> CriticalOut:
    result, _ = critical.view(db, critical_id=critical_id, user=user, client_address=client_address(request))
    return _critical_out(result, critical.number_of(db, result), events=True, overdue=critical.is_overdue(result),
                         minutes=critical.minutes_to_ack(result))


@router.post("/critical/{critical_id}/acknowledge", response_model=CriticalOut)
def acknowledge(critical_id: int, body: AckIn, request: Request, db: DbSession, user: CurrentUser) -> CriticalOut:
    """Record the read-back telephone call and the action taken; every field is required."""
    result = critical.acknowledge(db, critical_id=critical_id, by=user, data=critical.AckInput(**body.model_dump()),
                                  client_address=client_address(request))
    return _critical_out(result, critical.number_of(db, result), events=True,
                         minutes=critical.minutes_to_ack(result))
