"""A failed call as a person reads it: the status, its reason and each violation on a line."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import cast

import grpc
from google.rpc import error_details_pb2, status_pb2

DETAILS_KEY = "grpc-status-details-bin"


@dataclass
class Failure:
    code: grpc.StatusCode
    message: str
    reason: str = ""
    metadata: dict[str, str] = field(default_factory=dict)
    violations: list[tuple[str, str]] = field(default_factory=list)

    def lines(self) -> list[str]:
        head = f"{self.code.name}"
        if self.reason and self.reason != self.code.name:
            head += f" ({self.reason})"
        out = [f"{head}: {self.message}" if self.message else head]
        out += [f"  {f}: {d}" if f else f"  {d}" for f, d in self.violations]
        return out


def failure(error: grpc.aio.AioRpcError) -> Failure:
    """Decode `google.rpc.Status` from the trailers: ErrorInfo and BadRequest when present."""
    result = Failure(error.code(), error.details() or "")
    trailers = cast("Iterable[tuple[str, str | bytes]]", error.trailing_metadata() or ())
    for key, value in trailers:
        if key != DETAILS_KEY or not isinstance(value, bytes):
            continue
        status = status_pb2.Status.FromString(value)
        for detail in status.details:
            info, bad = error_details_pb2.ErrorInfo(), error_details_pb2.BadRequest()
            if detail.Unpack(info):
                result.reason, result.metadata = info.reason, dict(info.metadata)
            elif detail.Unpack(bad):
                result.violations = [(v.field, v.description) for v in bad.field_violations]
    return result
