"""Bounded input: no caller can store what breaks its own reads.

Every stored field has a limit (Settings.limits), a write or CSV import over one is refused by
field, the largest response the limits allow fits the message limit with room (measured on
real protobuf messages), rows stored before the limits are read cut short instead of failing,
and no request of either service, however large or deep, makes a later read fail.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import grpc
import pytest
from academic_years.v1 import academic_years_pb2 as ay
from google.api import httpbody_pb2
from google.protobuf import json_format, struct_pb2, timestamp_pb2
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from progress.v1 import progress_pb2 as pb
from progress.v1 import progress_pb2_grpc
from sqlalchemy import insert

from academic_years_service import limits as ay_limits
from academic_years_service.app import DEFINITION as AY_DEFINITION
from academic_years_service.domain import MAX_NAME_LENGTH
from academic_years_service.tables import academic_years as years
from academic_years_service.tables import classes, organizations, timetables
from common.cli import main as service_main
from common.config import ConfigError, Limits, load_settings
from common.limits import PROTOBUF_MAX_DEPTH, budget, check_responses
from common.pagination import MAX_LIMIT
from common.validation import json_encoded_size
from progress_service import limits as progress_limits
from progress_service.app import DEFINITION as PROGRESS_DEFINITION
from progress_service.tables import metadata as progress_tables
from progress_service.tables import user_progress
from progress_service.validation import MAX_ITEM_ID_LENGTH
from tests.conftest import Harness, start_harness, stop_harness
from tests.support.academic_years import staff
from tests.support.academic_years import stub as ay_stub
from tests.support.callers import SECRET, Caller, expect_error, new_uuid
from tests.support.csv import bodies, collect, csv_bytes

DEFAULTS = Limits()
MESSAGE_LIMIT = 8 * 1024 * 1024
SIGN = "sign_learned"
WIDE = "😀"  # 4 bytes in UTF-8: the widest a character gets
HEADER = ["progress_type", "item_id", "value", "score", "metadata"]


def parse_csv(data: bytes) -> list[list[str]]:
    """Like tests.support.csv's, for fields of any size."""
    limit = csv.field_size_limit(1 << 30)
    try:
        return list(csv.reader(io.StringIO(data.decode(), newline="")))
    finally:
        csv.field_size_limit(limit)


def stub(h: Harness) -> progress_pb2_grpc.UserProgressServiceStub:
    return progress_pb2_grpc.UserProgressServiceStub(h.channel)


def nested(depth: int, leaf: Any = 0) -> Any:
    """`leaf` inside `depth` objects."""
    for _ in range(depth):
        leaf = {"k": leaf}
    return leaf


def metadata_at(max_bytes: int, depth: int) -> Any:
    """JSON `depth` objects deep (less when that alone is too large) whose encoded size is
    `max_bytes` or a few bytes under it."""
    while json_encoded_size(nested(depth, "")) > max_bytes:
        depth -= 1
    low, high = 0, max_bytes
    while low < high:
        middle = (low + high + 1) // 2
        if json_encoded_size(nested(depth, "x" * middle)) <= max_bytes:
            low = middle
        else:
            high = middle - 1
    return nested(depth, "x" * low)


def value(data: Any) -> struct_pb2.Value:
    message = struct_pb2.Value()
    json_format.ParseDict(data, message)
    return message


async def upsert(h: Harness, caller: Caller, **data: Any) -> pb.UserProgress:
    metadata = data.pop("metadata", None)
    message = pb.UserProgressInput(progress_type=SIGN, item_id=data.pop("item_id", "a"), **data)
    if metadata is not None:
        message.metadata.CopyFrom(value(metadata))
    request = pb.UpsertUserProgressRequest(data=message)
    return await stub(h).UpsertUserProgress(request, metadata=caller.md)


async def listing(h: Harness, caller: Caller) -> pb.ListUserProgressResponse:
    request = pb.ListUserProgressRequest(progress_type=SIGN, limit=MAX_LIMIT)
    return await stub(h).ListUserProgress(request, metadata=caller.md)


async def export(h: Harness, caller: Caller) -> list[bytes]:
    call = stub(h).ExportUserProgressCsv(pb.ExportUserProgressCsvRequest(), metadata=caller.md)
    return [message.data async for message in call]


async def stored_count(h: Harness, caller: Caller) -> int:
    rows = await h.rows(user_progress.select().where(user_progress.c.userId == caller.sub))
    return len(rows)


