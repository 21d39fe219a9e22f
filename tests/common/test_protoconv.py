"""`timestamp` agrees with protobuf's own `FromDatetime` for aware, naive and pre-epoch values."""

from __future__ import annotations

import datetime as dt

import pytest
from google.protobuf import timestamp_pb2

from common.protoconv import timestamp


@pytest.mark.parametrize(
    "value",
    [
        dt.datetime(2026, 11, 24, 5, 30, 1, 123456, tzinfo=dt.UTC),
        dt.datetime(1969, 12, 31, 23, 59, 59, 500000, tzinfo=dt.UTC),
        dt.datetime(2020, 1, 1, 12, 0, 0, 1),
        dt.datetime(2020, 6, 1, 8, 0, tzinfo=dt.timezone(dt.timedelta(hours=5, minutes=30))),
    ],
)
def test_timestamp_matches_from_datetime(value: dt.datetime) -> None:
    expected = timestamp_pb2.Timestamp()
    expected.FromDatetime(value)
    assert timestamp(value) == expected


def test_timestamp_of_none_is_none() -> None:
    assert timestamp(None) is None
