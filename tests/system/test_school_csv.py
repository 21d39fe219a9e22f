"""`school-csv`, the file command line, against real servers: import, export, rejections."""

from __future__ import annotations

import asyncio
import io
import os
import subprocess
import sys
import uuid
from dataclasses import fields
from importlib import metadata
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from common.config import Settings
from common.csvclient import cli, transfer
from common.csvclient.display import PlainProgress
from progress_service.tables import request_ids
from tests.conftest import Harness
from tests.support.academic_years import CREATE, READ
from tests.support.callers import Caller
from tests.support.csv import parse_csv

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"


class TtyText(io.StringIO):
    """A text stream that says it is a terminal."""

    def isatty(self) -> bool:
        return True


class Run:
    def __init__(self, code: int, out: bytes, err: str) -> None:
        self.code, self.out, self.err = code, out, err


async def school_csv(*argv: str, stderr: io.StringIO | None = None, stdin: bytes = b"") -> Run:
    """`main` on its own thread and loop, as the installed script runs it."""
    out, err = io.BytesIO(), stderr if stderr is not None else io.StringIO()
    code = await asyncio.to_thread(
        cli.main, list(argv), stdin=io.BytesIO(stdin), stdout=out, stderr=err
    )
    return Run(code, out.getvalue(), err.getvalue())


def connection(h: Harness, caller: Caller) -> list[str]:
    return ["--addr", h.target, "--token", caller.token()]


@pytest.mark.asyncio
async def test_progress_file_imports_and_exports_back(progress: Harness) -> None:
    caller = Caller()
    args = connection(progress, caller)
    done = await school_csv("import", "progress", str(EXAMPLES / "progress.csv"), *args)
    assert done.code == cli.OK, done.err
    assert done.out == b"rows_read=3 created=3 updated=0 skipped=0\n"
    exported = await school_csv("export", "progress", *args)
    assert exported.code == cli.OK, exported.err
    rows = parse_csv(exported.out)
    assert rows[0] == ["progress_type", "item_id", "value", "score", "metadata"]
    assert sorted(r[1] for r in rows[1:]) == ["green", "hello", "thank-you"]
    only = await school_csv(
        "export", "progress", "--filter", '{"progress_type": "zone_checkin"}', *args
    )
    assert [r[1] for r in parse_csv(only.out)[1:]] == ["green"]


@pytest.mark.asyncio
async def test_an_import_run_again_with_its_request_id_is_answered_not_applied(
    progress: Harness,
) -> None:
    """Every import carries a request id (a new one per run unless --request-id names one): a
    run repeated with the same id gets the first run's summary, and imports nothing again."""
    args = [*connection(progress, Caller()), "--request-id", str(uuid.uuid4())]
    source = str(EXAMPLES / "progress.csv")
    first = await school_csv("import", "progress", source, *args)
    again = await school_csv("import", "progress", source, *args)
    assert first.out == again.out == b"rows_read=3 created=3 updated=0 skipped=0\n"
    fresh = await school_csv("import", "progress", source, *args[:-2])
    assert fresh.out == b"rows_read=3 created=0 updated=3 skipped=0\n"  # a new operation
    assert await progress.scalar(select(func.count()).select_from(request_ids)) == 2


@pytest.mark.asyncio
async def test_academic_years_file_round_trips_through_an_output_file(
    academic_years: Harness, tmp_path: Path
) -> None:
    caller = Caller(permissions=[READ, CREATE])
    args = connection(academic_years, caller)
    source = EXAMPLES / "academic-years.csv"
    done = await school_csv("import", "academic-years", str(source), *args)
    assert done.code == cli.OK, done.err
    assert done.out == b"rows_read=3 created=3 skipped=0\n"
    again = await school_csv("import", "academic-years", str(source), *args)
    assert again.out == b"rows_read=3 created=0 skipped=3\n"  # importHash taken: skipped
    target = tmp_path / "current.csv"
    exported = await school_csv(
        "export", "academic-years", "--filter", '{"current": true}', "-o", str(target), *args
    )
    assert exported.code == cli.OK, exported.err
    assert exported.out == b""  # the data went to the file, progress to stderr
    rows = parse_csv(target.read_bytes())
    assert rows[0] == ["id", "name", "start_date", "end_date"]
    assert [r[1:] for r in rows[1:]] == [["2025/26", "2025-09-01", "2026-06-30"]]
    assert not target.with_name("current.csv.part").exists()


