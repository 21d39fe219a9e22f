"""CPU per call of a server span: none, ours (common.tracing) or the one of
opentelemetry-instrumentation-grpc.

Usage: .venv/bin/python -m bench tracing-cost [--calls 3000] [--rounds 9]
One process: a stub unary method behind the services' own error and auth interceptors, on
servers that differ only in the tracing interceptor put first (ours sampling all calls, and one
in ten), called by 32 concurrent callers
over one channel each, in alternating rounds. Spans go through a batch processor to an exporter
that encodes them as OTLP protobuf and drops them, so export work counts. Prints the least and
the median process CPU per call of the rounds (client included: the same for every server) and
each one's least over none's. A second part calls the health service's Watch (a coroutine that
writes) through each.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
import uuid
from collections.abc import Sequence
from typing import Any

import grpc
from grpc import aio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio  # type: ignore[attr-defined]
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.instrumentation.grpc import filters
from opentelemetry.instrumentation.grpc._aio_server import OpenTelemetryAioServerInterceptor
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.sampling import ParentBasedTraceIdRatio

from common.accesslog import AccessLog
from common.auth import TokenVerifier
from common.authn import AuthInterceptor
from common.config import JwtSettings
from common.errormap import ErrorInterceptor
from common.token import mint
from common.tracing import TracingInterceptor

SECRET = "bench-secret-" + "x" * 40
METHOD = "/bench.v1.Stub/Call"
CALLERS = 32


class EncodingExporter(SpanExporter):
    """Encodes each batch as the OTLP exporters do, then drops it; counts the spans."""

    def __init__(self) -> None:
        self.spans = 0

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        encode_spans(spans).SerializeToString()
        self.spans += len(spans)
        return SpanExportResult.SUCCESS


async def _call(request: bytes, context: Any) -> bytes:
    return b""


def _stub_handler() -> grpc.GenericRpcHandler:  # type: ignore[type-arg]
    handler = grpc.unary_unary_rpc_method_handler(_call, lambda b: b, lambda b: b)
    return grpc.method_handlers_generic_handler("bench.v1.Stub", {"Call": handler})


async def start(first: list[Any]) -> tuple[aio.Server, str]:
    jwt = JwtSettings("HS256", SECRET.encode())
    server = aio.server(
        interceptors=[
            *first,
            ErrorInterceptor("bench.v1", AccessLog()),
            AuthInterceptor(TokenVerifier(jwt)),
        ]
    )
    server.add_generic_rpc_handlers((_stub_handler(),))
    health = health_aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, f"127.0.0.1:{port}"


async def cpu_per_call(addr: str, metadata: tuple[tuple[str, str], ...], calls: int) -> float:
    async with aio.insecure_channel(addr) as channel:
        call = channel.unary_unary(METHOD, None, None)
        left = [calls]

        async def caller() -> None:
            while left[0] > 0:
                left[0] -= 1
                await call(b"", metadata=metadata)

        await asyncio.gather(*(caller() for _ in range(CALLERS)))  # warm-up
        left[0] = calls
        started = time.process_time()
        await asyncio.gather(*(caller() for _ in range(CALLERS)))
        return (time.process_time() - started) / calls * 1e6


async def watch_works(addr: str) -> str:
    """Whether a server-streaming coroutine handler (health Watch) still answers."""
    async with aio.insecure_channel(addr) as channel:
        stream = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest())
        try:
            reply = await asyncio.wait_for(stream.read(), 5)
        except grpc.aio.AioRpcError as err:
            return f"fails: {err.code().name} {err.details()}"
        finally:
            stream.cancel()
        return f"answers {health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)}"


async def measure(calls: int, rounds: int) -> None:
    exporter = EncodingExporter()
    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(exporter))
    tracer = provider.get_tracer("bench")
    one_in_ten = TracerProvider(sampler=ParentBasedTraceIdRatio(0.1))
    one_in_ten.add_span_processor(BatchSpanProcessor(exporter))
    token = mint(SECRET, sub=str(uuid.uuid4()), org=str(uuid.uuid4()))
    metadata = (("authorization", f"Bearer {token}"),)
    unfiltered = OpenTelemetryAioServerInterceptor(tracer)  # type: ignore[no-untyped-call]
    no_health = filters.negate(filters.service_name("grpc.health.v1.Health"))
    servers = {
        "none": await start([]),
        "own": await start([TracingInterceptor(tracer)]),
        "own, 1 in 10": await start([TracingInterceptor(one_in_ten.get_tracer("bench"))]),
        "instrumentation": await start(
            [OpenTelemetryAioServerInterceptor(tracer, no_health)]  # type: ignore[no-untyped-call]
        ),
    }
    results: dict[str, list[float]] = {name: [] for name in servers}
    for rnd in range(rounds):
        names = list(servers)
        names = names[rnd % len(names) :] + names[: rnd % len(names)]
        for name in names:
            results[name].append(await cpu_per_call(servers[name][1], metadata, calls))
    # The least of the rounds: on a shared machine the others only add what neighbours took.
    base = min(results["none"])
    print(f"{calls} calls x {rounds} rounds, {CALLERS} callers; CPU per call (client included)")
    for name, values in results.items():
        best = min(values)
        spread = ", ".join(f"{v:.0f}" for v in values)
        print(
            f"  {name:<16} best {best:6.1f} us (+{best - base:5.1f}), "
            f"median {statistics.median(values):6.1f}   rounds: {spread}"
        )
    provider.force_flush()
    one_in_ten.force_flush()
    print(f"  spans exported: {exporter.spans}")
    unfiltered_server = await start([unfiltered])
    servers["instrumentation, unfiltered"] = unfiltered_server
    for name, (_server, addr) in servers.items():
        print(f"  health Watch through {name}: {await watch_works(addr)}")
    for server, _addr in servers.values():
        await server.stop(None)
    provider.shutdown()
    one_in_ten.shutdown()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--calls", type=int, default=3000, help="measured calls per round")
    parser.add_argument("--rounds", type=int, default=9, help="rounds (servers take turns)")


def main(args: argparse.Namespace) -> int:
    asyncio.run(measure(args.calls, args.rounds))
    return 0