# --- configuration and the rule --------------------------------------------------------------


def test_limits_are_read_from_the_environment() -> None:
    env = {
        "JWT_SECRET": SECRET,
        "PROGRESS_VALUE_MAX_CHARS": "100",
        "PROGRESS_METADATA_MAX_BYTES": "2048",
        "PROGRESS_METADATA_MAX_DEPTH": "4",
        "ACADEMIC_YEARS_GET_MAX_REFERENCES": "50",
    }
    assert load_settings("progress", "127.0.0.1:0", env).limits == Limits(100, 2048, 4, 50)
    assert load_settings("progress", "127.0.0.1:0", {"JWT_SECRET": SECRET}).limits == DEFAULTS
    for bad in ("0", "-3", "lots"):
        with pytest.raises(ConfigError, match="PROGRESS_METADATA_MAX_DEPTH"):
            load_settings(
                "progress", "", {"JWT_SECRET": SECRET, "PROGRESS_METADATA_MAX_DEPTH": bad}
            )


def test_the_default_limits_leave_a_quarter_of_the_message_spare() -> None:
    for definition in (PROGRESS_DEFINITION, AY_DEFINITION):
        for bound in definition.response_bounds(DEFAULTS):
            assert bound.bytes <= budget(MESSAGE_LIMIT) == MESSAGE_LIMIT * 3 // 4, bound
            assert bound.levels <= PROTOBUF_MAX_DEPTH, bound
    [page] = progress_limits.response_bounds(DEFAULTS)
    assert page.bytes == 5_145_611  # about 61% of 8 MiB: the arithmetic in the README


@pytest.mark.parametrize(
    ("limits", "says"),
    [
        (replace(DEFAULTS, progress_value_max_chars=20_000), "PROGRESS_VALUE_MAX_CHARS"),
        (replace(DEFAULTS, progress_metadata_max_bytes=64_000), "PROGRESS_METADATA_MAX_BYTES"),
        (replace(DEFAULTS, progress_metadata_max_depth=33), "nest 102 messages deep"),
        (replace(DEFAULTS, academic_year_max_references=2000), "GetAcademicYear could reach"),
    ],
)
def test_a_limit_that_breaks_the_rule_is_refused_naming_it(limits: Limits, says: str) -> None:
    bounds = [b for d in (PROGRESS_DEFINITION, AY_DEFINITION) for b in d.response_bounds(limits)]
    with pytest.raises(ConfigError, match=says):
        check_responses(bounds, MESSAGE_LIMIT)


@pytest.mark.asyncio
async def test_a_server_refuses_to_start_on_such_limits(pg_url: str) -> None:
    too_wide = replace(DEFAULTS, progress_value_max_chars=100_000)
    with pytest.raises(ConfigError, match="ListUserProgress at limit 100 could reach"):
        await start_harness(PROGRESS_DEFINITION, pg_url, progress_tables, limits=too_wide)


