"""Callers: tokens, call metadata and the rich error details a call fails with."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import grpc
from google.rpc import error_details_pb2, status_pb2

from common.token import mint

SECRET = "test-secret-" + "x" * 40


def new_uuid() -> str:
    return str(uuid.uuid4())


@dataclass
class Caller:
    """A user as a token describes them, with helpers to call as that user."""

    org: str | None = field(default_factory=new_uuid)
    sub: str = field(default_factory=new_uuid)
    campus: str | None = None
    global_access: bool = False
    permissions: list[str] = field(default_factory=list)
    custom_permissions: list[str] = field(default_factory=list)

    def token(self, **overrides: Any) -> str:
        kwargs: dict[str, Any] = {
            "sub": self.sub,
            "org": self.org,
            "campus": self.campus,
            "global_access": self.global_access,
            "permissions": self.permissions,
            "custom_permissions": self.custom_permissions,
        }
        kwargs.update(overrides)
        return mint(SECRET, **kwargs)

    @property
    def md(self) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self.token()}"),)


def bearer(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


def expired_token(caller: Caller) -> str:
    return caller.token(ttl_seconds=-3600)


@dataclass
class RichError:
    code: grpc.StatusCode
    message: str
    reason: str | None
    domain: str | None
    metadata: dict[str, str]
    violations: list[tuple[str, str]]


def rich_error(err: grpc.aio.AioRpcError) -> RichError:
    """The status code with its `google.rpc.ErrorInfo` and `BadRequest` details."""
    reason = domain = None
    metadata: dict[str, str] = {}
    violations: list[tuple[str, str]] = []
    for key, value in err.trailing_metadata() or ():
        if key != "grpc-status-details-bin":
            continue
        status = status_pb2.Status.FromString(value)
        assert status.code == err.code().value[0]
        for detail in status.details:
            if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                info = error_details_pb2.ErrorInfo()
                detail.Unpack(info)
                reason, domain, metadata = info.reason, info.domain, dict(info.metadata)
            elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
                bad = error_details_pb2.BadRequest()
                detail.Unpack(bad)
                violations = [(v.field, v.description) for v in bad.field_violations]
    return RichError(err.code(), err.details() or "", reason, domain, metadata, violations)


async def expect_error(coro: Any, code: grpc.StatusCode) -> RichError:
    """Await `coro`, which must fail with `code`; return the error's details."""
    try:
        await coro
    except grpc.aio.AioRpcError as err:
        error = rich_error(err)
    else:
        raise AssertionError(f"expected {code}, the call succeeded")
    assert error.code == code, f"expected {code}, got {error.code}: {error.message}"
    return error


def now() -> int:
    return int(time.time())
