"""On SQLite, a unary call cancelled mid-statement must not leave the database write-locked."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc import aio

from common.db import Database
from common.interceptors import FinishOnCancelInterceptor

pytestmark = pytest.mark.asyncio

# Long enough that the client's deadline passes while SQLite is still executing it.
SLOW = (
    "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 2000000) "
    "SELECT count(*) FROM c"
)


async def test_cancelled_write_finishes_and_releases_the_write_lock(tmp_path: Path) -> None:
    db = Database(f"sqlite+aiosqlite:///{tmp_path / 'lock.db'}")
    async with db.transaction(write=True) as conn:
        await conn.exec_driver_sql("CREATE TABLE t (x INTEGER)")
    finished = asyncio.Event()

    async def slow_write(request: bytes, context: Any) -> bytes:
        try:
            async with db.transaction(write=True) as conn:
                await conn.exec_driver_sql("INSERT INTO t VALUES (1)")
                await conn.exec_driver_sql(SLOW)
        finally:
            finished.set()
        return b""

    handler = grpc.method_handlers_generic_handler(
        "test.Locks", {"SlowWrite": grpc.unary_unary_rpc_method_handler(slow_write)}
    )
    server = aio.server(interceptors=[FinishOnCancelInterceptor()])
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            call = channel.unary_unary("/test.Locks/SlowWrite")
            with pytest.raises(aio.AioRpcError) as info:
                await call(b"", timeout=0.05)
            assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        await asyncio.wait_for(finished.wait(), timeout=60)
        # Without the interceptor this write waits out SQLite's busy timeout and fails.
        async with db.transaction(write=True) as conn:
            await conn.exec_driver_sql("INSERT INTO t VALUES (2)")
        async with db.transaction() as conn:
            rows = sorted(r[0] for r in await conn.exec_driver_sql("SELECT x FROM t"))
        assert rows == [1, 2]  # the abandoned call's work was committed, not left dangling
    finally:
        await server.stop(None)
        await db.dispose()
