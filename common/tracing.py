"""Traces: OpenTelemetry, configured by the standard OTEL_* variables, off unless an exporter is.

Each RPC gets one server span named `package.Service/Method`, parented on the caller's W3C
`traceparent`; each SQL statement and COPY a child (common.db.tracing). When no exporter is
configured there is no tracer provider and nothing runs per call."""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, cast

import grpc
from grpc import aio
from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.propagators.textmap import Getter
from opentelemetry.trace import SpanKind, Status, StatusCode, Tracer

from common.auth import peek_principal
from common.authn import PUBLIC_SERVICES
from common.config import ConfigError
from common.handlers import Around, Context, Handler, WrappingInterceptor, service_of

log = logging.getLogger("tracing")

TRACER_NAME = "school-grpc"
PROTOCOLS = ("grpc", "http/protobuf")
EXPORTERS = ("otlp", "console", "none")

# Codes that mean the server failed: their spans get an ERROR status. The others are the
# caller's mistakes, answered correctly (OpenTelemetry's rule for gRPC server spans).
SERVER_FAULTS = frozenset(
    {
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.UNIMPLEMENTED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DATA_LOSS,
    }
)


class SpanIds(NamedTuple):
    """The span a call ran in, as the access log and the metrics' exemplars name it."""

    trace_id: int
    span_id: int
    sampled: bool

    def hex(self) -> tuple[str, str]:
        return f"{self.trace_id:032x}", f"{self.span_id:016x}"


def current_ids() -> SpanIds | None:
    """The current span's ids, or None outside any span."""
    span_context = trace.get_current_span().get_span_context()
    if not span_context.is_valid:
        return None
    return SpanIds(span_context.trace_id, span_context.span_id, span_context.trace_flags.sampled)


@dataclass(frozen=True)
class Tracing:
    """The tracer the server's spans come from, and the provider to flush when it stops."""

    tracer: Tracer
    provider: Any = None  # an SDK TracerProvider this object owns, shut down with the server

    def interceptor(self) -> aio.ServerInterceptor:  # type: ignore[type-arg]
        return TracingInterceptor(self.tracer)

    def shutdown(self) -> None:
        """Export what is still queued (bounded by OTEL_BSP_EXPORT_TIMEOUT) and stop."""
        if self.provider is not None:
            self.provider.shutdown()


def _opt(env: Mapping[str, str], name: str) -> str | None:
    value = env.get(name, "").strip()
    return value or None


def exporter_names(env: Mapping[str, str]) -> list[str]:
    """The trace exporters the OTEL_* variables ask for; none means tracing is off."""
    if (_opt(env, "OTEL_SDK_DISABLED") or "").lower() == "true":
        return []
    named = _opt(env, "OTEL_TRACES_EXPORTER")
    if named is None:
        endpoint = _opt(env, "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or _opt(
            env, "OTEL_EXPORTER_OTLP_ENDPOINT"
        )
        return ["otlp"] if endpoint else []
    names = [n.strip().lower() for n in named.split(",") if n.strip()]
    unknown = sorted(set(names) - set(EXPORTERS))
    if unknown:
        raise ConfigError(
            f"OTEL_TRACES_EXPORTER {', '.join(unknown)} is not one of {', '.join(EXPORTERS)}"
        )
    return [n for n in names if n != "none"]


def otlp_protocol(env: Mapping[str, str]) -> str:
    protocol = (
        _opt(env, "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
        or _opt(env, "OTEL_EXPORTER_OTLP_PROTOCOL")
        or "grpc"
    )
    if protocol not in PROTOCOLS:
        raise ConfigError(
            f"OTEL_EXPORTER_OTLP_PROTOCOL {protocol!r} is not supported: use grpc or http/protobuf"
        )
    return protocol


def check(env: Mapping[str, str]) -> None:
    """Refuses OTEL_* settings tracing cannot follow, at start-up (a ConfigError)."""
    if "otlp" in exporter_names(env):
        otlp_protocol(env)


def _exporter(name: str, env: Mapping[str, str]) -> Any:
    if name == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        return ConsoleSpanExporter()
    if otlp_protocol(env) == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        return OTLPSpanExporter()
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
        OTLPSpanExporter as HttpExporter,
    )

    return HttpExporter()


