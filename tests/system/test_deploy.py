"""The deployment files agree with the protos: REST routes, JSON names, compose wiring, probes."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from google.api import annotations_pb2, http_pb2
from google.protobuf import descriptor_pb2

from common import client, healthcheck
from tests.conftest import Harness

ROOT = Path(__file__).resolve().parents[2]
DESCRIPTOR_SET = ROOT / "gen" / "descriptor.binpb"
# Proto package -> the REST prefix its routes live under, and its compose service and port.
PACKAGES = {
    "progress.v1": ("/api/user_progress", "progress", 50051),
    "academic_years.v1": ("/api/academic_years", "academic-years", 50052),
}
SERVICES = {
    "progress.v1": "progress.v1.UserProgressService",
    "academic_years.v1": "academic_years.v1.AcademicYearsService",
}
# The contract keeps these JSON spellings of the old DTOs; every other field is lowerCamel.
KEPT_JSON_NAMES = {
    "progress_type": "progress_type",
    "item_id": "item_id",
    "start_date": "start_date",
    "end_date": "end_date",
    "classes_academic_year": "classes_academic_year",
    "timetables_academic_year": "timetables_academic_year",
    "start_date_range": "start_dateRange",
    "end_date_range": "end_dateRange",
}
# The lowerCamel names the contract lists, by the package whose messages must carry them.
CAMEL_NAMES = {
    "progress.v1": {
        "organizationId",
        "campusId",
        "userId",
        "createdAt",
        "updatedAt",
        "deletedCount",
    },
    "academic_years.v1": {
        "organizationId",
        "createdById",
        "updatedById",
        "createdAt",
        "updatedAt",
        "calendarStart",
        "createdAtRange",
        "deletedCount",
        "start_dateRange",
        "end_dateRange",
    },
}
HTTP_BODY = ".google.api.HttpBody"


def our_files() -> list[descriptor_pb2.FileDescriptorProto]:
    # annotations_pb2 is imported above, so google.api.http options parse as an extension.
    assert annotations_pb2.http is not None
    files = descriptor_pb2.FileDescriptorSet.FromString(DESCRIPTOR_SET.read_bytes()).file
    ours = [f for f in files if f.package in PACKAGES]
    assert ours, f"no service protos in {DESCRIPTOR_SET}; run `make protos`"
    return ours


def methods() -> Iterator[tuple[str, str, descriptor_pb2.MethodDescriptorProto]]:
    for file in our_files():
        for service in file.service:
            for method in service.method:
                yield file.package, f"{file.package}.{service.name}", method


def all_fields(
    messages: Any, prefix: str = ""
) -> Iterator[tuple[str, descriptor_pb2.FieldDescriptorProto]]:
    for message in messages:
        for field in message.field:
            yield f"{prefix}{message.name}.{field.name}", field
        yield from all_fields(message.nested_type, f"{prefix}{message.name}.")


def lower_camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part[:1].upper() + part[1:] for part in rest)


def rule_path(rule: http_pb2.HttpRule) -> str:
    return str(getattr(rule, rule.WhichOneof("pattern")))


def test_every_rpc_has_a_rest_route_under_its_prefix() -> None:
    seen = 0
    for package, service, method in methods():
        rule = method.options.Extensions[annotations_pb2.http]
        assert rule.WhichOneof("pattern"), f"{service}/{method.name} has no google.api.http rule"
        prefix = PACKAGES[package][0]
        path = rule_path(rule)
        assert path == prefix or path.startswith(prefix + "/"), (method.name, path)
        if rule.HasField("post") or rule.HasField("put") or rule.HasField("patch"):
            assert rule.body, f"{method.name}: a write route takes a body"
        seen += 1
    assert seen >= 3


def test_no_two_rpcs_share_a_verb_and_path() -> None:
    routes = [
        (rule.WhichOneof("pattern"), re.sub(r"\{[^}]*\}", "{}", rule_path(rule)))
        for _, _, m in methods()
        for rule in [m.options.Extensions[annotations_pb2.http]]
    ]
    assert len(routes) == len(set(routes)), routes


def test_csv_rpcs_stream_http_bodies() -> None:
    for _, _, method in methods():
        if method.input_type == HTTP_BODY:  # import: the raw upload, streamed
            assert method.client_streaming, method.name
            assert method.options.Extensions[annotations_pb2.http].body == "*", method.name
        if method.output_type == HTTP_BODY:  # export: text/csv, streamed
            assert method.server_streaming, method.name
        if method.name.endswith("Csv"):
            assert HTTP_BODY in (method.input_type, method.output_type), method.name


def test_json_names_reproduce_the_old_dtos() -> None:
    for file in our_files():
        names = set()
        for path, field in all_fields(file.message_type):
            expected = KEPT_JSON_NAMES.get(field.name, lower_camel(field.name))
            assert field.json_name == expected, f"{file.name}: {path} is {field.json_name!r}"
            names.add(field.json_name)
        missing = CAMEL_NAMES[file.package] - names
        assert not missing, f"{file.package} lacks JSON names {missing}"


def load_yaml(name: str) -> Any:
    return yaml.safe_load((ROOT / name).read_text())


def transcoder() -> dict[str, Any]:
    [listener] = load_yaml("deploy/envoy.yaml")["static_resources"]["listeners"]
    [manager] = listener["filter_chains"][0]["filters"]
    filters = manager["typed_config"]["http_filters"]
    assert filters[-1]["name"] == "envoy.filters.http.router"
    [config] = [
        f["typed_config"] for f in filters if f["name"] == "envoy.filters.http.grpc_json_transcoder"
    ]
    config["_routes"] = manager["typed_config"]["route_config"]["virtual_hosts"][0]["routes"]
    return dict(config)


def envoy_clusters() -> dict[str, tuple[str, int]]:
    out = {}
    for cluster in load_yaml("deploy/envoy.yaml")["static_resources"]["clusters"]:
        [endpoint] = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"]
        socket = endpoint["endpoint"]["address"]["socket_address"]
        out[cluster["name"]] = (socket["address"], socket["port_value"])
        assert "http2_protocol_options" in str(cluster), f"{cluster['name']} must speak HTTP/2"
        [check] = cluster["health_checks"]
        assert "grpc_health_check" in check
    return out


def test_envoy_transcodes_every_service_to_its_cluster() -> None:
    config, clusters = transcoder(), envoy_clusters()
    assert config["proto_descriptor"] == "/etc/envoy/descriptor.binpb"
    assert config["print_options"]["preserve_proto_field_names"] is False
    assert config["print_options"]["always_print_primitive_fields"] is True
    assert config["convert_grpc_status"] is True
    # Envoy refuses to start when a listed service is missing from the descriptor set.
    assert {service for _, service, _ in methods()} == set(SERVICES.values())
    assert set(config["services"]) == set(SERVICES.values())
    routed = {
        r["match"]["prefix"]: r["route"]["cluster"]
        for r in config["_routes"]
        if "prefix" in r["match"]
    }
    for package, service in SERVICES.items():
        cluster = routed[f"/{service}/"]
        host, port = clusters[cluster]
        assert (host, port) == PACKAGES[package][1:], service


def http_rule(name: str) -> http_pb2.HttpRule:
    [rule] = [m.options.Extensions[annotations_pb2.http] for _, _, m in methods() if m.name == name]
    return rule


def message(full_name: str) -> descriptor_pb2.DescriptorProto:
    package, _, name = full_name.rpartition(".")
    [found] = [
        m for f in our_files() if f.package == package for m in f.message_type if m.name == name
    ]
    return found


def http_filters() -> list[dict[str, Any]]:
    [listener] = load_yaml("deploy/envoy.yaml")["static_resources"]["listeners"]
    [manager] = listener["filter_chains"][0]["filters"]
    return list(manager["typed_config"]["http_filters"])


def lua_script(name: str) -> str:
    [lua] = [f for f in http_filters() if f["name"] == "envoy.filters.http.lua"]
    return str(lua["typed_config"]["source_codes"][name]["inline_string"])


def rest_route(path: str) -> dict[str, Any]:
    [route] = [r for r in transcoder()["_routes"] if r["match"].get("path") == path]
    return dict(route)


def test_old_delete_by_ids_body_reaches_batch_delete() -> None:
    """`POST /api/academic_years/deleteByIds {"data": [ids]}`: `data` sits beside `ids`."""
    rule = http_rule("BatchDeleteAcademicYears")
    assert (rule.post, rule.body) == ("/api/academic_years/deleteByIds", "*")
    fields = {f.name: f for f in message("academic_years.v1.BatchDeleteAcademicYearsRequest").field}
    ids, data = fields["ids"], fields["data"]
    assert (ids.number, ids.json_name) == (1, "ids"), "gRPC callers keep their field"
    assert (data.number, data.json_name) == (2, "data")
    repeated, string = descriptor_pb2.FieldDescriptorProto.LABEL_REPEATED, 9
    assert data.label == ids.label == repeated and data.type == ids.type == string


def test_autocomplete_answers_the_old_bare_array_over_rest() -> None:
    rule = http_rule("AutocompleteAcademicYears")
    assert rule.get == "/api/academic_years/autocomplete"
    # Envoy refuses to start on a response_body that is not a google.api.HttpBody field; the
    # gateway unwraps `items` instead.
    assert not rule.response_body, "Envoy cannot start with response_body on a message field"
    route = rest_route(rule.get)
    assert route["typed_per_filter_config"]["envoy.filters.http.lua"]["name"] == "bare_items"
    script = lua_script("bare_items")
    assert "envoy_on_response" in script and '^{"items":(%[.*%])}$' in script
    assert '~= "200"' in script, "errors keep their google.rpc.Status body"
    [items] = message("academic_years.v1.AutocompleteAcademicYearsResponse").field
    assert (items.name, items.json_name) == ("items", "items")
    assert transcoder()["print_options"]["add_whitespace"] is False  # the shape the script reads


def test_filetype_csv_on_the_list_route_reaches_the_export() -> None:
    route = rest_route("/api/academic_years")
    assert {"name": ":method", "string_match": {"exact": "GET"}} in route["match"]["headers"]
    assert route["match"]["query_parameters"] == [
        {"name": "filetype", "string_match": {"exact": "csv"}}
    ]
    assert route["typed_per_filter_config"]["envoy.filters.http.lua"]["name"] == "csv_export"
    script = lua_script("csv_export")
    assert 'headers:replace(":path", path)' in script and "^filetype=" in script
    export = http_rule("ExportAcademicYearsCsv").get
    assert f'local path = "{export}"' in script, "the script must rewrite to the export route"
    assert http_rule("ListAcademicYears").get == "/api/academic_years"
    names = [f["name"] for f in http_filters()]
    lua, transcoding = (
        names.index("envoy.filters.http.lua"),
        names.index("envoy.filters.http.grpc_json_transcoder"),
    )
    assert lua < transcoding, "the path must be rewritten before the transcoder maps it"


def test_gateway_refuses_unknown_query_parameters_and_methods() -> None:
    config = transcoder()
    # Each of these would win over the rejection and let an unknown parameter through.
    assert config["ignore_unknown_query_parameters"] is False
    assert not config.get("ignored_query_parameters")
    assert not config.get("capture_unknown_query_parameters")
    assert config["request_validation_options"] == {
        "reject_unknown_query_parameters": True,
        "reject_unknown_method": True,
        "reject_binding_body_field_collisions": True,
    }


def test_compose_runs_migrations_then_services_then_the_gateway() -> None:
    compose = load_yaml("docker-compose.yml")["services"]
    assert compose["postgres"]["healthcheck"]["test"]
    served = {name for _, name, _ in PACKAGES.values()}
    for package, (_, name, port) in PACKAGES.items():
        module = name.replace("-", "_") + "_service"
        migrate, service = compose[f"{name}-migrate"], compose[name]
        assert migrate["command"] == ["python", "-m", module, "migrate"]
        assert migrate["depends_on"] == {"postgres": {"condition": "service_healthy"}}
        assert service["command"] == ["python", "-m", module, "serve"]
        assert service["depends_on"] == {
            f"{name}-migrate": {"condition": "service_completed_successfully"}
        }
        env = service["environment"]
        assert env["GRPC_ADDR"] == f"0.0.0.0:{port}"
        # Two roles: migrate as the owner and create the app role; serve as that role, which
        # row-level security applies to, and refuse any other (REQUIRE_RLS).
        owner, app = migrate["environment"]["DATABASE_URL"], env["DATABASE_URL"]
        assert owner.startswith("postgresql://school:${POSTGRES_PASSWORD:?")
        assert app.startswith("postgresql://school_app:${APP_DB_PASSWORD:?")
        assert migrate["environment"]["DATABASE_APP_ROLE"] == "school_app"
        assert migrate["environment"]["DATABASE_APP_PASSWORD"].startswith("${APP_DB_PASSWORD:?")
        assert env["REQUIRE_RLS"] == "1" and "DATABASE_APP_PASSWORD" not in env
        assert env["JWT_SECRET"].startswith("${JWT_SECRET:?"), "secrets come from the environment"
        assert f"{port}:{port}" in service["ports"]
        probe = service["healthcheck"]["test"]
        assert probe[:4] == ["CMD", "python", "-m", "common.healthcheck"]
        assert probe[4:] == ["--service", SERVICES[package]]
    gateway = compose["gateway"]
    assert gateway["build"]["target"] == "gateway"
    assert "8080:8080" in gateway["ports"]
    assert set(gateway["depends_on"]) == served
    assert all(c == {"condition": "service_healthy"} for c in gateway["depends_on"].values())


def test_dockerfile_has_the_stages_compose_builds() -> None:
    text = (ROOT / "deploy" / "Dockerfile").read_text()
    stages = set(re.findall(r"^FROM \S+ AS (\S+)$", text, re.MULTILINE))
    assert {"service", "gateway"} <= stages
    assert "/etc/envoy/descriptor.binpb" in text
    for package in PACKAGES.values():
        assert f"/app/{package[1].replace('-', '_')}_service" in text


def test_service_config_covers_every_rpc() -> None:
    """Each RPC has a deadline; reads retry on UNAVAILABLE, writes never retry."""
    config = client.service_config()
    by_method: dict[tuple[str, str], dict[str, Any]] = {}
    for entry in config["methodConfig"]:
        for name in entry["name"]:
            by_method[(name["service"], name.get("method", ""))] = entry
    for _, service, method in methods():
        entry = by_method.get((service, method.name)) or by_method[(service, "")]
        assert entry["timeout"].endswith("s")
        read = re.match(r"(List|Get|Count|Autocomplete|Export)", method.name)
        retry = entry.get("retryPolicy")
        if read:
            assert retry and retry["retryableStatusCodes"] == ["UNAVAILABLE"], method.name
        else:
            assert retry is None, f"{method.name} is not idempotent and must not be retried"


@pytest.mark.asyncio
async def test_healthcheck_probe_exits_zero_only_when_serving(
    progress: Harness, capsys: pytest.CaptureFixture[str]
) -> None:
    def probe(*args: str) -> int:
        return healthcheck.main(["--addr", progress.target, *args])

    assert await asyncio.to_thread(probe, "--service", "progress.v1.UserProgressService") == 0
    assert await asyncio.to_thread(probe, "--service", "no.such.Service") == 1
    assert "NOT_FOUND" in capsys.readouterr().err
    assert healthcheck._target("0.0.0.0:50051") == "127.0.0.1:50051"
