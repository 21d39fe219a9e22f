"""Client guidance: the service config (deadlines, retries) callers should use, and `channel()`.

`python -m common.client` prints the service config as JSON for clients in other languages
(grpc-js `grpc.service_config` channel option, grpc-go `WithDefaultServiceConfig`, ...)."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from typing import Any

import grpc
from grpc import aio

# The contract's RPCs. Reads are safe to repeat; writes are not retried, because a write the
# server applied but whose answer was lost must not be applied twice (Create would duplicate,
# Import would re-insert, Delete would answer NOT_FOUND the second time).
SERVICES: dict[str, dict[str, Sequence[str]]] = {
    "progress.v1.UserProgressService": {
        "read": ("ListUserProgress",),
        "export": ("ExportUserProgressCsv",),
        "import": ("ImportUserProgressCsv", "ImportUserProgressCsvWithProgress"),
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


def _names(service: str, methods: Sequence[str]) -> list[dict[str, str]]:
    return [{"service": service, "method": m} for m in methods]


def service_config() -> dict[str, Any]:
    """gRPC service config: per-method deadlines, retries on UNAVAILABLE for reads only, and
    round robin over every address the target resolves to (the replicas behind one DNS name;
    the default, pick_first, would send every call of a channel to one of them)."""
    reads = [n for s, m in SERVICES.items() for n in _names(s, m["read"])]
    exports = [n for s, m in SERVICES.items() for n in _names(s, m["export"])]
    imports = [n for s, m in SERVICES.items() for n in _names(s, m["import"])]
    return {
        "loadBalancingConfig": [{"round_robin": {}}],
        "methodConfig": [
            {"name": [{"service": s} for s in SERVICES], "timeout": WRITE_TIMEOUT},
            {"name": reads, "timeout": READ_TIMEOUT, "retryPolicy": RETRY_ON_UNAVAILABLE},
            {"name": exports, "timeout": CSV_TIMEOUT, "retryPolicy": RETRY_ON_UNAVAILABLE},
            {"name": imports, "timeout": CSV_TIMEOUT},
            {"name": [{"service": HEALTH}], "timeout": "2s", "retryPolicy": RETRY_ON_UNAVAILABLE},
        ],
        # Retries pause while most recent calls fail, so they cannot pile onto a struggling server.
        "retryThrottling": {"maxTokens": 10, "tokenRatio": 0.1},
    }


def channel(
    target: str,
    credentials: grpc.ChannelCredentials | None = None,
    *,
    options: Sequence[tuple[str, Any]] = (),
    config: dict[str, Any] | None = None,
) -> aio.Channel:
    """An asyncio channel carrying the service config; TLS when `credentials` are given."""
    opts = [
        ("grpc.service_config", json.dumps(service_config() if config is None else config)),
        ("grpc.enable_retries", 1),
        *options,
    ]
    if credentials is None:
        return aio.insecure_channel(target, options=opts)
    return aio.secure_channel(target, credentials, options=opts)


if __name__ == "__main__":
    json.dump(service_config(), sys.stdout, indent=2)
    sys.stdout.write("\n")
