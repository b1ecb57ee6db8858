"""The study index as people browse it: the studies list, one study for the viewer (series, instances in
viewing order, the patient's priors from every member) and linking a flagged study to a resident by hand.

Reads only the index tables (never a DICOM file); images reach the browser through /dicomweb. Who may
read one study is decided by imaging.access.require_study_access (audited), and the list is scoped by
imaging.access.readable_study_ids, so the list never shows a study the viewer would refuse.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any
from urllib.parse import quote

from sqlalchemy import Select, and_, func, or_, select
from sqlalchemy.orm import Session

from healthrelay.access.service import actor_of, decide, require_patient_access, resolve_patient
from healthrelay.accounts.models import Role, User
from healthrelay.audit import service as audit
from healthrelay.core.db import utcnow
from healthrelay.core.errors import AccessDenied, Conflict, InvalidInput, NotFound, field_error
from healthrelay.directory.models import Organisation
from healthrelay.imaging.models import ImagingInstance, ImagingSeries, ImagingStudy, PatientMatch
from healthrelay.imaging.schemas import (
    ConsultBrief,
    InstanceOut,
    OrganisationBrief,
    PatientBrief,
    PriorOut,
    SeriesOut,
    StudyDetail,
    StudyPage,
    StudySummary,
    Window,
)
from healthrelay.patients.identity import mask_resident_id
from healthrelay.patients.models import IdentifierType, Patient, PatientIdentifier
from healthrelay.referrals.display import age_on, mask_name
from healthrelay.teleconsult.models import ConsultRequest

DEFAULT_PAGE = 50
MAX_PAGE = 200
MAX_PRIORS = 50
NO_LIST_ROLES = frozenset({Role.HEALTH_BUREAU, Role.PATIENT})
LINKING_ROLES = frozenset({Role.CLINICIAN, Role.REMOTE_READER, Role.ORG_ADMIN})


# --- URLs the viewer uses (the page and viewer.js build the same ones, so cached frames are reused) ------

def viewer_url(study_uid: str) -> str:
    return f"/imaging/studies/{quote(study_uid)}/viewer"


def frame_url(study_uid: str, series_uid: str, sop_uid: str, frame: int = 1,
              window: tuple[float, float] | None = None) -> str:
    """H2's rendered frame; no window means the instance's own VOI (the viewer's "default" preset)."""
    url = (f"/dicomweb/studies/{quote(study_uid)}/series/{quote(series_uid)}/instances/{quote(sop_uid)}"
           f"/frames/{frame}/rendered")
    if window is not None:
        url += f"?window={_num(window[0])},{_num(window[1])}"
    return url


def _num(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


# --- the instance summary H1 keeps (imaging/service.py: summarise) ---------------------------------------

def _number(value: Any) -> float | None:
    try:
        number = float(value) if value is not None else None
    except (TypeError, ValueError):
        return None
    return number if number is not None and math.isfinite(number) else None


def _spacing(value: Any) -> list[float] | None:
    if not isinstance(value, list | tuple) or len(value) < 2:
        return None
    pair = [_number(value[0]), _number(value[1])]
    return [float(v) for v in pair if v is not None] if all(v is not None and v > 0 for v in pair) else None


def is_image(inst: ImagingInstance) -> bool:
    """Instances with pixel data (not SR, PDF or waveforms), which the viewer can show."""
    return bool((inst.summary or {}).get("has_pixels", True)) and bool(inst.rows) and bool(inst.columns)


def instance_out(inst: ImagingInstance) -> InstanceOut:
    s = inst.summary or {}
    center, width = _number(s.get("window_center")), _number(s.get("window_width"))
    return InstanceOut(
        sop_instance_uid=inst.sop_instance_uid, instance_number=inst.instance_number,
        slice_location=_number(s.get("slice_location")), frames=max(1, inst.number_of_frames or 1),
        rows=inst.rows, columns=inst.columns, pixel_spacing=_spacing(s.get("pixel_spacing")),
        window=Window(center=center, width=width) if center is not None and width and width > 0 else None,
        photometric=str(s.get("photometric_interpretation") or ""))


def viewing_order(instances: Iterable[InstanceOut]) -> list[InstanceOut]:
    """Instance number first; slice location where the number is missing (or ties); UID last, for stability."""
    return sorted(instances, key=lambda i: (
        i.instance_number is None, i.instance_number or 0,
        i.slice_location is None, i.slice_location or 0.0, i.sop_instance_uid))


# --- loading and access ------------------------------------------------------------------------------------

def get_study(db: Session, study_uid: str) -> ImagingStudy:
    study = db.execute(select(ImagingStudy).where(ImagingStudy.study_instance_uid == study_uid)).scalar()
    if study is None:
        raise NotFound("没有这个影像检查 / no such imaging study")
    return study


def readable_study(db: Session, *, user: User, study_uid: str, client_address: str = "") -> ImagingStudy:
    """Load the study and check (and audit) that this user may read it; 404/403 otherwise."""
    from healthrelay.imaging.access import require_study_access

    if len(study_uid) > 64:
        raise NotFound("没有这个影像检查 / no such imaging study")
    study = get_study(db, study_uid)
    require_study_access(db, user=user, study=study, client_address=client_address)
    return study


def _centre_organisation(db: Session, study: ImagingStudy) -> int | None:
    if study.consult_request_id is None:
        return None
    return db.execute(select(ConsultRequest.invited_organisation_id)
                      .where(ConsultRequest.id == study.consult_request_id)).scalar()


def may_link(user: User, study: ImagingStudy, centre_organisation_id: int | None) -> bool:
    """Staff of the examining organisation or of the reading centre; only while the study is flagged."""
    return (study.patient_match == PatientMatch.UNMATCHED and user.role in LINKING_ROLES
            and user.organisation_id is not None
            and user.organisation_id in {study.organisation_id, centre_organisation_id})


# --- display helpers -------------------------------------------------------------------------------------

@dataclass
class _Lookups:
    organisations: dict[int, str]
    patients: dict[int, Patient]
    resident_ids: dict[int, str]
    requests: dict[int, ConsultRequest]

    @classmethod
    def load(cls, db: Session, studies: Sequence[ImagingStudy], extra_org_ids: Iterable[int | None] = ()) -> _Lookups:
        org_ids = {s.organisation_id for s in studies} | set(extra_org_ids)
        org_ids.discard(None)
        patient_ids = {s.patient_id for s in studies if s.patient_id is not None}
        request_ids = {s.consult_request_id for s in studies if s.consult_request_id is not None}
        orgs = dict(db.execute(select(Organisation.id, Organisation.name)
                               .where(Organisation.id.in_(org_ids))).all()) if org_ids else {}
        patients = {p.id: p for p in db.execute(select(Patient).where(Patient.id.in_(patient_ids))).scalars()} \
            if patient_ids else {}
        rids: dict[int, str] = {}
        if patient_ids:
            for pid, value in db.execute(select(PatientIdentifier.patient_id, PatientIdentifier.value).where(
                    PatientIdentifier.patient_id.in_(patient_ids),
                    PatientIdentifier.type == IdentifierType.RESIDENT_ID).order_by(PatientIdentifier.id)):
                rids.setdefault(pid, value)
        requests = {r.id: r for r in db.execute(select(ConsultRequest)
                                                .where(ConsultRequest.id.in_(request_ids))).scalars()} \
            if request_ids else {}
        return cls(orgs, patients, rids, requests)

    def org(self, org_id: int | None) -> OrganisationBrief | None:
        if org_id is None or org_id not in self.organisations:
            return None
        return OrganisationBrief(id=org_id, name=self.organisations[org_id])

    def patient(self, patient_id: int | None) -> PatientBrief | None:
        p = self.patients.get(patient_id or 0)
        if p is None:
            return None
        return PatientBrief(id=p.id, masked_name=mask_name(p.name), sex=str(p.sex), age=age_on(p.birth_date),
                            masked_id=mask_resident_id(self.resident_ids.get(p.id, "")))

    def request(self, request_id: int | None) -> ConsultBrief | None:
        r = self.requests.get(request_id or 0)
        if r is None:
            return None
        return ConsultBrief(id=r.id, number=r.number, state=str(r.state), priority=str(r.priority))


def _dicom_name(raw: str) -> str:
    """PN as sent ("WANG^XIAOMING=王小明"): the ideographic group when there is one, carets as spaces."""
    groups = [g for g in (raw or "").split("=") if g.strip()]
    name = groups[1] if len(groups) > 1 else (groups[0] if groups else "")
    return " ".join(part for part in name.split("^") if part).strip()


def _summary(study: ImagingStudy, look: _Lookups, user: User) -> StudySummary:
    matched = study.patient_match != PatientMatch.UNMATCHED
    request = look.requests.get(study.consult_request_id or 0)
    return StudySummary(
        id=study.id, study_instance_uid=study.study_instance_uid, study_date=study.study_date,
        study_time=study.study_time, description=study.description, modality=study.modalities_in_study,
        accession_number=study.accession_number, patient_match=study.patient_match,
        patient=look.patient(study.patient_id) if matched else None,
        dicom_patient_name_masked="" if matched else mask_name(_dicom_name(study.dicom_patient_name)),
        organisation=look.org(study.organisation_id), consult_request=look.request(study.consult_request_id),
        number_of_series=study.number_of_series, number_of_instances=study.number_of_instances,
        received_at=study.received_at, viewer_url=viewer_url(study.study_instance_uid),
        can_link_patient=may_link(user, study, request.invited_organisation_id if request else None))


# --- one study -----------------------------------------------------------------------------------------

def series_of(db: Session, study: ImagingStudy) -> list[SeriesOut]:
    """Series by number (unnumbered last), each with its image instances in viewing order."""
    series = list(db.execute(select(ImagingSeries).where(ImagingSeries.study_id == study.id).order_by(
        ImagingSeries.series_number.is_(None), ImagingSeries.series_number, ImagingSeries.id)).scalars())
    if not series:
        return []
    by_series: dict[int, list[InstanceOut]] = {s.id: [] for s in series}
    for inst in db.execute(select(ImagingInstance).where(ImagingInstance.study_id == study.id)).scalars():
        if inst.series_id in by_series and is_image(inst):
            by_series[inst.series_id].append(instance_out(inst))
    out = []
    for s in series:
        instances = viewing_order(by_series[s.id])
        thumb = ""
        if instances:
            middle = instances[len(instances) // 2]
            thumb = frame_url(study.study_instance_uid, s.series_instance_uid, middle.sop_instance_uid,
                              (middle.frames + 1) // 2)
        out.append(SeriesOut(
            series_instance_uid=s.series_instance_uid, series_number=s.series_number, description=s.description,
            modality=s.modality, body_part=s.body_part, instance_count=s.number_of_instances,
            frame_count=sum(i.frames for i in instances), thumbnail_url=thumb, instances=instances))
    return out


@dataclass
class FirstFrame:
    """What the viewer page puts in its initial HTML so the first image loads with the page."""

    series_uid: str
    instance: InstanceOut
    url: str
    total: int  # frames in that series


def first_frame(series: Sequence[SeriesOut], study_uid: str) -> FirstFrame | None:
    """Frame 1 of the first series that has images (viewer.js opens the same one)."""
    for s in series:
        if s.instances:
            first = s.instances[0]
            return FirstFrame(series_uid=s.series_instance_uid, instance=first, total=s.frame_count,
                              url=frame_url(study_uid, s.series_instance_uid, first.sop_instance_uid, 1))
    return None


def priors_of(db: Session, study: ImagingStudy) -> list[PriorOut]:
    """The patient's other studies from every member, newest first; none while the study is unmatched.

    Call only for a user who may see the patient (see `detail_of`): holding the study is not enough.
    """
    if study.patient_id is None or study.patient_match == PatientMatch.UNMATCHED:
        return []
    rows = list(db.execute(
        select(ImagingStudy).where(ImagingStudy.patient_id == study.patient_id, ImagingStudy.id != study.id)
        .order_by(ImagingStudy.study_date.is_(None), ImagingStudy.study_date.desc(),
                  ImagingStudy.received_at.desc()).limit(MAX_PRIORS)).scalars())
    orgs = dict(db.execute(select(Organisation.id, Organisation.name).where(
        Organisation.id.in_({r.organisation_id for r in rows if r.organisation_id}))).all()) if rows else {}
    return [PriorOut(study_instance_uid=r.study_instance_uid, study_date=r.study_date, description=r.description,
                     modality=r.modalities_in_study,
                     organisation=OrganisationBrief(id=r.organisation_id, name=orgs[r.organisation_id])
                     if r.organisation_id in orgs else None,
                     number_of_series=r.number_of_series, number_of_instances=r.number_of_instances,
                     viewer_url=viewer_url(r.study_instance_uid)) for r in rows]


def study_detail(db: Session, *, user: User, study_uid: str, client_address: str = "") -> StudyDetail:
    study = readable_study(db, user=user, study_uid=study_uid, client_address=client_address)
    return detail_of(db, user=user, study=study)


def detail_header(db: Session, *, user: User, study: ImagingStudy) -> StudySummary:
    """The study's header (no series, no priors) for a page whose access was already checked."""
    return _summary(study, _Lookups.load(db, [study]), user)


def detail_of(db: Session, *, user: User, study: ImagingStudy) -> StudyDetail:
    """The detail of a study whose access was already checked."""
    look = _Lookups.load(db, [study])
    unmatched = study.patient_match == PatientMatch.UNMATCHED
    # The priors are the patient's history: shown to those with a care relationship with the patient
    # (the study's read, audited with the patient, covers it), not to everyone who holds this study.
    sees_patient = not unmatched and study.patient_id is not None and \
        decide(db, user=user, patient_id=resolve_patient(db, study.patient_id).id) is not None
    # The device's patient module is what staff need to find the resident of a flagged study; once the
    # study is matched, the resident's (masked) record speaks for the patient instead.
    return StudyDetail(
        **_summary(study, look, user).model_dump(), match_note=study.match_note,
        referring_physician=study.referring_physician,
        dicom_patient_name=_dicom_name(study.dicom_patient_name) if unmatched else "",
        dicom_patient_id=study.dicom_patient_id if unmatched else "",
        dicom_birth_date=study.dicom_birth_date if unmatched else "",
        dicom_sex=study.dicom_sex if unmatched else "",
        series=series_of(db, study), priors=priors_of(db, study) if sees_patient else [],
        priors_withheld=not unmatched and not sees_patient)


# --- the list ---------------------------------------------------------------------------------------

@dataclass
class StudyFilters:
    unmatched: bool = False
    modality: str = ""
    organisation_id: int | None = None
    date_from: date | None = None
    date_to: date | None = None
    patient_id: int | None = None


def check_modality(value: str) -> str:
    value = (value or "").strip().upper()
    if value and (len(value) > 16 or not value.replace("_", "").isalnum()):
        raise InvalidInput("检查类型应为 DICOM 代码，如 CT、DX / modality must be a DICOM code such as CT or DX",
                           field_errors=[field_error("modality", "not a modality code")])
    return value


def _parse_cursor(cursor: str) -> tuple[datetime, int]:
    at, _, ident = (cursor or "").rpartition("~")
    try:
        when = datetime.fromisoformat(at)
        if when.tzinfo is None:
            raise ValueError
        return when, int(ident)
    except ValueError:
        raise InvalidInput("翻页参数无效 / invalid cursor", field_errors=[field_error("cursor", "invalid")]) from None


def _cursor_of(study: ImagingStudy) -> str:
    return f"{study.received_at.isoformat()}~{study.id}"


def _filtered(q: Select[Any], filters: StudyFilters, before: tuple[datetime, int] | None) -> Select[Any]:
    if filters.unmatched:
        q = q.where(ImagingStudy.patient_match == PatientMatch.UNMATCHED)
    if filters.modality:
        m = filters.modality
        col = ImagingStudy.modalities_in_study
        q = q.where(or_(col == m, col.like(f"{m}\\%", escape="!"), col.like(f"%\\{m}", escape="!"),
                        col.like(f"%\\{m}\\%", escape="!")))
    if filters.organisation_id is not None:
        q = q.where(ImagingStudy.organisation_id == filters.organisation_id)
    if filters.date_from is not None:
        q = q.where(ImagingStudy.study_date >= filters.date_from)
    if filters.date_to is not None:
        q = q.where(ImagingStudy.study_date <= filters.date_to)
    if before is not None:
        q = q.where(or_(ImagingStudy.received_at < before[0],
                        and_(ImagingStudy.received_at == before[0], ImagingStudy.id < before[1])))
    return q.order_by(ImagingStudy.received_at.desc(), ImagingStudy.id.desc())


def list_studies(db: Session, *, user: User, filters: StudyFilters, cursor: str = "", limit: int = DEFAULT_PAGE,
                 client_address: str = "") -> StudyPage:
    """Recent studies the user may read, newest received first, one page at a time (keyset paging).

    The scope is imaging.access.readable_study_ids (the user's organisation's studies, those it
    asked for or was asked to read, those of its registered and panel patients; everything for
    alliance administrators); `patient_id` lists one resident's studies from every member after a
    need-to-know check. The list read is audited with the residents it showed.
    """
    from healthrelay.imaging.access import readable_study_ids

    if user.role in NO_LIST_ROLES:
        raise AccessDenied("该账号不能浏览影像检查 / this account cannot browse imaging studies")
    limit = max(1, min(limit, MAX_PAGE))
    before = _parse_cursor(cursor) if cursor else None
    q = select(ImagingStudy)
    if filters.patient_id is not None:
        patient = resolve_patient(db, filters.patient_id)
        require_patient_access(db, user=user, patient_id=patient.id, action="imaging.list",
                               client_address=client_address)
        q = q.where(ImagingStudy.patient_id == patient.id)
    else:
        scope = readable_study_ids(user)
        if scope is not None:
            q = q.where(ImagingStudy.id.in_(scope))
    rows = list(db.execute(_filtered(q, filters, before).limit(limit + 1)).scalars())
    page, more = rows[:limit], len(rows) > limit
    look = _Lookups.load(db, page)
    items = [_summary(s, look, user) for s in page]
    shown = sorted({s.patient_id for s in page if s.patient_id is not None})
    audit.record(db, actor=actor_of(user, client_address), action="imaging.list",
                 detail={"results": len(items), "patient_ids": shown[:100],
                         "filters": {"unmatched": filters.unmatched, "modality": filters.modality,
                                     "organisation_id": filters.organisation_id,
                                     "patient_id": filters.patient_id}})
    return StudyPage(items=items, next_cursor=_cursor_of(page[-1]) if more and page else None)


def organisations_seen(db: Session, *, user: User) -> list[OrganisationBrief]:
    """Organisations for the list's filter: the user's own, and those whose studies its centres read."""
    if user.role == Role.ALLIANCE_ADMIN:
        q = select(Organisation.id, Organisation.name).where(
            Organisation.id.in_(select(ImagingStudy.organisation_id).distinct()))
    elif user.organisation_id is not None:
        senders = select(ConsultRequest.inviting_organisation_id).where(
            ConsultRequest.invited_organisation_id == user.organisation_id).distinct()
        q = select(Organisation.id, Organisation.name).where(
            or_(Organisation.id == user.organisation_id, Organisation.id.in_(senders)))
    else:
        return []
    return [OrganisationBrief(id=i, name=n) for i, n in db.execute(q.order_by(Organisation.name).limit(500))]


# --- linking a flagged study by hand ---------------------------------------------------------------------

def link_patient(db: Session, *, by: User, study_uid: str, patient_id: int, note: str = "",
                 client_address: str = "") -> ImagingStudy:
    """Attach a flagged study to a resident (patient_match "manual"), and its consult request too.

    Only staff of the examining organisation or of the reading centre, only while the study is
    flagged, and only for a resident the user may see (need-to-know, audited). The request gets
    the patient unless it already names someone else, which is refused rather than overwritten.
    """
    study = readable_study(db, user=by, study_uid=study_uid, client_address=client_address)
    centre_org = _centre_organisation(db, study)
    if by.role not in LINKING_ROLES or by.organisation_id is None or \
            by.organisation_id not in {study.organisation_id, centre_org}:
        raise AccessDenied("只有检查机构或阅片中心的工作人员可以关联患者 / only staff of the examining "
                           "organisation or of the reading centre may link the patient")
    if study.patient_match != PatientMatch.UNMATCHED:
        raise Conflict("该检查已关联患者 / this study is already linked to a patient", code="already_linked")
    patient = resolve_patient(db, patient_id)
    require_patient_access(db, user=by, patient_id=patient.id, action="patient.read", client_address=client_address)
    request = db.get(ConsultRequest, study.consult_request_id) if study.consult_request_id else None
    if request is not None and request.patient_id is not None and request.patient_id != patient.id:
        raise Conflict(f"会诊申请 {request.number} 已登记为另一位患者，请先核对 / consult request "
                       f"{request.number} already names another patient; check before linking",
                       code="request_patient_differs")
    note = (note or "").strip()[:200]
    # Conditional update: two people linking the same study at once cannot both win.
    changed = db.execute(
        ImagingStudy.__table__.update()
        .where(ImagingStudy.id == study.id, ImagingStudy.patient_match == PatientMatch.UNMATCHED)
        .values(patient_id=patient.id, patient_match=PatientMatch.MANUAL,
                match_note=(f"人工关联 / linked by hand: {by.display_name}" + (f" · {note}" if note else ""))[:300],
                updated_at=utcnow())).rowcount
    if changed != 1:
        raise Conflict("该检查刚刚被他人关联 / someone else linked this study just now", code="already_linked")
    db.refresh(study)
    if request is not None and request.patient_id is None:
        from healthrelay.teleconsult import service as teleconsult

        teleconsult.record_transition(db, request, action="link_patient", to_state=None, by=by, reason=note,
                                      values={"patient_id": patient.id},
                                      where=[ConsultRequest.patient_id.is_(None)], client_address=client_address,
                                      detail={"study_instance_uid": study.study_instance_uid,
                                              "patient_id": patient.id})
    audit.record(db, actor=actor_of(by, client_address), action="imaging.link_patient", patient_id=patient.id,
                 resource=f"imaging_study:{study.study_instance_uid}",
                 detail={"consult_request_id": study.consult_request_id, "note": note,
                         "dicom_patient_id": study.dicom_patient_id})
    return study


def count_unmatched(db: Session, *, user: User) -> int:
    """How many flagged studies wait at the user's organisation (bounded, for the page's badge)."""
    if user.organisation_id is None:
        return 0
    inner = select(ImagingStudy.id).where(ImagingStudy.organisation_id == user.organisation_id,
                                          ImagingStudy.patient_match == PatientMatch.UNMATCHED).limit(100)
    return int(db.execute(select(func.count()).select_from(inner.subquery())).scalar() or 0)