@pytest.mark.asyncio
async def test_a_rejected_file_prints_each_violation_and_exits_1(academic_years: Harness) -> None:
    caller = Caller(permissions=[READ, CREATE])
    bad = EXAMPLES / "academic-years-with-errors.csv"
    run = await school_csv(
        "import", "academic-years", str(bad), *connection(academic_years, caller)
    )
    assert run.code == cli.REJECTED == 1
    assert run.out == b""
    lines = run.err.splitlines()
    assert "INVALID_ARGUMENT" in next(line for line in lines if "failed" in line)
    assert "  line 3: start_date: must be a date as YYYY-MM-DD" in lines
    assert "  line 3: current: must be true, false, 1 or 0" in lines
    assert "  line 4: end_date: is not a calendar date" in lines


@pytest.mark.asyncio
async def test_refused_token_unreachable_server_and_usage_have_their_own_codes(
    academic_years: Harness, tmp_path: Path
) -> None:
    source = str(EXAMPLES / "academic-years.csv")
    no_create = Caller(permissions=[READ])
    denied = await school_csv(
        "import", "academic-years", source, *connection(academic_years, no_create)
    )
    assert denied.code == cli.DENIED == 4
    assert "PERMISSION_DENIED" in denied.err
    closed = await school_csv(
        "import",
        "academic-years",
        source,
        "--addr",
        "127.0.0.1:1",
        "--token",
        "t",
        "--timeout",
        "2",
    )
    assert closed.code == cli.FAILED == 3
    assert "UNAVAILABLE" in closed.err or "DEADLINE_EXCEEDED" in closed.err
    missing = await school_csv("import", "progress", str(tmp_path / "nope.csv"), "--token", "t")
    assert missing.code == cli.USAGE == 2
    assert "nope.csv" in missing.err
    no_token = await school_csv("export", "progress", "--addr", academic_years.target)
    assert (no_token.code, "no token" in no_token.err) == (cli.USAGE, True)
    bad_filter = await school_csv(
        "export", "academic-years", "--filter", '{"colour": 1}', "--token", "t"
    )
    assert bad_filter.code == cli.USAGE and "ListAcademicYearsRequest" in bad_filter.err
    bad_id = await school_csv("import", "progress", source, "--token", "t", "--request-id", "x")
    assert bad_id.code == cli.USAGE and "--request-id" in bad_id.err
    assert await asyncio.to_thread(cli.main, ["import", "nowhere"]) == cli.USAGE


@pytest.mark.asyncio
async def test_stderr_that_is_not_a_terminal_gets_plain_lines(progress: Harness) -> None:
    run = await school_csv(
        "import", "progress", str(EXAMPLES / "progress.csv"), *connection(progress, Caller())
    )
    assert run.code == cli.OK
    assert run.err, "progress is reported"
    for line in run.err.splitlines():
        assert line.startswith("import progress: "), line
        assert "\r" not in line and "\x1b" not in line
    assert "done in" in run.err.splitlines()[-1]
    assert "3 rows" in run.err


@pytest.mark.asyncio
async def test_a_terminal_gets_a_redrawn_bar(progress: Harness) -> None:
    tty = TtyText()
    run = await school_csv(
        "import",
        "progress",
        str(EXAMPLES / "progress.csv"),
        *connection(progress, Caller()),
        stderr=tty,
    )
    assert run.code == cli.OK
    assert "\r" in run.err and "rows/s" in run.err


def test_plain_lines_come_every_interval() -> None:
    stream = io.StringIO()
    plain = PlainProgress("import x", 200, stream, interval=0.0)
    plain.advance(b"a\n" * 50)
    plain.advance(b"a\n" * 50)
    plain.close()
    lines = stream.getvalue().splitlines()
    assert lines[0].startswith("import x: 100 B of 200 B (50%), 49 rows")
    assert len(lines) == 3 and "done in" in lines[-1]


