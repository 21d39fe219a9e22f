"""Throw-away resources the benchmarks and the tests share: free loopback ports and scratch
PostgreSQL databases (tests import them from here too, so there is one copy of each)."""

from __future__ import annotations

import asyncio
import socket
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import make_url
from sqlalchemy.ext.asyncio import create_async_engine


def free_port() -> int:
    """A loopback port nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def scratch_database(server_url: str, prefix: str = "t") -> Iterator[str]:
    """A new, empty PostgreSQL database on `server_url`'s server, dropped afterwards.

    Yields its SQLAlchemy asyncpg URL (password included); not to be entered from a running
    event loop (creating and dropping run their own)."""
    url = make_url(server_url).set(drivername="postgresql+asyncpg")
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"

    async def admin(sql: str) -> None:
        engine = create_async_engine(url, isolation_level="AUTOCOMMIT")
        async with engine.connect() as conn:
            await conn.exec_driver_sql(sql)
        await engine.dispose()

    asyncio.run(admin(f'CREATE DATABASE "{name}"'))
    try:
        yield url.set(database=name).render_as_string(hide_password=False)
    finally:
        asyncio.run(admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
