"""Entity tags (AIP-154): an opaque string that changes on every write of a row.

A tag carries the row's `version` (a counter every write increments, so two writes in the
same microsecond still differ, which a timestamp would not) and a digest of the row's
organization and id with it, so a tag read from one row never matches another row that
happens to be at the same version. The tag is not a secret: forging one buys nothing that
sending no tag does not, since a write without a tag is unconditional.

A conditional write compares the version in its WHERE clause (so the check and the write are
one statement, with no window between them), then checks the digest against the row it
reached; a digest of another row fails the call, and its unit of work rolls the write back.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from dataclasses import dataclass

import grpc

from common import b64url
from common.errors import ServiceError, ValidationError

_VERSION = struct.Struct(">Q")
_DIGEST_BYTES = 8


class EtagMismatchError(ServiceError):
    """The caller's tag is not the row's current one: someone wrote the row since it was read."""

    code = grpc.StatusCode.ABORTED
    reason = "ETAG_MISMATCH"


def _digest(organization_id: str, row_id: str, version: int) -> bytes:
    data = f"{organization_id}/{row_id}/".encode() + _VERSION.pack(version)
    return hashlib.blake2b(data, digest_size=_DIGEST_BYTES).digest()


def encode(organization_id: str, row_id: str, version: int) -> str:
    return b64url.encode(_VERSION.pack(version) + _digest(organization_id, row_id, version))


@dataclass(frozen=True, slots=True)
class Etag:
    """A caller's tag, read: the version it asks for and the row it was issued for."""

    version: int
    digest: bytes

    def issued_for(self, organization_id: str, row_id: str) -> bool:
        return hmac.compare_digest(self.digest, _digest(organization_id, row_id, self.version))


def parse(etag: str, field: str = "etag") -> Etag | None:
    """None for no tag; INVALID_ARGUMENT naming `field` for a tag no server gave out."""
    if not etag:
        return None
    raw = b64url.decode(etag)
    if raw is None or len(raw) != _VERSION.size + _DIGEST_BYTES:
        raise ValidationError.field(field, "is not an etag this service gave out")
    (version,) = _VERSION.unpack(raw[: _VERSION.size])
    return Etag(version, raw[_VERSION.size :])


def mismatch(what: str) -> EtagMismatchError:
    return EtagMismatchError(
        f"the {what} changed since this etag was read; read it again and retry with its "
        "current etag",
        metadata={"field": "etag"},
    )
