"""Password hashing, bearer tokens and CSRF tokens."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from functools import lru_cache

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from healthrelay.core.config import get_settings


@lru_cache
def _hasher() -> PasswordHasher:
    if get_settings().fast_password_hash:
        # Still argon2id, with a small cost so a 20,000-resident demo and the test suite stay quick.
        return PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)
    return PasswordHasher()


def hash_password(password: str) -> str:
    return _hasher().hash(password)


def verify_password(password_hash: str, password: str) -> bool:
    try:
        return _hasher().verify(password_hash, password)
    except (VerificationError, InvalidHashError):
        return False


# A real hash to verify against when the username does not exist, so timing does not tell.
@lru_cache
def dummy_hash() -> str:
    return hash_password(secrets.token_urlsafe(16))


def new_token() -> str:
    return secrets.token_urlsafe(32)


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def csrf_token_for(session_nonce: str) -> str:
    """CSRF token bound to the login session: HMAC of its nonce with the app secret."""
    key = get_settings().secret_key.encode()
    return hmac.new(key, f"csrf:{session_nonce}".encode(), hashlib.sha256).hexdigest()


def csrf_matches(session_nonce: str, token: str) -> bool:
    return hmac.compare_digest(csrf_token_for(session_nonce), token or "")
