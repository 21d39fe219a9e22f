"""Traces through a real server: the call's span, parented on the caller's, a child per SQL
statement and COPY, statuses, the access line's and the metrics' links to it, nothing secret
in any attribute; the real OTLP exporters to receivers on loopback; off unless configured."""

from __future__ import annotations

import asyncio
import io
import urllib.request
from collections.abc import AsyncIterator, Iterator
from typing import Any

import asyncpg
import grpc
import pytest
import pytest_asyncio
from google.protobuf import struct_pb2
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from progress.v1 import progress_pb2 as pb
from progress.v1 import progress_pb2_grpc
from prometheus_client.openmetrics.parser import text_string_to_metric_families
from sqlalchemy import text

from common import client
from common.accesslog import REPORT_DELAY
from common.config import ConfigError
from common.db import Database
from common.server import start_server
from common.tracing import Tracing, check, from_env
from tests.conftest import Harness, stop_harness
from tests.conftest import test_settings as settings_for
from tests.support.accesslog import captured_access_log, lines
from tests.support.callers import Caller, expect_error, new_uuid
from tests.support.csv import bodies, collect, csv_bytes
from tests.support.otlp import grpc_receiver, http_receiver

pytestmark = pytest.mark.asyncio

SERVICE = "progress.v1.UserProgressService"
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"


def traceparent(flags: str = "01") -> tuple[str, str]:
    return ("traceparent", f"00-{TRACE_ID}-{PARENT_ID}-{flags}")


class Traced:
    """A progress server that traces into memory, every span kept."""

    def __init__(self, harness: Harness, tracing: Tracing, exporter: InMemorySpanExporter) -> None:
        self.harness = harness
        self.tracing = tracing
        self.exporter = exporter
        self.stub = progress_pb2_grpc.UserProgressServiceStub(harness.channel)

    def spans(self) -> list[ReadableSpan]:
        return list(self.exporter.get_finished_spans())

    async def spans_after(self, calls: int) -> list[ReadableSpan]:
        """Every span, once `calls` server spans have ended (waiting up to 2 s). A refused
        call's span ends just after its status is on the wire (`context.abort` sends it before
        raising), so reading right after the caller's answer could miss that span."""
        for _ in range(100):
            if sum(s.kind == SpanKind.SERVER for s in self.spans()) >= calls:
                break
            await asyncio.sleep(0.02)
        return self.spans()

    def server_span(self, method: str) -> ReadableSpan:
        found = [s for s in self.spans() if s.name == f"{SERVICE}/{method}"]
        assert len(found) == 1, [s.name for s in self.spans()]
        return found[0]

    def children(self, parent: ReadableSpan) -> list[ReadableSpan]:
        return [s for s in self.spans() if s.parent and s.parent.span_id == parent.context.span_id]


