"""Signing in, tokens, throttling and user administration."""

from __future__ import annotations

import re
from datetime import timedelta

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from healthrelay.accounts.models import ApiToken, LoginAttempt, Role, User
from healthrelay.audit import service as audit
from healthrelay.core.config import get_settings
from healthrelay.core.db import utcnow
from healthrelay.core.errors import (
    AccessDenied,
    Conflict,
    InvalidInput,
    NotAuthenticated,
    NotFound,
    TooManyAttempts,
    field_error,
)
from healthrelay.core.security import dummy_hash, hash_password, new_token, token_digest, verify_password
from healthrelay.directory.models import Organisation, Post

USERNAME_RE = re.compile(r"^[A-Za-z0-9_.\-]{3,60}$")
MIN_PASSWORD_LENGTH = 8


PER_ADDRESS_FACTOR = 4  # a clinic's PCs often share one NAT address, so addresses get more tries


def _recent_failures(db: Session, *, column: object, value: str) -> int:
    window_start = utcnow() - timedelta(minutes=get_settings().login_lock_minutes)
    return db.execute(
        select(func.count()).select_from(LoginAttempt).where(
            LoginAttempt.attempted_at >= window_start, LoginAttempt.succeeded.is_(False), column == value)
    ).scalar_one()


def _throttled(db: Session, *, username: str, client_address: str) -> bool:
    limit = get_settings().login_max_failures
    return (_recent_failures(db, column=LoginAttempt.username, value=username) >= limit
            or _recent_failures(db, column=LoginAttempt.client_address, value=client_address)
            >= limit * PER_ADDRESS_FACTOR)


def authenticate(db: Session, *, username: str, password: str, client_address: str) -> User:
    """Check a password, throttling repeated failures per username and per client address.

    Failures are committed in transactions of their own, so a refused login still counts
    even though the request itself fails.
    """
    settings = get_settings()
    username = (username or "").strip()
    actor = audit.Actor(username=username, client_address=client_address)
    if _throttled(db, username=username, client_address=client_address):
        audit.record_now(actor=actor, action="login.throttled", outcome="denied")
        raise TooManyAttempts(
            f"登录失败次数过多，请 {settings.login_lock_minutes} 分钟后再试 / too many failed sign-ins; "
            f"try again in {settings.login_lock_minutes} minutes",
            retry_after_seconds=settings.login_lock_minutes * 60)
    user = db.execute(select(User).where(User.username == username)).scalar()
    ok = verify_password(user.password_hash if user else dummy_hash(), password or "")
    if not ok or user is None or not user.is_active:
        _record_failure(username=username, client_address=client_address)
        audit.record_now(actor=actor, action="login.failed", outcome="failed")
        raise NotAuthenticated("用户名或密码错误 / wrong username or password")
    user.last_login_at = utcnow()
    audit.record(db, actor=audit.Actor(user_id=user.id, username=user.username, role=str(user.role),
                                       organisation_id=user.organisation_id, client_address=client_address),
                 action="login.succeeded")
    return user


def _record_failure(*, username: str, client_address: str) -> None:
    from healthrelay.core.db import get_sessionmaker

    db = get_sessionmaker()()
    try:
        db.add(LoginAttempt(username=username, client_address=client_address, succeeded=False))
        db.commit()
    finally:
        db.close()


def issue_token(db: Session, *, user: User) -> tuple[str, int]:
    token = new_token()
    ttl = get_settings().token_max_age_seconds
    db.add(ApiToken(user_id=user.id, token_sha256=token_digest(token), expires_at=utcnow() + timedelta(seconds=ttl)))
    db.flush()
    return token, ttl


def revoke_token(db: Session, *, token: str) -> None:
    row = db.execute(select(ApiToken).where(ApiToken.token_sha256 == token_digest(token))).scalar()
    if row is not None and row.revoked_at is None:
        row.revoked_at = utcnow()


def create_user(db: Session, *, username: str, password: str, display_name: str, role: Role,
                organisation_id: int | None, practitioner_id: int | None = None,
                post_id: int | None = None, patient_id: int | None = None,
                hashed_password: str | None = None) -> User:
    errors = []
    if not USERNAME_RE.match(username or ""):
        errors.append(field_error("username", "3-60 letters, digits, '.', '_' or '-'"))
    if hashed_password is None and len(password or "") < MIN_PASSWORD_LENGTH:
        errors.append(field_error("password", f"at least {MIN_PASSWORD_LENGTH} characters"))
    if role == Role.PATIENT and patient_id is None:
        errors.append(field_error("patient_id", "patient accounts must be linked to a patient record"))
    if role not in (Role.PATIENT, Role.ALLIANCE_ADMIN, Role.HEALTH_BUREAU) and organisation_id is None:
        errors.append(field_error("organisation_id", "staff accounts belong to an organisation"))
    if errors:
        raise InvalidInput("账号信息有误 / invalid account details", field_errors=errors)
    if organisation_id is not None and db.get(Organisation, organisation_id) is None:
        raise InvalidInput(f"机构 {organisation_id} 不存在 / unknown organisation {organisation_id}",
                           field_errors=[field_error("organisation_id", "unknown organisation")])
    if db.execute(select(User.id).where(User.username == username)).scalar() is not None:
        raise Conflict(f"用户名 {username} 已被使用 / username {username} is taken",
                       field_errors=[field_error("username", "already taken")], code="duplicate_username")
    user = User(username=username, password_hash=hashed_password or hash_password(password),
                display_name=display_name or username, role=role, organisation_id=organisation_id,
                practitioner_id=practitioner_id, post_id=post_id, patient_id=patient_id)
    db.add(user)
    db.flush()
    return user


