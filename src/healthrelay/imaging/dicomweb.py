"""DICOMweb (PS3.18) under /dicomweb: QIDO-RS search, WADO-RS retrieve and rendering, STOW-RS upload.

Viewers such as OHIF or Weasis, and gateways, connect with the platform's bearer token (or, from our
own pages, the session cookie; a cookie-authenticated STOW also needs the CSRF header). Searches
read the index tables only; retrieval reads the storage backend. Every study a request touches is
checked and audited once by imaging.access (rendered frames of one study by one user: once per few
minutes, so scrolling a series does not write an audit row per image).
"""

from __future__ import annotations

import io
import json
import logging
import re
import secrets
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import date
from typing import Any

import pydicom
from fastapi import APIRouter, Depends, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import StreamingResponse
from pydicom.datadict import keyword_for_tag
from pydicom.dataset import Dataset
from pydicom.uid import UID, ExplicitVRLittleEndian
from python_multipart.multipart import MultipartParseError, MultipartParser, parse_options_header
from sqlalchemy import Select, and_, exists, func, select
from sqlalchemy.orm import Session

from healthrelay.accounts.models import Role, User
from healthrelay.audit import service as audit
from healthrelay.core.db import take_sqlite_write_lock
from healthrelay.core.deps import CurrentUser, DbSession, client_address
from healthrelay.core.errors import AccessDenied, Conflict, DomainError, InvalidInput, NotFound
from healthrelay.core.security import csrf_matches
from healthrelay.imaging import render
from healthrelay.imaging.access import readable_study_ids, require_study_access
from healthrelay.imaging.models import ImagingInstance, ImagingSeries, ImagingStudy
from healthrelay.imaging.storage import get_backend

log = logging.getLogger("healthrelay.imaging.dicomweb")

router = APIRouter(tags=["dicomweb"])

DICOM_JSON = "application/dicom+json"
_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")
# Rendered frames of one study by one user are audited once per this many seconds (per process).
FRAME_AUDIT_SECONDS = 300
STUDY_LIMIT_DEFAULT, STUDY_LIMIT_MAX = 100, 1000
ITEM_LIMIT_DEFAULT, ITEM_LIMIT_MAX = 1000, 5000
BULK_THRESHOLD = 1024  # binary values larger than this are sent as BulkDataURI, not inline
_BINARY_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "UN"})
STOW_ROLES = frozenset({Role.CLINICIAN, Role.REMOTE_READER, Role.ORG_ADMIN, Role.ALLIANCE_ADMIN})


class NotAcceptable(DomainError):
    status_code = 406
    code = "not_acceptable"


class UnsupportedMediaType(DomainError):
    status_code = 415
    code = "unsupported_media_type"


class BadRequest(DomainError):
    status_code = 400
    code = "bad_request"


class StorageUnavailable(DomainError):
    status_code = 503
    code = "storage_unavailable"


# --- authentication for uploads -----------------------------------------------------------------------

async def _csrf_unless_bearer(request: Request, user: CurrentUser) -> None:
    """A browser session may upload only with the page's CSRF token in X-CSRF-Token; tokens need none.

    Depends on the user so that an anonymous request is told to sign in (401) before anything else.
    """
    if request.headers.get("authorization"):
        return
    nonce = request.session.get("nonce", "")
    if not nonce or not csrf_matches(nonce, request.headers.get("x-csrf-token", "")):
        raise AccessDenied("上传需要 X-CSRF-Token 头或 Bearer 令牌 / an upload needs the X-CSRF-Token header or a "
                           "bearer token", code="csrf_failed")


# --- DICOM JSON helpers -------------------------------------------------------------------------------

def _el(vr: str, *values: Any) -> dict[str, Any]:
    kept = [v for v in values if v is not None and v != ""]
    return {"vr": vr, "Value": kept} if kept else {"vr": vr}


def _pn(name: str) -> dict[str, Any]:
    if not name:
        return {"vr": "PN"}
    groups = name.split("=")
    value = {k: g for k, g in zip(("Alphabetic", "Ideographic", "Phonetic"), groups, strict=False) if g}
    return {"vr": "PN", "Value": [value]} if value else {"vr": "PN"}


def _multi(text: str) -> list[str]:
    return [v for v in (text or "").split("\\") if v]


def _da(value: date | None) -> str | None:
    return value.strftime("%Y%m%d") if value else None


def _base(request: Request) -> str:
    return f"{str(request.base_url).rstrip('/')}/dicomweb"


def _study_url(request: Request, study_uid: str) -> str:
    return f"{_base(request)}/studies/{study_uid}"


def _json(payload: Any, status_code: int = 200, headers: dict[str, str] | None = None) -> Response:
    body = json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode()
    return Response(content=body, status_code=status_code, media_type=DICOM_JSON, headers=headers)


def _study_json(request: Request, s: ImagingStudy) -> dict[str, Any]:
    return {
        "00080005": _el("CS", "ISO_IR 192"),
        "00080020": _el("DA", _da(s.study_date)),
        "00080030": _el("TM", s.study_time),
        "00080050": _el("SH", s.accession_number),
        "00080056": _el("CS", "ONLINE"),
        "00080061": _el("CS", *_multi(s.modalities_in_study)),
        "00080090": _pn(s.referring_physician),
        "00081030": _el("LO", s.description),
        "00081190": _el("UR", _study_url(request, s.study_instance_uid)),
        "00100010": _pn(s.dicom_patient_name),
        "00100020": _el("LO", s.dicom_patient_id),
        "00100030": _el("DA", s.dicom_birth_date),
        "00100040": _el("CS", s.dicom_sex),
        "0020000D": _el("UI", s.study_instance_uid),
        "00200010": _el("SH", s.study_id),
        "00201206": _el("IS", s.number_of_series),
        "00201208": _el("IS", s.number_of_instances),
    }


def _series_json(request: Request, se: ImagingSeries, study: ImagingStudy) -> dict[str, Any]:
    return {
        "00080005": _el("CS", "ISO_IR 192"),
        "00080056": _el("CS", "ONLINE"),
        "00080060": _el("CS", se.modality),
        "0008103E": _el("LO", se.description),
        "00081190": _el("UR", f"{_study_url(request, study.study_instance_uid)}/series/{se.series_instance_uid}"),
        "00180015": _el("CS", se.body_part),
        "0020000D": _el("UI", study.study_instance_uid),
        "0020000E": _el("UI", se.series_instance_uid),
        "00200011": _el("IS", se.series_number),
        "00201209": _el("IS", se.number_of_instances),
    }