def from_env(
    service: str, env: Mapping[str, str] | None = None, *, install_global: bool = True
) -> Tracing | None:
    """Tracing as the OTEL_* variables configure it, or None (off) when they name no
    exporter. The SDK itself reads the rest from the process's environment: endpoint,
    headers, sampler, batch sizes. `install_global` makes it the process's tracer provider."""
    env = os.environ if env is None else env
    names = exporter_names(env)
    if not names:
        return None
    from opentelemetry.sdk.resources import (
        SERVICE_INSTANCE_ID,
        SERVICE_NAME,
        OTELResourceDetector,
        Resource,
    )
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    # OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES override these defaults.
    defaults = {SERVICE_NAME: service, SERVICE_INSTANCE_ID: f"{socket.gethostname()}/{os.getpid()}"}
    resource = Resource.create(defaults).merge(OTELResourceDetector().detect())
    provider = TracerProvider(resource=resource)  # the sampler from OTEL_TRACES_SAMPLER
    for name in names:
        provider.add_span_processor(BatchSpanProcessor(_exporter(name, env)))
    if install_global:
        trace.set_tracer_provider(provider)
    log.info(
        "tracing on",
        extra={
            "exporters": names,
            "protocol": otlp_protocol(env) if "otlp" in names else None,
            "sampler": _opt(env, "OTEL_TRACES_SAMPLER") or "parentbased_always_on",
        },
    )
    return Tracing(provider.get_tracer(TRACER_NAME), provider)


Metadata = Sequence[tuple[str, str | bytes]]


class _MetadataGetter(Getter[Metadata]):
    """Reads propagation fields (`traceparent`, `tracestate`, `baggage`) from gRPC metadata."""

    def get(self, carrier: Metadata, key: str) -> list[str] | None:
        found = [v for k, v in carrier if k == key and isinstance(v, str)]
        return found or None

    def keys(self, carrier: Metadata) -> list[str]:
        return [k for k, _ in carrier]


_GETTER = _MetadataGetter()


class TracingInterceptor(WrappingInterceptor):
    """One server span per call, current while the call runs, so the access line, the
    metrics and the database spans find it. Health and reflection are not traced: probes
    every few seconds would bury the calls someone is looking for."""

    def __init__(self, tracer: Tracer) -> None:
        super().__init__()
        self._tracer = tracer

    def around(self, method: str, handler: Handler) -> Around | None:
        if service_of(method) in PUBLIC_SERVICES:
            return None
        return _Traced(self._tracer, method)


class _Traced(Around):
    """One method's calls, each in a server span; its name and fixed attributes built once."""

    def __init__(self, tracer: Tracer, method: str) -> None:
        self._tracer = tracer
        self._name = method.lstrip("/")
        service, _, name = self._name.partition("/")
        self._attributes = {"rpc.system": "grpc", "rpc.service": service, "rpc.method": name}
        # The keys the propagators read (OTEL_PROPAGATORS; W3C traceparent by default).
        self._fields = frozenset(propagate.get_global_textmap().fields)

    async def enter(self, context: Context) -> tuple[trace.Span, object]:
        metadata = cast(Metadata, context.invocation_metadata() or ())
        parent = None
        # Extracting costs ~10 us even when there is nothing to extract: look first.
        for key, _ in metadata:
            if key in self._fields:
                parent = propagate.extract(metadata, getter=_GETTER)
                break
        span = self._tracer.start_span(
            self._name, parent, kind=SpanKind.SERVER, attributes=self._attributes
        )
        token = otel_context.attach(trace.set_span_in_context(span, parent))
        return span, token

    def done(self, state: tuple[trace.Span, Any]) -> None:
        span, token = state
        _end(span, grpc.StatusCode.OK)
        otel_context.detach(token)

    async def failed(
        self, state: tuple[trace.Span, Any], context: Context, error: BaseException
    ) -> None:
        span, token = state
        if isinstance(error, aio.AbortError):  # how the error interceptor answers every error
            code = context.code() or grpc.StatusCode.UNKNOWN
        elif isinstance(error, Exception):
            code = grpc.StatusCode.UNKNOWN
        else:
            code = grpc.StatusCode.CANCELLED
        _end(span, code)
        otel_context.detach(token)


def _end(span: trace.Span, code: grpc.StatusCode) -> None:
    if span.is_recording():
        attributes: dict[str, str | int] = {"rpc.grpc.status_code": code.value[0]}
        principal = peek_principal()  # the ids only: never the token or its other claims
        if principal is not None:
            attributes["enduser.id"] = principal.user_id
            if principal.organization_id:
                attributes["app.organization.id"] = principal.organization_id
        if code in SERVER_FAULTS:
            attributes["error.type"] = code.name
            span.set_status(Status(StatusCode.ERROR, code.name))
        span.set_attributes(attributes)
    span.end()


def note(**attributes: str | int) -> None:
    """Attributes of the current span (none when tracing is off or the call not sampled)."""
    span = trace.get_current_span()
    if span.is_recording():
        span.set_attributes(attributes)


def event(name: str, **attributes: str | int) -> None:
    """An event on the current span: progress of a long import or export."""
    span = trace.get_current_span()
    if span.is_recording():
        span.add_event(name, attributes)