def test_the_command_line_refuses_such_limits_before_anything_else(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("JWT_SECRET", SECRET)
    monkeypatch.setenv("DATABASE_URL", "postgresql://nobody@127.0.0.1:1/none")
    monkeypatch.setenv("PROGRESS_METADATA_MAX_BYTES", str(MESSAGE_LIMIT))
    assert service_main(PROGRESS_DEFINITION, ["serve"]) == 2
    error = capsys.readouterr().err
    assert "configuration error" in error and "PROGRESS_METADATA_MAX_BYTES" in error


def _timestamp() -> timestamp_pb2.Timestamp:
    return timestamp_pb2.Timestamp(seconds=-1, nanos=999_999_999)  # 10 + 5 varint bytes


def worst_progress_row(limits: Limits) -> pb.UserProgress:
    metadata = metadata_at(limits.progress_metadata_max_bytes, limits.progress_metadata_max_depth)
    assert json_encoded_size(metadata) > limits.progress_metadata_max_bytes - 32
    return pb.UserProgress(
        id=new_uuid(),
        progress_type="zone_checkin",
        item_id=WIDE * MAX_ITEM_ID_LENGTH,
        value=WIDE * limits.progress_value_max_chars,
        score=-1,
        metadata=value(metadata),
        organization_id=new_uuid(),
        campus_id=new_uuid(),
        user_id=new_uuid(),
        created_at=_timestamp(),
        updated_at=_timestamp(),
        truncated_fields=list(progress_limits.TRUNCATABLE),
    )


@pytest.mark.parametrize(
    "limits",
    [
        DEFAULTS,
        Limits(progress_value_max_chars=1, progress_metadata_max_bytes=64),
        Limits(progress_value_max_chars=30_000, progress_metadata_max_bytes=20_000),
    ],
    ids=["defaults", "small", "value-heavy"],
)
def test_a_list_page_at_every_maximum_measures_within_the_computed_bound(limits: Limits) -> None:
    row = worst_progress_row(limits)
    page = pb.ListUserProgressResponse(rows=[row] * MAX_LIMIT, count=-1)
    [bound] = progress_limits.response_bounds(limits)
    measured = page.ByteSize()
    assert bound.bytes * 0.999 < measured <= bound.bytes  # the arithmetic is tight and above
    # Decoders accept the deepest metadata in a page too.
    deepest = page.rows[0].metadata
    assert pb.ListUserProgressResponse.FromString(page.SerializeToString()).rows[0].metadata == (
        deepest
    )
    if limits == DEFAULTS:
        assert measured <= budget(MESSAGE_LIMIT)


def _reference() -> ay.Reference:
    return ay.Reference(id=new_uuid(), name=WIDE * MAX_NAME_LENGTH)


def worst_year(references: int) -> ay.AcademicYear:
    return ay.AcademicYear(
        id=new_uuid(),
        name=WIDE * MAX_NAME_LENGTH,
        start_date="9999-12-31",
        end_date="9999-12-31",
        current=True,
        organization_id=new_uuid(),
        created_by_id=new_uuid(),
        updated_by_id=new_uuid(),
        created_at=_timestamp(),
        updated_at=_timestamp(),
        deleted_at=_timestamp(),
        organization=_reference() if references else None,
        classes_academic_year=[_reference() for _ in range(references)],
        timetables_academic_year=[_reference() for _ in range(references)],
        truncated_fields=list(ay_limits.TRUNCATABLE),
    )


def test_academic_years_responses_at_every_maximum_measure_within_their_bounds() -> None:
    get, page, suggestions = ay_limits.response_bounds(DEFAULTS)
    year = worst_year(DEFAULTS.academic_year_max_references)
    assert get.bytes - 100 < year.ByteSize() <= get.bytes <= budget(MESSAGE_LIMIT)
    listed = ay.ListAcademicYearsResponse(rows=[worst_year(0)] * MAX_LIMIT, count=-1)
    assert page.bytes - 100 < listed.ByteSize() <= page.bytes
    items = [ay.AutocompleteItem(id=new_uuid(), label=WIDE * MAX_NAME_LENGTH)] * MAX_LIMIT
    found = ay.AutocompleteAcademicYearsResponse(items=items)
    assert suggestions.bytes - 100 < found.ByteSize() <= suggestions.bytes


JSON = st.recursive(
    st.none() | st.booleans() | st.floats(allow_nan=False) | st.integers() | st.text(),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(), inner, max_size=5),
    max_leaves=30,
)


@settings(max_examples=300, deadline=None, database=None)
@given(data=JSON)
def test_the_encoded_size_is_the_size_protobuf_encodes(data: Any) -> None:
    """The measure the limit and the rule use is exactly what a response carries."""
    if data is None:  # absent: no field at all
        assert json_encoded_size(data) == 0
        return
    try:
        message = value(data)
    except (ValueError, OverflowError):  # json_format refuses infinity, NaN and huge ints
        return
    assert json_encoded_size(data) == message.ByteSize()


# --- writes over a limit -----------------------------------------------------------------


@pytest.mark.asyncio
async def test_a_value_over_its_limit_is_refused_by_field_and_not_stored(progress: Harness) -> None:
    caller, limit = Caller(), DEFAULTS.progress_value_max_chars
    err = await expect_error(
        upsert(progress, caller, value="v" * (limit + 1)), grpc.StatusCode.INVALID_ARGUMENT
    )
    assert err.violations == [("data.value", f"must be at most {limit} characters")]
    assert await stored_count(progress, caller) == 0
    written = await upsert(progress, caller, value=WIDE * limit)  # 4 bytes each: still fine
    assert written.value == WIDE * limit and not written.truncated_fields
    [row] = (await listing(progress, caller)).rows
    assert row.value == WIDE * limit and not row.truncated_fields