def _instance_json(request: Request, i: ImagingInstance, se: ImagingSeries, study: ImagingStudy) -> dict[str, Any]:
    s = i.summary or {}
    url = (f"{_study_url(request, study.study_instance_uid)}/series/{se.series_instance_uid}"
           f"/instances/{i.sop_instance_uid}")
    out = {
        "00080005": _el("CS", "ISO_IR 192"),
        "00080016": _el("UI", i.sop_class_uid),
        "00080018": _el("UI", i.sop_instance_uid),
        "00080056": _el("CS", "ONLINE"),
        "00080060": _el("CS", se.modality),
        "00081190": _el("UR", url),
        "00083002": _el("UI", i.transfer_syntax_uid),
        "0020000D": _el("UI", study.study_instance_uid),
        "0020000E": _el("UI", se.series_instance_uid),
        "00200013": _el("IS", i.instance_number),
        "00280008": _el("IS", i.number_of_frames),
        "00280010": _el("US", i.rows),
        "00280011": _el("US", i.columns),
        "00280100": _el("US", s.get("bits_allocated")),
    }
    extra = {
        "00280004": ("CS", s.get("photometric_interpretation")),
        "00280030": ("DS", s.get("pixel_spacing")),
        "00200032": ("DS", s.get("image_position")),
        "00200037": ("DS", s.get("image_orientation")),
        "00201041": ("DS", s.get("slice_location")),
        "00281050": ("DS", s.get("window_center")),
        "00281051": ("DS", s.get("window_width")),
        "00281052": ("DS", s.get("rescale_intercept")),
        "00281053": ("DS", s.get("rescale_slope")),
        "00280002": ("US", s.get("samples_per_pixel")),
    }
    for tag, (vr, value) in extra.items():
        if value is None or value == "":
            continue
        out[tag] = _el(vr, *value) if isinstance(value, list) else _el(vr, value)
    return out


# --- QIDO-RS ------------------------------------------------------------------------------------------

@dataclass
class _Query:
    """The matching keys of a QIDO request (by keyword), limit/offset and what was ignored."""

    match: dict[str, str] = field(default_factory=dict)
    limit: int = 0
    offset: int = 0
    limited: bool = False
    ignored: list[str] = field(default_factory=list)


_STUDY_KEYS = {"StudyInstanceUID", "PatientID", "PatientName", "StudyDate", "AccessionNumber", "ModalitiesInStudy",
               "ReferringPhysicianName", "StudyID", "StudyDescription", "PatientBirthDate", "PatientSex"}
_SERIES_KEYS = {"SeriesInstanceUID", "Modality", "SeriesNumber", "SeriesDescription", "BodyPartExamined"}
_INSTANCE_KEYS = {"SOPInstanceUID", "SOPClassUID", "InstanceNumber"}
_CONTROL = {"limit", "offset", "includefield", "fuzzymatching"}


def _keyword(key: str) -> str:
    if re.fullmatch(r"[0-9A-Fa-f]{8}", key):
        return keyword_for_tag(int(key, 16)) or key
    return key


def _parse_query(request: Request, *, keys: set[str], default_limit: int, max_limit: int) -> _Query:
    q = _Query(limit=default_limit)
    for raw_key, value in request.query_params.multi_items():
        if raw_key in ("limit", "offset"):
            try:
                number = int(value)
                if number < 0:
                    raise ValueError
            except ValueError:
                raise BadRequest(f"{raw_key} 必须是非负整数 / {raw_key} must be a non-negative integer") from None
            if raw_key == "limit":
                q.limit = min(number or default_limit, max_limit)
                q.limited = number > max_limit
            else:
                q.offset = number
            continue
        if raw_key in _CONTROL:
            continue  # every attribute we index is returned, so includefield is always satisfied
        key = _keyword(raw_key)
        if key in keys:
            q.match[key] = value.strip()
        else:
            q.ignored.append(_header_text(raw_key[:40]))
    return q


def _like(value: str) -> str | None:
    """DICOM wildcards (* and ?) as a SQL LIKE pattern with '!' as escape; None when there are none."""
    if "*" not in value and "?" not in value:
        return None
    escaped = value.replace("!", "!!").replace("%", "!%").replace("_", "!_")
    return escaped.replace("*", "%").replace("?", "_")


def _text_match(column: Any, value: str, *, fold_case: bool = False) -> Any:
    pattern = _like(value)
    if pattern is None:
        return func.lower(column) == value.lower() if fold_case else column == value
    if pattern == "%":
        return None
    if fold_case:
        return func.lower(column).like(pattern.lower(), escape="!")
    return column.like(pattern, escape="!")


def _date_range(key: str, value: str) -> tuple[date | None, date | None]:
    def one(text: str) -> date | None:
        text = text.strip().replace("-", "") if len(text.strip()) == 10 else text.strip()
        if not text:
            return None
        if not re.fullmatch(r"\d{8}", text):
            raise ValueError
        return date(int(text[:4]), int(text[4:6]), int(text[6:8]))

    try:
        if re.fullmatch(r"\d{4}-\d{2}-\d{2}", value):
            return one(value), one(value)
        if "-" in value:
            lo, _, hi = value.partition("-")
            return one(lo), one(hi)
        return one(value), one(value)
    except ValueError:
        raise BadRequest(f"{key} 应为 YYYYMMDD 或 YYYYMMDD-YYYYMMDD / {key} must be YYYYMMDD or a range "
                         "YYYYMMDD-YYYYMMDD") from None


def _uids(value: str) -> list[str]:
    return [u.strip() for u in re.split(r"[,\\]", value) if u.strip()]


