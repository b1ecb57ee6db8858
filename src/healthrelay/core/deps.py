"""Request dependencies shared by every route: the DB session and the signed-in user."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Depends, Request
from sqlalchemy import select
from sqlalchemy.orm import Session, joinedload

from healthrelay.accounts.models import ApiToken, Role, User
from healthrelay.audit.service import Actor
from healthrelay.core.db import session_scope, utcnow
from healthrelay.core.errors import AccessDenied, NotAuthenticated
from healthrelay.core.security import csrf_matches, token_digest

# "function" scope: the commit runs before the response is sent, so a client that gets 2xx can rely on what
# it was told (a token used at once, a redirect-after-POST reading its own write), and a failed commit
# becomes the error response instead of happening after a success was already sent.
DbSession = Annotated[Session, Depends(session_scope, scope="function")]


def client_address(request: Request) -> str:
    return request.client.host if request.client else ""


def _user_from_bearer(db: Session, header: str) -> User | None:
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token:
        return None
    row = db.execute(select(ApiToken).where(ApiToken.token_sha256 == token_digest(token.strip()))).scalar()
    if row is None or row.revoked_at is not None or row.expires_at <= utcnow():
        raise NotAuthenticated("令牌无效或已过期 / token invalid or expired")
    return db.get(User, row.user_id, options=[joinedload(User.organisation)])


def user_from_credentials(db: Session, *, authorization: str | None, session_uid: Any) -> User | None:
    """The bearer token's user, else the signed session cookie's; a disabled account is refused."""
    user = _user_from_bearer(db, authorization) if authorization else None
    if user is None and not authorization:
        user = db.get(User, session_uid, options=[joinedload(User.organisation)]) if session_uid else None
    if user is not None and not user.is_active:
        raise NotAuthenticated("账号已停用 / account disabled")
    return user


def optional_user(request: Request, db: DbSession) -> User | None:
    user = user_from_credentials(db, authorization=request.headers.get("authorization"),
                                 session_uid=request.session.get("uid"))
    request.state.user = user
    return user


def require_user(user: Annotated[User | None, Depends(optional_user)]) -> User:
    if user is None:
        raise NotAuthenticated("请先登录 / please sign in")
    return user


OptionalUser = Annotated[User | None, Depends(optional_user)]
CurrentUser = Annotated[User, Depends(require_user)]


def require_roles(*roles: Role) -> Any:
    """A dependency (`Depends`) admitting only these roles; use as a parameter default."""
    allowed = frozenset(roles)

    def _check(user: CurrentUser) -> User:
        if user.role not in allowed:
            raise AccessDenied("您的角色无权执行此操作 / your role may not do this")
        return user

    return Depends(_check)


def actor(request: Request, user: OptionalUser) -> Actor:
    if user is None:
        return Actor(client_address=client_address(request))
    return Actor(user_id=user.id, username=user.username, role=str(user.role),
                 organisation_id=user.organisation_id, client_address=client_address(request))


CurrentActor = Annotated[Actor, Depends(actor)]


async def verify_csrf(request: Request) -> None:
    """Page forms carry the session-bound token; the JSON API uses bearer tokens instead."""
    if request.method in ("GET", "HEAD", "OPTIONS"):
        return
    form = await request.form()
    token = str(form.get("csrf_token", "")) or request.headers.get("x-csrf-token", "")
    nonce = request.session.get("nonce", "")
    if not nonce or not csrf_matches(nonce, token):
        raise AccessDenied("表单已过期，请刷新页面后重试 / the form expired; reload the page and try again",
                           code="csrf_failed")


CsrfChecked = Depends(verify_csrf)
