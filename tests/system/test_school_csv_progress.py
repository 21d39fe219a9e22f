"""`school-csv import` shows how far the server is, beside the bytes it has sent."""

from __future__ import annotations

import asyncio
import io
import re
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from grpc import aio
from progress.v1 import progress_pb2

from common.csvclient import cli
from tests.conftest import Harness
from tests.support.academic_years import CREATE, READ
from tests.support.callers import Caller
from tests.system.test_school_csv import EXAMPLES, TtyText, connection, school_csv

pytestmark = pytest.mark.asyncio


class SlowStdin(io.RawIOBase):
    """Standard input that hands over its pieces slowly, like a file on a slow link: the
    server has time to report between them."""

    def __init__(self, pieces: list[bytes], pause: float, seekable: bool = True) -> None:
        self._pieces, self._pause, self._seekable = list(pieces), pause, seekable
        self._first = True

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return self._seekable

    def read(self, size: int = -1) -> bytes:
        if not self._pieces:
            return b""
        if not self._first:
            time.sleep(self._pause)  # the command's own thread, as a blocking read would
        self._first = False
        return self._pieces.pop(0)


async def run_cli(
    *argv: str, stdin: Any, stderr: io.StringIO | None = None
) -> tuple[int, bytes, str]:
    out, err = io.BytesIO(), stderr if stderr is not None else io.StringIO()
    code = await asyncio.to_thread(cli.main, list(argv), stdin=stdin, stdout=out, stderr=err)
    return code, out.getvalue(), err.getvalue()


def years(start: int, stop: int) -> bytes:
    return "".join(f"year {i},2024-09-01,h{i}\n" for i in range(start, stop)).encode()


async def test_plain_lines_show_the_server_parsing_rows_before_the_file_is_all_sent(
    academic_years: Harness,
) -> None:
    caller = Caller(permissions=[READ, CREATE])
    pieces = [b"name,start_date,importHash\n" + years(0, 2000), years(2000, 3000)]
    code, out, err = await run_cli(
        "import",
        "academic-years",
        "-",
        *connection(academic_years, caller),
        stdin=SlowStdin(pieces, pause=1.5),
    )
    assert code == cli.OK, err
    assert out == b"rows_read=3000 created=3000 skipped=0\n"
    lines = err.splitlines()
    sent = next(i for i, line in enumerate(lines) if "file sent" in line)
    during = [
        int(m.group(1).replace(",", ""))
        for line in lines[:sent]
        if (m := re.search(r"server reading: ([\d,]+) rows parsed", line))
    ]
    assert during and during[0] > 0, lines  # reported while the upload was still open
    assert lines[-1].startswith("import academic-years: done in")
    assert lines[-1].endswith("; server done: 3,000 rows"), lines[-1]
    for line in lines:
        assert line.startswith("import academic-years: "), line


async def test_a_terminal_bar_carries_the_server_report(progress: Harness) -> None:
    tty = TtyText()
    run = await school_csv(
        "import",
        "progress",
        str(EXAMPLES / "progress.csv"),
        *connection(progress, Caller()),
        stderr=tty,
    )
    assert run.code == cli.OK
    assert "server done: 3 rows" in run.err and "\r" in run.err


async def _old_import(requests: AsyncIterator[Any], context: Any) -> Any:
    data = b"".join([r.data async for r in requests])
    rows = data.count(b"\n") - 1
    return progress_pb2.ImportCsvSummary(rows_read=rows, created=rows)


async def old_server() -> tuple[aio.Server, str]:
    """A progress service from before the WithProgress import: that method is UNIMPLEMENTED."""
    from google.api import httpbody_pb2

    server = aio.server()
    handler = grpc.stream_unary_rpc_method_handler(
        _old_import,
        request_deserializer=httpbody_pb2.HttpBody.FromString,
        response_serializer=progress_pb2.ImportCsvSummary.SerializeToString,
    )
    server.add_generic_rpc_handlers(
        [
            grpc.method_handlers_generic_handler(
                "progress.v1.UserProgressService", {"ImportUserProgressCsv": handler}
            )
        ]
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, f"127.0.0.1:{port}"


async def test_an_older_server_gets_the_plain_import_when_the_file_can_be_sent_again() -> None:
    server, addr = await old_server()
    try:
        args = ("--addr", addr, "--token", Caller().token())
        path = str(EXAMPLES / "progress.csv")
        code, out, err = await run_cli("import", "progress", path, *args, stdin=io.BytesIO())
        assert code == cli.OK, err
        assert out == b"rows_read=3 created=3 updated=0 skipped=0\n"
        assert "does not report its progress" in err
        piped = SlowStdin([(EXAMPLES / "progress.csv").read_bytes()], 0, seekable=False)
        code, out, err = await run_cli("import", "progress", "-", *args, stdin=piped)
        assert code == cli.FAILED  # a pipe cannot be sent again
        assert "UNIMPLEMENTED" in err or "Internal error from Core" in err  # grpc/grpc#36066
    finally:
        await server.stop(None)