def memory_tracing() -> tuple[Tracing, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()  # parent-based, always on
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return Tracing(provider.get_tracer("test"), provider), exporter


async def start_traced(url: str, tracing: Tracing | None, **overrides: Any) -> Harness:
    from progress_service.app import DEFINITION
    from progress_service.tables import metadata

    settings = settings_for(DEFINITION.name, url, **overrides)
    running = await start_server(DEFINITION, settings, tracing=tracing)
    return Harness(running, client.channel(f"127.0.0.1:{running.port}"), metadata)


@pytest_asyncio.fixture(scope="module")
async def traced_server(progress_harness: Harness) -> AsyncIterator[Traced]:
    """On the session's migrated database (the `progress_harness` migrated it), with metrics."""
    tracing, exporter = memory_tracing()
    harness = await start_traced(progress_harness.db.url, tracing, metrics_addr="127.0.0.1:0")
    yield Traced(harness, tracing, exporter)
    await stop_harness(harness)


@pytest_asyncio.fixture
async def traced(traced_server: Traced) -> Traced:
    await traced_server.harness.wipe()
    traced_server.exporter.clear()
    return traced_server


@pytest.fixture
def access_lines() -> Iterator[io.StringIO]:
    with captured_access_log() as buffer:
        yield buffer


async def fresh(buffer: io.StringIO) -> None:
    """Lets calls of earlier tests be reported, and forgets their lines."""
    await reported()
    buffer.seek(0)
    buffer.truncate()


async def reported() -> None:
    await asyncio.sleep(3 * REPORT_DELAY)


def upsert(item: str, value: str, **metadata: Any) -> pb.UpsertUserProgressRequest:
    meta = struct_pb2.Value()
    meta.struct_value.update(metadata)
    data = pb.UserProgressInput(progress_type="sign_learned", item_id=item, value=value)
    data.metadata.CopyFrom(meta)
    return pb.UpsertUserProgressRequest(data=data)


async def test_a_call_is_a_server_span_parented_on_the_callers_traceparent(
    traced: Traced,
) -> None:
    caller = Caller()
    await traced.stub.ListUserProgress(
        pb.ListUserProgressRequest(progress_type="sign_learned"),
        metadata=(*caller.md, traceparent()),
    )
    span = traced.server_span("ListUserProgress")
    assert span.kind == SpanKind.SERVER
    assert f"{span.context.trace_id:032x}" == TRACE_ID
    assert span.parent is not None and span.parent.is_remote
    assert f"{span.parent.span_id:016x}" == PARENT_ID
    assert dict(span.attributes or {}) == {
        "rpc.system": "grpc",
        "rpc.service": SERVICE,
        "rpc.method": "ListUserProgress",
        "rpc.grpc.status_code": 0,
        "enduser.id": caller.sub,
        "app.organization.id": caller.org,
    }
    assert span.status.status_code == StatusCode.UNSET


async def test_a_call_without_traceparent_starts_a_trace(traced: Traced) -> None:
    await traced.stub.ListUserProgress(
        pb.ListUserProgressRequest(progress_type="sign_learned"), metadata=Caller().md
    )
    span = traced.server_span("ListUserProgress")
    assert span.parent is None
    assert span.context.trace_id != int(TRACE_ID, 16)


async def test_each_statement_is_a_child_span_with_its_text_and_no_values(
    traced: Traced,
) -> None:
    caller = Caller()
    await traced.stub.UpsertUserProgress(
        upsert("item-7c1e", "value-55d2", note="metadata-9a0b"), metadata=caller.md
    )
    await traced.stub.ListUserProgress(
        pb.ListUserProgressRequest(progress_type="sign_learned", item_id="item-7c1e"),
        metadata=caller.md,
    )
    write = traced.children(traced.server_span("UpsertUserProgress"))
    read = traced.children(traced.server_span("ListUserProgress"))
    for children in (write, read):
        assert children[0].name == "BEGIN"
        assert all(s.kind == SpanKind.CLIENT for s in children)
        assert all((s.attributes or {}).get("db.system") == "postgresql" for s in children)
        begin = children[0]
        assert "db.statement" not in (begin.attributes or {})  # its text names the tenant
        assert [e.name for e in begin.events] == ["connection acquired"]  # the pool's wait
    assert write[-1].name == "COMMIT"
    assert read[-1].name == "ROLLBACK"
    statements = [s for s in (*write, *read) if "db.statement" in (s.attributes or {})]
    assert {s.name for s in statements} >= {"INSERT user_progress", "SELECT user_progress"}
    for span in statements:
        sql = str((span.attributes or {})["db.statement"])
        assert "$1" in sql
        assert (span.attributes or {})["db.operation"] == span.name.split()[0]
    returned = [(s.attributes or {}).get("db.response.returned_rows") for s in read]
    assert 1 in returned  # the page (the count is a scalar)
    ended = [(s.start_time or 0, s.end_time or 0) for s in read]
    assert ended == sorted(ended)  # one after another, inside the call
    server = traced.server_span("ListUserProgress")
    assert (server.start_time or 0) <= ended[0][0] and ended[-1][1] <= (server.end_time or 0)


async def test_a_failed_statement_is_marked_by_type_and_sqlstate_not_its_message(
    traced: Traced,
) -> None:
    with traced.tracing.tracer.start_as_current_span("a call"):
        async with traced.harness.db.unit_of_work(None, lambda *_: None) as uow:
            with pytest.raises(asyncpg.DataError):
                await uow.executor.scalar(text("SELECT CAST(:v AS uuid)"), {"v": "value-e41f"})
    failed = next(s for s in traced.spans() if s.name == "SELECT")
    assert failed.status.status_code == StatusCode.ERROR
    assert (failed.attributes or {})["error.type"] == "InvalidTextRepresentationError"
    assert (failed.attributes or {})["db.response.status_code"] == "22P02"
    assert "value-e41f" not in everything(traced.spans())


async def test_statuses_of_failed_calls(traced: Traced, postgres_url: str) -> None:
    await expect_error(
        traced.stub.ListUserProgress(pb.ListUserProgressRequest(progress_type="x")),
        grpc.StatusCode.UNAUTHENTICATED,
    )
    await expect_error(
        traced.stub.ListUserProgress(
            pb.ListUserProgressRequest(progress_type="nope"), metadata=Caller().md
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    codes = sorted(
        (s.attributes or {})["rpc.grpc.status_code"]
        for s in await traced.spans_after(2)
        if s.kind == SpanKind.SERVER
    )
    assert codes == [3, 16]
    # The caller's mistakes leave the span's status unset; only the server's own faults are
    # errors (OpenTelemetry's rule for gRPC servers).
    assert all(s.status.status_code == StatusCode.UNSET for s in traced.spans())

    tracing, exporter = memory_tracing()
    # No waiting for the database to come back (DB_WAIT_SECONDS=0): the call is UNAVAILABLE.
    down = await start_traced("postgresql://postgres@127.0.0.1:1/none", tracing, db_wait_seconds=0)
    try:
        stub = progress_pb2_grpc.UserProgressServiceStub(down.channel)
        await expect_error(
            stub.ListUserProgress(
                pb.ListUserProgressRequest(progress_type="sign_learned"), metadata=Caller().md
            ),
            grpc.StatusCode.UNAVAILABLE,
        )
    finally:
        await stop_harness(down)
    # (the client's retry policy may have tried more than once)
    failed = [s for s in exporter.get_finished_spans() if s.kind == SpanKind.SERVER]
    assert failed
    for span in failed:
        assert span.status.status_code == StatusCode.ERROR
        unavailable = grpc.StatusCode.UNAVAILABLE.value[0]
        assert (span.attributes or {})["rpc.grpc.status_code"] == unavailable
        assert (span.attributes or {})["error.type"] == "UNAVAILABLE"


async def test_import_and_export_carry_rows_and_bytes(traced: Traced) -> None:
    caller = Caller()
    rows = [["sign_learned", f"item-{i}", f"v{i}", i, "{}"] for i in range(25)]
    data = csv_bytes([["progress_type", "item_id", "value", "score", "metadata"], *rows])
    await traced.stub.ImportUserProgressCsv(bodies(data, 100), metadata=caller.md)
    exported = await collect(
        traced.stub.ExportUserProgressCsv(pb.ExportUserProgressCsvRequest(), metadata=caller.md)
    )
    imported = traced.server_span("ImportUserProgressCsv")
    assert (imported.attributes or {})["csv.rows"] == 25
    assert (imported.attributes or {})["csv.bytes"] == len(data)
    [copy_in] = [s for s in traced.children(imported) if s.name.startswith("COPY ")]
    assert (copy_in.attributes or {})["db.copy.rows"] == 25
    assert "FROM STDIN" in str((copy_in.attributes or {})["db.statement"])
    export = traced.server_span("ExportUserProgressCsv")
    assert (export.attributes or {})["csv.rows"] == 25
    assert (export.attributes or {})["csv.bytes"] == len(exported)
    [copy_out] = [s for s in traced.children(export) if s.name.startswith("COPY")]
    assert copy_out.name == "COPY user_progress"
    assert (copy_out.attributes or {})["db.copy.rows"] == 25
    header = len(b"progress_type,item_id,value,score,metadata\n")
    assert (copy_out.attributes or {})["db.copy.bytes"] == len(exported) - header


def everything(spans: list[ReadableSpan]) -> str:
    """Every name, attribute, event, link and status text of `spans`, as one text to search."""
    parts: list[str] = []
    for span in spans:
        parts += [span.name, span.status.description or ""]
        parts += [f"{k}={v}" for k, v in (span.attributes or {}).items()]
        for event in span.events:
            parts += [event.name, *(f"{k}={v}" for k, v in (event.attributes or {}).items())]
        for link in span.links:
            parts += [f"{k}={v}" for k, v in (link.attributes or {}).items()]
    return "\n".join(parts)


async def test_nothing_secret_in_any_span(traced: Traced) -> None:
    campus = new_uuid()
    caller = Caller(campus=campus, permissions=["PERM_SECRET_A"], custom_permissions=["PERM_B"])
    token = caller.token()
    secrets = [
        token,
        *token.split("."),  # header, claims, signature
        campus,
        "PERM_SECRET_A",
        "PERM_B",
        "item-5f0c",
        "value-b7d1",
        "metadata-3e9a",
        "csvitem-aa01",
        "csvvalue-bb02",
    ]
    await traced.stub.UpsertUserProgress(
        upsert("item-5f0c", "value-b7d1", note="metadata-3e9a"), metadata=caller.md
    )
    await traced.stub.ListUserProgress(
        pb.ListUserProgressRequest(progress_type="sign_learned", item_id="item-5f0c"),
        metadata=caller.md,
    )
    data = csv_bytes(
        [["progress_type", "item_id", "value"], ["sign_learned", "csvitem-aa01", "csvvalue-bb02"]]
    )
    await traced.stub.ImportUserProgressCsv(bodies(data), metadata=caller.md)
    await collect(
        traced.stub.ExportUserProgressCsv(pb.ExportUserProgressCsvRequest(), metadata=caller.md)
    )
    await expect_error(
        traced.stub.DeleteUserProgressByItem(
            pb.DeleteUserProgressByItemRequest(progress_type="bad-type-c3d4", item_id="x"),
            metadata=caller.md,
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    spans = await traced.spans_after(5)
    assert len([s for s in spans if s.kind == SpanKind.SERVER]) == 5
    text_of_spans = everything(spans)
    assert caller.sub in text_of_spans and str(caller.org) in text_of_spans  # allowed
    for secret in [*secrets, "bad-type-c3d4"]:
        assert secret not in text_of_spans, secret
    assert "set_config" not in text_of_spans  # the BEGIN that names the tenant


async def test_the_access_line_and_the_metrics_name_the_span(
    traced: Traced, access_lines: io.StringIO
) -> None:
    await fresh(access_lines)
    await traced.stub.ListUserProgress(
        pb.ListUserProgressRequest(progress_type="sign_learned"),
        metadata=(*Caller().md, traceparent()),
    )
    await reported()
    span_id = f"{traced.server_span('ListUserProgress').context.span_id:016x}"
    [line] = [x for x in lines(access_lines) if x.get("span_id") == span_id]
    assert line["method"] == f"/{SERVICE}/ListUserProgress"
    assert line["trace_id"] == TRACE_ID
    assert line["trace_sampled"] is True

    url = f"http://127.0.0.1:{traced.harness.running.metrics_port}/metrics"
    request = urllib.request.Request(  # loopback
        url, headers={"Accept": "application/openmetrics-text; version=1.0.0"}
    )

    def fetch() -> str:
        with urllib.request.urlopen(request, timeout=5) as response:  # noqa: S310
            return str(response.read().decode())

    families = text_string_to_metric_families(await asyncio.to_thread(fetch))
    exemplars = {
        (sample.name, sample.exemplar.labels["trace_id"], sample.exemplar.labels["span_id"])
        for family in families
        for sample in family.samples
        if sample.exemplar is not None and sample.labels.get("grpc_method") == "ListUserProgress"
    }
    ids = (TRACE_ID, line["span_id"])
    assert ("grpc_server_handling_seconds_bucket", *ids) in exemplars
    assert ("grpc_server_handled_total", *ids) in exemplars


async def test_a_call_the_caller_did_not_sample_makes_no_spans_but_is_logged(
    traced: Traced, access_lines: io.StringIO
) -> None:
    await fresh(access_lines)
    await traced.stub.ListUserProgress(
        pb.ListUserProgressRequest(progress_type="sign_learned"),
        metadata=(*Caller().md, traceparent(flags="00")),
    )
    await reported()
    assert traced.spans() == []
    [line] = [x for x in lines(access_lines) if x.get("trace_sampled") is False]
    assert line["method"] == f"/{SERVICE}/ListUserProgress"
    assert line["trace_id"] == TRACE_ID


async def test_health_checks_are_not_traced(traced: Traced) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    health = health_pb2_grpc.HealthStub(traced.harness.channel)
    await health.Check(health_pb2.HealthCheckRequest(service=SERVICE))
    watch = health.Watch(health_pb2.HealthCheckRequest(service=SERVICE))
    assert (await watch.read()).status == health_pb2.HealthCheckResponse.SERVING
    watch.cancel()
    assert traced.spans() == []


# Off unless configured.


@pytest.mark.parametrize(
    "env",
    [
        {},
        {"OTEL_SERVICE_NAME": "x", "OTEL_TRACES_SAMPLER": "always_on"},
        {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4317", "OTEL_SDK_DISABLED": "true"},
        {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4317", "OTEL_TRACES_EXPORTER": "none"},
    ],
)
async def test_off_without_an_exporter(env: dict[str, str]) -> None:
    assert from_env("progress", env, install_global=False) is None


async def test_settings_tracing_cannot_follow_are_refused() -> None:
    endpoint = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4317"}
    with pytest.raises(ConfigError, match="http/json"):
        check({**endpoint, "OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"})
    with pytest.raises(ConfigError, match="zipkin"):
        check({"OTEL_TRACES_EXPORTER": "zipkin"})
    check({**endpoint, "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/protobuf"})


async def test_off_there_is_no_span_and_no_trace_id(
    progress: Harness, access_lines: io.StringIO
) -> None:
    assert progress.running.db.spans is None
    await fresh(access_lines)
    assert not isinstance(trace.get_tracer_provider(), TracerProvider)
    await progress_pb2_grpc.UserProgressServiceStub(progress.channel).ListUserProgress(
        pb.ListUserProgressRequest(progress_type="sign_learned"),
        metadata=(*Caller().md, traceparent()),
    )
    await reported()
    [line] = [x for x in lines(access_lines) if x["method"].endswith("/ListUserProgress")]
    assert "trace_id" not in line and "span_id" not in line


# The real exporters, to receivers on loopback.


@pytest.mark.parametrize("protocol", ["grpc", "http/protobuf"])
async def test_spans_reach_an_otlp_receiver(
    protocol: str, progress_harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    receiver = grpc_receiver if protocol == "grpc" else http_receiver
    with receiver() as (endpoint, received):
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint)
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", protocol)
        monkeypatch.setenv("OTEL_SERVICE_NAME", "progress-under-test")
        monkeypatch.setenv("OTEL_TRACES_SAMPLER", "parentbased_always_on")
        tracing = from_env("progress", install_global=False)
        assert tracing is not None
        harness = await start_traced(progress_harness.db.url, tracing)
        try:
            await progress_pb2_grpc.UserProgressServiceStub(harness.channel).ListUserProgress(
                pb.ListUserProgressRequest(progress_type="sign_learned"),
                metadata=(*Caller().md, traceparent()),
            )
        finally:
            await stop_harness(harness)  # flushes the exporter's batch
        spans = received.spans()
    assert received.paths and set(received.paths) == {
        "/opentelemetry.proto.collector.trace.v1.TraceService/Export"
        if protocol == "grpc"
        else "/v1/traces"
    }
    by_name = {span.name: (resource, span) for resource, span in spans}
    resource, server = by_name[f"{SERVICE}/ListUserProgress"]
    assert resource["service.name"] == "progress-under-test"
    assert server.trace_id.hex() == TRACE_ID
    assert server.parent_span_id.hex() == PARENT_ID
    assert {"BEGIN", "SELECT user_progress", "ROLLBACK"} <= set(by_name)
    assert all(span.trace_id.hex() == TRACE_ID for _, span in spans)


async def test_the_service_name_defaults_to_the_services(
    progress_harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("OTEL_SERVICE_NAME", raising=False)
    monkeypatch.delenv("OTEL_RESOURCE_ATTRIBUTES", raising=False)
    env = {"OTEL_TRACES_EXPORTER": "console"}
    tracing = from_env("progress", env, install_global=False)
    assert tracing is not None
    try:
        assert tracing.provider.resource.attributes["service.name"] == "progress"
    finally:
        tracing.shutdown()


async def test_a_database_left_untraced_makes_no_spans() -> None:
    db = Database("postgresql://127.0.0.1/x")
    assert db.spans is None
    assert type(db.unit_of_work(None, lambda *_: None)).__name__ == "UnitOfWork"


async def test_compose_sends_every_services_spans_to_its_jaeger() -> None:
    import yaml

    from tests.conftest import ROOT

    services = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    jaeger = services["jaeger"]
    assert jaeger["image"].startswith("jaegertracing/jaeger:2.")
    assert "receivers.otlp.protocols.grpc.endpoint=0.0.0.0:4317" in jaeger["command"]
    assert "16686:16686" in jaeger["ports"]
    for name in ("progress", "academic-years"):
        env = services[name]["environment"]
        assert env["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://jaeger:4317"
        check(env)  # a protocol the services accept
