"""Page tokens (AIP-158): where the last page ended, opaque to callers and signed by the server.

A token is base64url(version ‖ position ‖ tag). The position is the last row's sort key, as
JSON (`common.keyset`); the tag is an HMAC-SHA256 (truncated to 128 bits) over the version, the
position and a digest of what the token is bound to: the List it came from, the caller (user,
organization, global access) and the request's filter and order. Nothing of the binding is in
the token itself, so a token replayed by another caller, with another filter or order, or
altered in any byte fails the same check and is refused alike, with nothing to tell which.

The key is PAGE_TOKEN_SECRET, or else derived from JWT_SECRET (HMAC-SHA256 of a fixed label),
so that every replica of a service, and every worker process, accepts the tokens of the others.
Changing the key invalidates outstanding tokens: callers start again from the first page.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import json
import secrets
from functools import lru_cache
from typing import Any

from common import b64url
from common.config import Settings
from common.errors import ValidationError
from common.tenancy import TenantScope

VERSION = b"\x01"
TAG_BYTES = 16
DERIVATION_LABEL = b"school-grpc page_token v1"
# The largest token accepted: a position holds one sort value (a name is at most 500
# characters, 2000 bytes in UTF-8) and an id.
MAX_TOKEN_CHARS = 4096
FIELD = "pageToken"  # as violations name it: the JSON name a REST caller sends
# One compact encoder: json.dumps with separators builds a new encoder on every call.
_COMPACT = json.JSONEncoder(separators=(",", ":"))


def invalid() -> ValidationError:
    """The one answer for a token that is altered, foreign to the caller, or issued for another
    filter or order."""
    return ValidationError.field(
        FIELD,
        "is not a token this list issued for this caller, filter and order; start again without it",
    )


def derive_key(settings: Settings) -> bytes:
    """PAGE_TOKEN_SECRET, else a key derived from the HMAC JWT secret (a different key from the
    one tokens are signed with, so a page token can never pass for a JWT signature)."""
    if settings.page_token_secret is not None:
        return settings.page_token_secret
    if isinstance(settings.jwt.key, bytes):
        return hmac.new(settings.jwt.key, DERIVATION_LABEL, hashlib.sha256).digest()
    raise ValueError("page tokens need PAGE_TOKEN_SECRET when tokens are verified by public key")


def _canonical(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _canonical(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, list | tuple):
        return [_canonical(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _canonical(v) for k, v in value.items()}
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return str(value)  # dates, datetimes: isoformat-like and stable


@lru_cache(maxsize=4096)
def _query_digest(query: Any) -> bytes:
    """The canonical JSON of a query, hashed; cached, as one filter is asked for many times."""
    return hashlib.sha256(json.dumps(_canonical(query), sort_keys=True).encode()).digest()


def binding(listing: str, scope: TenantScope, query: Any) -> bytes:
    """What a token is valid for: the List, the caller and the request's filter and order
    (`query`: hashable dataclasses, tuples and plain values; absent fields included, so a
    filter added or dropped is another query)."""
    caller = f"{listing}\0{scope.user_id}\0{scope.organization_id or '*'}\0{scope.global_access}"
    return hashlib.sha256(caller.encode() + _query_digest(query)).digest()


class PageTokens:
    """Issues and reads the page tokens of one service."""

    def __init__(self, key: bytes) -> None:
        self._key = key

    @classmethod
    def from_settings(cls, settings: Settings) -> PageTokens:
        return cls(derive_key(settings))

    @classmethod
    def ephemeral(cls) -> PageTokens:
        """A key of this process's own: its tokens mean nothing to any other process."""
        return cls(secrets.token_bytes(32))

    def _tag(self, bound: bytes, payload: bytes) -> bytes:
        return hmac.digest(self._key, VERSION + bound + payload, "sha256")[:TAG_BYTES]

    def issue(self, bound: bytes, position: list[Any]) -> str:
        payload = _COMPACT.encode(position).encode()
        raw = VERSION + payload + self._tag(bound, payload)
        return b64url.encode(raw)

    def read(self, token: str, bound: bytes) -> list[Any]:
        """The position `token` holds, if this service issued it for `bound`; else the one
        INVALID_ARGUMENT naming `page_token`."""
        if len(token) > MAX_TOKEN_CHARS:
            raise invalid()
        raw = b64url.decode(token)
        if raw is None:
            raise invalid()
        version, payload, tag = raw[:1], raw[1:-TAG_BYTES], raw[-TAG_BYTES:]
        if (
            version != VERSION
            or len(raw) < 1 + TAG_BYTES
            or not hmac.compare_digest(tag, self._tag(bound, payload))
        ):
            raise invalid()
        try:
            position = json.loads(payload)
        except ValueError:
            raise invalid() from None
        if not isinstance(position, list):
            raise invalid()
        return position