@pytest.mark.asyncio
async def test_upload_messages_stay_bounded_whatever_the_file_size() -> None:
    class Sink:
        def advance(self, chunk: bytes) -> None: ...
        def note(self, text: str) -> None: ...
        def close(self) -> None: ...

    data = os.urandom(3 * transfer.CHUNK_BYTES + 5)
    sizes = [len(b.data) async for b in transfer.file_bodies(io.BytesIO(data), Sink())]
    assert sizes == [transfer.CHUNK_BYTES] * 3 + [5]


@pytest.mark.asyncio
async def test_a_file_larger_than_the_message_limit_imports(
    progress: Harness, tmp_path: Path
) -> None:
    # The servers' default receive limit.
    [limit] = [f.default for f in fields(Settings) if f.name == "max_message_bytes"]
    assert isinstance(limit, int)
    path = tmp_path / "big.csv"
    value = "v" * 200
    with path.open("w") as f:
        f.write("progress_type,item_id,value,score,metadata\n")
        rows = 0
        while f.tell() <= limit + 64 * 1024:
            f.write(f"sign_learned,item-{rows},{value},{rows % 100},\n")
            rows += 1
    assert path.stat().st_size > limit
    run = await school_csv("import", "progress", str(path), *connection(progress, Caller()))
    assert run.code == cli.OK, run.err
    assert run.out == f"rows_read={rows} created={rows} updated=0 skipped=0\n".encode()


def test_the_script_is_installed_and_documents_its_exit_codes() -> None:
    [entry] = [e for e in metadata.entry_points(group="console_scripts") if e.name == "school-csv"]
    assert entry.value == "common.csvclient.cli:main"
    script = Path(sys.executable).parent / "school-csv"
    assert script.exists(), "run `make install`"
    shown = subprocess.run(  # noqa: S603 - our own script
        [script, "--help"], capture_output=True, text=True, check=True
    )
    for code in ("0 done", "1 the service rejected", "2 usage", "3 the call failed", "4 the token"):
        assert code in shown.stdout


@pytest.mark.asyncio
async def test_the_installed_script_streams_a_sample_through_a_real_server(
    progress: Harness,
) -> None:
    script = Path(sys.executable).parent / "school-csv"
    env: dict[str, Any] = {**os.environ, "TOKEN": Caller().token()}
    proc = await asyncio.create_subprocess_exec(
        script,
        "import",
        "progress",
        str(EXAMPLES / "progress.csv"),
        "--addr",
        progress.target,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate()
    assert proc.returncode == 0, err
    assert out == b"rows_read=3 created=3 updated=0 skipped=0\n"
    assert b"\r" not in err and b"done in" in err


@pytest.mark.asyncio
async def test_export_columns_write_a_file_the_import_takes_back(
    academic_years: Harness, tmp_path: Path
) -> None:
    owner = Caller(permissions=[READ, CREATE])
    args = connection(academic_years, owner)
    await school_csv("import", "academic-years", str(EXAMPLES / "academic-years.csv"), *args)
    every = "id,name,start_date,end_date,current,importHash"
    target = tmp_path / "all.csv"
    in_order = '{"field": "createdAt", "sort": "asc"}'
    run = await school_csv(
        "export",
        "academic-years",
        "--columns",
        every,
        "--filter",
        in_order,
        "-o",
        str(target),
        *args,
    )
    assert run.code == cli.OK, run.err
    rows = parse_csv(target.read_bytes())
    assert rows[0] == every.split(",") and len(rows) == 4
    await academic_years.wipe()
    heir = Caller(permissions=[READ, CREATE])
    moved = await school_csv(
        "import", "academic-years", str(target), *connection(academic_years, heir)
    )
    assert moved.out == b"rows_read=3 created=3 skipped=0\n", moved.err
    again = tmp_path / "again.csv"
    await school_csv(
        "export", "academic-years", "--columns", every, "--filter", in_order, "-o", str(again),
        *connection(academic_years, heir),
    )  # fmt: skip
    assert again.read_bytes() == target.read_bytes()
    unknown = await school_csv("export", "academic-years", "--columns", "id,colour", *args)
    assert unknown.code == cli.REJECTED
    assert "  columns[1]: 'colour' is not one of id, name, start_date" in unknown.err
    progress = await school_csv("export", "progress", "--columns", "id", "--token", "t")
    assert progress.code == cli.USAGE and "--columns" in progress.err
