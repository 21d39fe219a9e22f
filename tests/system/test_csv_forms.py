"""CSV imports posted as the old UI's `multipart/form-data`, through real servers."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Sequence

import grpc
import pytest
from google.api import httpbody_pb2
from progress.v1 import progress_pb2_grpc
from sqlalchemy import select

from academic_years_service.tables import academic_years as years
from common.csvstream.formdata import form_file
from progress_service.tables import user_progress
from tests.conftest import Harness
from tests.support.academic_years import staff, stub
from tests.support.callers import Caller, expect_error
from tests.support.csv import csv_bytes

pytestmark = pytest.mark.asyncio

BOUNDARY = "----WebKitFormBoundary7MA4YWxkTrZu0gW"
FORM = f"multipart/form-data; boundary={BOUNDARY}"
NEAR_MISS = f"with\r\n--{BOUNDARY[:-1]} inside"
YEARS = csv_bytes(
    [
        ["name", "start_date", "end_date", "current", "importHash"],
        ["2024/25", "2024-09-01", "2025-07-31", "true", "h1"],
        ["2025/26", "2025-09-01", "2026-06-30", "false", "h2"],
        [NEAR_MISS, "", "", "", "h3"],  # a line break and most of the boundary
    ],
    newline="\r\n",
)


def part(name: str, body: bytes, filename: str | None = None, kind: str | None = None) -> bytes:
    disposition = f'form-data; name="{name}"'
    if filename is not None:
        disposition += f'; filename="{filename}"'
    head = f"Content-Disposition: {disposition}\r\n"
    if kind:
        head += f"Content-Type: {kind}\r\n"
    return f"--{BOUNDARY}\r\n{head}\r\n".encode() + body + b"\r\n"


def form(*parts: bytes, close: bool = True) -> bytes:
    return b"".join(parts) + (f"--{BOUNDARY}--\r\n".encode() if close else b"")


def split(data: bytes, cuts: Sequence[int]) -> list[bytes]:
    edges = [0, *sorted(c % len(data) for c in cuts), len(data)]
    return [data[a:b] for a, b in itertools.pairwise(edges)]


async def messages(
    pieces: Sequence[bytes], content_type: str = FORM
) -> AsyncIterator[httpbody_pb2.HttpBody]:
    """The body as a gateway sends it: the content type on the first message only."""
    for i, piece in enumerate(pieces):
        yield httpbody_pb2.HttpBody(content_type=content_type if i == 0 else "", data=piece)


async def stored_years(h: Harness) -> list[tuple[object, ...]]:
    statement = select(years.c.name, years.c.start_date, years.c.current, years.c.importHash)
    return [tuple(r) for r in await h.rows(statement.order_by(years.c.createdAt))]


def old_ui_form() -> bytes:
    return form(
        part("organization", b"ignored: the token says"),
        part("file", YEARS, "academic_years.csv", "application/vnd.ms-excel"),
    )


def awkward_cuts(body: bytes) -> list[list[int]]:
    """Cuts inside the file part's closing delimiter and inside the first boundary, among
    others: each `--boundary` split across two messages."""
    closing = body.rindex(f"\r\n--{BOUNDARY}--".encode())
    file_end = body.rindex(f"\r\n--{BOUNDARY}".encode(), 0, closing - 1)
    return [
        [5, 20],
        [file_end + 1, file_end + 9, closing + 3],
        [body.index(b"\r\n\r\n") + 2, closing + len(BOUNDARY) // 2],
        list(range(1, len(body))),  # one byte per message
    ]


async def test_the_old_ui_form_imports_the_same_years_as_the_raw_file(
    academic_years: Harness,
) -> None:
    body = old_ui_form()
    expected: list[tuple[object, ...]] | None = None
    for cuts in awkward_cuts(body):
        await academic_years.wipe()
        caller = staff()
        summary = await stub(academic_years).ImportAcademicYearsCsv(
            messages(split(body, cuts)), metadata=caller.md
        )
        assert (summary.rows_read, summary.created, summary.skipped) == (3, 3, 0), cuts
        rows = await stored_years(academic_years)
        assert rows[2][0] == NEAR_MISS
        expected = expected or rows
        assert rows == expected
    await academic_years.wipe()
    raw = await stub(academic_years).ImportAcademicYearsCsv(
        messages([YEARS], content_type=""), metadata=staff().md
    )
    assert raw.created == 3 and await stored_years(academic_years) == expected


async def test_a_file_part_under_any_name_or_a_file_field_without_filename(
    academic_years: Harness, progress: Harness
) -> None:
    named = form(part("upload", YEARS, "years.csv"))
    summary = await stub(academic_years).ImportAcademicYearsCsv(
        messages([named]), metadata=staff().md
    )
    assert summary.created == 3
    # `curl -F 'file=<progress.csv'` sends the field without a filename.
    data = csv_bytes([["progress_type", "item_id"], ["sign_learned", "hello"]])
    caller = Caller()
    done = await progress_pb2_grpc.UserProgressServiceStub(progress.channel).ImportUserProgressCsv(
        messages(split(form(part("file", data)), [7, 80])), metadata=caller.md
    )
    assert (done.rows_read, done.created) == (1, 1)
    assert await progress.scalar(select(user_progress.c.item_id)) == "hello"


async def test_csv_errors_in_a_form_name_the_file_line(academic_years: Harness) -> None:
    bad = csv_bytes([["name", "start_date"], ["ok", "2024-09-01"], ["bad", "tomorrow"]])
    error = await expect_error(
        stub(academic_years).ImportAcademicYearsCsv(
            messages([form(part("file", bad, "x.csv"))]), metadata=staff().md
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert error.violations[0][0] == "line 3: start_date"


BAD_FORMS = {
    "no boundary parameter": (
        "multipart/form-data",
        form(part("file", YEARS, "a.csv")),
        ("content_type", "boundary"),
    ),
    "truncated before the closing boundary": (
        FORM,
        form(part("file", YEARS, "a.csv"), close=False),
        ("body", "Unexpected end of multipart stream"),
    ),
    "no file part": (FORM, form(part("name", b"2024/25")), ("body", "field named 'file'")),
    "two file parts": (
        FORM,
        form(part("file", YEARS, "a.csv"), part("more", YEARS, "b.csv")),
        ("body", "more than one file part"),
    ),
    "header line without a colon": (
        FORM,
        f"--{BOUNDARY}\r\nContent-Disposition form-data\r\n\r\nx\r\n--{BOUNDARY}--\r\n".encode(),
        ("body", "Malformed segment header"),
    ),
    "part without Content-Disposition": (
        FORM,
        f"--{BOUNDARY}\r\nContent-Type: text/csv\r\n\r\nname\r\n--{BOUNDARY}--\r\n".encode(),
        ("body", "Missing Content-Disposition"),
    ),
    "another boundary than announced": (
        "multipart/form-data; boundary=other",
        form(part("file", YEARS, "a.csv")),
        ("body", "Unexpected end of multipart stream"),
    ),
    "an oversized text field": (
        FORM,
        form(part("note", b"n" * 70_000), part("file", YEARS, "a.csv")),
        ("body", "over 65536 bytes"),
    ),
    "multipart that is not a form": (
        f"multipart/mixed; boundary={BOUNDARY}",
        form(part("file", YEARS, "a.csv")),
        ("content_type", "multipart/mixed"),
    ),
}


@pytest.mark.parametrize("name", list(BAD_FORMS))
async def test_a_malformed_form_is_invalid_argument_naming_the_problem(
    academic_years: Harness, name: str
) -> None:
    content_type, body, (field, words) = BAD_FORMS[name]
    error = await expect_error(
        stub(academic_years).ImportAcademicYearsCsv(
            messages(split(body, [len(body) // 2]), content_type), metadata=staff().md
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert error.reason == "MALFORMED_MULTIPART", error
    [(got_field, description)] = error.violations
    assert got_field == field and words in description, error.violations
    assert await stored_years(academic_years) == []


async def test_the_file_part_streams_out_before_the_form_has_arrived() -> None:
    body = form(part("file", b"name\n" + b"a year\n" * 50_000, "big.csv"))
    pieces = split(body, list(range(4096, len(body), 4096)))
    sent = 0

    async def chunks() -> AsyncIterator[bytes]:
        nonlocal sent
        for piece in pieces:
            sent += 1
            yield piece

    out = form_file(chunks(), BOUNDARY)
    first = await anext(out)
    assert first.startswith(b"name\n")
    assert sent <= 2, "the file part is passed on as it arrives, not after the whole body"
    rest = b"".join([first] + [c async for c in out])
    assert rest == b"name\n" + b"a year\n" * 50_000
