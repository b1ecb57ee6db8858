"""Tele-ECG rules: taking in a tracing, putting it on the ECG centre's worklist, reading it, and the coded report.

`ingest` is the one door for every ECG, whether a clinic uploads a file or a device sends DICOM (receiver,
STOW-RS): read the files, check their quality, measure when the tracing allows it, find the patient, and
create (or attach to) the ECG request of the member's ECG centre, all in the caller's transaction, so a
recording never exists without its request nor a request without its recording. A tracing with missing
leads, a wrong sampling rate or a flat lead is kept and read, but flagged and not measured.

The reading itself is teleconsult's: claim, report, signature, critical loop. This module only adds what is
ECG-specific: the coded statements of the report (`clean_report_structure`, called by teleconsult.reports).
"""

from __future__ import annotations

import hashlib
import io
import logging
import zipfile
from dataclasses import asdict, is_dataclass
from datetime import UTC, date, datetime, timedelta
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

import numpy as np
from sqlalchemy import exists, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, aliased

from healthrelay.access import service as access
from healthrelay.accounts.models import Role, User
from healthrelay.audit import service as audit
from healthrelay.core.db import utcnow
from healthrelay.core.errors import AccessDenied, Conflict, InvalidInput, NotFound, field_error
from healthrelay.directory.models import AllianceMembership, Organisation
from healthrelay.ecg import codes as vocab
from healthrelay.ecg.models import MATCH_GIVEN, MATCH_MANUAL, MATCH_MATCHED, MATCH_UNMATCHED, EcgRecording
from healthrelay.teleconsult import announce
from healthrelay.teleconsult import service as consult
from healthrelay.teleconsult.models import (
    ConsultKind,
    ConsultRequest,
    ConsultTransition,
    Priority,
    ReadingCentre,
    Report,
)

if TYPE_CHECKING:
    from healthrelay.ecg.formats import Tracing

SHANGHAI = ZoneInfo("Asia/Shanghai")
log = logging.getLogger("healthrelay.ecg")

STANDARD_LEADS = ("I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6")
VIAS = ("web", "api", "dicom", "stow")
UPLOAD_ROLES = (Role.CLINICIAN, Role.REMOTE_READER, Role.ORG_ADMIN)
MAX_UPLOAD_BYTES = 30 * 1024 * 1024
QUESTION_MAX = 2000
# Hand-typed measurements the reader confirms: name -> (label, lowest, highest) plausible values.
MEASUREMENTS: dict[str, tuple[str, float, float]] = {
    "heart_rate_bpm": ("心率 / heart rate (bpm)", 10, 350),
    "rr_ms": ("RR 间期 / RR (ms)", 150, 6000),
    "pr_ms": ("PR 间期 / PR (ms)", 40, 600),
    "qrs_ms": ("QRS 时限 / QRS (ms)", 30, 300),
    "qt_ms": ("QT 间期 / QT (ms)", 150, 800),
    "qtc_ms": ("QTc", 150, 800),
    "qrs_axis_deg": ("QRS 电轴 / QRS axis (°)", -180, 360),
}
RHYTHM_NOTE_MAX = 1000


def _actor(user: User | None, client_address: str = "", device: str = "") -> audit.Actor:
    if user is not None:
        return access.actor_of(user, client_address)
    return audit.Actor(username=f"dicom:{device}" if device else "system")


# --- taking a tracing in ----------------------------------------------------------------------------

def _flag_dict(flag: Any) -> dict[str, Any]:
    data = asdict(flag) if is_dataclass(flag) else dict(flag)
    return {"code": str(data.get("code", "")), "message": str(data.get("message", "")),
            "lead": str(data.get("lead") or ""), "blocking": bool(data.get("blocking"))}


def _pack(tr: Tracing) -> tuple[bytes, list[str], float]:
    """int16 microvolts per lead in one compressed .npz; the standard leads first, in their usual order."""
    names = [n for n in STANDARD_LEADS if n in tr.leads] + [n for n in tr.leads if n not in STANDARD_LEADS]
    buffer = io.BytesIO()
    arrays = {f"lead_{i}": np.clip(np.round(np.asarray(tr.leads[n], dtype=float) * 1000.0), -32768, 32767)
              .astype(np.int16) for i, n in enumerate(names)}
    np.savez_compressed(buffer, **arrays)
    length = max((len(a) for a in arrays.values()), default=0)
    return buffer.getvalue(), names, length / float(tr.sample_rate) if tr.sample_rate else 0.0


