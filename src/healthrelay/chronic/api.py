"""JSON API of chronic disease management (mounted under /api/v1). Thin: every rule lives in service.py.

Also carries the follow-up routes (`followup_api`), so the whole domain's API is one router.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, File, Form, Query, Request, UploadFile, status
from starlette.concurrency import run_in_threadpool

from healthrelay.chronic import followup_api, service
from healthrelay.chronic.schemas import (
    MAX_ID,
    ContractEnd,
    ContractIn,
    ContractOut,
    EnrolmentClose,
    EnrolmentIn,
    EnrolmentOut,
    EnrolmentUpdate,
    IdPath,
    ImportReportOut,
    MedicineIn,
    PanelOut,
    PanelRowOut,
    PointIn,
    PointOut,
    ReadingIn,
    ReadingOut,
)
from healthrelay.core.deps import CurrentUser, DbSession, client_address
from healthrelay.core.errors import InvalidInput, field_error

router = APIRouter(tags=["chronic"])
router.include_router(followup_api.router)


def _medicines(items: list[MedicineIn] | None) -> list[dict[str, str]] | None:
    return None if items is None else [m.model_dump() for m in items]


@router.post("/chronic/enrolments", response_model=EnrolmentOut, status_code=status.HTTP_201_CREATED)
def create_enrolment(body: EnrolmentIn, request: Request, db: DbSession, user: CurrentUser) -> EnrolmentOut:
    """Enrol a resident in a registry (409 `already_enrolled` names the existing enrolment)."""
    row = service.enrol(db, by=user, patient_id=body.patient_id, condition_code=body.condition_code,
                        diagnosed_on=body.diagnosed_on, source=body.source, risk_factors=body.risk_factors,
                        complications=body.complications, medicines=_medicines(body.medicines) or [],
                        team_id=body.team_id, client_address=client_address(request))
    return EnrolmentOut.model_validate(row)


@router.get("/chronic/enrolments", response_model=list[EnrolmentOut])
def list_enrolments(request: Request, db: DbSession, user: CurrentUser,
                    patient_id: Annotated[int, Query(ge=1, le=MAX_ID)]) -> list[EnrolmentOut]:
    """A resident's enrolments, active and closed."""
    rows = service.enrolments_of(db, user=user, patient_id=patient_id, client_address=client_address(request))
    return [EnrolmentOut.model_validate(r) for r in rows]


@router.get("/chronic/enrolments/{enrolment_id}", response_model=EnrolmentOut)
def get_enrolment(enrolment_id: IdPath, request: Request, db: DbSession, user: CurrentUser) -> EnrolmentOut:
    return EnrolmentOut.model_validate(service.get_enrolment(db, user=user, enrolment_id=enrolment_id,
                                                             client_address=client_address(request)))


@router.patch("/chronic/enrolments/{enrolment_id}", response_model=EnrolmentOut)
def update_enrolment(enrolment_id: IdPath, body: EnrolmentUpdate, request: Request, db: DbSession,
                     user: CurrentUser) -> EnrolmentOut:
    row = service.update_enrolment(db, by=user, enrolment_id=enrolment_id, risk_factors=body.risk_factors,
                                   complications=body.complications, medicines=_medicines(body.medicines),
                                   client_address=client_address(request))
    return EnrolmentOut.model_validate(row)


@router.post("/chronic/enrolments/{enrolment_id}/close", response_model=EnrolmentOut)
def close_enrolment(enrolment_id: IdPath, body: EnrolmentClose, request: Request, db: DbSession,
                    user: CurrentUser) -> EnrolmentOut:
    row = service.close_enrolment(db, by=user, enrolment_id=enrolment_id, status=body.status, reason=body.reason,
                                  client_address=client_address(request))
    return EnrolmentOut.model_validate(row)


def _reading_out(db: DbSession, row: service.ChronicReading) -> ReadingOut:
    return ReadingOut.model_validate(row).model_copy(update={"danger": service.reading_danger(db, row)})


