"""Violations name fields as a REST caller spelled them: the JSON name where it differs.

The REST gateway accepts `start_dateRange`, `createdAtRange`, `organizationId`, ...; a violation
that answered `start_date_range[0]` would name a field that caller never sent. Every request
field whose JSON name differs from its proto name needs a bad-input case below (the first test
fails when one is added without), and each case must come back naming the JSON name and no
proto name anywhere in its field paths."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from academic_years.v1 import academic_years_pb2 as pb
from google.protobuf.descriptor import Descriptor, FieldDescriptor, FileDescriptor
from progress.v1 import progress_pb2, progress_pb2_grpc

from tests.conftest import Harness
from tests.support.academic_years import admin, stub
from tests.support.callers import Caller, expect_error, new_uuid

FILES: tuple[FileDescriptor, ...] = (pb.DESCRIPTOR, progress_pb2.DESCRIPTOR)
PACKAGES = {f.package for f in FILES}


def request_messages() -> Iterator[Descriptor]:
    """Every message a caller can send, nested ones included, in our packages."""
    seen: set[str] = set()
    pending = [m.input_type for f in FILES for s in f.services_by_name.values() for m in s.methods]
    while pending:
        message = pending.pop()
        if message.full_name in seen or message.file.package not in PACKAGES:
            continue
        seen.add(message.full_name)
        yield message
        pending += [f.message_type for f in message.fields if f.message_type is not None]


def renamed_fields() -> dict[tuple[str, str], str]:
    """(message, proto field name) -> JSON name, where the two differ."""
    out = {}
    for message in request_messages():
        for field in message.fields:
            assert isinstance(field, FieldDescriptor)
            if field.json_name != field.name:
                out[(message.full_name, field.name)] = field.json_name
    return out


@dataclass(frozen=True)
class Case:
    rpcs: tuple[str, ...]
    request: Callable[[], Any]
    path: str  # the field path the violation must carry
    caller: Callable[[], Caller] = lambda: admin(org=new_uuid())
    service: str = "academic_years"  # the fixture of the service the RPCs belong to


LIST = ("ListAcademicYears", "CountAcademicYears", "ExportAcademicYearsCsv")
AY = "academic_years.v1"
# Renamed fields no value of which is wrong: there is no bad input to send.
NEVER_INVALID = {
    (f"{AY}.ListAcademicYearsRequest", "skip_count"),  # a bool
    ("progress.v1.ListUserProgressRequest", "skip_count"),
}
CASES = {
    (f"{AY}.AcademicYearInput", "organization_id"): Case(
        ("CreateAcademicYear",),
        lambda: pb.CreateAcademicYearRequest(data=pb.AcademicYearInput(organization_id="x")),
        "data.organizationId",
    ),
    (f"{AY}.ListAcademicYearsRequest", "calendar_start"): Case(
        LIST,
        lambda: pb.ListAcademicYearsRequest(calendar_start="soon", calendar_end="2024-01-01"),
        "calendarStart",
    ),
    (f"{AY}.ListAcademicYearsRequest", "calendar_end"): Case(
        LIST,
        lambda: pb.ListAcademicYearsRequest(calendar_start="2024-01-01", calendar_end="later"),
        "calendarEnd",
    ),
    (f"{AY}.ListAcademicYearsRequest", "start_date_range"): Case(
        LIST,
        lambda: pb.ListAcademicYearsRequest(start_date_range=["2024-1-1"]),
        "start_dateRange[0]",
    ),
    (f"{AY}.ListAcademicYearsRequest", "end_date_range"): Case(
        LIST, lambda: pb.ListAcademicYearsRequest(end_date_range=["", "x"]), "end_dateRange[1]"
    ),
    (f"{AY}.ListAcademicYearsRequest", "created_at_range"): Case(
        LIST,
        lambda: pb.ListAcademicYearsRequest(created_at_range=["yesterday"]),
        "createdAtRange[0]",
    ),
    # List only: Count and Export ignore it.
    (f"{AY}.ListAcademicYearsRequest", "page_token"): Case(
        ("ListAcademicYears",), lambda: pb.ListAcademicYearsRequest(page_token="x"), "pageToken"
    ),
    **{
        (f"{AY}.{name}Request", "request_id"): Case(
            (name,), lambda request=request: request(request_id="not-a-uuid"), "requestId"
        )
        for name, request in (
            ("CreateAcademicYear", pb.CreateAcademicYearRequest),
            ("UpdateAcademicYear", pb.UpdateAcademicYearRequest),
            ("DeleteAcademicYear", pb.DeleteAcademicYearRequest),
            ("BatchDeleteAcademicYears", pb.BatchDeleteAcademicYearsRequest),
        )
    },
    ("progress.v1.UpsertUserProgressRequest", "request_id"): Case(
        ("UpsertUserProgress",),
        lambda: progress_pb2.UpsertUserProgressRequest(request_id="not-a-uuid"),
        "requestId",
        caller=Caller,
        service="progress",
    ),
    ("progress.v1.ListUserProgressRequest", "page_token"): Case(
        ("ListUserProgress",),
        lambda: progress_pb2.ListUserProgressRequest(progress_type="sign_learned", page_token="x"),
        "pageToken",
        caller=Caller,
        service="progress",
    ),
}
# Paths that come from a rule rather than from one bad value.
MORE_CASES = {
    "too many range values": Case(
        LIST, lambda: pb.ListAcademicYearsRequest(end_date_range=["", "", ""]), "end_dateRange"
    ),
    "global caller naming a malformed organization": Case(
        ("CreateAcademicYear",),
        lambda: pb.CreateAcademicYearRequest(
            data=pb.AcademicYearInput(name="x", organization_id="not-a-uuid")
        ),
        "data.organizationId",
        caller=admin,
    ),
}
ALL_CASES = {f"{m.rsplit('.', 1)[1]}.{f}": c for (m, f), c in CASES.items()} | MORE_CASES


def segments(path: str) -> list[str]:
    """`data.organizationId` -> [data, organizationId]; `x[1]` -> [x]."""
    return [re.sub(r"\[[^]]*\]$", "", part) for part in path.split(".")]


def test_every_renamed_request_field_has_a_bad_input_case() -> None:
    renamed = renamed_fields()
    assert renamed, "the contract keeps several JSON names; the walk found none"
    missing = set(renamed) - set(CASES) - NEVER_INVALID
    assert not missing, f"add a bad-input case naming the JSON name of {sorted(missing)}"
    assert set(CASES) | NEVER_INVALID <= set(renamed)
    for key, case in CASES.items():
        assert segments(case.path)[-1] == renamed[key], key


async def _violations(h: Harness, rpc: str, case: Case) -> list[tuple[str, str]]:
    caller = case.caller()
    service: Any = (
        progress_pb2_grpc.UserProgressServiceStub(h.channel)
        if case.service == "progress"
        else stub(h)
    )
    call = getattr(service, rpc)(case.request(), metadata=caller.md)

    async def finish() -> None:
        if rpc.endswith("Csv"):  # server streaming: the error comes with the first read
            async for _ in call:
                pass
        else:
            await call

    error = await expect_error(finish(), grpc.StatusCode.INVALID_ARGUMENT)
    assert error.message.startswith(error.violations[0][0])
    return error.violations


@pytest.mark.asyncio
@pytest.mark.parametrize("name", list(ALL_CASES))
async def test_violations_name_the_json_field_never_the_proto_one(
    academic_years: Harness, progress: Harness, name: str
) -> None:
    case = ALL_CASES[name]
    harness = progress if case.service == "progress" else academic_years
    proto_names = {field for _, field in renamed_fields()}
    for rpc in case.rpcs:
        violations = await _violations(harness, rpc, case)
        paths = [path for path, _ in violations]
        assert case.path in paths, (rpc, paths)
        for path in paths:
            named = set(segments(path)) & proto_names
            assert not named, f"{rpc}: {path!r} names the proto field {named}, not its JSON name"
