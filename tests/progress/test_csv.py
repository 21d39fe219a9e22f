"""Progress CSV import and export through a real server."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import grpc
import pytest
import pytest_asyncio
from google.api import httpbody_pb2
from progress.v1 import progress_pb2 as pb
from progress.v1 import progress_pb2_grpc
from sqlalchemy import select

from common.config import Limits
from progress_service.tables import user_progress
from tests.conftest import Harness, stop_harness
from tests.support.callers import Caller, expect_error, new_uuid
from tests.support.csv import Finished, bodies, collect, csv_bytes, parse_csv, start_observed

pytestmark = pytest.mark.asyncio

HEADER = ["progress_type", "item_id", "value", "score", "metadata"]
SIGN, ZONE = "sign_learned", "zone_checkin"


def stub(h: Harness) -> progress_pb2_grpc.UserProgressServiceStub:
    return progress_pb2_grpc.UserProgressServiceStub(h.channel)


async def import_csv(h: Harness, caller: Caller, data: bytes, chunk: int = 64 * 1024):
    return await stub(h).ImportUserProgressCsv(bodies(data, chunk), metadata=caller.md)


async def export_csv(h: Harness, caller: Caller, **request) -> bytes:
    call = stub(h).ExportUserProgressCsv(
        pb.ExportUserProgressCsvRequest(**request), metadata=caller.md
    )
    return await collect(call)


async def stored(h: Harness) -> list[dict]:
    rows = await h.rows(select(user_progress).order_by(user_progress.c.item_id))
    return [dict(r) for r in rows]


async def test_import_upserts_for_the_caller_and_types_cells(progress: Harness) -> None:
    caller = Caller(campus=new_uuid())
    data = csv_bytes(
        [HEADER, [SIGN, " a ", "learned", "3", '{"hand": "left"}'], [ZONE, "b", "", "-2", ""]]
    )
    summary = await import_csv(progress, caller, data)
    assert (summary.rows_read, summary.created, summary.updated, summary.skipped) == (2, 2, 0, 0)
    a, b = await stored(progress)
    assert (a["item_id"], a["value"], a["score"], a["metadata"]) == (
        "a",
        "learned",
        3,
        {"hand": "left"},
    )
    assert (b["item_id"], b["value"], b["score"], b["metadata"]) == ("b", None, -2, None)
    for row in (a, b):
        assert row["userId"] == caller.sub and row["organizationId"] == caller.org
        assert row["campusId"] == caller.campus and row["createdById"] == caller.sub


async def test_import_updates_existing_rows_and_the_last_duplicate_wins(progress: Harness) -> None:
    caller = Caller()
    await stub(progress).UpsertUserProgress(
        pb.UpsertUserProgressRequest(data=pb.UserProgressInput(progress_type=SIGN, item_id="a")),
        metadata=caller.md,
    )
    [before] = await stored(progress)
    rows = [[SIGN, "a", "one", "1", ""], [SIGN, "b", "x", "", ""], [SIGN, " a", "two", "2", ""]]
    summary = await import_csv(
        progress, caller, csv_bytes([HEADER, *rows, [ZONE, "a", "", "", ""]])
    )
    assert (summary.rows_read, summary.created, summary.updated, summary.skipped) == (4, 2, 1, 1)
    a_sign, a_zone, b = sorted(
        await stored(progress), key=lambda r: (r["item_id"], r["progress_type"])
    )
    assert a_sign["id"] == before["id"] and (a_sign["value"], a_sign["score"]) == ("two", 2)
    assert a_sign["createdAt"] == before["createdAt"]
    assert a_zone["progress_type"] == ZONE and b["value"] == "x"


async def test_export_then_import_as_another_organization_reproduces_rows(
    progress: Harness,
) -> None:
    source, target = Caller(), Caller()
    rows = [
        [SIGN, "plain", "v", "1", '{"a": [1, 2]}'],
        [SIGN, 'quoted, "comma"', "multi\nline", "", '"text"'],
        [ZONE, "zone 1", "", "-7", "3.5"],
        [ZONE, "ünïcödé ✓", "ok", "2147483647", "null"],
    ]
    await import_csv(progress, source, csv_bytes([HEADER, *rows]))
    exported = await export_csv(progress, source)
    summary = await import_csv(progress, target, exported)
    assert (summary.rows_read, summary.created) == (4, 4)

    def owned_by(caller: Caller, all_rows: list[dict]) -> list[tuple]:
        keys = ("progress_type", "item_id", "value", "score", "metadata")
        return sorted(
            tuple(r[k] for k in keys) for r in all_rows if r["organizationId"] == caller.org
        )

    everything = await stored(progress)
    assert owned_by(target, everything) == owned_by(source, everything)
    assert len(owned_by(source, everything)) == 4
    again = parse_csv(await export_csv(progress, target))
    assert again[0] == HEADER and sorted(again) == sorted(parse_csv(exported))


async def test_export_has_header_oldest_first_and_null_as_empty(progress: Harness) -> None:
    caller = Caller()
    assert parse_csv(await export_csv(progress, caller)) == [HEADER]
    await import_csv(progress, caller, csv_bytes([HEADER, [SIGN, "first", "", "", ""]]))
    await import_csv(progress, caller, csv_bytes([HEADER, [SIGN, "second", "v", "0", "{}"]]))
    assert parse_csv(await export_csv(progress, caller)) == [
        HEADER,
        [SIGN, "first", "", "", ""],
        [SIGN, "second", "v", "0", "{}"],
    ]


async def test_export_filters_by_type_and_keeps_to_the_callers_live_rows(
    progress: Harness,
) -> None:
    caller = Caller()
    colleague = Caller(org=caller.org)
    stranger = Caller()
    rows = [[SIGN, "s1", "", "", ""], [ZONE, "z1", "", "", ""], [SIGN, "gone", "", "", ""]]
    await import_csv(progress, caller, csv_bytes([HEADER, *rows]))
    await import_csv(progress, colleague, csv_bytes([HEADER, [SIGN, "theirs", "", "", ""]]))
    await import_csv(progress, stranger, csv_bytes([HEADER, [SIGN, "far", "", "", ""]]))
    await stub(progress).DeleteUserProgressByItem(
        pb.DeleteUserProgressByItemRequest(progress_type=SIGN, item_id="gone"), metadata=caller.md
    )
    items = lambda data: [r[1] for r in parse_csv(data)[1:]]  # noqa: E731
    assert items(await export_csv(progress, caller)) == ["s1", "z1"]
    assert items(await export_csv(progress, caller, progress_type=ZONE)) == ["z1"]
    assert items(await export_csv(progress, caller, progress_type=SIGN)) == ["s1"]
    error = await expect_error(
        export_csv(progress, caller, progress_type="nope"), grpc.StatusCode.INVALID_ARGUMENT
    )
    assert error.violations[0][0] == "progress_type"


async def test_export_escapes_cells_a_spreadsheet_would_run(progress: Harness) -> None:
    caller = Caller()
    risky = ["=SUM(A1)", "+1", "-1", "@cmd", "\tx", "\rx", "safe", "a=b"]
    rows = [[SIGN, f"item {i}", value, "-3", ""] for i, value in enumerate(risky)]
    rows.append([SIGN, "=item", "", "", "-1"])
    await import_csv(progress, caller, csv_bytes([HEADER, *rows]))
    exported = {r[1]: r for r in parse_csv(await export_csv(progress, caller))[1:]}
    values = [exported[f"item {i}"][2] for i in range(len(risky))]
    assert values == ["'=SUM(A1)", "'+1", "'-1", "'@cmd", "'\tx", "'\rx", "safe", "a=b"]
    assert exported["'=item"][3:] == ["", "-1"]  # numbers and JSON are not text cells
    assert exported["item 0"][3] == "-3"


async def test_bom_crlf_and_quoted_newlines_in_one_byte_chunks(progress: Harness) -> None:
    caller = Caller()
    rows = [[SIGN, "a\r\nb", 'say "hi"\nthere', "1", '{"k": "v,\\n"}'], [ZONE, "c", "", "", ""]]
    data = csv_bytes([HEADER, *rows], newline="\r\n", bom=True)
    for chunk in (1, 2, 7):
        await progress.wipe()
        summary = await import_csv(progress, caller, data, chunk)
        assert summary.created == 2
        a, c = await stored(progress)
        assert (a["item_id"], a["value"], a["metadata"]) == (
            "a\r\nb",
            'say "hi"\nthere',
            {"k": "v,\n"},
        )
        assert c["item_id"] == "c"


LONG = "x" * 513
MALFORMED = {
    "empty file": (b"", "line 1"),
    "only a BOM": (b"\xef\xbb\xbf", "line 1"),
    "blank lines only": (b"\n\n", "line 1"),
    "unknown column": (b"progress_type,item_id,colour\n", "line 1: colour"),
    "duplicate column": (b"progress_type,item_id,item_id\n", "line 1: item_id"),
    "missing required column": (b"progress_type,value\nsign_learned,x\n", "line 1: item_id"),
    "empty column name": (b"progress_type,item_id,\n", "line 1"),
    "unknown type": (b"progress_type,item_id\nsign_learned,a\nsigns,b\n", "line 3: progress_type"),
    "empty type": (b"progress_type,item_id\n,a\n", "line 2: progress_type"),
    "empty item": (b"progress_type,item_id\nsign_learned,\n", "line 2: item_id"),
    "blank item": (b"progress_type,item_id\nsign_learned,   \n", "line 2: item_id"),
    "item too long": (f"progress_type,item_id\nsign_learned,{LONG}\n".encode(), "line 2: item_id"),
    "score not a number": (b"progress_type,item_id,score\nzone_checkin,a,ten\n", "line 2: score"),
    "score a fraction": (b"progress_type,item_id,score\nzone_checkin,a,1.5\n", "line 2: score"),
    "score padded": (b"progress_type,item_id,score\nzone_checkin,a, 1\n", "line 2: score"),
    "score too big": (b"progress_type,item_id,score\nzone_checkin,a,2147483648\n", "line 2: score"),
    "metadata not JSON": (
        b"progress_type,item_id,metadata\nzone_checkin,a,{x}\n",
        "line 2: metadata",
    ),
    "metadata NaN": (b"progress_type,item_id,metadata\nzone_checkin,a,NaN\n", "line 2: metadata"),
    "too few fields": (
        b"progress_type,item_id,value\nzone_checkin,a,v\nzone_checkin,b\n",
        "line 3",
    ),
    "too many fields": (b"progress_type,item_id\nzone_checkin,a,extra\n", "line 2"),
    "text after a closing quote": (b'progress_type,item_id\nzone_checkin,"a"b\n', "line 2"),
    "quote never closed": (b'progress_type,item_id\nzone_checkin,a\nzone_checkin,"b\n', "line 3"),
    "invalid UTF-8": (
        b"progress_type,item_id\nzone_checkin,a\nzone_checkin,b\nzone_checkin,\xff\n",
        "line 4",
    ),
    "truncated UTF-8 at the end": (b"progress_type,item_id\nzone_checkin,\xc3", "line 2"),
    "after a multi-line field": (
        b'progress_type,item_id,value,score\nsign_learned,a,"x\ny",1\nsign_learned,b,,x\n',
        "line 4: score",
    ),
    "CRLF with a bad row": (
        b"progress_type,item_id\r\nsign_learned,a\r\nnope,b\r\n",
        "line 3: progress_type",
    ),
    "a bad row deep in the file": (
        b"progress_type,item_id,score\n"
        + b"".join(b"sign_learned,i%d,%d\n" % (i, i) for i in range(499))
        + b"sign_learned,bad,1e3\n"
        + b"".join(b"sign_learned,j%d,%d\n" % (i, i) for i in range(499)),
        "line 501: score",
    ),
}


@pytest.mark.parametrize("name", list(MALFORMED))
async def test_malformed_files_name_the_line_and_write_nothing(
    progress: Harness, name: str
) -> None:
    data, field = MALFORMED[name]
    for chunk in (64 * 1024, 3):
        error = await expect_error(
            import_csv(progress, Caller(), data, chunk), grpc.StatusCode.INVALID_ARGUMENT
        )
        assert error.violations and error.violations[0][0] == field, error.violations
        assert error.domain == "progress.v1"
        assert await stored(progress) == []


async def test_many_bad_rows_report_twenty_and_the_total(progress: Harness) -> None:
    rows = [[SIGN, "a", "", "x", ""] for _ in range(30)]
    error = await expect_error(
        import_csv(progress, Caller(), csv_bytes([HEADER, *rows])), grpc.StatusCode.INVALID_ARGUMENT
    )
    assert [v[0] for v in error.violations] == [f"line {n}: score" for n in range(2, 22)]
    assert "; and 29 more violations" in error.message
    assert await stored(progress) == []


async def test_a_file_over_the_size_limit_is_resource_exhausted(progress: Harness) -> None:
    from progress_service.app import DEFINITION

    limits = Limits(csv_max_bytes=1000)
    small = await start_observed(
        DEFINITION, progress.db.url, progress.metadata, Finished(), limits=limits
    )
    try:
        rows = [[SIGN, f"item {i}", "", "", ""] for i in range(100)]
        error = await expect_error(
            import_csv(small, Caller(), csv_bytes([HEADER, *rows]), 100),
            grpc.StatusCode.RESOURCE_EXHAUSTED,
        )
        assert error.reason == "CSV_TOO_LARGE" and error.metadata["max_bytes"] == "1000"
        assert await stored(progress) == []
        summary = await import_csv(small, Caller(), csv_bytes([HEADER, *rows[:10]]))
        assert summary.created == 10
    finally:
        await stop_harness(small)


@pytest_asyncio.fixture
async def observed(progress: Harness) -> AsyncIterator[tuple[Harness, Finished]]:
    from progress_service.app import DEFINITION

    finished = Finished()
    harness = await start_observed(DEFINITION, progress.db.url, progress.metadata, finished)
    yield harness, finished
    await stop_harness(harness)


async def test_a_cancelled_upload_writes_nothing_and_the_server_serves_on(
    observed: tuple[Harness, Finished],
) -> None:
    harness, finished = observed
    caller = Caller()
    half_sent, never = asyncio.Event(), asyncio.Event()
    rows = csv_bytes([[SIGN, f"item {i}", "v", str(i), "{}"] for i in range(20_000)])

    async def upload() -> AsyncIterator[httpbody_pb2.HttpBody]:
        yield httpbody_pb2.HttpBody(data=",".join(HEADER).encode() + b"\n")
        async for body in bodies(rows, 16 * 1024):
            yield body
        half_sent.set()
        await never.wait()  # the client never finishes the upload

    call = stub(harness).ImportUserProgressCsv(upload(), metadata=caller.md)
    await half_sent.wait()
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    assert await finished.wait("ImportUserProgressCsv") == grpc.StatusCode.CANCELLED
    assert await stored(harness) == []
    summary = await import_csv(harness, caller, csv_bytes([HEADER, [SIGN, "after", "", "", ""]]))
    assert summary.created == 1
    assert [r["item_id"] for r in await stored(harness)] == ["after"]


async def test_a_cancelled_download_leaves_the_server_serving(
    observed: tuple[Harness, Finished],
) -> None:
    harness, finished = observed
    caller = Caller()
    # Far more than HTTP/2 flow control lets the server send ahead of the reader.
    rows = [[SIGN, f"item {i:06d}", "x" * 400, str(i), "{}"] for i in range(40_000)]
    await import_csv(harness, caller, csv_bytes([HEADER, *rows]))
    call = stub(harness).ExportUserProgressCsv(
        pb.ExportUserProgressCsvRequest(), metadata=caller.md
    )
    first = await call.read()
    assert first.data.startswith(b"progress_type,item_id")
    call.cancel()
    assert await finished.wait("ExportUserProgressCsv") == grpc.StatusCode.CANCELLED
    exported = parse_csv(await export_csv(harness, caller))
    assert len(exported) == 40_001 and exported[-1][1] == "item 039999"


async def test_import_needs_a_token(progress: Harness) -> None:
    await expect_error(
        stub(progress).ImportUserProgressCsv(bodies(csv_bytes([HEADER]))),
        grpc.StatusCode.UNAUTHENTICATED,
    )
    assert json.dumps(await stored(progress)) == "[]"
