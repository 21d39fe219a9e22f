"""The common streaming CSV kit on its own: cells, record boundaries, reader and writer."""

from __future__ import annotations

import csv
import datetime as dt
import io
import logging
import random
from collections.abc import AsyncIterator
from typing import Any

import pytest
from sqlalchemy import text

from common.config import Limits
from common.csvstream import (
    CellError,
    CsvColumn,
    CsvReader,
    boolean,
    date,
    escape_formula,
    int32,
    json_text,
    rechunk,
    stream_csv,
    uuid_text,
)
from common.csvstream.reader import record_boundary
from common.errors import FieldViolation, ResourceExhaustedError, ValidationError
from tests.conftest import Harness

COLUMNS = (
    CsvColumn("id", uuid_text),
    CsvColumn("name", required=True, nullable=False),
    CsvColumn("day", date),
    CsvColumn("flag", boolean),
)


async def pieces(data: bytes, size: int) -> AsyncIterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


async def read_all(
    data: bytes, size: int = 1 << 16, limits: Limits | None = None
) -> tuple[CsvReader, list[tuple[Any, ...]]]:
    reader = CsvReader(pieces(data, size), COLUMNS, limits=limits or Limits(), label="test")
    rows = [row async for batch in reader.rows(batch_rows=3) for row in batch]
    return reader, rows


def test_cells_accept_exactly_their_forms() -> None:
    assert (
        uuid_text("0B6F6A4E-0F0E-4C8A-9A56-1A3C1B0F2A11") == "0b6f6a4e-0f0e-4c8a-9a56-1a3c1b0f2a11"
    )
    assert date("2024-02-29") == dt.date(2024, 2, 29)
    assert [boolean(v) for v in ("TRUE", "false", "1", "0", "True")] == [
        True,
        False,
        True,
        False,
        True,
    ]
    assert int32("-2147483648") == -(2**31) and int32("+7") == 7
    assert json_text('{"a": [1, "x"]}') == '{"a":[1,"x"]}' and json_text("null") is None
    bad = [
        (uuid_text, "0b6f6a4e0f0e4c8a9a561a3c1b0f2a11"),
        (uuid_text, "{0b6f6a4e-0f0e-4c8a-9a56-1a3c1b0f2a11}"),
        (date, "2024-2-29"),
        (date, "20240229"),
        (date, "2023-02-29"),
        (date, "2024-02-29T00:00"),
        (boolean, "yes"),
        (boolean, "t"),
        (int32, "1_000"),
        (int32, "1.0"),
        (int32, "2147483648"),
        (json_text, "Infinity"),
        (json_text, "{'a': 1}"),
    ]
    for parse, value in bad:
        with pytest.raises(CellError):
            parse(value)


def test_record_boundary_is_the_last_newline_outside_quotes() -> None:
    assert record_boundary("a,b\nc,d") == 4
    assert record_boundary('a,"b\nc",d\n') == 10
    assert record_boundary('a,"b\nc') == 0
    assert record_boundary('x\na,"b\nc') == 2
    assert record_boundary('a,"say ""hi""\n",b\nc') == 18
    assert record_boundary("no newline") == 0


@pytest.mark.asyncio
@pytest.mark.parametrize("size", [1, 2, 3, 5, 64, 1 << 16])
async def test_reader_is_the_same_for_every_chunk_size(size: int) -> None:
    rng = random.Random(size)
    alphabet = ["a", "b", ",", '"', "\n", "\r\n", " ", "é", "✓", "😀"]
    names = ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 12))) for _ in range(60)]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")
    writer.writerow(["name", "flag"])
    writer.writerows([name, rng.choice(["true", "0", ""])] for name in names)
    reader, rows = await read_all(("\ufeff" + buffer.getvalue()).encode(), size)
    assert reader.violations == [] and reader.rows_read == 60
    assert [r[3] for r in rows] == names
    assert [r[0] for r in rows] == list(range(60))
    assert reader.header == ("name", "flag")


@pytest.mark.asyncio
async def test_reader_reports_the_first_line_of_a_multi_line_record() -> None:
    data = b'name,day\n"a\nb\nc",2024-01-01\n"d",2024-13-01\n'
    reader, rows = await read_all(data, 4)
    assert rows == [] and reader.rows_read == 2
    with pytest.raises(ValidationError) as raised:
        reader.raise_if_invalid()
    assert [(v.field, v.description) for v in raised.value.violations] == [
        ("line 5: day", "is not a calendar date")
    ]


