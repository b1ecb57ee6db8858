"""What follows a signed ECG report: a STEMI opens the chest-pain pathway, and a transfer call when the sending
member cannot do PCI.

Registered on teleconsult.reports.after_sign, so it runs in the signing transaction: the report, its critical
result, the pathway case and the transfer call commit together. A trainee's preliminary signature counts: a
STEMI must not wait for the co-signature. Should the pathway or the call be refused (a member without
coordinates, say), that part is undone in its savepoint and the failure audited; the signature and the
critical-result loop stand.
"""

from __future__ import annotations

import logging
from datetime import datetime

from sqlalchemy import exists, select
from sqlalchemy.orm import Session

from healthrelay.access import service as access
from healthrelay.accounts.models import User
from healthrelay.audit import service as audit
from healthrelay.core.errors import DomainError
from healthrelay.directory.models import Capability, OrganisationCapability
from healthrelay.ecg import service
from healthrelay.teleconsult import reports
from healthrelay.teleconsult.models import ConsultKind, ConsultRequest, Report

log = logging.getLogger("healthrelay.ecg")


def has_pci(db: Session, organisation_id: int) -> bool:
    return bool(db.execute(select(exists().where(OrganisationCapability.organisation_id == organisation_id,
                                                 OrganisationCapability.capability == Capability.PCI))).scalar())


def stemi_signed(db: Session, request: ConsultRequest, report: Report, user: User) -> None:
    """A signed STEMI conclusion: the chest-pain case with its first nodes, and an ambulance when needed."""
    if request.kind != ConsultKind.ECG:
        return
    statement = service.stemi_statement(report.structured)
    if statement is None:
        return
    recordings = service.recordings_of(db, request.id)
    received = recordings[0].received_at if recordings else request.created_at
    first_ecg = service.first_ecg_at(recordings[0]) if recordings else request.created_at
    signed = report.signed_at
    try:
        with db.begin_nested():  # a refusal here undoes only the pathway's part; the signature stands
            _open_pathway(db, request=request, user=user, label=statement.label, first_ecg=first_ecg,
                          received=received, signed=signed,
                          first_contact=recordings[0].first_contact_at if recordings else None)
    except DomainError as exc:
        log.warning("STEMI on %s: pathway not opened: %s", request.number, exc.message)
        audit.record(db, actor=access.actor_of(user), action="ecg.stemi_pathway", outcome="failed",
                     patient_id=request.patient_id, resource=f"consult:{request.id}",
                     detail={"reason": exc.message[:300]})


def _open_pathway(db: Session, *, request: ConsultRequest, user: User, label: str, first_ecg: datetime,
                  received: datetime, signed: datetime | None, first_contact: datetime | None) -> None:
    from healthrelay.pathways import service as pathways

    nodes = {"first_ecg": first_ecg, "ecg_transmitted": received}
    if first_contact is not None:  # the clinic that took the tracing was the first medical contact
        nodes["first_medical_contact"] = first_contact
    if signed is not None:
        nodes |= {"ecg_read": signed, "diagnosis": signed}
    case = pathways.open_case(db, centre="chest_pain", patient_id=request.patient_id, by=user, source="ecg",
                              ecg_request_id=request.id, diagnosis=label, diagnosis_code="stemi", nodes=nodes)
    audit.record(db, actor=access.actor_of(user), action="ecg.stemi_pathway", patient_id=request.patient_id,
                 resource=f"consult:{request.id}", detail={"pathway_case_id": case.id})
    if has_pci(db, request.inviting_organisation_id):
        return
    from healthrelay.emergency import service as emergency

    emergency.open_transfer_call(db, patient_id=request.patient_id,
                                 from_organisation_id=request.inviting_organisation_id, category="chest_pain",
                                 complaint=label, pathway_case_id=case.id, ecg_request_id=request.id, by=user)


def register() -> None:
    if stemi_signed not in reports.after_sign:
        reports.after_sign.append(stemi_signed)


register()
