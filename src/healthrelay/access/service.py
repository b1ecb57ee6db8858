"""Need-to-know: who may see which patient, and why.

A clinician sees a patient only through a care relationship. Each domain that creates
relationships (registration, family-doctor panels here; referrals, consultations and
emergency cases later) registers a check with `care_relationship_check`. Without one,
access is refused unless the user breaks the glass with a written reason, which opens
access for a limited time and is flagged for review. Every decision is audited.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import exists, select
from sqlalchemy.orm import Session, selectinload

from healthrelay.access.models import BreakGlassGrant
from healthrelay.accounts.models import Role, User
from healthrelay.audit import service as audit
from healthrelay.core.config import get_settings
from healthrelay.core.db import utcnow
from healthrelay.core.errors import (
    AccessDenied,
    Conflict,
    InvalidInput,
    NeedToKnowDenied,
    NotFound,
    field_error,
)
from healthrelay.directory.models import Organisation, TeamMember
from healthrelay.patients.models import Patient, PatientRegistration, TeamPanelEntry

# (db, user, patient_id) -> a short description of the relationship, or None.
CareRelationshipCheck = Callable[[Session, User, int], str | None]
_care_checks: list[CareRelationshipCheck] = []

CLINICAL_ROLES = frozenset({Role.CLINICIAN, Role.REMOTE_READER, Role.DISPATCHER, Role.PHARMACIST})
MIN_BREAK_GLASS_REASON = 10


def care_relationship_check(fn: CareRelationshipCheck) -> CareRelationshipCheck:
    """Register a way a user can be in a care relationship with a patient."""
    _care_checks.append(fn)
    return fn


@care_relationship_check
def _registered_at_users_organisation(db: Session, user: User, patient_id: int) -> str | None:
    if user.organisation_id is None:
        return None
    found = db.execute(select(exists().where(
        PatientRegistration.patient_id == patient_id,
        PatientRegistration.organisation_id == user.organisation_id,
    ))).scalar()
    return "registered_here" if found else None


@care_relationship_check
def _on_users_team_panel(db: Session, user: User, patient_id: int) -> str | None:
    if user.practitioner_id is None:
        return None
    found = db.execute(select(exists().where(
        TeamPanelEntry.patient_id == patient_id,
        TeamPanelEntry.team_id == TeamMember.team_id,
        TeamMember.practitioner_id == user.practitioner_id,
    ))).scalar()
    return "team_panel" if found else None


@dataclass(frozen=True)
class AccessGrant:
    patient_id: int
    purpose: str  # the relationship, "break_glass", "own_record" or "record_management"


def actor_of(user: User | None, client_address: str = "") -> audit.Actor:
    if user is None:
        return audit.Actor(client_address=client_address)
    return audit.Actor(user_id=user.id, username=user.username, role=str(user.role),
                       organisation_id=user.organisation_id, client_address=client_address)


def resolve_patient(db: Session, patient_id: int) -> Patient:
    """Load a patient, following merges to the surviving record."""
    patient = db.get(Patient, patient_id)
    seen = set()
    while patient is not None and patient.merged_into_id is not None and patient.id not in seen:
        seen.add(patient.id)
        patient = db.get(Patient, patient.merged_into_id)
    if patient is None:
        raise NotFound(f"没有编号为 {patient_id} 的居民 / no patient with id {patient_id}")
    return patient


def active_break_glass(db: Session, *, user: User, patient_id: int) -> BreakGlassGrant | None:
    return db.execute(
        select(BreakGlassGrant).where(
            BreakGlassGrant.user_id == user.id,
            BreakGlassGrant.patient_id == patient_id,
            BreakGlassGrant.expires_at > utcnow(),
        ).order_by(BreakGlassGrant.expires_at.desc()).limit(1)
    ).scalar()


def decide(db: Session, *, user: User, patient_id: int) -> str | None:
    """The purpose that lets `user` see the patient, or None when nothing does."""
    if user.role == Role.HEALTH_BUREAU:
        return None
    if user.role == Role.PATIENT:
        return "own_record" if user.patient_id == patient_id else None
    if user.role == Role.ALLIANCE_ADMIN:
        return "record_management"
    if user.role == Role.ORG_ADMIN:
        return _registered_at_users_organisation(db, user, patient_id)
    if user.role in CLINICAL_ROLES:
        for check in _care_checks:
            reason = check(db, user, patient_id)
            if reason:
                return reason
        if active_break_glass(db, user=user, patient_id=patient_id):
            return "break_glass"
    return None


def require_patient_access(db: Session, *, user: User, patient_id: int, action: str,
                           client_address: str = "") -> AccessGrant:
    """Allow and audit the access in the caller's transaction, or audit the refusal and raise."""
    purpose = decide(db, user=user, patient_id=patient_id)
    actor = actor_of(user, client_address)
    if purpose is None:
        # Committed on its own so the refusal is kept though the request fails (after the caller's
        # transaction ends, if that transaction holds the audit lock: see audit.record_now).
        audit.record_now(actor=actor, action=action, patient_id=patient_id, outcome="denied",
                         purpose="no_care_relationship", db=db)
        if user.role == Role.HEALTH_BUREAU:
            raise AccessDenied("卫健局账号只能查看汇总数据 / health-bureau accounts see aggregates only")
        if user.role in CLINICAL_ROLES:
            raise NeedToKnowDenied(
                "您与该居民没有诊疗关系；如确有紧急需要，请填写理由后“破窗”访问 / "
                "no care relationship with this patient; break the glass with a reason if you must",
                patient_id=patient_id)
        raise AccessDenied("无权查看该居民 / you may not see this patient")
    audit.record(db, actor=actor, action=action, patient_id=patient_id, purpose=purpose)
    return AccessGrant(patient_id=patient_id, purpose=purpose)


