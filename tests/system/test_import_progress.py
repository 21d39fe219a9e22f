"""Imports that report how far the server is, through real servers: while the upload is open,
through the checks and the write, and to the summary."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
import pytest
from academic_years.v1 import academic_years_pb2 as pb
from google.api import httpbody_pb2
from progress.v1 import progress_pb2, progress_pb2_grpc
from sqlalchemy import func, select, text

from academic_years_service.tables import academic_years as years
from common.csvstream.watch import ImportTracker, Report, watch
from progress_service.tables import user_progress
from tests.conftest import Harness
from tests.support.academic_years import READ, staff, stub
from tests.support.callers import Caller, expect_error, new_uuid, rich_error
from tests.support.csv import bodies, csv_bytes

READING, CHECKING, WRITING, DONE = (
    pb.ImportProgress.PHASE_READING,
    pb.ImportProgress.PHASE_CHECKING,
    pb.ImportProgress.PHASE_WRITING,
    pb.ImportProgress.PHASE_DONE,
)
WAIT_SECONDS = 15.0


class Upload:
    """A client stream the test feeds by hand, so it stays open as long as the test likes."""

    def __init__(self) -> None:
        self._queue: asyncio.Queue[bytes | None] = asyncio.Queue()

    def send(self, data: bytes) -> None:
        self._queue.put_nowait(data)

    def close(self) -> None:
        self._queue.put_nowait(None)

    async def messages(self) -> AsyncIterator[httpbody_pb2.HttpBody]:
        while (data := await self._queue.get()) is not None:
            yield httpbody_pb2.HttpBody(content_type="text/csv", data=data)


async def report_where(reports: AsyncIterator[Any], condition: Callable[[Any], bool]) -> Any:
    """The first report meeting `condition`, failing after WAIT_SECONDS."""

    async def first() -> Any:
        async for report in reports:
            if condition(report):
                return report
        raise AssertionError("the call ended without such a report")

    return await asyncio.wait_for(first(), WAIT_SECONDS)


async def count_years(h: Harness) -> int:
    return int(await h.scalar(select(func.count()).select_from(years)))


def year_rows(start: int, stop: int) -> bytes:
    return csv_bytes([[f"year {i}", "2024-09-01", f"hash {i}"] for i in range(start, stop)])


@pytest.mark.asyncio
async def test_a_caller_sees_rows_parsed_and_staged_while_its_upload_is_still_open(
    academic_years: Harness,
) -> None:
    upload = Upload()
    call = stub(academic_years).ImportAcademicYearsCsvWithProgress(
        upload.messages(), metadata=staff().md
    )
    try:
        reports = aiter(call)
        upload.send(b"name,start_date,importHash\n" + year_rows(0, 1000))
        parsed = await report_where(reports, lambda r: r.rows_read > 0)
        assert parsed.phase == READING and parsed.rows_read == 1000
        assert parsed.bytes_read > 0 and parsed.rows_staged == 0  # a batch is 5000 rows
        upload.send(year_rows(1000, 7000))
        staged = await report_where(reports, lambda r: r.rows_staged > 0)
        assert staged.phase == READING and 5000 <= staged.rows_staged <= staged.rows_read == 7000
        assert await count_years(academic_years) == 0  # the upload is still open: nothing written
        upload.close()
        rest = [r async for r in reports]
        last = rest[-1]
        assert last.phase == DONE and last.HasField("summary")
        assert (last.summary.rows_read, last.summary.created, last.summary.skipped) == (
            7000,
            7000,
            0,
        )
        assert (last.rows_read, last.rows_staged) == (7000, 7000)
        phases = [parsed.phase, staged.phase, *(r.phase for r in rest)]
        assert phases == sorted(phases), "phases only move forward"
        assert not any(r.HasField("summary") for r in rest[:-1])
        assert await count_years(academic_years) == 7000
    finally:
        call.cancel()  # a failed check must not leave the stream open


def _no_repository(*_: Any) -> None:
    return None


@pytest.mark.asyncio
@pytest.mark.parametrize(("header", "held_in"), [("id,name", CHECKING), ("name", WRITING)])
async def test_a_slow_check_or_write_is_reported_as_such(
    academic_years: Harness, header: str, held_in: int
) -> None:
    """Another transaction locks the table: the import waits in the phase that needs it
    first, the id check (CHECKING) when the file has ids, else the insert (WRITING)."""
    rows = [[new_uuid(), f"year {i}"] for i in range(50)] if "id" in header else [["y"]] * 50
    data = header.encode() + b"\n" + csv_bytes(rows)
    async with academic_years.db.unit_of_work(None, _no_repository) as lock:
        await lock.executor.execute(text("LOCK TABLE academic_years IN ACCESS EXCLUSIVE MODE"))
        call = stub(academic_years).ImportAcademicYearsCsvWithProgress(
            bodies(data), metadata=staff().md
        )
        reports = aiter(call)
        held = await report_where(reports, lambda r: r.phase == held_in)
        assert held.rows_read == held.rows_staged == 50
    last = [r async for r in reports][-1]  # the lock is gone: the import goes on
    assert last.phase == DONE and last.summary.created == 50


@pytest.mark.asyncio
async def test_progress_import_reports_and_answers_its_summary(progress: Harness) -> None:
    data = csv_bytes(
        [["progress_type", "item_id", "score"]]
        + [["sign_learned", f"item {i}", str(i % 10)] for i in range(300)]
        + [["sign_learned", "item 0", "9"]]  # the last of a repeated key wins
    )
    call = progress_pb2_grpc.UserProgressServiceStub(progress.channel)
    reports = [
        r
        async for r in call.ImportUserProgressCsvWithProgress(
            bodies(data, 997), metadata=Caller().md
        )
    ]
    last = reports[-1]
    assert last.phase == progress_pb2.ImportProgress.PHASE_DONE
    assert (last.summary.rows_read, last.summary.created, last.summary.skipped) == (301, 300, 1)
    assert last.bytes_read == len(data)
    assert await progress.scalar(select(func.count()).select_from(user_progress)) == 300


@pytest.mark.asyncio
async def test_a_rejected_file_ends_the_watched_call_with_the_same_error(
    academic_years: Harness,
) -> None:
    bad = csv_bytes([["name", "start_date"], ["ok", "2024-09-01"], ["bad", "soon"]])
    call = stub(academic_years).ImportAcademicYearsCsvWithProgress(bodies(bad), metadata=staff().md)
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        async for _ in call:
            pass
    error = rich_error(raised.value)
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT
    assert error.violations == [("line 3: start_date", "must be a date as YYYY-MM-DD")]
    reader = Caller(permissions=[READ])
    denied = stub(academic_years).ImportAcademicYearsCsvWithProgress(
        bodies(bad), metadata=reader.md
    )
    await expect_error(_drain(denied), grpc.StatusCode.PERMISSION_DENIED)
    assert await count_years(academic_years) == 0


async def _drain(call: Any) -> None:
    async for _ in call:
        pass


@pytest.mark.asyncio
async def test_a_watched_upload_cancelled_midway_writes_nothing(academic_years: Harness) -> None:
    upload, caller = Upload(), staff()
    call = stub(academic_years).ImportAcademicYearsCsvWithProgress(
        upload.messages(), metadata=caller.md
    )
    upload.send(b"name,start_date,importHash\n" + year_rows(0, 6000))
    await report_where(aiter(call), lambda r: r.rows_staged > 0)
    call.cancel()
    await asyncio.sleep(0.5)
    assert await count_years(academic_years) == 0
    again = stub(academic_years).ImportAcademicYearsCsvWithProgress(
        bodies(b"name\nafter\n"), metadata=caller.md
    )
    assert [r async for r in again][-1].summary.created == 1


@pytest.mark.asyncio
async def test_watch_reports_changes_only_then_the_result_and_cancels_when_left() -> None:
    gate = asyncio.Event()

    async def run(tracker: ImportTracker) -> str:
        tracker.rows_staged = 5
        await gate.wait()
        tracker.phase = "writing"
        await asyncio.sleep(0.05)
        tracker.phase = "done"
        return "summary"

    reports: list[Report[str]] = []
    async for report in watch(run, every=0.01):
        reports.append(report)
        if len(reports) == 1:
            await asyncio.sleep(0.05)  # several ticks without change: no new report
            gate.set()
    assert [r.progress.phase for r in reports] == ["reading", "writing", "done"]
    assert [r.result for r in reports] == [None, None, "summary"]
    assert reports[0].progress.rows_staged == 5

    async def failing(tracker: ImportTracker) -> str:
        raise ValueError("bad file")

    with pytest.raises(ValueError, match="bad file"):
        async for _ in watch(failing, every=0.01):
            pass

    started, cancelled = asyncio.Event(), asyncio.Event()

    async def endless(tracker: ImportTracker) -> str:
        started.set()
        try:
            await asyncio.Event().wait()
        finally:
            cancelled.set()
        return "never"

    reports_left = watch(endless, every=0.01)
    assert (await anext(reports_left)).progress.phase == "reading"
    assert started.is_set() and not cancelled.is_set()
    await reports_left.aclose()  # the caller went away
    assert cancelled.is_set()