def _int_value(key: str, value: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise BadRequest(f"{key} 必须是整数 / {key} must be an integer") from None


def _apply_matching(q: Select[Any], match: dict[str, str]) -> Select[Any]:
    conditions: list[Any] = []
    for key, value in match.items():
        if value == "" or value == "*":
            continue
        if key == "StudyInstanceUID":
            conditions.append(ImagingStudy.study_instance_uid.in_(_uids(value)))
        elif key == "SeriesInstanceUID":
            conditions.append(ImagingSeries.series_instance_uid.in_(_uids(value)))
        elif key == "SOPInstanceUID":
            conditions.append(ImagingInstance.sop_instance_uid.in_(_uids(value)))
        elif key == "SOPClassUID":
            conditions.append(ImagingInstance.sop_class_uid.in_(_uids(value)))
        elif key == "PatientID":
            conditions.append(_text_match(ImagingStudy.dicom_patient_id, value))
        elif key == "PatientName":
            conditions.append(_text_match(ImagingStudy.dicom_patient_name, value, fold_case=True))
        elif key == "AccessionNumber":
            conditions.append(_text_match(ImagingStudy.accession_number, value))
        elif key == "StudyID":
            conditions.append(_text_match(ImagingStudy.study_id, value))
        elif key == "StudyDescription":
            conditions.append(_text_match(ImagingStudy.description, value, fold_case=True))
        elif key == "ReferringPhysicianName":
            conditions.append(_text_match(ImagingStudy.referring_physician, value, fold_case=True))
        elif key == "PatientSex":
            conditions.append(ImagingStudy.dicom_sex == value.upper())
        elif key == "StudyDate":
            lo, hi = _date_range(key, value)
            if lo is not None:
                conditions.append(ImagingStudy.study_date >= lo)
            if hi is not None:
                conditions.append(ImagingStudy.study_date <= hi)
        elif key == "PatientBirthDate":
            lo, hi = _date_range(key, value)
            if lo is not None:
                conditions.append(ImagingStudy.dicom_birth_date >= lo.strftime("%Y%m%d"))
            if hi is not None:
                conditions.append(ImagingStudy.dicom_birth_date <= hi.strftime("%Y%m%d"))
        elif key == "ModalitiesInStudy":
            wanted = [m.strip().upper() for m in re.split(r"[,\\]", value) if m.strip()]
            conditions.append(exists().where(ImagingSeries.study_id == ImagingStudy.id,
                                             ImagingSeries.modality.in_(wanted)))
        elif key == "Modality":
            conditions.append(ImagingSeries.modality.in_([m.strip().upper() for m in re.split(r"[,\\]", value)]))
        elif key == "SeriesNumber":
            conditions.append(ImagingSeries.series_number == _int_value(key, value))
        elif key == "SeriesDescription":
            conditions.append(_text_match(ImagingSeries.description, value, fold_case=True))
        elif key == "BodyPartExamined":
            conditions.append(_text_match(ImagingSeries.body_part, value, fold_case=True))
        elif key == "InstanceNumber":
            conditions.append(ImagingInstance.instance_number == _int_value(key, value))
    kept = [c for c in conditions if c is not None]
    return q.where(and_(*kept)) if kept else q


def _header_text(text: str) -> str:
    """Printable ASCII without quotes: what may go inside a Warning header's quoted text."""
    return re.sub(r'[^\x20-\x7e]|"|\\', "?", text)


def _warnings(query: _Query, returned: int) -> dict[str, str]:
    notes = []
    if query.ignored:
        notes.append(f'299 healthrelay: "unsupported query keys ignored: {", ".join(query.ignored[:10])}"')
    if query.limited or returned == query.limit:
        notes.append('299 healthrelay: "the number of results may exceed the limit; use offset for more"')
    return {"Warning": ", ".join(notes)} if notes else {}


def _audit_search(db: Session, request: Request, user: User, *, level: str, studies: list[ImagingStudy],
                  query: _Query, study_uid: str | None = None) -> None:
    patient_ids = sorted({s.patient_id for s in studies if s.patient_id is not None})
    audit.record(db, actor=_actor(request, user), action="imaging.search", resource=f"dicomweb:{level}",
                 detail={"results": len(studies), "study_uid": study_uid or "", "patient_ids": patient_ids[:100],
                         "keys": sorted(query.match)[:20]})


def _actor(request: Request, user: User) -> audit.Actor:
    return audit.Actor(user_id=user.id, username=user.username, role=str(user.role),
                       organisation_id=user.organisation_id, client_address=client_address(request))


def _scoped(q: Select[Any], user: User) -> Select[Any]:
    ids = readable_study_ids(user)
    return q if ids is None else q.where(ImagingStudy.id.in_(ids))


_WHAT_ZH = {"study": "检查", "series": "序列", "instance": "实例"}


def _check_uid(uid: str, what: str = "study") -> str:
    if len(uid) > 64 or not _UID.match(uid):
        raise NotFound(f"没有这个{_WHAT_ZH[what]} / no such {what}", code=f"{what}_not_found")
    return uid


def _load_study(db: Session, study_uid: str) -> ImagingStudy:
    _check_uid(study_uid)
    study = db.execute(select(ImagingStudy).where(ImagingStudy.study_instance_uid == study_uid)).scalar()
    if study is None:
        raise NotFound("没有这个影像检查 / no such imaging study", code="study_not_found")
    return study


def _readable(db: Session, request: Request, user: User, study_uid: str) -> ImagingStudy:
    study = _load_study(db, study_uid)
    require_study_access(db, user=user, study=study, client_address=client_address(request))
    return study


@router.get("/studies")
def search_studies(request: Request, db: DbSession, user: CurrentUser) -> Response:
    """QIDO-RS studies the user may read, newest received first."""
    query = _parse_query(request, keys=_STUDY_KEYS, default_limit=STUDY_LIMIT_DEFAULT, max_limit=STUDY_LIMIT_MAX)
    q = _apply_matching(_scoped(select(ImagingStudy), user), query.match)
    q = q.order_by(ImagingStudy.received_at.desc(), ImagingStudy.id.desc()).offset(query.offset).limit(query.limit)
    studies = list(db.execute(q).scalars())
    _audit_search(db, request, user, level="studies", studies=studies, query=query)
    return _json([_study_json(request, s) for s in studies], headers=_warnings(query, len(studies)))


def _series_search(request: Request, db: Session, user: User, study_uid: str | None) -> Response:
    keys = _SERIES_KEYS | (set() if study_uid else _STUDY_KEYS)
    query = _parse_query(request, keys=keys, default_limit=ITEM_LIMIT_DEFAULT, max_limit=ITEM_LIMIT_MAX)
    q = select(ImagingSeries, ImagingStudy).join(ImagingStudy, ImagingStudy.id == ImagingSeries.study_id)
    if study_uid is not None:
        study = _readable(db, request, user, study_uid)
        q = q.where(ImagingSeries.study_id == study.id)
    else:
        q = _scoped(q, user)
    q = _apply_matching(q, query.match).order_by(
        ImagingStudy.received_at.desc(), ImagingStudy.id.desc(), ImagingSeries.series_number.asc().nulls_last(),
        ImagingSeries.id).offset(query.offset).limit(query.limit)
    rows = db.execute(q).all()
    if study_uid is None:
        _audit_search(db, request, user, level="series", studies=[st for _, st in rows], query=query)
    return _json([_series_json(request, se, st) for se, st in rows], headers=_warnings(query, len(rows)))


@router.get("/series")
def search_all_series(request: Request, db: DbSession, user: CurrentUser) -> Response:
    return _series_search(request, db, user, None)


@router.get("/studies/{study_uid}/series")
def search_series(study_uid: str, request: Request, db: DbSession, user: CurrentUser) -> Response:
    return _series_search(request, db, user, study_uid)


def _instance_search(request: Request, db: Session, user: User, study_uid: str | None,
                     series_uid: str | None) -> Response:
    keys = _INSTANCE_KEYS | (set() if series_uid else _SERIES_KEYS) | (set() if study_uid else _STUDY_KEYS)
    query = _parse_query(request, keys=keys, default_limit=ITEM_LIMIT_DEFAULT, max_limit=ITEM_LIMIT_MAX)
    q = (select(ImagingInstance, ImagingSeries, ImagingStudy)
         .join(ImagingSeries, ImagingSeries.id == ImagingInstance.series_id)
         .join(ImagingStudy, ImagingStudy.id == ImagingInstance.study_id))
    if study_uid is not None:
        study = _readable(db, request, user, study_uid)
        q = q.where(ImagingInstance.study_id == study.id)
        if series_uid is not None:
            _check_uid(series_uid, "series")
            series_id = db.execute(select(ImagingSeries.id).where(
                ImagingSeries.series_instance_uid == series_uid, ImagingSeries.study_id == study.id)).scalar()
            if series_id is None:
                raise NotFound("该检查中没有这个序列 / no such series in this study", code="series_not_found")
            q = q.where(ImagingInstance.series_id == series_id)
    else:
        q = _scoped(q, user)
    q = _apply_matching(q, query.match).order_by(
        ImagingStudy.id, ImagingSeries.series_number.asc().nulls_last(), ImagingSeries.id,
        ImagingInstance.instance_number.asc().nulls_last(), ImagingInstance.id).offset(query.offset).limit(query.limit)
    rows = db.execute(q).all()
    if study_uid is None:
        _audit_search(db, request, user, level="instances", studies=[st for _, _, st in rows], query=query)
    return _json([_instance_json(request, i, se, st) for i, se, st in rows], headers=_warnings(query, len(rows)))


@router.get("/instances")
def search_all_instances(request: Request, db: DbSession, user: CurrentUser) -> Response:
    return _instance_search(request, db, user, None, None)


@router.get("/studies/{study_uid}/instances")
def search_study_instances(study_uid: str, request: Request, db: DbSession, user: CurrentUser) -> Response:
    return _instance_search(request, db, user, study_uid, None)


@router.get("/studies/{study_uid}/series/{series_uid}/instances")
def search_instances(study_uid: str, series_uid: str, request: Request, db: DbSession, user: CurrentUser) -> Response:
    return _instance_search(request, db, user, study_uid, series_uid)


# --- content negotiation ----------------------------------------------------------------------------

@dataclass(frozen=True)
class _MediaRange:
    mime: str
    params: dict[str, str]
    q: float


def _accept(request: Request) -> list[_MediaRange]:
    """The Accept header's media ranges, best first (quoted commas respected)."""
    header = request.headers.get("accept", "").strip()
    ranges: list[_MediaRange] = []
    for position, item in enumerate(re.findall(r'(?:[^,"]|"[^"]*")+', header)):
        parts = re.findall(r'(?:[^;"]|"[^"]*")+', item)
        if not parts or not parts[0].strip():
            continue
        params: dict[str, str] = {}
        for p in parts[1:]:
            name, _, value = p.strip().partition("=")
            params[name.strip().lower()] = value.strip().strip('"')
        try:
            q = float(params.pop("q", "1"))
        except ValueError:
            q = 1.0
        ranges.append(_MediaRange(parts[0].strip().lower(), params, q - position * 1e-6))
    return sorted((r for r in ranges if r.q > 0), key=lambda r: -r.q)


def _wanted_syntaxes(request: Request, part_type: str) -> list[str | None]:
    """Transfer syntaxes acceptable for multipart parts of `part_type`; None means "as stored".

    Without a transfer-syntax parameter we send what is stored (as Orthanc and most archives do);
    "*" says so explicitly. Raises 406 when the Accept header asks for nothing we can send.
    """
    ranges = _accept(request)
    if not ranges:
        return [None]
    wanted: list[str | None] = []
    for r in ranges:
        if r.mime in ("*/*", "multipart/*"):
            wanted.append(None)
        elif r.mime == "multipart/related":
            inner = r.params.get("type", part_type).lower()
            if inner in (part_type, "*/*", "application/*"):
                ts = r.params.get("transfer-syntax")
                wanted.append(None if ts in (None, "*") else ts)
        elif r.mime == part_type:
            ts = r.params.get("transfer-syntax")
            wanted.append(None if ts in (None, "*") else ts)
    if not wanted:
        raise NotAcceptable(f'只能提供 multipart/related; type="{part_type}" / only multipart/related; '
                            f'type="{part_type}" can be sent for this resource')
    return wanted


def _multipart(parts: Iterator[tuple[bytes, str]], part_type: str) -> StreamingResponse:
    boundary = secrets.token_hex(16)

    def body() -> Iterator[bytes]:
        for content, content_type in parts:
            yield f"--{boundary}\r\nContent-Type: {content_type}\r\n\r\n".encode()
            yield content
            yield b"\r\n"
        yield f"--{boundary}--\r\n".encode()

    media = f'multipart/related; type="{part_type}"; boundary={boundary}'
    return StreamingResponse(body(), media_type=media)


# --- WADO-RS ------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Stored:
    sop_uid: str
    series_uid: str
    backend: str
    key: str
    transfer_syntax: str
    sha256: str
    number_of_frames: int
    summary: dict[str, Any]


def _stored_instances(db: Session, study: ImagingStudy, series_uid: str | None = None,
                      sop_uid: str | None = None) -> list[_Stored]:
    q = (select(ImagingInstance, ImagingSeries.series_instance_uid)
         .join(ImagingSeries, ImagingSeries.id == ImagingInstance.series_id)
         .where(ImagingInstance.study_id == study.id))
    if series_uid is not None:
        _check_uid(series_uid, "series")
        q = q.where(ImagingSeries.series_instance_uid == series_uid)
    if sop_uid is not None:
        _check_uid(sop_uid, "instance")
        q = q.where(ImagingInstance.sop_instance_uid == sop_uid)
    q = q.order_by(ImagingSeries.series_number.asc().nulls_last(), ImagingSeries.id,
                   ImagingInstance.instance_number.asc().nulls_last(), ImagingInstance.id)
    rows = [_Stored(i.sop_instance_uid, se_uid, i.storage_backend, i.storage_key, i.transfer_syntax_uid, i.sha256,
                    i.number_of_frames or 1, dict(i.summary or {})) for i, se_uid in db.execute(q).all()]
    if not rows:
        if sop_uid is not None:
            raise NotFound("该检查中没有这个实例 / no such instance in this study", code="instance_not_found")
        if series_uid is not None:
            raise NotFound("该检查中没有这个序列 / no such series in this study", code="series_not_found")
    return rows


def _read(item: _Stored) -> bytes:
    try:
        return get_backend(item.backend).read(item.key)
    except FileNotFoundError:
        log.error("instance %s missing from storage (%s)", item.sop_uid, item.key)
        raise StorageUnavailable("影像文件缺失 / the image file is missing from storage") from None
    except Exception as exc:  # noqa: BLE001 - a backend error (Orthanc down) is a 503, never a 500
        log.exception("reading instance %s from %s failed", item.sop_uid, item.backend)
        raise StorageUnavailable(f"影像存储暂不可用 / image storage unavailable ({type(exc).__name__})") from None


def _to_explicit_le(data: bytes) -> bytes:
    """Transcode to Explicit VR Little Endian (decompressing when needed) for a client that insists."""
    ds = pydicom.dcmread(io.BytesIO(data))
    if ds.file_meta.TransferSyntaxUID.is_compressed:
        ds.decompress(generate_instance_uid=False)  # same instance, another encoding: keep its UID
    else:
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def _retrieve(request: Request, db: Session, items: list[_Stored]) -> StreamingResponse:
    wanted = _wanted_syntaxes(request, "application/dicom")
    plan: list[tuple[_Stored, bool]] = []
    for item in items:
        if None in wanted or item.transfer_syntax in wanted:
            plan.append((item, False))
        elif ExplicitVRLittleEndian in wanted and item.transfer_syntax != "1.2.840.10008.1.2.2":
            plan.append((item, True))
        else:
            raise NotAcceptable(f"实例以传输语法 {item.transfer_syntax} 保存，无法转换为所请求的 / the instance is "
                                f"stored as {item.transfer_syntax} and cannot be sent as "
                                f"{', '.join(w for w in wanted if w)}")
    db.commit()  # the access check is recorded; the streaming below needs no transaction

    def parts() -> Iterator[tuple[bytes, str]]:
        for item, transcode in plan:
            try:
                data = _read(item)
                if transcode:
                    data = _to_explicit_le(data)
            except Exception:  # noqa: BLE001 - mid-stream: the client sees a short multipart body
                log.exception("WADO-RS: could not send instance %s", item.sop_uid)
                return
            ts = ExplicitVRLittleEndian if transcode else item.transfer_syntax
            yield data, f"application/dicom; transfer-syntax={ts}"

    return _multipart(parts(), "application/dicom")


@router.get("/studies/{study_uid}")
def retrieve_study(study_uid: str, request: Request, db: DbSession, user: CurrentUser) -> Response:
    study = _readable(db, request, user, study_uid)
    return _retrieve(request, db, _stored_instances(db, study))


@router.get("/studies/{study_uid}/series/{series_uid}")
def retrieve_series(study_uid: str, series_uid: str, request: Request, db: DbSession,
                    user: CurrentUser) -> Response:
    study = _readable(db, request, user, study_uid)
    return _retrieve(request, db, _stored_instances(db, study, series_uid))


@router.get("/studies/{study_uid}/series/{series_uid}/instances/{sop_uid}")
def retrieve_instance(study_uid: str, series_uid: str, sop_uid: str, request: Request, db: DbSession,
                      user: CurrentUser) -> Response:
    study = _readable(db, request, user, study_uid)
    return _retrieve(request, db, _stored_instances(db, study, series_uid, sop_uid))


# --- metadata -------------------------------------------------------------------------------------------

def _drop_nested_bulk(ds: Dataset, *, top: bool = True) -> None:
    """Large binary values inside sequences (icons, private blobs) are left out of metadata."""
    for elem in list(ds):
        if elem.VR == "SQ":
            for item in elem.value or []:
                _drop_nested_bulk(item, top=False)
        elif not top and elem.VR in _BINARY_VRS and elem.value is not None and len(elem.value) > BULK_THRESHOLD:
            del ds[elem.tag]


def _metadata_of(request: Request, study_uid: str, item: _Stored) -> dict[str, Any]:
    data = _read(item)
    try:
        ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
    except Exception:  # noqa: BLE001 - ingest validated it; a damaged copy gives its index entry only
        log.exception("metadata: cannot parse stored instance %s", item.sop_uid)
        return {"00080018": _el("UI", item.sop_uid)}
    url = f"{_study_url(request, study_uid)}/series/{item.series_uid}/instances/{item.sop_uid}"
    _drop_nested_bulk(ds)

    def bulk_uri(elem: Any) -> str:
        return f"{url}/bulk/{elem.tag:08X}"

    out = ds.to_json_dict(bulk_data_threshold=BULK_THRESHOLD, bulk_data_element_handler=bulk_uri)
    if item.summary.get("has_pixels", True):
        frames = ",".join(str(n) for n in range(1, item.number_of_frames + 1))
        encapsulated = UID(item.transfer_syntax).is_encapsulated
        vr = "OB" if encapsulated or (item.summary.get("bits_allocated") or 16) <= 8 else "OW"
        out["7FE00010"] = {"vr": vr, "BulkDataURI": f"{url}/frames/{frames}"}
    out.setdefault("00083002", _el("UI", item.transfer_syntax))
    return out


def _metadata(request: Request, db: Session, study: ImagingStudy, items: list[_Stored]) -> Response:
    db.commit()
    return _json([_metadata_of(request, study.study_instance_uid, item) for item in items])


@router.get("/studies/{study_uid}/metadata")
def study_metadata(study_uid: str, request: Request, db: DbSession, user: CurrentUser) -> Response:
    study = _readable(db, request, user, study_uid)
    return _metadata(request, db, study, _stored_instances(db, study))


@router.get("/studies/{study_uid}/series/{series_uid}/metadata")
def series_metadata(study_uid: str, series_uid: str, request: Request, db: DbSession, user: CurrentUser) -> Response:
    study = _readable(db, request, user, study_uid)
    return _metadata(request, db, study, _stored_instances(db, study, series_uid))


@router.get("/studies/{study_uid}/series/{series_uid}/instances/{sop_uid}/metadata")
def instance_metadata(study_uid: str, series_uid: str, sop_uid: str, request: Request, db: DbSession,
                      user: CurrentUser) -> Response:
    study = _readable(db, request, user, study_uid)
    return _metadata(request, db, study, _stored_instances(db, study, series_uid, sop_uid))


@router.get("/studies/{study_uid}/series/{series_uid}/instances/{sop_uid}/bulk/{tag}")
def bulk_data(study_uid: str, series_uid: str, sop_uid: str, tag: str, request: Request, db: DbSession,
              user: CurrentUser) -> Response:
    """A top-level binary value that metadata sent as a BulkDataURI."""
    if not re.fullmatch(r"[0-9A-Fa-f]{8}", tag):
        raise NotFound("没有这个数据元素 / no such element")
    study = _readable(db, request, user, study_uid)
    (item,) = _stored_instances(db, study, series_uid, sop_uid)
    db.commit()
    ds = pydicom.dcmread(io.BytesIO(_read(item)))
    elem = ds.get(int(tag, 16))
    if elem is None or elem.VR not in _BINARY_VRS or elem.value is None:
        raise NotFound("没有这个数据元素 / no such element")
    value = bytes(elem.value)
    return _multipart(iter([(value, "application/octet-stream")]), "application/octet-stream")


# --- frames and rendered images ---------------------------------------------------------------------

_recent_reads: dict[tuple[int, str], float] = {}
_recent_lock = threading.Lock()


def _frame_access(db: Session, request: Request, user: User, study_uid: str) -> ImagingStudy:
    """Check every request; audit a user's frame reads of one study once per FRAME_AUDIT_SECONDS."""
    study = _load_study(db, study_uid)
    now = time.monotonic()
    key = (user.id, study.study_instance_uid)
    with _recent_lock:
        seen = _recent_reads.get(key)
        fresh = seen is not None and now - seen < FRAME_AUDIT_SECONDS
    require_study_access(db, user=user, study=study, client_address=client_address(request), audit_read=not fresh)
    if not fresh:
        with _recent_lock:
            if len(_recent_reads) > 10_000:
                _recent_reads.clear()
            _recent_reads[key] = now
    return study


def _frame_numbers(text: str, count: int) -> list[int]:
    try:
        numbers = [int(n) for n in text.split(",") if n.strip()]
    except ValueError:
        raise BadRequest("帧号应为逗号分隔的正整数 / frame numbers must be positive integers separated by commas") \
            from None
    if not numbers or any(n < 1 for n in numbers):
        raise BadRequest("帧号应为逗号分隔的正整数 / frame numbers must be positive integers separated by commas")
    beyond = [n for n in numbers if n > count]
    if beyond:
        raise NotFound(f"没有第 {beyond[0]} 帧（共 {count} 帧）/ no frame {beyond[0]} (the instance has {count})",
                       code="frame_not_found")
    return numbers


def _native_frames(item: _Stored, numbers: list[int]) -> list[bytes]:
    """Frames as uncompressed little-endian pixel bytes (sliced when stored so, else decoded)."""
    decoded = render.decoded(item.sha256, lambda: _read(item))
    frames = []
    for n in numbers:
        arr = decoded.frame(n - 1)
        frames.append(arr.astype(arr.dtype.newbyteorder("<"), copy=False).tobytes())
    return frames


@router.get("/studies/{study_uid}/series/{series_uid}/instances/{sop_uid}/frames/{frame_list}")
def retrieve_frames(study_uid: str, series_uid: str, sop_uid: str, frame_list: str, request: Request,
                    db: DbSession, user: CurrentUser) -> Response:
    """Pixel data of the given frames, uncompressed (application/octet-stream, Explicit VR Little Endian)."""
    wanted = _wanted_syntaxes(request, "application/octet-stream")
    if not any(w in (None, ExplicitVRLittleEndian) for w in wanted):
        raise NotAcceptable("帧只以未压缩格式提供 / frames are sent uncompressed only (transfer-syntax=* or "
                            f"{ExplicitVRLittleEndian})")
    study = _frame_access(db, request, user, study_uid)
    (item,) = _stored_instances(db, study, series_uid, sop_uid)
    numbers = _frame_numbers(frame_list, item.number_of_frames)
    db.commit()
    frames = _native_frames(item, numbers)
    content_type = f"application/octet-stream; transfer-syntax={ExplicitVRLittleEndian}"
    return _multipart(iter([(f, content_type) for f in frames]), "application/octet-stream")


def _image_format(request: Request) -> str:
    ranges = _accept(request)
    if not ranges:
        return "png"
    for r in ranges:
        if r.mime in ("image/png", "image/*", "*/*"):
            return "png"
        if r.mime in ("image/jpeg", "image/jpg"):
            return "jpeg"
    raise NotAcceptable("渲染图像只提供 image/png 或 image/jpeg / rendered images are image/png or image/jpeg")


def _rendered(request: Request, db: Session, user: User, study_uid: str, series_uid: str, sop_uid: str,
              frame: int) -> Response:
    fmt = _image_format(request)
    window_text = request.query_params.get("window")
    window = render.parse_window(window_text) if window_text else None
    try:
        quality = int(request.query_params.get("quality", "90"))
    except ValueError:
        raise BadRequest("quality 应为 1-100 的整数 / quality must be an integer from 1 to 100") from None
    if not 1 <= quality <= 100:
        raise BadRequest("quality 应为 1-100 的整数 / quality must be an integer from 1 to 100")
    study = _frame_access(db, request, user, study_uid)
    (item,) = _stored_instances(db, study, series_uid, sop_uid)
    db.commit()
    if frame < 1 or frame > item.number_of_frames:
        raise NotFound(f"没有第 {frame} 帧（共 {item.number_of_frames} 帧）/ no frame {frame} "
                       f"(the instance has {item.number_of_frames})", code="frame_not_found")
    shown = f"{window.center:g},{window.width:g},{window.function}" if window else "auto"
    etag = f'"{item.sha256[:20]}-{frame}-{shown}-{fmt}-{quality if fmt == "jpeg" else ""}"'
    headers = {"ETag": etag, "Cache-Control": "private, max-age=86400", "Vary": "Accept"}
    if request.headers.get("if-none-match") == etag:
        return Response(status_code=304, headers=headers)
    decoded = render.decoded(item.sha256, lambda: _read(item))
    image = render.render_decoded(decoded, frame=frame, window=window, fmt=fmt, quality=quality)
    return Response(content=image, media_type=f"image/{fmt}", headers=headers)


@router.get("/studies/{study_uid}/series/{series_uid}/instances/{sop_uid}/frames/{frame}/rendered")
def rendered_frame(study_uid: str, series_uid: str, sop_uid: str, frame: int, request: Request, db: DbSession,
                   user: CurrentUser) -> Response:
    """One frame as an 8-bit PNG (default) or JPEG; `window=center,width[,function]` overrides the VOI."""
    return _rendered(request, db, user, study_uid, series_uid, sop_uid, frame)


@router.get("/studies/{study_uid}/series/{series_uid}/instances/{sop_uid}/rendered")
def rendered_instance(study_uid: str, series_uid: str, sop_uid: str, request: Request, db: DbSession,
                      user: CurrentUser) -> Response:
    """The first frame of the instance, rendered."""
    return _rendered(request, db, user, study_uid, series_uid, sop_uid, 1)


# --- STOW-RS ---------------------------------------------------------------------------------------------

# Failure reasons (PS3.18 Store Instances Response; PS3.4 C-STORE statuses).
PROCESSING_FAILURE = 0x0110
DUPLICATE_CONFLICT = 0x0111
SOP_CLASS_NOT_SUPPORTED = 0x0122
OUT_OF_RESOURCES = 0xA700
CANNOT_UNDERSTAND = 0xC000
STUDY_UID_MISMATCH = 0xC409
_SPOOL_IN_MEMORY = 64 * 1024 * 1024


@dataclass
class _Part:
    offset: int
    length: int = 0
    content_type: str = ""


@dataclass
class _Outcome:
    sop_class_uid: str
    sop_instance_uid: str
    study_uid: str = ""
    failure: int | None = None
    reason: str = ""


class _Collector:
    """python-multipart callbacks: part bodies go to one spooled temporary file, headers are kept."""

    def __init__(self, spool: Any) -> None:
        self.spool = spool
        self.parts: list[_Part] = []
        self.current: _Part | None = None
        self.finished = False
        self._field = bytearray()
        self._value = bytearray()
        self._headers: dict[str, str] = {}

    def callbacks(self) -> dict[str, Any]:
        return {"on_part_begin": self.begin, "on_part_data": self.data, "on_part_end": self.end,
                "on_header_field": self.header_field, "on_header_value": self.header_value,
                "on_header_end": self.header_end, "on_headers_finished": self.headers_done, "on_end": self.done}

    def begin(self) -> None:
        self.current = _Part(offset=self.spool.tell())
        self._headers = {}

    def header_field(self, data: bytes, start: int, end: int) -> None:
        self._field += data[start:end]

    def header_value(self, data: bytes, start: int, end: int) -> None:
        self._value += data[start:end]

    def header_end(self) -> None:
        self._headers[self._field.decode("latin-1").strip().lower()] = self._value.decode("latin-1").strip()
        self._field.clear()
        self._value.clear()

    def headers_done(self) -> None:
        if self.current is not None:
            self.current.content_type = self._headers.get("content-type", "")

    def data(self, data: bytes, start: int, end: int) -> None:
        if self.current is not None:
            self.spool.write(data[start:end])
            self.current.length += end - start

    def end(self) -> None:
        if self.current is not None:
            self.parts.append(self.current)
        self.current = None

    def done(self) -> None:
        self.finished = True


def _boundary(request: Request) -> bytes:
    header = request.headers.get("content-type", "")
    mime, params = parse_options_header(header)
    if mime.lower() != b"multipart/related":
        raise UnsupportedMediaType(f'STOW-RS 需要 multipart/related; type="application/dicom"，收到 {header[:80]!r} / '
                                   f'STOW-RS needs multipart/related; type="application/dicom", got {header[:80]!r}')
    part_type = params.get(b"type", b"application/dicom").decode("latin-1").lower()
    if part_type != "application/dicom":
        raise UnsupportedMediaType(f"只接收 application/dicom 部件，收到 {part_type!r} / only application/dicom "
                                   f"parts are accepted (not {part_type!r})")
    boundary = params.get(b"boundary", b"")
    if not boundary or len(boundary) > 200:
        raise BadRequest("multipart 请求缺少 boundary 参数 / the multipart Content-Type has no boundary")
    return boundary


async def _read_parts(request: Request, spool: Any) -> list[_Part]:
    collector = _Collector(spool)
    parser = MultipartParser(_boundary(request), collector.callbacks())
    try:
        async for chunk in request.stream():
            if chunk:
                parser.write(chunk)
        parser.finalize()
    except MultipartParseError as exc:
        raise BadRequest(f"multipart 请求体格式错误 / malformed multipart body: {str(exc)[:150]}") from None
    if not collector.finished:
        raise BadRequest("multipart 请求体不完整（缺少结束分隔符）/ the multipart body is truncated (no closing "
                         "boundary)")
    if not collector.parts:
        raise BadRequest("请求体中没有 DICOM 部件 / the multipart body has no parts")
    return collector.parts


def _peek(data: bytes) -> tuple[str, str, str]:
    """SOP class, SOP instance and study UIDs when readable (for the response of a failed instance)."""
    try:
        ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True,
                             specific_tags=["SOPClassUID", "SOPInstanceUID", "StudyInstanceUID"])
        return (str(ds.get("SOPClassUID", "") or "")[:64], str(ds.get("SOPInstanceUID", "") or "")[:64],
                str(ds.get("StudyInstanceUID", "") or "")[:64])
    except Exception:  # noqa: BLE001 - not DICOM at all: the failure says so
        return "", "", ""


