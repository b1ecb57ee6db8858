"""JSON API of the tele-ECG centre (mounted under /api/v1). Thin: every rule lives in service.py."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, File, Form, Query, Request, UploadFile
from fastapi.responses import JSONResponse, Response
from pydantic import AwareDatetime
from starlette.concurrency import run_in_threadpool

from healthrelay.core.db import utcnow
from healthrelay.core.deps import CurrentUser, DbSession, client_address
from healthrelay.core.errors import AccessDenied, InvalidInput, field_error
from healthrelay.core.security import csrf_matches
from healthrelay.ecg import codes as vocab
from healthrelay.ecg import flows as flows  # noqa: F401 - registers the STEMI hook on report signatures
from healthrelay.ecg import render, service
from healthrelay.ecg.models import EcgRecording
from healthrelay.ecg.schemas import LinkPatientIn, MeasurementsOut, RecordingOut, SamplesOut, StatementOut

router = APIRouter(prefix="/ecg", tags=["ecg"])

SPEEDS = (12.5, 25.0, 50.0)
GAINS = (5.0, 10.0, 20.0)
MAX_FILES = 4


async def _csrf_unless_bearer(request: Request, user: CurrentUser) -> None:
    """A browser session uploads with the page's CSRF token in X-CSRF-Token; bearer tokens need none."""
    if request.headers.get("authorization"):
        return
    nonce = request.session.get("nonce", "")
    if not nonce or not csrf_matches(nonce, request.headers.get("x-csrf-token", "")):
        raise AccessDenied("上传需要 X-CSRF-Token 头或 Bearer 令牌 / an upload needs the X-CSRF-Token header or a "
                           "bearer token", code="csrf_failed")


def recording_out(rec: EcgRecording) -> RecordingOut:
    return RecordingOut.model_validate(rec).model_copy(update={
        "viewer_url": f"/ecg/recordings/{rec.id}", "request_url": f"/teleconsult/{rec.consult_request_id}"})


async def read_uploads(files: list[UploadFile]) -> dict[str, bytes]:
    """The uploaded parts by file name (an empty file input still sends a nameless part)."""
    out: dict[str, bytes] = {}
    picked = [f for f in files if f.filename]
    if len(picked) > MAX_FILES:
        raise InvalidInput(f"一次最多上传 {MAX_FILES} 个文件 / at most {MAX_FILES} files at once",
                           field_errors=[field_error("files", "too many files")])
    for upload in picked:
        data = await upload.read(service.MAX_UPLOAD_BYTES + 1)
        if len(data) > service.MAX_UPLOAD_BYTES:
            raise InvalidInput("文件过大（上限 30 MB）/ the file exceeds 30 MB",
                               field_errors=[field_error("files", "too large")])
        out[(upload.filename or "ecg").rsplit("/", 1)[-1].rsplit("\\", 1)[-1][:200]] = data
    return out


@router.post("/recordings", response_model=RecordingOut, status_code=201,
             dependencies=[Depends(_csrf_unless_bearer)])
async def upload(request: Request, db: DbSession, user: CurrentUser, files: Annotated[list[UploadFile], File()],
                 patient_id: Annotated[int | None, Form()] = None, priority: Annotated[str, Form()] = "urgent",
                 clinical_question: Annotated[str, Form(max_length=2000)] = "",
                 first_contact_at: Annotated[AwareDatetime | None, Form()] = None) -> Response:
    """Upload one ECG (DICOM, HL7 aECG, CSV, or WFDB .hea + .dat) for the ECG centre to read; `first_contact_at`
    (ISO 8601 with offset) is when the clinic first saw the patient.

    201 with the new recording; 200 with the recording already there when the same tracing is sent again."""
    if user.organisation_id is None:
        raise AccessDenied("只有机构人员可以上传心电图 / only staff of an organisation upload ECGs")
    data = await read_uploads(files)
    started = utcnow()
    rec = await run_in_threadpool(  # off the event loop, so a wait for SQLite's write lock stalls nobody else
        service.ingest, db, files=data, organisation_id=user.organisation_id, by=user, patient_id=patient_id,
        priority=priority, clinical_question=clinical_question, via="api", client_address=client_address(request),
        first_contact_at=first_contact_at)
    created = rec.received_at >= started
    return JSONResponse(recording_out(rec).model_dump(mode="json"), status_code=201 if created else 200)


