"""Closed-loop load generator: N callers over several channels, a warm-up, then a fixed count."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from grpc import aio

Metadata = tuple[tuple[str, str], ...]


@dataclass(frozen=True, slots=True)
class Call:
    """One pre-serialised request, so the client spends nothing on protobuf while measuring."""

    method: str
    payload: bytes
    metadata: Metadata


@dataclass(frozen=True, slots=True)
class LoadResult:
    requests: int
    errors: dict[str, int]
    seconds: float
    rps: float
    p50_ms: float
    p99_ms: float
    mean_ms: float


def percentile(sorted_values: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile of an already sorted sequence."""
    if not sorted_values:
        return 0.0
    rank = max(0, min(len(sorted_values) - 1, round(fraction * len(sorted_values)) - 1))
    return sorted_values[rank]


class LoadGenerator:
    """Opens `channels` separate connections to `addr`; `run` drives `concurrency` callers."""

    def __init__(self, addr: str, *, channels: int, concurrency: int) -> None:
        self._addr = addr
        self._concurrency = concurrency
        # A local subchannel pool per channel gives each its own TCP connection.
        self._channels = [
            aio.insecure_channel(addr, options=[("grpc.use_local_subchannel_pool", 1)])
            for _ in range(channels)
        ]
        self._callables: dict[tuple[int, str], Any] = {}

    async def __aenter__(self) -> LoadGenerator:
        await asyncio.gather(*(c.channel_ready() for c in self._channels))
        return self

    async def __aexit__(
        self, _t: type[BaseException] | None, _e: BaseException | None, _tb: TracebackType | None
    ) -> None:
        await asyncio.gather(*(c.close(None) for c in self._channels))

    def _callable(self, caller: int, method: str) -> Any:
        key = (caller % len(self._channels), method)
        found = self._callables.get(key)
        if found is None:
            found = self._channels[key[0]].unary_unary(method, None, None)
            self._callables[key] = found
        return found

    async def run(self, calls: Sequence[Call]) -> LoadResult:
        """Issue every call once, `concurrency` at a time; errors are counted by status code."""
        latencies: list[float] = []
        errors: Counter[str] = Counter()
        next_index = itertools.count()
        total = len(calls)

        async def caller(number: int) -> None:
            while (i := next(next_index)) < total:
                call = calls[i]
                stub = self._callable(number, call.method)
                started = time.perf_counter()
                try:
                    await stub(call.payload, metadata=call.metadata)
                except aio.AioRpcError as exc:
                    errors[exc.code().name] += 1
                latencies.append(time.perf_counter() - started)

        started = time.perf_counter()
        await asyncio.gather(*(caller(n) for n in range(self._concurrency)))
        seconds = time.perf_counter() - started
        latencies.sort()
        return LoadResult(
            requests=total,
            errors=dict(errors),
            seconds=seconds,
            rps=total / seconds if seconds else 0.0,
            p50_ms=percentile(latencies, 0.50) * 1000,
            p99_ms=percentile(latencies, 0.99) * 1000,
            mean_ms=(sum(latencies) / len(latencies) * 1000) if latencies else 0.0,
        )


@dataclass
class Record:
    """One target's result for one case in one round, as results.json stores it."""

    case: str
    target: str
    round: int
    requests: int
    errors: dict[str, int]
    rps: float
    p50_ms: float
    p99_ms: float
    mean_ms: float
    server_cpu_s: float
    server_cpu_us_per_req: float
    client_cpu_s: float
    # Most PostgreSQL connections one process of the target held during the round (from
    # pg_stat_activity's application_name, which the services set; None for targets that
    # do not name themselves).
    db_connections: int | None = None