def _failure_of(exc: DomainError) -> int:
    if isinstance(exc, Conflict):
        return DUPLICATE_CONFLICT
    if exc.code == "unsupported_sop_class":
        return SOP_CLASS_NOT_SUPPORTED
    if isinstance(exc, InvalidInput):
        return CANNOT_UNDERSTAND
    return PROCESSING_FAILURE


def _english(message: str) -> str:
    return message.rsplit(" / ", 1)[-1]


def _store_parts(db: Session, *, user: User, parts: list[_Part], spool: Any, target_study: str | None,
                 address: str) -> list[_Outcome]:
    """Ingest each part in its own savepoint, then commit, so the response reports what is durable."""
    from healthrelay.imaging import service

    take_sqlite_write_lock(db)
    outcomes: list[_Outcome] = []
    for part in parts:
        spool.seek(part.offset)
        data = spool.read(part.length)
        sop_class, sop_uid, study_uid = _peek(data)
        outcome = _Outcome(sop_class, sop_uid, study_uid)
        part_type = part.content_type.split(";")[0].strip().lower()
        if part_type not in ("", "application/dicom"):
            outcome.failure, outcome.reason = CANNOT_UNDERSTAND, f"part is {part_type}, not application/dicom"
        elif target_study is not None and study_uid and study_uid != target_study:
            outcome.failure = STUDY_UID_MISMATCH
            outcome.reason = f"instance belongs to study {study_uid}, not {target_study}"
        else:
            try:
                if sop_class in service.ECG_WAVEFORM_SOP_CLASSES:  # read by the ECG centre, not the image index
                    with db.begin_nested():
                        service.ingest_ecg(db, data=data, received_via="stow", organisation_id=user.organisation_id,
                                           by_user=user)
                else:
                    with db.begin_nested():
                        stored = service.ingest(db, data=data, received_via="stow",
                                                organisation_id=user.organisation_id, by_user=user)
                    outcome.sop_class_uid = stored.instance.sop_class_uid
                    outcome.sop_instance_uid = stored.instance.sop_instance_uid
                    outcome.study_uid = stored.study.study_instance_uid
            except DomainError as exc:
                outcome.failure, outcome.reason = _failure_of(exc), _english(exc.message)
            except OSError as exc:
                log.exception("STOW-RS: storing %s failed", sop_uid)
                outcome.failure, outcome.reason = OUT_OF_RESOURCES, f"storage error ({exc.strerror or exc})"
            except Exception as exc:  # noqa: BLE001 - one bad instance must not lose the others
                log.exception("STOW-RS: ingesting %s failed", sop_uid)
                outcome.failure, outcome.reason = PROCESSING_FAILURE, f"processing failure ({type(exc).__name__})"
        if outcome.failure is not None:
            service.record_refusal(db, reason=outcome.reason, received_via="stow", sop_instance_uid=sop_uid,
                                   by_user=user, client_address=address)
        outcomes.append(outcome)
    db.commit()
    return outcomes