@router.get("/recordings/{recording_id}", response_model=RecordingOut)
def get(recording_id: int, request: Request, db: DbSession, user: CurrentUser) -> RecordingOut:
    rec = service.get_recording_for(db, recording_id=recording_id, user=user, client_address=client_address(request))
    return recording_out(rec)


@router.get("/recordings/{recording_id}/samples", response_model=SamplesOut)
def samples(recording_id: int, request: Request, db: DbSession, user: CurrentUser) -> SamplesOut:
    """Every lead in microvolts (at most 1000 samples per second), for the viewer."""
    rec = service.get_recording_for(db, recording_id=recording_id, user=user, client_address=client_address(request))
    return SamplesOut(recording_id=rec.id, **service.samples_json(rec))


@router.get("/recordings/{recording_id}/measurements", response_model=MeasurementsOut)
def measurements(recording_id: int, request: Request, db: DbSession, user: CurrentUser) -> MeasurementsOut:
    """The automatic (preliminary) measurements, or why there are none."""
    rec = service.get_recording_for(db, recording_id=recording_id, user=user, client_address=client_address(request))
    return MeasurementsOut(recording_id=rec.id, measurable=rec.measurable, measurements=rec.measurements,
                           measure_note=rec.measure_note, suggested_codes=rec.suggested_codes,
                           quality_flags=rec.quality_flags)  # type: ignore[arg-type]


@router.get("/recordings/{recording_id}/tracing.svg")
def tracing_svg(recording_id: int, request: Request, db: DbSession, user: CurrentUser,
                speed: Annotated[float, Query()] = 25.0, gain: Annotated[float, Query()] = 10.0) -> Response:
    """The 12-lead sheet as SVG (speed 12.5/25/50 mm/s, gain 5/10/20 mm/mV)."""
    errors = []
    if speed not in SPEEDS:
        errors.append(field_error("speed", "走纸速度须为 12.5、25 或 50 mm/s / speed must be 12.5, 25 or 50"))
    if gain not in GAINS:
        errors.append(field_error("gain", "增益须为 5、10 或 20 mm/mV / gain must be 5, 10 or 20"))
    if errors:
        raise InvalidInput("显示参数有误 / invalid display settings", field_errors=errors)
    rec = service.get_recording_for(db, recording_id=recording_id, user=user, client_address=client_address(request))
    svg = render.render_svg(service.tracing_of(rec), speed_mm_s=speed, gain_mm_mv=gain)
    return Response(svg, media_type="image/svg+xml", headers={"Cache-Control": "private, no-store"})


@router.post("/recordings/{recording_id}/patient", response_model=RecordingOut)
def link_patient(recording_id: int, body: LinkPatientIn, request: Request, db: DbSession,
                 user: CurrentUser) -> RecordingOut:
    """Link an unmatched tracing to a resident by hand."""
    rec = service.link_patient(db, recording_id=recording_id, patient_id=body.patient_id, by=user,
                               reason=body.reason, client_address=client_address(request))
    return recording_out(rec)


@router.get("/codes", response_model=list[StatementOut])
def statement_codes(user: CurrentUser) -> list[StatementOut]:
    """The report vocabulary: code, group, Chinese and English label, critical, STEMI territory."""
    return [StatementOut(code=s.code, group=s.group, zh=s.zh, en=s.en, critical=s.critical, territory=s.territory)
            for s in vocab.STATEMENTS]