def get_user(db: Session, user_id: int) -> User:
    user = db.get(User, user_id)
    if user is None:
        raise NotFound(f"没有编号为 {user_id} 的用户 / no user {user_id}")
    return user


ADMIN_ROLES = frozenset({Role.ALLIANCE_ADMIN, Role.ORG_ADMIN})
# Roles only an alliance admin may hand out: they see every organisation.
ALLIANCE_WIDE_ROLES = frozenset({Role.ALLIANCE_ADMIN, Role.HEALTH_BUREAU})


def _check_links_as_org_admin(db: Session, *, admin: User, practitioner_id: int | None,
                              patient_id: int | None) -> None:
    """An account inherits the care relationships of its practitioner and patient record, so an
    organisation admin may only link people who belong to that organisation."""
    from healthrelay.patients.models import PatientRegistration

    if practitioner_id is not None and db.execute(select(Post.id).where(
            Post.practitioner_id == practitioner_id, Post.organisation_id == admin.organisation_id)
    ).first() is None:
        raise AccessDenied("该医务人员不在本机构执业 / that practitioner has no post at your organisation",
                           field_errors=[field_error("practitioner_id", "no post at your organisation")])
    if patient_id is not None and db.execute(select(PatientRegistration.id).where(
            PatientRegistration.patient_id == patient_id,
            PatientRegistration.organisation_id == admin.organisation_id)).first() is None:
        raise AccessDenied("该居民未在本机构建档 / that resident is not registered at your organisation",
                           field_errors=[field_error("patient_id", "not registered at your organisation")])


def create_user_as(db: Session, *, admin: User, username: str, password: str, display_name: str, role: Role,
                   organisation_id: int | None, practitioner_id: int | None = None,
                   patient_id: int | None = None, client_address: str = "") -> User:
    """User administration: who may create which account, then `create_user`, audited as user.create."""
    if admin.role not in ADMIN_ROLES:
        raise AccessDenied("只有管理员可以创建账号 / only administrators create accounts")
    if admin.role == Role.ORG_ADMIN:
        if organisation_id != admin.organisation_id or role in ALLIANCE_WIDE_ROLES:
            raise AccessDenied("机构管理员只能为本机构创建账号 / organisation admins create accounts for "
                               "their own organisation only",
                               field_errors=[field_error("organisation_id" if organisation_id != admin.organisation_id
                                                         else "role", "not allowed for an organisation admin")])
        _check_links_as_org_admin(db, admin=admin, practitioner_id=practitioner_id, patient_id=patient_id)
    if patient_id is not None:
        from healthrelay.patients.models import Patient

        if db.get(Patient, patient_id) is None:
            raise InvalidInput(f"居民 {patient_id} 不存在 / unknown patient {patient_id}",
                               field_errors=[field_error("patient_id", "unknown patient")])
    user = create_user(db, username=username, password=password, display_name=display_name, role=role,
                       organisation_id=organisation_id, practitioner_id=practitioner_id, patient_id=patient_id)
    audit.record(db, actor=audit.Actor(user_id=admin.id, username=admin.username, role=str(admin.role),
                                       organisation_id=admin.organisation_id, client_address=client_address),
                 action="user.create", resource=f"user:{user.id}",
                 detail={"username": user.username, "role": str(user.role), "organisation_id": organisation_id})
    return user


def list_users(db: Session, *, admin: User, text: str = "", role: Role | None = None,
               organisation_id: int | None = None, limit: int = 200) -> list[User]:
    """Accounts an admin may see (an organisation admin: their own organisation's), by username."""
    if admin.role not in ADMIN_ROLES:
        raise AccessDenied("只有管理员可以管理账号 / only administrators manage accounts")
    if admin.role == Role.ORG_ADMIN:
        organisation_id = admin.organisation_id
    q = select(User).order_by(User.username).limit(limit)
    if organisation_id is not None:
        q = q.where(User.organisation_id == organisation_id)
    if role is not None:
        q = q.where(User.role == role)
    text = (text or "").strip()
    if text:
        q = q.where(User.username.icontains(text, autoescape=True)
                    | User.display_name.icontains(text, autoescape=True))
    return list(db.execute(q).scalars())