def unpack(rec: EcgRecording) -> dict[str, np.ndarray]:
    """The stored leads in millivolts (float), by name."""
    with np.load(io.BytesIO(rec.samples)) as data:
        return {name: data[f"lead_{i}"].astype(float) / 1000.0 for i, name in enumerate(rec.lead_names)}


def tracing_of(rec: EcgRecording) -> Tracing:
    """The recording as helper A's Tracing (for rendering, export and measuring again)."""
    from healthrelay.ecg.formats import Demographics, Tracing

    d = rec.demographics or {}
    birth = d.get("birth_date")
    demographics = Demographics(name=d.get("name", ""), resident_id=d.get("resident_id", ""),
                                record_number=d.get("record_number", ""),
                                birth_date=date.fromisoformat(birth) if birth else None, sex=d.get("sex", ""))
    return Tracing(leads=unpack(rec), sample_rate=rec.sample_rate, source_format=rec.source_format,
                   demographics=demographics, acquired_at=rec.acquired_at, device=rec.device, uid=rec.uid)


def _original_zip(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as z:
        for name, data in sorted(files.items()):
            z.writestr(name or "ecg", data)
    return buffer.getvalue()


def _files_hash(files: dict[str, bytes]) -> str:
    h = hashlib.sha256()
    for name, data in sorted(files.items()):
        h.update(name.rsplit(".", 1)[-1].lower().encode() + b"\0" + hashlib.sha256(data).digest())
    return h.hexdigest()


def _demographics_dict(tr: Tracing) -> dict[str, Any]:
    d = tr.demographics
    if d is None:
        return {}
    birth = getattr(d, "birth_date", None)
    return {"name": str(getattr(d, "name", "") or "")[:100],
            "resident_id": str(getattr(d, "resident_id", "") or "")[:64],
            "record_number": str(getattr(d, "record_number", "") or "")[:64],
            "birth_date": birth.isoformat() if isinstance(birth, date) else "",
            "sex": str(getattr(d, "sex", "") or "")[:1].upper()}


def _finite(value: Any) -> Any:
    """JSON-safe: NaN and infinities (a measurement that could not be made) become None."""
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    if isinstance(value, float | np.floating):
        return float(value) if np.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.bool_):
        return bool(value)
    return value