def break_glass(db: Session, *, user: User, patient_id: int, reason: str,
                client_address: str = "") -> BreakGlassGrant:
    if user.role not in CLINICAL_ROLES:
        raise AccessDenied("只有临床人员可以破窗访问 / only clinical staff may break the glass")
    reason = (reason or "").strip()
    if len(reason) < MIN_BREAK_GLASS_REASON:
        raise InvalidInput(
            f"请写明理由（至少 {MIN_BREAK_GLASS_REASON} 个字）/ state the reason (at least "
            f"{MIN_BREAK_GLASS_REASON} characters)", field_errors=[field_error("reason", "too short")])
    patient = resolve_patient(db, patient_id)
    now = utcnow()
    grant = BreakGlassGrant(user_id=user.id, patient_id=patient.id, reason=reason, granted_at=now,
                            expires_at=now + timedelta(minutes=get_settings().break_glass_minutes))
    db.add(grant)
    db.flush()
    audit.record(db, actor=actor_of(user, client_address), action="access.break_glass",
                 patient_id=patient.id, purpose="break_glass", resource=f"break_glass:{grant.id}",
                 detail={"reason": reason, "expires_at": grant.expires_at.isoformat()})
    return grant


# Lists show who broke the glass and where they work: load both in two queries, not two per row.
_WITH_USER = selectinload(BreakGlassGrant.user).selectinload(User.organisation)


def list_unreviewed_break_glass(db: Session, *, limit: int = 200,
                                organisation_id: int | None = None) -> list[BreakGlassGrant]:
    """Newest first; `organisation_id` keeps the grants of that organisation's staff only."""
    q = (select(BreakGlassGrant).where(BreakGlassGrant.reviewed_at.is_(None))
         .options(_WITH_USER).order_by(BreakGlassGrant.granted_at.desc()).limit(limit))
    if organisation_id is not None:
        q = q.join(User, User.id == BreakGlassGrant.user_id).where(User.organisation_id == organisation_id)
    return list(db.execute(q).scalars())


