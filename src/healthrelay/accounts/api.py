"""Sign-in for API clients (OAuth2 password flow) and user administration."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request, status
from fastapi.security import OAuth2PasswordRequestForm

from healthrelay.accounts import service
from healthrelay.accounts.models import Role, User
from healthrelay.accounts.schemas import TokenOut, UserCreate, UserOut
from healthrelay.core.deps import CurrentUser, DbSession, client_address, require_roles

router = APIRouter(tags=["accounts"])


@router.post("/auth/token", response_model=TokenOut)
def login_for_token(request: Request, db: DbSession,
                    form: Annotated[OAuth2PasswordRequestForm, Depends()]) -> TokenOut:
    user = service.authenticate(db, username=form.username, password=form.password,
                                client_address=client_address(request))
    token, ttl = service.issue_token(db, user=user)
    return TokenOut(access_token=token, expires_in=ttl)


@router.post("/auth/logout", status_code=status.HTTP_204_NO_CONTENT)
def logout_token(request: Request, db: DbSession, _user: CurrentUser) -> None:
    _, _, token = request.headers.get("authorization", "").partition(" ")
    service.revoke_token(db, token=token.strip())


@router.get("/me", response_model=UserOut)
def me(user: CurrentUser) -> User:
    return user


@router.post("/users", response_model=UserOut, status_code=status.HTTP_201_CREATED)
def create_user(body: UserCreate, request: Request, db: DbSession,
                admin: User = require_roles(Role.ALLIANCE_ADMIN, Role.ORG_ADMIN)) -> User:
    return service.create_user_as(db, admin=admin, client_address=client_address(request), **body.model_dump())
