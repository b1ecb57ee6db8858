"""The printable remote-diagnosis report (远程诊断报告单): A4 PDF with the Chinese fonts embedded.

The paper copy goes into the township's record and to the patient, so it carries both organisations, the
structured report, the signatures with their times, the content hash (anyone can check it against the
system), the mutual-recognition mark and every addendum. The resident ID is masked whoever prints it.
"""

from __future__ import annotations

from datetime import date, datetime
from typing import Any

from sqlalchemy.orm import Session
from weasyprint import HTML

from healthrelay.access.service import resolve_patient
from healthrelay.accounts.models import User
from healthrelay.patients import service as patients
from healthrelay.patients.identity import mask_resident_id
from healthrelay.teleconsult import service as consult_service
from healthrelay.teleconsult.models import ReadingCentre
from healthrelay.teleconsult.reports import ReportView
from healthrelay.web.i18n import translate
from healthrelay.web.templating import LOCAL_TZ, templates

# The report is a Chinese document wherever it is printed.
PDF_LOCALE = "zh"


def _age(born: date | None, on: date) -> int | None:
    if born is None:
        return None
    return on.year - born.year - ((on.month, on.day) < (born.month, born.day))


def pdf_context(db: Session, *, view: ReportView, user: User) -> dict[str, Any]:
    """What the report shows; call after the caller's access has been checked (and audited)."""
    request = view.request
    patient: dict[str, Any] | None = None
    if request.patient_id is not None:
        record = patients.view(db, user=user, patient=resolve_patient(db, request.patient_id))
        now = datetime.now(LOCAL_TZ)
        patient = {"name": record.name, "sex": record.sex, "age": _age(record.birth_date, now.date()),
                   "masked_id": mask_resident_id(record.resident_id) if record.resident_id else ""}
    centre = db.get(ReadingCentre, request.centre_id)
    return {
        "v": view, "r": request, "report": view.report, "patient": patient,
        "centre_name": centre.name if centre else "",
        "inviting_name": consult_service.organisation_name(db, request.inviting_organisation_id),
        "invited_name": consult_service.organisation_name(db, request.invited_organisation_id),
        "requester_name": view.name(request.requested_by_user_id),
        "studies": consult_service.studies_of(db, request),
        "printed_at": datetime.now(LOCAL_TZ), "printed_by": user.display_name,
    }


def render_html(db: Session, *, view: ReportView, user: User) -> str:
    def t(key: str, **params: object) -> str:
        return translate(key, PDF_LOCALE, **params)

    return templates.env.get_template("teleconsult/report_pdf.html").render(
        t=t, **pdf_context(db, view=view, user=user))


def render_pdf(db: Session, *, view: ReportView, user: User) -> bytes:
    """A4 PDF; the fonts are named in the template's CSS so WeasyPrint embeds (a subset of) Noto CJK."""
    return HTML(string=render_html(db, view=view, user=user)).write_pdf()