def list_recently_reviewed_break_glass(db: Session, *, days: int = 30, limit: int = 100,
                                       organisation_id: int | None = None) -> list[BreakGlassGrant]:
    """Reviews of the last `days`, newest first, so a reviewer can see what was decided lately."""
    q = (select(BreakGlassGrant)
         .where(BreakGlassGrant.reviewed_at >= utcnow() - timedelta(days=days))
         .options(_WITH_USER).order_by(BreakGlassGrant.reviewed_at.desc()).limit(limit))
    if organisation_id is not None:
        q = q.join(User, User.id == BreakGlassGrant.user_id).where(User.organisation_id == organisation_id)
    return list(db.execute(q).scalars())


def review_scope(reviewer: User) -> int | None:
    """The organisation whose staff's grants a reviewer sees: None means every organisation."""
    if reviewer.role == Role.ALLIANCE_ADMIN:
        return None
    if reviewer.role == Role.ORG_ADMIN and reviewer.organisation_id is not None:
        return reviewer.organisation_id
    raise AccessDenied("只有管理员可以审核破窗访问 / only administrators review break-glass access")


def review_break_glass(db: Session, *, grant_id: int, reviewer: User, outcome: str, note: str,
                       client_address: str = "") -> BreakGlassGrant:
    if reviewer.role not in (Role.ALLIANCE_ADMIN, Role.ORG_ADMIN):
        raise AccessDenied("只有管理员可以审核破窗访问 / only administrators review break-glass access")
    if outcome not in ("justified", "unjustified"):
        raise InvalidInput("审核结论须为 justified 或 unjustified / outcome must be justified or unjustified",
                           field_errors=[field_error("outcome", "unknown value")])
    grant = db.get(BreakGlassGrant, grant_id)
    if grant is None:
        raise NotFound(f"没有编号为 {grant_id} 的破窗记录 / no break-glass grant {grant_id}")
    if reviewer.role == Role.ORG_ADMIN and grant.user.organisation_id != reviewer.organisation_id:
        raise AccessDenied("只能审核本机构人员的破窗访问 / you review your own organisation's staff only")
    if grant.reviewed_at is not None:
        raise Conflict("该破窗访问已审核 / already reviewed", code="already_reviewed")
    grant.reviewed_at = utcnow()
    grant.reviewed_by_user_id = reviewer.id
    grant.review_outcome = outcome
    grant.review_note = note.strip()
    audit.record(db, actor=actor_of(reviewer, client_address), action="access.break_glass_review",
                 patient_id=grant.patient_id, resource=f"break_glass:{grant.id}",
                 detail={"outcome": outcome})
    return grant


def figures_scope(db: Session, *, user: User, organisation_id: int | None, readers: frozenset[Role] | tuple[Role, ...],
                  see_all: frozenset[Role] | tuple[Role, ...], figures: str) -> Organisation | None:
    """Whose aggregate figures a user may see (no patient data on such pages): an org admin their own
    organisation only; `see_all` roles (alliance admin, health bureau) any one, or all (None).
    `figures` names them in the refusal, Chinese / English (e.g. "转诊指标 / referral indicators")."""
    zh, _, en = figures.partition(" / ")
    if user.role not in readers:
        raise AccessDenied(f"您的角色无权查看{zh} / your role may not see {en}")
    if user.role not in see_all:
        if user.organisation_id is None:
            raise AccessDenied("只有机构管理员可以查看本机构统计 / only an organisation's admin sees its figures")
        if organisation_id not in (None, user.organisation_id):
            raise AccessDenied(f"只能查看本机构的{zh} / you see your own organisation's {en} only")
        organisation_id = user.organisation_id
    if organisation_id is None:
        return None
    org = db.get(Organisation, organisation_id)
    if org is None:
        raise NotFound(f"没有编号为 {organisation_id} 的机构 / no organisation {organisation_id}")
    return org
