"""Client guidance: the service config (balancing, health, deadlines, retries) and `channel()`.

`python -m common.client [--request-ids]` prints the service config as JSON for clients in
other languages (grpc-js `grpc.service_config` channel option, grpc-go
`WithDefaultServiceConfig`, ...).

Two configs, because a service config names methods and cannot look inside a request:
- the default retries reads only. A write the server applied but whose answer was lost must
  not be applied twice: Create would duplicate, Delete would answer NOT_FOUND the second time.
- `request_ids=True` also retries the writes that take a request id (the `request_id` field,
  AIP-155, or `request-id` metadata on the CSV imports), whose replay the server answers with
  the stored response. Use it only in a client that sends one on every such write: a new UUID
  per operation, the same one on each attempt of it (gRPC's retries resend the same message).
  `channel(..., request_ids=True)` does that itself: its interceptors give every such write
  sent without an id a fresh UUID4, once per call, below which gRPC's retries resend it.
  A caller that retries an operation itself (after a deadline, or a restart) sets the id on
  the request, and sends the same one again.
"""

from __future__ import annotations

import argparse
import json
import sys
import uuid
from collections.abc import AsyncIterable, Callable, Iterable, Sequence
from typing import Any

import grpc
from grpc import aio

# The contract's RPCs by kind. Those not listed (DeleteUserProgressByItem) are writes without
# a request id: never retried.
SERVICES: dict[str, dict[str, Sequence[str]]] = {
    "progress.v1.UserProgressService": {
        "read": ("ListUserProgress",),
        "export": ("ExportUserProgressCsv",),
        "import": ("ImportUserProgressCsv", "ImportUserProgressCsvWithProgress"),
        "write": ("UpsertUserProgress",),
    },
    "academic_years.v1.AcademicYearsService": {
        "read": (
            "GetAcademicYear",
            "ListAcademicYears",
            "CountAcademicYears",
            "AutocompleteAcademicYears",
        ),
        "export": ("ExportAcademicYearsCsv",),
        "import": ("ImportAcademicYearsCsv", "ImportAcademicYearsCsvWithProgress"),
        "write": (
            "CreateAcademicYear",
            "UpdateAcademicYear",
            "DeleteAcademicYear",
            "BatchDeleteAcademicYears",
        ),
    },
}
HEALTH = "grpc.health.v1.Health"

WRITE_TIMEOUT = "15s"  # every method not listed below: Upsert, Create, Update, Delete, ...
READ_TIMEOUT = "10s"
CSV_TIMEOUT = "300s"  # whole files stream through these
RETRY_ON_UNAVAILABLE = {
    "maxAttempts": 4,
    "initialBackoff": "0.1s",
    "maxBackoff": "2s",
    "backoffMultiplier": 2,
    "retryableStatusCodes": ["UNAVAILABLE"],
}
# Retries pause while more than about one attempt in eleven fails (each failure costs a token,
# each success returns 0.1; below half of maxTokens no retry is sent), so they cannot pile onto
# a struggling server. The bucket is large enough that a burst of failures as wide as a busy
# client's calls in flight (a database restart fails them all at once) is still retried.
RETRY_THROTTLING = {"maxTokens": 100, "tokenRatio": 0.1}
DNS_MIN_SECONDS = 2


def _names(kind: str) -> list[dict[str, str]]:
    return [{"service": s, "method": m} for s, kinds in SERVICES.items() for m in kinds[kind]]


def service_config(*, request_ids: bool = False) -> dict[str, Any]:
    """gRPC service config: round robin over every address of the target, skipping servers
    whose health is not SERVING (a draining replica says so first); per-method deadlines;
    retries on UNAVAILABLE for reads, and with `request_ids` for writes that carry one."""
    retry_writes = {"retryPolicy": RETRY_ON_UNAVAILABLE} if request_ids else {}
    method_config: list[dict[str, Any]] = [
        {"name": [{"service": s} for s in SERVICES], "timeout": WRITE_TIMEOUT},
        {"name": _names("read"), "timeout": READ_TIMEOUT, "retryPolicy": RETRY_ON_UNAVAILABLE},
        {"name": _names("export"), "timeout": CSV_TIMEOUT, "retryPolicy": RETRY_ON_UNAVAILABLE},
        {"name": _names("import"), "timeout": CSV_TIMEOUT, **retry_writes},
        {"name": [{"service": HEALTH}], "timeout": "2s", "retryPolicy": RETRY_ON_UNAVAILABLE},
    ]
    if request_ids:
        method_config.append({"name": _names("write"), "timeout": WRITE_TIMEOUT, **retry_writes})
    return {
        "loadBalancingConfig": [{"round_robin": {}}],
        # "" is the whole server: both services set it, and a draining one turns it first.
        "healthCheckConfig": {"serviceName": ""},
        "methodConfig": method_config,
        "retryThrottling": RETRY_THROTTLING,
    }


