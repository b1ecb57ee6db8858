"""JSON API of the time-critical pathways (mounted under /api/v1). Thin: every rule lives in service.py."""

from __future__ import annotations

from fastapi import APIRouter, Request, status
from sqlalchemy.orm import Session

from healthrelay.core.deps import CurrentUser, DbSession, client_address
from healthrelay.pathways import flows as flows  # noqa: F401  (registers the care-relationship check)
from healthrelay.pathways import metrics, service
from healthrelay.pathways.models import PathwayCase
from healthrelay.pathways.schemas import (
    CaseCreate,
    CaseOut,
    CloseIn,
    IntervalOut,
    LinkIn,
    MetricOut,
    MonthOut,
    NodeIn,
    NodeOut,
)

router = APIRouter(tags=["pathways"])


def _out(db: Session, case: PathwayCase) -> CaseOut:
    view = service.describe(db, [case])[case.id]
    return CaseOut.model_validate(case).model_copy(update={
        "nodes": [NodeOut.model_validate(n) for n in view.nodes.values()],
        "intervals": [IntervalOut(code=i.target.code, minutes=round(i.minutes, 2) if i.minutes is not None else None,
                                  target_minutes=i.target.target_minutes, on_target=i.on_target, running=i.running)
                      for i in view.intervals]})


@router.post("/pathways/cases", response_model=CaseOut, status_code=status.HTTP_201_CREATED)
def create(body: CaseCreate, request: Request, db: DbSession, user: CurrentUser) -> CaseOut:
    """Open a case for a patient (or an unidentified one), or join the patient's open case of the last 24 h."""
    case = service.open_case(db, centre=body.centre, patient_id=body.patient_id, by=user, source=body.source,
                             call_id=body.call_id, ecg_request_id=body.ecg_request_id,
                             hospital_organisation_id=body.hospital_organisation_id, diagnosis=body.diagnosis,
                             diagnosis_code=body.diagnosis_code, arrival_mode=body.arrival_mode,
                             bypass_ed=body.bypass_ed, nodes=body.nodes, client_address=client_address(request))
    return _out(db, case)


@router.get("/pathways/cases/{case_id}", response_model=CaseOut)
def read(case_id: int, request: Request, db: DbSession, user: CurrentUser) -> CaseOut:
    return _out(db, service.get_case_for(db, case_id=case_id, user=user, client_address=client_address(request)))


@router.post("/pathways/cases/{case_id}/nodes", response_model=CaseOut, status_code=status.HTTP_201_CREATED)
def record(case_id: int, body: NodeIn, request: Request, db: DbSession, user: CurrentUser) -> CaseOut:
    """Record a node; a node already recorded is corrected only with a reason."""
    service.record_node(db, case_id=case_id, node=body.node, at=body.at, by=user, note=body.note,
                        source=body.source, reason=body.reason, client_address=client_address(request))
    return _out(db, service.load(db, case_id))


@router.post("/pathways/cases/{case_id}/link", response_model=CaseOut)
def link(case_id: int, body: LinkIn, request: Request, db: DbSession, user: CurrentUser) -> CaseOut:
    case = service.link(db, case_id=case_id, call_id=body.call_id, ecg_request_id=body.ecg_request_id,
                        hospital_organisation_id=body.hospital_organisation_id, arrival_mode=body.arrival_mode,
                        bypass_ed=body.bypass_ed, by=user, client_address=client_address(request))
    return _out(db, case)


@router.post("/pathways/cases/{case_id}/close", response_model=CaseOut)
def close(case_id: int, body: CloseIn, request: Request, db: DbSession, user: CurrentUser) -> CaseOut:
    return _out(db, service.close(db, case_id=case_id, by=user, outcome=body.outcome,
                                  client_address=client_address(request)))


@router.get("/pathways/metrics", response_model=list[MetricOut])
def metric_values(request: Request, db: DbSession, user: CurrentUser, start: str = "", end: str = "",
                  centre: str = "", organisation: str = "") -> list[MetricOut]:
    """Each national metric by month, with its target and the numbers of the cases that missed."""
    report = metrics.report_for(db, user, start=start, end=end, centre=centre, organisation=organisation)
    out = [MetricOut(centre=s.target.centre, code=s.target.code, zh=s.target.zh, en=s.target.en,
                     target=metrics.target_text(s.target),
                     months=[MonthOut(month=m.month, cases=m.cases, median=m.median, mean=m.mean,
                                      on_target=m.on_target, share=m.share, met=m.met,
                                      missed_case_numbers=[c.number for c in m.missed]) for m in s.months])
           for s in report["series"]]
    metrics.audit_view(db, user, report, "json", client_address(request))
    return out
