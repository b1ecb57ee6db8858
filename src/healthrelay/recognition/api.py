"""JSON API of mutual recognition (mounted under /api/v1). Thin: every rule lives in service.py."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request, status

from healthrelay.core.deps import CurrentUser, DbSession, client_address
from healthrelay.core.errors import AccessDenied
from healthrelay.core.ids import MAX_ID, IdPath
from healthrelay.recognition import service
from healthrelay.recognition.schemas import (
    DecisionOut,
    EqaIn,
    EqaOut,
    OrderIn,
    OrderOut,
    OrderResult,
    PriorOut,
    RepeatsOut,
)

router = APIRouter(tags=["recognition"])


def _priors(priors: list[service.Prior]) -> list[PriorOut]:
    return [PriorOut(**p.as_dict()) for p in priors]


@router.post("/orders", response_model=OrderResult, status_code=status.HTTP_201_CREATED)
def create_order(body: OrderIn, request: Request, db: DbSession, user: CurrentUser) -> OrderResult:
    """Order a test or examination. When the patient has recognisable priors of the code the answer is 422
    `decision_required` with the priors; send again with `decision` = `use_prior` (and `prior_ref`) or `reorder`
    with a `reason_code` from `/recognition/reorder-reasons`."""
    outcome = service.place_order(db, by=user, data=body, source="api", client_address=client_address(request))
    return OrderResult(order=OrderOut.model_validate(outcome.order),
                       decision=DecisionOut.model_validate(outcome.decision) if outcome.decision else None,
                       priors=_priors(outcome.priors))


@router.get("/orders/{order_id}", response_model=OrderResult)
def get_order(order_id: IdPath, request: Request, db: DbSession, user: CurrentUser) -> OrderResult:
    order = service.get_order(db, order_id=order_id, user=user, client_address=client_address(request))
    decision = service.decision_of(db, order)
    return OrderResult(order=OrderOut.model_validate(order),
                       decision=DecisionOut.model_validate(decision) if decision else None, priors=[])


@router.get("/patients/{patient_id}/priors", response_model=list[PriorOut])
def priors(patient_id: IdPath, code: Annotated[str, Query(max_length=40)], request: Request, db: DbSession,
           user: CurrentUser) -> list[PriorOut]:
    """The patient's recognisable results of `code` from any member: HR-marked, final, within the validity window."""
    return _priors(service.find_priors(db, user=user, patient_id=patient_id, code=code,
                                       client_address=client_address(request)))


@router.get("/recognition/reorder-reasons")
def reasons(db: DbSession, user: CurrentUser) -> list[dict[str, object]]:
    """The national exception list; `needs_note` reasons want a `reason_note` too."""
    return [{"code": r.code, "name_zh": r.name_zh, "name_en": r.name_en, "needs_note": r.needs_note}
            for r in service.reorder_reasons(db)]


@router.get("/recognition/repeats", response_model=RepeatsOut)
def repeats(request: Request, db: DbSession, user: CurrentUser, start: str | None = None, end: str | None = None,
            organisation: str | None = None) -> RepeatsOut:
    """Recognised vs. repeated per organisation and month (months as YYYY-MM, Asia/Shanghai); no patient data."""
    first, last = service.parse_period(start, end)
    report = service.repeats_report(db, user=user, start=first, end=last,
                                    organisation_id=service.parse_org(organisation))
    out = RepeatsOut(**service.report_dict(report))
    service.record_report_view(db, user=user, report=report, output="api", client_address=client_address(request))
    return out


@router.get("/recognition/eqa", response_model=list[EqaOut])
def eqa_list(db: DbSession, user: CurrentUser,
             organisation_id: Annotated[int | None, Query(ge=1, le=MAX_ID)] = None) -> list[EqaOut]:
    """Quality-assessment results: all for the alliance admin and the health bureau, one's own for an org admin."""
    if user.role not in service.REPORT_READERS:
        raise AccessDenied("您的角色无权查看室间质评 / your role may not see quality assessments")
    if user.role not in service.REPORT_SEE_ALL:
        if organisation_id not in (None, user.organisation_id):
            raise AccessDenied("只能查看本机构的室间质评 / you see your own organisation's only")
        organisation_id = user.organisation_id
    return [EqaOut.model_validate(r) for r in service.list_eqa(db, organisation_id=organisation_id)]


@router.post("/recognition/eqa", response_model=EqaOut, status_code=status.HTTP_201_CREATED)
def eqa_create(body: EqaIn, request: Request, db: DbSession, user: CurrentUser) -> EqaOut:
    """Record one result (the organisation's admin, or the alliance admin); results recorded afterwards carry the
    mark it gives."""
    row = service.record_eqa(db, by=user, data=service.EqaInput(**body.model_dump()),
                             client_address=client_address(request))
    return EqaOut.model_validate(row)
