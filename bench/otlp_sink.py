"""An OTLP/gRPC trace receiver that parses and drops what it is sent, for the tracing variants
of `python -m bench` (a variant's `{sink}` stands for its address): export work is real, and no
collector is needed. Logs the spans received every few seconds and when stopped.

Usage: GRPC_ADDR=127.0.0.1:4317 .venv/bin/python -m bench.otlp_sink
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys

from grpc import aio
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

REPORT_SECONDS = 5.0


class Sink(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self) -> None:
        self.requests = 0
        self.spans = 0

    async def Export(  # the generated name
        self, request: trace_service_pb2.ExportTraceServiceRequest, context: object
    ) -> trace_service_pb2.ExportTraceServiceResponse:
        self.requests += 1
        self.spans += sum(
            len(scope.spans)
            for resource in request.resource_spans
            for scope in resource.scope_spans
        )
        return trace_service_pb2.ExportTraceServiceResponse()

    def report(self) -> None:
        print(f"otlp sink: {self.requests} requests, {self.spans} spans", flush=True)


async def serve(addr: str) -> None:
    sink = Sink()
    server = aio.server()
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(sink, server)  # type: ignore[no-untyped-call]
    server.add_insecure_port(addr)
    await server.start()
    print(f"otlp sink on {addr}", flush=True)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    while not stop.is_set():
        try:
            await asyncio.wait_for(stop.wait(), REPORT_SECONDS)
        except TimeoutError:
            sink.report()
    await server.stop(1.0)
    sink.report()


if __name__ == "__main__":
    asyncio.run(serve(os.environ.get("GRPC_ADDR") or (sys.argv[1:] or ["127.0.0.1:4317"])[0]))
