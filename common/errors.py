"""One error hierarchy for both services; each error carries the gRPC status it maps to."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

MAX_VIOLATIONS = 20
# Errors travel in response trailers, which clients cap at about 8 KiB (base64 grows them by a
# third): bound what a violation may echo back of the caller's own input.
MAX_FIELD_CHARS = 80
MAX_DESCRIPTION_CHARS = 100
MAX_MESSAGE_CHARS = 300


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def more_violations(count: int) -> str:
    """The tail of a message that names its first violation: "; and 4 more violations"."""
    if count < 1:
        return ""
    return f"; and {count} more violation{'s' if count > 1 else ''}"


@dataclass(frozen=True, slots=True)
class FieldViolation:
    """A field (or CSV line and column) and what is wrong with it."""

    field: str
    description: str


class ServiceError(Exception):
    """An expected failure: it is answered with its own status, never logged as a bug."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL
    reason: str = "INTERNAL"

    def __init__(
        self,
        message: str,
        *,
        reason: str | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        if reason is not None:
            self.reason = reason
        self.metadata = dict(metadata or {})

    def details(self) -> list[any_pb2.Any]:
        """Extra `google.rpc` detail messages beyond ErrorInfo."""
        return []


class ValidationError(ServiceError):
    """Bad input; names each offending field."""

    code = grpc.StatusCode.INVALID_ARGUMENT
    reason = "INVALID_ARGUMENT"

    def __init__(
        self,
        violations: Iterable[FieldViolation] | str,
        *,
        message: str | None = None,
        reason: str | None = None,
        total: int | None = None,
    ) -> None:
        if isinstance(violations, str):
            violations = [FieldViolation("", violations)]
        self.violations = list(violations)
        self.total = total if total is not None else len(self.violations)
        if message is None:
            first = self.violations[0] if self.violations else FieldViolation("", "invalid request")
            message = f"{first.field}: {first.description}" if first.field else first.description
            message = _clip(message, MAX_MESSAGE_CHARS)
            message += more_violations(self.total - 1)
        super().__init__(message, reason=reason)

    @classmethod
    def field(cls, field: str, description: str) -> ValidationError:
        return cls([FieldViolation(field, description)])

    def details(self) -> list[any_pb2.Any]:
        bad = error_details_pb2.BadRequest(
            field_violations=[
                error_details_pb2.BadRequest.FieldViolation(
                    field=_clip(v.field, MAX_FIELD_CHARS),
                    description=_clip(v.description, MAX_DESCRIPTION_CHARS),
                )
                for v in self.violations[:MAX_VIOLATIONS]
            ]
        )
        packed = any_pb2.Any()
        packed.Pack(bad)
        return [packed]


class NotFoundError(ServiceError):
    code = grpc.StatusCode.NOT_FOUND
    reason = "NOT_FOUND"


class AlreadyExistsError(ServiceError):
    code = grpc.StatusCode.ALREADY_EXISTS
    reason = "ALREADY_EXISTS"


class PermissionDeniedError(ServiceError):
    code = grpc.StatusCode.PERMISSION_DENIED
    reason = "PERMISSION_DENIED"


class UnauthenticatedError(ServiceError):
    code = grpc.StatusCode.UNAUTHENTICATED
    reason = "UNAUTHENTICATED"


class UnavailableError(ServiceError):
    code = grpc.StatusCode.UNAVAILABLE
    reason = "UNAVAILABLE"


class FailedPreconditionError(ServiceError):
    """The request is well formed but the stored data does not allow it as asked."""

    code = grpc.StatusCode.FAILED_PRECONDITION
    reason = "FAILED_PRECONDITION"


class ResourceExhaustedError(ServiceError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED
    reason = "RESOURCE_EXHAUSTED"


class InternalError(ServiceError):
    """The answer for a bug: says nothing of what went wrong inside."""

    code = grpc.StatusCode.INTERNAL
    reason = "INTERNAL"


def to_grpc_status(error: ServiceError, domain: str) -> grpc.Status:
    """Build the status, with `google.rpc.ErrorInfo` and any further details, for `error`."""
    info = error_details_pb2.ErrorInfo(reason=error.reason, domain=domain, metadata=error.metadata)
    packed_info = any_pb2.Any()
    packed_info.Pack(info)
    status = status_pb2.Status(
        code=getattr(code_pb2, error.code.name),
        message=error.message,
        details=[packed_info, *error.details()],
    )
    return rpc_status.to_status(status)