@pytest.mark.asyncio
async def test_metadata_over_its_size_is_refused_and_at_it_is_read_back_whole(
    progress: Harness,
) -> None:
    caller, limit = Caller(), DEFAULTS.progress_metadata_max_bytes
    at_limit = metadata_at(limit, 3)
    over = nested(3, at_limit["k"]["k"]["k"] + "xxxxxxxx")
    err = await expect_error(
        upsert(progress, caller, metadata=over), grpc.StatusCode.INVALID_ARGUMENT
    )
    assert err.violations == [("data.metadata", f"must be at most {limit} bytes encoded")]
    assert await stored_count(progress, caller) == 0
    await upsert(progress, caller, metadata=at_limit)
    [row] = (await listing(progress, caller)).rows
    assert json_format.MessageToDict(row.metadata) == at_limit and not row.truncated_fields
    assert row.metadata.ByteSize() == json_encoded_size(at_limit)


@pytest.mark.asyncio
async def test_metadata_nested_too_deep_is_refused(progress: Harness) -> None:
    caller, depth = Caller(), DEFAULTS.progress_metadata_max_depth
    err = await expect_error(
        upsert(progress, caller, metadata=nested(depth + 1)), grpc.StatusCode.INVALID_ARGUMENT
    )
    assert err.violations == [("data.metadata", f"must nest at most {depth} levels deep")]
    await upsert(progress, caller, metadata=[nested(depth - 1)])
    [row] = (await listing(progress, caller)).rows
    assert json_format.MessageToDict(row.metadata) == [nested(depth - 1, 0.0)]


