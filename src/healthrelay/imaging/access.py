"""Who may read an imaging study (the viewer, WADO-RS, QIDO-RS), decided in one place and audited.

A study is patient data: a matched study is readable by whoever may see its patient (need-to-know,
access.service). The organisation that examined the patient and the organisation asked to read the
study (inviting and invited sides of its consult request) may read it too, matched or not: they hold
the images already, and the reading centre must read a study before anyone has linked its patient.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Select, false, or_, select, union
from sqlalchemy.orm import Session

from healthrelay.access import service as access
from healthrelay.access.models import BreakGlassGrant
from healthrelay.accounts.models import Role, User
from healthrelay.audit import service as audit
from healthrelay.core.db import utcnow
from healthrelay.core.errors import AccessDenied
from healthrelay.directory.models import TeamMember
from healthrelay.imaging.models import ImagingStudy
from healthrelay.patients.models import PatientRegistration, TeamPanelEntry
from healthrelay.teleconsult.models import ConsultRequest

# Staff who read their own organisation's studies (and the studies it was asked to read).
ORGANISATION_ROLES = frozenset({Role.CLINICIAN, Role.REMOTE_READER, Role.ORG_ADMIN})
ACTION_READ = "imaging.read"


def organisation_purpose(db: Session, *, user: User, study: ImagingStudy) -> str | None:
    """"study_organisation" or "consult_party" when the user's organisation holds or reads the study."""
    org = user.organisation_id
    if org is None or user.role not in ORGANISATION_ROLES:
        return None
    if study.organisation_id == org:
        return "study_organisation"
    if study.consult_request_id is not None:
        parties = db.execute(select(ConsultRequest.inviting_organisation_id, ConsultRequest.invited_organisation_id)
                             .where(ConsultRequest.id == study.consult_request_id)).first()
        if parties is not None and org in tuple(parties):
            return "consult_party"
    return None


def _resource(study: ImagingStudy) -> str:
    return f"imaging_study:{study.study_instance_uid}"


def require_study_access(db: Session, *, user: User, study: ImagingStudy, client_address: str = "",
                         audit_read: bool = True) -> str:
    """Allow (and audit, unless `audit_read` is False) reading the study, or audit the refusal and raise.

    Returns the purpose recorded. `audit_read=False` is for a caller that already audited this user's
    read of this study moments ago (frame after frame of one series); refusals are always audited.
    """
    actor = access.actor_of(user, client_address)
    purpose = organisation_purpose(db, user=user, study=study)
    patient_id: int | None = None
    if study.patient_id is not None:
        patient_id = access.resolve_patient(db, study.patient_id).id
        if purpose is None:
            purpose = access.decide(db, user=user, patient_id=patient_id)
            if purpose is None:
                # Audits the refusal (committed on its own) and raises NeedToKnowDenied / AccessDenied.
                access.require_patient_access(db, user=user, patient_id=patient_id, action=ACTION_READ,
                                              client_address=client_address)
                raise AccessDenied("无权查看该影像检查 / you may not read this study")  # pragma: no cover
    elif purpose is None and user.role == Role.ALLIANCE_ADMIN:
        purpose = "record_management"  # linking flagged studies to residents is their job
    if purpose is None:
        audit.record_now(actor=actor, action=ACTION_READ, outcome="denied", purpose="not_party",
                         resource=_resource(study), db=db)
        raise AccessDenied("该影像检查既不属于本机构，也不是发给本机构阅片的 / this study was neither examined "
                           "at nor sent for reading to your organisation")
    if audit_read:
        audit.record(db, actor=actor, action=ACTION_READ, patient_id=patient_id, purpose=purpose,
                     resource=_resource(study))
    return purpose


def readable_study_ids(user: User) -> Select[Any] | None:
    """A query of the ids of the studies `user` may read, built from indexed branches (a UNION).

    None means every study (alliance administrators). The branches mirror require_study_access:
    the user's organisation's studies, studies its organisation was asked to read or asked for, and
    studies of patients registered there, on the user's family-doctor panel or behind an open
    break-the-glass grant. (Patients seen through referrals or consultations elsewhere are reachable
    one at a time through require_study_access, not listed.)
    """
    if user.role == Role.ALLIANCE_ADMIN:
        return None
    if user.role == Role.HEALTH_BUREAU:
        return select(ImagingStudy.id).where(false())
    if user.role == Role.PATIENT:
        if user.patient_id is None:
            return select(ImagingStudy.id).where(false())
        return select(ImagingStudy.id).where(ImagingStudy.patient_id == user.patient_id)
    org = user.organisation_id
    branches: list[Select[Any]] = []
    if org is not None:
        branches.append(select(ImagingStudy.id).where(
            ImagingStudy.patient_id.in_(select(PatientRegistration.patient_id)
                                        .where(PatientRegistration.organisation_id == org))))
        if user.role in ORGANISATION_ROLES:
            branches.append(select(ImagingStudy.id).where(ImagingStudy.organisation_id == org))
            branches.append(select(ImagingStudy.id)
                            .join(ConsultRequest, ConsultRequest.id == ImagingStudy.consult_request_id)
                            .where(or_(ConsultRequest.invited_organisation_id == org,
                                       ConsultRequest.inviting_organisation_id == org)))
    if user.role in access.CLINICAL_ROLES:
        if user.practitioner_id is not None:
            branches.append(select(ImagingStudy.id).where(ImagingStudy.patient_id.in_(
                select(TeamPanelEntry.patient_id)
                .join(TeamMember, TeamMember.team_id == TeamPanelEntry.team_id)
                .where(TeamMember.practitioner_id == user.practitioner_id))))
        branches.append(select(ImagingStudy.id).where(ImagingStudy.patient_id.in_(
            select(BreakGlassGrant.patient_id)
            .where(BreakGlassGrant.user_id == user.id, BreakGlassGrant.expires_at > utcnow()))))
    if not branches:
        return select(ImagingStudy.id).where(false())
    if len(branches) == 1:
        return branches[0]
    return select(union(*branches).subquery().c[0])

