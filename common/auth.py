"""Bearer-token verification: a JWT in, a `Principal` out, or UNAUTHENTICATED."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

import jwt

from common.config import JwtSettings
from common.errors import UnauthenticatedError

MAX_TOKEN_BYTES = 8 * 1024
# Headers that would let a token name its own key; we only ever use the configured one.
_KEY_CHOOSING_HEADERS = frozenset({"jwk", "jku", "x5u", "x5c"})


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling, as the token says; nothing in a request body can change it."""

    user_id: str
    organization_id: str | None
    campus_id: str | None
    global_access: bool
    permissions: frozenset[str]

    def has_permission(self, permission: str) -> bool:
        return permission in self.permissions


_current: ContextVar[Principal | None] = ContextVar("principal", default=None)


def current_principal() -> Principal:
    """The principal of the RPC being handled (set by the auth interceptor)."""
    principal = _current.get()
    if principal is None:
        raise UnauthenticatedError("no authenticated caller")
    return principal


def peek_principal() -> Principal | None:
    """The bound principal, or None before authentication (for logs)."""
    return _current.get()


def bind_principal(principal: Principal | None) -> None:
    _current.set(principal)


def _uuid_claim(claims: dict[str, Any], name: str, *, required: bool) -> str | None:
    value = claims.get(name)
    if value is None:
        if required:
            raise UnauthenticatedError(f"token has no {name!r} claim")
        return None
    if not isinstance(value, str):
        raise UnauthenticatedError(f"token claim {name!r} must be a UUID string")
    try:
        return str(uuid.UUID(value))
    except ValueError:
        raise UnauthenticatedError(f"token claim {name!r} must be a UUID string") from None


def _string_list_claim(claims: dict[str, Any], name: str) -> list[str]:
    value = claims.get(name)
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise UnauthenticatedError(f"token claim {name!r} must be a list of strings")
    return value


def _check_numeric_dates(claims: dict[str, Any]) -> None:
    # PyJWT reads "exp": "123" as a number; RFC 7519 says a NumericDate is a JSON number.
    for name in ("exp", "nbf", "iat"):
        value = claims.get(name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
            raise UnauthenticatedError(f"token claim {name!r} must be a number")


def principal_from_claims(claims: dict[str, Any]) -> Principal:
    """Check the claims' types and build the principal."""
    _check_numeric_dates(claims)
    global_access = claims.get("global_access", False)
    if not isinstance(global_access, bool):
        raise UnauthenticatedError("token claim 'global_access' must be a boolean")
    user_id = _uuid_claim(claims, "sub", required=True)
    assert user_id is not None
    organization_id = _uuid_claim(claims, "org", required=not global_access)
    permissions = frozenset(
        _string_list_claim(claims, "permissions") + _string_list_claim(claims, "custom_permissions")
    )
    return Principal(
        user_id=user_id,
        organization_id=organization_id,
        campus_id=_uuid_claim(claims, "campus", required=False),
        global_access=global_access,
        permissions=permissions,
    )


class TokenVerifier:
    """Verifies tokens against exactly one configured key and algorithm.

    A verified token's principal is kept for `cache_seconds` (bounded by the token's own exp and
    nbf), keyed by the raw token: signature checks and claim parsing were a visible share of a
    short RPC, and callers send the same token many times. Failures are never cached.
    """

    def __init__(self, settings: JwtSettings) -> None:
        self._settings = settings
        self._jwt = jwt.PyJWT()
        self._options: dict[str, Any] = {
            "require": ["exp", "sub"],
            "verify_aud": settings.audience is not None,
            "verify_iss": settings.issuer is not None,
        }
        self._cache: dict[str, tuple[Principal, float, float]] = {}

    def verify(self, token: str) -> Principal:
        now = time.time()
        cached = self._cache.get(token)
        if cached is not None:
            principal, valid_from, valid_until = cached
            if valid_from <= now < valid_until:
                return principal
            del self._cache[token]
        claims = self._decode(token)
        principal = principal_from_claims(claims)
        if self._settings.cache_size:
            self._remember(token, principal, claims, now)
        return principal

    def _remember(
        self, token: str, principal: Principal, claims: dict[str, Any], now: float
    ) -> None:
        """Cache until the earliest of our TTL and the token's own expiry; evict the oldest."""
        leeway = self._settings.leeway_seconds
        valid_until = min(now + self._settings.cache_seconds, float(claims["exp"]) + leeway)
        nbf = claims.get("nbf")
        valid_from = float(nbf) - leeway if isinstance(nbf, int | float) else float("-inf")
        if len(self._cache) >= self._settings.cache_size:
            del self._cache[next(iter(self._cache))]
        self._cache[token] = (principal, valid_from, valid_until)

    def _decode(self, token: str) -> dict[str, Any]:
        if not token or len(token) > MAX_TOKEN_BYTES:
            raise UnauthenticatedError("bearer token is empty or too large")
        try:
            header = jwt.get_unverified_header(token)
            if _KEY_CHOOSING_HEADERS & header.keys():
                raise UnauthenticatedError("token header may not name its own key")
            claims: dict[str, Any] = self._jwt.decode(
                token,
                self._settings.key,
                algorithms=[self._settings.algorithm],
                options=self._options,  # type: ignore[arg-type]  # PyJWT's TypedDict
                audience=self._settings.audience,
                issuer=self._settings.issuer,
                leeway=self._settings.leeway_seconds,
            )
        except jwt.ExpiredSignatureError:
            raise UnauthenticatedError("token has expired") from None
        except jwt.PyJWTError as exc:
            raise UnauthenticatedError(f"invalid token: {exc}") from None
        return claims


def bearer_token(metadata: Iterable[tuple[str, str | bytes]] | None) -> str:
    """The token of the `authorization: Bearer …` metadata entry."""
    for key, value in metadata or ():
        if key == "authorization":
            text = value.decode() if isinstance(value, bytes) else value
            scheme, _, token = text.strip().partition(" ")
            if scheme.lower() != "bearer" or not token.strip():
                raise UnauthenticatedError("authorization metadata must be 'Bearer <token>'")
            return token.strip()
    raise UnauthenticatedError("missing authorization metadata")