@router.post("/chronic/readings", response_model=ReadingOut, status_code=status.HTTP_201_CREATED)
def create_reading(body: ReadingIn, request: Request, db: DbSession, user: CurrentUser) -> ReadingOut:
    """Record a reading; `danger` in the answer says it is at a danger value (SBP ≥ 180 or DBP ≥ 110, glucose
    ≥ 16.7 or ≤ 3.9): tell the doctor."""
    row = service.record_reading(db, by=user, patient_id=body.patient_id, kind=body.kind,
                                 measured_at=body.measured_at, sbp=body.sbp, dbp=body.dbp, pulse=body.pulse,
                                 glucose=body.glucose, glucose_context=body.glucose_context, point_id=body.point_id,
                                 client_address=client_address(request))
    return _reading_out(db, row)


@router.post("/chronic/readings/import", response_model=ImportReportOut)
async def import_readings(request: Request, db: DbSession, user: CurrentUser, file: Annotated[UploadFile, File()],
                          point_id: Annotated[int, Form(ge=1, le=MAX_ID)]) -> ImportReportOut:
    """A device export CSV (UTF-8 or GB18030): good rows kept, bad rows reported by row, field and message,
    rows already imported counted as duplicates."""
    content = await file.read(service.IMPORT_MAX_BYTES + 1)
    if len(content) > service.IMPORT_MAX_BYTES:
        raise InvalidInput("文件过大 / the file is too large", field_errors=[field_error("file", "too large")])
    report = await run_in_threadpool(  # off the event loop: see "Async routes" in docs/architecture.md
        service.import_device_csv, db, by=user, point_id=point_id, filename=file.filename or "", content=content,
        client_address=client_address(request))
    return ImportReportOut(**report.as_dict())


@router.post("/chronic/contracts", response_model=ContractOut, status_code=status.HTTP_201_CREATED)
def create_contract(body: ContractIn, request: Request, db: DbSession, user: CurrentUser) -> ContractOut:
    """Sign a resident to a family-doctor team (409 `signed_to_another_team` names the team and its end date)."""
    row = service.sign_contract(db, by=user, patient_id=body.patient_id, team_id=body.team_id,
                                package_code=body.package_code, starts_on=body.starts_on, years=body.years,
                                client_address=client_address(request))
    return ContractOut.model_validate(row)


@router.post("/chronic/contracts/{contract_id}/end", response_model=ContractOut)
def end_contract(contract_id: IdPath, body: ContractEnd, request: Request, db: DbSession,
                 user: CurrentUser) -> ContractOut:
    row = service.end_contract(db, by=user, contract_id=contract_id, reason=body.reason,
                               client_address=client_address(request))
    return ContractOut.model_validate(row)


@router.get("/chronic/teams/{team_id}/panel", response_model=PanelOut)
def team_panel(team_id: IdPath, request: Request, db: DbSession, user: CurrentUser,
               q: Annotated[str, Query(max_length=60)] = "",
               page: Annotated[int, Query(ge=1, le=100_000)] = 1) -> PanelOut:
    """The team's signed residents, 50 a page, searchable by name, pinyin initials or phone."""
    panel = service.team_panel(db, user=user, team_id=team_id, q=q, page=page, client_address=client_address(request))
    return PanelOut(team_id=panel.team.id, team_name=panel.team.name, total=panel.total, page=panel.page,
                    pages=panel.pages, rows=[PanelRowOut.model_validate(r) for r in panel.rows])


@router.post("/chronic/points", response_model=PointOut, status_code=status.HTTP_201_CREATED)
def create_point(body: PointIn, request: Request, db: DbSession, user: CurrentUser) -> PointOut:
    row = service.create_point(db, by=user, code=body.code, name=body.name, organisation_id=body.organisation_id,
                               kind=body.kind, area_id=body.area_id, device_serials=body.device_serials,
                               client_address=client_address(request))
    return PointOut.model_validate(row)


@router.get("/chronic/points", response_model=list[PointOut])
def list_points(db: DbSession, user: CurrentUser,
                organisation_id: Annotated[int | None, Query(ge=1, le=MAX_ID)] = None,
                area_id: Annotated[int | None, Query(ge=1, le=MAX_ID)] = None) -> list[PointOut]:
    """Monitoring points (no patient data), by organisation or village."""
    return [PointOut.model_validate(p) for p in service.list_points(db, organisation_id=organisation_id,
                                                                     area_id=area_id)]