def _aware(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def _validate_upload(db: Session, *, files: dict[str, bytes], organisation_id: int, by: User | None,
                     priority: str, clinical_question: str, via: str) -> Priority:
    if by is not None and (by.organisation_id != organisation_id or by.role not in UPLOAD_ROLES
                           or not by.is_active):
        raise AccessDenied("只有本机构的医务人员可以上传心电图 / only clinical staff of the recording organisation "
                           "upload its ECGs")
    errors: list[dict[str, Any]] = []
    if db.get(Organisation, organisation_id) is None:
        errors.append(field_error("organisation_id", f"没有编号为 {organisation_id} 的机构 / unknown organisation"))
    if via not in VIAS:
        errors.append(field_error("via", "via 须为 web、api、dicom 或 stow / web, api, dicom or stow"))
    try:
        chosen = Priority(priority)
    except ValueError:
        chosen = Priority.URGENT
        errors.append(field_error("priority", "未知的紧急程度 / unknown priority (emergency, urgent, routine)"))
    if len(clinical_question or "") > QUESTION_MAX:
        errors.append(field_error("clinical_question", f"最多 {QUESTION_MAX} 字 / at most {QUESTION_MAX} characters"))
    if not files or not any(files.values()):
        errors.append(field_error("files", "请选择心电图文件 / choose the ECG file"))
    elif sum(len(v) for v in files.values()) > MAX_UPLOAD_BYTES:
        errors.append(field_error("files", "文件过大（上限 30 MB）/ the files exceed 30 MB"))
    if errors:
        raise InvalidInput("心电图上传有误 / the ECG upload has errors: " + "; ".join(e["field"] for e in errors),
                           field_errors=errors)
    return chosen


def _check_first_contact(first_contact_at: datetime | None, *, acquired_at: datetime | None) -> None:
    """The first contact comes before the tracing (it is why there is one) and is not in the future."""
    if first_contact_at is None:
        return
    if first_contact_at.tzinfo is None:
        raise InvalidInput("首次医疗接触时间须带时区 / the first-contact time needs a time zone",
                           field_errors=[field_error("first_contact_at", "naive time")])
    local = "%m-%d %H:%M"
    if first_contact_at > utcnow() + timedelta(minutes=2):
        raise InvalidInput("首次医疗接触时间不能晚于现在 / the first-contact time is in the future",
                           field_errors=[field_error("first_contact_at", "in the future")])
    if acquired_at is not None and first_contact_at > acquired_at:
        shown = first_contact_at.astimezone(SHANGHAI).strftime(local)
        taken = acquired_at.astimezone(SHANGHAI).strftime(local)
        raise InvalidInput(f"首次医疗接触 {shown} 晚于心电图采集 {taken} / first contact {shown} is after the ECG "
                           f"was taken {taken}", field_errors=[field_error("first_contact_at", "after the ECG")])


def ingest(db: Session, *, files: dict[str, bytes], organisation_id: int, by: User | None,
           patient_id: int | None = None, priority: str = "urgent", clinical_question: str = "",
           via: str = "web", client_address: str = "", source: str = "",
           first_contact_at: datetime | None = None) -> EcgRecording:
    """Take in one ECG (its file, or a WFDB .hea + .dat pair) from a member: flagged, measured, matched, on the
    ECG centre's worklist. The same tracing again returns the recording already there and writes nothing.
    `source` names a sending device (its calling AE title) in the audit trail when no user sent it;
    `first_contact_at` is when the clinic first saw the patient, if the uploader gave it."""
    from healthrelay.ecg import formats, quality

    chosen = _validate_upload(db, files=files, organisation_id=organisation_id, by=by, priority=priority,
                              clinical_question=clinical_question, via=via)
    tr = formats.read_ecg(files)
    uid = (str(tr.uid or "").strip() or f"sha256:{_files_hash(files)}")[:128]
    existing = db.execute(select(EcgRecording).where(EcgRecording.uid == uid)).scalar()
    if existing is not None:
        if existing.organisation_id != organisation_id:
            raise Conflict("该心电图已由其他机构上传 / this ECG was already sent by another organisation",
                           code="ecg_conflict", field_errors=[field_error("files", f"uid {uid}")])
        return existing
    _check_first_contact(first_contact_at, acquired_at=_aware(tr.acquired_at))
    demographics = _demographics_dict(tr)
    raw_flags = quality.check(tr)
    flags = [_flag_dict(f) for f in raw_flags]
    measurements: dict[str, Any] = {}
    suggested: list[str] = []
    note = ""
    measurable = bool(quality.is_measurable(raw_flags))
    if measurable:
        from healthrelay.ecg import measure

        try:
            result = measure.measure(tr)
        except measure.EcgNotMeasurable as exc:
            measurable = False
            note = str(getattr(exc, "message", "") or exc)
        except Exception:  # noqa: BLE001 - a failed automatic read must not lose the tracing: it is read by eye
            log.exception("automatic ECG measurement failed for %s", uid)
            measurable = False
            note = "自动测量失败，请人工测量 / the automatic measurement failed; measure by hand"
        else:
            measurements = _finite(result.as_dict())
            codes = measure.suggest_codes(result, raw_flags, sex=demographics.get("sex", ""))
            suggested = [c for c in codes if c in vocab.BY_CODE]
    else:
        note = "；".join(f["message"] for f in flags if f["blocking"]) or "质量问题 / quality problem"
    patient, match, match_note = _find_patient(db, patient_id=patient_id, demographics=demographics,
                                               organisation_id=organisation_id, by=by,
                                               client_address=client_address)
    centre_request = _request_for(db, organisation_id=organisation_id, patient_id=patient, priority=chosen, by=by,
                                  via=via, clinical_question=(clinical_question or "").strip(), uid=uid)
    packed, names, duration = _pack(tr)
    now = utcnow()
    rec = EcgRecording(
        uid=uid, consult_request_id=centre_request.id, organisation_id=organisation_id, patient_id=patient,
        patient_match=match, match_note=match_note[:300], demographics=demographics,
        source_format=str(tr.source_format or "")[:20], received_via=via, device=str(tr.device or "")[:200],
        uploaded_by_user_id=by.id if by else None, acquired_at=_aware(tr.acquired_at), received_at=now,
        first_contact_at=first_contact_at,
        sample_rate=float(tr.sample_rate), duration_s=round(duration, 3), lead_names=names, samples=packed,
        original=_original_zip(files), sha256=_files_hash(files), quality_flags=flags, measurable=measurable,
        measurements=measurements, measure_note=note[:2000], suggested_codes=suggested, number_of_leads=len(names))
    db.add(rec)
    try:
        db.flush()
    except IntegrityError:  # the same tracing arrived through another door a moment ago: the sender retries
        raise Conflict("同一份心电图正在另一连接中保存，请稍后重试 / the same ECG is being stored by another "
                       "connection; try again", code="ecg_in_progress") from None
    audit.record(db, actor=_actor(by, client_address, source or via), action="ecg.ingest", patient_id=patient,
                 resource=f"ecg_recording:{rec.id}",
                 detail={"uid": uid, "received_via": via, "organisation_id": organisation_id,
                         "consult_request_id": centre_request.id, "patient_match": match,
                         "flags": [f["code"] for f in flags], "measured": measurable})
    return rec


def _find_patient(db: Session, *, patient_id: int | None, demographics: dict[str, Any], organisation_id: int,
                  by: User | None, client_address: str) -> tuple[int | None, str, str]:
    """The patient the uploader chose (whom they must care for), else a match on what the device recorded."""
    from healthrelay.imaging.matching import DicomPatient, match_patient, name_for_matching
    from healthrelay.patients.identity import parse_resident_id
    from healthrelay.patients.models import IdentifierType

    if patient_id is not None:
        patient = access.resolve_patient(db, patient_id)
        if by is not None:
            access.require_patient_access(db, user=by, patient_id=patient.id, action="ecg.upload",
                                          client_address=client_address)
        device_id = demographics.get("resident_id", "")
        if device_id:
            try:
                number = parse_resident_id(device_id).number
            except InvalidInput:
                number = ""
            known = {i.value for i in patient.identifiers if i.type == IdentifierType.RESIDENT_ID}
            if number and known and number not in known:
                raise InvalidInput("心电图文件中的身份证号与所选患者不符，请核对 / the resident ID in the ECG "
                                   "file is not the chosen patient's", code="patient_mismatch",
                                   field_errors=[field_error("patient_id", "resident ID in the file differs")])
        return patient.id, MATCH_GIVEN, "上传者选择的患者 / chosen by the uploader"
    birth = demographics.get("birth_date") or ""
    ids = [demographics.get("resident_id", ""), demographics.get("record_number", "")]
    ids = [i for i in ids if i]
    wanted = DicomPatient(patient_id=ids[0] if ids else "", other_ids=tuple(ids[1:]),
                          name=name_for_matching(demographics.get("name", "")),
                          birth_date=date.fromisoformat(birth) if birth else None, sex=demographics.get("sex", ""))
    result = match_patient(db, patient=wanted, organisation_id=organisation_id)
    if result.patient_id is None:
        return None, MATCH_UNMATCHED, result.note or "未能匹配患者 / no patient matched"
    return result.patient_id, MATCH_MATCHED, result.note


def ecg_centre_for(db: Session, organisation_id: int) -> tuple[ReadingCentre, Priority | None] | None:
    """The member's ECG centre: an "ECG" routing rule (most specific first), else an active ECG centre of one
    of its alliances (another member's before its own)."""
    rule = consult.matching_rule(db, modality_type="ECG", organisation_id=organisation_id)
    if rule is not None:
        centre = db.get(ReadingCentre, rule.centre_id)
        if centre is not None and centre.kind == ConsultKind.ECG:
            return centre, Priority(rule.priority)
    mine = aliased(AllianceMembership)
    theirs = aliased(AllianceMembership)
    centres = db.execute(
        select(ReadingCentre).distinct()
        .join(theirs, theirs.organisation_id == ReadingCentre.organisation_id)
        .join(mine, (mine.alliance_id == theirs.alliance_id) & (mine.organisation_id == organisation_id))
        .where(ReadingCentre.is_active.is_(True), ReadingCentre.kind == ConsultKind.ECG)
        .order_by(ReadingCentre.id)).scalars().all()
    centres = sorted(centres, key=lambda c: (c.organisation_id == organisation_id, c.id))
    return (centres[0], None) if centres else None


def _request_for(db: Session, *, organisation_id: int, patient_id: int | None, priority: Priority,
                 by: User | None, via: str, clinical_question: str, uid: str) -> ConsultRequest:
    """An open ECG request of this member for this patient still waiting for its tracing, else a new one."""
    if patient_id is not None:
        has_tracing = exists().where(EcgRecording.consult_request_id == ConsultRequest.id)
        waiting = db.execute(select(ConsultRequest).where(
            ConsultRequest.inviting_organisation_id == organisation_id, ConsultRequest.kind == ConsultKind.ECG,
            ConsultRequest.state.in_([str(s) for s in consult.OPEN_STATES]),
            ConsultRequest.patient_id == patient_id, ConsultRequest.created_at >= utcnow() - consult.LINK_WINDOW,
            ~has_tracing).order_by(ConsultRequest.created_at.desc(), ConsultRequest.id.desc()).limit(1)).scalar()
        if waiting is not None:
            consult.record_transition(db, waiting, action="link_ecg", to_state=None, by=by,
                                      detail={"uid": uid, "received_via": via})
            return waiting
    found = ecg_centre_for(db, organisation_id)
    if found is None:
        raise InvalidInput("本机构所在的医联体没有心电诊断中心，无法发送心电图 / no ECG centre reads for this "
                           "organisation", code="no_ecg_centre",
                           field_errors=[field_error("organisation_id", "no ECG centre")])
    centre, rule_priority = found
    if via in ("dicom", "stow") and rule_priority is not None:
        priority = rule_priority
    created_via = "dimse" if via == "dicom" else via
    request = consult.insert_request(
        db, centre=centre, kind=ConsultKind.ECG, priority=priority, inviting_org_id=organisation_id, by=by,
        created_via=created_via, patient_id=patient_id,
        inviting_department_id=consult.department_of(db, by) if by is not None else None,
        clinical_question=clinical_question or "心电图诊断 / ECG read",
        consent_kind=consult.ROUTED_CONSENT, consent_at=utcnow(),
        consent_recorded_by_user_id=by.id if by else None)
    db.add(ConsultTransition(request_id=request.id, action="create", from_state="", to_state=str(request.state),
                             by_user_id=by.id if by else None, at=request.created_at,
                             reason="心电图上传自动创建 / created by an ECG upload",
                             detail={"created_via": created_via, "uid": uid}))
    audit.record(db, actor=_actor(by, device=via), action="teleconsult.route", patient_id=patient_id,
                 resource=f"consult:{request.id}", detail={"centre_id": centre.id, "ecg_uid": uid})
    consult.start_clock(db, request)
    db.flush()
    announce.created(db, request=request)
    return request


# --- reading ------------------------------------------------------------------------------------------

def _load(db: Session, recording_id: int) -> EcgRecording:
    rec = db.get(EcgRecording, recording_id)
    if rec is None:
        raise NotFound(f"没有编号为 {recording_id} 的心电图 / no ECG recording {recording_id}")
    return rec


def get_recording_for(db: Session, *, recording_id: int, user: User, client_address: str = "") -> EcgRecording:
    """A recording for the parties of its request (need-to-know checked and audited by teleconsult)."""
    rec = _load(db, recording_id)
    consult.get_request_for(db, request_id=rec.consult_request_id, user=user, client_address=client_address)
    audit.record(db, actor=_actor(user, client_address), action="ecg.read", patient_id=rec.patient_id,
                 resource=f"ecg_recording:{rec.id}")
    return rec


def recordings_of(db: Session, request_id: int) -> list[EcgRecording]:
    return list(db.execute(select(EcgRecording).where(EcgRecording.consult_request_id == request_id)
                           .order_by(EcgRecording.received_at, EcgRecording.id)).scalars())


def recordings_by_request(db: Session, request_ids: list[int]) -> dict[int, EcgRecording]:
    """The first recording of each request (worklist rows)."""
    found: dict[int, EcgRecording] = {}
    for start in range(0, len(request_ids), 900):
        for rec in db.execute(select(EcgRecording).where(
                EcgRecording.consult_request_id.in_(request_ids[start:start + 900]))
                .order_by(EcgRecording.id)).scalars():
            found.setdefault(rec.consult_request_id, rec)
    return found


def samples_json(rec: EcgRecording, *, max_rate: float = 1000.0) -> dict[str, Any]:
    """The leads in µV for the viewer, at no more than `max_rate` samples per second."""
    leads = unpack(rec)
    step = max(1, int(np.ceil(rec.sample_rate / max_rate)))
    return {"sample_rate": rec.sample_rate / step, "units": "uV", "lead_names": rec.lead_names,
            "leads": {n: np.round(v[::step] * 1000).astype(int).tolist() for n, v in leads.items()}}


def link_patient(db: Session, *, recording_id: int, patient_id: int, by: User, reason: str = "",
                 client_address: str = "") -> EcgRecording:
    """Link an unmatched tracing to a resident by hand (the sender or the centre); recorded on the request."""
    rec = _load(db, recording_id)
    request = consult.get_request_for(db, request_id=rec.consult_request_id, user=by, client_address=client_address)
    if rec.patient_id is not None and rec.patient_match != MATCH_UNMATCHED:
        raise Conflict("该心电图已关联患者 / this ECG is already linked to a patient", code="already_linked")
    patient = access.resolve_patient(db, patient_id)
    access.require_patient_access(db, user=by, patient_id=patient.id, action="ecg.link_patient",
                                  client_address=client_address)
    rec.patient_id = patient.id
    rec.patient_match = MATCH_MANUAL
    rec.match_note = f"人工关联 / linked by hand: {by.display_name}"[:300]
    values: dict[str, Any] = {}
    if request.patient_id is None:
        values["patient_id"] = patient.id
    elif request.patient_id != patient.id:
        raise Conflict("会诊请求已属于另一位患者 / the request belongs to another patient", code="patient_mismatch")
    consult.record_transition(db, request, action="link_patient", to_state=None, by=by, reason=reason.strip(),
                              values=values, detail={"recording_id": rec.id, "patient_id": patient.id},
                              client_address=client_address)
    return rec


# --- the coded report -----------------------------------------------------------------------------------

def _number(value: Any) -> float | None:
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        raise ValueError("not a number")
    return float(value)


def report_text(structured: dict[str, Any]) -> tuple[str, str]:
    """Findings and impression written out from the codes and confirmed measurements (Chinese / English)."""
    chosen = [vocab.BY_CODE[c] for c in structured.get("codes", []) if c in vocab.BY_CODE]
    m = structured.get("measurements") or {}
    parts = []
    units = {"heart_rate_bpm": ("心率", "HR", "bpm"), "pr_ms": ("PR", "PR", "ms"), "qrs_ms": ("QRS", "QRS", "ms"),
             "qt_ms": ("QT", "QT", "ms"), "qtc_ms": ("QTc", "QTc", "ms"), "qrs_axis_deg": ("电轴", "axis", "°")}
    for key, (zh, _en, unit) in units.items():
        if m.get(key) is not None:
            parts.append(f"{zh} {m[key]:g} {unit}")
    findings_lines = []
    if parts:
        findings_lines.append("，".join(parts) + "。")
    for group in ("rhythm", "conduction", "st_t"):
        labels = [s.label for s in chosen if s.group == group]
        if labels:
            findings_lines.append(f"{vocab.GROUPS[group][0]} / {vocab.GROUPS[group][1]}：" + "；".join(labels))
    note = (structured.get("rhythm_note") or "").strip()
    if note:
        findings_lines.append(note)
    impression = "；".join(s.label for s in chosen if s.group == "conclusion")
    if not findings_lines and impression:  # only a conclusion ticked: the findings say so rather than nothing
        findings_lines.append(f"{vocab.GROUPS['conclusion'][0]} / {vocab.GROUPS['conclusion'][1]}：{impression}")
    return "\n".join(findings_lines), impression


def clean_report_structure(values: dict[str, Any]) -> list[dict[str, Any]]:
    """Check an ECG report's coded content in place (teleconsult.reports._clean calls this for ECG requests).

    Unknown codes are refused by name; a critical code makes the report a critical result, with the code's
    label as the finding unless the reader wrote one; empty findings and impression are written from the codes.
    """
    raw = values.get("structured") or {}
    errors: list[dict[str, Any]] = []
    if not isinstance(raw, dict):
        return [field_error("structured", "结构化内容格式错误 / structured must be an object")]
    unknown_keys = sorted(set(raw) - {"codes", "measurements", "rhythm_note"})
    if unknown_keys:
        errors.append(field_error("structured", f"未知字段 / unknown fields: {', '.join(unknown_keys)}"))
    codes_in = raw.get("codes") or []
    if not isinstance(codes_in, list) or not all(isinstance(c, str) for c in codes_in):
        errors.append(field_error("codes", "诊断代码须为文本列表 / codes must be a list of strings"))
        codes_in = []
    unknown = [c for c in codes_in if c not in vocab.BY_CODE]
    if unknown:
        errors.append(field_error("codes", f"未知的心电图诊断代码 / unknown ECG code: {', '.join(unknown)}"))
    codes = [c for c in dict.fromkeys(codes_in) if c in vocab.BY_CODE]
    measured_in = raw.get("measurements") or {}
    measured: dict[str, float] = {}
    if not isinstance(measured_in, dict):
        errors.append(field_error("measurements", "测量值格式错误 / measurements must be an object"))
        measured_in = {}
    for key, value in measured_in.items():
        if key not in MEASUREMENTS:
            errors.append(field_error(f"measurements.{key}", f"未知测量项 / unknown measurement {key}"))
            continue
        label, low, high = MEASUREMENTS[key]
        try:
            number = _number(value)
        except (TypeError, ValueError):
            errors.append(field_error(f"measurements.{key}", f"{label}须为数字 / must be a number"))
            continue
        if number is None:
            continue
        if not (low <= number <= high) or number != number:
            errors.append(field_error(f"measurements.{key}", f"{label}须在 {low:g}–{high:g} 之间 / must be "
                                                             f"between {low:g} and {high:g}"))
            continue
        measured[key] = round(number, 1)
    note = raw.get("rhythm_note") or ""
    if not isinstance(note, str):
        errors.append(field_error("rhythm_note", "节律说明须为文本 / rhythm note must be text"))
        note = ""
    note = note.replace("\r\n", "\n").strip()
    if len(note) > RHYTHM_NOTE_MAX:
        errors.append(field_error("rhythm_note", f"最多 {RHYTHM_NOTE_MAX} 字 / at most {RHYTHM_NOTE_MAX} characters"))
    structured: dict[str, Any] = {}
    if codes or measured or note:
        structured = {"codes": codes, "measurements": measured, "rhythm_note": note}
    values["structured"] = structured
    critical = [vocab.BY_CODE[c] for c in codes if vocab.BY_CODE[c].critical]
    if critical:
        values["critical"] = True
        if not (values.get("critical_finding") or "").strip():
            values["critical_finding"] = "；".join(s.label for s in critical)
    if structured:
        findings, impression = report_text(structured)
        if not (values.get("findings") or "").strip():
            values["findings"] = findings
        if not (values.get("impression") or "").strip():
            values["impression"] = impression
    return errors


def missing_for_signature(db: Session, *, request: ConsultRequest, report: Report) -> list[dict[str, Any]]:
    """An ECG request with a tracing is signed with at least one conclusion code."""
    has_tracing = db.execute(select(exists().where(EcgRecording.consult_request_id == request.id))).scalar()
    if not has_tracing:
        return []
    codes = (report.structured or {}).get("codes") or []
    if any(vocab.BY_CODE[c].group == "conclusion" for c in codes if c in vocab.BY_CODE):
        return []
    return [field_error("codes", "请至少选择一项心电图结论 / choose at least one conclusion code")]


def stemi_statement(structured: dict[str, Any] | None) -> vocab.Statement | None:
    for code in (structured or {}).get("codes", []) or []:
        if code.startswith("stemi_") and code in vocab.BY_CODE:
            return vocab.BY_CODE[code]
    return None


def first_ecg_at(rec: EcgRecording) -> datetime:
    return rec.acquired_at or rec.received_at


def minutes_between(a: datetime | None, b: datetime | None) -> float | None:
    if a is None or b is None:
        return None
    return (b - a) / timedelta(minutes=1)


from healthrelay.ecg import flows as _flows  # noqa: E402,F401 - registers the STEMI hook on report signatures