@pytest.mark.asyncio
async def test_the_issue_six_megabytes_of_metadata_and_a_megabyte_value(progress: Harness) -> None:
    caller = Caller()
    err = await expect_error(
        upsert(progress, caller, value="v" * 1_000_000, metadata={"blob": "m" * 6_000_000}),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert {field for field, _ in err.violations} == {"data.value", "data.metadata"}
    assert await stored_count(progress, caller) == 0


@pytest.mark.asyncio
async def test_limits_come_from_the_settings_the_server_is_given(pg_url: str) -> None:
    small = Limits(progress_value_max_chars=8, progress_metadata_max_bytes=32)
    h = await start_harness(PROGRESS_DEFINITION, pg_url, progress_tables, limits=small)
    try:
        caller = Caller()
        err = await expect_error(
            upsert(h, caller, value="123456789", metadata={"k": "x" * 40}),
            grpc.StatusCode.INVALID_ARGUMENT,
        )
        assert err.violations == [
            ("data.value", "must be at most 8 characters"),
            ("data.metadata", "must be at most 32 bytes encoded"),
        ]
        data = csv_bytes([HEADER, [SIGN, "a", "123456789", "", ""]])
        err = await expect_error(
            stub(h).ImportUserProgressCsv(bodies(data), metadata=caller.md),
            grpc.StatusCode.INVALID_ARGUMENT,
        )
        assert err.violations == [("line 2: value", "must be at most 8 characters")]
    finally:
        await stop_harness(h)


@pytest.mark.asyncio
async def test_csv_cells_over_a_limit_are_line_numbered_and_nothing_is_written(
    progress: Harness,
) -> None:
    caller = Caller()
    limits = DEFAULTS
    data = csv_bytes(
        [
            HEADER,
            [SIGN, "fine", "ok", "1", '{"a": 1}'],
            [SIGN, "long", "v" * (limits.progress_value_max_chars + 1), "", ""],
            [SIGN, "big", "", "", json.dumps(["x" * limits.progress_metadata_max_bytes])],
            [SIGN, "deep", "", "", json.dumps(nested(limits.progress_metadata_max_depth + 1))],
            [SIGN, "huge", "", "", "[1" + "0" * 400 + "]"],
            [SIGN, "lone", "", "", '["\\ud800"]'],
        ]
    )
    err = await expect_error(
        stub(progress).ImportUserProgressCsv(bodies(data), metadata=caller.md),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert err.violations == [
        ("line 3: value", f"must be at most {limits.progress_value_max_chars} characters"),
        ("line 4: metadata", f"must be at most {limits.progress_metadata_max_bytes} bytes encoded"),
        ("line 5: metadata", f"must nest at most {limits.progress_metadata_max_depth} levels deep"),
        ("line 6: metadata", "numbers must fit a double"),
        ("line 7: metadata", "must be valid Unicode (no lone surrogates)"),
    ]
    assert await stored_count(progress, caller) == 0


# --- rows stored before the limits ---------------------------------------------------------


def _old_row(caller: Caller, item_id: str, stamp: int, **fields: Any) -> dict[str, Any]:
    when = dt.datetime(2020, 1, 1, tzinfo=dt.UTC) + dt.timedelta(seconds=stamp)
    return {
        "id": new_uuid(),
        "progress_type": SIGN,
        "item_id": item_id,
        "organizationId": caller.org,
        "userId": caller.sub,
        "createdById": caller.sub,
        "createdAt": when,
        "updatedAt": when,
        **fields,
    }


@pytest.mark.asyncio
async def test_old_oversized_rows_are_listed_cut_and_exported_whole(progress: Harness) -> None:
    """The issue's four rows of 6 MB metadata and a 1 MB value, beside rows each past one
    limit: List answers at the largest limit with every row, the excess cut and named."""
    caller, limits = Caller(), DEFAULTS
    blob = {"blob": "m" * 6_000_000}
    rows = [_old_row(caller, f"big{i}", i, value="v" * 1_000_000, metadata=blob) for i in range(4)]
    rows += [
        _old_row(caller, "ab" * 1000, 10, value="fine"),  # compresses under the index limit
        _old_row(caller, "deep", 11, metadata=nested(40)),
        _old_row(caller, "huge", 12, metadata=[10**400]),
        _old_row(caller, "wide", 13, metadata=["x" * limits.progress_metadata_max_bytes]),
        _old_row(caller, "normal", 14, value="ok", metadata={"hand": "left"}),
    ]
    for row in rows:
        await progress.execute(insert(user_progress).values(row))

    page = await listing(progress, caller)
    assert page.count == len(rows) == len(page.rows)
    assert page.ByteSize() <= budget(MESSAGE_LIMIT)
    by_item = {r.item_id: r for r in page.rows}
    for i in range(4):
        big = by_item[f"big{i}"]
        assert big.value == "v" * limits.progress_value_max_chars
        assert not big.HasField("metadata")
        assert list(big.truncated_fields) == ["value", "metadata"]
    long_id = by_item["ab" * (MAX_ITEM_ID_LENGTH // 2)]
    assert (long_id.value, list(long_id.truncated_fields)) == ("fine", ["item_id"])
    for item in ("deep", "huge", "wide"):
        assert not by_item[item].HasField("metadata")
        assert list(by_item[item].truncated_fields) == ["metadata"], item
    normal = by_item["normal"]
    assert json_format.MessageToDict(normal.metadata) == {"hand": "left"}
    assert normal.value == "ok" and not normal.truncated_fields

    chunks = await export(progress, caller)
    assert max(len(c) for c in chunks) <= 1024 * 1024
    exported = {r[1]: r for r in parse_csv(b"".join(chunks))[1:]}
    assert exported["big0"][2] == "v" * 1_000_000
    assert json.loads(exported["big0"][4]) == blob
    assert exported["ab" * 1000][1] == "ab" * 1000


@pytest.mark.asyncio
async def test_old_academic_year_names_and_associations_are_read_cut(
    academic_years: Harness,
) -> None:
    caller = staff()
    limit = DEFAULTS.academic_year_max_references
    long_name = "ab" * 10_000
    org = caller.org
    await academic_years.execute(insert(organizations).values(id=org, name="o" * 5000))
    year_id = new_uuid()
    await academic_years.execute(
        insert(years).values(
            id=year_id,
            name=long_name,
            organizationId=org,
            createdAt=dt.datetime(2020, 1, 1, tzinfo=dt.UTC),
            updatedAt=dt.datetime(2020, 1, 1, tzinfo=dt.UTC),
        )
    )
    many = [{"name": f"class {i:05d}", "academic_yearId": year_id} for i in range(limit + 5)]
    many[0]["name"] = "a" * 3000  # first by name
    await academic_years.execute(insert(classes).values(_references(many, org)))
    few = [{"name": f"timetable {i}", "academic_yearId": year_id} for i in range(3)]
    await academic_years.execute(insert(timetables).values(_references(few, org)))

    year = await ay_stub(academic_years).GetAcademicYear(
        ay.GetAcademicYearRequest(id=year_id), metadata=caller.md
    )
    assert year.name == long_name[:MAX_NAME_LENGTH]
    assert year.organization.name == "o" * MAX_NAME_LENGTH
    assert len(year.classes_academic_year) == limit
    assert year.classes_academic_year[0].name == "a" * MAX_NAME_LENGTH
    assert [t.name for t in year.timetables_academic_year] == [r["name"] for r in few]
    assert list(year.truncated_fields) == ["name", "organization", "classes_academic_year"]

    listed = await ay_stub(academic_years).ListAcademicYears(
        ay.ListAcademicYearsRequest(limit=MAX_LIMIT), metadata=caller.md
    )
    [row] = listed.rows
    assert (row.name, list(row.truncated_fields)) == (long_name[:MAX_NAME_LENGTH], ["name"])
    found = await ay_stub(academic_years).AutocompleteAcademicYears(
        ay.AutocompleteAcademicYearsRequest(query="abab"), metadata=caller.md
    )
    assert [i.label for i in found.items] == [long_name[:MAX_NAME_LENGTH]]
    exported = await collect(
        ay_stub(academic_years).ExportAcademicYearsCsv(
            ay.ListAcademicYearsRequest(), metadata=caller.md
        )
    )
    assert parse_csv(exported)[1][1] == long_name


def _references(rows: list[dict[str, Any]], org: str | None) -> list[dict[str, Any]]:
    return [{"id": new_uuid(), "organizationId": org, **row} for row in rows]


# --- no request makes a later read fail ---------------------------------------------------

PROPERTY = settings(
    max_examples=5,
    deadline=None,
    database=None,
    phases=[Phase.explicit, Phase.generate],  # no shrinking: examples are megabytes
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
    ],
)
# Sizes in bytes: small, at each limit's edge (4-byte characters make a 500-character name
# 2000 bytes), or anything up to most of a message.
_EDGES = [499, 500, 501, 511, 512, 513, 2000, 2048, 4096, 4097, 16_384, 32_768, 32_800]
SIZES = st.one_of(
    st.integers(0, 40),
    st.sampled_from(_EDGES),
    st.integers(0, 100_000),
    st.integers(1024 * 1024, MESSAGE_LIMIT - 512 * 1024),
)
CHARS = st.sampled_from(["a", "é", "€", WIDE, "\x00", ",", '"', "=", "\n"])
TEXT = st.builds(lambda size, char: char * (size // len(char.encode())), SIZES, CHARS)
SMALL_INT = st.integers(-(2**31), 2**31 - 1)
FAILURES = (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN)


@st.composite
def json_shapes(draw: st.DrawFn) -> tuple[str, int, list[Any]]:
    """A container kind, a depth (past what decoders accept) and the innermost items: many
    small ones beside one text of any size."""
    kind = draw(st.sampled_from(["object", "array"]))
    depth = draw(st.sampled_from([0, 1, 15, 16, 17, 32, 33, 48]) | st.integers(0, 48))
    small = draw(st.sampled_from([0, True, None, -1.5, 1e300, 5e-324, 10**400, "s"]))
    return kind, depth, [small] * draw(st.integers(0, 1000)) + [draw(TEXT)]


def fill(target: struct_pb2.Value, shape: tuple[str, int, list[Any]]) -> None:
    """`shape` built in place: a deep Value cannot be copied (copying re-parses it)."""
    kind, depth, items = shape
    for _ in range(depth):
        fields = target.struct_value.fields
        target = fields["k"] if kind == "object" else target.list_value.values.add()
    target.list_value.SetInParent()
    for item in items:
        added = target.list_value.values.add()
        if isinstance(item, str):
            added.string_value = item
        elif isinstance(item, bool):
            added.bool_value = item
        elif item is None:
            added.null_value = struct_pb2.NULL_VALUE
        else:  # a Value holds doubles: 10**400 is a CSV's to send
            added.number_value = min(item, 1e308)


def json_text(shape: tuple[str, int, list[Any]]) -> str:
    kind, depth, items = shape
    inner: Any = items
    for _ in range(depth):
        inner = {"k": inner} if kind == "object" else [inner]
    return json.dumps(inner, ensure_ascii=False)


async def outcome(call: Any) -> grpc.StatusCode:
    try:
        await call
    except grpc.aio.AioRpcError as err:
        return err.code()
    return grpc.StatusCode.OK


async def exported(call: Any) -> grpc.StatusCode:
    try:
        async for _ in call:
            pass
    except grpc.aio.AioRpcError as err:
        return err.code()
    return grpc.StatusCode.OK


async def one_body(data: bytes) -> AsyncIterator[httpbody_pb2.HttpBody]:
    """An upload in one message, as large as a message may be: in many, the service may
    answer (a record past its limit) while the client still sends, which the client library
    reports as its own INTERNAL."""
    yield httpbody_pb2.HttpBody(content_type="text/csv", data=data)


async def wrote(call: Any, request_bytes: int) -> None:
    """A write (or any call) answers, never INTERNAL; RESOURCE_EXHAUSTED only for a request
    over the message limit, which the transport refuses before the service sees it."""
    code = await outcome(call)
    assert code not in FAILURES, code
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        assert request_bytes > MESSAGE_LIMIT - 1024, request_bytes


async def progress_reads_answer(h: Harness, caller: Caller) -> None:
    for progress_type in ("sign_learned", "zone_checkin"):
        request = pb.ListUserProgressRequest(progress_type=progress_type, limit=MAX_LIMIT)
        try:
            page = await stub(h).ListUserProgress(request, metadata=caller.md)
        except grpc.aio.AioRpcError as err:
            raise AssertionError(f"List failed: {err.code()}") from None
        assert page.ByteSize() <= budget(MESSAGE_LIMIT)
    call = stub(h).ExportUserProgressCsv(pb.ExportUserProgressCsvRequest(), metadata=caller.md)
    assert await exported(call) == grpc.StatusCode.OK


PROGRESS_REQUESTS = ["upsert", "list", "delete", "import", "export"]


@pytest.mark.asyncio
@pytest.mark.parametrize("kind", PROGRESS_REQUESTS)
@PROPERTY
@given(data=st.data())
async def test_no_progress_request_makes_a_later_read_fail(
    progress_harness: Harness, kind: str, data: st.DataObject
) -> None:
    h, caller, s = progress_harness, Caller(), stub(progress_harness)
    progress_type = data.draw(st.sampled_from([SIGN, "zone_checkin"]) | TEXT)
    item_id = data.draw(st.sampled_from(["a", " b "]) | TEXT)
    # A write goes in as drawn, then each drawn field alone under a valid type, in two rows:
    # every size and nesting within the limits reaches storage, twice, for one read to carry.
    if kind == "upsert":
        value, score, shape = data.draw(TEXT), data.draw(SMALL_INT), data.draw(json_shapes())
        writes = [
            (progress_type, item_id, value, score, shape),
            *[(SIGN, item, value, None, None) for item in ("v1", "v2")],
            *[(SIGN, item, None, None, shape) for item in ("m1", "m2")],
        ]
        for ptype, item, text, number, nesting in writes:
            request = pb.UpsertUserProgressRequest()
            message = request.data  # filled in place: a deep Value cannot be copied
            message.progress_type, message.item_id = ptype, item
            if text is not None:
                message.value = text
            if number is not None:
                message.score = number
            if nesting is not None:
                fill(message.metadata, nesting)
            await wrote(s.UpsertUserProgress(request, metadata=caller.md), request.ByteSize())
    elif kind == "list":
        request = pb.ListUserProgressRequest(
            progress_type=progress_type, item_id=item_id, limit=data.draw(SMALL_INT)
        )
        await wrote(s.ListUserProgress(request, metadata=caller.md), request.ByteSize())
    elif kind == "delete":
        request = pb.DeleteUserProgressByItemRequest(progress_type=progress_type, item_id=item_id)
        await wrote(s.DeleteUserProgressByItem(request, metadata=caller.md), request.ByteSize())
    elif kind == "import":
        value = data.draw(TEXT)
        score = data.draw(st.sampled_from(["", "7", "-2147483648"]) | TEXT)
        metadata = json_text(data.draw(json_shapes()))
        uploads = [
            [[progress_type, item_id, value, score, metadata]],
            [[SIGN, item, value, "", ""] for item in ("v1", "v2")],
            [[SIGN, item, "", "", metadata] for item in ("m1", "m2")],
        ]
        for rows in uploads:
            upload = csv_bytes([HEADER, *rows])
            call = s.ImportUserProgressCsv(one_body(upload), metadata=caller.md)
            await wrote(call, len(upload))
    else:
        request = pb.ExportUserProgressCsvRequest(progress_type=progress_type)
        assert await exported(s.ExportUserProgressCsv(request, metadata=caller.md)) not in (
            FAILURES
        )
    await progress_reads_answer(h, caller)


async def academic_years_reads_answer(h: Harness, caller: Caller, year_id: str) -> None:
    s = ay_stub(h)
    calls = [
        s.GetAcademicYear(ay.GetAcademicYearRequest(id=year_id), metadata=caller.md),
        s.ListAcademicYears(ay.ListAcademicYearsRequest(limit=MAX_LIMIT), metadata=caller.md),
        s.AutocompleteAcademicYears(
            ay.AutocompleteAcademicYearsRequest(limit=MAX_LIMIT), metadata=caller.md
        ),
    ]
    for call in calls:
        code = await outcome(call)
        assert code in (grpc.StatusCode.OK, grpc.StatusCode.NOT_FOUND), code  # deleted
    export_call = s.ExportAcademicYearsCsv(ay.ListAcademicYearsRequest(), metadata=caller.md)
    assert await exported(export_call) == grpc.StatusCode.OK


AY_REQUESTS = [
    "create",
    "update",
    "delete",
    "batch_delete",
    "get",
    "list",
    "count",
    "autocomplete",
    "import",
    "export",
]


@pytest.mark.asyncio
@pytest.mark.parametrize("kind", AY_REQUESTS)
@PROPERTY
@given(data=st.data())
async def test_no_academic_years_request_makes_a_later_read_fail(
    academic_years_harness: Harness, kind: str, data: st.DataObject
) -> None:
    h, caller, s = academic_years_harness, staff(), ay_stub(academic_years_harness)
    year = await s.CreateAcademicYear(
        ay.CreateAcademicYearRequest(data=ay.AcademicYearInput(name="seed")), metadata=caller.md
    )

    def text() -> str:
        return data.draw(TEXT)

    def year_input() -> ay.AcademicYearInput:
        return ay.AcademicYearInput(
            name=text(), start_date=text(), end_date=text(), organization_id=text()
        )

    def filters() -> ay.ListAcademicYearsRequest:
        return ay.ListAcademicYearsRequest(
            id=text(),
            name=text(),
            calendar_start=text(),
            calendar_end=text(),
            start_date_range=[text(), text()],
            created_at_range=[text()],
            organization=text(),
            field=text(),
            sort=text(),
            limit=data.draw(SMALL_INT),
        )

    request: Any
    if kind == "create":
        request = ay.CreateAcademicYearRequest(data=year_input())
        call = s.CreateAcademicYear(request, metadata=caller.md)
    elif kind == "update":
        request = ay.UpdateAcademicYearRequest(id=year.id, data=year_input())
        call = s.UpdateAcademicYear(request, metadata=caller.md)
    elif kind == "delete":
        request = ay.DeleteAcademicYearRequest(id=data.draw(st.just(year.id) | TEXT))
        call = s.DeleteAcademicYear(request, metadata=caller.md)
    elif kind == "batch_delete":
        ids = [text() for _ in range(data.draw(st.integers(0, 3)))]
        request = ay.BatchDeleteAcademicYearsRequest(ids=ids, data=[text()])
        call = s.BatchDeleteAcademicYears(request, metadata=caller.md)
    elif kind == "get":
        request = ay.GetAcademicYearRequest(id=text())
        call = s.GetAcademicYear(request, metadata=caller.md)
    elif kind in ("list", "count"):
        request = filters()
        method = s.ListAcademicYears if kind == "list" else s.CountAcademicYears
        call = method(request, metadata=caller.md)
    elif kind == "autocomplete":
        request = ay.AutocompleteAcademicYearsRequest(
            query=text(), limit=data.draw(SMALL_INT), offset=data.draw(SMALL_INT)
        )
        call = s.AutocompleteAcademicYears(request, metadata=caller.md)
    elif kind == "import":
        header = ["id", "name", "start_date", "end_date", "current", "importHash"]
        upload = csv_bytes([header, [text() for _ in header], ["", "plain", "", "", "", ""]])
        await wrote(s.ImportAcademicYearsCsv(one_body(upload), metadata=caller.md), len(upload))
        request = None
    else:
        request = filters()
        assert await exported(s.ExportAcademicYearsCsv(request, metadata=caller.md)) not in (
            FAILURES
        )
        request = None
    if request is not None:
        await wrote(call, request.ByteSize())
    await academic_years_reads_answer(h, caller, year.id)