def _method(details: aio.ClientCallDetails) -> str:
    method = details.method
    return method.decode() if isinstance(method, bytes) else method


def _paths(kind: str) -> frozenset[str]:
    return frozenset(f"/{n['service']}/{n['method']}" for n in _names(kind))


# The methods that take a request id: a field of the request, or metadata of a stream.
WRITE_PATHS, IMPORT_PATHS = _paths("write"), _paths("import")


def _lacks_id(request: Any) -> bool:
    """A message whose request_id is empty (a raw call's bytes have none to fill in)."""
    return getattr(request, "request_id", None) == ""


class _UnaryRequestIds(aio.UnaryUnaryClientInterceptor):  # type: ignore[type-arg]
    """A write whose `request_id` is empty goes out with a fresh one (the caller's message is
    copied, not changed: it may be sent again as another operation)."""

    async def intercept_unary_unary(
        self, continuation: Callable[..., Any], details: aio.ClientCallDetails, request: Any
    ) -> Any:
        if _method(details) in WRITE_PATHS and _lacks_id(request):
            sent = type(request)()
            sent.CopyFrom(request)
            sent.request_id = str(uuid.uuid4())
            request = sent
        return await continuation(details, request)


def _with_request_id(details: aio.ClientCallDetails) -> aio.ClientCallDetails:
    """An import's call details with `request-id` metadata, unless it carries one."""
    metadata = tuple(details.metadata or ())
    if _method(details) not in IMPORT_PATHS or any(key == "request-id" for key, _ in metadata):
        return details
    with_id = aio.Metadata.from_tuple((*metadata, ("request-id", str(uuid.uuid4()))))
    return aio.ClientCallDetails(
        details.method, details.timeout, with_id, details.credentials, details.wait_for_ready
    )


async def _import_with_id(
    self: Any,
    continuation: Callable[..., Any],
    details: aio.ClientCallDetails,
    requests: AsyncIterable[Any] | Iterable[Any],
) -> Any:
    return await continuation(_with_request_id(details), requests)


class _StreamRequestIds(aio.StreamUnaryClientInterceptor):  # type: ignore[type-arg]
    """An import without `request-id` metadata goes out with a fresh one."""

    intercept_stream_unary = _import_with_id  # type: ignore[assignment]


class _WatchedRequestIds(aio.StreamStreamClientInterceptor):  # type: ignore[type-arg]
    """The same for the imports that report their progress (gRPC takes one interceptor class
    per kind of call)."""

    intercept_stream_stream = _import_with_id  # type: ignore[assignment]


def request_id_interceptors() -> list[Any]:
    """Interceptors that give each write taking a request id, sent without one, a new UUID4
    once per call, so that every attempt gRPC makes of it carries the same id."""
    return [_UnaryRequestIds(), _StreamRequestIds(), _WatchedRequestIds()]


def channel(
    target: str,
    credentials: grpc.ChannelCredentials | None = None,
    *,
    options: Sequence[tuple[str, Any]] = (),
    config: dict[str, Any] | None = None,
    request_ids: bool = False,
) -> aio.Channel:
    """An asyncio channel carrying the service config; TLS when `credentials` are given.

    `target` may name several replicas, `ipv4:10.0.0.1:50051,10.0.0.2:50051`, or a DNS name
    that resolves to each of them (`dns:///progress.school.svc:50051`, e.g. a headless
    Kubernetes Service); calls are spread over those that are up and SERVING.

    `request_ids`: the config that retries writes too, and interceptors that give each write
    sent without a request id a new one (`request_id_interceptors`)."""
    chosen = service_config(request_ids=request_ids) if config is None else config
    opts = [
        ("grpc.service_config", json.dumps(chosen)),
        ("grpc.enable_retries", 1),
        # A DNS target is looked up again when a connection to it closes, as a replica's does
        # when it is replaced; by default no sooner than 30 s after the last lookup, which a
        # rolling restart outpaces (new replicas come up on new addresses).
        ("grpc.dns_min_time_between_resolutions_ms", DNS_MIN_SECONDS * 1000),
        *options,
    ]
    interceptors = request_id_interceptors() if request_ids else None
    if credentials is None:
        return aio.insecure_channel(target, options=opts, interceptors=interceptors)
    return aio.secure_channel(target, credentials, options=opts, interceptors=interceptors)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m common.client", description=__doc__)
    parser.add_argument(
        "--request-ids",
        action="store_true",
        help="the config that also retries writes: for clients that send a request id on each",
    )
    args = parser.parse_args(argv)
    json.dump(service_config(request_ids=args.request_ids), sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