@pytest.mark.asyncio
async def test_reader_stops_yielding_after_a_violation_but_counts_them_all() -> None:
    lines = [b"name,flag"] + [b"n%d,%s" % (i, b"maybe" if i % 2 else b"1") for i in range(50)]
    reader, rows = await read_all(b"\n".join(lines), 7)
    assert reader.total_violations == 25 and len(reader.violations) == 20
    assert reader.rows_read == 50 and rows == []
    with pytest.raises(ValidationError) as raised:
        reader.raise_if_invalid()
    assert raised.value.total == 25 and "; and 24 more violations" in raised.value.message


@pytest.mark.asyncio
async def test_an_unknown_column_is_answered_with_the_columns_there_are() -> None:
    with pytest.raises(ValidationError) as raised:
        await read_all(b"name,colour\nx,red\n", 64)
    [violation] = raised.value.violations
    assert violation.field == "line 1: colour"
    assert violation.description == "unknown column; the columns are id, name, day, flag"


def test_a_message_counts_the_other_violations_as_violations() -> None:
    one, two, many = (
        ValidationError([FieldViolation(f"f{i}", "bad") for i in range(n)]) for n in (1, 2, 5)
    )
    assert (one.message, two.message) == ("f0: bad", "f0: bad; and 1 more violation")
    assert many.message == "f0: bad; and 4 more violations"
    assert "more)" not in many.message


@pytest.mark.asyncio
async def test_reader_limits_bytes_and_unclosed_quotes() -> None:
    with pytest.raises(ResourceExhaustedError):
        await read_all(b"name\n" + b"x\n" * 100, 10, Limits(csv_max_bytes=50))
    with pytest.raises(ValidationError) as raised:
        await read_all(
            b'name\nok\n"never closed\n' + b"x\n" * 100, 8, Limits(csv_max_record_chars=64)
        )
    assert raised.value.violations[0].field == "line 3"


@pytest.mark.asyncio
async def test_reader_logs_progress(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="csv")
    await read_all(b"name\nx\ny\n")
    [done] = [r for r in caplog.records if r.getMessage() == "csv done"]
    assert done.__dict__["rows"] == 2 and "rows_per_second" in done.__dict__


def test_escape_formula() -> None:
    risky = ["=1", "+1", "-1", "@a", "\tx", "\rx"]
    assert [escape_formula(v) for v in risky] == ["'" + v for v in risky]
    assert [escape_formula(v) for v in ["", "a=1", "'=1", " =1"]] == ["", "a=1", "'=1", " =1"]


@pytest.mark.asyncio
async def test_copy_export_chunks_quotes_and_writes_null_empty(progress: Harness) -> None:
    """COPY's CSV through `stream_csv`: pieces joined to at least `chunk_bytes` (each one far
    under the message limit), RFC 4180 quoting of a quote, comma, CR and LF, NULL as an empty
    cell, the header first."""
    rows = text(
        "SELECT 'name ' || i, NULL, 'q\"uote,' || chr(13) || chr(10), DATE '2024-01-01' + i % 28"
        " FROM generate_series(0, 29999) AS i"
    )
    async with progress.db.unit_of_work(None, lambda *_: None) as uow:
        exported = stream_csv(
            uow.executor, rows, {}, ["a", "b", "c", "d"], label="t", chunk_bytes=4096
        )
        async with exported as stream:
            chunks = [c async for c in stream]
    assert len(chunks) > 3 and all(4096 <= len(c) < 1 << 20 for c in chunks[:-1])
    parsed = list(csv.reader(io.StringIO(b"".join(chunks).decode(), newline="")))
    assert parsed[0] == ["a", "b", "c", "d"]
    assert parsed[1] == ["name 0", "", 'q"uote,\r\n', "2024-01-01"] and len(parsed) == 30001


@pytest.mark.asyncio
async def test_rechunk_joins_small_pieces() -> None:
    async def small() -> AsyncIterator[bytes]:
        for i in range(1000):
            yield b"row %d\n" % i

    chunks = [c async for c in rechunk(small(), label="t", chunk_bytes=1000)]
    assert all(len(c) >= 1000 for c in chunks[:-1]) and len(chunks) < 20
    assert b"".join(chunks).count(b"\n") == 1000
