"""Garbage in: no request, however odd, gets INTERNAL or UNKNOWN or leaves invalid data behind."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import grpc
import pytest
from google.protobuf import json_format, struct_pb2
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from progress.v1 import progress_pb2 as pb
from progress.v1 import progress_pb2_grpc
from sqlalchemy import select

from common.config import Settings
from common.validation import NUL_MESSAGE
from progress_service.tables import user_progress
from tests.conftest import Harness
from tests.support.callers import Caller, expect_error, rich_error

pytestmark = pytest.mark.asyncio

SIGN = "sign_learned"
FUZZ = settings(
    max_examples=15,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
INT32 = st.integers(-(2**31), 2**31 - 1)
AWKWARD = ["", " ", "\x00", "a\x00b", "%", "_", "'", '"', ";--", "\\", "\u202e", "😀", "\ufeff"]
TEXT = st.one_of(
    st.text(max_size=40), st.sampled_from(AWKWARD), st.text(min_size=500, max_size=600)
)
JSON_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(-(2**60), 2**60),
    TEXT,
)
JSON = st.recursive(
    JSON_SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(TEXT, inner, max_size=4),
    max_leaves=12,
)


def stub(h: Harness) -> progress_pb2_grpc.UserProgressServiceStub:
    return progress_pb2_grpc.UserProgressServiceStub(h.channel)


def to_value(data: Any) -> struct_pb2.Value:
    """Built by hand so NaN and infinity (which json_format refuses) reach the server."""
    value = struct_pb2.Value()
    if data is None:
        value.null_value = struct_pb2.NULL_VALUE
    elif isinstance(data, bool):
        value.bool_value = data
    elif isinstance(data, int | float):
        value.number_value = float(data)
    elif isinstance(data, str):
        value.string_value = data
    elif isinstance(data, list):
        value.list_value.SetInParent()
        value.list_value.values.extend(to_value(v) for v in data)
    else:
        value.struct_value.SetInParent()
        for key, child in data.items():
            value.struct_value.fields[key].CopyFrom(to_value(child))
    return value


def as_doubles(data: Any) -> Any:
    """What a protobuf Value can carry: every number is a double."""
    if isinstance(data, int) and not isinstance(data, bool):
        return float(data)
    if isinstance(data, list):
        return [as_doubles(v) for v in data]
    if isinstance(data, dict):
        return {k: as_doubles(v) for k, v in data.items()}
    return data


def has_nul_or_nonfinite(data: Any) -> bool:
    if isinstance(data, str):
        return "\x00" in data
    if isinstance(data, float):
        return not math.isfinite(data)
    if isinstance(data, list):
        return any(has_nul_or_nonfinite(v) for v in data)
    if isinstance(data, dict):
        return any("\x00" in k or has_nul_or_nonfinite(v) for k, v in data.items())
    return False


async def rows_of(h: Harness, caller: Caller) -> list[Any]:
    return list(await h.rows(select(user_progress).where(user_progress.c.userId == caller.sub)))


async def outcome(coro: Any) -> tuple[grpc.StatusCode, Any]:
    try:
        return grpc.StatusCode.OK, await coro
    except grpc.aio.AioRpcError as err:
        error = rich_error(err)
    assert error.code not in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN), error.message
    return error.code, error


def assert_stored_row_valid(row: Any, caller: Caller) -> None:
    assert row["organizationId"] == caller.org and row["userId"] == caller.sub
    assert row["item_id"] == row["item_id"].strip() and row["item_id"]
    assert "\x00" not in row["item_id"] and "\x00" not in (row["value"] or "")
    assert row["progress_type"] in ("sign_learned", "zone_checkin")


@FUZZ
@given(
    ptype=st.one_of(st.sampled_from(["sign_learned", "zone_checkin"]), TEXT),
    item=TEXT,
    value=st.none() | TEXT,
    score=st.none() | INT32,
    metadata=st.none() | JSON,
)
async def test_fuzzed_upsert_is_stored_faithfully_or_refused_by_field(
    progress_harness: Harness,
    ptype: str,
    item: str,
    value: str | None,
    score: int | None,
    metadata: Any,
) -> None:
    caller = Caller()
    data = pb.UserProgressInput(progress_type=ptype, item_id=item, value=value, score=score)
    if metadata is not None:
        data.metadata.CopyFrom(to_value(metadata))
    code, result = await outcome(
        stub(progress_harness).UpsertUserProgress(
            pb.UpsertUserProgressRequest(data=data), metadata=caller.md
        )
    )
    stored = await rows_of(progress_harness, caller)
    valid = (
        ptype in ("sign_learned", "zone_checkin")
        and item.strip()
        and len(item.strip()) <= 512
        and "\x00" not in item + (value or "")
        and not has_nul_or_nonfinite(metadata)
    )
    if not valid:
        assert code == grpc.StatusCode.INVALID_ARGUMENT and result.violations
        assert all(f.startswith("data.") for f, _ in result.violations)
        assert stored == []
        return
    assert code == grpc.StatusCode.OK
    [row] = stored
    assert_stored_row_valid(row, caller)
    assert (row["item_id"], row["value"], row["score"]) == (item.strip(), value, score)
    # jsonb keeps a double past 2**53 as the shortest decimal that reads back as it (an integer):
    # the same double, compared as one.
    assert as_doubles(row["metadata"]) == as_doubles(metadata)
    if metadata is not None:
        assert json_format.MessageToDict(result.metadata) == as_doubles(metadata)


@FUZZ
@given(
    ptype=st.one_of(st.just(SIGN), TEXT),
    item=st.none() | TEXT,
    limit=INT32,
    page=INT32,
)
async def test_fuzzed_list_never_fails_inside_or_leaks(
    progress_harness: Harness, ptype: str, item: str | None, limit: int, page: int
) -> None:
    caller, other = Caller(), Caller()
    for who in (caller, other):
        await stub(progress_harness).UpsertUserProgress(
            pb.UpsertUserProgressRequest(
                data=pb.UserProgressInput(progress_type=SIGN, item_id="x")
            ),
            metadata=who.md,
        )
    request = pb.ListUserProgressRequest(progress_type=ptype, limit=limit, page=page)
    if item is not None:
        request.item_id = item
    code, result = await outcome(
        stub(progress_harness).ListUserProgress(request, metadata=caller.md)
    )
    if code == grpc.StatusCode.OK:
        assert result.count <= 1
        assert all(r.user_id == caller.sub for r in result.rows)
    else:
        assert code == grpc.StatusCode.INVALID_ARGUMENT and result.violations


@FUZZ
@given(ptype=st.one_of(st.just(SIGN), TEXT), item=TEXT)
async def test_fuzzed_delete_touches_nothing_of_others(
    progress_harness: Harness, ptype: str, item: str
) -> None:
    victim, caller = Caller(), Caller()
    await stub(progress_harness).UpsertUserProgress(
        pb.UpsertUserProgressRequest(data=pb.UserProgressInput(progress_type=SIGN, item_id="x")),
        metadata=victim.md,
    )
    code, result = await outcome(
        stub(progress_harness).DeleteUserProgressByItem(
            pb.DeleteUserProgressByItemRequest(progress_type=ptype, item_id=item),
            metadata=caller.md,
        )
    )
    if code == grpc.StatusCode.OK:
        assert result.deleted_count == 0
    else:
        assert code == grpc.StatusCode.INVALID_ARGUMENT and result.violations
    [row] = await rows_of(progress_harness, victim)
    assert row["deletedAt"] is None


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"item_id": "a\x00b"}, "data.item_id"),
        ({"item_id": "a", "value": "v\x00"}, "data.value"),
        ({"item_id": "a", "metadata": struct_pb2.Value(string_value="\x00")}, "data.metadata"),
        ({"item_id": "a", "metadata": to_value({"k\x00": 1})}, "data.metadata"),
        ({"item_id": "a", "metadata": to_value([{"deep": ["\x00"]}])}, "data.metadata"),
    ],
)
async def test_nul_is_invalid_argument_naming_the_field(
    progress: Harness, fields: dict[str, Any], field: str
) -> None:
    caller = Caller()
    err = await expect_error(
        stub(progress).UpsertUserProgress(
            pb.UpsertUserProgressRequest(data=pb.UserProgressInput(progress_type=SIGN, **fields)),
            metadata=caller.md,
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert err.violations == [(field, NUL_MESSAGE)]
    assert await rows_of(progress, caller) == []


@pytest.mark.parametrize("number", [math.nan, math.inf, -math.inf])
async def test_non_finite_metadata_is_invalid_argument(progress: Harness, number: float) -> None:
    data = pb.UserProgressInput(progress_type=SIGN, item_id="a", metadata=to_value({"n": number}))
    err = await expect_error(
        stub(progress).UpsertUserProgress(
            pb.UpsertUserProgressRequest(data=data), metadata=Caller().md
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert [f for f, _ in err.violations] == ["data.metadata"]


def ld(field: int, payload: bytes) -> bytes:
    """A length-delimited protobuf field, encoded by hand to send what no client library would."""
    size, varint = len(payload), bytearray()
    while True:
        byte, size = size & 0x7F, size >> 7
        varint.append(byte | (0x80 if size else 0))
        if not size:
            return bytes([(field << 3) | 2]) + bytes(varint) + payload


def _deep_metadata(depth: int) -> bytes:
    value = ld(3, b"deep")  # Value.string_value
    for _ in range(depth):
        value = ld(6, ld(1, value))  # Value.list_value.values[0]
    return value


RAW_UPSERTS = {
    "lone_surrogate_in_item_id": ld(1, ld(1, b"sign_learned") + ld(2, b"\xed\xa0\x80")),
    "invalid_utf8_in_value": ld(1, ld(1, b"sign_learned") + ld(2, b"a") + ld(3, b"\xff\xfe")),
    "overlong_utf8_in_type": ld(1, ld(1, b"\xc0\xaf") + ld(2, b"a")),
    "corrupt_wire_format": b"\xff\xff\xff\xff",
    "truncated_message": ld(1, ld(1, b"sign_learned"))[:-3],
    "nesting_beyond_the_parser_limit": ld(
        1, ld(1, b"sign_learned") + ld(2, b"a") + ld(5, _deep_metadata(200))
    ),
}


@pytest.mark.parametrize("name", sorted(RAW_UPSERTS))
async def test_undecodable_request_is_invalid_argument(progress: Harness, name: str) -> None:
    caller = Caller()
    raw = progress.channel.unary_unary("/progress.v1.UserProgressService/UpsertUserProgress")
    err = await expect_error(
        raw(RAW_UPSERTS[name], metadata=caller.md), grpc.StatusCode.INVALID_ARGUMENT
    )
    assert err.reason == "MALFORMED_REQUEST" and err.domain == "progress.v1"
    assert await rows_of(progress, caller) == []


@FUZZ
@given(payload=st.binary(max_size=64))
async def test_random_bytes_are_never_internal(progress_harness: Harness, payload: bytes) -> None:
    caller = Caller()
    for method in ("UpsertUserProgress", "ListUserProgress", "DeleteUserProgressByItem"):
        raw = progress_harness.channel.unary_unary(f"/progress.v1.UserProgressService/{method}")
        code, _ = await outcome(raw(payload, metadata=caller.md))
        assert code in (grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT)
    for row in await rows_of(progress_harness, caller):
        assert_stored_row_valid(row, caller)


async def test_message_above_the_size_limit_is_resource_exhausted(progress: Harness) -> None:
    caller = Caller()
    limit = next(f.default for f in dataclasses.fields(Settings) if f.name == "max_message_bytes")
    assert isinstance(limit, int)
    data = pb.UserProgressInput(progress_type=SIGN, item_id="big", value="x" * (limit + 1))
    await expect_error(
        stub(progress).UpsertUserProgress(
            pb.UpsertUserProgressRequest(data=data), metadata=caller.md
        ),
        grpc.StatusCode.RESOURCE_EXHAUSTED,
    )
    assert await rows_of(progress, caller) == []
    # Just below the limit is served: the limit is the transport's, not an accident elsewhere.
    near = pb.ListUserProgressRequest(progress_type=SIGN, item_id="x" * (limit - 1024))
    assert (await stub(progress).ListUserProgress(near, metadata=caller.md)).count == 0
