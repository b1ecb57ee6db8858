"""What follows a final remote-diagnosis report: it becomes the patient's examination result.

Registered on teleconsult.reports.after_sign, so it runs in the signing transaction and the result commits with
the signature. Only a final report counts (a senior's signature, or a co-signature): a trainee's preliminary
one is not yet a result. The examination was performed at the inviting member (the study's own organisation
when the receiver knows it); the code comes from the study's modality and body part. One result per request,
so signing twice (or the hook running again) writes nothing new. Should the result be refused (an unknown
modality, say), that part is undone in its savepoint and the refusal audited; the signature stands.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from healthrelay.access import service as access
from healthrelay.accounts.models import User
from healthrelay.audit import service as audit
from healthrelay.core.errors import DomainError
from healthrelay.imaging.models import ImagingSeries, ImagingStudy
from healthrelay.results import service
from healthrelay.results.models import ExamResult
from healthrelay.results.schemas import ExamResultIn
from healthrelay.teleconsult import reports
from healthrelay.teleconsult.models import ConsultKind, ConsultRequest, Report, ReportState

log = logging.getLogger("healthrelay.results")

KIND_MODALITY = {ConsultKind.ECG: "ECG", ConsultKind.PATHOLOGY: "PATH"}
# Modalities in a study that are not the examination itself (structured reports, presentation states ...).
NOT_EXAMS = frozenset({"SR", "PR", "KO", "DOC", "OT", "REG", "SEG"})


def _study_facts(db: Session, request: ConsultRequest) -> tuple[ImagingStudy | None, str, str]:
    """The request's first study, its examining modality and the first body part its series name."""
    study = db.execute(select(ImagingStudy).where(ImagingStudy.consult_request_id == request.id)
                       .order_by(ImagingStudy.received_at, ImagingStudy.id).limit(1)).scalar()
    if study is None:
        return None, "", ""
    modalities = [m for m in (study.modalities_in_study or "").split("\\") if m and m not in NOT_EXAMS]
    series = list(db.execute(select(ImagingSeries.modality, ImagingSeries.body_part)
                             .where(ImagingSeries.study_id == study.id)).all())
    if not modalities:
        modalities = [m for m, _ in series if m and m not in NOT_EXAMS]
    body_part = next((b for _, b in series if b), "")
    return study, (modalities[0] if modalities else ""), body_part


def _performed_at(db: Session, request: ConsultRequest, study: ImagingStudy | None) -> datetime:
    if study is not None:
        return study.received_at
    if request.kind == ConsultKind.ECG:
        from healthrelay.ecg.service import first_ecg_at, recordings_of

        recordings = recordings_of(db, request.id)
        if recordings:
            return first_ecg_at(recordings[0])
    return request.created_at


def result_from_report(db: Session, request: ConsultRequest, report: Report, user: User) -> ExamResult | None:
    """Write the examination result of a final report (None when there is nothing to write)."""
    if report.state != ReportState.SIGNED or request.patient_id is None:
        return None
    if request.kind not in (ConsultKind.IMAGING, ConsultKind.ECG, ConsultKind.PATHOLOGY):
        return None  # a consultation opinion is not an examination result
    existing = db.execute(select(ExamResult).where(ExamResult.consult_request_id == request.id)).scalar()
    if existing is not None:
        return existing
    study, modality, body_part = _study_facts(db, request)
    modality = KIND_MODALITY.get(request.kind, modality)
    code = service.exam_code_for(db, modality=modality, body_part=body_part)
    reported = report.cosigned_at or report.signed_at or datetime.now(UTC)
    performed = min(_performed_at(db, request, study), reported)
    data = ExamResultIn(
        patient_id=request.patient_id,
        organisation_id=(study.organisation_id if study is not None and study.organisation_id is not None
                         else request.inviting_organisation_id),
        ordering_organisation_id=request.inviting_organisation_id, exam_code=code, modality=modality,
        body_part=body_part, performed_at=performed, reported_at=reported, findings=report.findings,
        impression=report.impression, study_instance_uid=study.study_instance_uid if study is not None else "",
        consult_request_id=request.id, order_number=request.number, critical=bool(report.critical))
    row = service.record_exam_result(db, data=data, source="centre", by=user)
    if report.recognition_scope and row.recognition_scope != report.recognition_scope:
        row.recognition_scope = report.recognition_scope  # the reader's stated scope wins over the computed one
        db.flush()
    return row


def report_signed(db: Session, request: ConsultRequest, report: Report, user: User) -> None:
    """The after_final hook: a refusal is audited and leaves the signature alone."""
    try:
        with db.begin_nested():
            result_from_report(db, request, report, user)
    except DomainError as exc:
        log.warning("report of %s: no examination result: %s", request.number, exc.message)
        audit.record(db, actor=access.actor_of(user), action="results.exam.from_report", outcome="failed",
                     patient_id=request.patient_id, resource=f"consult:{request.id}",
                     detail={"reason": exc.message[:300], "field_errors": exc.field_errors[:5]})


def register() -> None:
    if report_signed not in reports.after_final:
        reports.after_final.append(report_signed)


register()