def _stow_response(request: Request, outcomes: list[_Outcome]) -> Response:
    stored = [o for o in outcomes if o.failure is None]
    failed = [o for o in outcomes if o.failure is not None]
    body: dict[str, Any] = {}
    studies = {o.study_uid for o in stored if o.study_uid}
    if len(studies) == 1:
        body["00081190"] = _el("UR", _study_url(request, studies.pop()))
    if failed:
        body["00081198"] = {"vr": "SQ", "Value": [
            {"00081150": _el("UI", o.sop_class_uid), "00081155": _el("UI", o.sop_instance_uid),
             "00081197": _el("US", o.failure)} for o in failed]}
    body["00081199"] = {"vr": "SQ", "Value": [
        {"00081150": _el("UI", o.sop_class_uid), "00081155": _el("UI", o.sop_instance_uid),
         "00081190": _el("UR", f"{_study_url(request, o.study_uid)}/instances/{o.sop_instance_uid}")}
        for o in stored]}
    if not stored:
        body.pop("00081199")
    status = 200 if not failed else 202 if stored else 409
    headers = {}
    if failed:
        headers["Warning"] = ", ".join(f'299 healthrelay: "{_header_text(o.sop_instance_uid or "part")}: '
                                       f'{_header_text(o.reason)}"' for o in failed[:10])
    return _json(body, status_code=status, headers=headers)


async def _stow(request: Request, db: Session, user: User, target_study: str | None) -> Response:
    if user.role not in STOW_ROLES or user.organisation_id is None:
        raise AccessDenied("只有医疗机构的工作人员可以上传影像 / only staff of a member organisation may upload images")
    if target_study is not None:
        _check_uid(target_study)
    with tempfile.SpooledTemporaryFile(max_size=_SPOOL_IN_MEMORY) as spool:
        parts = await _read_parts(request, spool)
        outcomes = await run_in_threadpool(_store_parts, db, user=user, parts=parts, spool=spool,
                                           target_study=target_study, address=client_address(request))
    return _stow_response(request, outcomes)


@router.post("/studies", dependencies=[Depends(_csrf_unless_bearer)])
async def store_instances(request: Request, db: DbSession, user: CurrentUser) -> Response:
    """STOW-RS: store every application/dicom part; per-instance results in the DICOM JSON response."""
    return await _stow(request, db, user, None)


@router.post("/studies/{study_uid}", dependencies=[Depends(_csrf_unless_bearer)])
async def store_study_instances(study_uid: str, request: Request, db: DbSession, user: CurrentUser) -> Response:
    """STOW-RS into one study: instances of another study fail (0xC409) and the rest are stored."""
    return await _stow(request, db, user, study_uid)

